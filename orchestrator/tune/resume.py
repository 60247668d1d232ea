"""A study resumed after a stop: each trial a crash left RUNNING is settled so that Optuna
and Parquet say the same.

A trial's records are written to Parquet, tagged with the state it is about to be told,
before Optuna is told (`optimise`). A stop between the two (a kill -9, a torn journal
record) leaves it RUNNING in Optuna with its records in Parquet: it is told now what those
say (COMPLETE with the value computed from its seeds' records, PRUNED, FAIL), never run
again. A RUNNING trial whose seeds are all recorded ok, by it or by the trials it reused,
is told COMPLETE likewise. Any other is an orphan: marked FAIL (user attribute `orphaned`)
and its parameters enqueued again (`retry_of`), to run first; the seeds it shares with
recorded trials are reused, not run again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.spec import SpecError
from orchestrator.tune.objective import aggregate, reports
from orchestrator.tune.recorded import StudyRecords, block_for
from orchestrator.tune.search import enqueue
from orchestrator.tune_spec import TuneSpec


@dataclass
class Settled:
    told: list[int] = field(default_factory=list)  # finished in Parquet, told now
    orphaned: list[int] = field(default_factory=list)  # failed and enqueued again


def settle(study, storage, spec: TuneSpec, recorded: StudyRecords) -> Settled:
    """Settle every RUNNING trial of `study` (see the module docstring). `storage`: the
    study's Optuna storage, whose public API sets attributes of a trial not in hand."""
    from optuna.trial import TrialState

    settled = Settled()
    study_id = storage.get_study_id_from_name(study.study_name)
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, frozen.number)
        state = recorded.state_of(frozen.number)
        value = None
        if state in (None, "complete"):
            value = _value_from_records(storage, trial_id, frozen, spec, recorded)
        if state == "pruned":
            study.tell(frozen.number, state=TrialState.PRUNED)
        elif state == "fail":
            study.tell(frozen.number, state=TrialState.FAIL)
        elif value is not None:
            storage.set_trial_user_attr(trial_id, "settled_from_parquet", True)
            study.tell(frozen.number, value)
        else:
            storage.set_trial_user_attr(trial_id, "orphaned", True)
            study.tell(frozen.number, state=TrialState.FAIL)
            enqueue(study, frozen.params, retry_of=frozen.number)
            settled.orphaned.append(frozen.number)
            continue
        settled.told.append(frozen.number)
    return settled


def _value_from_records(storage, trial_id: int, frozen, spec: TuneSpec,
                        recorded: StudyRecords) -> float | None:
    """The trial's objective from its seeds' ok records, with the values Optuna has not
    yet had reported; None unless every seed has one."""
    try:
        block = block_for(spec, frozen.params)
    except SpecError:
        return None
    ids = {t.seed: t.trial_id for t in block.trials}
    if not all(recorded.ok(tid) for tid in ids.values()):
        return None
    found = recorded.values(list(ids.values()))
    if len(found) != len(ids):
        return None
    seeds: list[int] = []
    values: list[float] = []
    for rung in spec.rungs:
        seeds.extend(rung)
        values.extend(found[ids[s]] for s in rung)
        for step, v in reports(spec, seeds, values, len(rung)):
            if step not in frozen.intermediate_values:
                storage.set_trial_intermediate_value(trial_id, step, v)
    reused = {str(t.seed): row.optuna_trial for t in block.trials
              if (row := recorded.ok(t.trial_id)) and row.optuna_trial != frozen.number}
    if reused:
        storage.set_trial_user_attr(trial_id, "reused", reused)
    return aggregate(values, spec.objective.aggregate)

