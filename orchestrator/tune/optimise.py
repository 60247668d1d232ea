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
    loop = StudyLoop(spec, study, store, recorded, tracker, options, remaining, invocation)
    try:
        loop.top_up()
        for done in loop.pool.rounds(poll_s=1.0):
            for run, records in done:
                loop.arrive(run, records)
            loop.top_up()
    except RunError as exc:  # the study cannot go on: no trial is left RUNNING behind it
        loop.fail_unfinished(f"stopped: {exc}")
        raise
    return loop.finished


class StudyLoop:
    """The state of one `optimise` call in named fields, and its steps: Optuna asks
    (`top_up`), a trial runs rung by rung (`start` → `advance` → `arrive` → `conclude`),
    Parquet and then Optuna are told (`finish`)."""

    def __init__(self, spec: TuneSpec, study, store: ResultStore, recorded: StudyRecords,
                 tracker: Study | None, options: EngineOptions, remaining: int,
                 invocation: str) -> None:
        self.spec, self.study, self.store, self.recorded = spec, study, store, recorded
        self.tracker, self.options, self.remaining = tracker, options, remaining
        self.task = get_task(spec.task)
        # More trials in flight than the cluster runs at once only queue in Ray, while
        # Optuna samples each of them without the results of the others: never more.
        capacity = schedule.parallelism(spec.sweep.resources)
        self.width = min(spec.parallelism or capacity, capacity, max(remaining, 1))
        if spec.parallelism and spec.parallelism > self.width:
            log.info("parallelism %d: %d Optuna trials in flight (what the cluster runs at "
                     "once)", spec.parallelism, self.width)
        self.pool: schedule.ChunkPool[_Running] = schedule.ChunkPool(
            spec.task, spec.sweep.resources, options.max_retries, spec.sweep.timeout_s,
            options.progress)
        self.invocation = invocation
        self.distributions = spec.distributions()
        self.grid = GridQueue(study, spec) if spec.sampler == "grid" else None
        self.rungs = spec.rungs
        self.running: dict[int, _Running] = {}  # Optuna trial number -> a trial in flight
        self.held: dict[str, int] = {}  # trial id -> the number of the trial that runs it
        self.waiting: list[_Running] = []  # trials whose parameters one in flight has
        self.asked = 0
        self.finished = 0
        self.best_seen = best_trial(study)

    def top_up(self) -> None:
        """Start the waiting trials that can start, then ask for new ones up to `width`."""
        from optuna.trial import TrialState  # Optuna loads only when a study runs

        for run in list(self.waiting):
            if not self.blocked(run):
                self.waiting.remove(run)
                self.start(run)
        while (len(self.running) + len(self.waiting) < self.width
               and self.asked < self.remaining and not signals.requested()):
            if self.grid is not None:
                self.grid.feed()
            trial = self.study.ask(self.distributions)
            self.asked += 1
            try:
                block = block_for(self.spec, trial.params)
            except SpecError as exc:
                self.finish(_Running(trial, plan.Block("", {}, ())), TrialState.FAIL,
                            error=f"invalid parameters: {exc}")
                continue
            self.start(_Running(trial, block))

    def blocked(self, run: _Running) -> bool:
        return any(t.trial_id in self.held for t in run.block.trials)

    def start(self, run: _Running) -> None:
        if self.blocked(run):
            self.waiting.append(run)  # the same parameters are in flight: reuse them after
            return
        self.running[run.trial.number] = run
        self.held.update((t.trial_id, run.trial.number) for t in run.block.trials)
        self.advance(run)

    def advance(self, run: _Running) -> None:
        """Run the trial's next rung: its seeds recorded ok are reused, the rest sent to
        Ray; a rung with nothing to run is concluded at once (and the next one started)."""
        while True:
            trials = [t for t in run.block.trials if t.seed in self.rungs[run.rung]]
            ok = [t.trial_id for t in trials if self.recorded.ok(t.trial_id)]
            found = self.recorded.values(ok)
            run.rung_reused = {t.seed: found[t.trial_id] for t in trials if t.trial_id in found}
            run.reused.update((t.seed, self.recorded.rows[t.trial_id].optuna_trial)
                              for t in trials if t.trial_id in found)
            fresh = tuple(t for t in trials if t.seed not in run.rung_reused)
            if fresh:
                run.expecting = len(fresh)
                self.pool.submit([plan.Block(run.block.config_id, run.block.config, fresh)],
                                 run)
                return
            if not self.conclude(run, []):
                return

    def arrive(self, run: _Running, records: list[TrialRecord]) -> None:
        """Records of a rung in flight came back (one seed at a time after a worker died):
        once all have, conclude the rung and run the next one."""
        run.arrived.extend(records)
        if len(run.arrived) < run.expecting:
            return
        ran, run.arrived = run.arrived, []
        order = self.rungs[run.rung]
        if self.conclude(run, sorted(ran, key=lambda r: order.index(r.seed))):
            self.advance(run)

    def conclude(self, run: _Running, ran: list[TrialRecord]) -> bool:
        """A rung's seeds all have a result: report them, then finish, prune, or go on
        (True: the next rung is to run)."""
        from optuna.trial import TrialState  # Optuna loads only when a study runs

        spec = self.spec
        run.records.extend(ran)
        bad = [r for r in ran if r.status != "ok"]
        if bad:
            self.finish(run, TrialState.FAIL, error=f"seed {bad[0].seed} failed: {bad[0].error}")
            return False
        values = dict(run.rung_reused)
        for r in ran:
            values[r.seed] = v = seed_value(r.metrics, spec.objective)
            if v is None:
                self.finish(run, TrialState.FAIL,
                            error=f"no metric {spec.objective.metric!r} recorded")
                raise RunError(
                    f"objective.metric: task {spec.task!r} recorded no metric "
                    f"{spec.objective.metric!r}; it recorded {sorted(set(r.metrics.names))}")
        for seed in self.rungs[run.rung]:
            run.seeds.append(seed)
            run.values.append(values[seed])
        for step, v in reports(spec, run.seeds, run.values, len(self.rungs[run.rung])):
            run.trial.report(v, step=step)
        run.rung += 1
        if run.rung == len(self.rungs):
            self.finish(run, TrialState.COMPLETE,
                        aggregate(run.values, spec.objective.aggregate))
        elif run.trial.should_prune():
            self.finish(run, TrialState.PRUNED)
        else:
            return True
        return False

    def finish(self, run: _Running, state, value: float | None = None,
               error: str | None = None) -> None:
        """Parquet first (a stop before Optuna is told is settled on resume), then Optuna,
        the tracker, the progress line and best.yaml."""
        from optuna.trial import TrialState  # Optuna loads only when a study runs

        spec, trial = self.spec, run.trial
        if error:
            trial.set_user_attr("error", error[:2000])
        if run.reused:
            trial.set_user_attr("reused", {str(s): n for s, n in run.reused.items()})
        if run.records:
            self.store.write(run.records, sweep=spec.name, task=self.task,
                             configs={run.block.config_id: run.block.config},
                             invocation=self.invocation,
                             tags={"study": spec.name, "optuna_trial": trial.number,
                                   "optuna_state": state.name.lower()})
            self.recorded.add(run.records, trial.number, state.name.lower())
        complete = state == TrialState.COMPLETE
        frozen = self.study.tell(trial, value if complete else None, state=state)
        if self.running.pop(trial.number, None) is not None:
            for t in run.block.trials:
                self.held.pop(t.trial_id, None)
        self.finished += 1
        if self.tracker is not None:
            self.tracker.trial(trial.number, state.name, dict(frozen.params),
                               frozen.value if complete else None, run.values, run.seeds,
                               run.started, error, frozen.user_attrs.get("retry_of"))
        shown = (f"{value:.6g}" if value is not None
                 else f"after {len(run.values)} seeds" if state == TrialState.PRUNED
                 else (error or "")[:120])
        self.options.progress(f"  trial {trial.number}: {state.name.lower()} {shown} "
                              f"{_fmt(frozen.params)} ({self.finished}/{self.remaining})")
        best = best_trial(self.study)
        if best is not None and (self.best_seen is None
                                 or best.number != self.best_seen.number):
            self.best_seen = best
            write_best(spec, self.options.out_dir, best)

    def fail_unfinished(self, reason: str) -> None:
        """Tell Optuna FAIL for every trial in flight or waiting (the study stops)."""
        from optuna.trial import TrialState  # Optuna loads only when a study runs

        for run in [*self.running.values(), *self.waiting]:
            run.trial.set_user_attr("error", reason[:2000])
            self.study.tell(run.trial, state=TrialState.FAIL)


def _fmt(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in params.items())
