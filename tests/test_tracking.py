"""The tracker seam and its MLflow implementation, on real SQLite MLflow stores built from
real Parquet result folders (no Ray): exact mirror, repair of every kind of stale run,
run levels, names, statistics, the `none` tracker, and who may import MLflow."""

from __future__ import annotations

import ast
import math
import time
from pathlib import Path

import pytest

from orchestrator import plan
from orchestrator.engine import directory_lock
from orchestrator.record import ResultStore
from orchestrator.records import TrialRecord
from orchestrator.spec import parse_spec
from orchestrator.sync import sync_dir
from orchestrator.tracking import (
    InvocationInfo,
    NoTracker,
    TrackingError,
    default_tracking_uri,
    dir_id,
    open_tracker,
)
from orchestrator.tracking.view import aggregate, config_names
from tasks import MetricLog, get_task
from tests.mirror import all_runs, assert_exact_mirror

ROOT = Path(__file__).resolve().parents[1]
SPEC = {"name": "mirror", "task": "probe", "params": {"steps": 3},
        "grid": {"label": ["a", "b", "c"], "work_ms": [0, 5]}, "seeds": 4}


def fake_records(blocks, invocation_time: float, duration_s: float = 0.01,
                 failed_seeds=(), only=None) -> list[TrialRecord]:
    """Records as the probe task would make them (no Ray): `value` at 3 steps."""
    records = []
    for block in blocks:
        for t in block.trials:
            if only is not None and t.trial_id not in only:
                continue
            if t.seed in failed_seeds:
                records.append(TrialRecord(t.trial_id, t.config_id, t.seed, "failed",
                                           "RuntimeError: on purpose", duration_s,
                                           invocation_time, MetricLog()))
                continue
            log = MetricLog()
            for step in range(3):
                log.log("value", t.seed + step / 10 + len(block.config["label"]), step)
            log.log("on_cuda", 0.0)
            records.append(TrialRecord(t.trial_id, t.config_id, t.seed, "ok", None, duration_s,
                                       invocation_time, log))
    return records


def write_parquet(out: Path, spec, records, invocation: str) -> None:
    store = ResultStore(out)
    store.prepare()
    configs = {b.config_id: b.config for b in plan.expand(spec)}
    store.write(records, sweep=spec.name, task=get_task(spec.task), configs=configs,
                invocation=invocation)


@pytest.fixture(scope="module")
def synced(tmp_path_factory):
    """A results folder with 24 trials (2 failed) mirrored by `mlflow-sync` from scratch."""
    out = tmp_path_factory.mktemp("synced")
    spec = parse_spec(SPEC)
    blocks = plan.expand(spec)
    write_parquet(out, spec, fake_records(blocks, time.time() - 60, failed_seeds=(2,)), "inv1")
    first = sync_dir(out, default_tracking_uri(out))
    return out, spec, first


def test_sync_from_scratch_is_an_exact_mirror(synced) -> None:
    out, spec, first = synced
    counts = assert_exact_mirror(out, default_tracking_uri(out), seed_runs="none")
    assert counts == {"invocation": 1, "config": 6}
    assert (first.configs_written, first.parents_created, first.present) == (6, 1, 0)


def test_sync_twice_writes_nothing(synced) -> None:
    out, _, _ = synced
    again = sync_dir(out, default_tracking_uri(out))
    assert (again.configs_written, again.seeds_written, again.closed, again.present) == (
        0, 0, 0, 24)


def test_config_runs_read_well_and_summarise_their_seeds(synced) -> None:
    out, _, _ = synced
    from orchestrator.tracking.mlflow_tracker import client_for

    client = client_for(default_tracking_uri(out))
    exp = client.get_experiment_by_name("mirror")
    runs = {r.info.run_name: r for r in all_runs(client, exp.experiment_id)
            if r.data.tags.get("sgsweep.role") == "config"}
    assert set(runs) == {f"{label} work_ms={w}" for label in "abc" for w in (0, 5)}
    run = runs["b work_ms=5"]
    assert run.info.status == "FAILED"  # seed 2 failed
    assert run.data.tags["sgsweep.failed_seeds"] == "2"
    assert run.data.tags["sgsweep.error"] == "RuntimeError: on purpose"
    finals = [s + 0.2 + 1 for s in (0, 1, 3)]  # value at step 2, label length 1
    expected = aggregate(finals)
    assert run.data.metrics["value"] == pytest.approx(sum(finals) / 3)
    assert run.data.metrics["value_se"] == pytest.approx(expected.se)
    assert run.data.metrics["value_ci95_low"] == pytest.approx(expected.ci_low)
    assert (run.data.metrics["n_seeds"], run.data.metrics["n_failed"]) == (3, 1)


def test_aggregate_is_the_t_interval_of_the_mean() -> None:
    values = [1.0, 2.0, 4.0, 7.0, 11.0]
    agg = aggregate(values)
    mean = 5.0
    se = math.sqrt(sum((v - mean) ** 2 for v in values) / 4 / 5)
    assert (agg.n, agg.mean, agg.se) == (5, mean, pytest.approx(se))
    # t quantile 0.975 with 4 degrees of freedom, from tables: 2.7764451052
    assert agg.ci_low == pytest.approx(mean - 2.7764451052 * se, rel=1e-9)
    assert agg.ci_high == pytest.approx(mean + 2.7764451052 * se, rel=1e-9)
    assert aggregate([3.0]).se is None and aggregate([3.0]).mean == 3.0


def test_config_names_use_what_varies_text_first() -> None:
    configs = {"a": {"d": 10, "k": 3, "case": "noisy", "m": 5, "n": 1, "lams": [0.5]},
               "b": {"d": 4, "k": 2, "case": "partial", "m": 5, "n": 2, "lams": [0.5]},
               "c": {"d": 4, "k": 2, "case": "partial", "m": 5, "n": 1.5, "lams": [0.5]}}
    assert config_names(configs) == {"a": "noisy d=10 k=3 n=1", "b": "partial d=4 k=2 n=2",
                                     "c": "partial d=4 k=2 n=1.5"}
    assert config_names({"x": {"d": 4}}) == {"x": "all"}


def test_sync_repairs_every_kind_of_stale_run(tmp_path) -> None:
    """What interrupts leave behind: a RUNNING invocation, a half-written configuration run,
    duplicates, a seed run of an earlier attempt, runs of trials Parquet lacks."""
    from mlflow.entities import Metric, Param

    from orchestrator.tracking.mlflow_tracker import client_for

    spec = parse_spec(SPEC)
    blocks = plan.expand(spec)
    uri = default_tracking_uri(tmp_path)
    now = time.time()
    records = fake_records(blocks, now - 100, failed_seeds=(3,))
    write_parquet(tmp_path, spec, records, "inv1")
    assert sync_dir(tmp_path, uri, level="seed").seeds_written == 24
    client = client_for(uri)
    exp = client.get_experiment_by_name("mirror").experiment_id
    runs = all_runs(client, exp)
    parent = next(r for r in runs if r.data.tags["sgsweep.role"] == "invocation")
    config_runs = [r for r in runs if r.data.tags["sgsweep.role"] == "config"]
    seed_runs = [r for r in runs if r.data.tags["sgsweep.role"] == "seed"]
    tags = {k: v for k, v in config_runs[0].data.tags.items() if k.startswith("sgsweep.")
            and k not in ("sgsweep.digest",)}
    # 1. an invocation killed with -9: RUNNING forever
    client.update_run(parent.info.run_id, "RUNNING")
    # 2. a configuration run created but never finished (and a duplicate of a good one)
    half = client.create_run(exp, tags={**tags, "mlflow.parentRunId": parent.info.run_id})
    client.log_batch(half.info.run_id, metrics=[Metric("value", 99.0, 0, 0)])
    # 3. a seed run duplicated (complete: as two writers would have made it), one RUNNING
    dup = seed_runs[0].data.tags
    twin = client.create_run(exp, tags=dup)
    client.log_batch(twin.info.run_id, params=[
        Param(k, v) for k, v in seed_runs[0].data.params.items()], metrics=[
        m for key in ("value", "on_cuda")
        for m in client.get_metric_history(seed_runs[0].info.run_id, key)])
    client.set_terminated(twin.info.run_id, seed_runs[0].info.status)
    client.update_run(seed_runs[1].info.run_id, "RUNNING")
    # ... and a seed run whose status disagrees with the attempt it names
    wrong = next(r for r in seed_runs[2:] if r.info.status == "FINISHED")
    client.set_terminated(wrong.info.run_id, "FAILED")
    # 4. a failed trial re-run (--retry-failed), ok now: its seed and config runs are stale
    failed = next(r for r in seed_runs[2:] if r.info.status == "FAILED")
    retried = fake_records(blocks, now, only={failed.data.tags["sgsweep.trial_id"]})
    write_parquet(tmp_path, spec, retried, "inv2")
    # 5. a seed run of a trial Parquet does not hold
    ghost = client.create_run(exp, tags={**dup, "sgsweep.trial_id": "0" * 16})
    client.set_terminated(ghost.info.run_id, "FINISHED")

    summary = sync_dir(tmp_path, uri)  # level: as the latest invocation chose (seed)
    counts = assert_exact_mirror(tmp_path, uri, seed_runs="all")
    assert counts == {"invocation": 2, "config": 6, "seed": 24}  # inv2's run was synced
    assert summary.seeds_written == 3  # the RUNNING one, the wrong one, the re-run trial's
    assert summary.configs_written == 1  # the re-run trial's (the half-written one goes)
    killed = client.get_run(parent.info.run_id)
    assert killed.info.status == "KILLED"
    assert sync_dir(tmp_path, uri).closed == 0


def test_auto_level_gives_seed_runs_to_slow_configurations_only(tmp_path) -> None:
    spec = parse_spec(SPEC)
    blocks = plan.expand(spec)
    slow = [b for b in blocks if b.config["work_ms"] == 5]
    fast = [b for b in blocks if b.config["work_ms"] == 0]
    write_parquet(tmp_path, spec, fake_records(slow, time.time(), duration_s=1.5)
                  + fake_records(fast, time.time(), duration_s=0.001), "inv1")
    uri = default_tracking_uri(tmp_path)
    summary = sync_dir(tmp_path, uri, level="auto")
    assert summary.seeds_written == 12
    counts = assert_exact_mirror(tmp_path, uri)
    assert counts["seed"] == 12


def test_live_invocation_with_nothing_pending_repairs_without_a_new_run(tmp_path) -> None:
    from orchestrator.sync import latest_trials, sweep_view

    spec = parse_spec(SPEC)
    write_parquet(tmp_path, spec, fake_records(plan.expand(spec), time.time()), "inv1")
    uri = default_tracking_uri(tmp_path)
    view = sweep_view(tmp_path, "mirror", "probe", latest_trials(tmp_path))
    lines: list[str] = []
    live = open_tracker(uri, tmp_path).start(
        InvocationInfo("mirror", "probe", "inv2", tmp_path), view, {}, lines.append)
    assert live.finish("FINISHED", {}) and live.error is None and live.parent_run_id is None
    assert "repaired the view of earlier results (6 config runs" in lines[0]
    assert assert_exact_mirror(tmp_path, uri, seed_runs="none")["invocation"] == 1


def test_none_tracker_does_nothing_and_cannot_sync(tmp_path) -> None:
    tracker = open_tracker(None, tmp_path)
    assert isinstance(tracker, NoTracker)
    live = tracker.start(InvocationInfo("s", "probe", "i", tmp_path), None, {})
    live.record([])
    assert live.finish("FINISHED", {}) and live.backlog == 0
    with pytest.raises(TrackingError, match="no tracking store"):
        tracker.sync(None)
    assert not list(tmp_path.iterdir())


def test_dir_id_is_kept_in_the_folder(tmp_path) -> None:
    first = dir_id(tmp_path)
    assert dir_id(tmp_path) == first and len(first) == 32
    (tmp_path / ".tracking-id").write_text("garbage")
    assert dir_id(tmp_path) != first


def test_mlflow_sync_waits_for_the_run_that_holds_the_folder(synced, capsys) -> None:
    from orchestrator.cli import main

    out, _, _ = synced
    with directory_lock(out):
        assert main(["mlflow-sync", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: {out}: an sgsweep run is using this directory; mlflow-sync after "
                   "it ends (its own mirror is kept up to date as it runs)")


def test_only_the_mlflow_tracker_imports_mlflow() -> None:
    allowed = ROOT / "orchestrator" / "tracking" / "mlflow_tracker.py"
    offenders = []
    for folder in ("orchestrator", "analysis", "tasks", "learners"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                if any(n == "mlflow" or n.startswith("mlflow.") for n in names) \
                        and path != allowed:
                    offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []
