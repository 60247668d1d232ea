"""MLflow view of a sweep: an experiment per sweep, a parent run per invocation, a child
run per trial with its params, final metrics and metric history.

One writer thread owns every MLflow call and sends each child's data in `log_batch`
calls within MLflow's limits. Parquet is the source of truth: if the tracking store
fails, the writer says so once, stops logging, and the sweep goes on (`sgsweep
mlflow-sync` rebuilds the view later).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from orchestrator.execute import TrialRecord

MAX_METRICS = 1000
MAX_PARAMS = 100
MAX_PARAM_CHARS = 6000
ROLE_TAG = "sgsweep.role"


def default_tracking_uri(out_dir: str | Path) -> str:
    return f"sqlite:///{Path(out_dir).resolve() / 'mlflow.db'}"


def resolve_tracking_uri(out_dir: Path, uri: str | None) -> str | None:
    """`--tracking-uri` as given: None means DIR's SQLite store, "" means no MLflow."""
    return default_tracking_uri(out_dir) if uri is None else uri or None


def artifact_root(out_dir: Path, tracking_uri: str) -> Path | None:
    """Artifacts of a local SQLite store live beside it in DIR; a server keeps its own."""
    return out_dir / "mlartifacts" if tracking_uri.startswith("sqlite") else None


def error_line(exc: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    text = str(exc)
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def quiet_mlflow_logs() -> None:
    for name in ("alembic", "mlflow", "mlflow.store", "sqlalchemy"):
        logging.getLogger(name).setLevel(logging.WARNING)


def client_for(tracking_uri: str):
    quiet_mlflow_logs()
    # A tracking server that is down must cost seconds, not MLflow's default minutes of
    # retries: Parquet holds the results and `sgsweep mlflow-sync` catches up later.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def experiment_id(client, name: str, artifact_root: Path | None) -> str:
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        return existing.experiment_id
    location = (artifact_root / name).resolve().as_uri() if artifact_root else None
    return client.create_experiment(name, artifact_location=location)


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def log_trial(client, exp_id: str, parent_id: str, record: TrialRecord,
              config: dict[str, Any], sweep: str) -> str:
    """One child run for one trial: params, full metric history, status."""
    from mlflow.entities import Metric, Param, RunTag

    start_ms = int((record.finished_at - record.duration_s) * 1000)
    end_ms = int(record.finished_at * 1000)
    run = client.create_run(
        exp_id, start_time=start_ms, run_name=f"{record.config_id[:8]}-seed{record.seed}",
        tags={"mlflow.parentRunId": parent_id, ROLE_TAG: "trial", "sgsweep.sweep": sweep,
              "sgsweep.trial_id": record.trial_id, "sgsweep.status": record.status},
    )
    run_id = run.info.run_id
    params = [Param(k, _param_value(v)) for k, v in sorted(config.items())]
    params.append(Param("seed", str(record.seed)))
    m = record.metrics
    metrics = [Metric(n, v, end_ms, s) for n, s, v in zip(m.names, m.steps, m.values, strict=True)]
    tags = [RunTag("sgsweep.error", record.error[:5000])] if record.error else []
    for batch_params, batch_metrics, batch_tags in pack_batches(params, metrics, tags):
        client.log_batch(run_id, metrics=batch_metrics, params=batch_params, tags=batch_tags)
    client.set_terminated(run_id, "FINISHED" if record.status == "ok" else "FAILED", end_ms)
    return run_id


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


def create_parent(client, exp_id: str, sweep: str, tags: dict[str, str],
                  params: dict[str, Any], run_name: str | None = None) -> str:
    from mlflow.entities import Param

    run = client.create_run(
        exp_id, run_name=run_name or f"{sweep}-{time.strftime('%Y%m%d-%H%M%S')}",
        tags={ROLE_TAG: "parent", "sgsweep.sweep": sweep, **tags},
    )
    batch = [Param(k, _param_value(v)) for k, v in sorted(params.items())]
    for chunk in _chunks(batch, MAX_PARAMS):
        client.log_batch(run.info.run_id, params=chunk)
    return run.info.run_id


def search_all(client, exp_id: str, filter_string: str) -> list:
    """Every run matching the filter (search_runs is paged)."""
    runs, token = [], None
    while True:
        page = client.search_runs([exp_id], filter_string=filter_string, max_results=1000,
                                  page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


class TrackingWriter:
    """Background writer for one invocation's parent run and its trial runs."""

    def __init__(self, tracking_uri: str, sweep: str, artifact_root: Path | None,
                 parent_tags: dict[str, str], parent_params: dict[str, Any],
                 artifacts: Sequence[Path] = ()) -> None:
        self.tracking_uri = tracking_uri
        self.sweep = sweep
        self.error: str | None = None
        self.logged = 0
        self.submitted = 0
        self._queue: queue.Queue = queue.Queue()
        self._parent_id: str | None = None
        self._exp_id: str | None = None
        self._thread = threading.Thread(
            target=self._work,
            args=(artifact_root, parent_tags, parent_params, list(artifacts)),
            name="mlflow-writer", daemon=True,
        )
        self._thread.start()

    @property
    def parent_run_id(self) -> str | None:
        return self._parent_id

    def submit(self, records: list[TrialRecord], configs: dict[str, dict[str, Any]]) -> None:
        self.submitted += len(records)
        self._queue.put((records, configs))

    @property
    def backlog(self) -> int:
        """Trials handed over but not yet logged (0 once logging has stopped on an error)."""
        return 0 if self.error else self.submitted - self.logged

    def close(self, summary: dict[str, float], status: str = "FINISHED") -> None:
        self._queue.put(("close", summary, status))
        self._thread.join()

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = error_line(exc)
            print(f"warning: MLflow logging stopped ({self.error}); results are safe in "
                  "Parquet, run `sgsweep mlflow-sync DIR` later", file=sys.stderr)

    def _work(self, artifact_root, parent_tags, parent_params, artifacts) -> None:
        client = None
        try:
            client = client_for(self.tracking_uri)
            self._exp_id = experiment_id(client, self.sweep, artifact_root)
            self._parent_id = create_parent(client, self._exp_id, self.sweep, parent_tags,
                                            parent_params)
            for path in artifacts:
                client.log_artifact(self._parent_id, str(path))
        except Exception as exc:  # noqa: BLE001 - tracking must not fail the sweep
            self._fail(exc)
        while True:
            item = self._queue.get()
            if item[0] == "close":
                _, summary, status = item
                if self.error is None and client is not None and self._parent_id:
                    try:
                        from mlflow.entities import Metric

                        now = int(time.time() * 1000)
                        client.log_batch(self._parent_id, metrics=[
                            Metric(k, float(v), now, 0) for k, v in summary.items()])
                        client.set_terminated(self._parent_id, status)
                    except Exception as exc:  # noqa: BLE001
                        self._fail(exc)
                return
            if self.error is not None or client is None:
                continue
            records, configs = item
            try:
                for record in records:
                    log_trial(client, self._exp_id, self._parent_id, record,
                              configs[record.config_id], self.sweep)
                    self.logged += 1
            except Exception as exc:  # noqa: BLE001
                self._fail(exc)
