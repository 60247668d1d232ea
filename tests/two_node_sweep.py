"""A sweep on a real two-node Ray cluster whose second node dies mid-sweep.

Run by tests/test_reliability.py inside `unshare --net --pid --fork --mount-proc`: the
network namespace has only loopback, so Ray binds 127.0.0.1 and nothing leaves the
machine; the PID namespace ends every Ray process when this script exits.

    python tests/two_node_sweep.py OUT_DIR [MAX_RETRIES]
        -> prints a JSON summary on its last line (Ray's retries of a chunk: 5 unless given)
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.dataset as ds

BIN = Path(sys.executable).parent
SPEC = """\
name: two-node
task: probe
params: {work_ms: 400, steps: 3}
grid: {label: [a, b, c, d, e, f, g, h, i, j]}
seeds: 6
block_size: 1
"""


_handed_out: set[int] = set()


def free_ports(n: int) -> list[int]:
    """`n` ports free now and not handed out before, picked above Ray's worker ports
    (10002-19999) and below the kernel's ephemeral range: a port from that range (what
    bind(0) returns) can become the local end of an outgoing connection before Ray binds it,
    and `ray start` then fails now and then."""
    ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    candidates = [p for p in range(20000, max(ephemeral_low, 30000)) if p not in _handed_out]
    random.shuffle(candidates)
    ports: list[int] = []
    for port in candidates:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == n:
            break
    _handed_out.update(ports)
    return ports


def ray_start(args: list[str], env: dict[str, str]) -> None:
    ports = free_ports(5)
    command = [str(BIN / "ray"), "start", "--node-ip-address=127.0.0.1", "--num-cpus=1",
               "--disable-usage-stats", f"--dashboard-agent-listen-port={ports[0]}",
               f"--dashboard-agent-grpc-port={ports[1]}", f"--metrics-export-port={ports[2]}",
               f"--runtime-env-agent-port={ports[3]}", f"--object-manager-port={ports[4]}",
               *args]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({result.returncode}):\n"
                 f"{(result.stdout + result.stderr)[-4000:]}")


def descendants(pid: int) -> list[int]:
    """Every process under `pid` (Linux's /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def command_of(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def nodes_seen(out: Path) -> set[str]:
    try:
        return set(ds.dataset(out / "trials").to_table(columns=["node"]).column("node")
                   .to_pylist())
    except (FileNotFoundError, OSError, ValueError):
        return set()


def main() -> None:
    out = Path(sys.argv[1])
    max_retries = sys.argv[2] if len(sys.argv) > 2 else "5"
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    temp = tempfile.mkdtemp(prefix="sgs", dir="/tmp")
    head_port, head_nm, second_nm = free_ports(3)
    ray_start(["--head", f"--port={head_port}", "--include-dashboard=false",
               f"--temp-dir={temp}", f"--node-manager-port={head_nm}",
               f"--ray-client-server-port={free_ports(1)[0]}"], env)
    ray_start([f"--address=127.0.0.1:{head_port}", f"--node-manager-port={second_nm}"], env)

    spec = Path(temp) / "two-node.yaml"
    spec.write_text(SPEC)
    driver = subprocess.Popen(
        [str(BIN / "sgsweep"), "run", str(spec), "--out", str(out), "--address",
         f"127.0.0.1:{head_port}", "--tracking-uri", "none", "--no-report",
         "--max-retries", max_retries],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.monotonic() + 180
    before_kill: set[str] = set()
    while time.monotonic() < deadline and driver.poll() is None:
        before_kill = nodes_seen(out)
        if len(before_kill) >= 2:
            break
        time.sleep(0.3)
    # Kill the second node as a lost machine dies: its raylet and every process under it
    # (workers outlive a raylet killed alone and finish the tasks they hold), once one of
    # its workers holds a chunk (under load the node may otherwise be idle at the kill).
    raylet = subprocess.run(["pgrep", "-f", f"node_manager_port={second_nm}"],
                            capture_output=True, text=True).stdout.split()
    while time.monotonic() < deadline and driver.poll() is None and raylet and not any(
            command_of(child).startswith(b"ray::_run_chunk")
            for child in descendants(int(raylet[0]))):
        time.sleep(0.1)
    node = [int(pid) for pid in raylet]
    node += [child for pid in node for child in descendants(pid)]
    for pid in node:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
    killed_while_running = driver.poll() is None and bool(raylet)
    output, _ = driver.communicate(timeout=400)
    table = ds.dataset(out / "trials").to_table().to_pandas()
    print(json.dumps({
        "returncode": driver.returncode, "killed_while_running": killed_while_running,
        "nodes_before_kill": sorted(before_kill), "rows": len(table),
        "unique": int(table.trial_id.nunique()), "ok": int((table.status == "ok").sum()),
        "nodes": sorted(set(table.node)), "output_tail": output[-1500:],
        # What the run said about lost chunks ("  a Ray node left ...", "  a worker died ...").
        "events": [line.strip() for line in output.splitlines() if line.startswith("  a ")],
    }))


if __name__ == "__main__":
    main()
