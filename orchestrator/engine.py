"""What `sgsweep run` and `sgsweep tune` share around the Ray wait loop (which is
`schedule.ChunkPool`): their common options, the results folder held by one command at a
time, its Parquet store opened and healed, the spec copy kept in it, and file system
errors as one line."""

from __future__ import annotations

import errno
import fcntl
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator import safefiles, signals
from orchestrator.errors import RunError
from orchestrator.record import ResultStore


@dataclass
class EngineOptions:
    """Where results go and where trials run, for `run` and `tune` alike."""

    out_dir: Path
    tracking_uri: str | None = None  # None: SQLite store in out_dir; "" or "none": no tracker
    address: str | None = None  # None: embedded local Ray
    num_cpus: int | None = None
    num_gpus: int | None = None  # embedded Ray only; None: detect
    max_retries: int = 3  # Ray's retries of a chunk whose worker or node died
    spec_path: Path | None = None  # the sweep/tune file, kept in DIR/specs/
    progress: Callable[[str], None] = field(default=lambda line: print(line, file=sys.stderr))


@contextmanager
def results_folder(out_dir: Path, name: str, spec_path: Path | None,
                   progress: Callable[[str], None],
                   check: Callable[[], None] = lambda: None) -> Iterator[ResultStore]:
    """DIR held by this command (signals deferred to safe points inside), its store ready
    (interrupted writes removed, damaged parts moved aside so their trials run again) and
    the spec file copied in; `check()` may refuse DIR (`RunError`) before any of that."""
    with signals.deferred(), directory_lock(out_dir):
        check()
        store = ResultStore(out_dir)
        store.prepare()
        store.heal(progress)
        save_spec_copy(out_dir, name, spec_path)
        from orchestrator.tracking import rebuild_broken_store

        rebuild_broken_store(out_dir, progress)
        yield store


@contextmanager
def directory_lock(out_dir: Path, purpose: str = "run"):
    """One sgsweep command that writes DIR (run, tune, mlflow-sync) at a time: an `flock`
    on DIR/.lock (opened without following a link; it holds the holder's PID)."""
    try:
        fd = safefiles.open_in_place(out_dir, out_dir / ".lock", create=True)
    except OSError as exc:
        raise RunError(os_error_line(exc, f"{out_dir}: cannot hold results ")) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunError(f"{out_dir}: another sgsweep run is using this directory; wait for it "
                       "or choose another --out" if purpose == "run" else
                       f"{out_dir}: an sgsweep run is using this directory; {purpose} "
                       "after it ends (its own mirror is kept up to date as it runs)") from None
    try:
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:
            raise RunError(os_error_line(exc, f"{out_dir}: cannot hold results ")) from None
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


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


def spec_copy(out_dir: Path, name: str) -> Path:
    """Where DIR keeps the sweep/tune file that made its results."""
    return out_dir / "specs" / f"{name}.yaml"


def save_spec_copy(out_dir: Path, name: str, spec_path: Path | None) -> Path | None:
    """Keep the sweep/tune file that made DIR's results in DIR/specs/NAME.yaml."""
    if spec_path is None:
        return None
    copy = spec_copy(out_dir, name)
    safefiles.write_bytes(out_dir, copy, Path(spec_path).read_bytes())
    return copy
