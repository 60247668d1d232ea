"""MLflow as the tracker: the only module of sgsweep that imports `mlflow`.

The view of one results directory (DIR) in one experiment per sweep:

    invocation run       one per `sgsweep run` that had trials to run (or one "synced" run
      │                  for an invocation whose runs were written later by a repair)
      └─ config run      one per configuration: the seeds' final metrics aggregated (mean
           │             as the metric's own name, `_se`, `_ci95_low`, `_ci95_high`), each
           │             seed's final value as `seeds/<metric>` at step = seed, `n_seeds`
           │             (finished) and `n_failed`; FAILED if any seed failed
           └─ seed run   one per trial (its params, full metric history, error), at level
                         `seed`, or `auto` where the trials take a second or more

Every run carries `sgsweep.dir` (DIR's id) and its role; a configuration run carries the
digest of the trial attempts it summarises, a seed run its attempt. A run is right when it
names the attempts Parquet holds now with their status (FAILED where a seed failed, else
FINISHED); anything else is stale: a
RUNNING invocation left by a kill is closed KILLED, a stale configuration or seed run is
deleted (MLflow's soft delete) and written again, duplicates are deleted. `start` does
that for everything outside the invocation's own trials, `sync` for all.

Per-run cost on SQLite is three store transactions (create, one `log_batch`, terminate);
a local SQLite store is put in WAL mode with synchronous=NORMAL through SQLAlchemy's
connect event (≈3x fewer fsyncs; skipped on network filesystems, where WAL is unsafe).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from orchestrator import safefiles
from orchestrator.tracking.base import (
    STORE_FILE,
    Invocation,
    InvocationInfo,
    Study,
    SyncSummary,
    Tracker,
    TrackingError,
    default_tracking_uri,
    dir_id,
    error_line,
    store_name,
)
from orchestrator.tracking.view import (
    DEFAULT_LEVEL,
    LEVELS,
    SweepView,
    TrialRow,
    digest,
    summarise,
    wants_seed_runs,
)
from tasks import MetricLog

MAX_METRICS = 1000  # per log_batch: entities in all, of which
MAX_PARAMS = 100  # at most 100 params and 100 tags
MAX_PARAM_CHARS = 6000
MAX_TAG_CHARS = 5000
SEARCH_PAGE = 5000

ROLE = "sgsweep.role"
DIR = "sgsweep.dir"
SWEEP = "sgsweep.sweep"
INVOCATION = "sgsweep.invocation"
CONFIG_ID = "sgsweep.config_id"
TRIAL_ID = "sgsweep.trial_id"
DIGEST = "sgsweep.digest"
ATTEMPT = "sgsweep.attempt"
LEVEL = "sgsweep.level"
PARENT = "mlflow.parentRunId"
# MLflow 3 opens an experiment in its GenAI view (traces) unless marked as model training.
EXPERIMENT_KIND = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
NOTE = "mlflow.note.content"
CONFIG_FILTER = f"tags.`{ROLE}` = 'config'"

EXPERIMENT_NOTE = """\
sgsweep sweep `{name}`, mirrored from the Parquet results (the source of truth).

* One run per **configuration** (filter `tags.sgsweep.role = 'config'` for one row each):
  each final metric's mean over the seeds under the metric's own name, with `_se`,
  `_ci95_low`, `_ci95_high` (95% t-interval of the mean), `n_seeds` (finished) and
  `n_failed`; each seed's own final value is `seeds/<metric>` at step = seed.
* Configuration runs are nested under the run of the `sgsweep run` invocation that
  produced them; seed runs (one per trial, full metric history) under their configuration
  where trials take a second or more, or with `--tracking-level seed`.
* Rebuild or repair from Parquet at any time: `sgsweep mlflow-sync DIR`.
"""

# Local filesystems where SQLite's WAL mode is safe (it needs shared memory between
# processes on one host; on NFS and other network filesystems it can corrupt the store).
LOCAL_FILESYSTEMS = {"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "zfs", "overlay",
                     "f2fs", "jfs", "reiserfs", "bcachefs"}

_wal_paths: set[str] = set()
_wal_lock = threading.Lock()


def _filesystem(path: Path) -> str | None:
    """The type of the filesystem holding `path` (Linux), None if unknown."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    best, kind = "", None
    text = str(path)
    for line in mounts:
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        if (text == point or text.startswith(point.rstrip("/") + "/")) and len(point) > len(best):
            best, kind = point, parts[2]
    return kind


def _sqlite_wal(uri: str) -> None:
    """WAL + synchronous=NORMAL for a local SQLite store, on every new connection."""
    path = Path(uri.removeprefix("sqlite:///")).resolve()
    kind = _filesystem(path.parent)
    if kind is not None and kind not in LOCAL_FILESYSTEMS:
        return
    with _wal_lock:
        if not _wal_paths:
            from sqlalchemy import event
            from sqlalchemy.engine import Engine

            event.listen(Engine, "connect", _on_connect)
        _wal_paths.add(str(path))


def _on_connect(dbapi_connection, connection_record) -> None:
    import sqlite3

    if not isinstance(dbapi_connection, sqlite3.Connection):
        return
    cursor = dbapi_connection.cursor()
    try:
        files = {str(Path(row[2]).resolve())
                 for row in cursor.execute("PRAGMA database_list") if row[2]}
        if files & _wal_paths:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


SQLITE_COMPANIONS = ("-journal", "-wal", "-shm")  # files SQLite keeps beside a database
ARTIFACTS = "mlartifacts"


def check_store_paths(out_dir: Path) -> None:
    """DIR's own store, its SQLite companions and artifact folder are what MLflow made:
    no link planted (SQLite and MLflow open them by path; `safefiles.UnsafePath`)."""
    for suffix in ("", *SQLITE_COMPANIONS):
        safefiles.check(out_dir, out_dir / f"{STORE_FILE}{suffix}")
    safefiles.check(out_dir, out_dir / ARTIFACTS, kind="dir")


def latest_schema() -> str | None:
    """The schema revision this MLflow creates (its alembic head), None if unknown."""
    try:
        from mlflow.store.db.utils import _get_latest_schema_revision

        return _get_latest_schema_revision()
    except Exception:  # noqa: BLE001 - a private helper: without it, skip the check
        return None


def store_problem(db: Path) -> tuple[str, bool] | None:
    """What makes DIR's SQLite store one MLflow cannot use, and whether it holds runs
    (so is set aside rather than removed); None if it is fine (or empty: MLflow makes
    it). Half-created: tables but a schema short of this MLflow's head and no run (MLflow
    fills a store in one pass: a disk filling or a kill cut it; every later open fails
    with "table ... already exists"). A store at an older schema that holds runs is an
    upgrade for `mlflow db upgrade`, left to MLflow."""
    import sqlite3

    try:
        with open(db, "rb") as handle:
            head = handle.read(16)
    except OSError:
        return None
    if not head:
        return None
    if head != b"SQLite format 3\x00":
        return "not an SQLite database", True
    try:
        with contextlib.closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=rw", uri=True,
                                                timeout=30)) as conn:
            tables = {row[0] for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not tables - {"alembic_version"}:
                return None
            version = (conn.execute("SELECT version_num FROM alembic_version").fetchone()
                       if "alembic_version" in tables else None)
            runs = "runs" in tables and conn.execute(
                "SELECT 1 FROM runs LIMIT 1").fetchone() is not None  # O(1) on a big store
    except sqlite3.OperationalError:  # busy or locked (a UI reading it), I/O: not its fault
        return None
    except sqlite3.DatabaseError as exc:  # "file is not a database", "malformed"
        return f"unreadable as SQLite ({exc})", True
    latest = latest_schema()
    current = version[0] if version else None
    if latest is None or current == latest or runs:
        return None
    return (f"half-created (schema {current or 'never stamped'}, MLflow makes {latest}; "
            "no runs in it)"), False


REBUILT_BY_RUN = ("this command mirrors its own sweep into it from Parquet (`sgsweep "
                  "mlflow-sync DIR` mirrors every sweep)")
REBUILT_BY_SYNC = "this mlflow-sync mirrors every sweep of DIR into it from Parquet"


def rebuild_broken_store(out_dir: Path, progress: Callable[[str], None],
                         rebuilt_by: str = REBUILT_BY_RUN) -> bool:
    """DIR's own store (only a mirror of Parquet) set aside if MLflow cannot use it, so
    the next open makes a new one and the mirror is rebuilt (`rebuilt_by` says by what);
    one line says so. Called with DIR's lock held. True if it was set aside."""
    db = out_dir / STORE_FILE
    check_store_paths(out_dir)
    found = store_problem(db) if db.is_file() else None
    if found is None:
        return False
    problem, keep = found
    if keep:
        where = safefiles.move_aside(out_dir, db, out_dir / "quarantine" / STORE_FILE)
        done = f"moved to {where}"
    else:
        safefiles.remove(out_dir, db)
        done = "removed"
    for suffix in SQLITE_COMPANIONS:  # a journal of the old file must not meet the new one
        safefiles.remove(out_dir, out_dir / f"{STORE_FILE}{suffix}")
    progress(f"{db}: {problem}; {done}, a new store is made and {rebuilt_by}")
    return True


def log_artifact(client, run_id: str, path: Path, out_dir: Path | None,
                 artifact_path: str | None = None) -> None:
    """`client.log_artifact` for DIR's own store (`out_dir`; None: another store): where
    MLflow copies the file must lie in DIR, reached through no link (the location is read
    from the store, a file in DIR too)."""
    if out_dir is not None:
        from urllib.parse import unquote, urlparse

        uri = urlparse(client.get_run(run_id).info.artifact_uri)
        target = Path(unquote(uri.path), *(artifact_path or "").split("/"))
        roots = dict.fromkeys((Path(os.path.abspath(out_dir)), out_dir.resolve()))
        root = next((r for r in roots if target.is_relative_to(r) and target != r), None)
        if uri.scheme not in ("", "file") or root is None:
            raise safefiles.refuse(out_dir / STORE_FILE, f"a run's artifact location {target} "
                                   f"lies outside {out_dir} (moved or planted)")
        safefiles.check(root, target, kind="dir")
        safefiles.check(root, target / path.name)
    client.log_artifact(run_id, str(path), artifact_path=artifact_path)


def log_files(client, run_id: str, paths: Sequence[Path], out_dir: Path | None) -> None:
    """The command's own files (its sweep or tune file) on its run; one the store may not
    take safely is left out with a warning (the mirror goes on: Parquet has the rest)."""
    for path in paths:
        try:
            log_artifact(client, run_id, Path(path), out_dir)
        except safefiles.UnsafePath as exc:
            print(f"warning: {exc}; {Path(path).name} is not logged to MLflow", file=sys.stderr)


def client_for(tracking_uri: str):
    for name in ("alembic", "mlflow", "mlflow.store", "sqlalchemy"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # A tracking server that is down must cost seconds, not MLflow's default minutes of
    # retries: Parquet holds the results and `sgsweep mlflow-sync` catches up later.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
    if tracking_uri.startswith("sqlite:///"):
        _sqlite_wal(tracking_uri)
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def artifact_root(out_dir: Path | None, tracking_uri: str) -> Path | None:
    """Artifacts of a local SQLite store live beside it in DIR; a server keeps its own."""
    if out_dir is None or not tracking_uri.startswith("sqlite"):
        return None
    return out_dir / ARTIFACTS


def experiment_id(client, name: str, artifacts: Path | None, note: str | None = None) -> str:
    """The experiment `name`, created if missing, marked as model training."""
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        if existing.tags.get(EXPERIMENT_KIND) != MODEL_TRAINING:
            client.set_experiment_tag(existing.experiment_id, EXPERIMENT_KIND, MODEL_TRAINING)
        return existing.experiment_id
    location = (artifacts / name).resolve().as_uri() if artifacts else None
    tags = {EXPERIMENT_KIND: MODEL_TRAINING, NOTE: note or EXPERIMENT_NOTE.format(name=name)}
    try:
        return client.create_experiment(name, artifact_location=location, tags=tags)
    except Exception:  # noqa: BLE001 - created meanwhile by another process
        existing = client.get_experiment_by_name(name)
        if existing is None:
            raise
        return existing.experiment_id


def search_all(client, exp_id: str, filter_string: str) -> list:
    """Every active run matching the filter (search_runs is paged)."""
    runs, token = [], None
    while True:
        page = client.search_runs([exp_id], filter_string=filter_string,
                                  max_results=SEARCH_PAGE, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def pack_batches(params: Sequence[Any], metrics: Sequence[Any], tags: Sequence[Any]
                 ) -> Iterator[tuple[list[Any], list[Any], list[Any]]]:
    """Fewest `log_batch` calls within MLflow's limits: ≤ 1000 entities per call, of which
    ≤ 100 params and ≤ 100 tags (each call is one store transaction)."""
    params, metrics, tags = list(params), list(metrics), list(tags)
    while params or metrics or tags:
        batch_params, params = params[:MAX_PARAMS], params[MAX_PARAMS:]
        batch_tags, tags = tags[:MAX_PARAMS], tags[MAX_PARAMS:]
        room = MAX_METRICS - len(batch_params) - len(batch_tags)
        batch_metrics, metrics = metrics[:room], metrics[room:]
        yield batch_params, batch_metrics, batch_tags


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text[:MAX_PARAM_CHARS]


def _ms(seconds: float) -> int:
    return int(round(seconds * 1000))


def _log(client, run_id: str, params: dict[str, Any] | None = None,
         metrics: Sequence[Any] = (), tags: dict[str, str] | None = None) -> None:
    from mlflow.entities import Param, RunTag

    param_list = [Param(k, _param_value(v)) for k, v in (params or {}).items()]
    tag_list = [RunTag(k, v[:MAX_TAG_CHARS]) for k, v in (tags or {}).items()]
    for p, m, t in pack_batches(param_list, metrics, tag_list):
        client.log_batch(run_id, metrics=m, params=p, tags=t)


@dataclass
class _Ref:
    """What the mirror needs to know of an existing run."""

    run_id: str
    status: str
    tags: dict[str, str]
    start_ms: int = 0

    @classmethod
    def of(cls, run) -> _Ref:
        return cls(run.info.run_id, run.info.status, dict(run.data.tags),
                   run.info.start_time or 0)


class _Mirror:
    """One sweep's runs for one DIR in one experiment, and how to make them right."""

    def __init__(self, client, exp_id: str, view: SweepView,
                 stop: Callable[[], bool] = lambda: False) -> None:
        self.client = client
        self.exp_id = exp_id
        self.view = view
        self.stop = stop
        self.parents: dict[str, _Ref] = {}  # invocation -> run
        self.configs: dict[str, list[_Ref]] = {}  # config_id -> runs
        self.seeds: dict[str, list[_Ref]] = {}  # trial_id -> runs
        self.finals: dict[str, dict[str, float]] = {}  # trial_id -> final metrics
        self.summary = SyncSummary()

    # -- reading -------------------------------------------------------------------------
    def load(self) -> None:
        for run in search_all(self.client, self.exp_id,
                              f"tags.`{DIR}` = '{self.view.dir_id}'"):
            ref = _Ref.of(run)
            role = ref.tags.get(ROLE)
            if role == "invocation":
                invocation = ref.tags.get(INVOCATION, "")
                if invocation in self.parents:  # a duplicate: keep one
                    self._delete(ref)
                else:
                    self.parents[invocation] = ref
            elif role == "config":
                self.configs.setdefault(ref.tags.get(CONFIG_ID, ""), []).append(ref)
            elif role == "seed":
                self.seeds.setdefault(ref.tags.get(TRIAL_ID, ""), []).append(ref)
        if self.view.level is None:  # as the sweep's latest invocation chose
            latest = max((r for r in self.parents.values() if r.tags.get(LEVEL) in LEVELS),
                         key=lambda r: r.start_ms, default=None)
            self.view.level = latest.tags[LEVEL] if latest else DEFAULT_LEVEL

    def known_configs(self) -> set[str]:
        seed_configs = {r.tags.get(CONFIG_ID, "") for refs in self.seeds.values() for r in refs}
        return {r.config_id for r in self.view.trials.values()} | set(self.configs) | seed_configs

    # -- invocation runs -----------------------------------------------------------------
    def create_parent(self, invocation: str, name: str, tags: dict[str, str],
                      params: dict[str, Any], start_ms: int | None = None) -> str:
        all_tags = {ROLE: "invocation", DIR: self.view.dir_id, SWEEP: self.view.sweep,
                    INVOCATION: invocation, "sgsweep.task": self.view.task,
                    "sgsweep.out_dir": str(self.view.out_dir.resolve()), **tags}
        run = self.client.create_run(self.exp_id, start_time=start_ms, run_name=name,
                                     tags=all_tags)
        _log(self.client, run.info.run_id, params=params)
        self.parents[invocation] = _Ref(run.info.run_id, "RUNNING", all_tags)
        return run.info.run_id

    def parent_for(self, invocation: str) -> str:
        """The run of `invocation`; created (FINISHED, tagged synced) if it has none."""
        if invocation in self.parents:
            return self.parents[invocation].run_id
        rows = [r for r in self.view.trials.values() if r.invocation == invocation]
        start = min((r.started_at for r in rows), default=time.time())
        end = max((r.finished_at for r in rows), default=time.time())
        stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(start))
        run_id = self.create_parent(invocation, f"{self.view.sweep} {stamp} (synced)",
                                    {"sgsweep.synced": "true"}, {"task": self.view.task},
                                    start_ms=_ms(start))
        self.client.set_terminated(run_id, "FINISHED", _ms(end))
        self.parents[invocation].status = "FINISHED"
        self.summary.parents_created += 1
        return run_id

    def close_stale_parents(self, keep: str | None) -> None:
        """Invocation runs left RUNNING by a kill: their invocation is gone (we hold DIR)."""
        for ref in self.parents.values():
            if ref.status == "RUNNING" and ref.run_id != keep:
                self.client.set_terminated(ref.run_id, "KILLED")
                ref.status = "KILLED"
                self.summary.closed += 1

    # -- configuration and seed runs -----------------------------------------------------
    def open_config(self, cid: str, parent_id: str, rows: list[TrialRow]) -> str:
        """A configuration run, RUNNING, for seed runs to nest under while seeds land."""
        run_id = self._create_config(cid, parent_id, rows)
        self.configs.setdefault(cid, []).append(_Ref(run_id, "RUNNING", {}))
        return run_id

    def repair_config(self, cid: str, rows: list[TrialRow], open_run: str | None = None,
                      level: str | None = None) -> None:
        """Make `cid`'s runs exactly what `rows` (its trials in Parquet) say."""
        existing = self.configs.get(cid, [])
        if not rows:  # no trial of it in Parquet (any more): not part of the mirror
            for ref in existing:
                self._delete(ref)
            self.configs.pop(cid, None)
            return
        want = digest(rows)
        status = "FAILED" if any(r.status != "ok" for r in rows) else "FINISHED"
        good = [r for r in existing if r.status == status and r.tags.get(DIGEST) == want]
        if good and open_run is None:
            keep, rewritten = good[0].run_id, False
        else:
            parent = self.parent_for(max(rows, key=lambda r: r.finished_at).invocation)
            keep = self._write_config(cid, rows, parent, open_run)
            rewritten = True
            self.summary.configs_written += 1
        for ref in existing:
            if ref.run_id != keep:
                self._delete(ref)
        self.configs[cid] = [_Ref(keep, "FINISHED", {DIGEST: want})]
        self._repair_seeds(cid, rows, keep, level or self.view.level, rewritten)

    def write_seed(self, row: TrialRow, log: MetricLog, config_run: str) -> None:
        """A seed run for one trial, replacing any earlier one."""
        for ref in self.seeds.pop(row.trial_id, []):
            self._delete(ref)
        config = self.view.configs.get(row.config_id, {})
        name = f"{self.view.names.get(row.config_id, row.config_id[:8])} · seed {row.seed}"
        tags = {PARENT: config_run, ROLE: "seed", DIR: self.view.dir_id, SWEEP: self.view.sweep,
                TRIAL_ID: row.trial_id, CONFIG_ID: row.config_id, ATTEMPT: row.attempt,
                "sgsweep.status": row.status}
        run = self.client.create_run(self.exp_id, start_time=_ms(row.started_at),
                                     run_name=name, tags=tags)
        from mlflow.entities import Metric

        end = _ms(row.finished_at)
        metrics = [Metric(n, v, end, s)
                   for n, s, v in zip(log.names, log.steps, log.values, strict=True)]
        _log(self.client, run.info.run_id, params={**config, "seed": row.seed},
             metrics=metrics, tags={"sgsweep.error": row.error} if row.error else None)
        status = "FINISHED" if row.status == "ok" else "FAILED"
        self.client.set_terminated(run.info.run_id, status, end)
        self.seeds[row.trial_id] = [_Ref(run.info.run_id, status, tags)]

    def _repair_seeds(self, cid: str, rows: list[TrialRow], config_run: str, level: str,
                      rewritten: bool) -> None:
        """One right seed run per trial, nested under `config_run`, where seed runs are
        wanted (by the level, or because some seed of the configuration has one)."""
        wanted = wants_seed_runs(level, rows) or any(self.seeds.get(r.trial_id) for r in rows)
        missing: list[TrialRow] = []
        for row in rows:
            refs = self.seeds.pop(row.trial_id, [])
            status = "FINISHED" if row.status == "ok" else "FAILED"
            valid = [r for r in refs if r.status == status and r.tags.get(ATTEMPT) == row.attempt]
            for ref in refs[:]:
                if not valid or ref is not valid[0]:
                    self._delete(ref)
            if valid:
                self.seeds[row.trial_id] = [valid[0]]
                if valid[0].tags.get(PARENT) != config_run:
                    self.client.set_tag(valid[0].run_id, PARENT, config_run)
                    valid[0].tags[PARENT] = config_run
            elif wanted:
                missing.append(row)
        self.summary.present += 0 if rewritten else len(rows) - len(missing)
        if missing:
            logs = self.view.load_metrics([r.trial_id for r in missing])
            for row in missing:
                if self.stop():
                    return
                self.write_seed(row, logs.get(row.trial_id, MetricLog()), config_run)
                self.summary.seeds_written += 1

    def remove_orphan_seeds(self, skip_configs: set[str]) -> None:
        """Seed runs of trials Parquet does not hold (outside configurations in flight)."""
        for tid in [t for t in self.seeds if t not in self.view.trials]:
            refs = self.seeds[tid]
            if any(r.tags.get(CONFIG_ID) in skip_configs for r in refs):
                continue
            for ref in self.seeds.pop(tid):
                self._delete(ref)

    def _create_config(self, cid: str, parent_id: str, rows: list[TrialRow]) -> str:
        tags = {PARENT: parent_id, ROLE: "config", DIR: self.view.dir_id, SWEEP: self.view.sweep,
                CONFIG_ID: cid}
        start = min(r.started_at for r in rows) if rows else time.time()
        run = self.client.create_run(self.exp_id, start_time=_ms(start),
                                     run_name=self.view.names.get(cid, cid[:8]), tags=tags)
        _log(self.client, run.info.run_id, params=self.view.configs.get(cid, {}))
        return run.info.run_id

    def _write_config(self, cid: str, rows: list[TrialRow], parent_id: str,
                      open_run: str | None) -> str:
        from mlflow.entities import Metric

        run_id = open_run or self._create_config(cid, parent_id, rows)
        summary = summarise(rows, self._finals(rows))
        end = _ms(max(r.finished_at for r in rows))
        metrics = [Metric("n_seeds", summary.ok, end, 0),
                   Metric("n_failed", summary.failed, end, 0)]
        for name, agg in summary.metrics.items():
            metrics.append(Metric(name, agg.mean, end, 0))
            if agg.se is not None:
                metrics += [Metric(f"{name}_se", agg.se, end, 0),
                            Metric(f"{name}_ci95_low", agg.ci_low, end, 0),
                            Metric(f"{name}_ci95_high", agg.ci_high, end, 0)]
        for name, pairs in summary.per_seed.items():
            metrics += [Metric(f"seeds/{name}", value, end, seed) for seed, value in pairs]
        tags = {DIGEST: digest(rows), "sgsweep.seeds": _seed_list([r.seed for r in rows])}
        if summary.failed_seeds:
            tags["sgsweep.failed_seeds"] = _seed_list(summary.failed_seeds)
        if summary.first_error:
            tags["sgsweep.error"] = summary.first_error
        _log(self.client, run_id, metrics=metrics, tags=tags)
        self.client.set_terminated(run_id, "FAILED" if summary.failed else "FINISHED", end)
        return run_id

    def _finals(self, rows: list[TrialRow]) -> dict[str, dict[str, float]]:
        need = [r.trial_id for r in rows if r.status == "ok" and r.trial_id not in self.finals]
        if need:
            for tid, log in self.view.load_metrics(need).items():
                self.finals[tid] = log.final()
        return {r.trial_id: self.finals.get(r.trial_id, {}) for r in rows}

    def _delete(self, ref: _Ref) -> None:
        self.client.delete_run(ref.run_id)
        self.summary.closed += 1


def _seed_list(seeds: list[int]) -> str:
    return ", ".join(map(str, sorted(seeds)))[:MAX_TAG_CHARS]


def _invocation_name(sweep: str) -> str:
    return f"{sweep} {time.strftime('%Y-%m-%d %H:%M:%S')}"


class MlflowInvocation(Invocation):
    """A live invocation. One writer thread owns every MLflow call: it first repairs what
    earlier invocations left (concurrently with the trials), then mirrors each chunk as it
    lands; a configuration run is written once all its pending trials are in."""

    def __init__(self, tracker: MlflowTracker, info: InvocationInfo, view: SweepView,
                 pending: Mapping[str, set[str]], progress: Callable[[str], None]) -> None:
        self.tracker = tracker
        self.info = info
        self.view = view
        self.pending = {cid: set(ids) for cid, ids in pending.items() if ids}
        self.progress = progress
        self.error: str | None = None
        self.parent_run_id: str | None = None
        self.submitted = self.logged = 0
        self._open: dict[str, str] = {}  # config_id -> RUNNING configuration run
        self._groups = view.by_config()
        self._queue: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="mlflow-writer", daemon=True)
        self._thread.start()

    @property
    def backlog(self) -> int:
        return 0 if self.error else self.submitted - self.logged

    def record(self, records: Sequence[Any]) -> None:
        if not records:
            return
        self.submitted += len(records)
        rows = [TrialRow.of(r, self.info.invocation) for r in records]
        self._queue.put(("records", rows, {r.trial_id: r.metrics for r in records}))

    def finish(self, status: str, counts: Mapping[str, int],
               stop: Callable[[], bool] = lambda: False) -> bool:
        if status != "FINISHED":
            self._stop.set()  # leave the backlog: the next run or mlflow-sync repairs it
        self._queue.put(("finish", status, dict(counts)))
        while self._thread.is_alive():
            self._thread.join(timeout=0.2)
            if stop() and not self._stop.is_set():
                self._stop.set()  # stop after the call in progress; close as KILLED
                self._thread.join(timeout=15)
                return False
        return True

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = error_line(exc)
            print(f"warning: MLflow logging stopped ({self.error}); results are safe in "
                  "Parquet, run `sgsweep mlflow-sync DIR` later", file=sys.stderr)

    def _work(self) -> None:
        mirror = None
        try:
            mirror = self._begin()
        except Exception as exc:  # noqa: BLE001 - tracking must not fail the sweep
            self._fail(exc)
        while True:
            item = self._queue.get()
            if item[0] == "finish":
                if mirror is not None and self.error is None:
                    self._close(mirror, *item[1:])
                return
            if mirror is None or self.error is not None or self._stop.is_set():
                continue
            _, rows, logs = item
            try:
                self._mirror_chunk(mirror, rows, logs)
            except Exception as exc:  # noqa: BLE001
                self._fail(exc)

    def _begin(self) -> _Mirror:
        info, view = self.info, self.view
        client = client_for(self.tracker.uri)
        exp_id = experiment_id(client, info.sweep, artifact_root(info.out_dir, self.tracker.uri))
        mirror = _Mirror(client, exp_id, view, stop=self._stop.is_set)
        mirror.load()
        if self.pending:
            self.parent_run_id = mirror.create_parent(
                info.invocation, _invocation_name(info.sweep), {LEVEL: view.level, **info.tags},
                {**info.params, "tracking_level": view.level})
            log_files(client, self.parent_run_id, info.artifacts,
                      info.out_dir if self.tracker.own_store else None)
        mirror.close_stale_parents(keep=self.parent_run_id)
        for cid in sorted(mirror.known_configs() - set(self.pending)):
            if self._stop.is_set():
                break
            mirror.repair_config(cid, self._groups.get(cid, []))
        mirror.remove_orphan_seeds(skip_configs=set(self.pending))
        s = mirror.summary
        if s.configs_written or s.seeds_written or s.closed or s.parents_created:
            self.progress(f"  mlflow: repaired the view of earlier results ({s.configs_written} "
                          f"config runs, {s.seeds_written} seed runs written; {s.closed} stale "
                          "runs closed or removed)")
        return mirror

    def _mirror_chunk(self, mirror: _Mirror, rows: list[TrialRow],
                      logs: dict[str, MetricLog]) -> None:
        by_config: dict[str, list[TrialRow]] = {}
        for row in rows:
            self.view.add(row)
            if row.status == "ok":
                mirror.finals[row.trial_id] = logs[row.trial_id].final()
            by_config.setdefault(row.config_id, []).append(row)
        for cid, new in by_config.items():
            group = {r.trial_id: r for r in self._groups.get(cid, [])}
            group.update((r.trial_id, r) for r in new)
            self._groups[cid] = sorted(group.values(), key=lambda r: r.seed)
            if cid in self._open or wants_seed_runs(self.view.level, self._groups[cid]):
                run_id = self._open.get(cid)
                if run_id is None:
                    run_id = self._open[cid] = mirror.open_config(
                        cid, self.parent_run_id or mirror.parent_for(self.info.invocation),
                        self._groups[cid])
                for row in new:
                    mirror.write_seed(row, logs[row.trial_id], run_id)
            remaining = self.pending.get(cid, set())
            remaining.difference_update(r.trial_id for r in new)
            if not remaining:
                mirror.repair_config(cid, self._groups[cid], open_run=self._open.pop(cid, None))
            self.logged += len(new)

    def _close(self, mirror: _Mirror, status: str, counts: dict[str, int]) -> None:
        from mlflow.entities import Metric

        try:
            for run_id in self._open.values():  # configurations cut short
                mirror.client.set_terminated(run_id, "KILLED")
            if self.parent_run_id:
                now = int(time.time() * 1000)
                mirror.client.log_batch(self.parent_run_id, metrics=[
                    Metric(k, float(v), now, 0) for k, v in counts.items()])
                if self._stop.is_set() and status == "FINISHED":
                    status = "KILLED"
                mirror.client.set_terminated(self.parent_run_id, status)
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)


class MlflowStudy(Study):
    """MLflow view of a study: one parent run per study, a child run per Optuna trial.

    Calls are synchronous and few (one child per trial); if the tracking store fails,
    logging stops with one warning and the study goes on (Parquet and the Optuna storage
    hold everything).
    """

    def __init__(self, tracker: MlflowTracker, info: InvocationInfo) -> None:
        self.error: str | None = None
        self.client = None
        self.parent_id: str | None = None
        try:
            self.client = client_for(tracker.uri)
            self.exp_id = experiment_id(self.client, info.sweep,
                                        artifact_root(info.out_dir, tracker.uri),
                                        note=f"sgsweep tuning study `{info.sweep}`: one run "
                                             "per Optuna trial under the study's run.")
            runs = self.client.search_runs(
                [self.exp_id], filter_string=f"tags.`{ROLE}` = 'study'", max_results=1)
            if runs:
                self.parent_id = runs[0].info.run_id
                self.client.update_run(self.parent_id, status="RUNNING")
                if info.tags:  # the study run shows its latest invocation's provenance
                    _log(self.client, self.parent_id, tags=info.tags)
            else:
                run = self.client.create_run(self.exp_id, run_name=f"study {info.sweep}", tags={
                    ROLE: "study", SWEEP: info.sweep, "sgsweep.task": info.task,
                    "sgsweep.out_dir": str(info.out_dir.resolve()), **info.tags})
                self.parent_id = run.info.run_id
                _log(self.client, self.parent_id, params=info.params)
            log_files(self.client, self.parent_id, info.artifacts,
                      info.out_dir if tracker.own_store else None)
        except Exception as exc:  # noqa: BLE001 - tracking must not stop the study
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = error_line(exc)
            print(f"warning: MLflow logging stopped ({self.error}); the study is safe in its "
                  "Optuna storage and Parquet", file=sys.stderr)

    def trial(self, number: int, state: str, params: dict[str, Any], value: float | None,
              seed_values: list[float], seeds: list[int], started: float, error: str | None,
              retry_of: int | None) -> None:
        if self.error is not None or self.client is None:
            return
        from mlflow.entities import Metric

        try:
            now = int(time.time() * 1000)
            tags = {PARENT: self.parent_id, ROLE: "optuna_trial",
                    "optuna.trial_number": str(number), "optuna.state": state}
            run = self.client.create_run(self.exp_id, run_name=f"trial {number}",
                                         start_time=int(started * 1000), tags=tags)
            metrics = [Metric("seed_value", v, now, i) for i, v in enumerate(seed_values)]
            if value is not None:
                metrics.append(Metric("objective", value, now, 0))
            extra: dict[str, Any] = {"seeds": json.dumps(seeds)}
            if retry_of is not None:
                extra["retry_of"] = str(retry_of)
            _log(self.client, run.info.run_id,
                 params={k: str(v) for k, v in {**params, **extra}.items()}, metrics=metrics,
                 tags={"sgsweep.error": error} if error else None)
            self.client.set_terminated(run.info.run_id,
                                       "FAILED" if state == "FAIL" else "FINISHED", now)
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)

    def logged_trials(self) -> set[int]:
        if self.error is not None or self.client is None:
            return set()
        children = search_all(self.client, self.exp_id, f"tags.`{PARENT}` = '{self.parent_id}'")
        return {int(r.data.tags["optuna.trial_number"]) for r in children
                if r.data.tags.get("optuna.trial_number", "").isdigit()}

    def close(self, best_value: float | None, best_params: dict[str, Any], counts: dict[str, int],
              status: str = "FINISHED") -> None:
        if self.error is not None or self.client is None or self.parent_id is None:
            return
        from mlflow.entities import Metric

        try:
            now = int(time.time() * 1000)
            metrics = [Metric(f"trials_{k}", float(v), now, 0) for k, v in counts.items()]
            if best_value is not None:
                metrics.append(Metric("best_value", best_value, now, 0))
            _log(self.client, self.parent_id, metrics=metrics,
                 tags={"sgsweep.best_params": json.dumps(best_params)})
            self.client.set_terminated(self.parent_id, status, now)
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)


class MlflowTracker(Tracker):
    def __init__(self, uri: str, out_dir: Path | None = None) -> None:
        self.uri = uri
        self.out_dir = out_dir
        self.own_store = out_dir is not None and uri == default_tracking_uri(out_dir)
        if self.own_store:
            check_store_paths(out_dir)


    def start(self, info: InvocationInfo, view: SweepView, pending: Mapping[str, set[str]],
              progress: Callable[[str], None] = lambda line: None) -> Invocation:
        return MlflowInvocation(self, info, view, pending, progress)

    def sync(self, view: SweepView) -> SyncSummary:
        try:
            client = client_for(self.uri)
            exp_id = experiment_id(client, view.sweep, artifact_root(view.out_dir, self.uri))
            mirror = _Mirror(client, exp_id, view)
            mirror.load()
            mirror.close_stale_parents(keep=None)
            groups = view.by_config()
            for cid in sorted(mirror.known_configs()):
                mirror.repair_config(cid, groups.get(cid, []))
            mirror.remove_orphan_seeds(skip_configs=set())
        except TrackingError:
            raise
        except Exception as exc:  # noqa: BLE001 - an unreachable or broken store
            where = store_name(self.out_dir, self.uri) if self.out_dir else self.uri
            raise TrackingError(f"{where}: {error_line(exc)}") from None
        return mirror.summary

    def start_study(self, info: InvocationInfo) -> Study:
        return MlflowStudy(self, info)

    def attach(self, sweep: str, out_dir: Path, files: Sequence[Path],
               role: str = "invocation") -> None:
        try:
            client = client_for(self.uri)
            experiment = client.get_experiment_by_name(sweep)
            if experiment is None:
                return
            scope = f" and tags.`{DIR}` = '{dir_id(out_dir)}'" if role == "invocation" else ""
            runs = client.search_runs(
                [experiment.experiment_id], filter_string=f"tags.`{ROLE}` = '{role}'{scope}",
                order_by=["attributes.start_time DESC"], max_results=1)
            if not runs:
                return
            for path in files:
                log_artifact(client, runs[0].info.run_id, Path(path),
                             out_dir if self.own_store else None, "report")
        except safefiles.UnsafePath:
            raise
        except Exception as exc:  # noqa: BLE001 - the report on disk is what matters
            print(f"warning: report not logged to MLflow ({error_line(exc)})", file=sys.stderr)

    def ui_urls(self, base: str, out_dir: Path) -> list[tuple[str, str]]:
        client = client_for(self.uri)
        from mlflow.entities import ViewType

        urls = []
        for exp in client.search_experiments(view_type=ViewType.ACTIVE_ONLY):
            if exp.experiment_id == "0" and not client.search_runs([exp.experiment_id],
                                                                   max_results=1):
                continue  # MLflow's own empty "Default"
            is_sweep = bool(client.search_runs([exp.experiment_id], CONFIG_FILTER,
                                               max_results=1))
            # The model-training view (MLflow 3.17 decides it by this URL parameter, else by a
            # browser setting that defaults to GenAI); configuration runs sorted by name (the
            # UI nests runs under their parents only when sorted by date, unfiltered).
            query = "workflowType=machine_learning"
            if is_sweep:
                query += (f"&searchFilter={quote(CONFIG_FILTER, safe='')}"
                          f"&orderByKey={quote('tags.`mlflow.runName`', safe='')}&orderByAsc=true")
            urls.append((exp.name, f"{base}/#/experiments/{exp.experiment_id}/runs?{query}"))
        return urls
