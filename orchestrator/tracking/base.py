"""The tracker interface the engine calls (see the package docstring), the `none`
tracker, and the helpers every backend shares."""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.tracking.view import (
    SweepView,
)

DIR_ID_FILE = ".tracking-id"
STORE_FILE = "mlflow.db"  # DIR's own SQLite store (the default tracking URI)


class TrackingError(RuntimeError):
    """The tracking store cannot be used (one line)."""


def default_tracking_uri(out_dir: str | Path) -> str:
    return f"sqlite:///{Path(out_dir).resolve() / STORE_FILE}"


def resolve_tracking_uri(out_dir: Path, uri: str | None) -> str | None:
    """`--tracking-uri` as given: None means DIR's SQLite store; "" or "none": no tracker."""
    if uri is None:
        return default_tracking_uri(out_dir)
    return None if uri in ("", "none") else uri


def store_name(out_dir: Path, uri: str) -> str:
    """A tracking store as the user knows it: DIR's own file, or the --tracking-uri given."""
    return str(out_dir / STORE_FILE) if uri == default_tracking_uri(out_dir) else \
        f"--tracking-uri {uri}"


def error_line(exc: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    text = str(exc)
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def dir_id(out_dir: Path) -> str:
    """A results directory's name in a shared tracking store, kept in DIR so it survives
    moving the folder; runs are matched to DIR by it (tag `sgsweep.dir`)."""
    from orchestrator import safefiles

    path = out_dir / DIR_ID_FILE
    if safefiles.check(out_dir, path, in_place=False):  # a link planted here is refused, not read
        text = path.read_text(errors="replace").strip()
        if len(text) == 32 and all(c in "0123456789abcdef" for c in text):
            return text
    value = uuid.uuid4().hex
    safefiles.write_text(out_dir, path, value + "\n")
    return value


@dataclass
class InvocationInfo:
    """One `sgsweep run` invocation (or one `sgsweep tune` study: `sweep` is the study's
    name), as its tracker run describes it."""

    sweep: str
    task: str
    invocation: str
    out_dir: Path
    params: dict[str, Any] = field(default_factory=dict)
    artifacts: Sequence[Path] = ()
    tags: dict[str, str] = field(default_factory=dict)  # provenance (orchestrator.provenance)


@dataclass
class SyncSummary:
    configs_written: int = 0  # configuration runs (re)written
    seeds_written: int = 0  # seed runs (re)written
    present: int = 0  # trials whose runs were already right
    closed: int = 0  # stale runs closed (KILLED) or removed
    parents_created: int = 0


class Invocation(ABC):
    """A live invocation: its runs as trials land."""

    error: str | None = None  # first tracking failure, one line; logging stopped there
    parent_run_id: str | None = None

    @property
    def backlog(self) -> int:
        """Trials handed over but not yet mirrored."""
        return 0

    @abstractmethod
    def record(self, records: Sequence[Any]) -> None:
        """Trials (engine `TrialRecord`s) just written to Parquet."""

    @abstractmethod
    def finish(self, status: str, counts: Mapping[str, int],
               stop: Callable[[], bool] = lambda: False) -> bool:
        """Close the invocation as FINISHED, KILLED or FAILED once the backlog is mirrored.
        Returns False if `stop()` became true first: the rest is left for the next run."""


class Study(ABC):
    """A tuning study's view: one run per study, one per finished Optuna trial."""

    error: str | None = None

    @abstractmethod
    def trial(self, number: int, state: str, params: dict[str, Any], value: float | None,
              seed_values: list[float], seeds: list[int], started: float,
              error: str | None, retry_of: int | None) -> None: ...

    @abstractmethod
    def logged_trials(self) -> set[int]:
        """Optuna trial numbers that already have a run."""

    @abstractmethod
    def close(self, best_value: float | None, best_params: dict[str, Any],
              counts: dict[str, int], status: str = "FINISHED") -> None: ...


class Tracker(ABC):
    uri: str | None = None

    @abstractmethod
    def start(self, info: InvocationInfo, view: SweepView,
              pending: Mapping[str, set[str]],
              progress: Callable[[str], None] = lambda line: None) -> Invocation:
        """Begin an invocation whose pending trials are `pending` (config_id -> trial ids);
        everything else `view` holds is brought up to date in the background."""

    @abstractmethod
    def sync(self, view: SweepView) -> SyncSummary:
        """Make the view of `view.sweep` exactly what Parquet holds (idempotent)."""

    @abstractmethod
    def start_study(self, info: InvocationInfo) -> Study: ...

    @abstractmethod
    def attach(self, sweep: str, out_dir: Path, files: Sequence[Path],
               role: str = "invocation") -> None:
        """Attach report files to the sweep's latest invocation (or study) run."""

    @abstractmethod
    def ui_urls(self, base: str, out_dir: Path) -> list[tuple[str, str]]:
        """(sweep, URL of its runs table) for each sweep of DIR in the store."""


class _NoInvocation(Invocation):
    def record(self, records: Sequence[Any]) -> None:
        return None

    def finish(self, status: str, counts: Mapping[str, int],
               stop: Callable[[], bool] = lambda: False) -> bool:
        return True


class _NoStudy(Study):
    def trial(self, *args: Any, **kwargs: Any) -> None:
        return None

    def logged_trials(self) -> set[int]:
        return set()

    def close(self, *args: Any, **kwargs: Any) -> None:
        return None


class NoTracker(Tracker):
    """`--tracking-uri none`: Parquet only."""

    def start(self, info, view, pending, progress=lambda line: None) -> Invocation:
        return _NoInvocation()

    def sync(self, view: SweepView) -> SyncSummary:
        raise TrackingError("no tracking store (--tracking-uri none)")

    def start_study(self, info: InvocationInfo) -> Study:
        return _NoStudy()

    def attach(self, sweep, out_dir, files, role="invocation") -> None:
        return None

    def ui_urls(self, base: str, out_dir: Path) -> list[tuple[str, str]]:
        return []
