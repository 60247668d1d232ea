"""deploy/slurm/sgsweep.sbatch on a real Slurm: munged, slurmctld and two slurmd on this
machine (deploy/slurm/local-cluster.sh, in private namespaces), a Ray head and worker
started by the batch script with srun, stopped twice by signals, resubmitted to the end.

The test installs Debian's slurm-wlm and munge when they are missing (root and apt-get
needed). Where that or the namespaces are impossible it is skipped, saying why."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LOCAL_CLUSTER = ROOT / "deploy" / "slurm" / "local-cluster.sh"
UNAVAILABLE = 3  # local-cluster.sh: this machine cannot have a local Slurm


def _local_slurm(*args: str, timeout: float) -> subprocess.CompletedProcess:
    result = subprocess.run([str(LOCAL_CLUSTER), *args], capture_output=True, text=True,
                            timeout=timeout)
    if result.returncode == UNAVAILABLE:
        pytest.skip(f"no local Slurm on this machine: {result.stderr.strip()}")
    return result


@pytest.mark.slow
@pytest.mark.timeout(1700)
def test_sweep_stopped_by_term_to_steps_then_preempted_then_resubmitted_records_each_trial_once(
        tmp_path):
    install = _local_slurm("install", timeout=600)
    assert install.returncode == 0, install.stderr
    result = _local_slurm("run", str(tmp_path / "slurm"), "--", sys.executable,
                          str(ROOT / "tests" / "slurm_sweep.py"), str(tmp_path / "sweep"),
                          "steps", "full", timeout=1650)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    stopped, preempted, last = summary["jobs"]

    for job in (stopped, preempted):
        log = "\n".join(job["log"])
        assert not job["ended_before_signal"], log
        # The signal reached the batch script (for `steps`: passed on by the Ray head's
        # step), which interrupted the driver and then stopped Ray on both nodes.
        assert "TERM received: stopping the sweep" in log, log
        assert "sweep interrupted by TERM" in log and "Ray stopped" in log, log
        assert job["exit_code"] == "143:0", log
        assert job["rows_before"] < job["rows_after"] < summary["total"], job
        assert job["ray_left"] == [], job["ray_left"]
    # `steps` reaches the driver as SIGINT only: it stops like Ctrl-C.
    assert "driver exit 130" in "\n".join(stopped["log"])

    log = "\n".join(last["log"])
    assert last["state"] == "COMPLETED" and last["exit_code"] == "0:0", log
    assert "Ray cluster up: 2 of 2 nodes, 4 CPUs, 2 GPUs" in log, log  # GPUs from Slurm
    assert f"{summary['total'] - preempted['rows_after']} ok, 0 failed" in log, log
    assert last["ray_left"] == [], last["ray_left"]
    # Every trial exactly once, all ok, and the last job ran trials on both Slurm nodes.
    assert summary["rows"] == summary["unique"] == summary["ok"] == summary["total"]
    assert summary["hosts_per_job"][-1] == ["node1", "node2"]
