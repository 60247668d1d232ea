"""The study as Parquet holds it: which seed records exist, which are ok (and so reusable:
a trial id names a configuration and a seed, whose result is the same whoever runs it),
which Optuna trial each is tagged with, and seed values read back from the metrics."""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator import plan
from orchestrator.record import ResultStore
from orchestrator.records import TrialOutcome
from orchestrator.sync import metrics_loader
from orchestrator.tune.objective import seed_value
from orchestrator.tune_spec import TuneSpec


@dataclass(frozen=True)
class Recorded:
    """A seed record's latest attempt; `optuna_trial`/`optuna_state`: its tags, when this
    study wrote it (None when `sgsweep run` or another study did)."""

    status: str
    optuna_trial: int | None
    optuna_state: str | None


def block_for(spec: TuneSpec, params: Mapping[str, Any]) -> plan.Block:
    """The seed block a trial with these parameters runs (`SpecError` if they are invalid)."""
    (block,) = plan.expand(spec.sweep_for(params))
    return block


class StudyRecords:
    def __init__(self, store: ResultStore, spec: TuneSpec) -> None:
        self.store = store
        self.spec = spec
        self.rows: dict[str, Recorded] = {}
        latest = store.latest(["trial_id", "status", "tags"])
        for tid, status, text in zip(latest.trial_id, latest.status, latest.tags, strict=True):
            tags = json.loads(text or "{}")
            ours = tags.get("study") == spec.name
            self.rows[tid] = Recorded(status, tags.get("optuna_trial") if ours else None,
                                      tags.get("optuna_state") if ours else None)

    def add(self, records: Iterable[TrialOutcome], number: int, state: str) -> None:
        """Records just written for Optuna trial `number`, tagged `state`."""
        for r in records:
            self.rows[r.trial_id] = Recorded(r.status, number, state)

    def ok(self, trial_id: str) -> Recorded | None:
        row = self.rows.get(trial_id)
        return row if row is not None and row.status == "ok" else None

    def state_of(self, number: int) -> str | None:
        """The state the records tagged with Optuna trial `number` say it ended in."""
        return next((r.optuna_state for r in self.rows.values() if r.optuna_trial == number),
                    None)

    def values(self, trial_ids: Collection[str]) -> dict[str, float]:
        """Each trial's objective value, read back from its metrics (absent: none there)."""
        logs = metrics_loader(self.store.root)(trial_ids) if trial_ids else {}
        found = {tid: seed_value(log, self.spec.objective) for tid, log in logs.items()}
        return {tid: v for tid, v in found.items() if v is not None}
