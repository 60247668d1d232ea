"""Reliability with real processes: kill -9, Ctrl-C, SIGTERM and SIGHUP at any phase, Ray
that does not start, worker crashes, node loss, timeouts, a tracking server that is down,
two commands on one directory; after each, a plain re-run (or mlflow-sync) must leave
MLflow an exact mirror of Parquet. Loopback only, bounded."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from orchestrator.engine import directory_lock
from orchestrator.runner import RunOptions, run_sweep
from orchestrator.spec import parse_spec
from orchestrator.sync import sync_dir
from orchestrator.tracking import default_tracking_uri
from orchestrator.tracking.mlflow_tracker import client_for
from tests.helpers import (
    SGSWEEP,
    Driver,
    assert_clean_stop,
    assert_plain_rerun_completes,
    free_port,
    isolated,
    isolated_env,
    kill_9_after_parts,
    parts,
    probe_spec,
    quiet,
    runs_by_role,
    start_mlflow_server,
    stop,
    trials_of,
    wait_http,
)
from tests.mirror import assert_exact_mirror


def test_crashed_worker_is_retried_and_its_trials_recorded_once(ray_cluster, tmp_path) -> None:
    from tasks.probe import crash_marker_dir

    markers = f"test-{uuid.uuid4().hex}"
    spec = parse_spec({"name": "crash", "task": "probe", "seeds": 6,
                       "params": {"crash_seeds": [2], "crash_once_dir": markers},
                       "grid": {"label": ["a", "b"]}})
    summary = run_sweep(spec, quiet(out_dir=tmp_path / "out", tracking_uri=""))
    assert (summary.ok, summary.failed) == (12, 0)
    assert len(list(crash_marker_dir(markers).iterdir())) == 1  # the crash did happen, once
    shutil.rmtree(crash_marker_dir(markers))
    trials = trials_of(tmp_path / "out")
    assert len(trials) == 12 and trials.trial_id.is_unique


def test_worker_lost_past_max_retries_is_recorded_failed(ray_cluster, tmp_path) -> None:
    spec = parse_spec({"name": "crash", "task": "probe", "seeds": 3,
                       "params": {"crash_seeds": [1]}, "block_size": 1})
    summary = run_sweep(spec, quiet(out_dir=tmp_path, tracking_uri="", max_retries=0))
    assert (summary.ok, summary.failed) == (2, 1)
    failed = trials_of(tmp_path).query("status == 'failed'")
    assert failed.seed.tolist() == [1]
    assert failed.error.iloc[0].startswith("killed its worker 1 time (run alone)")


def smoke_shaped_with_one_killer(name: str) -> dict:
    """sweeps/smoke.yaml's shape (10 configs x 20 seeds, 20 ms trials of 5 steps), where
    seed 7 of config `j` kills its worker every time it runs."""
    variants = [{"label": label} for label in "abcdefghi"]
    variants.append({"label": "j", "crash_seeds": [7]})
    return {"name": name, "task": "probe", "params": {"work_ms": 20, "steps": 5},
            "variants": variants, "seeds": 20, "timeout_s": 60}


@pytest.mark.slow
def test_a_worker_killing_seed_costs_only_itself_and_retry_failed_heals_the_innocent(
        ray_cluster, tmp_path) -> None:
    """The killer's chunk dies (Ray retries it), then its seeds run one at a time: only
    the seed that kills its worker every time is recorded failed. A folder where an older
    version recorded the killer's innocent neighbours failed is healed by --retry-failed."""
    from orchestrator import plan
    from orchestrator.record import ResultStore
    from orchestrator.records import TrialRecord
    from tasks import get_task

    spec = parse_spec(smoke_shaped_with_one_killer("smoke-killer"))
    out = tmp_path / "out"
    lines: list[str] = []
    options = dict(out_dir=out, tracking_uri="", max_retries=1, live=False,
                   progress=lines.append)
    summary = run_sweep(spec, RunOptions(address="auto", **options))
    assert (summary.ok, summary.failed) == (199, 1), summary.first_errors
    trials = trials_of(out)
    failed = trials.query("status == 'failed'")
    assert len(trials) == 200 and trials.trial_id.is_unique
    assert failed.seed.tolist() == [7] and '"label": "j"' in failed.config.iloc[0]
    assert failed.error.iloc[0].startswith("killed its worker 2 times (run alone)")
    assert any("running them one seed at a time" in line for line in lines), lines

    # As an older version left it: the killer's 19 neighbours recorded failed too.
    (block,) = [b for b in plan.expand(spec) if b.config["label"] == "j"]
    now = time.time()  # after the first run's attempts, before the retry's
    old = [TrialRecord(t.trial_id, t.config_id, t.seed, "failed", "lost by Ray after "
                       "retries: WorkerCrashedError", 0.0, now) for t in block.trials
           if t.seed != 7]
    ResultStore(out).write(old, sweep=spec.name, task=get_task("probe"),
                           configs={block.config_id: block.config}, invocation="older")
    again = run_sweep(spec, RunOptions(address="auto", retry_failed=True, **options))
    assert (again.ok, again.failed, again.skipped) == (19, 1, 180)
    trials = trials_of(out)
    assert len(trials) == 200 and trials.trial_id.is_unique
    assert trials.query("status == 'failed'").seed.tolist() == [7]


def test_exceptions_nans_and_timeouts_fail_only_their_trials(ray_cluster, tmp_path) -> None:
    spec = parse_spec({"name": "faults", "task": "probe", "seeds": 6, "timeout_s": 1,
                       "params": {"fail_seeds": [1], "nan_seeds": [2], "hang_seeds": [3]}})
    summary = run_sweep(spec, quiet(out_dir=tmp_path, tracking_uri=""))
    assert (summary.ok, summary.failed) == (3, 3)
    errors = trials_of(tmp_path).set_index("seed").error
    assert "RuntimeError: probe: seed 1 fails on purpose" in errors[1]
    assert "non-finite metric: value is nan" in errors[2]
    assert "timed out after 1s" in errors[3]
    assert errors[[0, 4, 5]].isna().all()
    # --retry-failed re-runs exactly the failed ones and keeps one row per trial.
    again = run_sweep(spec, quiet(out_dir=tmp_path, tracking_uri="", retry_failed=True))
    assert (again.ok, again.failed, again.skipped) == (0, 3, 3)
    trials = trials_of(tmp_path)
    assert len(trials) == 6 and trials.trial_id.is_unique


def test_a_failed_ray_start_stops_what_it_started_and_nothing_else() -> None:
    """After `ray.init` fails (a raylet timing out under load) its GCS, raylet and agents
    are stopped: this driver's new descendants, and processes of its session that name its
    Ray session (an agent re-parented to init). Older processes and other sessions' are
    left alone."""
    from orchestrator.processes import processes as _processes
    from orchestrator.processes import running as _running
    from orchestrator.schedule import stop_started_since

    me, mark = os.getpid(), uuid.uuid4().hex
    older = subprocess.Popen(["sleep", "300"])
    before = _processes()
    tree = subprocess.Popen(["sh", "-c", "sleep 300 & exec sleep 300"])
    name = f"session_2026-11-27_07-08-18_419132_{me}"
    # Re-parented to init: started by a shell that has exited; one in this session, one not.
    for prefix in ("", "setsid "):
        subprocess.run(["bash", "-c", f"({prefix}bash -c \"exec -a 'agent {mark} {prefix}"
                        f"--session-name={name}' sleep 300\" &)"], check=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            marked = {argv.split()[2]: pid for pid, (_, _, argv) in _processes().items()
                      if argv.startswith(f"agent {mark} ")}
            grandchild = [pid for pid, (ppid, _, _) in _processes().items() if ppid == tree.pid]
            if len(marked) == 2 and grandchild:
                break
            time.sleep(0.1)
        assert len(marked) == 2 and grandchild, (marked, grandchild)
        stop_started_since(before)
        assert tree.wait(timeout=30) is not None and not _running(grandchild[0])
        assert not _running(marked["--session-name=" + name])  # this session's: stopped
        assert _running(marked["setsid"]) and older.poll() is None  # not ours: kept
    finally:
        older.kill()
        older.wait()
        with contextlib.suppress(NameError, KeyError, OSError):
            os.kill(marked["setsid"], signal.SIGKILL)


def test_second_run_on_a_busy_directory_is_refused(tmp_path) -> None:
    spec = probe_spec(tmp_path)
    out = tmp_path / "out"
    with directory_lock(out):
        result = subprocess.run([SGSWEEP, "run", str(spec), "--out", str(out)],
                                capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"error: {out}: another sgsweep run is using this "
                                     "directory; wait for it or choose another --out")
    assert not (out / "trials").exists()


def test_mlflow_sync_on_a_busy_directory_is_refused(tmp_path) -> None:
    # A sync racing a run's own MLflow writer gave trials two runs each: it must wait.
    out = tmp_path / "out"
    (out / "trials").mkdir(parents=True)
    with directory_lock(out):
        result = subprocess.run([SGSWEEP, "mlflow-sync", str(out)], capture_output=True,
                                text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"error: {out}: an sgsweep run is using this directory; "
                                     "mlflow-sync after it ends (its own mirror is kept up "
                                     "to date as it runs)")
    assert not (out / "mlflow.db").exists()


@pytest.mark.slow
def test_two_concurrent_runs_one_wins_no_corruption(tmp_path) -> None:
    spec = probe_spec(tmp_path, work_ms=50, seeds=20)
    out = tmp_path / "out"
    command = [SGSWEEP, "run", str(spec), "--out", str(out), "--tracking-uri", "none",
               "--no-report", "--num-cpus", "1"]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / ".lock").exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert first.poll() is None, f"the first run ended early: {first.communicate()[1][-3000:]}"
    second = subprocess.run(command, capture_output=True, text=True, timeout=600)
    first_out, _ = first.communicate(timeout=300)
    assert first.returncode == 0 and "80 ok" in first_out
    assert second.returncode == 2 and "another sgsweep run" in second.stderr
    trials = trials_of(out)
    assert len(trials) == 80 and trials.trial_id.is_unique


@pytest.mark.slow
def test_kill_9_of_driver_and_its_ray_then_resume_records_each_trial_once(tmp_path) -> None:
    spec = probe_spec(tmp_path, work_ms=150, steps=3, seeds=40)  # 160 trials, ~15 s
    out = tmp_path / "out"
    command = [SGSWEEP, "run", str(spec), "--out", str(out), "--no-report", "--num-cpus", "2",
               "--block-size", "1"]
    kill_9_after_parts(command, out, parts=3, within_s=600)
    partial = trials_of(out)
    assert 0 < len(partial) < 160
    assert_plain_rerun_completes(command, out, total=160, recorded=len(partial))
    metrics = ds.dataset(out / "metrics").to_table().to_pandas()
    # Each probe trial logs 3 `value` steps plus one `on_cuda` flag.
    assert (metrics.groupby("trial_id").size() == 4).all() and metrics.trial_id.nunique() == 160
    assert not metrics.duplicated(["trial_id", "step", "metric"]).any()
    assert not list((out / "trials").glob(".tmp-*"))
    # The killed invocation's run, left RUNNING by kill -9, is closed; the mirror is exact.
    assert_exact_mirror(out, default_tracking_uri(out), seed_runs="none")
    statuses = sorted(r.info.status for r in runs_by_role(out, "probe")["invocation"])
    assert statuses in (["FINISHED", "KILLED"], ["FINISHED"])  # killed before its run began


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_says_how_to_resume(tmp_path) -> None:
    """Ctrl-C as a terminal sends it (to the whole process group, Ray's processes too)
    while trials run. A plain re-run finishes, and MLflow mirrors Parquet exactly."""
    spec = probe_spec(tmp_path, work_ms=200, seeds=30)
    out = tmp_path / "out"
    command = [SGSWEEP, "run", str(spec), "--out", str(out), "--no-report", "--num-cpus", "2",
               "--block-size", "1"]
    driver = Driver(command)
    driver.wait_until(lambda: parts(out) > 0, "a first chunk")
    driver.signal_group(signal.SIGINT)
    code, _, err = driver.finish()
    assert_clean_stop(code, err, 130)
    done = len(trials_of(out))
    assert [r.info.status for r in runs_by_role(out, "probe")["invocation"]] == ["KILLED"]
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=600,
                             env=isolated_env())
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    trials = trials_of(out)
    assert len(trials) == 120 and trials.trial_id.is_unique
    assert f"{done} already recorded" in resumed.stdout
    assert assert_exact_mirror(out, default_tracking_uri(out), seed_runs="none") == {
        "invocation": 2, "config": 4}


@pytest.mark.slow
def test_sigterm_and_sighup_stop_like_ctrl_c(tmp_path) -> None:
    """SIGTERM (a scheduler's stop) and SIGHUP (a closed terminal) to the driver alone: the
    chunks done are kept, the invocation's run is closed KILLED, the resume line printed,
    exit 143 / 129. The re-run completes an exact mirror."""
    spec = probe_spec(tmp_path, work_ms=200, seeds=30)
    out = tmp_path / "out"
    command = [SGSWEEP, "run", str(spec), "--out", str(out), "--no-report", "--num-cpus", "2",
               "--block-size", "1"]
    for signum, expected in ((signal.SIGTERM, 143), (signal.SIGHUP, 129)):
        before = parts(out)
        driver = Driver(command)
        driver.wait_until(lambda before=before: parts(out) > before, "a new chunk")
        driver.process.send_signal(signum)
        code, _, err = driver.finish()
        assert_clean_stop(code, err, expected)
    invocations = runs_by_role(out, "probe")["invocation"]
    assert [r.info.status for r in invocations] == ["KILLED", "KILLED"]
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=600,
                             env=isolated_env())
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert len(trials_of(out)) == 120
    assert_exact_mirror(out, default_tracking_uri(out), seed_runs="none")


@pytest.mark.slow
def test_ctrl_c_while_mirroring_to_mlflow_then_a_rerun_completes_the_mirror(tmp_path) -> None:
    """The last phase of a run: every trial is in Parquet, seed runs are still being
    written. Ctrl-C stops it (130, resume line); the re-run has nothing to compute but
    repairs the view: one seed run per trial, one config run per config, nothing RUNNING."""
    spec = probe_spec(tmp_path, seeds=150)  # 600 trials of no work: Parquet outruns MLflow
    out = tmp_path / "out"
    command = [SGSWEEP, "run", str(spec), "--out", str(out), "--no-report", "--num-cpus", "2",
               "--tracking-level", "seed"]
    driver = Driver(command)
    driver.wait_until(lambda: any("trials to MLflow" in line for line in driver.err),
                      "the MLflow phase")
    driver.signal_group(signal.SIGINT)
    code, _, err = driver.finish()
    assert_clean_stop(code, err, 130)
    assert len(trials_of(out)) == 600
    by_role = runs_by_role(out, "probe")
    assert [r.info.status for r in by_role["invocation"]] == ["KILLED"]
    assert len(by_role.get("seed", [])) < 600
    again = subprocess.run(command, capture_output=True, text=True, timeout=600,
                           env=isolated_env())
    assert again.returncode == 0, again.stderr[-3000:]
    assert "all 600 trials already recorded" in again.stderr
    assert "repaired the view of earlier results" in again.stderr
    counts = assert_exact_mirror(out, default_tracking_uri(out), seed_runs="all")
    assert counts == {"invocation": 1, "config": 4, "seed": 600}


@pytest.mark.slow
def test_ctrl_c_and_sigterm_during_start_up_stop_cleanly(tmp_path) -> None:
    """Ctrl-C while Python imports, Ctrl-C and SIGTERM while the embedded Ray starts: a
    clean 130 / 143 each time, no Ray process left behind, nothing in MLflow RUNNING."""
    spec = probe_spec(tmp_path, seeds=2)
    out = tmp_path / "out"
    ray_tmp = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))  # short: Ray's socket paths
    env = {**isolated_env(), "RAY_TMPDIR": str(ray_tmp)}
    command = [SGSWEEP, "run", str(spec), "--out", str(out), "--no-report", "--num-cpus", "1"]
    try:
        early = Driver(command, env)
        time.sleep(0.3)  # importing
        early.signal_group(signal.SIGINT)
        code, _, err = early.finish()
        assert code == 130 and "Traceback" not in err, err[-3000:]
        # While the embedded Ray starts: Ctrl-C to the group; SIGTERM to the driver alone,
        # which ray.init routes to a handler of its own (sys.exit) until it returns.
        for signum, expected in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
            sessions = len(list((ray_tmp / "ray").glob("session_2*")))
            starting = Driver(command, env)
            starting.wait_until(
                lambda n=sessions: len(list((ray_tmp / "ray").glob("session_2*/logs"))) > n,
                "Ray's start-up", within_s=600)
            if signum == signal.SIGINT:
                starting.signal_group(signum)
            else:
                starting.process.send_signal(signum)
            code, _, err = starting.finish()
            assert_clean_stop(code, err, expected)
        # Ray's processes exit after the driver: wait for that (a deadline, not a sleep).
        deadline = time.monotonic() + 120
        while (left := subprocess.run(["pgrep", "-f", str(ray_tmp)], capture_output=True,
                                      text=True)).stdout and time.monotonic() < deadline:
            time.sleep(0.2)
        assert left.stdout == "", f"Ray processes left running: {left.stdout}"
        if (out / "mlflow.db").exists():
            assert all(r.info.status != "RUNNING" for runs in runs_by_role(out, "probe").values()
                       for r in runs)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.slow
def test_ray_that_does_not_start_is_one_line_and_leaves_nothing_running(tmp_path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    out = tmp_path / "out"
    result = subprocess.run(
        [SGSWEEP, "run", str(probe_spec(tmp_path, seeds=2)), "--out", str(out), "--no-report",
         "--num-cpus", "1"], env={**isolated_env(), "RAY_TMPDIR": str(not_a_dir)},
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: Ray did not start: "), result.stderr[-3000:]
    assert not (out / "mlflow.db").exists() or not runs_by_role(out, "probe")


@pytest.mark.slow
def test_embedded_run_ignores_a_stale_ray_start_record_and_ray_address(tmp_path) -> None:
    # `ray start` records its cluster in $RAY_TMPDIR/ray/ray_current_cluster and a plain
    # ray.init() would join it (failing when it is dead); the embedded default must not.
    ray_tmp = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))  # short: Ray's socket paths
    try:
        (ray_tmp / "ray").mkdir()
        (ray_tmp / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{free_port()}")
        env = {**isolated_env(), "RAY_TMPDIR": str(ray_tmp),
               "RAY_ADDRESS": f"127.0.0.1:{free_port()}"}
        out = tmp_path / "out"
        result = subprocess.run(
            [SGSWEEP, "run", str(probe_spec(tmp_path, seeds=2)), "--out", str(out),
             "--tracking-uri", "none", "--no-report", "--num-cpus", "1"],
            env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "8 ok, 0 failed" in result.stdout
        assert list((ray_tmp / "ray").glob("session_*"))  # its own Ray, under RAY_TMPDIR
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.slow
def test_node_loss_on_a_two_node_loopback_cluster(tmp_path) -> None:
    script = Path(__file__).with_name("two_node_sweep.py")
    result = subprocess.run(isolated([sys.executable, str(script), str(tmp_path / "out")]),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    import json

    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["returncode"] == 0, summary["output_tail"]
    assert summary["killed_while_running"]
    assert len(summary["nodes_before_kill"]) == 2  # trials were placed on both nodes
    assert summary["rows"] == summary["unique"] == summary["ok"] == 60


@pytest.mark.slow
def test_tracking_server_down_then_mlflow_sync_and_a_live_server(ray_cluster, tmp_path) -> None:
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    spec = parse_spec({"name": "srv", "task": "probe", "seeds": 5,
                       "params": {"steps": 4}, "grid": {"label": ["a", "b"]}})
    out = tmp_path / "out"
    down = run_sweep(spec, quiet(out_dir=out, tracking_uri=uri))
    assert (down.ok, down.failed) == (10, 0) and down.tracking_error is not None
    server = start_mlflow_server(tmp_path, port)
    try:
        synced = sync_dir(out, uri, level="seed")
        assert (synced.configs_written, synced.seeds_written, synced.parents_created) == (
            2, 10, 1)
        again = sync_dir(out, uri)  # idempotent
        assert (again.configs_written, again.seeds_written, again.present) == (0, 0, 10)
        assert assert_exact_mirror(out, uri, seed_runs="all") == {
            "invocation": 1, "config": 2, "seed": 10}
        client = client_for(uri)
        experiment = client.get_experiment_by_name("srv")
        runs = client.search_runs([experiment.experiment_id],
                                  filter_string="tags.`sgsweep.role` = 'seed'")
        history = client.get_metric_history(runs[0].info.run_id, "value")
        assert [m.step for m in history] == [0, 1, 2, 3]
        # A sweep logging straight to the live server.
        live_spec = parse_spec({"name": "srv-live", "task": "probe", "seeds": 3})
        live = run_sweep(live_spec, quiet(out_dir=tmp_path / "live", tracking_uri=uri))
        assert live.tracking_error is None and live.parent_run_id
        exp = client.get_experiment_by_name("srv-live")
        children = client.search_runs(
            [exp.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{live.parent_run_id}'")
        assert [c.info.run_name for c in children] == ["all"]  # one config, 3 seeds
        assert children[0].data.metrics["n_seeds"] == 3
    finally:
        stop(server)


@pytest.mark.slow
def test_ui_serves_the_directory_store_on_loopback(ray_cluster, tmp_path) -> None:
    """`sgsweep ui`: prints the runs table's URL (one row per config, the model-training
    view), serves it with one worker on 127.0.0.1; a port in use is one line, exit 2;
    Ctrl-C stops the server with no traceback, exit 130."""
    spec = parse_spec({"name": "ui", "task": "probe", "seeds": 2})
    run_sweep(spec, quiet(out_dir=tmp_path))
    port = free_port()
    log = (tmp_path / "ui.err").open("w+")
    ui = subprocess.Popen([SGSWEEP, "ui", str(tmp_path), "--port", str(port)],
                          stdout=subprocess.PIPE, stderr=log, text=True,
                          start_new_session=True)
    try:
        assert ui.stdout.readline().startswith(f"MLflow UI for {tmp_path} on http://127.0.0.1:")
        line = ui.stdout.readline().strip()
        assert line.startswith(f"ui: http://127.0.0.1:{port}/#/experiments/"), line
        assert "/runs?workflowType=machine_learning&searchFilter=" in line
        wait_http(f"http://127.0.0.1:{port}/health", ui)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name?experiment_name=ui")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert b'"name": "ui"' in response.read().replace(b'":"', b'": "')
        # The server runs in a session of its own (the terminal's Ctrl-C reaches sgsweep only)
        server = int(subprocess.run(["pgrep", "-P", str(ui.pid)], capture_output=True,
                                    text=True).stdout.split()[0])
        group = subprocess.run(["pgrep", "-g", str(server)], capture_output=True, text=True)
        assert len(group.stdout.split()) <= 2, group.stdout  # `mlflow server` + 1 worker
        busy = subprocess.run([SGSWEEP, "ui", str(tmp_path), "--port", str(port)],
                              capture_output=True, text=True, timeout=120)
        assert busy.returncode == 2 and busy.stderr.count("\n") == 1, busy.stderr
        assert f"--port {port}: cannot listen on 127.0.0.1:{port}" in busy.stderr
        ui.send_signal(signal.SIGINT)  # what Ctrl-C sends sgsweep
        assert ui.wait(timeout=60) == 130
        log.seek(0)
        err = log.read()
        assert "Traceback" not in err and err.endswith("MLflow UI stopped\n"), err[-2000:]
        gone = subprocess.run(["pgrep", "-g", str(server)], capture_output=True, text=True)
        assert gone.stdout == "", gone.stdout
    finally:
        if ui.poll() is None:
            stop(ui)
        log.close()
    bad = subprocess.run([SGSWEEP, "ui", str(tmp_path), "--port", "99999"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "a port number in 1..65535" in bad.stderr


@pytest.mark.slow
def test_gpu_resources_reach_ray_and_the_trial_sees_cuda(tmp_path) -> None:
    # Ray is told this machine has one GPU (there is none: the probe task never touches
    # it); a spec asking for half a GPU per chunk must get one and see device "cuda".
    spec = tmp_path / "gpu.yaml"
    spec.write_text("name: gpu\ntask: probe\nseeds: 4\nblock_size: 1\n"
                    "resources: {num_cpus: 0.5, num_gpus: 0.5}\n")
    out = tmp_path / "out"
    result = subprocess.run([SGSWEEP, "run", str(spec), "--out", str(out), "--num-cpus", "2",
                             "--num-gpus", "1", "--tracking-uri", "none", "--no-report"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    trials = trials_of(out)
    assert (trials.device == "cuda").all() and (trials.status == "ok").all()
    metrics = ds.dataset(out / "metrics").to_table().to_pandas()
    assert (metrics.query("metric == 'on_cuda'").value == 1.0).all()


@pytest.mark.slow
def test_kill_9_of_the_driver_leaves_no_ray_agent_behind(tmp_path) -> None:
    """A driver killed with -9 (no PID namespace here, as on a login node): its GCS and
    raylet die with it, and sgsweep's watcher stops the raylet's agents, which Ray would
    leave idling for a minute or more (they wait 60 s on the dead GCS)."""
    spec = probe_spec(tmp_path, work_ms=300, steps=5, seeds=200)
    out = tmp_path / "out"
    driver = Driver([SGSWEEP, "run", str(spec), "--out", str(out), "--no-report",
                     "--tracking-uri", "none", "--num-cpus", "2", "--block-size", "1"],
                    isolated_env())

    def ray_processes() -> list[int]:
        children = subprocess.run(["pgrep", "-P", str(driver.process.pid)],
                                  capture_output=True, text=True).stdout.split()
        grand = [g for c in children for g in subprocess.run(
            ["pgrep", "-P", c], capture_output=True, text=True).stdout.split()]
        return [int(p) for p in children + grand]

    driver.wait_until(lambda: len(list((out / "trials").glob("part-*.parquet"))) >= 2,
                      "the first trials", within_s=600)
    def command_of(pid: int) -> bytes:
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return b""

    agents = [p for p in ray_processes() if command_of(p).startswith(b"ray::")]
    assert agents, "no Ray agent or worker found under the driver"
    tree = ray_processes()
    driver.process.kill()
    driver.process.wait(timeout=60)
    deadline = time.monotonic() + 45  # well under the agents' own 60 s
    while any(Path(f"/proc/{p}").exists() for p in tree) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in tree if Path(f"/proc/{p}").exists()]
