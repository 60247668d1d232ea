"""`schedule.unfit` against a real Ray cluster (a one-CPU head started with `ray start`).

Run by tests/test_spec.py inside `unshare --net --pid --fork --mount-proc`, like
two_node_sweep.py: loopback only, and every Ray process ends with this script.

    python tests/unfit_on_cluster.py   -> prints a JSON summary on its last line
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time

from two_node_sweep import free_ports, ray_start


def main() -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    os.environ.update(env)
    temp = tempfile.mkdtemp(prefix="sgu", dir="/tmp")
    head_port, head_nm = free_ports(2)
    ray_start(["--head", f"--port={head_port}", "--include-dashboard=false",
               f"--temp-dir={temp}", f"--node-manager-port={head_nm}",
               f"--ray-client-server-port={free_ports(1)[0]}"], env)

    from orchestrator import schedule
    from orchestrator.spec import Resources

    address = f"127.0.0.1:{head_port}"
    waiting: list[str] = []
    started = time.monotonic()
    too_big = schedule.unfit(Resources(num_cpus=4), address, None, None, wait_s=4,
                             progress=waiting.append)
    waited = time.monotonic() - started
    fits = schedule.unfit(Resources(num_cpus=1), address, None, None, wait_s=4)
    print(json.dumps({"too_big": too_big, "waited_s": waited, "waiting": waiting,
                      "fits": fits}))


if __name__ == "__main__":
    main()
