"""E1 report: MSE per estimator, BP/SG ratio with a paired bootstrap CI, ratio-vs-d figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis.reports import save_figure, subplots, varying, write_table
from analysis.stats import mean_se, paired_bootstrap_ratio

BOOTSTRAP_RESAMPLES = 500


def estimator_columns(final: pd.DataFrame) -> list[str]:
    """sqerr_bp, sqerr_sg, then the λ-mixtures in decreasing λ."""
    lams = sorted((c for c in final.columns if c.startswith("sqerr_lam_")),
                  key=lambda c: -float(c.removeprefix("sqerr_lam_")))
    return [c for c in ("sqerr_bp", "sqerr_sg") if c in final] + lams


def ratio_table(final: pd.DataFrame, params: list[str]) -> pd.DataFrame:
    keys = [p for p in varying(final, params) if p != "lams"]
    for needed in ("case", "d", "k", "n"):
        if needed not in keys:
            keys.append(needed)
    estimators = estimator_columns(final)
    rows = []
    for key, group in final.groupby(keys, sort=True):
        row = dict(zip(keys, key, strict=True))
        row["seeds"] = len(group)
        for col in estimators:
            name = col.removeprefix("sqerr_")
            row[f"mse_{name}"], row[f"se_{name}"] = mean_se(group[col].to_numpy())
        ratio, low, high = paired_bootstrap_ratio(
            group.sqerr_bp.to_numpy(), group.sqerr_sg.to_numpy(), BOOTSTRAP_RESAMPLES)
        row.update(ratio_bp_sg=ratio, ci_low=low, ci_high=high,
                   theory=2.0 ** (row["d"] - row["k"]))
        rows.append(row)
    return pd.DataFrame(rows)


def ratio_figures(table: pd.DataFrame, folder: Path) -> list[Path]:
    """Per case (and per value of other swept params): ratio vs d at the smallest n."""
    panel_keys = [c for c in table.columns[: table.columns.get_loc("seeds")]
                  if c not in ("d", "k", "n")]
    files = []
    for panel, frame in table.groupby(panel_keys, sort=True):
        panel = panel if isinstance(panel, tuple) else (panel,)
        n = 1 if (frame.n == 1).any() else int(frame.n.min())
        frame = frame[frame.n == n]
        fig, ax = subplots(figsize=(5.5, 4))
        for i, (k, line) in enumerate(frame.groupby("k", sort=True)):
            line = line.sort_values("d")
            color = f"C{i}"
            err = np.vstack([line.ratio_bp_sg - line.ci_low, line.ci_high - line.ratio_bp_sg])
            ax.errorbar(line.d, line.ratio_bp_sg, yerr=err, marker="o", color=color,
                        capsize=3, label=f"k = {k}")
            ax.plot(line.d, 2.0 ** (line.d - k), "--", color=color, alpha=0.7)
        ax.set_yscale("log")
        ax.set_xlabel("d (hypercube dimension)")
        ax.set_ylabel("MSE_BP / MSE_SG")
        label = ", ".join(f"{k}={v}" for k, v in zip(panel_keys, panel, strict=True))
        ax.set_title(f"E1 {label}, n = {n} (dashed: $2^{{d-k}}$)", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        stem = "_".join(f"{k}-{v}" for k, v in zip(panel_keys, panel, strict=True))
        files.append(save_figure(fig, folder / f"ratio_vs_d_{stem}.png"))
    return files


def lambda_figures(table: pd.DataFrame, folder: Path) -> list[Path]:
    """MSE of λ·BP + (1−λ)·SG relative to BP vs λ (λ = 1 is BP, 0 is SG), a line per
    config, a panel per case: where Condition B fails (leak) a mixture wins."""
    lams = sorted(float(c.removeprefix("mse_lam_")) for c in table.columns
                  if c.startswith("mse_lam_"))
    if not lams:
        return []
    grid = [0.0, *lams, 1.0]
    label_keys = [c for c in table.columns[: table.columns.get_loc("seeds")]
                  if c != "case" and table[c].nunique() > 1]
    files = []
    for case, frame in table.groupby("case", sort=True):
        fig, ax = subplots(figsize=(5.5, 4))
        for i, values in enumerate(frame.to_dict("records")):
            mse = [values["mse_sg"], *(values[f"mse_lam_{lam:g}"] for lam in lams),
                   values["mse_bp"]]
            rel = np.asarray(mse) / values["mse_bp"]
            label = ", ".join(f"{k}={values[k]}" for k in label_keys)
            ax.plot(grid, rel, marker="o", color=f"C{i % 10}", label=label)
        ax.axhline(1.0, color="grey", lw=0.8, ls=":")
        ax.set_yscale("log")
        ax.set_xlabel("λ (0 = synthetic gradient, 1 = backprop)")
        ax.set_ylabel("MSE / MSE_BP")
        ax.set_title(f"E1 case={case}: λ-mixtures", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
        files.append(save_figure(fig, folder / f"mse_vs_lambda_case-{case}.png"))
    return files


def report(final: pd.DataFrame, metrics: pd.DataFrame, params: list[str],
           folder: Path) -> list[Path]:
    table = ratio_table(final, params)
    return (write_table(table, folder, "e1_ratios") + ratio_figures(table, folder)
            + lambda_figures(table, folder))


def lambda_quadratic(sq_bp: np.ndarray, sq_sg: np.ndarray, sq_mix: np.ndarray,
                     lam: float) -> tuple[float, float, float]:
    """Mean over seeds of |λΔ_BP + (1−λ)Δ_SG|² is exactly q(λ) = λ²A + 2λ(1−λ)C + (1−λ)²B
    with A, B the mean squared errors of BP and SG and C the mean inner product ⟨Δ_BP, Δ_SG⟩.
    One mixture's squared errors on the same seeds give C; returns (A, B, C)."""
    if not 0 < lam < 1:
        raise ValueError(f"need a mixture strictly between BP and SG, got λ = {lam}")
    a, b, s = (np.asarray(x, dtype=float) for x in (sq_bp, sq_sg, sq_mix))
    c = (s - lam**2 * a - (1 - lam) ** 2 * b) / (2 * lam * (1 - lam))
    return float(a.mean()), float(b.mean()), float(c.mean())


def optimal_lambda(a: float, b: float, c: float) -> tuple[float, float]:
    """The minimiser of q(λ) on [0, 1] and its value (closed form of `lambda_quadratic`)."""
    curvature = a + b - 2 * c  # = mean |Δ_BP − Δ_SG|² ≥ 0
    lam = 1.0 if curvature <= 0 else min(1.0, max(0.0, (b - c) / curvature))
    return lam, lam**2 * a + 2 * lam * (1 - lam) * c + (1 - lam) ** 2 * b


def tune_reference(final: pd.DataFrame, objective: dict, searched: list[str],
                   seeds: list[int]) -> dict | None:
    """Closed-form optimum of a study that tunes `lam` alone for the mean of `sqerr_lam`.

    `final` holds the study's seed records (params + final metrics). Returns the optimal λ,
    the optimal objective, and how well the quadratic reproduces every recorded trial."""
    if (searched != ["lam"] or objective.get("metric") != "sqerr_lam"
            or objective.get("aggregate") != "mean" or final.empty):
        return None
    rows = final[final.seed.isin(seeds) & final.lam.between(0, 1, inclusive="neither")]
    per_config = rows.groupby("lam").filter(lambda g: set(g.seed) == set(seeds))
    if per_config.empty:
        return None
    lams = per_config.lam.unique()
    anchor = float(lams[np.argmin(np.abs(lams - 0.5))])  # best conditioned
    base = per_config[per_config.lam == anchor].sort_values("seed")
    a, b, c = lambda_quadratic(base.sqerr_bp, base.sqerr_sg, base.sqerr_lam, anchor)
    lam_star, q_star = optimal_lambda(a, b, c)
    observed = per_config.groupby("lam").sqerr_lam.mean()
    predicted = np.array([x**2 * a + 2 * x * (1 - x) * c + (1 - x) ** 2 * b
                          for x in observed.index])
    error = float(np.max(np.abs(predicted - observed.to_numpy()) / observed.to_numpy()))
    return {"lam_opt": lam_star, "objective_opt": q_star, "mse_bp": a, "mse_sg": b,
            "quadratic_max_rel_error": error, "trials_checked": int(len(observed))}
