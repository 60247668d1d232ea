"""Report dispatch: each task names its analysis; other tasks get a generic summary table."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.stats import mean_se, paired_bootstrap_ratio
from learners.compared import BACKPROP

# (final-metrics frame, long metrics, varying params, folder) -> files written
Reporter = Callable[[pd.DataFrame, pd.DataFrame, list[str], Path], list[Path]]


def final_metrics(trials: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per ok trial: its params plus each metric's value at its last step."""
    ok = trials[trials.status == "ok"]
    if metrics.empty:
        return ok.copy()
    last = metrics.sort_values("step").groupby(["trial_id", "metric"]).value.last().unstack()
    return ok.merge(last, left_on="trial_id", right_index=True, how="left")


def lambda_rule(row: pd.Series) -> str | None:
    """The λ rule a trial names in `lam_rule` (one of learners.feedback.RULES beyond the
    fixed and adaptive λ that `adaptive` chooses), or None."""
    value = row.get("lam_rule")
    return value if isinstance(value, str) and value else None


def backprop_mse_ratio(frame: pd.DataFrame, rule: str, group: str, mse: np.ndarray,
                       ) -> dict[str, float]:
    """MSE_BP / MSE_rule over the frame's seeds (`mse`: the rule's, paired by row) with a
    paired-bootstrap 95% CI, as columns ratio_bp_<rule>[_low, _high]; none for backprop."""
    if rule == BACKPROP.key:
        return {}
    ratio, low, high = paired_bootstrap_ratio(
        frame[f"grad_mse/{BACKPROP.key}/{group}"].to_numpy(), mse, 500)
    return {f"ratio_bp_{rule}": ratio, f"ratio_bp_{rule}_low": low,
            f"ratio_bp_{rule}_high": high}


def last_checkpoint(metrics: pd.DataFrame, prefix: str) -> pd.DataFrame:
    """Metrics named `prefix…` at each trial's last step that logged any of them; one row
    per trial, one column per metric (gradient statistics are logged at checkpoints)."""
    rows = metrics[metrics.metric.str.startswith(prefix)]
    rows = rows[rows.step == rows.groupby("trial_id").step.transform("max")]
    return rows.pivot_table(index="trial_id", columns="metric", values="value")


def varying(frame: pd.DataFrame, params: list[str]) -> list[str]:
    """The params that take more than one value in this sweep."""
    return [p for p in params if p in frame and frame[p].astype(str).nunique() > 1]


def summary_table(final: pd.DataFrame, params: list[str], metrics: list[str]) -> pd.DataFrame:
    """Mean and SE over seeds of each metric, per config."""
    keys = varying(final, params) or ["config_id"]
    rows = []
    for key, group in final.groupby([final[k].astype(str) if final[k].dtype == object
                                     else final[k] for k in keys], sort=True):
        row = dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True))
        row["seeds"] = len(group)
        for m in metrics:
            row[f"{m}_mean"], row[f"{m}_se"] = mean_se(group[m].dropna().to_numpy())
        rows.append(row)
    return pd.DataFrame(rows)


def subplots(nrows: int = 1, ncols: int = 1, **kwargs: Any) -> tuple[Any, Any]:
    """A report figure and its axes, as `pyplot.subplots` gives them, but made without
    pyplot: no global backend is chosen or switched (importing analysis changes nothing in
    the caller's matplotlib), and nothing is kept alive in pyplot's figure registry."""
    from matplotlib.figure import Figure

    figure_keys = {"figsize", "dpi", "layout"}
    fig = Figure(**{k: v for k, v in kwargs.items() if k in figure_keys})
    axes = fig.subplots(nrows, ncols, **{k: v for k, v in kwargs.items() if k not in figure_keys})
    return fig, axes


def style_panel(ax: Any, xlabel: str, ylabel: str, title: str, log_y: bool = False) -> None:
    """A report panel's labels, small title, light grid (minor lines too on a log y axis)
    and small legend."""
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both" if log_y else "major", alpha=0.3)
    ax.legend(fontsize=7)


def save_figure(fig: Any, path: Path) -> Path:
    """Lay a report figure out and write it as a 120-dpi PNG (Agg, chosen by the file type)."""
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def write_table(table: pd.DataFrame, folder: Path, stem: str) -> list[Path]:
    csv = folder / f"{stem}.csv"
    md = folder / f"{stem}.md"
    table.to_csv(csv, index=False)
    md.write_text(to_markdown(table) + "\n")
    return [csv, md]


def to_markdown(table: pd.DataFrame) -> str:
    def cell(v) -> str:
        if isinstance(v, (float, np.floating)):
            return f"{v:.4g}"
        return str(v)

    header = "| " + " | ".join(map(str, table.columns)) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(False)]
    return "\n".join([header, rule, *body])


def generic(final: pd.DataFrame, metrics: pd.DataFrame, params: list[str],
            folder: Path) -> list[Path]:
    names = sorted(metrics.metric.unique()) if not metrics.empty else []
    return write_table(summary_table(final, params, names), folder, "summary")


def task_hook(task: str, hook: str) -> Callable[..., Any] | None:
    """The function a registered task names for `hook` ("report" or "tune_reference"), or
    None if it names none (then the generic tables are all its report has)."""
    import importlib

    from tasks import REGISTRY

    path = getattr(REGISTRY.get(task), hook, "")
    if not path:
        return None
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def write(task: str, trials: pd.DataFrame, metrics: pd.DataFrame, params: list[str],
          folder: Path) -> list[Path]:
    final = final_metrics(trials, metrics)
    files = generic(final, metrics, params, folder)
    reporter: Reporter | None = task_hook(task, "report")
    if reporter is not None and not final.empty:
        files += reporter(final, metrics, params, folder)
    return files
