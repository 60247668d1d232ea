"""E3 report: the paper's POPGym figures (mean ± SEM over seeds) and gradient quality.

- `success_vs_env_steps.png`: success rate per batch against cumulative env steps, a line
  per method at its chosen LR (the LR with the best mean success AUC for that method and
  num_envs; the sweep's only LR when it has one), a panel per num_envs; the same for the
  mean episode return (`return_mean_vs_env_steps.png`: informative where success is rare);
- `success_last5_vs_lr.png`, `success_auc_vs_lr.png`: last-5-batch success and normalised
  success AUC (trapezoid area under success vs batch over the span, as the reference)
  against the LR, a line per method;
- `lambda_stats.png`: sgprop's λ over training at the chosen LR — mean, p25–p75 band,
  min and max over neurons (each averaged over seeds);
- `grad_quality.png` and table `e3_grad_quality`: at the last checkpoint, each rule's
  one-batch gradient MSE relative to ‖g_ref‖², bias², variance and cosine (tasks/popgym_task.py),
  with MSE_BP / MSE_rule and a paired bootstrap 95% CI over seeds;
- table `e3_success` (.csv, .md): per method, num_envs and LR.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis.reports import (
    backprop_mse_ratio,
    lambda_rule,
    last_checkpoint,
    save_figure,
    style_panel,
    subplots,
    write_table,
)
from analysis.stats import mean_se
from learners.compared import LABELS as COMPARED_LABELS

LABELS = {**COMPARED_LABELS, "bp": "BPTT"}  # backprop through time is E3's name for it

LAMBDA = ("lambda_mean", "lambda_p25", "lambda_p75", "lambda_min", "lambda_max")


def method_label(row: pd.Series) -> str:
    model = str(row.get("model", "sparsenet"))
    if model in ("gru", "lstm"):
        return model.upper()
    if row.get("learner") != "sgprop":
        return "SparseNet BPTT"
    if (rule := lambda_rule(row)) is not None:
        return f"SparseNet sgprop {rule} λ₀={float(row.get('lam')):g}"
    if bool(row.get("adaptive", True)):
        return "SparseNet sgprop"
    return f"SparseNet sgprop λ={float(row.get('lam')):g}"


def _frame(final: pd.DataFrame) -> pd.DataFrame:
    """Trials with a `method` label; sgprop knobs the sweep varies join the label."""
    final = final.copy()
    final["method"] = final.apply(method_label, axis=1)
    if "learner" in final:
        sg = final.learner == "sgprop"
        for knob, name in (("sg_lr", "SG lr"), ("lam_schedule", "schedule"),
                           ("sg_padding", "padding"), ("sg_units", "SG units"),
                           ("maze_seeds", "mazes")):
            if knob in final and final.loc[sg, knob].astype(str).nunique() > 1:
                final.loc[sg, "method"] += final.loc[sg, knob].map(
                    lambda v, name=name: f", {name} {v:g}" if isinstance(v, float)
                    else f", {name} {v}")
    for column, default in (("num_envs", 20), ("lr", 1e-3), ("env", "escape")):
        if column not in final:
            final[column] = default
    return final


def success_table(final: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (method, envs, lr), group in final.groupby(["method", "num_envs", "lr"], sort=True):
        row = {"method": method, "num_envs": envs, "lr": lr, "seeds": len(group)}
        for metric in ("success_last5", "success_auc", "env_steps"):
            if metric in group:
                row[f"{metric}_mean"], row[f"{metric}_se"] = mean_se(group[metric].to_numpy())
        rows.append(row)
    return pd.DataFrame(rows)


def chosen_lrs(table: pd.DataFrame) -> dict[tuple[str, int], float]:
    """Per (method, num_envs), the LR with the best mean success AUC."""
    best = table.loc[table.groupby(["method", "num_envs"]).success_auc_mean.idxmax()]
    return {(m, int(e)): float(lr) for m, e, lr in zip(best.method, best.num_envs, best.lr,
                                                       strict=True)}


def _chosen_trials(final: pd.DataFrame, chosen: dict) -> pd.DataFrame:
    keep = [chosen.get((m, int(e))) == lr for m, e, lr in
            zip(final.method, final.num_envs, final.lr, strict=True)]
    return final[keep]


def _seed_curves(metrics: pd.DataFrame, trials: pd.DataFrame, names: list[str],
                 ) -> pd.DataFrame:
    rows = metrics[metrics.metric.isin(names)].merge(
        trials[["trial_id", "method", "num_envs", "lr"]], on="trial_id")
    return rows.pivot_table(index=["trial_id", "method", "num_envs", "step"],
                            columns="metric", values="value").reset_index()


def curves_vs_steps(final: pd.DataFrame, metrics: pd.DataFrame, chosen: dict, folder: Path,
                    metric: str = "success_rate", label: str = "success rate per batch",
                    ) -> Path | None:
    wide = _seed_curves(metrics, _chosen_trials(final, chosen), [metric, "env_steps"])
    if wide.empty:
        return None
    envs = sorted(wide.num_envs.unique())
    fig, axes = subplots(1, len(envs), figsize=(5 * len(envs), 3.8), squeeze=False)
    for ax, n in zip(axes[0], envs, strict=True):
        for method, sub in wide[wide.num_envs == n].groupby("method", sort=True):
            by_step = sub.groupby("step")
            x = by_step.env_steps.mean()
            mean = by_step[metric].mean()
            se = (by_step[metric].std() / np.sqrt(by_step[metric].count())).fillna(0)
            lr = chosen[(method, int(n))]
            ax.plot(x, mean, label=f"{method} (lr {lr:g})")
            ax.fill_between(x, mean - se, mean + se, alpha=0.2)
        style_panel(ax, "environment steps", label,
                    f"{final.env.iloc[0]}: {n} envs per batch (mean ± SEM)")
    stem = "success" if metric == "success_rate" else metric
    return save_figure(fig, folder / f"{stem}_vs_env_steps.png")


def versus_lr(table: pd.DataFrame, metric: str, label: str, folder: Path) -> Path:
    envs = sorted(table.num_envs.unique())
    fig, axes = subplots(1, len(envs), figsize=(5 * len(envs), 3.8), squeeze=False)
    for ax, n in zip(axes[0], envs, strict=True):
        for method, rows in table[table.num_envs == n].groupby("method", sort=True):
            rows = rows.sort_values("lr")
            ax.errorbar(rows.lr, rows[f"{metric}_mean"], yerr=rows[f"{metric}_se"],
                        marker="o", capsize=3, label=method)
        ax.set_xscale("log")
        style_panel(ax, "policy learning rate", label, f"{n} envs per batch (mean ± SEM)")
    return save_figure(fig, folder / f"{metric}_vs_lr.png")


def lambda_stats(final: pd.DataFrame, metrics: pd.DataFrame, chosen: dict,
                 folder: Path) -> Path | None:
    trials = _chosen_trials(final, chosen)
    trials = trials[trials.learner == "sgprop"] if "learner" in trials else trials.iloc[:0]
    wide = _seed_curves(metrics, trials, list(LAMBDA))
    if wide.empty:
        return None
    fig, ax = subplots(figsize=(5.5, 4))
    for (method, n), sub in wide.groupby(["method", "num_envs"], sort=True):
        curve = sub.groupby("step")[list(LAMBDA)].mean()
        line = ax.plot(curve.index, curve.lambda_mean, label=f"{method}, {n} envs: mean")[0]
        ax.fill_between(curve.index, curve.lambda_p25, curve.lambda_p75, alpha=0.2,
                        color=line.get_color())
        ax.plot(curve.index, curve.lambda_min, ls=":", color=line.get_color())
        ax.plot(curve.index, curve.lambda_max, ls="--", color=line.get_color())
    style_panel(ax, "batch", "λ over neurons (1 = BPTT, 0 = SG)",
                "E3: adaptive λ (band p25–p75, dotted min, dashed max)")
    return save_figure(fig, folder / "lambda_stats.png")


def grad_table(final: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    wide = last_checkpoint(metrics, "grad_")
    frame = final[["trial_id", "method", "num_envs", "lr"]].merge(
        wide, left_on="trial_id", right_index=True)
    names = set(wide.columns)
    groups = sorted({n.split("/")[1] for n in names if n.startswith("grad_ref_sq/")})
    rows = []
    for (method, n, lr), group in frame.groupby(["method", "num_envs", "lr"], sort=True):
        for g in groups:
            ref = group[f"grad_ref_sq/{g}"].to_numpy()
            row = {"method": method, "num_envs": n, "lr": lr, "group": g,
                   "seeds": len(group),
                   "ref_rel_se2": float(np.mean(group[f"grad_ref_se2/{g}"] / ref))}
            for rule in LABELS:
                col = f"grad_mse/{rule}/{g}"
                if col not in names or group[col].isna().all():
                    continue
                mse = group[col].to_numpy()
                row[f"rel_mse_{rule}"] = float(np.mean(mse / ref))
                row[f"rel_bias2_{rule}"] = float(np.mean(group[f"grad_bias2/{rule}/{g}"] / ref))
                row[f"rel_var_{rule}"] = float(np.mean(group[f"grad_var/{rule}/{g}"] / ref))
                row[f"cos_{rule}"] = float(group[f"grad_cos/{rule}/{g}"].mean())
                row.update(backprop_mse_ratio(group, rule, g, mse))
            rows.append(row)
    return pd.DataFrame(rows)


def grad_figure(table: pd.DataFrame, folder: Path) -> Path:
    rows = table[table.group == "recurrent"]
    labels = [f"{m}\n{n} envs, lr {lr:g}" for m, n, lr in
              zip(rows.method, rows.num_envs, rows.lr, strict=True)]
    xs = np.arange(len(rows))
    fig, ax = subplots(figsize=(max(5.0, 0.9 * len(rows) + 2), 4))
    for i, (rule, name) in enumerate(LABELS.items()):
        col = f"rel_mse_{rule}"
        if col in rows:
            vals = rows[col].to_numpy(dtype=float)
            ax.bar(xs + 0.27 * (i - 1), np.clip(vals, 1e-6, None), width=0.27, label=name)
    ax.set_xticks(xs, labels, fontsize=6, rotation=60, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("one-batch MSE / ‖g_ref‖² (recurrent params)")
    ax.set_title("E3: gradient-estimation MSE at the last checkpoint (mean over seeds)",
                 fontsize=9)
    ax.legend(fontsize=7)
    return save_figure(fig, folder / "grad_quality.png")


def report(final: pd.DataFrame, metrics: pd.DataFrame, params: list[str],
           folder: Path) -> list[Path]:
    final = _frame(final)
    table = success_table(final)
    files = write_table(table, folder, "e3_success")
    if "success_auc_mean" not in table or table.success_auc_mean.isna().all():
        return files
    chosen = chosen_lrs(table)
    files += [f for f in (
        curves_vs_steps(final, metrics, chosen, folder),
        curves_vs_steps(final, metrics, chosen, folder, "return_mean", "mean episode return"),
        lambda_stats(final, metrics, chosen, folder)) if f is not None]
    if table.lr.nunique() > 1:
        files.append(versus_lr(table, "success_last5", "success, last 5 batches", folder))
        files.append(versus_lr(table, "success_auc", "normalised success AUC", folder))
    if metrics.metric.str.startswith("grad_mse/").any():
        grads = grad_table(final, metrics)
        files += write_table(grads, folder, "e3_grad_quality")
        files.append(grad_figure(grads, folder))
    return files
