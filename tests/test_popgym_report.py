"""E3 report: figures and tables from a tiny sweep's real results."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from analysis import reports
from tasks.popgym_task import PopgymConfig, run_block
from tests.result_frames import run_frames

torch.set_num_threads(1)
SGSWEEP = shutil.which("sgsweep", path=str(Path(sys.executable).parent)) or "sgsweep"
TINY = dict(neurons=12, dim=3, parents=3, input_neurons=4, slots=2, hidden=16, num_envs=4,
            batches=6, length=10, env="explore", grad_every=6, grad_batches=2,
            ref_batches=2)


def frames(variants: list[dict], seeds=(0, 1)):
    configs = {f"{v}": PopgymConfig(**{**TINY, **v}) for v in variants}
    return run_frames(run_block, configs, seeds)


def test_report_draws_success_lambda_lr_and_gradient_quality(tmp_path):
    variants = [{"model": m, "learner": r, "lr": lr}
                for m, r in (("gru", "backprop"), ("sparsenet", "sgprop"))
                for lr in (1e-3, 4e-3)]
    trials, metrics = frames(variants)
    files = reports.write("popgym", trials, metrics, list(PopgymConfig.__dataclass_fields__),
                          tmp_path)
    names = {f.name for f in files}
    assert {"e3_success.csv", "success_vs_env_steps.png", "lambda_stats.png",
            "return_mean_vs_env_steps.png",
            "success_last5_vs_lr.png", "success_auc_vs_lr.png", "e3_grad_quality.csv",
            "grad_quality.png"} <= names
    success = pd.read_csv(tmp_path / "e3_success.csv")
    assert set(success.method) == {"GRU", "SparseNet sgprop"}
    assert (success.seeds == 2).all() and len(success) == 4
    grads = pd.read_csv(tmp_path / "e3_grad_quality.csv")
    assert set(grads.group) == {"all", "recurrent"}
    sg = grads[grads.method == "SparseNet sgprop"]
    assert sg.ratio_bp_mix.notna().all() and sg.cos_sg.notna().all()
    assert grads[grads.method == "GRU"].rel_mse_bp.notna().all()


def test_report_keeps_varied_sg_learning_rates_apart(tmp_path):
    variants = [{"learner": "sgprop", "sg_lr": lr} for lr in (1e-5, 1e-3)]
    trials, metrics = frames(variants, seeds=(0,))
    reports.write("popgym", trials, metrics, list(PopgymConfig.__dataclass_fields__), tmp_path)
    grads = pd.read_csv(tmp_path / "e3_grad_quality.csv")
    assert set(grads.method) == {"SparseNet sgprop, SG lr 1e-05",
                                 "SparseNet sgprop, SG lr 0.001"}


@pytest.mark.slow
def test_tiny_popgym_sweep_through_sgsweep_run_and_report(tmp_path: Path) -> None:
    spec = tmp_path / "e3-tiny.yaml"
    spec.write_text(
        "name: e3-tiny\ntask: popgym\n"
        "params: {env: escape, batches: 4, num_envs: 4, length: 12, neurons: 12, dim: 3,"
        " parents: 3, input_neurons: 4, slots: 2, hidden: 16, grad_every: 4,"
        " grad_batches: 2, ref_batches: 2}\n"
        "grid: {lr: [1.0e-3, 4.0e-3]}\n"
        "variants: [{model: gru}, {model: sparsenet, learner: sgprop}]\nseeds: 2\n")
    out = tmp_path / "out"
    result = subprocess.run([SGSWEEP, "run", str(spec), "--out", str(out), "--num-cpus", "2"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "8 ok, 0 failed" in result.stdout
    report = out / "report" / "e3-tiny"
    for name in ("e3_success.md", "success_vs_env_steps.png", "success_auc_vs_lr.png",
                 "lambda_stats.png", "e3_grad_quality.csv"):
        assert (report / name).stat().st_size > 0, name
