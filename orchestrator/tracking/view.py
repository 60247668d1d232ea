"""What a tracker mirrors, whatever the backend: one sweep's trials as Parquet holds them,
grouped by configuration, with readable names and each configuration's seeds summarised.

The engine builds a `SweepView` from Parquet (the source of truth); a tracker turns it
into runs. Nothing here knows MLflow.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.records import TrialOutcome

if TYPE_CHECKING:  # tasks import torch; the command line reads LEVELS before that
    from tasks import MetricLog

# How many runs a tracker keeps per configuration:
#   config: one run per configuration (its seeds summarised);
#   seed:   that, plus one run per seed nested under it (the trial's full metric history);
#   auto:   seed runs only for configurations whose trials take AUTO_SEED_RUN_S or more
#           each (a seed run costs ~10-35 ms on SQLite: noise next to a second of compute,
#           ten times the trial itself for E1's millisecond trials).
LEVELS = ("auto", "config", "seed")
DEFAULT_LEVEL = "auto"
AUTO_SEED_RUN_S = 1.0


@dataclass(frozen=True)
class TrialRow(TrialOutcome):
    """One trial's latest attempt, as recorded in Parquet (metrics are loaded on demand)."""

    invocation: str

    @property
    def attempt(self) -> str:
        """Names this attempt: a re-run trial (e.g. --retry-failed) gets a new one."""
        return f"{self.status}@{round(self.finished_at * 1000)}"

    @property
    def started_at(self) -> float:
        return self.finished_at - self.duration_s

    @classmethod
    def of(cls, record: TrialOutcome, invocation: str) -> TrialRow:
        """From an engine `TrialRecord`, rounded as Parquet stores it."""
        return cls(record.trial_id, record.config_id, int(record.seed), record.status,
                   record.error, float(record.duration_s),
                   int(record.finished_at * 1000) / 1000, invocation)


@dataclass
class SweepView:
    """One sweep of a results directory, as a tracker must show it."""

    sweep: str
    task: str
    out_dir: Path
    dir_id: str  # names DIR in a shared tracking store (see tracking.dir_id)
    configs: dict[str, dict[str, Any]]  # config_id -> parameters, in the task's field order
    trials: dict[str, TrialRow]  # trial_id -> latest attempt
    level: str | None = DEFAULT_LEVEL  # None: as the latest invocation in the store chose
    # trial ids -> their metric histories (read from Parquet when a run must be (re)written)
    load_metrics: Callable[[Collection[str]], dict[str, MetricLog]] = field(
        default=lambda ids: {}, repr=False)
    names: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.names:
            self.names = config_names(self.configs)

    def by_config(self) -> dict[str, list[TrialRow]]:
        groups: dict[str, list[TrialRow]] = {}
        for row in self.trials.values():
            groups.setdefault(row.config_id, []).append(row)
        for rows in groups.values():
            rows.sort(key=lambda r: r.seed)
        return groups

    def add(self, row: TrialRow) -> None:
        self.trials[row.trial_id] = row


def wants_seed_runs(level: str, trials: Iterable[TrialRow]) -> bool:
    if level == "seed":
        return True
    if level == "config":
        return False
    durations = [t.duration_s for t in trials]
    return bool(durations) and sum(durations) / len(durations) >= AUTO_SEED_RUN_S


def config_names(configs: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """Readable names from the parameters that vary across the sweep's configurations:
    text values bare, then `key=value` in the task's field order (`noisy d=10 k=3 n=1`)."""
    if not configs:
        return {}
    keys: list[str] = []
    for config in configs.values():
        keys.extend(k for k in config if k not in keys)
    values = {k: {_text(c.get(k)) for c in configs.values()} for k in keys}
    varying = [k for k in keys if len(values[k]) > 1]
    names = {}
    for cid, config in configs.items():
        bare = [str(config[k]) for k in varying if isinstance(config.get(k), str)]
        pairs = [f"{k}={_text(config.get(k))}" for k in varying
                 if not isinstance(config.get(k), str)]
        names[cid] = " ".join(bare + pairs) or "all"
    return names


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


def digest(rows: Iterable[TrialRow]) -> str:
    """Names the set of attempts a configuration run summarises."""
    text = ",".join(sorted(f"{r.trial_id}:{r.attempt}" for r in rows))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Aggregate:
    """A final metric over a configuration's seeds: mean, standard error and the 95%
    t-interval of the mean (se and the interval need two seeds or more)."""

    n: int
    mean: float
    se: float | None
    ci_low: float | None
    ci_high: float | None


def aggregate(values: list[float]) -> Aggregate:
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return Aggregate(n, mean, None, None, None)
    from scipy.stats import t

    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    se = math.sqrt(var / n)
    half = float(t.ppf(0.975, n - 1)) * se
    return Aggregate(n, mean, se, mean - half, mean + half)


@dataclass
class ConfigSummary:
    """A configuration's seeds: which failed, and each final metric aggregated over the
    seeds that finished (with each seed's own final value)."""

    ok: int
    failed: int
    failed_seeds: list[int]
    first_error: str | None
    metrics: dict[str, Aggregate]
    per_seed: dict[str, list[tuple[int, float]]]  # metric -> [(seed, final value)]


def summarise(rows: list[TrialRow], finals: Mapping[str, Mapping[str, float]]) -> ConfigSummary:
    """`finals`: trial_id -> that trial's final metrics (MetricLog.final())."""
    ok = [r for r in rows if r.status == "ok"]
    failed = sorted((r for r in rows if r.status != "ok"), key=lambda r: r.seed)
    per_seed: dict[str, list[tuple[int, float]]] = {}
    for row in sorted(ok, key=lambda r: r.seed):
        for name, value in finals.get(row.trial_id, {}).items():
            per_seed.setdefault(name, []).append((row.seed, value))
    metrics = {name: aggregate([v for _, v in pairs]) for name, pairs in sorted(per_seed.items())}
    first_error = next((r.error for r in failed if r.error), None)
    return ConfigSummary(len(ok), len(failed), [r.seed for r in failed], first_error,
                         metrics, per_seed)
