"""`sgsweep run`: plan → schedule on Ray → record to Parquet and MLflow, resumably.

The driver is the only writer: Ray tasks return records, the driver appends them to the
Parquet store as each chunk finishes and hands them to the MLflow writer thread. Trials
already recorded in the output directory are skipped, so re-running the same command
after any stop runs only what is missing.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import signal
import sys
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator import plan, schedule, signals, sync
from orchestrator.errors import RunError
from orchestrator.execute import TrialRecord
from orchestrator.progress import Progress
from orchestrator.record import ResultStore
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
class RunOptions:
    out_dir: Path
    tracking_uri: str | None = None  # None: SQLite store in out_dir; "" or "none": no tracker
    tracking_level: str | None = None  # auto | config | seed; None: the spec's
    address: str | None = None  # None: embedded local Ray
    num_cpus: int | None = None
    num_gpus: int | None = None  # embedded Ray only; None: detect
    block_size: int | None = None  # overrides the spec's
    max_retries: int = 3
    retry_failed: bool = False
    trial_timeout_s: float | None = None  # overrides the spec's timeout_s
    live: bool | None = None  # progress bar; None: when stderr is a terminal
    show_progress: bool = True
    spec_path: Path | None = None
    progress: Callable[[str], None] = field(default=lambda line: print(line, file=sys.stderr))


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


@contextmanager
def directory_lock(out_dir: Path, purpose: str = "run"):
    """One sgsweep command that writes DIR (run, tune, mlflow-sync) at a time."""
    lock = out_dir / ".lock"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        handle = open(lock, "w")  # noqa: SIM115 - held for the whole run
    except OSError as exc:
        raise RunError(os_error_line(exc, f"{out_dir}: cannot hold results ")) from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise RunError(f"{out_dir}: another sgsweep run is using this directory; wait for it "
                       "or choose another --out" if purpose == "run" else
                       f"{out_dir}: an sgsweep run is using this directory; {purpose} "
                       "after it ends (its own mirror is kept up to date as it runs)") from None
    try:
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


# What the user can do about a file system error, by errno.
OS_HINTS = {
    errno.ENOSPC: "free some space (or choose another --out) and run the same command again",
    errno.EDQUOT: "free some space (or choose another --out) and run the same command again",
    errno.EROFS: "the file system is read-only: choose a writable --out",
    errno.EACCES: "choose a folder you may write, or fix its permissions",
    errno.EPERM: "choose a folder you may write, or fix its permissions",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another --out",
    errno.EISDIR: "a folder is where sgsweep keeps a file: move it away",
    errno.EEXIST: "a file is where sgsweep needs a folder: choose another --out",
}


def os_error_line(exc: OSError, prefix: str = "") -> str:
    """A file system error as one line: the path, what went wrong, what to do."""
    where = exc.filename or ""
    what = exc.strerror or (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    hint = OS_HINTS.get(os_errno(exc))
    text = f"{prefix}({where}: {what})" if prefix else f"{where + ': ' if where else ''}{what}"
    return f"{text}; {hint}" if hint else text


def os_errno(exc: OSError) -> int:
    """The errno, also where pyarrow only names it in the message ("[errno 28] ...")."""
    if exc.errno:
        return exc.errno
    found = re.search(r"\[errno (\d+)\]", str(exc), re.IGNORECASE)
    return int(found.group(1)) if found else 0


def save_spec_copy(out_dir: Path, name: str, spec_path: Path | None) -> Path | None:
    """Keep the sweep/tune file that made DIR's results in DIR/specs/NAME.yaml."""
    if spec_path is None:
        return None
    (out_dir / "specs").mkdir(exist_ok=True)
    copy = out_dir / "specs" / f"{name}.yaml"
    shutil.copyfile(spec_path, copy)
    return copy


def run_sweep(spec: SweepSpec, options: RunOptions) -> RunSummary:
    """Run every trial of `spec` not yet recorded in `options.out_dir`.

    Signals (under `sgsweep`, see orchestrator.signals) are honoured at safe points: the
    chunks finished so far are in Parquet, the tracker's invocation is closed KILLED, the
    resume line is printed and `signals.Interrupted` is raised."""
    task = get_task(spec.task)
    out_dir = options.out_dir
    started = time.perf_counter()
    if problem := schedule.unreachable(options.address):
        raise RunError(problem)  # before DIR is touched
    with signals.deferred():  # a cluster's fit check connects to Ray and may wait
        problem = schedule.unfit(spec.resources, options.address, options.num_cpus,
                                 options.num_gpus, progress=options.progress,
                                 stop=lambda: signals.requested() is not None)
    if problem:
        raise RunError(f"{spec.source}: {problem}")
    with signals.deferred(), directory_lock(out_dir):
        store = ResultStore(out_dir)
        store.prepare()
        store.heal(options.progress)  # damaged parts aside: their trials run again
        save_spec_copy(out_dir, spec.name, options.spec_path)

        blocks = plan.expand(spec)
        configs = {b.config_id: b.config for b in blocks}
        recorded = store.recorded()
        done = {tid for tid, status in recorded.items()
                if status == "ok" or (status == "failed" and not options.retry_failed)}
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
                    artifacts=[options.spec_path] if options.spec_path else []),
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
            options.progress(
                f"{spec.name}: {num_pending} trials to run ({skipped} already recorded), "
                f"{len(pending)} configs")
            try:
                if not signals.requested():
                    schedule.connect(options.address, options.num_cpus, options.num_gpus)
                if not signals.requested():
                    live = start_tracker()
                    _run_pending(spec, task, pending, configs, store, live, invocation,
                                 options, progress, first_errors)
            except OSError as exc:  # DIR's file system (full, read-only, ...)
                with contextlib.suppress(Exception):
                    live.finish("FAILED", counts())
                raise RunError(f"{os_error_line(exc)}; completed trials are saved in "
                               f"{out_dir}") from None
            finally:
                if options.address is None:
                    schedule.shutdown()
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
    a stop is requested (the chunks still running are dropped with the Ray session: no
    `ray.cancel`, whose races with finishing tasks can abort the driver)."""
    import ray

    width = schedule.parallelism(spec.resources)
    num_pending = sum(len(b.trials) for b in pending)
    block_size = options.block_size or spec.block_size or plan.auto_block_size(
        num_pending, len(pending), width)
    blocks = plan.split_blocks(pending, block_size)
    # Enough chunks to keep every worker busy (and progress smooth), few enough that
    # per-task overhead stays small next to tiny trials.
    per_chunk = max(block_size, min(256, num_pending // (8 * width) or 1))
    chunks = plan.pack(blocks, per_chunk)
    timeout_s = options.trial_timeout_s or spec.timeout_s
    futures = {schedule.submit(spec.task, chunk, spec.resources, options.max_retries, timeout_s):
               chunk for chunk in chunks}
    remaining = list(futures)
    in_flight = num_pending
    try:
        while remaining and not signals.requested():
            ready, remaining = ray.wait(remaining, num_returns=1, timeout=0.5)
            ok = failed = 0
            for ref in ready:
                chunk = futures.pop(ref)
                try:
                    records: list[TrialRecord] = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    if signals.requested():
                        return  # lost to the stop, not to the trial: it runs again on resume
                    if not killed_its_worker(exc) or sum(len(b.trials) for b in chunk) == 1:
                        records = _lost_chunk(chunk, exc, options.max_retries)
                    else:
                        # Ray retried the chunk `max_retries` times and its worker died each
                        # time: run its seeds one by one, so only the seed that kills its
                        # worker is lost (and its innocent neighbours are not).
                        singles = one_seed_each(chunk)
                        options.progress(
                            f"  a worker died {options.max_retries + 1} times running "
                            f"{len(singles)} trials ({_first_line(exc)}); running them one "
                            "seed at a time")
                        for single in singles:
                            again = schedule.submit(spec.task, single, spec.resources,
                                                    options.max_retries, timeout_s)
                            futures[again] = single
                            remaining.append(again)
                        continue
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
            running = min(in_flight, width * per_chunk)
            progress.update(ok, failed, in_flight=running)
    finally:
        progress.close()


def killed_its_worker(exc: BaseException) -> bool:
    """A worker or node death (crash, OOM kill, node lost), not an exception of the task's
    own code (`RayTaskError`: the same inputs would raise again)."""
    import ray

    return isinstance(exc, ray.exceptions.RayError) and not isinstance(
        exc, ray.exceptions.RayTaskError)


def one_seed_each(chunk: list[plan.Block]) -> list[list[plan.Block]]:
    """A chunk as one-trial chunks, in order."""
    return [[plan.Block(b.config_id, b.config, (t,))] for b in chunk for t in b.trials]


def _first_line(exc: BaseException) -> str:
    from orchestrator.execute import describe_error

    return describe_error(exc).splitlines()[0][:300]


def _lost_chunk(chunk: list[plan.Block], exc: BaseException,
                max_retries: int) -> list[TrialRecord]:
    """Ray gave up on a chunk past `max_retries`: its trials are recorded failed. A single
    trial whose worker died on every attempt is the one that kills it."""
    from tasks import MetricLog

    now = time.time()
    attempts = max_retries + 1
    times = f"{attempts} time{'s' if attempts > 1 else ''}"
    if killed_its_worker(exc) and sum(len(b.trials) for b in chunk) == 1:
        error = f"killed its worker {times} (run alone): {_first_line(exc)}"
    elif killed_its_worker(exc):
        error = f"its worker died {times} running its block: {_first_line(exc)}"
    else:
        error = f"lost by Ray: {_first_line(exc)}"
    return [TrialRecord(t.trial_id, t.config_id, t.seed, "failed", error, 0.0, now, MetricLog())
            for block in chunk for t in block.trials]
