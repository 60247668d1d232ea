"""E3 report: the paper's POPGym figures (mean ± SEM over seeds) and gradient quality.

Each method is drawn at its chosen LR: the one with the best mean success AUC for that
method and num_envs (the sweep's only LR when it has one, as in the dynamics sweeps).
- `success_vs_env_steps.png`, `return_mean_vs_env_steps.png`: success rate (mean episode
  return: informative where success is rare) per batch against environment steps counted
  as the reference counts them (batch × num_envs × episode length, padding included), a
  line per method, a panel per num_envs;
- `success_diff_vs_env_steps.png`, `return_mean_diff_vs_env_steps.png`: each method minus
  SparseNet BPTT on the same seed (same mazes) and batch, a 10-batch moving average, with a
  pointwise paired-bootstrap 95% band over seeds (tables `e3_success_diff`,
  `e3_return_mean_diff`);
- `success_last5_vs_lr.png`, `success_auc_vs_lr.png` (sweeps with several LRs): last-5-batch
  success and normalised success AUC (trapezoid area under success vs batch over the span,
  as the reference) against the LR, a line per method;
- `lambda_stats.png`: sgprop's λ over training — mean over neurons with its p25–p75 band,
  min and max over neurons (each averaged over seeds), a panel per num_envs;
- tables `e3_success` (per method, num_envs and LR: last-5 success and AUC, mean ± SE and a
  bootstrap 95% CI over seeds) and `e3_vs_bptt` (their difference to SparseNet BPTT,
  paired by seed, with paired-bootstrap 95% CIs);
- `grad_quality.png` and table `e3_grad_quality`: at every gradient-quality checkpoint,
  each rule's one-batch gradient MSE relative to ‖g_ref‖², bias², variance and cosine
  (tasks/popgym_task.py), with MSE_BP / MSE_rule and a paired bootstrap 95% CI over seeds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis.reports import (
    backprop_mse_ratio,
    lambda_rule,
    save_figure,
    style_panel,
    subplots,
    write_table,
)
from analysis.stats import (
    bootstrap_mean,
    mean_se,
    paired_bootstrap_diff,
    paired_bootstrap_diff_band,
)
from learners.compared import LABELS as COMPARED_LABELS

LABELS = {**COMPARED_LABELS, "bp": "BPTT"}  # backprop through time is E3's name for it

LAMBDA = ("lambda_mean", "lambda_p25", "lambda_p75", "lambda_min", "lambda_max")
BASELINE = "SparseNet BPTT"  # the method every other one is compared with, seed by seed
SUMMARIES = ("success_last5", "success_auc")
STEPS_LABEL = "environment steps (batch × num_envs × episode length)"
LENGTH = {"escape": 80, "explore": 40}  # tasks.popgym_task.LENGTH (tested equal; no torch here)


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
    # the reference's x axis ("timesteps"): batches x num_envs x rollout length, padding
    # included, the same for every method at one num_envs (cumulative valid steps differ)
    length = final["length"] if "length" in final else pd.Series(np.nan, index=final.index)
    final["steps_per_batch"] = final.num_envs * length.fillna(final.env.map(LENGTH))
    return final


def success_table(final: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (method, envs, lr), group in final.groupby(["method", "num_envs", "lr"], sort=True):
        row = {"method": method, "num_envs": envs, "lr": lr, "seeds": len(group)}
        for metric in (*SUMMARIES, "env_steps"):
            if metric in group:
                values = group[metric].to_numpy()
                row[f"{metric}_mean"], row[f"{metric}_se"] = mean_se(values)
                if metric in SUMMARIES:
                    _, row[f"{metric}_low"], row[f"{metric}_high"] = bootstrap_mean(values)
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
    columns = ["trial_id", "method", "num_envs", "lr", "seed", "steps_per_batch"]
    rows = metrics[metrics.metric.isin(names)].merge(
        trials[[c for c in columns if c in trials]], on="trial_id")
    index = [c for c in ("trial_id", "method", "num_envs", "seed", "steps_per_batch", "step")
             if c in rows]
    wide = rows.pivot_table(index=index, columns="metric", values="value").reset_index()
    if "steps_per_batch" in wide:
        wide["x"] = wide.step * wide.steps_per_batch
    return wide


def curves_vs_steps(final: pd.DataFrame, metrics: pd.DataFrame, chosen: dict, folder: Path,
                    metric: str = "success_rate", label: str = "success rate per batch",
                    ) -> Path | None:
    wide = _seed_curves(metrics, _chosen_trials(final, chosen), [metric])
    if wide.empty:
        return None
    envs = sorted(wide.num_envs.unique())
    fig, axes = subplots(1, len(envs), figsize=(5 * len(envs), 3.8), squeeze=False)
    for ax, n in zip(axes[0], envs, strict=True):
        for method, sub in wide[wide.num_envs == n].groupby("method", sort=True):
            by_step = sub.groupby("step")
            x = by_step.x.mean()
            mean = by_step[metric].mean()
            se = (by_step[metric].std() / np.sqrt(by_step[metric].count())).fillna(0)
            lr = chosen[(method, int(n))]
            ax.plot(x, mean, label=f"{method} (lr {lr:g})")
            ax.fill_between(x, mean - se, mean + se, alpha=0.2)
        style_panel(ax, STEPS_LABEL, label,
                    f"{final.env.iloc[0]}: {n} envs per batch (mean ± SEM)")
    stem = "success" if metric == "success_rate" else metric
    return save_figure(fig, folder / f"{stem}_vs_env_steps.png")


def versus_baseline(final: pd.DataFrame, chosen: dict) -> pd.DataFrame:
    """Per method and num_envs, each summary minus SparseNet BPTT's on the same seed (same
    mazes with the reference's maze seeding), each at its chosen LR, with a paired-bootstrap
    95% CI over seeds."""
    trials = _chosen_trials(final, chosen)
    rows = []
    for n in sorted(trials.num_envs.unique()):
        here = trials[trials.num_envs == n]
        base = here[here.method == BASELINE]
        if base.empty:
            continue
        for method, group in here[here.method != BASELINE].groupby("method", sort=True):
            pairs = group.merge(base, on="seed", suffixes=("", "_base"))
            if pairs.empty:
                continue
            row = {"method": method, "num_envs": n, "lr": chosen[(method, int(n))],
                   "baseline_lr": chosen[(BASELINE, int(n))], "seeds": len(pairs)}
            for metric in SUMMARIES:
                if metric in pairs:
                    diff, low, high = paired_bootstrap_diff(
                        pairs[metric].to_numpy(), pairs[f"{metric}_base"].to_numpy())
                    row.update({f"{metric}_diff": diff, f"{metric}_diff_low": low,
                                f"{metric}_diff_high": high})
            rows.append(row)
    return pd.DataFrame(rows)


def _smoothed(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average over `window` batches (shorter at the ends)."""
    return pd.Series(values).rolling(window, center=True, min_periods=1).mean().to_numpy()


def difference_table(final: pd.DataFrame, metrics: pd.DataFrame, chosen: dict, metric: str,
                     window: int = 10) -> pd.DataFrame:
    """Each method's curve minus SparseNet BPTT's on the same seed, batch by batch (a
    `window`-batch moving average of each), with a pointwise paired-bootstrap 95% CI over
    seeds: columns method, num_envs, seeds, step, x (the reference's env steps), diff,
    low, high."""
    wide = _seed_curves(metrics, _chosen_trials(final, chosen), [metric])
    if wide.empty or "seed" not in wide or BASELINE not in set(wide.method):
        return pd.DataFrame()
    parts = []
    for n, here in wide.groupby("num_envs", sort=True):
        table = here.pivot_table(index=["method", "seed"], columns="step", values=metric)
        table = table.apply(lambda row: _smoothed(row.to_numpy(), window), axis=1,
                            result_type="broadcast")
        if BASELINE not in table.index.get_level_values("method"):
            continue
        base = table.loc[BASELINE]
        per_batch = here.steps_per_batch.iloc[0]
        for method in sorted(set(table.index.get_level_values("method")) - {BASELINE}):
            mine = table.loc[method]
            seeds = mine.index.intersection(base.index)
            steps = pd.concat([mine.loc[seeds], base.loc[seeds]]).dropna(axis=1).columns
            if seeds.empty or steps.empty:
                continue
            diff, low, high = paired_bootstrap_diff_band(mine.loc[seeds, steps],
                                                         base.loc[seeds, steps])
            parts.append(pd.DataFrame({"method": method, "num_envs": n, "seeds": len(seeds),
                                       "step": steps, "x": steps * per_batch, "diff": diff,
                                       "low": low, "high": high}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def difference_curves(table: pd.DataFrame, env: str, folder: Path, stem: str, label: str,
                      window: int = 10) -> Path:
    """`difference_table` drawn: a panel per num_envs, a line and band per method."""
    envs = sorted(table.num_envs.unique())
    fig, axes = subplots(1, len(envs), figsize=(5 * len(envs), 3.8), squeeze=False)
    for ax, n in zip(axes[0], envs, strict=True):
        for method, rows in table[table.num_envs == n].groupby("method", sort=True):
            line = ax.plot(rows.x, rows["diff"],
                           label=f"{method} − {BASELINE} ({rows.seeds.iloc[0]} seeds)")[0]
            ax.fill_between(rows.x, rows.low, rows.high, alpha=0.2, color=line.get_color())
        ax.axhline(0.0, color="black", lw=0.8)
        style_panel(ax, STEPS_LABEL, f"Δ {label} vs {BASELINE}",
                    f"{env}: {n} envs, method − {BASELINE}, same seed\n"
                    f"({window}-batch moving mean, paired-bootstrap 95% band over seeds)")
    return save_figure(fig, folder / f"{stem}_diff_vs_env_steps.png")


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
    """sgprop's λ over training, a panel per num_envs: mean over neurons (solid, band
    p25–p75) and min (dotted) and max (dashed) over neurons, each averaged over seeds."""
    trials = _chosen_trials(final, chosen)
    trials = trials[trials.learner == "sgprop"] if "learner" in trials else trials.iloc[:0]
    wide = _seed_curves(metrics, trials, list(LAMBDA))
    if wide.empty:
        return None
    envs = sorted(wide.num_envs.unique())
    fig, axes = subplots(1, len(envs), figsize=(5 * len(envs), 3.8), squeeze=False)
    for ax, n in zip(axes[0], envs, strict=True):
        for method, sub in wide[wide.num_envs == n].groupby("method", sort=True):
            curve = sub.groupby("step")[list(LAMBDA)].mean()
            line = ax.plot(curve.index, curve.lambda_mean, label=f"{method}: mean")[0]
            ax.fill_between(curve.index, curve.lambda_p25, curve.lambda_p75, alpha=0.2,
                            color=line.get_color())
            ax.plot(curve.index, curve.lambda_min, ls=":", color=line.get_color(),
                    label=f"{method}: min")
            ax.plot(curve.index, curve.lambda_max, ls="--", color=line.get_color(),
                    label=f"{method}: max")
        style_panel(ax, "batch", "λ over neurons (1 = BPTT, 0 = SG)",
                    f"{final.env.iloc[0]}: {n} envs, adaptive λ (band p25–p75, "
                    f"mean over {sub.seed.nunique() if 'seed' in sub else 1} seeds)")
    return save_figure(fig, folder / "lambda_stats.png")


def checkpoints(metrics: pd.DataFrame, prefix: str = "grad_") -> pd.DataFrame:
    """The gradient-quality metrics (`grad_<stat>/…`, not the per-batch `grad_norm`) at
    every checkpoint: one row per (trial, step), one column per metric."""
    rows = metrics[metrics.metric.str.startswith(prefix) & metrics.metric.str.contains("/")]
    return rows.pivot_table(index=["trial_id", "step"], columns="metric",
                            values="value").reset_index()


def grad_table(final: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """Per method, num_envs, LR, checkpoint batch and parameter group: each rule's MSE,
    bias² and variance relative to ‖g_ref‖², cosine, and MSE_BP / MSE_rule with a paired
    bootstrap 95% CI over seeds."""
    wide = checkpoints(metrics)
    frame = final[["trial_id", "method", "num_envs", "lr"]].merge(wide, on="trial_id")
    names = set(wide.columns)
    groups = sorted({n.split("/")[1] for n in names if n.startswith("grad_ref_sq/")})
    rows = []
    for (method, n, lr, batch), group in frame.groupby(["method", "num_envs", "lr", "step"],
                                                         sort=True):
        for g in groups:
            ref = group[f"grad_ref_sq/{g}"].to_numpy()
            row = {"method": method, "num_envs": n, "lr": lr, "batch": int(batch),
                   "group": g, "seeds": len(group),
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
    """MSE_BP / MSE_rule of the recurrent parameters' gradient at each checkpoint, with its
    paired-bootstrap 95% CI: above 1, the rule's one-batch gradient is closer to the true
    expected gradient than BPTT's."""
    rows = table[table.group == "recurrent"]
    fig, ax = subplots(figsize=(6.5, 4.2))
    for (method, n, lr), sub in rows.groupby(["method", "num_envs", "lr"], sort=True):
        for rule, name in LABELS.items():
            col = f"ratio_bp_{rule}"
            if col not in sub or sub[col].isna().all():
                continue
            sub = sub.sort_values("batch")
            ratio = sub[col].to_numpy(dtype=float)
            yerr = np.abs(np.stack([ratio - sub[f"{col}_low"], sub[f"{col}_high"] - ratio]))
            ax.errorbar(sub.batch, ratio, yerr=yerr, marker="o", capsize=3,
                        label=f"{name}: {method}, {n} envs, lr {lr:g}")
    ax.axhline(1.0, color="black", lw=0.8)
    style_panel(ax, "checkpoint (batch)", "MSE_BPTT / MSE_rule (recurrent params)",
                "E3: gradient quality vs BPTT (>1: better than BPTT; paired bootstrap 95% CI)",
                log_y=True)
    return save_figure(fig, folder / "grad_quality.png")


def report(final: pd.DataFrame, metrics: pd.DataFrame, params: list[str],
           folder: Path) -> list[Path]:
    final = _frame(final)
    table = success_table(final)
    files = write_table(table, folder, "e3_success")
    if "success_auc_mean" not in table or table.success_auc_mean.isna().all():
        return files
    chosen = chosen_lrs(table)
    versus = versus_baseline(final, chosen) if "seed" in final else pd.DataFrame()
    if not versus.empty:
        files += write_table(versus, folder, "e3_vs_bptt")
    files += [f for f in (
        curves_vs_steps(final, metrics, chosen, folder),
        curves_vs_steps(final, metrics, chosen, folder, "return_mean", "mean episode return"),
        lambda_stats(final, metrics, chosen, folder)) if f is not None]
    for metric, stem, label in (("success_rate", "success", "success rate"),
                                ("return_mean", "return_mean", "mean return")):
        diffs = difference_table(final, metrics, chosen, metric)
        if not diffs.empty:
            files += write_table(diffs, folder, f"e3_{stem}_diff")
            files.append(difference_curves(diffs, final.env.iloc[0], folder, stem, label))
    if table.groupby(["method", "num_envs"]).lr.nunique().max() > 1:  # an LR sweep
        files.append(versus_lr(table, "success_last5", "success, last 5 batches", folder))
        files.append(versus_lr(table, "success_auc", "normalised success AUC", folder))
    if metrics.metric.str.startswith("grad_mse/").any():
        grads = grad_table(final, metrics)
        files += write_table(grads, folder, "e3_grad_quality")
        files.append(grad_figure(grads, folder))
    return files
