"""Report of a tuning directory: trials table, optimisation history, parameter importances,
slice plot, and (where a task knows one) the closed-form optimum for comparison."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker
import numpy as np
import pandas as pd

from analysis.reports import final_metrics, save_figure, subplots, task_hook, to_markdown

# task -> (seed records with final metrics, objective, searched params, seeds) -> dict | None


def trials_table(study, pruner: str = "wilcoxon") -> pd.DataFrame:
    rows = []
    for t in study.get_trials(deepcopy=False):
        duration = (t.datetime_complete - t.datetime_start).total_seconds() \
            if t.datetime_complete and t.datetime_start else math.nan
        steps = t.intermediate_values  # seed index -> value; median: seeds done -> aggregate
        rows.append({
            "number": t.number, "state": t.state.name.lower(),
            "value": t.value if t.state.name == "COMPLETE" else math.nan,
            **{f"param_{k}": v for k, v in t.params.items()},
            "seeds_run": (max(steps) if pruner == "median" else len(steps)) if steps else 0,
            "duration_s": duration, "retry_of": t.user_attrs.get("retry_of"),
            # seeds whose records an earlier trial (or `sgsweep run`) of the same parameters
            # made: reused, not run again
            "reused_from": _reused_from(t.user_attrs.get("reused")),
            "error": t.user_attrs.get("error") or ("orphaned by a stop"
                                                   if t.user_attrs.get("orphaned") else None),
        })
    return pd.DataFrame(rows)


def _reused_from(reused: dict[str, int | None] | None) -> str | None:
    """`reused` (seed -> Optuna trial number, None for a record of `sgsweep run`) as
    "trial 0: seeds 0, 1"; None when every seed ran in this trial."""
    if not reused:
        return None
    by_source: dict[str, list[str]] = {}
    for seed, number in reused.items():
        by_source.setdefault("run" if number is None else f"trial {number}", []).append(seed)
    return "; ".join(f"{source}: seeds {', '.join(seeds)}"
                     for source, seeds in sorted(by_source.items()))


def history_figure(table: pd.DataFrame, direction: str, metric: str, path: Path,
                   reference: float | None = None) -> Path:
    fig, ax = subplots(figsize=(6, 4))
    done = table[table.state == "complete"].sort_values("number")
    if not done.empty:
        ax.scatter(done.number, done.value, s=18, color="C0", label="complete")
        best = done.value.cummin() if direction == "minimize" else done.value.cummax()
        ax.step(done.number, best, where="post", color="C1", label="best so far")
    pruned = table[table.state == "pruned"]
    if not pruned.empty:
        ax.plot(pruned.number, np.zeros(len(pruned)), "|", color="grey", markersize=12,
                transform=ax.get_xaxis_transform(), label="pruned")
    if reference is not None:
        ax.axhline(reference, color="C2", ls="--", lw=1, label="closed-form optimum")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("Optuna trial")
    ax.set_ylabel(metric)
    ax.set_title("Optimisation history", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def importance_figure(study, path: Path) -> tuple[Path | None, dict[str, float]]:
    import optuna

    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if len(complete) < 2:  # importances need trials to compare
        return None, {}
    try:
        importances = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError):  # e.g. nothing varies
        return None, {}
    fig, ax = subplots(figsize=(6, 0.6 + 0.4 * max(1, len(importances))))
    names = list(importances)[::-1]
    ax.barh(names, [importances[n] for n in names], color="C0")
    ax.set_xlabel("importance (PED-ANOVA, Optuna's default)")
    ax.set_title("Parameter importances", fontsize=10)
    return save_figure(fig, path), dict(importances)


def slice_figure(table: pd.DataFrame, study, metric: str, path: Path,
                 reference: dict[str, Any] | None = None) -> Path | None:
    done = table[table.state == "complete"]
    params = [c for c in table.columns if c.startswith("param_")]
    if done.empty or not params:
        return None
    distributions = {}
    for t in study.get_trials(deepcopy=False):
        distributions.update(t.distributions)
    fig, axes = subplots(1, len(params), figsize=(4 * len(params), 3.6), squeeze=False)
    for ax, column in zip(axes[0], params, strict=True):
        name = column.removeprefix("param_")
        x = done[column]
        numeric = pd.api.types.is_numeric_dtype(x) and not pd.api.types.is_bool_dtype(x)
        if not numeric:
            codes = {v: i for i, v in enumerate(sorted(x.astype(str).unique()))}
            ax.set_xticks(list(codes.values()), list(codes))
            x = x.astype(str).map(codes)
        points = ax.scatter(x, done.value, c=done.number, cmap="viridis", s=18)
        if numeric and getattr(distributions.get(name), "log", False):
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # no overlaps
        if reference and name in reference:
            ax.axvline(reference[name], color="C2", ls="--", lw=1, label="closed form")
            ax.legend(fontsize=8)
        ax.set_xlabel(name)
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel(metric)
    fig.colorbar(points, ax=axes[0][-1], label="trial")
    fig.suptitle("Slice: objective vs each parameter", fontsize=10)
    return save_figure(fig, path)


def report(study: Any, info: dict[str, Any], best: Any, folder: Path, trials: pd.DataFrame,
           metrics: pd.DataFrame) -> list[Path]:
    """Write the tuning report of an Optuna `study` into `folder`; returns its files. `info`
    is what the tuning directory records of it (tune.json), `best` its best complete trial
    (or None); the caller loads both, so analysis never imports the orchestrator. A task
    that names a `tune_reference` (a closed-form optimum) gets it drawn beside the trials."""
    objective = info["objective"]
    table = trials_table(study, info.get("pruner", "wilcoxon"))
    files = [folder / "trials.csv", folder / "trials.md"]
    table.to_csv(files[0], index=False)

    reference = None
    closed_form = task_hook(info["task"], "tune_reference")
    if closed_form is not None and not trials.empty:
        final = final_metrics(trials, metrics)
        reference = closed_form(final, objective, info["search"], info["seeds"])

    lines = [f"# Study {info['study']} (task {info['task']})", "",
             f"Objective: {objective['direction']} the {objective['aggregate']} over seeds "
             f"of {objective['metric']} ({objective['value']} value per seed), seeds "
             f"{info['seeds']}.", ""]
    counts = table.state.value_counts().to_dict() if not table.empty else {}
    lines.append("Trials: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + ".")
    if best is not None:
        params = ", ".join(f"{k} = {v:.6g}" if isinstance(v, float) else f"{k} = {v}"
                           for k, v in best.params.items())
        lines += ["", f"Best: trial {best.number}, {objective['metric']} = {best.value:.6g} "
                      f"({params}); `best.yaml` re-evaluates it on fresh seeds."]
    if reference is not None:
        (folder / "closed_form.json").write_text(json.dumps(reference, indent=1) + "\n")
        files.append(folder / "closed_form.json")
        lines += ["", "Closed form (the objective is exactly quadratic in λ on these seeds): "
                      f"λ* = {reference['lam_opt']:.6g}, optimum = "
                      f"{reference['objective_opt']:.6g} (BP {reference['mse_bp']:.6g}, SG "
                      f"{reference['mse_sg']:.6g}); the quadratic reproduces all "
                      f"{reference['trials_checked']} evaluated λ to a relative "
                      f"{reference['quadratic_max_rel_error']:.1e}."]
        if best is not None:
            gap = best.value / reference["objective_opt"] - 1
            lines.append(f"The study's best is {gap:+.3%} from the optimum.")
    history = history_figure(table, objective["direction"], objective["metric"],
                             folder / "history.png",
                             reference["objective_opt"] if reference else None)
    files.append(history)
    importance, values = importance_figure(study, folder / "importances.png")
    if importance is not None:
        files.append(importance)
        lines += ["", "Importances (PED-ANOVA): " + ", ".join(
            f"{k} {v:.3f}" for k, v in values.items()) + "."]
    sliced = slice_figure(table, study, objective["metric"], folder / "slice.png",
                          {"lam": reference["lam_opt"]} if reference else None)
    if sliced is not None:
        files.append(sliced)
    shown = table.drop(columns=["error"]) if "error" in table else table
    lines += ["", to_markdown(shown)]
    files[1].write_text("\n".join(lines) + "\n")
    return files
