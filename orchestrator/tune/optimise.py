"""The optimise loop: Optuna asks, the engine's `ChunkPool` runs each trial's seeds in
rungs, Optuna is told; each finished trial's seed records go to Parquet, tagged with the
study, its Optuna trial number and its final state, and to the tracker.

One row per trial id: a seed already recorded ok (a trial id names a configuration and a
seed, whose result is the same whoever runs it) is reused, not run again — Optuna proposed
the same parameters twice, or an orphan runs again — and the trial says whose record it
reused (user attribute `reused`: seed -> Optuna trial number, null for a record of
`sgsweep run`). Two trials of the same parameters are never in flight together: the later
one waits for the earlier to finish, then reuses its records. The records are written
before Optuna is told, so a stop between the two is settled on resume (`resume.settle`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from orchestrator import plan, schedule, signals
from orchestrator.engine import EngineOptions
from orchestrator.errors import RunError
from orchestrator.record import ResultStore
from orchestrator.records import TrialRecord
from orchestrator.spec import SpecError
from orchestrator.tracking import Study
from orchestrator.tune.best import write_best
from orchestrator.tune.objective import aggregate, reports, seed_value
from orchestrator.tune.recorded import StudyRecords, block_for
from orchestrator.tune.search import GridQueue
from orchestrator.tune.study import best_trial
from orchestrator.tune_spec import TuneSpec
from tasks import get_task

log = logging.getLogger(__name__)


@dataclass
class _Running:
    trial: Any  # optuna.trial.Trial
    block: plan.Block  # every seed of the trial
    rung: int = 0
    seeds: list[int] = field(default_factory=list)  # seeds with a value so far, in order
    values: list[float] = field(default_factory=list)
    records: list[TrialRecord] = field(default_factory=list)  # those this trial ran
    reused: dict[int, int | None] = field(default_factory=dict)  # seed -> whose record
    started: float = field(default_factory=time.time)
    rung_reused: dict[int, float] = field(default_factory=dict)  # seed -> value, this rung
    expecting: int = 0  # records of the rung in flight
    arrived: list[TrialRecord] = field(default_factory=list)  # ... those back so far


def optimise(spec: TuneSpec, study, store: ResultStore, recorded: StudyRecords,
             tracker: Study | None, options: EngineOptions, remaining: int,
             invocation: str) -> int:
    """Keep up to `parallelism` trials in flight until `remaining` trials have finished, or
    a stop is requested (the caller raises it). Returns the trials finished. Their rows
    carry `invocation` (whose provenance the caller recorded)."""
    from optuna.trial import TrialState

    task = get_task(spec.task)
    # More trials in flight than the cluster runs at once only queue in Ray, while Optuna
    # samples each of them without the results of the others: never more than it fits.
    capacity = schedule.parallelism(spec.sweep.resources)
    width = min(spec.parallelism or capacity, capacity, max(remaining, 1))
    if spec.parallelism and spec.parallelism > width:
        log.info("parallelism %d: %d Optuna trials in flight (what the cluster runs at once)",
                 spec.parallelism, width)
    pool: schedule.ChunkPool[_Running] = schedule.ChunkPool(
        spec.task, spec.sweep.resources, options.max_retries, spec.sweep.timeout_s,
        options.progress)
    distributions = spec.distributions()
    grid = GridQueue(study, spec) if spec.sampler == "grid" else None
    rungs = spec.rungs
    running: dict[int, _Running] = {}  # Optuna trial number -> a trial in flight
    held: dict[str, int] = {}  # trial id -> the number of the trial in flight that runs it
    waiting: list[_Running] = []  # trials whose parameters one in flight has
    asked = finished = 0
    best_seen = best_trial(study)

    def finish(run: _Running, state, value: float | None = None, error: str | None = None):
        nonlocal finished, best_seen
        trial = run.trial
        if error:
            trial.set_user_attr("error", error[:2000])
        if run.reused:
            trial.set_user_attr("reused", {str(s): n for s, n in run.reused.items()})
        if run.records:  # Parquet first: a stop before the tell is settled on resume
            store.write(run.records, sweep=spec.name, task=task,
                        configs={run.block.config_id: run.block.config},
                        invocation=invocation,
                        tags={"study": spec.name, "optuna_trial": trial.number,
                              "optuna_state": state.name.lower()})
            recorded.add(run.records, trial.number, state.name.lower())
        frozen = study.tell(trial, value if state == TrialState.COMPLETE else None,
                            state=state)
        if running.pop(trial.number, None) is not None:
            for t in run.block.trials:
                held.pop(t.trial_id, None)
        finished += 1
        name = state.name
        if tracker is not None:
            tracker.trial(trial.number, name, dict(frozen.params), frozen.value
                          if state == TrialState.COMPLETE else None, run.values,
                          run.seeds, run.started, error, frozen.user_attrs.get("retry_of"))
        shown = (f"{value:.6g}" if value is not None
                 else f"after {len(run.values)} seeds" if state == TrialState.PRUNED
                 else (error or "")[:120])
        options.progress(f"  trial {trial.number}: {name.lower()} {shown} "
                         f"{_fmt(frozen.params)} ({finished}/{remaining})")
        best = best_trial(study)
        if best is not None and (best_seen is None or best.number != best_seen.number):
            best_seen = best
            write_best(spec, options.out_dir, best)

    def advance(run: _Running) -> None:
        """Run the trial's next rung: its seeds recorded ok are reused, the rest sent to
        Ray; a rung with nothing to run is concluded at once (and the next one started)."""
        while True:
            trials = [t for t in run.block.trials if t.seed in rungs[run.rung]]
            found = recorded.values([t.trial_id for t in trials if recorded.ok(t.trial_id)])
            run.rung_reused = {t.seed: found[t.trial_id] for t in trials if t.trial_id in found}
            run.reused.update((t.seed, recorded.rows[t.trial_id].optuna_trial)
                              for t in trials if t.trial_id in found)
            fresh = tuple(t for t in trials if t.seed not in run.rung_reused)
            if fresh:
                run.expecting = len(fresh)
                pool.submit([plan.Block(run.block.config_id, run.block.config, fresh)], run)
                return
            if not conclude(run, []):
                return

    def conclude(run: _Running, ran: list[TrialRecord]) -> bool:
        """A rung's seeds all have a result: report them, then finish, prune, or go on
        (True: the next rung is to run)."""
        run.records.extend(ran)
        bad = [r for r in ran if r.status != "ok"]
        if bad:
            finish(run, TrialState.FAIL, error=f"seed {bad[0].seed} failed: {bad[0].error}")
            return False
        values = dict(run.rung_reused)
        for r in ran:
            values[r.seed] = v = seed_value(r.metrics, spec.objective)
            if v is None:
                finish(run, TrialState.FAIL, error="no metric "
                       f"{spec.objective.metric!r} recorded")
                raise RunError(
                    f"objective.metric: task {spec.task!r} recorded no metric "
                    f"{spec.objective.metric!r}; it recorded "
                    f"{sorted(set(r.metrics.names))}")
        for seed in rungs[run.rung]:
            run.seeds.append(seed)
            run.values.append(values[seed])
        for step, v in reports(spec, run.seeds, run.values, len(rungs[run.rung])):
            run.trial.report(v, step=step)
        run.rung += 1
        if run.rung == len(rungs):
            finish(run, TrialState.COMPLETE, aggregate(run.values, spec.objective.aggregate))
        elif run.trial.should_prune():
            finish(run, TrialState.PRUNED)
        else:
            return True
        return False

    def blocked(run: _Running) -> bool:
        return any(t.trial_id in held for t in run.block.trials)

    def start(run: _Running) -> None:
        if blocked(run):
            waiting.append(run)  # the same parameters are in flight: reuse them after
            return
        running[run.trial.number] = run
        held.update((t.trial_id, run.trial.number) for t in run.block.trials)
        advance(run)

    def top_up() -> None:
        """Start the waiting trials that can start, then ask for new ones up to `width`."""
        nonlocal asked
        for run in list(waiting):
            if not blocked(run):
                waiting.remove(run)
                start(run)
        while (len(running) + len(waiting) < width and asked < remaining
               and not signals.requested()):
            if grid is not None:
                grid.feed()
            trial = study.ask(distributions)
            asked += 1
            try:
                block = block_for(spec, trial.params)
            except SpecError as exc:
                finish(_Running(trial, plan.Block("", {}, ())), TrialState.FAIL,
                       error=f"invalid parameters: {exc}")
                continue
            start(_Running(trial, block))

    try:
        top_up()
        for done in pool.rounds(poll_s=1.0):
            for run, records in done:
                # A rung whose worker died comes back one seed at a time: wait for all of it.
                run.arrived.extend(records)
                if len(run.arrived) == run.expecting:
                    ran, run.arrived = run.arrived, []
                    if conclude(run, sorted(ran, key=lambda r: rungs[run.rung].index(r.seed))):
                        advance(run)
            top_up()
    except RunError as exc:  # the study cannot go on: no trial is left RUNNING behind it
        for run in [*running.values(), *waiting]:
            run.trial.set_user_attr("error", f"stopped: {exc}"[:2000])
            study.tell(run.trial, state=TrialState.FAIL)
        raise
    return finished


def _fmt(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in params.items())
