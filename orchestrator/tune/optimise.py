"""The optimise loop: Optuna asks, the engine's `ChunkPool` runs each trial's seeds in
rungs, Optuna is told; each finished trial's seed records go to Parquet, tagged with the
study, its Optuna trial number and its final state, and to the tracker."""

from __future__ import annotations

import time
import uuid
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
from orchestrator.tune.objective import aggregate, seed_value
from orchestrator.tune.study import best_trial
from orchestrator.tune_spec import TuneSpec
from tasks import get_task


@dataclass
class _Running:
    trial: Any  # optuna.trial.Trial
    sweep_config: dict[str, Any]
    block: plan.Block
    rung: int = 0
    values: list[float] = field(default_factory=list)
    records: list[TrialRecord] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    expecting: int = 0  # records of the rung in flight
    arrived: list[TrialRecord] = field(default_factory=list)  # ... those back so far


def optimise(spec: TuneSpec, study, store: ResultStore, tracker: Study | None,
              options: EngineOptions, remaining: int) -> int:
    """Keep up to `parallelism` trials in flight until `remaining` trials have finished, or
    a stop is requested (the caller raises it)."""
    from optuna.trial import TrialState

    task = get_task(spec.task)
    width = spec.parallelism or schedule.parallelism(spec.sweep.resources)
    pool: schedule.ChunkPool[_Running] = schedule.ChunkPool(
        spec.task, spec.sweep.resources, options.max_retries, spec.sweep.timeout_s,
        options.progress)
    invocation = uuid.uuid4().hex[:12]
    distributions = spec.distributions()
    rungs = spec.rungs
    asked = finished = 0
    best_seen = best_trial(study)

    def submit(run: _Running) -> None:
        seeds = set(rungs[run.rung])
        block = plan.Block(run.block.config_id, run.block.config,
                           tuple(t for t in run.block.trials if t.seed in seeds))
        run.expecting = len(block.trials)
        pool.submit([block], run)

    def finish(run: _Running, state, value: float | None = None, error: str | None = None):
        nonlocal finished, best_seen
        trial = run.trial
        if error:
            trial.set_user_attr("error", error[:2000])
        frozen = study.tell(trial, value if state == TrialState.COMPLETE else None,
                            state=state)
        finished += 1
        name = state.name
        if run.records:
            configs = {run.block.config_id: run.block.config}
            store.write(run.records, sweep=spec.name, task=task, configs=configs,
                        invocation=invocation,
                        tags={"study": spec.name, "optuna_trial": trial.number,
                              "optuna_state": name.lower()})
        if tracker is not None:
            tracker.trial(trial.number, name, dict(frozen.params), frozen.value
                          if state == TrialState.COMPLETE else None, run.values,
                          [r.seed for r in run.records], run.started, error,
                          frozen.user_attrs.get("retry_of"))
        shown = (f"{value:.6g}" if value is not None
                 else f"after {len(run.values)} seeds" if state == TrialState.PRUNED
                 else (error or "")[:120])
        options.progress(f"  trial {trial.number}: {name.lower()} {shown} "
                         f"{_fmt(frozen.params)} ({finished}/{remaining})")
        best = best_trial(study)
        if best is not None and (best_seen is None or best.number != best_seen.number):
            best_seen = best
            write_best(spec, options.out_dir, best)

    def rung_done(run: _Running, records: list[TrialRecord]) -> None:
        run.records.extend(records)
        bad = [r for r in records if r.status != "ok"]
        if bad:
            finish(run, TrialState.FAIL, error=f"seed {bad[0].seed} failed: {bad[0].error}")
            return
        for r in records:
            v = seed_value(r.metrics, spec.objective)
            if v is None:
                finish(run, TrialState.FAIL, error="no metric "
                       f"{spec.objective.metric!r} recorded")
                raise RunError(
                    f"objective.metric: task {spec.task!r} recorded no metric "
                    f"{spec.objective.metric!r}; it recorded "
                    f"{sorted(set(r.metrics.names))}")
            run.values.append(v)
            if spec.pruner != "median":
                run.trial.report(v, step=spec.seeds.index(r.seed))
        if spec.pruner == "median":
            run.trial.report(aggregate(run.values, spec.objective.aggregate),
                             step=len(run.values))
        run.rung += 1
        if run.rung == len(rungs):
            finish(run, TrialState.COMPLETE, aggregate(run.values, spec.objective.aggregate))
        elif run.trial.should_prune():
            finish(run, TrialState.PRUNED)
        else:
            submit(run)

    def top_up() -> None:
        nonlocal asked
        while len(pool) < width and asked < remaining and not signals.requested():
            trial = study.ask(distributions)
            asked += 1
            try:
                sweep = spec.sweep_for(trial.params)
            except SpecError as exc:
                run = _Running(trial, {}, plan.Block("", {}, ()))
                finish(run, TrialState.FAIL, error=f"invalid parameters: {exc}")
                continue
            (block,) = plan.expand(sweep)
            submit(_Running(trial, block.config, block))

    top_up()
    for done in pool.rounds(poll_s=1.0):
        for run, records in done:
            # A rung whose worker died comes back one seed at a time: wait for all of it.
            run.arrived.extend(records)
            if len(run.arrived) == run.expecting:
                order = {seed: i for i, seed in enumerate(rungs[run.rung])}
                arrived = sorted(run.arrived, key=lambda r: order[r.seed])
                run.arrived = []
                rung_done(run, arrived)
        top_up()
    return finished


def _fmt(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in params.items())
