"""A sweep through deploy/slurm/sgsweep.sbatch on a real two-node Slurm, stopped by
signals and resubmitted until it completes.

Run by tests/test_slurm.py inside `deploy/slurm/local-cluster.sh run DIR -- ...` (SLURM_CONF
set, private namespaces):

    python tests/slurm_sweep.py WORKDIR STOP [STOP ...]   -> a JSON summary on its last line

Each STOP submits the batch script and, once at least 8 more trials are recorded, sends
`scancel --signal=TERM` plus STOP's flags: `steps` (none: the job's steps, the literal
command), `batch` (`--batch`: what `--signal=B:TERM@T` sends before the time limit) or
`full` (`--full`: batch script and steps, as preemption and the time limit do). A last
submission then runs the sweep to its end.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.dataset as ds

ROOT = Path(__file__).resolve().parent.parent
SPEC = """\
name: slurm-probe
task: probe
params: {work_ms: 400, steps: 2}
grid: {label: [a, b, c, d, e, f, g, h]}
seeds: 12
block_size: 1
"""
TOTAL = 96
STOP_FLAGS = {"steps": [], "batch": ["--batch"], "full": ["--full"]}
# Every Ray process: `ray start --block`, GCS, raylet, dashboard agent, workers.
RAY_PROCESSES = "ray start|gcs_server|raylet|ray/_private/workers|dashboard/agent.py"


def sh(*command: str, tries: int = 1) -> str:
    """stdout of `command`; up to `tries` attempts (a Slurm client on a machine at load ~100
    was seen to die of SIGPIPE once: only idempotent queries and signals are retried)."""
    for attempt in range(tries):
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode == 0:
            return done.stdout.strip()
        time.sleep(1 + attempt)
    raise SystemExit(f"{' '.join(command)} failed {tries}x: exit {done.returncode}, "
                     f"{done.stderr.strip()[:300]}")


def submit(work: Path, ray_tmp: str) -> str:
    # Ray's files in a short private folder: job ids restart at 1 in every local cluster.
    return sh("sbatch", "--parsable", "--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=2",
              "--gpus-per-node=1", "--time=10", f"--output={work}/job-%j.out",
              f"--export=ALL,SGSWEEP_DASHBOARD=0,SGSWEEP_NODE_WAIT_S=240,"
              f"SGSWEEP_RAY_TMPDIR={ray_tmp}",
              str(ROOT / "deploy/slurm/sgsweep.sbatch"), str(work / "spec.yaml"),
              str(work / "out"))


def job_field(job: str, field: str) -> str:
    text = sh("scontrol", "-o", "show", "job", job, tries=5)
    return next((kv.split("=", 1)[1] for kv in text.split() if kv.startswith(f"{field}=")), "")


def ended(job: str) -> bool:
    return job_field(job, "JobState") not in ("PENDING", "RUNNING", "COMPLETING", "CONFIGURING")


def recorded(out: Path) -> list[str]:
    """trial_id of every row in the Parquet store (a part written right now is hidden)."""
    try:
        table = ds.dataset(out / "trials").to_table(columns=["trial_id"])
    except (FileNotFoundError, OSError, ValueError):
        return []
    return table.column("trial_id").to_pylist()


def wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.5)


def ray_left() -> list[str]:
    found = subprocess.run(["pgrep", "-a", "-f", RAY_PROCESSES], capture_output=True,
                           text=True).stdout
    return [line[:160] for line in found.splitlines() if "pgrep" not in line]


def run_job(work: Path, stop: str | None, ray_tmp: str) -> dict:
    out = work / "out"
    before = len(recorded(out))
    job = submit(work, ray_tmp)
    started = time.monotonic()
    info: dict = {"job": job, "stop": stop, "rows_before": before}
    if stop is not None:
        wait_for(lambda: len(recorded(out)) >= before + 8 or ended(job), 600,
                 f"job {job} to record 8 trials")
        info["ended_before_signal"] = ended(job)
        info["signal_at_s"] = round(time.monotonic() - started, 1)
        sh("scancel", "--signal=TERM", *STOP_FLAGS[stop], job, tries=5)
    wait_for(lambda: ended(job), 600, f"job {job} to end")
    info["wall_s"] = round(time.monotonic() - started, 1)
    info["state"] = job_field(job, "JobState")
    info["exit_code"] = job_field(job, "ExitCode")
    info["rows_after"] = len(recorded(out))
    # Slurm ends a job's processes as the job ends; give stragglers a few seconds.
    info["ray_left_at_end"] = len(ray_left())
    deadline = time.monotonic() + 20
    while ray_left() and time.monotonic() < deadline:
        time.sleep(0.5)
    info["ray_left"] = ray_left()
    log = (work / f"job-{job}.out").read_text(errors="replace")
    info["log"] = [line for line in log.splitlines()
                   if line.startswith(("sgsweep.sbatch", "slurm-probe:", "results:"))]
    return info


def main() -> None:
    work = Path(sys.argv[1]).resolve()
    stops = sys.argv[2:]
    unknown = [s for s in stops if s not in STOP_FLAGS]
    if unknown:
        raise SystemExit(f"unknown STOP {unknown}: expected {sorted(STOP_FLAGS)}")
    work.mkdir(parents=True, exist_ok=True)
    (work / "spec.yaml").write_text(SPEC)
    ray_tmp = tempfile.mkdtemp(prefix="sgr", dir="/tmp")
    try:
        jobs = [run_job(work, stop, ray_tmp) for stop in stops]
        jobs.append(run_job(work, None, ray_tmp))
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    table = ds.dataset(work / "out" / "trials").to_table(
        columns=["trial_id", "status", "node", "invocation", "finished_at"]).to_pandas()
    # Per job in submission order: the Slurm nodes (hostname part of `node`) that ran trials.
    by_job = table.groupby("invocation").agg(first=("finished_at", "min"),
                                             hosts=("node", lambda n: sorted(
                                                 {x.split(":")[0] for x in n})))
    print(json.dumps({
        "jobs": jobs, "total": TOTAL, "rows": len(table),
        "unique": int(table.trial_id.nunique()), "ok": int((table.status == "ok").sum()),
        "hosts_per_job": by_job.sort_values("first").hosts.tolist(),
    }))

if __name__ == "__main__":
    main()
