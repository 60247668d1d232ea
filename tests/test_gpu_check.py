"""benchmarks/gpu_check.py runs end to end without a GPU (`--device cpu --small`): every
check, λ = 1 equal to backprop, and the shared-resources `sgsweep run`, in one table; and
its E3 CPU-vs-GPU table runs on a machine without a GPU and says so."""

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


def test_gpu_check_e3_devices_table_runs_anywhere_and_says_when_there_is_no_gpu() -> None:
    import torch

    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--e3-devices", "--small",
         "--rounds", "1", "--threads", "1"],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    rows = {line.split("  ")[0]: line.split() for line in done.stdout.splitlines()}
    for case in ("E3 GRU BPTT", "E3 SparseNet BPTT", "E3 SparseNet sgprop (adaptive λ)"):
        assert case in rows, done.stdout
        cpu_ms = rows[case][len(case.split())]
        assert float(cpu_ms) > 0
        if not torch.cuda.is_available():
            assert rows[case][-2:] == ["-", "-"], rows[case]
    if not torch.cuda.is_available():
        assert "no CUDA GPU is available here" in done.stdout


def test_gpu_check_e3_runs_on_the_device_asked() -> None:
    # PopgymRun computes where it is asked, so the E3 rows' device is the one asked for.
    spec = importlib.util.spec_from_file_location("gpu_check",
                                                  ROOT / "benchmarks" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    rows = gpu_check.e3_steps(argparse.Namespace(device="cpu", small=True, rounds=1))
    assert len(rows) == len(gpu_check.E3_CASES)
    for check, device, _, verdict in rows:
        assert device == "cpu" and verdict == "ok", (check, verdict)
