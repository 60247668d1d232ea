"""The tracker seam: what the engine asks of a tracking backend, and how to get one.

Parquet is the source of truth; a tracker mirrors it for people to browse. The engine
calls four verbs and nothing else:

    tracker = open_tracker(uri, out_dir)          # "none" -> NoTracker, else MLflow
    live = tracker.start(info, view, pending)     # an invocation of `sgsweep run`
    live.record(records)                          # trials as their chunk lands in Parquet
    live.finish(status, counts, stop)             # FINISHED / KILLED / FAILED
    tracker.sync(view)                            # `sgsweep mlflow-sync`: mirror == Parquet

plus `start_study` (the study view of `sgsweep tune`), `attach` (report files) and
`ui_urls` (`sgsweep ui`). `start` also repairs what an earlier, interrupted invocation left
behind, so a plain re-run is enough to make the mirror exact again. A backend that fails
says so once and stops; the sweep goes on and `sync` catches up later.

MLflow (`orchestrator/tracking/mlflow_tracker.py`) is the one implementation and the only
module that imports `mlflow`; `NoTracker` is the second (`--tracking-uri none`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from orchestrator.tracking.base import (
    DIR_ID_FILE,
    STORE_FILE,
    Invocation,
    InvocationInfo,
    NoTracker,
    Study,
    SyncSummary,
    Tracker,
    TrackingError,
    default_tracking_uri,
    dir_id,
    error_line,
    resolve_tracking_uri,
    store_name,
)
from orchestrator.tracking.view import DEFAULT_LEVEL, LEVELS, SweepView, TrialRow

__all__ = [
    "DEFAULT_LEVEL", "DIR_ID_FILE", "LEVELS", "Invocation", "InvocationInfo", "NoTracker",
    "Study", "SweepView", "SyncSummary", "Tracker", "TrackingError", "TrialRow",
    "STORE_FILE", "default_tracking_uri", "dir_id", "error_line", "open_tracker",
    "rebuild_broken_store", "resolve_tracking_uri", "store_name",
]


def open_tracker(uri: str | None, out_dir: Path | None = None) -> Tracker:
    """The tracker for a resolved URI (see `resolve_tracking_uri`): None -> NoTracker."""
    if not uri:
        return NoTracker()
    from orchestrator.tracking.mlflow_tracker import MlflowTracker

    return MlflowTracker(uri, out_dir)


def rebuild_broken_store(out_dir: Path, progress: Callable[[str], None],
                         by_sync: bool = False) -> bool:
    """DIR's own MLflow store set aside if MLflow cannot use it (half-created by a full
    disk or a kill, damaged), so it is made anew and rebuilt from Parquet; links planted
    at its paths refused. Call with DIR's lock held."""
    from orchestrator.tracking import mlflow_tracker as store

    return store.rebuild_broken_store(
        out_dir, progress, store.REBUILT_BY_SYNC if by_sync else store.REBUILT_BY_RUN)
