"""Run blocks of trials in the current process (a Ray worker, or the driver in a plain loop).

This is the one trial execution path: `sgsweep run`, the benchmarks and tuning all come
through `run_blocks`. A block goes to its task as one call; if that raises or runs out
of time, each seed is re-run alone so one bad seed cannot sink its neighbours.
Non-finite metrics fail the trial. Errors are kept as their first line plus the
exception type; a failed trial's record also carries its log: the full traceback and the
tail of the stdout/stderr captured around it (each at most `LOG_TAIL_BYTES`), which the
driver keeps under DIR/logs/. Where each trial ran (host, device, GPU name, torch's CPU
capability) is collected here, so tasks know nothing of it.

Output is read back from the files stdout and stderr write to (a Ray worker's log files),
from where they ended before the call: native libraries' output is included, nothing is
redirected, and a trial that kills its worker loses nothing from the worker's log.

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

import contextlib
import logging
import os
import signal
import socket
import stat
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from orchestrator.plan import Block
from orchestrator.provenance import trial_hardware
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


LOG_TAIL_BYTES = 64 * 1024  # of a failed trial's output, and of its traceback


class TrialTimeout(Exception):
    pass


class _Output:
    """What a call wrote to stdout and stderr: the tail of each (`LOG_TAIL_BYTES` in all)."""

    tail = ""


def _flush_std_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, OSError, ValueError):  # closed or absent
            stream.flush()


def _file_end(fd: int) -> tuple[tuple[int, int], int] | None:
    """(file identity, size) of what `fd` writes to, if it is a regular file."""
    try:
        info = os.fstat(fd)
    except OSError:
        return None
    return ((info.st_dev, info.st_ino), info.st_size) if stat.S_ISREG(info.st_mode) else None


@contextmanager
def captured_output() -> Iterator[_Output]:
    """Collect what the call writes to stdout and stderr where they are files (a Ray
    worker's are its log files): read back from where each file ended before the call.
    Nothing is redirected, so a worker's log keeps all of it even if the call kills the
    process; where they are a terminal or a pipe, nothing is collected."""
    output = _Output()
    _flush_std_streams()
    starts = {fd: end for fd in (1, 2) if (end := _file_end(fd)) is not None}
    try:
        yield output
    finally:
        _flush_std_streams()
        identities = {identity for identity, _ in starts.values()}
        per_file = LOG_TAIL_BYTES // max(len(identities), 1)
        tails, seen = [], set()
        for fd, (identity, start) in starts.items():
            if identity in seen:  # stdout and stderr into one file: read it once
                continue
            seen.add(identity)
            name = ("stdout and stderr" if len(starts) == 2 and len(identities) == 1
                    else "stdout" if fd == 1 else "stderr")
            if text := _read_since(fd, start, per_file):
                tails.append(f"[{name}]\n{text.rstrip()}")
        output.tail = "\n".join(tails)


def _read_since(fd: int, start: int, limit: int) -> str:
    """The last `limit` bytes written to `fd`'s file past `start` (Linux: its /proc link)."""
    try:
        with open(f"/proc/self/fd/{fd}", "rb") as fh:
            end = fh.seek(0, os.SEEK_END)
            fh.seek(max(start, end - limit))
            return fh.read(limit).decode("utf-8", "replace")
    except OSError:
        return ""


def trial_log(traceback_text: str, output: str) -> str:
    """A failed trial's log as its record carries it: the traceback, then the output."""
    if len(traceback_text) > LOG_TAIL_BYTES:
        traceback_text = "...\n" + traceback_text[-LOG_TAIL_BYTES:]
    parts = [f"traceback:\n{traceback_text.rstrip()}" if traceback_text else ""]
    if output:
        parts.append(f"output (the last {LOG_TAIL_BYTES // 1024} KiB of stdout and stderr "
                     f"at most):\n{output.rstrip()}")
    text = "\n\n".join(p for p in parts if p)
    return f"{text}\n" if text else ""


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


# (metrics or None, error or None, seconds, output tail or, for a failure, the trial's log)
Outcome = tuple[MetricLog | None, str | None, float, str]


def run_blocks(task_name: str, blocks: list[Block], device: str = "cpu",
               timeout_s: float | None = None, node: str = "") -> list[TrialRecord]:
    task = get_task(task_name)
    use_trial_threads()
    if not task.uses_gpu:
        device = "cpu"  # the device column says where the trials computed
    node = node or socket.gethostname()
    gpu, capability = trial_hardware(device)
    records: list[TrialRecord] = []
    for block in blocks:
        config = task.config_type(**_from_json(block.config))
        start = time.perf_counter()
        budget = timeout_s * len(block.trials) if timeout_s else None
        try:
            with captured_output() as output:
                logs = _timed(lambda config=config, block=block: task.run_block(
                    config, block.seeds, device), budget)
            if len(logs) != len(block.trials):
                raise RuntimeError(
                    f"task {task_name!r} returned {len(logs)} results for {len(block.trials)} seeds"
                )
            per_trial = (time.perf_counter() - start) / len(block.trials)
            outcomes: list[Outcome] | None = [(log, None, per_trial, output.tail)
                                              for log in logs]
        except Exception:  # noqa: BLE001 - isolate the failing seed(s)
            outcomes = None
        if outcomes is None:  # outside the handler: a seed's traceback is its own alone
            outcomes = [_run_alone(task, config, seed, device, timeout_s) for seed in block.seeds]
        now = time.time()
        for trial, (log, error, duration, trial_output) in zip(block.trials, outcomes,
                                                                strict=True):
            if log is not None and error is None:
                bad = log.non_finite()
                if bad is not None:
                    error = f"non-finite metric: {bad}"
                    trial_output = trial_log("", trial_output)
            ok = error is None
            records.append(TrialRecord(
                trial.trial_id, trial.config_id, trial.seed, "ok" if ok else "failed", error,
                duration, now, log if ok and log is not None else MetricLog(), node, device,
                gpu, capability, "" if ok else trial_output,
            ))
    return records


def _run_alone(task: Any, config: Any, seed: int, device: str,
               timeout_s: float | None) -> Outcome:
    start = time.perf_counter()
    output = _Output()
    try:
        with captured_output() as output:
            (log,) = _timed(lambda: task.run_block(config, [seed], device), timeout_s)
        return log, None, time.perf_counter() - start, output.tail
    except Exception as exc:  # noqa: BLE001 - recorded as the trial's error
        return (None, describe_error(exc), time.perf_counter() - start,
                trial_log(traceback.format_exc(), output.tail))


def _from_json(values: dict[str, Any]) -> dict[str, Any]:
    # Parquet/JSON hold lists; config dataclasses hold tuples (hashable, immutable).
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
