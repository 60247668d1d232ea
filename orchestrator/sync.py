"""`sgsweep mlflow-sync DIR`: rebuild or repair the MLflow view from Parquet.

Parquet is the source of truth. For every trial recorded in DIR without a child run in
the tracking store (tag `sgsweep.trial_id`), a child run is logged under the parent run of
the invocation that produced it (tag `sgsweep.invocation`), created if missing. Running
it twice logs nothing the second time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from orchestrator.execute import TrialRecord
from orchestrator.report import load_results
from orchestrator.tracking import (
    ROLE_TAG,
    artifact_root,
    client_for,
    create_parent,
    experiment_id,
    log_trial,
    search_all,
)
from tasks import MetricLog


@dataclass
class SyncSummary:
    logged: int
    present: int
    parents_created: int


def mlflow_sync(out_dir: str | Path, tracking_uri: str) -> SyncSummary:
    out_dir = Path(out_dir)
    trials, metrics = load_results(out_dir)
    client = client_for(tracking_uri)
    artifacts = artifact_root(out_dir, tracking_uri)
    by_trial = {tid: group for tid, group in metrics.groupby("trial_id")} if len(metrics) else {}
    logged = present = created = 0
    for sweep, sweep_trials in trials.groupby("sweep"):
        exp_id = experiment_id(client, str(sweep), artifacts)
        existing = {r.data.tags.get("sgsweep.trial_id")
                    for r in search_all(client, exp_id, f"tags.`{ROLE_TAG}` = 'trial'")}
        parents = {r.data.tags.get("sgsweep.invocation"): r.info.run_id
                   for r in search_all(client, exp_id, f"tags.`{ROLE_TAG}` = 'parent'")}
        missing = sweep_trials[~sweep_trials.trial_id.isin(existing)]
        present += len(sweep_trials) - len(missing)
        for invocation, group in missing.groupby("invocation"):
            parent = parents.get(invocation)
            if parent is None:
                parent = create_parent(
                    client, exp_id, str(sweep),
                    {"sgsweep.invocation": str(invocation), "sgsweep.task": group.task.iloc[0],
                     "sgsweep.out_dir": str(out_dir.resolve()), "sgsweep.synced": "true"},
                    {"task": group.task.iloc[0]}, run_name=f"{sweep}-{invocation}-synced")
                created += 1
                client.set_terminated(parent, "FINISHED")
            for row in group.itertuples(index=False):
                record = _record(row, by_trial.get(row.trial_id))
                log_trial(client, exp_id, parent, record, json.loads(row.config), str(sweep))
                logged += 1
    return SyncSummary(logged, present, created)


def _record(row, metrics: pd.DataFrame | None) -> TrialRecord:
    log = MetricLog()
    if metrics is not None:
        log.names = metrics.metric.tolist()
        log.steps = [int(s) for s in metrics.step]
        log.values = [float(v) for v in metrics.value]
    finished = pd.Timestamp(row.finished_at).timestamp()
    error = row.error if isinstance(row.error, str) else None
    return TrialRecord(row.trial_id, row.config_id, int(row.seed), row.status, error,
                       float(row.duration_s), finished, log, row.node or "")
