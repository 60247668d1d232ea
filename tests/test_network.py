"""What the embedded Ray of `sgsweep run` listens on, read with `ss` while a run works:
its GCS, raylet, driver and workers' gRPC servers, dashboard agent (metrics exporter) and
runtime-env agent must all be on loopback (orchestrator/schedule.py `loopback_only`)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

SGSWEEP = str(Path(sys.executable).parent / "sgsweep")
LOOPBACK = re.compile(r"^(127\.\d+\.\d+\.\d+|\[::1\]|\[::ffff:127\.\d+\.\d+\.\d+\]):\d+$")


def tree(root: int) -> dict[int, str]:
    """root and its descendants: pid -> command line."""
    parents, argv = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            argv[int(stat.parent.name)] = (stat.parent / "cmdline").read_bytes().replace(
                b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            continue
    found, todo = {root}, [root]
    while todo:
        parent = todo.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in found:
                found.add(pid)
                todo.append(pid)
    return {pid: argv.get(pid, "") for pid in found}


def role(pid: int, argv: str, driver: int) -> str:
    if pid == driver:
        return "driver core worker (gRPC)"
    if "gcs_server" in argv:
        return "gcs_server (gRPC)"
    if re.search(r"(^|/)raylet ", argv):
        return "raylet (gRPC)"
    if "default_worker.py" in argv or re.match(r"ray::(IDLE|_run_chunk)\b", argv):
        return "core worker (gRPC)"
    if argv.startswith("ray::DashboardAgent"):
        return "dashboard agent"
    if argv.startswith("ray::RuntimeEnvAgent"):
        return "runtime env agent"
    return f"other: {argv[:120]}"


@pytest.mark.slow
def test_nothing_the_embedded_ray_starts_listens_beyond_loopback(tmp_path) -> None:
    spec = tmp_path / "net.yaml"
    spec.write_text("name: net\ntask: probe\nparams: {work_ms: 400}\n"
                    "grid: {label: [a, b, c, d]}\nseeds: 30\nblock_size: 1\n")
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    log = tmp_path / "stderr.txt"
    with open(log, "w") as err:
        driver = subprocess.Popen([SGSWEEP, "run", str(spec), "--out", str(tmp_path / "out"),
                                   "--num-cpus", "2", "--tracking-uri", "none", "--no-report"],
                                  stdout=subprocess.DEVNULL, stderr=err, env=env)
    seen: dict[tuple[str, str], str] = {}  # (address, role) -> a sample ss line
    polls_while_running = 0
    try:
        deadline = time.monotonic() + 600
        while driver.poll() is None and time.monotonic() < deadline:
            procs = tree(driver.pid)
            if any(role(pid, a, driver.pid) == "core worker (gRPC)"
                   for pid, a in procs.items()):
                polls_while_running += 1
            lines = subprocess.run(["ss", "-ltnupH"], capture_output=True, text=True).stdout
            for line in lines.splitlines():
                pids = {int(p) for p in re.findall(r"pid=(\d+)", line)} & set(procs)
                for pid in pids:
                    seen[(line.split()[4], role(pid, procs[pid], driver.pid))] = line
            time.sleep(0.5)
        assert driver.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    print("listening:", *sorted(f"{addr} {who}" for addr, who in seen), sep="\n  ")
    assert polls_while_running >= 3, "the run ended before its workers could be observed"
    beyond = sorted(f"{addr} {who}" for addr, who in seen if not LOOPBACK.match(addr))
    assert beyond == [], beyond
    roles = {who for _, who in seen}
    # ss did see the run: its GCS, raylet, workers, and the agent serving metrics
    assert {"gcs_server (gRPC)", "raylet (gRPC)", "core worker (gRPC)",
            "dashboard agent"} <= roles, seen
