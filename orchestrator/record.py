"""Parquet result store: the source of truth for every trial.

Layout under the output directory:
    trials/part-*.parquet    one row per trial attempt (see TRIAL_COLUMNS + one column per param)
    metrics/part-*.parquet   long form: trial_id, step, metric, value
    invocations/part-<id>.parquet  one row per invocation: its provenance (see
                             orchestrator/provenance.py), joined to trials by `invocation`
    logs/<trial_id>.log      a failed trial's traceback and output tail (its latest failure)
Each completed chunk of trials becomes one part file in each dataset. A part is written
under a hidden temporary name and renamed into place, so readers never see a torn file
(pyarrow ignores names starting with '.'). The metrics part is renamed first and shares
its name with the trials part: a metrics part without its trials twin is an interrupted
write and is removed on the next run.

Each trials part records, in its Parquet key-value metadata, its own row count and its
metrics part's, so a metrics part that is missing or short is detected. Every reader names
a damaged part (empty, truncated, garbled, wrong schema, missing or short twin) in one line
(`DamagedResults`); `heal` (called by `sgsweep run`) moves such parts, with their twins,
to DIR/quarantine/ (never deleting them), so their trials count as not run and run again.
"""

from __future__ import annotations

import json
import logging
import os
import time
import types
import typing
import uuid
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any, Literal, NamedTuple

import pandas as pd
import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from orchestrator import safefiles
from orchestrator.errors import RunError
from orchestrator.records import TrialRecord
from orchestrator.spec import MAX_NAME, NAME_PATTERN
from tasks import Task

log = logging.getLogger(__name__)

TRIAL_COLUMNS: list[tuple[str, pa.DataType]] = [
    ("trial_id", pa.string()),
    ("sweep", pa.string()),
    ("task", pa.string()),
    ("config_id", pa.string()),
    ("seed", pa.int64()),
    ("status", pa.string()),
    ("error", pa.string()),
    ("duration_s", pa.float64()),
    ("finished_at", pa.timestamp("ms", tz="UTC")),
    ("invocation", pa.string()),
    ("node", pa.string()),
    ("device", pa.string()),
    ("tags", pa.string()),
    ("config", pa.string()),
]
# Trial columns added later: parts written before them are still whole (read as null).
HARDWARE_COLUMNS: list[tuple[str, pa.DataType]] = [
    ("gpu", pa.string()),  # the GPU's name; empty on CPU
    ("cpu_capability", pa.string()),  # torch's CPU kernel level where the trial ran
]
METRICS_SCHEMA = pa.schema([
    ("trial_id", pa.string()),
    ("step", pa.int64()),
    ("metric", pa.string()),
    ("value", pa.float64()),
])


TRIALS_ROWS = b"sgsweep.trials_rows"  # metadata of a trials part: its own row count
METRICS_ROWS = b"sgsweep.metrics_rows"  # ... and its metrics twin's
QUARANTINE = "quarantine"
MAGIC = b"PAR1"


class Damage(NamedTuple):
    """A part file that cannot be trusted, and what is wrong with it (one line)."""

    path: Path
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


class DamagedResults(RunError):
    """Part files of a results directory are damaged; the message names the first."""

    def __init__(self, damage: list[Damage]) -> None:
        self.damage = damage
        more = f" (and {len(damage) - 1} more damaged part files)" if len(damage) > 1 else ""
        super().__init__(f"{damage[0]}{more}; `sgsweep run` on this directory moves damaged "
                         "parts to its quarantine/ folder and re-runs their trials")


def param_type(hint: Any) -> pa.DataType:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return param_type(type(typing.get_args(hint)[0]))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return param_type(args[0]) if len(args) == 1 else pa.string()
    return {bool: pa.bool_(), int: pa.int64(), float: pa.float64(), str: pa.string()}.get(
        hint, pa.string()  # lists and anything else: JSON text
    )


def trials_schema(task: Task) -> pa.Schema:
    hints = typing.get_type_hints(task.config_type)
    params = [(name, param_type(hints[name])) for name in task.config_fields()]
    return pa.schema(TRIAL_COLUMNS + HARDWARE_COLUMNS + params)


class ResultStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.trials_dir = self.root / "trials"
        self.metrics_dir = self.root / "metrics"
        self.invocations_dir = self.root / "invocations"
        self.logs_dir = self.root / "logs"

    def prepare(self) -> None:
        for folder in (self.trials_dir, self.metrics_dir):
            with safefiles.folder(self.root, folder):
                pass  # made if missing; a link or a file there is refused
        self._remove_interrupted_writes()

    def write(
        self, records: list[TrialRecord], *, sweep: str, task: Task,
        configs: dict[str, dict[str, Any]], invocation: str, tags: dict[str, Any] | None = None,
    ) -> str:
        """Append one chunk's trials; returns the part name."""
        name = f"part-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:12]}.parquet"
        schema = trials_schema(task)
        tags_json = json.dumps(tags or {}, sort_keys=True)
        rows: dict[str, list[Any]] = {f.name: [] for f in schema}
        for r in records:
            config = configs[r.config_id]
            base = {
                "trial_id": r.trial_id, "sweep": sweep, "task": task.name,
                "config_id": r.config_id, "seed": r.seed, "status": r.status, "error": r.error,
                "duration_s": r.duration_s, "finished_at": int(r.finished_at * 1000),
                "invocation": invocation, "node": r.node, "device": r.device,
                "gpu": r.gpu, "cpu_capability": r.cpu_capability, "tags": tags_json,
                "config": json.dumps(config, sort_keys=True),
            }
            for f in schema:
                if f.name in base:
                    rows[f.name].append(base[f.name])
                else:
                    value = config.get(f.name)
                    rows[f.name].append(json.dumps(value) if f.type == pa.string()
                                        and not isinstance(value, str) and value is not None
                                        else value)
        trials = pa.table(rows, schema=schema)
        metric_rows: dict[str, list[Any]] = {"trial_id": [], "step": [], "metric": [], "value": []}
        for r in records:
            n = len(r.metrics.names)
            metric_rows["trial_id"].extend([r.trial_id] * n)
            metric_rows["step"].extend(r.metrics.steps)
            metric_rows["metric"].extend(r.metrics.names)
            metric_rows["value"].extend(r.metrics.values)
        metrics = pa.table(metric_rows, schema=METRICS_SCHEMA)
        self._write_logs(records, invocation)  # before its row: a failed row has its log
        self._write_pair(name, trials, metrics)
        for r in records:  # an earlier failure's log no longer describes the trial
            if r.status == "ok":
                safefiles.remove(self.root, self.log_path(r.trial_id))
        return name

    # -- failed trials' logs -------------------------------------------------------------
    def log_path(self, trial_id: str) -> Path:
        return self.logs_dir / f"{trial_id}.log"

    def _write_logs(self, records: list[TrialRecord], invocation: str) -> None:
        for r in (r for r in records if r.status != "ok"):
            when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(r.finished_at))
            where = f"{r.node or '?'} ({r.device}{', ' + r.gpu if r.gpu else ''})"
            body = r.log or ("no traceback or output captured (a trial lost with its "
                             "worker, or one whose metrics were not finite, has none)\n")
            text = (f"trial {r.trial_id} (config {r.config_id}, seed {r.seed}) failed at "
                    f"{when} on {where}, invocation {invocation}\nerror: {r.error}\n\n{body}")
            safefiles.write_bytes(self.root, self.log_path(r.trial_id),
                                  text.encode("utf-8", "replace"))

    # -- invocations ---------------------------------------------------------------------
    def write_invocation(self, row: dict[str, Any]) -> Path:
        """One invocation's provenance row (orchestrator.provenance.collect) as its own part."""
        from orchestrator.provenance import FIELDS

        kinds = {"str": pa.string(), "bool": pa.bool_(), "int": pa.int64(),
                 "time": pa.timestamp("ms", tz="UTC")}
        schema = pa.schema([(name, kinds[kind]) for name, kind in FIELDS])
        values = {**row, "started_at": int(row["started_at"] * 1000)}
        table = pa.table({name: [values[name]] for name in schema.names}, schema=schema)
        path = self.invocations_dir / f"part-{row['invocation']}.parquet"
        _atomic_write(table, self.root, path)
        return path

    def read_invocations(self) -> list[dict[str, Any]]:
        """Every invocation's provenance row (started_at in seconds since the epoch); a
        damaged part is named in a logged warning and left out."""
        rows = []
        for part in sorted(self.invocations_dir.glob("part-*.parquet")):
            try:
                rows += pq.read_table(part).to_pylist()
            except (pa.ArrowException, OSError) as exc:
                log.warning("%s: unreadable invocation record (%s); left out",
                            part, _first_line(exc))
        for row in rows:
            row["started_at"] = row["started_at"].timestamp() if row["started_at"] else 0.0
        return rows

    def _write_pair(self, name: str, trials: pa.Table, metrics: pa.Table) -> None:
        """The metrics part first, then its trials part (which records both row counts)."""
        metadata = {**(trials.schema.metadata or {}), TRIALS_ROWS: str(trials.num_rows).encode(),
                    METRICS_ROWS: str(metrics.num_rows).encode()}
        _atomic_write(metrics, self.root, self.metrics_dir / name)
        _atomic_write(trials.replace_schema_metadata(metadata), self.root, self.trials_dir / name)

    def latest(self, columns: list[str] | None = None,
               skip: Collection[str] = ()) -> pd.DataFrame:
        """The latest attempt of every trial (all sweeps): its row with the greatest
        `finished_at`, the last written among equal times. `skip`: part names left out
        (damaged ones, whose trials then count as not run)."""
        wanted = None if columns is None else list(dict.fromkeys(
            [*columns, "trial_id", "finished_at"]))
        table = self.read_trials(columns=wanted, skip=skip)
        if table is None:
            return pd.DataFrame(columns=columns or [name for name, _ in TRIAL_COLUMNS])
        trials = table.to_pandas().sort_values("finished_at", kind="stable")
        trials = trials.drop_duplicates("trial_id", keep="last").reset_index(drop=True)
        return trials if columns is None else trials[columns]

    def recorded(self) -> dict[str, str]:
        """Latest recorded status per trial_id."""
        latest = self.latest(["trial_id", "status"])
        return dict(zip(latest.trial_id, latest.status, strict=True))

    def compact(self) -> int:
        """Drop superseded attempts (e.g. a failed trial later re-run) from older parts.

        Each part is rewritten atomically, or removed when nothing in it is current (and
        so is a part with no rows, as older versions left); returns the number of rows
        dropped. Readers that take the latest attempt per trial are right before and after.
        """
        parts = sorted(self.trials_dir.glob("part-*.parquet"))
        latest: dict[str, tuple[int, str]] = {}
        per_part: dict[str, list[tuple[str, int]]] = {}
        for part in parts:
            table = pq.read_table(part, columns=["trial_id", "finished_at"])
            ids = table.column("trial_id").to_pylist()
            times = table.column("finished_at").cast(pa.int64()).to_pylist()
            per_part[part.name] = list(zip(ids, times, strict=True))
            for tid, at in per_part[part.name]:
                if tid not in latest or (at, part.name) >= latest[tid]:
                    latest[tid] = (at, part.name)
        dropped = 0
        for name, rows in per_part.items():
            stale = {tid for tid, _ in rows if latest[tid][1] != name}
            if all(latest[tid][1] != name for tid, _ in rows):
                # The trials part first: a metrics part left alone is an interrupted write.
                safefiles.remove(self.root, self.trials_dir / name)
                safefiles.remove(self.root, self.metrics_dir / name)
                dropped += len(rows)
                continue
            if not stale:
                continue
            tables = []
            for folder in (self.trials_dir, self.metrics_dir):
                table = pq.read_table(folder / name)
                keep = pa.compute.invert(pa.compute.is_in(
                    table.column("trial_id"), value_set=pa.array(sorted(stale))))
                tables.append(table.filter(keep))
            self._write_pair(name, *tables)
            dropped += sum(tid in stale for tid, _ in rows)
        return dropped

    def damage(self, deep: bool = False) -> list[Damage]:
        """Every damaged part: unreadable footer (empty, truncated, garbled), a schema that
        is not ours, a trials part whose metrics twin is missing or short. `deep` also reads
        every part's data (`sgsweep run` does; other commands find garbled data as they
        read it)."""
        for folder in (self.trials_dir, self.metrics_dir):
            safefiles.check(self.root, folder, kind="dir")
        found: list[Damage] = []
        for part in sorted(self.trials_dir.glob("part-*.parquet")):
            twin = self.metrics_dir / part.name
            if linked := next((p for p in (part, twin) if safefiles.is_link(p)), None):
                found.append(Damage(linked, "a symbolic link, not a part sgsweep wrote"))
                continue
            problem = _footer_problem(part, TRIAL_COLUMNS, deep)
            if problem:
                found.append(Damage(part, problem))
                continue
            if not twin.is_file():
                found.append(Damage(twin, f"missing (its trials part {part} has no metrics)"))
                continue
            problem = _footer_problem(twin, list(zip(METRICS_SCHEMA.names, METRICS_SCHEMA.types,
                                                     strict=True)), deep)
            if problem:
                found.append(Damage(twin, problem))
                continue
            written = pq.read_schema(part).metadata or {}
            for path, key in ((part, TRIALS_ROWS), (twin, METRICS_ROWS)):
                rows = pq.read_metadata(path).num_rows
                if key in written and rows != int(written[key]):
                    found.append(Damage(path, f"{rows} rows, but {int(written[key])} were "
                                              f"written (recorded in {part.name})"))
                    break
        return found

    def check(self) -> None:
        """Raise `DamagedResults` if any part is damaged (read-only commands)."""
        if found := self.damage():
            raise DamagedResults(found)

    def heal(self, report=print) -> list[Damage]:
        """Move every damaged part and its twin to DIR/quarantine/ (never deleted): their
        trials no longer count as recorded, so `run` runs them again."""
        found = self.damage(deep=True)
        for item in found:
            for folder in (self.trials_dir, self.metrics_dir):
                path = folder / item.path.name
                if os.path.lexists(path):
                    safefiles.move_aside(self.root, path,
                                         self.root / QUARANTINE / folder.name / path.name)
            report(f"damaged: {item}; moved to {self.root / QUARANTINE}/, its trials run again")
        return found

    def read_trials(self, columns: list[str] | None = None,
                    skip: Collection[str] = ()) -> pa.Table | None:
        """The trials parts (less those named in `skip`); their `sweep` values are checked
        to be sweep names (they become folder names and MLflow experiment names): a
        tampered one raises `RunError`."""
        table = read_parts(self.trials_dir, columns, skip=skip)
        if table is not None and "sweep" in table.column_names:
            for name in pa.compute.unique(table.column("sweep")).to_pylist():
                if not (isinstance(name, str) and len(name) <= MAX_NAME
                        and NAME_PATTERN.fullmatch(name)):
                    raise RunError(f"{self._part_with_sweep(name)}: sweep {_short(name)} is "
                                   "not a sweep name (letters, digits, '.', '_', '-'); the "
                                   "file was not written by sgsweep: move it out of DIR")
        return table

    def _part_with_sweep(self, name: Any) -> Path:
        for part in sorted(self.trials_dir.glob("part-*.parquet")):
            if name in pq.read_table(part, columns=["sweep"]).column("sweep").to_pylist():
                return part
        return self.trials_dir

    def read_metrics(self, columns: list[str] | None = None) -> pa.Table | None:
        return read_parts(self.metrics_dir, columns)

    def _remove_interrupted_writes(self) -> None:
        for folder in (self.trials_dir, self.metrics_dir, self.invocations_dir, self.logs_dir):
            for tmp in folder.glob(f"{safefiles.TMP_PREFIX}*"):
                safefiles.remove(self.root, tmp)
        trial_parts = {p.name for p in self.trials_dir.glob("part-*.parquet")}
        for part in self.metrics_dir.glob("part-*.parquet"):
            if part.name not in trial_parts:
                safefiles.remove(self.root, part)


def _atomic_write(table: pa.Table, root: Path, path: Path) -> None:
    """One part file of DIR, whole or not at all (`safefiles.atomic_file`)."""
    with safefiles.atomic_file(root, path) as handle:
        pq.write_table(table, handle, compression="zstd")


def _footer_problem(path: Path, expected: list[tuple[str, pa.DataType]],
                    deep: bool = False) -> str | None:
    """What is wrong with one part file, in a few words; None if nothing."""
    try:
        size = path.stat().st_size
        if size == 0:
            return "empty file (0 bytes)"
        with open(path, "rb") as fh:
            head = fh.read(4)
            fh.seek(max(0, size - 4))
            tail = fh.read(4)
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    if head != MAGIC:
        return "not a Parquet file (garbled: no PAR1 header)"
    if tail != MAGIC or size < 12:
        return f"truncated ({size:,} bytes, no Parquet footer)"
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as exc:
        return f"garbled Parquet footer ({_first_line(exc)})"
    for name, kind in expected:
        if name not in schema.names:
            return f"wrong schema: no column {name!r}"
        if schema.field(name).type != kind:
            return (f"wrong schema: column {name!r} is {schema.field(name).type}, "
                    f"expected {kind}")
    if deep:
        try:
            pq.read_table(path)
        except (pa.ArrowException, OSError) as exc:
            return f"garbled data ({_first_line(exc)})"
    return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


def read_parts(folder: Path, columns: Iterable[str] | None = None,
               schema: pa.Schema | None = None, filter: Any = None,
               skip: Collection[str] = ()) -> pa.Table | None:
    """All parts of one dataset folder (less those named in `skip`) as a table (None if
    there are none); a part that cannot be read raises `DamagedResults` naming it."""
    parts = sorted(p for p in folder.glob("part-*.parquet")
                   if p.name not in skip) if folder.is_dir() else []
    if not parts:
        return None
    try:
        if schema is None:
            # Parts of different sweeps may carry different param columns: unify them.
            schemas = [pq.read_schema(p) for p in parts]
            schema = pa.unify_schemas(schemas, promote_options="permissive")
        dataset = ds.dataset([str(p) for p in parts], schema=schema, format="parquet")
        return dataset.to_table(columns=list(columns) if columns is not None else None,
                                filter=filter)
    except (pa.ArrowException, OSError) as exc:
        expected = TRIAL_COLUMNS if folder.name == "trials" else list(
            zip(METRICS_SCHEMA.names, METRICS_SCHEMA.types, strict=True))
        damage = [Damage(p, problem) for p in parts
                  if (problem := _footer_problem(p, expected, deep=True))]
        if damage:
            raise DamagedResults(damage) from None
        raise OSError(f"{folder}: cannot read its parts together ({_first_line(exc)})") \
            from exc

