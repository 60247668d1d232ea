"""Run blocks of trials in the current process (a Ray worker, or the driver in a plain loop).

This is the one trial execution path: `sgsweep run`, the benchmarks and tuning all come
through `run_blocks`. A block goes to its task as one call; if that raises or runs out
of time, each seed is re-run alone so one bad seed cannot sink its neighbours.
Non-finite metrics fail the trial. Errors are kept as their first line plus the
exception type.

Threads: each block runs with as many torch intra-op threads as CPUs its Ray task was
given (`trial_threads`). Ray tells a task its share through OMP_NUM_THREADS (floor of its
CPUs, at least 1, set per task), but torch reads that variable once, when a worker first
imports it, and Ray reuses workers across tasks: without this, a worker started for a
2-CPU task runs every later 1-CPU trial on 2 threads, oversubscribing the cores.

The per-trial timeout is a SIGALRM timer (a block of S seeds gets S times the budget),
so it interrupts Python code at its next bytecode; a single native call that never
returns is out of its reach.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from orchestrator.plan import Block
from orchestrator.records import TrialRecord
from tasks import MetricLog, get_task

log = logging.getLogger(__name__)


def trial_threads() -> int | None:
    """The intra-op threads a trial here should use: OMP_NUM_THREADS as this process sees
    it now (in a Ray worker: the current task's CPU share, set by Ray per task, unless the
    user exported OMP_NUM_THREADS, which then wins), or None where it is not set (a plain
    process: torch's own default stands)."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if not value:
        return None
    try:
        return max(1, int(value))
    except ValueError:
        log.warning("OMP_NUM_THREADS=%r is not a whole number: torch threads left as they are",
                    value)
        return None


def use_trial_threads() -> None:
    """Set torch's intra-op threads to `trial_threads()` (a no-op where it is None)."""
    import torch  # here, not at the top: the command line imports this module early

    threads = trial_threads()
    if threads is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


class TrialTimeout(Exception):
    pass


T = TypeVar("T")


@contextmanager
def _deadline(seconds: float | None) -> Iterator[None]:
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise TrialTimeout(f"timed out after {seconds:g}s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, min(seconds, 1e9))  # past ~9e9 s setitimer overflows
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _timed(fn: Callable[[], T], seconds: float | None) -> T:
    with _deadline(seconds):
        return fn()


def describe_error(exc: BaseException) -> str:
    lines = traceback.format_exception_only(type(exc), exc)
    return " ".join(line.strip() for line in lines)[:2000]


def run_blocks(task_name: str, blocks: list[Block], device: str = "cpu",
               timeout_s: float | None = None, node: str = "") -> list[TrialRecord]:
    task = get_task(task_name)
    use_trial_threads()
    if not task.uses_gpu:
        device = "cpu"  # the device column says where the trials computed
    node = node or socket.gethostname()
    records: list[TrialRecord] = []
    for block in blocks:
        config = task.config_type(**_from_json(block.config))
        start = time.perf_counter()
        budget = timeout_s * len(block.trials) if timeout_s else None
        try:
            logs = _timed(lambda config=config, block=block: task.run_block(
                config, block.seeds, device), budget)
            if len(logs) != len(block.trials):
                raise RuntimeError(
                    f"task {task_name!r} returned {len(logs)} results for {len(block.trials)} seeds"
                )
            per_trial = (time.perf_counter() - start) / len(block.trials)
            outcomes: list[tuple[MetricLog | None, str | None, float]] = [
                (log, None, per_trial) for log in logs
            ]
        except Exception:  # noqa: BLE001 - isolate the failing seed(s)
            outcomes = [_run_alone(task, config, seed, device, timeout_s) for seed in block.seeds]
        now = time.time()
        for trial, (log, error, duration) in zip(block.trials, outcomes, strict=True):
            if log is not None and error is None:
                bad = log.non_finite()
                if bad is not None:
                    error = f"non-finite metric: {bad}"
            ok = error is None
            records.append(TrialRecord(
                trial.trial_id, trial.config_id, trial.seed, "ok" if ok else "failed", error,
                duration, now, log if ok and log is not None else MetricLog(), node, device,
            ))
    return records


def _run_alone(task: Any, config: Any, seed: int, device: str, timeout_s: float | None):
    start = time.perf_counter()
    try:
        (log,) = _timed(lambda: task.run_block(config, [seed], device), timeout_s)
        return log, None, time.perf_counter() - start
    except Exception as exc:  # noqa: BLE001 - recorded as the trial's error
        return None, describe_error(exc), time.perf_counter() - start


def _from_json(values: dict[str, Any]) -> dict[str, Any]:
    # Parquet/JSON hold lists; config dataclasses hold tuples (hashable, immutable).
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
