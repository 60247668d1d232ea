"""What one trial attempt produced, defined where its producer (the executor) and its
consumers (the Parquet store, the tracker, run and tune) can all depend on it.

`TrialOutcome` holds the fields every view of an attempt shares; `TrialRecord` is what the
executor returns (with the metric history and where it ran), and the tracker's `TrialRow`
(orchestrator/tracking/view.py) is the same outcome as Parquet holds it. Nothing here
imports the executor, Ray or a tracker; `tasks` (and so torch) only when a record is made
without metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # tasks import torch; the command line reads tracking.view before that
    from tasks import MetricLog


def _no_metrics() -> MetricLog:
    from tasks import MetricLog

    return MetricLog()


@dataclass(frozen=True)
class TrialOutcome:
    """One attempt of one trial (a configuration and a seed): how it ended."""

    trial_id: str
    config_id: str
    seed: int
    status: str  # "ok" | "failed"
    error: str | None
    duration_s: float
    finished_at: float  # seconds since the epoch (Parquet keeps milliseconds)


@dataclass(frozen=True)
class TrialRecord(TrialOutcome):
    """An attempt as the executor returns it: its metric history and where it ran; for a
    failed attempt, its log (traceback and output tail) that the driver keeps in DIR/logs/."""

    metrics: MetricLog = field(default_factory=_no_metrics)
    node: str = ""
    device: str = "cpu"
    gpu: str = ""  # the GPU's name; empty on CPU
    cpu_capability: str = ""  # torch's CPU kernel level on the worker (bit-identity)
    log: str = ""
