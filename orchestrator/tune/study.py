"""Where a study lives and what DIR says of it: Optuna storage (DIR's journal or a
database), the journal repaired after a kill -9, DIR/tune.json (written by `tune`, checked
before any of it becomes a path or a storage URL), and the study read back for `status`."""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

from orchestrator import safefiles
from orchestrator.errors import RunError, without_password
from orchestrator.spec import MAX_NAME, NAME_PATTERN
from orchestrator.tracking import error_line
from orchestrator.tune.search import make_pruner, make_sampler
from orchestrator.tune_spec import TuneSpec

STUDY_FILE = "tune.json"  # marks a tuning directory; says where its study lives
JOURNAL = "study.journal"


def storage_for(out_dir: Path, url: str | None):
    """The study's Optuna storage: a journal file in DIR, or a database URL (clusters)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if url:
        return optuna.storages.RDBStorage(url) if "://" in url else JournalStorage(
            JournalFileBackend(url))
    safefiles.check(out_dir, out_dir / JOURNAL)  # Optuna opens it itself: no link planted
    return JournalStorage(JournalFileBackend(str(out_dir / JOURNAL)))


def open_storage(out_dir: Path, url: str | None):
    """`storage_for`, with a bad URL or an unreachable database as a one-line RunError."""
    try:
        return storage_for(out_dir, url)
    except RunError:
        raise
    except Exception as exc:  # noqa: BLE001 - a bad URL, unreachable database, bad journal
        where = f"--storage {url}" if url else str(out_dir / JOURNAL)
        raise RunError(without_password(f"{where}: {error_line(exc)}", url)) from None


def open_study(spec: TuneSpec, out_dir: Path, storage_url: str | None, quiet: bool = True,
               storage=None):
    """Create or load the study; `storage`: one already opened for `storage_url`."""
    import optuna

    if quiet:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    # The Wilcoxon pruner and the matplotlib plots are marked experimental; that is known.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if storage is None:
        storage = open_storage(out_dir, storage_url)
    try:
        return optuna.create_study(
            study_name=spec.name, storage=storage,
            sampler=make_sampler(spec), pruner=make_pruner(spec),
            direction=spec.objective.direction, load_if_exists=True)
    except ValueError as exc:  # e.g. the stored study optimises in the other direction
        raise RunError(f"study {spec.name!r}: {str(exc).splitlines()[0]}") from None


def repair_journal(path: Path) -> None:
    """Undo what a kill -9 can leave in DIR's journal: a torn last record (cut back to the
    last complete line, or the next append would corrupt the log) and Optuna's lock file
    (stale: we hold DIR's lock, so no other sgsweep writes this study)."""
    out_dir = path.parent
    safefiles.remove(out_dir, Path(f"{path}.lock"))
    if not safefiles.check(out_dir, path):
        return
    with open(safefiles.open_in_place(out_dir, path), "rb+") as fh:
        data = fh.read()
        if data and not data.endswith(b"\n"):
            fh.truncate(data.rfind(b"\n") + 1)
            fh.flush()
            os.fsync(fh.fileno())


def is_tuning_directory(out_dir: Path) -> bool:
    return (out_dir / STUDY_FILE).is_file()


def study_info(out_dir: Path) -> dict[str, Any]:
    """What DIR/tune.json says: the study's name, storage, objective, seeds, search.

    Checked before any of it becomes a path or a storage URL (`RunError` naming the file):
    the study is a name, the spec copy is DIR/specs/STUDY.yaml, and the storage is DIR's
    journal or an existing database (reading a study never creates one)."""
    path = out_dir / STUDY_FILE
    safefiles.check(out_dir, path, in_place=False)  # a link here is refused, not read
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunError(f"{path}: not readable as JSON ({error_line(exc)}); it is written by "
                       "`sgsweep tune`: restore it, or tune into another --out") from None
    if not isinstance(info, dict):
        raise RunError(f"{path}: expected a JSON object, got {type(info).__name__}")

    def bad(key: str, expected: str) -> RunError:
        text = repr(info.get(key))
        return RunError(f"{path}: {key} {text[:60] + ('...' if len(text) > 60 else '')} is "
                        f"not {expected}; it is written by `sgsweep tune`: restore it")

    study = info.get("study")
    if not (isinstance(study, str) and len(study) <= MAX_NAME and NAME_PATTERN.fullmatch(study)):
        raise bad("study", "a study name (letters, digits, '.', '_', '-')")
    if info.get("spec") not in (None, f"specs/{study}.yaml"):
        raise bad("spec", f"specs/{study}.yaml")
    objective = info.get("objective")
    if not (isinstance(objective, dict) and isinstance(objective.get("metric"), str)):
        raise bad("objective", "an objective with a metric")
    storage = info.get("storage") or ""
    if not storage:  # DIR's journal, which Optuna (or optuna-dashboard) opens itself
        safefiles.check(out_dir, out_dir / JOURNAL)
    if not isinstance(storage, str) or (storage and not _known_storage(out_dir, storage)):
        raise bad("storage", "DIR's journal, an existing journal or SQLite file, or a "
                             "postgresql/mysql URL")
    return info


def stored_url(out_dir: Path, spec: TuneSpec, given: str | None) -> str | None:
    """The storage URL of the study `spec` tunes in DIR: `given` (--storage), else what
    tune.json says; `RunError` if DIR holds another study, or this one with another
    objective or other seeds (its trials would not be comparable)."""
    if not is_tuning_directory(out_dir):
        return given
    info = study_info(out_dir)
    if info.get("study") != spec.name:
        raise RunError(f"{out_dir}: holds study {info.get('study')!r}, not "
                       f"{spec.name!r}; choose another --out")
    for key, now in (("objective", vars(spec.objective)), ("seeds", list(spec.seeds))):
        if key in info and info[key] != now:
            raise RunError(
                f"{out_dir}: study {spec.name!r} was run with {key} {info[key]}, the "
                f"file now says {now}; its trials would not be comparable. Choose "
                "another --out (search ranges, n_trials, sampler and pruner may change)")
    if given:
        return given
    stored = info.get("storage") or None
    if stored:
        confine(out_dir, stored)
    return stored


def local_path(url: str) -> Path | None:
    """The file a storage URL names on this machine (a journal, an SQLite file), or None
    for a database server."""
    if "://" not in url:
        return Path(url)
    scheme, _, rest = url.partition("://")
    if scheme.split("+")[0] != "sqlite" or not rest.startswith("/"):
        return None  # a server, or SQLite in memory
    return Path(rest[1:].split("?")[0])


def confine(out_dir: Path, url: str) -> None:
    """A storage read from DIR/tune.json that `tune` will write: a local file must lie in
    DIR (reached through no link). One outside DIR is written only when the user names it
    on the command line (`--storage`): whoever can write DIR could otherwise point the
    next `tune` at any file its user may write."""
    path = local_path(url)
    if path is None:
        return
    absolute = Path(os.path.abspath(path))
    for root in dict.fromkeys((Path(os.path.abspath(out_dir)), Path(out_dir).resolve())):
        if absolute.is_relative_to(root) and absolute != root:
            safefiles.check(root, absolute)
            return
    raise RunError(f"{out_dir / STUDY_FILE}: storage {path} lies outside {out_dir}; sgsweep "
                   "writes a study file outside its results folder only when named on the "
                   f"command line: add --storage {url} if it is yours")


def write_info(out_dir: Path, spec: TuneSpec, storage_url: str | None,
               has_spec_copy: bool) -> None:
    """DIR/tune.json: marks DIR as the home of `spec`'s study and says where it lives."""
    atomic_text(out_dir / STUDY_FILE, json.dumps({
        "study": spec.name, "task": spec.task, "storage": storage_url or "",
        "objective": vars(spec.objective), "seeds": list(spec.seeds),
        "search": [d.name for d in spec.search], "pruner": spec.pruner,
        "spec": f"specs/{spec.name}.yaml" if has_spec_copy else None,
    }, indent=1))


DATABASES = {"sqlite", "postgresql", "mysql", "oracle", "mssql"}  # SQLAlchemy dialects


def _known_storage(out_dir: Path, url: str) -> bool:
    """A storage URL from tune.json that may be opened: a database of a known dialect (a
    SQLite file or journal must already exist: opening one creates it)."""
    if "://" not in url:
        return Path(url).is_file()
    scheme, _, rest = url.partition("://")
    if scheme.split("+")[0] not in DATABASES or any(c in url for c in "\n\r\0"):
        return False
    if scheme.split("+")[0] != "sqlite":
        return True
    path = local_path(url)
    return path is not None and path.is_file() and _optuna_sqlite(path)


def _optuna_sqlite(path: Path) -> bool:
    """An SQLite file that holds Optuna's tables (read-only look: opening it as storage
    would add them to any database)."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro",
                                                uri=True)) as db:
            return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                              "name = 'studies'").fetchone() is not None
    except sqlite3.Error:
        return False


def load_study(out_dir: Path):
    """The study of a tuning directory (for reports)."""
    import optuna

    info = study_info(out_dir)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(out_dir, info.get("storage") or None)
    try:
        return optuna.load_study(study_name=info["study"], storage=storage), info
    except KeyError:
        raise RunError(f"{out_dir / STUDY_FILE}: its storage holds no study "
                       f"{info['study']!r}") from None


def best_trial(study):
    """The study's best complete trial, or None before the first one."""
    try:
        return study.best_trial
    except ValueError:  # no complete trial yet
        return None


def state_counts(trials: list) -> dict[str, int]:
    """How many trials are complete, pruned and failed (keys as Optuna's states, lowercase)."""
    from optuna.trial import TrialState

    return {s.name.lower(): sum(t.state == s for t in trials)
            for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}


def finished_trials(study) -> list:
    """Trials that count towards n_trials: complete, pruned, or failed by their own error."""
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False)
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
            or (t.state == TrialState.FAIL and not t.user_attrs.get("orphaned"))]


def study_status(out_dir: Path) -> str:
    """One line for `sgsweep status DIR` on a tuning directory."""
    study, info = load_study(out_dir)
    states: dict[str, int] = {}
    orphaned = 0
    for t in study.get_trials(deepcopy=False):
        states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
        orphaned += bool(t.user_attrs.get("orphaned"))
    counts = ", ".join(f"{v} {k}" for k, v in sorted(states.items())) or "no trials"
    line = f"study {info['study']}: {counts}" + (f" ({orphaned} orphaned by a stop, retried)"
                                                if orphaned else "")
    best = best_trial(study)
    if best is not None:
        line += f"; best {info['objective']['metric']} = {best.value:.6g} (trial {best.number})"
    return line


def atomic_text(path: Path, text: str) -> None:
    safefiles.write_text(path.parent, path, text)
