"""benchmarks/gpu_check.py runs end to end without a GPU (`--device cpu --small`): every
check, λ = 1 equal to backprop, and the shared-resources `sgsweep run`, in one table; and
it says where a task really computed when that is not the device asked for."""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(900)
def test_gpu_check_script_passes_every_check_on_cpu_at_small_sizes() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu",
         "--small", "--rounds", "1", "--seeds", "2", "--threads", "1"],
        capture_output=True, text=True, timeout=850, cwd=ROOT)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    rows = {line.split("  ")[0]: line for line in done.stdout.splitlines()}
    for check in ("E2 SparseNet backprop: training step", "E2 MLP backprop: training step",
                  "E3 GRU BPTT: training step (rollout + update)",
                  "E3 SparseNet sgprop (adaptive λ): training step (rollout + update)",
                  "E2 sgprop λ=1 vs backprop: gradients", "E3 sgprop λ=1 vs BPTT: gradients",
                  "E2 SparseNet sgprop (adaptive λ): 2 seeds batched vs sequential",
                  "sgsweep run, 4 trials x {num_cpus: 0.5}"):
        assert check in rows, done.stdout
        assert rows[check].rstrip().endswith("ok"), rows[check]
    assert "4/4 ok, 4 at once" in rows["sgsweep run, 4 trials x {num_cpus: 0.5}"]


def test_gpu_check_without_cuda_says_how_to_run_it_instead() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py")],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 2
    assert "--device cpu --small" in done.stderr and "Traceback" not in done.stderr


def test_gpu_check_says_e3_ran_on_cpu_when_given_cuda() -> None:
    # PopgymRun moves itself to the CPU whatever device it gets, so asking for cuda works
    # here without a GPU, and the table must say where the steps really ran.
    spec = importlib.util.spec_from_file_location("gpu_check",
                                                  ROOT / "benchmarks" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    try:
        rows = gpu_check.e3_steps(argparse.Namespace(device="cuda", small=True, rounds=1))
    except (AssertionError, RuntimeError) as e:  # torch: no CUDA here
        pytest.skip(f"PopgymRun now uses the device it is given ({e}): this check "
                    "needs a GPU, and gpu_check's E3 verdicts and docs/clusters.md need "
                    "updating")
    assert len(rows) == len(gpu_check.E3_CASES)
    for check, device, _, verdict in rows:
        assert device == "cpu", check
        assert verdict.startswith("ran on cpu, not cuda: PopgymRun"), verdict
