"""Parquet result store: the source of truth for every trial.

Layout under the output directory:
    trials/part-*.parquet    one row per trial attempt (see TRIAL_COLUMNS + one column per param)
    metrics/part-*.parquet   long form: trial_id, step, metric, value
Each completed chunk of trials becomes one part file in each dataset. A part is written
under a hidden temporary name and renamed into place, so readers never see a torn file
(pyarrow ignores names starting with '.'). The metrics part is renamed first and shares
its name with the trials part: a metrics part without its trials twin is an interrupted
write and is removed on the next run.
"""

from __future__ import annotations

import json
import os
import time
import types
import typing
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from orchestrator.execute import TrialRecord
from tasks import Task

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
METRICS_SCHEMA = pa.schema([
    ("trial_id", pa.string()),
    ("step", pa.int64()),
    ("metric", pa.string()),
    ("value", pa.float64()),
])


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
    return pa.schema(TRIAL_COLUMNS + params)


class ResultStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.trials_dir = self.root / "trials"
        self.metrics_dir = self.root / "metrics"

    def prepare(self) -> None:
        self.trials_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_dir.mkdir(parents=True, exist_ok=True)
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
                "tags": tags_json,
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
        _atomic_write(metrics, self.metrics_dir / name)
        _atomic_write(trials, self.trials_dir / name)
        return name

    def recorded(self) -> dict[str, str]:
        """Latest recorded status per trial_id."""
        table = self.read_trials(columns=["trial_id", "status", "finished_at"])
        if table is None:
            return {}
        latest: dict[str, tuple[int, str]] = {}
        ids = table.column("trial_id").to_pylist()
        statuses = table.column("status").to_pylist()
        times = table.column("finished_at").cast(pa.int64()).to_pylist()
        for tid, status, at in zip(ids, statuses, times, strict=True):
            if tid not in latest or at >= latest[tid][0]:
                latest[tid] = (at, status)
        return {tid: status for tid, (_, status) in latest.items()}

    def compact(self) -> int:
        """Drop superseded attempts (e.g. a failed trial later re-run) from older parts.

        Each part is rewritten atomically; returns the number of rows dropped. Readers
        that take the latest attempt per trial are right before and after.
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
            if not stale:
                continue
            for folder in (self.metrics_dir, self.trials_dir):
                path = folder / name
                if path.exists():
                    table = pq.read_table(path)
                    keep = pa.compute.invert(pa.compute.is_in(
                        table.column("trial_id"), value_set=pa.array(sorted(stale))))
                    _atomic_write(table.filter(keep), path)
            dropped += sum(tid in stale for tid, _ in rows)
        return dropped

    def read_trials(self, columns: list[str] | None = None) -> pa.Table | None:
        return _read_dataset(self.trials_dir, columns)

    def read_metrics(self, columns: list[str] | None = None) -> pa.Table | None:
        return _read_dataset(self.metrics_dir, columns)

    def _remove_interrupted_writes(self) -> None:
        for folder in (self.trials_dir, self.metrics_dir):
            for tmp in folder.glob(".tmp-*"):
                tmp.unlink(missing_ok=True)
        trial_parts = {p.name for p in self.trials_dir.glob("part-*.parquet")}
        for part in self.metrics_dir.glob("part-*.parquet"):
            if part.name not in trial_parts:
                part.unlink()


def _atomic_write(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    pq.write_table(table, tmp, compression="zstd")
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _read_dataset(folder: Path, columns: Iterable[str] | None) -> pa.Table | None:
    parts = sorted(folder.glob("part-*.parquet")) if folder.is_dir() else []
    if not parts:
        return None
    # Parts of different sweeps may carry different param columns: unify their schemas.
    schemas = [pq.read_schema(p) for p in parts]
    schema = pa.unify_schemas(schemas, promote_options="permissive")
    dataset = ds.dataset([str(p) for p in parts], schema=schema, format="parquet")
    return dataset.to_table(columns=list(columns) if columns is not None else None)
