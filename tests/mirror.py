"""Checks that an MLflow store mirrors a results directory's Parquet exactly, read with
MLflow's own client and pyarrow (independently of orchestrator.tracking's code)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow.dataset as ds
from mlflow import MlflowClient


def parquet_view(out: Path):
    """(latest attempt per trial, {trial_id: {metric: [(step, value)]}}) from DIR."""
    trials = ds.dataset(out / "trials").to_table(columns=[
        "trial_id", "sweep", "config_id", "seed", "status", "finished_at", "config",
        "invocation"]).to_pandas()
    trials = trials.sort_values("finished_at", kind="stable").drop_duplicates(
        "trial_id", keep="last")
    metrics = ds.dataset(out / "metrics").to_table().to_pandas()
    history: dict[str, dict[str, list[tuple[int, float]]]] = {}
    latest = set(trials.trial_id)
    for tid, step, name, value in zip(metrics.trial_id, metrics.step, metrics.metric,
                                      metrics.value, strict=True):
        if tid in latest:
            history.setdefault(tid, {}).setdefault(name, []).append((int(step), float(value)))
    return trials, history


def all_runs(client: MlflowClient, exp_id: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([exp_id], max_results=5000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def assert_exact_mirror(out: Path, uri: str, seed_runs: str = "any") -> dict[str, int]:
    """One FINISHED/FAILED configuration run per Parquet configuration with its seeds'
    values and counts; seed runs one per trial (`seed_runs="all"`), none ("none"), or
    whatever exists, each exact ("any"); nothing RUNNING. Returns counts by role."""
    client = MlflowClient(uri)
    trials, history = parquet_view(out)
    counts: dict[str, int] = {}
    for sweep, group in trials.groupby("sweep"):
        experiment = client.get_experiment_by_name(str(sweep))
        assert experiment is not None, f"no experiment {sweep}"
        assert experiment.tags.get("mlflow.experimentKind") == "custom_model_development"
        runs = all_runs(client, experiment.experiment_id)
        running = [r.info.run_name for r in runs if r.info.status not in
                   ("FINISHED", "FAILED", "KILLED")]
        assert not running, f"runs not closed: {running[:5]}"
        by_role: dict[str, list] = {}
        for run in runs:
            by_role.setdefault(run.data.tags.get("sgsweep.role", "?"), []).append(run)
        for role, role_runs in by_role.items():
            counts[role] = counts.get(role, 0) + len(role_runs)
        parents = {r.info.run_id: r for r in by_role.get("invocation", [])}
        configs: dict[str, list] = {}
        for run in by_role.get("config", []):
            configs.setdefault(run.data.tags["sgsweep.config_id"], []).append(run)
        assert set(configs) == set(group.config_id), "config runs differ from Parquet configs"
        for cid, rows in group.groupby("config_id"):
            assert len(configs[cid]) == 1, f"config {cid}: {len(configs[cid])} runs"
            run = configs[cid][0]
            ok = rows[rows.status == "ok"]
            failed = rows[rows.status != "ok"]
            assert run.info.status == ("FAILED" if len(failed) else "FINISHED"), cid
            assert run.data.tags["mlflow.parentRunId"] in parents, "config run not nested"
            assert run.data.metrics["n_seeds"] == len(ok)
            assert run.data.metrics["n_failed"] == len(failed)
            config = json.loads(rows.config.iloc[0])
            for key, value in config.items():
                shown = run.data.params[key]
                assert shown == (value if isinstance(value, str) else json.dumps(value)), key
            finals: dict[str, dict[int, float]] = {}
            for tid, seed in zip(ok.trial_id, ok.seed, strict=True):
                for name, points in history.get(tid, {}).items():
                    finals.setdefault(name, {})[int(seed)] = max(points)[1]
            for name, per_seed in finals.items():
                logged = {m.step: m.value for m in client.get_metric_history(
                    run.info.run_id, f"seeds/{name}")}
                assert logged == per_seed, f"{cid} seeds/{name}"
                mean = math.fsum(per_seed.values()) / len(per_seed)
                assert math.isclose(run.data.metrics[name], mean, rel_tol=1e-12, abs_tol=1e-15)
        seeds: dict[str, list] = {}
        for run in by_role.get("seed", []):
            seeds.setdefault(run.data.tags["sgsweep.trial_id"], []).append(run)
        assert set(seeds) <= set(group.trial_id), "seed runs of trials Parquet lacks"
        if seed_runs == "all":
            assert set(seeds) == set(group.trial_id), "trials without a seed run"
        if seed_runs == "none":
            assert not seeds, "seed runs where none were expected"
        config_run_of = {cid: runs_[0].info.run_id for cid, runs_ in configs.items()}
        rows_by_tid = group.set_index("trial_id")
        for tid, seed_list in seeds.items():
            assert len(seed_list) == 1, f"trial {tid}: {len(seed_list)} seed runs"
            run, row = seed_list[0], rows_by_tid.loc[tid]
            assert run.info.status == ("FINISHED" if row.status == "ok" else "FAILED")
            assert run.data.tags["mlflow.parentRunId"] == config_run_of[row.config_id]
            assert run.data.params["seed"] == str(row.seed)
            for name, points in history.get(tid, {}).items():
                logged = sorted((m.step, m.value) for m in client.get_metric_history(
                    run.info.run_id, name))
                assert logged == sorted(points), f"{tid} {name}"
    return counts
