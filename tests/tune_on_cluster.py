"""`sgsweep tune --address` against a real Ray cluster (a head node started with `ray start`).

Run by tests/test_tune.py inside `unshare --net --pid --fork --mount-proc`, like
two_node_sweep.py: loopback only, and every Ray process ends with this script.

    python tests/tune_on_cluster.py OUT_DIR   -> prints a JSON summary on its last line
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from two_node_sweep import BIN, free_ports, ray_start

SPEC = """\
name: cluster-tune
task: expert
params: {d: 5, k: 2, leak: 0.3}
search:
  lam: {low: 0.0, high: 1.0}
objective: {metric: sqerr_lam}
n_trials: 6
seeds: 4
rung_size: 2
parallelism: 2
sampler: {type: random, seed: 0}
"""


def main() -> None:
    out = Path(sys.argv[1])
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    temp = tempfile.mkdtemp(prefix="sgt", dir="/tmp")
    head_port, head_nm = free_ports(2)
    ray_start(["--head", f"--port={head_port}", "--include-dashboard=false",
               f"--temp-dir={temp}", f"--node-manager-port={head_nm}",
               f"--ray-client-server-port={free_ports(1)[0]}"], env)
    spec = Path(temp) / "cluster-tune.yaml"
    spec.write_text(SPEC)
    result = subprocess.run(
        [str(BIN / "sgsweep"), "tune", str(spec), "--out", str(out), "--address",
         f"127.0.0.1:{head_port}", "--tracking-uri", "none", "--no-report"],
        env=env, capture_output=True, text=True, timeout=300)
    # The best parameters, re-evaluated on fresh seeds by `sgsweep run` on the same cluster.
    best = subprocess.run(
        [str(BIN / "sgsweep"), "run", str(out / "best.yaml"), "--out", str(out / "best"),
         "--address", f"127.0.0.1:{head_port}", "--tracking-uri", "none", "--no-report"],
        env=env, capture_output=True, text=True, timeout=300)
    # The cluster must have outlived the driver (tune only shuts down a Ray it started).
    alive = subprocess.run([str(BIN / "ray"), "status", f"--address=127.0.0.1:{head_port}"],
                           env=env, capture_output=True, text=True, timeout=60).returncode
    print(json.dumps({"returncode": result.returncode, "cluster_alive_after": alive == 0,
                      "stdout": result.stdout[-1500:], "stderr": result.stderr[-1500:],
                      "best_returncode": best.returncode, "best_stdout": best.stdout[-1500:],
                      "best_stderr": best.stderr[-1500:]}))


if __name__ == "__main__":
    main()
