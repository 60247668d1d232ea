"""`sgsweep run`: plan → schedule on Ray → record to Parquet and MLflow, resumably.

The driver is the only writer: Ray tasks return records, the driver appends them to the
Parquet store as each chunk finishes and hands them to the MLflow writer thread. Trials
already recorded in the output directory are skipped, so re-running the same command
after any stop runs only what is missing.
"""

from __future__ import annotations

import contextlib
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator import plan, provenance, schedule, signals, sync
from orchestrator.engine import EngineOptions, os_error_line, results_folder
from orchestrator.errors import RunError
from orchestrator.progress import Progress
from orchestrator.record import DamagedResults, ResultStore
from orchestrator.spec import SweepSpec
from orchestrator.tracking import (
    Invocation,
    InvocationInfo,
    NoTracker,
    open_tracker,
    resolve_tracking_uri,
)
from tasks import get_task


@dataclass
class RunOptions(EngineOptions):
    tracking_level: str | None = None  # auto | config | seed; None: the spec's
    block_size: int | None = None  # overrides the spec's
    retry_failed: bool = False
    trial_timeout_s: float | None = None  # overrides the spec's timeout_s
    live: bool | None = None  # progress bar; None: when stderr is a terminal
    show_progress: bool = True


@dataclass
class RunSummary:
    total: int
    skipped: int
    ok: int
    failed: int
    wall_s: float
    tracking_uri: str | None
    parent_run_id: str | None
    tracking_error: str | None
    first_errors: list[str]


def refuse_another_sweep_of_this_name(out_dir: Path, spec: SweepSpec,
                                      blocks: list[plan.Block]) -> None:
    """`RunError` if DIR holds results of another sweep file under `spec.name` that this
    one does not plan: its copy in DIR/specs/ would be replaced, and status and report
    would no longer show those trials. A sweep that grew (more seeds, more grid values)
    plans all of them and goes on."""
    from orchestrator.status import spec_trial_ids

    before = spec_trial_ids(out_dir).get(spec.name)
    if not before:
        return
    if (out_dir / "tune.json").exists():
        raise RunError(f"{out_dir}: holds the Optuna study {spec.name!r} (`sgsweep tune`); "
                       "run this sweep into another --out, or give it another name")
    planned = {t.trial_id for b in blocks for t in b.trials}
    try:
        recorded = set(ResultStore(out_dir).recorded())
    except DamagedResults:  # named and set aside by the heal that follows this check
        return
    hidden = (before - planned) & recorded
    if hidden:
        raise RunError(
            f"{out_dir}: sweep {spec.name!r} is already here from another sweep file "
            f"({len(hidden):,} of its recorded trials are not in this one, and would no longer "
            f"be reported); give this sweep another name, or choose another --out")


def run_sweep(spec: SweepSpec, options: RunOptions) -> RunSummary:
    """Run every trial of `spec` not yet recorded in `options.out_dir`.

    Signals (under `sgsweep`, see orchestrator.signals) are honoured at safe points: the
    chunks finished so far are in Parquet, the tracker's invocation is closed KILLED, the
    resume line is printed and `signals.Interrupted` is raised."""
    task = get_task(spec.task)
    out_dir = options.out_dir
    started = time.perf_counter()
    schedule.preflight(spec.source, spec.resources, options.address, options.num_cpus,
                       options.num_gpus, options.progress)  # before DIR is touched
    blocks = plan.expand(spec)
    with results_folder(out_dir, spec.name, options.spec_path, options.progress,
                        lambda: refuse_another_sweep_of_this_name(out_dir, spec, blocks)) as store:
        configs = {b.config_id: b.config for b in blocks}
        recorded = store.latest(["trial_id", "status", "error"])
        failed = recorded.status.eq("failed")
        lost = failed & recorded.error.map(schedule.lost_with_its_node)
        done = set(recorded.trial_id[recorded.status.eq("ok") | (
            failed & ~lost & (not options.retry_failed))])
        lost_here = set(recorded.trial_id[lost]) & {t.trial_id for b in blocks
                                                     for t in b.trials}
        if lost_here and not options.retry_failed:
            options.progress(f"{spec.name}: {len(lost_here)} trials recorded failed when "
                             "their Ray node was lost (by an older sgsweep) run again")
        pending = [plan.Block(b.config_id, b.config,
                              tuple(t for t in b.trials if t.trial_id not in done))
                   for b in blocks]
        pending = [b for b in pending if b.trials]
        num_pending = sum(len(b.trials) for b in pending)
        skipped = spec.num_trials - num_pending
        invocation = uuid.uuid4().hex[:12]

        tracking_uri = resolve_tracking_uri(out_dir, options.tracking_uri)
        level = options.tracking_level or spec.tracking_level
        progress = Progress(num_pending, live=options.live, enabled=options.show_progress)
        first_errors: list[str] = []
        live: Invocation = NoTracker().start(None, None, {})
        origin: dict[str, Any] = {}  # this invocation's provenance, once it has trials to run

        def start_tracker() -> Invocation:
            # After Ray is up: the tracker's start-up (imports, opening the store, repairs)
            # must not slow the embedded Ray's own start-up on a loaded machine.
            view = sync.sweep_view(out_dir, spec.name, spec.task, sync.latest_trials(out_dir),
                                   configs.items(), level) if tracking_uri else None
            return open_tracker(tracking_uri, out_dir).start(
                InvocationInfo(
                    sweep=spec.name, task=spec.task, invocation=invocation, out_dir=out_dir,
                    params={"task": spec.task, "num_trials": spec.num_trials,
                            "num_pending": num_pending, "num_configs": len(spec.configs),
                            "seeds": list(spec.seeds), "description": spec.description},
                    artifacts=[options.spec_path] if options.spec_path else [],
                    tags=provenance.mlflow_tags(origin) if origin else {}),
                view, {b.config_id: {t.trial_id for t in b.trials} for b in pending},
                options.progress)

        def counts() -> dict[str, int]:
            return {"trials_ok": progress.ok, "trials_failed": progress.failed}

        def stop(status: str) -> signals.Interrupted:
            live.finish(status, counts())
            options.progress(resume)
            return signals.Interrupted(signals.requested() or signal.SIGINT, reported=True)

        resume = (f"interrupted: completed trials are saved in {out_dir}; run the same "
                  "command again to resume")
        if num_pending:
            ray_start = (f"connecting to Ray at {options.address}" if options.address
                         else "starting Ray")  # it can take a minute on a loaded machine
            options.progress(
                f"{spec.name}: {num_pending} trials to run ({skipped} already recorded), "
                f"{len(pending)} configs; {ray_start}")
            try:
                origin = provenance.collect(invocation, "run", spec.name)
                store.write_invocation(origin)
                with schedule.session(options.address, options.num_cpus, options.num_gpus):
                    if not signals.requested():
                        live = start_tracker()
                        _run_pending(spec, task, pending, configs, store, live, invocation,
                                     options, progress, first_errors)
            except OSError as exc:  # DIR's file system (full, read-only, ...)
                with contextlib.suppress(Exception):
                    live.finish("FAILED", counts())
                raise RunError(f"{os_error_line(exc)}; completed trials are saved in "
                               f"{out_dir}") from None
            except schedule.RayLost as exc:  # nothing recorded for what did not finish
                with contextlib.suppress(Exception):
                    live.finish("FAILED", counts())
                ran = progress.ok + progress.failed
                raise schedule.RayLost(exc.cause, (
                    f"{ran} of {num_pending} trials ran and are saved in {out_dir}, the other "
                    f"{num_pending - ran} were not run: run the same command again to run "
                    "them")) from None
            if signals.requested():
                raise stop("KILLED")
        else:
            options.progress(f"{spec.name}: all {spec.num_trials} trials already recorded")
            live = start_tracker()  # nothing to run; earlier results may need mirroring
        store.compact()
        if live.backlog:
            options.progress(f"  logging {live.backlog} trials to MLflow "
                             f"({tracking_uri}); Parquet results are complete")
        if not live.finish("FINISHED", counts(), stop=lambda: signals.requested() is not None):
            options.progress(resume)
            raise signals.Interrupted(signals.requested() or signal.SIGINT, reported=True)
        if signals.requested():
            raise stop("KILLED")
        return RunSummary(
            total=spec.num_trials, skipped=skipped, ok=progress.ok, failed=progress.failed,
            wall_s=time.perf_counter() - started, tracking_uri=tracking_uri,
            parent_run_id=live.parent_run_id, tracking_error=live.error,
            first_errors=first_errors,
        )


def _run_pending(spec: SweepSpec, task, pending: list[plan.Block], configs: dict[str, Any],
                 store: ResultStore, live: Invocation, invocation: str,
                 options: RunOptions, progress: Progress, first_errors: list[str]) -> None:
    """Schedule every pending block; record each chunk as it finishes. Returns early when
    a stop is requested (see `schedule.ChunkPool`)."""
    width = schedule.parallelism(spec.resources)
    num_pending = sum(len(b.trials) for b in pending)
    block_size = options.block_size or spec.block_size or plan.auto_block_size(
        num_pending, len(pending), width)
    blocks = plan.split_blocks(pending, block_size)
    # Enough chunks to keep every worker busy (and progress smooth), few enough that
    # per-task overhead stays small next to tiny trials.
    per_chunk = max(block_size, min(256, num_pending // (8 * width) or 1))
    pool: schedule.ChunkPool[None] = schedule.ChunkPool(
        spec.task, spec.resources, options.max_retries,
        options.trial_timeout_s or spec.timeout_s, options.progress)
    for chunk in plan.pack(blocks, per_chunk):
        pool.submit(chunk, None)
    in_flight = num_pending
    try:
        for finished in pool.rounds(poll_s=0.5):
            ok = failed = 0
            for _, records in finished:
                store.write(records, sweep=spec.name, task=task, configs=configs,
                            invocation=invocation)
                live.record(records)
                in_flight -= len(records)
                for r in records:
                    if r.status == "ok":
                        ok += 1
                    else:
                        failed += 1
                        if len(first_errors) < 5:
                            first_errors.append(f"seed {r.seed} ({r.trial_id}): {r.error}")
            progress.update(ok, failed, in_flight=min(in_flight, width * per_chunk))
    finally:
        progress.close()
