"""A lost Ray node is not a failed trial (issue 22, item 1), with real processes: the
embedded Ray's raylet killed mid-sweep, a worker node of a two-node loopback cluster
killed mid-sweep, and a results folder where an older sgsweep recorded node-lost trials
failed. A seed that really kills its worker is still isolated and recorded failed
(tests/test_reliability.py)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from orchestrator.runner import RunOptions, run_sweep
from orchestrator.spec import parse_spec
from orchestrator.tracking import default_tracking_uri
from tests.helpers import (
    ISOLATED,
    SGSWEEP,
    Driver,
    assert_plain_rerun_completes,
    isolated,
    parts,
    probe_spec,
    runs_by_role,
    trials_of,
)
from tests.mirror import assert_exact_mirror
from tests.two_node_sweep import descendants


def zero_row_parts(out: Path) -> list[Path]:
    return [part for folder in ("trials", "metrics") for part in (out / folder).glob("part-*")
            if pq.read_metadata(part).num_rows == 0]


def raylets_under(pid: int) -> list[int]:
    found = []
    for child in descendants(pid):
        with contextlib.suppress(OSError):  # gone meanwhile
            if Path(f"/proc/{child}/comm").read_text().strip() == "raylet":
                found.append(child)
    return found


def left_running(line: str) -> bool:
    """A "left: COMM STAT..." line of a process still running (not a zombie, not gone)."""
    if not line.startswith("left:") or len(line.split()) < 2:
        return False
    state = line.rsplit(")", 1)[1].split()[0] if ")" in line else "?"
    return state != "Z"


def end_namespace(driver: Driver) -> None:
    """Kill the isolated driver (PID 1 of its namespace, so every Ray process it started
    ends with it), if it still runs."""
    if driver.process.poll() is None:
        for child in subprocess.run(["pgrep", "-P", str(driver.process.pid)],
                                    capture_output=True, text=True).stdout.split():
            os.kill(int(child), signal.SIGKILL)
        driver.process.wait(timeout=60)


@pytest.mark.slow
def test_a_killed_raylet_stops_the_run_in_one_line_and_a_plain_rerun_finishes_it(
        tmp_path) -> None:
    """kill -9 of the embedded Ray's raylet while trials run: the chunks that did not come
    back are not recorded (no trial failed, no zero-row part), the run exits 1 with one
    line saying so, its MLflow invocation is closed FAILED; a plain re-run runs the rest
    and leaves an exact mirror."""
    spec = probe_spec(tmp_path, work_ms=300, steps=3, seeds=30)  # 120 trials
    out = tmp_path / "out"
    command = [SGSWEEP, "run", str(spec), "--out", str(out), "--no-report", "--num-cpus", "2",
               "--block-size", "1"]
    # The run's namespace keeps a shell as its PID 1, which lists what outlived the driver.
    script = ("ip link set lo up && " + " ".join(f"'{c}'" for c in command)
              + "; code=$?; for p in /proc/[0-9]*; do [ $p = /proc/$$ ] || echo left: "
              "$(cat $p/comm $p/stat 2>/dev/null); done; exit $code")
    driver = Driver([*ISOLATED, "sh", "-c", script])
    try:
        driver.wait_until(lambda: parts(out) >= 2, "two chunks recorded")
        raylet = raylets_under(driver.process.pid)
        assert len(raylet) == 1, raylet
        os.kill(raylet[0], signal.SIGKILL)
        code, listed, err = driver.finish()
    finally:
        end_namespace(driver)
    assert code == 1, err[-3000:]
    # The embedded Ray's GCS and agents, and the workers its raylet orphaned, are stopped.
    assert not [line for line in listed.splitlines() if left_running(line)], listed
    assert "Traceback" not in err, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err[-3000:]
    assert "the Ray node this driver runs on is gone" in errors[0]
    assert "LocalRayletDiedError" in errors[0] and "run the same command again" in errors[0]
    partial = trials_of(out)
    assert 0 < len(partial) < 120 and (partial.status == "ok").all()
    assert f"{len(partial)} of 120 trials ran" in errors[0]
    assert not zero_row_parts(out)
    assert [r.info.status for r in runs_by_role(out, "probe")["invocation"]] == ["FAILED"]

    assert_plain_rerun_completes(command, out, total=120, recorded=len(partial))
    assert not zero_row_parts(out)
    assert_exact_mirror(out, default_tracking_uri(out), seed_runs="none")


@pytest.mark.slow
def test_a_worker_node_lost_mid_sweep_costs_no_trial(tmp_path) -> None:
    """The second node of a two-node loopback cluster dies mid-sweep (its raylet and
    workers killed) with Ray's own retries off: the chunks lost with it run again on the
    head; every trial is recorded once, ok, and no seed is blamed."""
    script = Path(__file__).with_name("two_node_sweep.py")
    result = subprocess.run(isolated([sys.executable, str(script), str(tmp_path / "out"), "0"]),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["returncode"] == 0, summary["output_tail"]
    assert summary["killed_while_running"] and len(summary["nodes_before_kill"]) == 2
    assert summary["rows"] == summary["unique"] == summary["ok"] == 60, summary
    assert any(e.startswith("a Ray node left the cluster") for e in summary["events"]), summary
    assert not any("one seed at a time" in e for e in summary["events"]), summary
    assert not zero_row_parts(tmp_path / "out")


def test_trials_an_older_version_recorded_failed_with_their_node_run_again(
        ray_cluster, tmp_path) -> None:
    """A folder as an older sgsweep left it after a raylet died: trials recorded failed
    "killed its worker ... LocalRayletDiedError", one part each (zero-row metrics parts),
    and a zero-row part pair. A plain re-run runs those trials again; their old parts and
    the empty pair are removed; a trial that failed on its own stays failed."""
    from orchestrator import plan
    from orchestrator.record import ResultStore
    from orchestrator.records import TrialRecord
    from tasks import get_task

    spec = parse_spec({"name": "older", "task": "probe", "seeds": 4,
                       "params": {"fail_seeds": [3]}, "grid": {"label": ["a", "b"]}})
    out = tmp_path / "out"
    store, task = ResultStore(out), get_task("probe")
    store.prepare()
    configs = {b.config_id: b.config for b in plan.expand(spec)}
    lost = ("killed its worker 4 times (run alone): ray.exceptions.LocalRayletDiedError: "
            "The task's local raylet died. Check raylet.out for more information.")
    now = time.time() - 60
    for block in plan.expand(spec):
        for t in block.trials[:2]:
            store.write([TrialRecord(t.trial_id, t.config_id, t.seed, "failed", lost, 0.0, now)],
                        sweep=spec.name, task=task, configs=configs, invocation="older")
    store.write([], sweep=spec.name, task=task, configs=configs, invocation="older")
    assert len(zero_row_parts(out)) == 6  # 4 metrics parts of lost trials, 1 empty pair

    lines: list[str] = []
    summary = run_sweep(spec, RunOptions(address="auto", out_dir=out, tracking_uri="",
                                         live=False, progress=lines.append))
    assert (summary.ok, summary.failed, summary.skipped) == (6, 2, 0), summary.first_errors
    assert any("4 trials recorded failed when their Ray node was lost" in line
               for line in lines), lines
    trials = trials_of(out)
    assert len(trials) == 8 and trials.trial_id.is_unique
    assert sorted(trials.query("status == 'failed'").seed) == [3, 3]  # its own error
    assert not trials.error.fillna("").str.contains("LocalRayletDiedError").any()
    # Only the genuinely failed trials' metrics parts have no rows.
    empty = zero_row_parts(out)
    assert all(p.parent.name == "metrics" for p in empty) and len(empty) <= 2, empty
