"""Report dispatch: each task names its analysis; other tasks get a generic summary table."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.stats import mean_se

# (final-metrics frame, long metrics, varying params, folder) -> files written
Reporter = Callable[[pd.DataFrame, pd.DataFrame, list[str], Path], list[Path]]


def final_metrics(trials: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per ok trial: its params plus each metric's value at its last step."""
    ok = trials[trials.status == "ok"]
    if metrics.empty:
        return ok.copy()
    last = metrics.sort_values("step").groupby(["trial_id", "metric"]).value.last().unstack()
    return ok.merge(last, left_on="trial_id", right_index=True, how="left")


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


def save_figure(fig, path: Path) -> Path:
    """Lay a report figure out, write it as a 120-dpi PNG, and free it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
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


def write(task: str, trials: pd.DataFrame, metrics: pd.DataFrame, params: list[str],
          folder: Path) -> list[Path]:
    from analysis import bandit, expert, popgym

    reporters: dict[str, Reporter] = {"expert": expert.report, "bandit": bandit.report,
                                      "popgym": popgym.report}
    final = final_metrics(trials, metrics)
    files = generic(final, metrics, params, folder)
    if task in reporters and not final.empty:
        files += reporters[task](final, metrics, params, folder)
    return files


def _expert_tune_reference(final, objective, searched, seeds):
    from analysis import expert

    return expert.tune_reference(final, objective, searched, seeds)


# Closed-form optima a tuning report compares the study against, per task.
TUNE_REFERENCES = {"expert": _expert_tune_reference}
