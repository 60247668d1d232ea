"""Parquet as the tracker sees it, and `sgsweep mlflow-sync DIR`.

Parquet is the source of truth. `sweep_view` turns one sweep of DIR into the
`SweepView` a tracker mirrors (latest attempt per trial, configurations named from the
parameters that vary, metric histories read on demand); `sync_dir` hands every sweep of DIR
to the tracker under DIR's lock, so a sync never races a run's own writer. Running it twice
changes nothing the second time.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Collection, Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from orchestrator.record import METRICS_SCHEMA, ResultStore, read_parts
from orchestrator.tracking import (
    SweepView,
    SyncSummary,
    TrialRow,
    default_tracking_uri,
    dir_id,
    open_tracker,
    rebuild_broken_store,
)
from orchestrator.tracking.view import DEFAULT_LEVEL
from tasks import REGISTRY, MetricLog

TRIAL_FIELDS = ["trial_id", "sweep", "task", "config_id", "seed", "status", "error",
                "duration_s", "finished_at", "invocation", "config"]


def latest_trials(out_dir: Path) -> pd.DataFrame:
    """The latest attempt of every trial in DIR (all sweeps)."""
    return ResultStore(out_dir).latest(TRIAL_FIELDS)


def metrics_loader(out_dir: Path):
    """trial ids -> their metric histories, read from DIR/metrics only for those trials."""

    def load(trial_ids: Collection[str]) -> dict[str, MetricLog]:
        import pyarrow.compute as pc

        table = read_parts(out_dir / "metrics", schema=METRICS_SCHEMA,
                           filter=pc.field("trial_id").isin(sorted(set(trial_ids))))
        if table is None or not trial_ids:
            return {}
        logs: dict[str, MetricLog] = {}
        for tid, step, name, value in zip(*(table.column(c).to_pylist() for c in (
                "trial_id", "step", "metric", "value")), strict=True):
            logs.setdefault(tid, MetricLog()).log(name, value, step)
        return logs

    return load


def _ordered(task: str, config: dict[str, Any]) -> dict[str, Any]:
    """A config's parameters in its task's field order (Parquet keeps them sorted)."""
    fields = list(REGISTRY[task].config_fields()) if task in REGISTRY else []
    order = {name: i for i, name in enumerate(fields)}
    return dict(sorted(config.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


def sweep_view(out_dir: Path, sweep: str, task: str, trials: pd.DataFrame,
               spec_configs: Iterable[tuple[str, dict[str, Any]]] = (),
               level: str | None = DEFAULT_LEVEL) -> SweepView:
    """`trials`: latest attempts (any sweeps; this sweep's are taken). `spec_configs`:
    (config_id, config) of the sweep file, so names vary by what the file sweeps."""
    rows = trials[trials.sweep == sweep] if len(trials) else trials
    configs = {cid: _ordered(task, dict(config)) for cid, config in spec_configs}
    for cid, text in zip(rows.config_id, rows.config, strict=True):
        if cid not in configs:
            configs[cid] = _ordered(task, json.loads(text))
    view_trials = {}
    for r in rows.itertuples(index=False):
        view_trials[r.trial_id] = TrialRow(
            r.trial_id, r.config_id, int(r.seed), r.status,
            r.error if isinstance(r.error, str) else None, float(r.duration_s),
            pd.Timestamp(r.finished_at).timestamp(), r.invocation or "")
    return SweepView(sweep=sweep, task=task, out_dir=out_dir, dir_id=dir_id(out_dir),
                     configs=configs, trials=view_trials, level=level,
                     load_metrics=metrics_loader(out_dir))


def _spec_configs(out_dir: Path, sweep: str) -> list[tuple[str, dict[str, Any]]]:
    """The configurations of DIR's copy of the sweep file (none if missing or invalid)."""
    from orchestrator import plan
    from orchestrator.spec import SpecError, load_spec

    path = out_dir / "specs" / f"{sweep}.yaml"
    if not path.is_file():
        return []
    try:
        return [(b.config_id, b.config) for b in plan.expand(load_spec(path))]
    except SpecError:
        return []


def sync_dir(out_dir: Path, tracking_uri: str, level: str | None = None,
             progress: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
             ) -> SyncSummary:
    """`sgsweep mlflow-sync`: every sweep of DIR mirrored exactly. `level`: None keeps
    the level of the sweep's latest invocation. DIR's own store, if MLflow cannot use it
    (half-created), is set aside and rebuilt."""
    from orchestrator.engine import directory_lock

    ResultStore(out_dir).check()  # a damaged part is named before MLflow is opened
    tracker = open_tracker(tracking_uri, out_dir)
    total = SyncSummary()
    with directory_lock(out_dir, purpose="mlflow-sync"):
        if tracking_uri == default_tracking_uri(out_dir):
            rebuild_broken_store(out_dir, progress, by_sync=True)
        trials = latest_trials(out_dir)
        for sweep, group in trials.groupby("sweep"):
            view = sweep_view(out_dir, str(sweep), str(group.task.iloc[0]), group,
                              _spec_configs(out_dir, str(sweep)), level)
            summary = tracker.sync(view)
            for name in vars(total):
                setattr(total, name, getattr(total, name) + getattr(summary, name))
    return total
