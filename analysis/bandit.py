"""E2 report: the paper's six bandit figures (mean ± SEM over seeds) and the gradient MSE.

Each figure is drawn when the sweep varies what it needs:
- `final_reward_vs_<lr|p_flip|parents>.png`: final eval reward vs that parameter, a line
  per method (drawn when the parameter takes several values within a method);
- `reward_curves.png`: eval reward over training per method, a panel per p_flip (the
  paper's curves at p_flip 0.4, and the λ-ablation curves when the sweep varies λ), and
  below it each method's difference to SparseNet BP, paired over seeds, with a 95%
  paired-bootstrap CI (when the sweep has SparseNet BP);
- `lambda_traces.png`: layer-averaged adaptive λ over training, a line per p_flip;
- `grad_mse_vs_pflip.png`, `grad_mse_ratio_vs_pflip.png`, `grad_mse_layers.png`,
  `grad_mse_over_training.png`: the gradient-estimation MSE of each rule (see
  tasks/bandit.py for the metric names), with MSE_BP / MSE_rule ratios and paired
  bootstrap 95% CIs over seeds;
- `e2_mechanism` table and `mechanism.png`, at every gradient checkpoint: each rule's
  MSE, bias² and variance relative to ‖g*‖², cosine with g*, MSE_BP / MSE_rule with
  paired-bootstrap CIs per layer, and each method's actual update (‖Δθ‖, cos(Δθ, −g*),
  first-order gain −⟨g*, Δθ⟩): is a gain a better gradient estimate or a different step?
- tables `e2_final_rewards` (with the paired difference to SparseNet BP) and
  `e2_grad_mse` (.csv and .md).
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
from analysis.stats import mean_se, paired_bootstrap_diff
from learners.compared import BACKPROP, LABELS

CONDITIONS = ("lr", "p_flip", "parents")
BASELINE = "SparseNet BP"


def method_label(row: pd.Series) -> str:
    model = "MLP" if row.get("model") == "mlp" else "SparseNet"
    if row.get("learner") != "sgprop":
        return f"{model} BP"
    if (rule := lambda_rule(row)) is not None:
        return f"{model} sgprop {rule} λ₀={float(row.get('lam')):g}"
    if bool(row.get("adaptive")):
        return f"{model} sgprop adaptive λ"
    return f"{model} sgprop λ={float(row.get('lam')):g}"


def _varies(frame: pd.DataFrame, column: str) -> bool:
    return column in frame and bool((frame.groupby("method")[column].nunique() > 1).any())


def paired_with_baseline(group: pd.DataFrame, base: pd.DataFrame, column: str,
                         ) -> tuple[float, float, float] | None:
    """Mean difference to the baseline over the seeds both have, with a paired CI."""
    pairs = group[["seed", column]].merge(base[["seed", column]], on="seed",
                                          suffixes=("", "_base")).dropna()
    if len(pairs) < 2:
        return None
    return paired_bootstrap_diff(pairs[column].to_numpy(), pairs[f"{column}_base"].to_numpy())


def final_reward_table(final: pd.DataFrame) -> pd.DataFrame:
    conditions = [c for c in CONDITIONS if _varies(final, c)]
    keys = ["method"] + conditions
    rows = []
    for key, group in final.groupby(keys, sort=True):
        row = dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True))
        row["seeds"] = len(group)
        for metric in ("eval_reward", "eval_expected_reward"):
            if metric in group:
                row[f"{metric}_mean"], row[f"{metric}_se"] = mean_se(group[metric].to_numpy())
        base = final[final.method == BASELINE]
        for c in conditions:
            if c != "lr":  # a method's own LR is not the baseline's
                base = base[base[c] == row[c]]
        paired = (paired_with_baseline(group, base, "eval_reward")
                  if row["method"] != BASELINE and "seed" in final else None)
        if paired is not None:
            row["diff_vs_bp"], row["diff_vs_bp_low"], row["diff_vs_bp_high"] = paired
        rows.append(row)
    return pd.DataFrame(rows)


def final_vs(final: pd.DataFrame, column: str, folder: Path) -> Path:
    fig, ax = subplots(figsize=(5.5, 4))
    for method, group in final.groupby("method", sort=True):
        stats = group.groupby(column)["eval_reward"].apply(lambda v: mean_se(v.to_numpy()))
        xs = np.array(stats.index, dtype=float)
        mean = np.array([m for m, _ in stats])
        se = np.array([s for _, s in stats])
        ax.errorbar(xs, mean, yerr=se, marker="o", capsize=3, label=method)
    if column == "lr":
        ax.set_xscale("log")
    style_panel(ax, {"lr": "policy learning rate", "p_flip": "reward flip probability",
                     "parents": "parents per neuron"}[column],
                "final eval reward (noise-free)", f"E2: final reward vs {column} (mean ± SEM)")
    return save_figure(fig, folder / f"final_reward_vs_{column}.png")


def curves(metrics: pd.DataFrame, info: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Mean and SEM over seeds of `metric` per (method, p_flip, step)."""
    rows = metrics[metrics.metric == metric].merge(info, on="trial_id")
    if rows.empty:
        return rows
    grouped = rows.groupby(["method", "p_flip", "step"]).value
    out = grouped.agg(["mean", "count", "std"]).reset_index()
    out["se"] = (out["std"] / np.sqrt(out["count"])).fillna(0.0)
    return out


def paired_curves(metrics: pd.DataFrame, info: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per (method, p_flip, step): mean difference to SparseNet BP over shared seeds, with a
    95% paired-bootstrap CI."""
    rows = metrics[metrics.metric == metric].merge(info, on="trial_id")
    base = rows[rows.method == BASELINE][["p_flip", "step", "seed", "value"]]
    out = []
    others = rows[rows.method != BASELINE]
    for (method, p, step), group in others.groupby(["method", "p_flip", "step"], sort=True):
        paired = paired_with_baseline(group, base[(base.p_flip == p) & (base.step == step)],
                                      "value")
        if paired is not None:
            out.append({"method": method, "p_flip": p, "step": step, "diff": paired[0],
                        "low": paired[1], "high": paired[2]})
    return pd.DataFrame(out)


def reward_curves(metrics: pd.DataFrame, info: pd.DataFrame, folder: Path) -> Path | None:
    data = curves(metrics, info, "eval_reward")
    if data.empty:
        return None
    diffs = paired_curves(metrics, info, "eval_reward") if "seed" in info else pd.DataFrame()
    flips = sorted(data.p_flip.unique())
    rows = 2 if not diffs.empty else 1
    fig, axes = subplots(rows, len(flips), figsize=(4.5 * len(flips), 3.8 * rows),
                             squeeze=False)
    colours = {m: f"C{i}" for i, m in enumerate(sorted(data.method.unique()))}
    for ax, p in zip(axes[0], flips, strict=True):
        for method, line in data[data.p_flip == p].groupby("method", sort=True):
            ax.plot(line.step, line["mean"], label=method, color=colours[method])
            ax.fill_between(line.step, line["mean"] - line.se, line["mean"] + line.se,
                            alpha=0.2, color=colours[method])
        ax.set_title(f"p_flip = {p:g} (mean ± SEM over seeds)", fontsize=9)
        ax.set_xlabel("training step")
        ax.set_ylabel("eval reward (noise-free)")
        ax.grid(True, alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    if rows == 2:
        for ax, p in zip(axes[1], flips, strict=True):
            for method, line in diffs[diffs.p_flip == p].groupby("method", sort=True):
                ax.plot(line.step, line["diff"], label=method, color=colours[method])
                ax.fill_between(line.step, line.low, line.high, alpha=0.2,
                                color=colours[method])
            ax.axhline(0.0, color="k", lw=0.8, ls="--")
            ax.set_title(f"difference to {BASELINE}, paired over seeds (95% bootstrap CI)",
                         fontsize=8)
            ax.set_xlabel("training step")
            ax.set_ylabel("Δ eval reward")
            ax.grid(True, alpha=0.3)
    return save_figure(fig, folder / "reward_curves.png")


def lambda_traces(metrics: pd.DataFrame, info: pd.DataFrame, folder: Path) -> Path | None:
    adaptive = info[info.method.str.contains("adaptive")]
    data = curves(metrics, adaptive, "lambda_mean")
    if data.empty:
        return None
    fig, ax = subplots(figsize=(5.5, 4))
    for (method, p), line in data.groupby(["method", "p_flip"], sort=True):
        ax.plot(line.step, line["mean"], label=f"{method}, p_flip {p:g}")
        ax.fill_between(line.step, line["mean"] - line.se, line["mean"] + line.se, alpha=0.2)
    style_panel(ax, "training step", "layer-averaged λ (1 = BP, 0 = SG)",
                "E2: adaptive λ over training (mean ± SEM)")
    return save_figure(fig, folder / "lambda_traces.png")


def grad_table(final: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """Per (method, p_flip, layer group) at the last checkpoint: MSE per rule and ratios."""
    names = metrics.metric.unique()
    groups = sorted({n.split("/")[2] for n in names if n.startswith("grad_mse/")},
                    key=lambda g: (g in ("hidden", "all", "head"), g))
    rules = [r for r in LABELS if any(n.startswith(f"grad_mse/{r}/") for n in names)]
    wide = last_checkpoint(metrics, "grad_")
    frame = final[["trial_id", "method", "p_flip"]].merge(wide, left_on="trial_id",
                                                         right_index=True)
    rows = []
    for (method, p), group in frame.groupby(["method", "p_flip"], sort=True):
        for layer in groups:
            row = {"method": method, "p_flip": p, "group": layer, "seeds": len(group)}
            truth = group[f"grad_truth_sq/{layer}"].to_numpy()
            for rule in rules:
                if group[f"grad_mse/{rule}/{layer}"].isna().all():
                    continue  # a rule this method's learner does not form
                mse = group[f"grad_mse/{rule}/{layer}"].to_numpy()
                row[f"rel_mse_{rule}"] = float(np.mean(mse / truth))
                row[f"bias2_{rule}"] = float(group[f"grad_bias2/{rule}/{layer}"].mean())
                row[f"var_{rule}"] = float(group[f"grad_var/{rule}/{layer}"].mean())
                row[f"cos_{rule}"] = float(group[f"grad_cos/{rule}/{layer}"].mean())
                row.update(backprop_mse_ratio(group, rule, layer, mse))
            rows.append(row)
    return pd.DataFrame(rows)


def grad_figures(table: pd.DataFrame, metrics: pd.DataFrame, info: pd.DataFrame,
                 folder: Path) -> list[Path]:
    files = []
    hidden = table[table.group == "hidden"]
    methods = sorted(hidden.method.unique())
    fig, axes = subplots(1, len(methods), figsize=(4.8 * len(methods), 3.8), squeeze=False)
    for ax, method in zip(axes[0], methods, strict=True):
        rows = hidden[hidden.method == method].sort_values("p_flip")
        for rule, name in LABELS.items():
            if f"rel_mse_{rule}" in rows:
                ax.plot(rows.p_flip, rows[f"rel_mse_{rule}"], marker="o", label=name)
        style_panel(ax, "reward flip probability", "MSE / ‖true gradient‖² (hidden layers)",
                    method, log_y=True)
    files.append(save_figure(fig, folder / "grad_mse_vs_pflip.png"))

    fig, axes = subplots(1, len(methods), figsize=(4.8 * len(methods), 3.8), squeeze=False)
    for ax, method in zip(axes[0], methods, strict=True):
        rows = hidden[hidden.method == method].sort_values("p_flip")
        for rule in (r for r in LABELS if r != BACKPROP.key):
            if f"ratio_bp_{rule}" in rows:
                err = np.vstack([rows[f"ratio_bp_{rule}"] - rows[f"ratio_bp_{rule}_low"],
                                 rows[f"ratio_bp_{rule}_high"] - rows[f"ratio_bp_{rule}"]])
                ax.errorbar(rows.p_flip, rows[f"ratio_bp_{rule}"], yerr=err, marker="o",
                            capsize=3, label=f"MSE_BP / MSE_{LABELS[rule]}")
        ax.axhline(1.0, color="k", ls="--", lw=0.8)
        style_panel(ax, "reward flip probability", "MSE ratio (> 1: rule beats BP)", method,
                    log_y=True)
    files.append(save_figure(fig, folder / "grad_mse_ratio_vs_pflip.png"))

    top = table[(table.p_flip == table.p_flip.max())
                & ~table.group.isin(["hidden", "all"])]
    fig, axes = subplots(1, len(methods), figsize=(4.8 * len(methods), 3.8), squeeze=False)
    for ax, method in zip(axes[0], methods, strict=True):
        rows = top[top.method == method]
        xs = np.arange(len(rows))
        for i, rule in enumerate(r for r in LABELS if f"rel_mse_{r}" in rows):
            ax.bar(xs + 0.27 * (i - 1), rows[f"rel_mse_{rule}"], width=0.27, label=LABELS[rule])
        ax.set_xticks(xs, rows.group)
        ax.set_yscale("log")
        ax.set_ylabel("MSE / ‖true gradient‖²")
        ax.set_title(f"{method}, p_flip {table.p_flip.max():g}, last checkpoint", fontsize=9)
        ax.legend(fontsize=7)
    files.append(save_figure(fig, folder / "grad_mse_layers.png"))

    rows = metrics[metrics.metric.str.match(r"grad_(mse/\w+|truth_sq)/hidden$")]
    rows = rows.merge(info, on="trial_id")
    rows = rows[rows.p_flip == rows.p_flip.max()]
    wide = rows.pivot_table(index=["trial_id", "method", "step"], columns="metric",
                            values="value").reset_index()
    fig, axes = subplots(1, len(methods), figsize=(4.8 * len(methods), 3.8), squeeze=False)
    for ax, method in zip(axes[0], methods, strict=True):
        sub = wide[wide.method == method]
        for rule, name in LABELS.items():
            col = f"grad_mse/{rule}/hidden"
            if col not in sub:
                continue
            rel = (sub[col] / sub["grad_truth_sq/hidden"]).groupby(sub.step)
            mean, se = rel.mean(), rel.std().fillna(0) / np.sqrt(rel.count())
            ax.errorbar(mean.index, mean, yerr=se, marker="o", capsize=3, label=name)
        style_panel(ax, "training step", "MSE / ‖true gradient‖² (hidden)",
                    f"{method}, p_flip {rows.p_flip.max():g}", log_y=True)
    files.append(save_figure(fig, folder / "grad_mse_over_training.png"))
    return files


GROUP_ORDER = {"hidden": 100, "head": 101, "all": 102}


def mechanism_table(final: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """Per (method, p_flip, checkpoint step, group): each rule's error decomposition relative
    to ‖g*‖², MSE_BP / MSE_rule with a paired-bootstrap CI over seeds, and the update."""
    rows = metrics[metrics.metric.str.match(r"(grad|update)_")]
    wide = rows.pivot_table(index=["trial_id", "step"], columns="metric",
                            values="value").reset_index()
    wide = wide.merge(final[["trial_id", "method", "p_flip"]], on="trial_id")
    groups = sorted({c.split("/")[-1] for c in wide.columns if c.startswith("grad_truth_sq/")},
                    key=lambda g: (GROUP_ORDER.get(g, 0), g))
    out = []
    for (method, p, step), frame in wide.groupby(["method", "p_flip", "step"], sort=True):
        for group in groups:
            truth = frame[f"grad_truth_sq/{group}"].to_numpy()
            row = {"method": method, "p_flip": p, "step": step, "group": group,
                   "seeds": len(frame), "truth_norm": float(np.mean(np.sqrt(truth)))}
            for rule in LABELS:
                column = f"grad_mse/{rule}/{group}"
                if column not in frame or frame[column].isna().all():
                    continue
                for stat in ("mse", "bias2", "var"):
                    row[f"{stat}_{rule}"] = float(np.mean(
                        frame[f"grad_{stat}/{rule}/{group}"].to_numpy() / truth))
                row[f"cos_{rule}"] = float(frame[f"grad_cos/{rule}/{group}"].mean())
                row.update(backprop_mse_ratio(frame, rule, group, frame[column].to_numpy()))
            for stat in ("norm", "cos", "gain"):
                column = f"update_{stat}/{group}"
                if column in frame and frame[column].notna().any():
                    row[f"update_{stat}"], row[f"update_{stat}_se"] = mean_se(
                        frame[column].dropna().to_numpy())
            out.append(row)
    return pd.DataFrame(out)


def mechanism_figure(table: pd.DataFrame, folder: Path) -> Path:
    """Left: MSE_BP / MSE_mixture per layer over checkpoints (sgprop runs). Right: the
    update's cosine with −g* over checkpoints, every method (all parameters)."""
    fig, axes = subplots(1, 2, figsize=(10, 4))
    mixed = table[table.get("ratio_bp_mix", pd.Series(dtype=float)).notna()] \
        if "ratio_bp_mix" in table else table.iloc[0:0]
    for (method, group), line in mixed.groupby(["method", "group"], sort=True):
        if group in ("all", "head"):
            continue
        err = np.vstack([line.ratio_bp_mix - line.ratio_bp_mix_low,
                         line.ratio_bp_mix_high - line.ratio_bp_mix])
        axes[0].errorbar(line.step, line.ratio_bp_mix, yerr=err, marker="o", capsize=3,
                         label=f"{method}: {group}")
    axes[0].axhline(1.0, color="k", ls="--", lw=0.8)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("training step")
    axes[0].set_ylabel("MSE_BP / MSE_mixture (> 1: mixture better)")
    axes[0].set_title("gradient-estimate MSE vs the exact gradient (95% CI)", fontsize=9)
    axes[0].legend(fontsize=6)
    updates = table[(table.group == "all")]
    if "update_cos" in updates:
        for method, line in updates.dropna(subset=["update_cos"]).groupby("method"):
            axes[1].errorbar(line.step, line.update_cos, yerr=line.update_cos_se, marker="o",
                             capsize=3, label=method)
    axes[1].axhline(0.0, color="k", ls="--", lw=0.8)
    axes[1].set_xlabel("training step")
    axes[1].set_ylabel("cos(update, −exact gradient)")
    axes[1].set_title("how well each method's actual step is aimed (mean ± SEM)", fontsize=9)
    axes[1].legend(fontsize=7)
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
    return save_figure(fig, folder / "mechanism.png")


def report(final: pd.DataFrame, metrics: pd.DataFrame, params: list[str],
           folder: Path) -> list[Path]:
    final = final.copy()
    final["method"] = final.apply(method_label, axis=1)
    if "p_flip" not in final:
        final["p_flip"] = 0.4
    info = final[[c for c in ("trial_id", "method", "p_flip", "seed") if c in final]]
    files = write_table(final_reward_table(final), folder, "e2_final_rewards")
    for column in CONDITIONS:
        if _varies(final, column) and "eval_reward" in final:
            files.append(final_vs(final, column, folder))
    if not any(_varies(final, c) for c in ("lr", "parents")):
        files += [f for f in (reward_curves(metrics, info, folder),
                              lambda_traces(metrics, info, folder)) if f is not None]
    if metrics.metric.str.startswith("grad_mse/").any():
        table = grad_table(final, metrics)
        files += write_table(table, folder, "e2_grad_mse")
        files += grad_figures(table, metrics, info, folder)
        mechanism = mechanism_table(final, metrics)
        files += write_table(mechanism, folder, "e2_mechanism")
        files.append(mechanism_figure(mechanism, folder))
    return files
