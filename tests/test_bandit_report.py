"""E2 report: figures and tables from a tiny sweep's results."""

from __future__ import annotations

import pandas as pd
import pytest

from analysis import reports
from tasks.bandit import BanditConfig, run_block
from tests.result_frames import run_frames

TINY = dict(width=6, dim=2, fan_in=8, parents=2, slots=2, layers=2, steps=6, eval_points=2,
            batch_size=8, eval_size=60, mse_every=3, mse_batches=2)


def frames(variants: list[dict], p_flips: list[float], seeds=(0, 1)):
    configs = {f"{v}-{p}": BanditConfig(**{**TINY, **v, "p_flip": p})
               for v in variants for p in p_flips}
    return run_frames(run_block, configs, seeds)


def test_report_draws_reward_lambda_and_grad_mse_figures(tmp_path):
    variants = [{"learner": "sgprop"}, {"learner": "sgprop", "adaptive": False, "lam": 0.5}]
    trials, metrics = frames(variants, [0.0, 0.4])
    files = reports.write("bandit", trials, metrics, list(BanditConfig.__dataclass_fields__),
                          tmp_path)
    names = {f.name for f in files}
    assert {"e2_final_rewards.csv", "final_reward_vs_p_flip.png", "reward_curves.png",
            "lambda_traces.png", "e2_grad_mse.csv", "grad_mse_vs_pflip.png",
            "grad_mse_ratio_vs_pflip.png", "grad_mse_layers.png",
            "grad_mse_over_training.png"} <= names
    table = pd.read_csv(tmp_path / "e2_grad_mse.csv")
    assert set(table.group) >= {"l0", "l1", "head", "hidden", "all"}
    assert (table.ratio_bp_mix > 0).all()
    rewards = pd.read_csv(tmp_path / "e2_final_rewards.csv")
    assert set(rewards.method) == {"SparseNet sgprop adaptive λ", "SparseNet sgprop λ=0.5"}


def test_report_pairs_methods_with_backprop_and_tables_the_mechanism(tmp_path):
    variants = [{"learner": "sgprop"}, {"learner": "backprop"}]
    trials, metrics = frames(variants, [0.4], seeds=(0, 1, 2))
    files = reports.write("bandit", trials, metrics, list(BanditConfig.__dataclass_fields__),
                          tmp_path)
    assert {"reward_curves.png", "e2_mechanism.csv", "mechanism.png"} <= {f.name for f in files}
    rewards = pd.read_csv(tmp_path / "e2_final_rewards.csv").set_index("method")
    sg, bp = rewards.loc["SparseNet sgprop adaptive λ"], rewards.loc["SparseNet BP"]
    assert sg.diff_vs_bp == pytest.approx(sg.eval_reward_mean - bp.eval_reward_mean)
    assert sg.diff_vs_bp_low <= sg.diff_vs_bp <= sg.diff_vs_bp_high
    mechanism = pd.read_csv(tmp_path / "e2_mechanism.csv")
    assert set(mechanism.step) == {3, 6} and {"l0", "l1", "hidden", "all"} <= set(mechanism.group)
    sgprop = mechanism[mechanism.method == "SparseNet sgprop adaptive λ"]
    assert sgprop.ratio_bp_mix.notna().all() and (sgprop.update_cos.abs() <= 1).all()
    backprop = mechanism[mechanism.method == "SparseNet BP"]
    assert backprop.mse_bp.notna().all() and "ratio_bp_mix" not in backprop.dropna(axis=1)


def test_report_draws_final_reward_vs_learning_rate(tmp_path):
    variants = [{"learner": "backprop", "lr": lr, "mse_every": 0} for lr in (1e-3, 1e-2)]
    variants += [{"learner": "backprop", "model": "mlp", "mlp_width": 8, "lr": 1e-3,
                  "mse_every": 0}]
    trials, metrics = frames(variants, [0.4])
    files = reports.write("bandit", trials, metrics, list(BanditConfig.__dataclass_fields__),
                          tmp_path)
    assert "final_reward_vs_lr.png" in {f.name for f in files}


def test_importing_analysis_leaves_the_callers_matplotlib_backend_alone() -> None:
    import subprocess
    import sys

    code = ("import matplotlib; matplotlib.use('svg'); "
            "import analysis.reports, analysis.bandit, analysis.expert, analysis.popgym, "
            "analysis.tune; print(matplotlib.get_backend())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "svg"
