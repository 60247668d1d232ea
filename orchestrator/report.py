"""`sgsweep report DIR`: load results, hand each sweep to its task's analysis, attach the
files to the tracker's latest run of the sweep."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from orchestrator import provenance, safefiles
from orchestrator.record import ResultStore
from orchestrator.status import spec_trial_ids
from orchestrator.tracking import open_tracker, resolve_tracking_uri

log = logging.getLogger(__name__)


def load_results(out_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trials, metrics): the latest attempt of each trial, and its metrics (long form)."""
    store = ResultStore(out_dir)
    store.check()
    trials = store.latest()
    if trials.empty:
        return pd.DataFrame(), pd.DataFrame(columns=["trial_id", "step", "metric", "value"])
    metrics_table = store.read_metrics()
    metrics = (metrics_table.to_pandas() if metrics_table is not None
               else pd.DataFrame(columns=["trial_id", "step", "metric", "value"]))
    metrics = metrics[metrics.trial_id.isin(trials.trial_id)]
    return trials.reset_index(drop=True), metrics.reset_index(drop=True)


def write_report(out_dir: str | Path, tracking_uri: str | None = None) -> Path | None:
    """Write DIR/report/<sweep>/ for every sweep in DIR; returns the report folder."""
    from analysis import reports
    from orchestrator.tune import is_tuning_directory

    out_dir = Path(out_dir)
    if is_tuning_directory(out_dir):
        return write_tune_report(out_dir, tracking_uri)
    trials, metrics = load_results(out_dir)
    if trials.empty:
        return None
    root = out_dir / "report"
    planned = spec_trial_ids(out_dir)
    invocations = ResultStore(out_dir).read_invocations()
    tracker = None  # opened once, for the first sweep with files to attach
    for sweep, sweep_trials in trials.groupby("sweep"):
        if planned.get(str(sweep)) is not None:  # with trials another sweep recorded first
            sweep_trials = trials[trials.trial_id.isin(planned[str(sweep)])]
        task = sweep_trials.task.iloc[0]
        folder = root / str(sweep)
        sweep_metrics = metrics[metrics.trial_id.isin(sweep_trials.trial_id)]
        params = sorted(json.loads(sweep_trials.config.iloc[0]))
        with safefiles.staged_folder(out_dir, folder) as staging:
            written = reports.write(str(task), sweep_trials, sweep_metrics, params, staging)
            write_header(staging / "summary.md", f"Report: sweep {sweep}", invocations,
                         sweep_trials, str(sweep))
            files = [folder / path.name for path in written]
        if files:
            tracker = tracker or open_tracker(resolve_tracking_uri(out_dir, tracking_uri), out_dir)
            tracker.attach(str(sweep), out_dir, files)
    return root


def write_tune_report(out_dir: Path, tracking_uri: str | None = None) -> Path:
    """DIR/report/<study>/ for a tuning directory (`sgsweep tune`): the study's trials,
    history, importances and slice plot, logged to the study's MLflow parent run."""
    from analysis import tune
    from orchestrator.tune import best_trial, load_study

    optuna_study, info = load_study(out_dir)
    study = info["study"]
    folder = out_dir / "report" / study
    trials, metrics = load_results(out_dir)
    with safefiles.staged_folder(out_dir, folder) as staging:
        written = tune.report(optuna_study, info, best_trial(optuna_study), staging, trials,
                              metrics)
        if not trials.empty:
            header = staging / "provenance.md"
            write_header(header, f"Provenance: study {study}",
                         ResultStore(out_dir).read_invocations(), trials, study)
            written.append(header)
        files = [folder / path.name for path in written]
    if files:
        tracker = open_tracker(resolve_tracking_uri(out_dir, tracking_uri), out_dir)
        tracker.attach(study, out_dir, files, role="study")
    return folder


def write_header(path: Path, title: str, invocations: list[dict], trials: pd.DataFrame,
                 sweep: str) -> None:
    """Put the report's header at the top of its Markdown file `path`: where the results
    came from (code, packages, hardware), and a warning (also logged) for each way its
    trials mix code versions or CPU capabilities."""
    warnings = provenance.mixed_warnings(invocations, trials, sweep)
    for line in warnings:
        log.warning("warning: %s", line)
    lines = [f"# {title}", "", *provenance.header_lines(invocations, trials), ""]
    lines += [f"> **Warning:** {line}" for line in warnings] + ([""] if warnings else [])
    body = path.read_text() if path.is_file() else ""
    path.write_text("\n".join(lines) + ("\n## Summary\n\n" + body if body else ""))
