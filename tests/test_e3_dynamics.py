"""E3 training-dynamics sweeps: gradient checkpoints at listed batches, the shipped sweep
files, the report's comparisons with SparseNet BPTT, and each file end to end (slow)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from analysis import reports
from analysis.stats import bootstrap_mean, paired_bootstrap_diff, paired_bootstrap_diff_band
from orchestrator.spec import SpecError, load_spec, load_yaml, parse_spec
from tasks import ConfigError
from tasks.popgym_task import PopgymConfig, PopgymRun, run_block
from tests.result_frames import run_frames

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
SWEEPS = [ROOT / "sweeps" / f"e3-{env}-dynamics.yaml" for env in ("escape", "explore")]
SGSWEEP = shutil.which("sgsweep", path=str(Path(sys.executable).parent)) or "sgsweep"
TINY = dict(neurons=12, dim=3, parents=3, input_neurons=4, slots=2, hidden=16, num_envs=4,
            length=10, env="explore", grad_batches=2, ref_batches=2)
PAPER_LR = {("gru", "backprop"): 5e-4, ("lstm", "backprop"): 1e-3,
            ("sparsenet", "backprop"): 2e-3, ("sparsenet", "sgprop"): 2e-3}


def checkpoint_steps(**change) -> set[int]:
    cfg = PopgymConfig(**{**TINY, "learner": "sgprop", **change})
    log = PopgymRun(cfg, 0).run()
    return {s for n, s in zip(log.names, log.steps, strict=True)
            if n == "grad_mse/mix/recurrent"}


def test_gradient_checkpoints_follow_grad_at_and_grad_every_together() -> None:
    assert checkpoint_steps(batches=4, grad_at=(1, 3)) == {1, 3}
    assert checkpoint_steps(batches=4, grad_at=(3,), grad_every=2) == {2, 3, 4}
    assert checkpoint_steps(batches=3) == set()


@pytest.mark.parametrize("grad_at", [(0,), (3, 2), (2, 2), (301,)])
def test_bad_grad_at_is_one_line_error_naming_the_field(grad_at: tuple) -> None:
    with pytest.raises(ConfigError) as err:
        PopgymConfig(grad_at=grad_at).validate()
    assert err.value.field == "grad_at" and "\n" not in str(err.value)


def test_grad_at_from_yaml_is_checked_by_the_sweep_loader() -> None:
    raw = {"name": "x", "task": "popgym", "seeds": 1,
           "params": {"batches": 10, "grad_at": [5, 10]}}
    assert parse_spec(raw).configs[0].grad_at == (5, 10)
    with pytest.raises(SpecError, match="grad_at"):
        parse_spec({**raw, "params": {"batches": 10, "grad_at": [5, 20]}})


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_dynamics_sweeps_are_the_papers_settings(path: Path) -> None:
    spec = load_spec(path)
    assert spec.num_trials == 48 and len(spec.seeds) == 6
    env = path.stem.split("-")[1]
    seen = set()
    for cfg in spec.configs:
        assert cfg.env == env and cfg.batches == 300 and cfg.num_envs in (20, 40)
        assert cfg.lr == PAPER_LR[(cfg.model, cfg.learner)]
        sgprop = cfg.learner == "sgprop"
        assert cfg.grad_at == ((100, 200, 300) if sgprop else ())
        assert cfg.grad_every == 0 and (not sgprop or (cfg.adaptive and cfg.lam == 1.0))
        # everything else is the task's default, which is the reference's
        fixed = {"env", "model", "learner", "lr", "num_envs", "batches", "grad_at",
                 "adaptive", "lam", "grad_batches", "ref_batches"}
        for name, field in PopgymConfig.__dataclass_fields__.items():
            if name not in fixed:
                assert getattr(cfg, name) == field.default, name
        seen.add((cfg.model, cfg.learner, cfg.num_envs))
    assert len(seen) == 8


def test_report_knows_the_task_episode_lengths_without_importing_torch() -> None:
    from analysis import popgym
    from tasks import popgym_task
    assert popgym.LENGTH == popgym_task.LENGTH
    code = "import sys, analysis.popgym; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_band_is_the_one_point_bootstrap_at_every_point() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    diff, low, high = paired_bootstrap_diff_band(a, b)
    for j in range(5):
        assert (diff[j], low[j], high[j]) == pytest.approx(paired_bootstrap_diff(a[:, j], b[:, j]))
    mean, lo, hi = bootstrap_mean(a[:, 0])
    assert mean == pytest.approx(a[:, 0].mean()) and lo < mean < hi
    with pytest.raises(ValueError):
        paired_bootstrap_diff_band(a[:, 0], b[:, 0])


def test_report_compares_every_method_with_bptt_and_tracks_gradient_checkpoints(tmp_path):
    small = {**TINY, "batches": 6}
    variants = {
        "gru": {"model": "gru"},
        "bptt": {"model": "sparsenet"},
        "sgprop": {"model": "sparsenet", "learner": "sgprop", "grad_at": (2, 4, 6)},
    }
    configs = {name: PopgymConfig(**{**small, **v}) for name, v in variants.items()}
    trials, metrics = run_frames(run_block, configs, seeds=(0, 1, 2))
    files = reports.write("popgym", trials, metrics, list(PopgymConfig.__dataclass_fields__),
                          tmp_path)
    names = {f.name for f in files}
    assert {"e3_vs_bptt.csv", "e3_vs_bptt.md", "success_diff_vs_env_steps.png",
            "e3_success_diff.csv", "e3_return_mean_diff.md",
            "return_mean_diff_vs_env_steps.png", "lambda_stats.png",
            "e3_grad_quality.csv", "grad_quality.png"} <= names
    versus = pd.read_csv(tmp_path / "e3_vs_bptt.csv").set_index("method")
    assert set(versus.index) == {"GRU", "SparseNet sgprop"} and (versus.seeds == 3).all()
    # the difference is paired by seed: recompute it from the per-trial summaries
    final = reports.final_metrics(trials, metrics)
    sg = final[final.learner == "sgprop"].set_index("seed").success_auc
    bp = final[(final.learner == "backprop") & (final.model == "sparsenet")]
    expected = paired_bootstrap_diff(sg.sort_index().to_numpy(),
                                     bp.set_index("seed").success_auc.sort_index().to_numpy())
    row = versus.loc["SparseNet sgprop"]
    assert (row.success_auc_diff, row.success_auc_diff_low, row.success_auc_diff_high) == \
        pytest.approx(expected)
    # the curves' difference is paired by seed and batch (10-batch moving means)
    diffs = pd.read_csv(tmp_path / "e3_return_mean_diff.csv")
    gru = diffs[diffs.method == "GRU"].set_index("step")
    assert list(gru.index) == list(range(1, 7)) and (gru.x == gru.index * 4 * 10).all()
    curve = metrics[metrics.metric == "return_mean"].merge(trials[["trial_id", "seed"]])
    smoothed = {p: curve[curve.trial_id.str.startswith(p)].pivot(
        index="seed", columns="step", values="value").T.rolling(10, center=True,
                                                               min_periods=1).mean().T
        for p in ("gru", "bptt")}
    expected = paired_bootstrap_diff(smoothed["gru"][3].to_numpy(),
                                     smoothed["bptt"][3].to_numpy())
    assert (gru.loc[3, "diff"], gru.loc[3, "low"], gru.loc[3, "high"]) == \
        pytest.approx(expected)
    success = pd.read_csv(tmp_path / "e3_success.csv")
    assert (success.success_last5_low <= success.success_last5_mean).all()
    assert (success.success_auc_mean <= success.success_auc_high).all()
    grads = pd.read_csv(tmp_path / "e3_grad_quality.csv")
    recurrent = grads[grads.group == "recurrent"]
    assert list(recurrent.batch) == [2, 4, 6] and set(recurrent.method) == {"SparseNet sgprop"}
    assert recurrent.ratio_bp_mix.notna().all() and recurrent.ratio_bp_sg_low.notna().all()


def shrunk(path: Path, folder: Path) -> Path:
    """The shipped sweep file at 3 batches of 2 episodes (one num_envs), 2 seeds, tiny
    gradient checkpoints (after each batch): 8 trials, every other value the file's."""
    raw = load_yaml(path)
    raw["name"] = raw["name"] + "-tiny"
    full, raw["params"]["batches"] = raw["params"]["batches"], 3
    raw["grid"]["num_envs"] = [2]
    raw["seeds"] = 2
    for variant in raw["variants"]:
        if "grad_at" in variant:
            variant["grad_at"] = [b * 3 // full for b in variant["grad_at"]]
            variant["grad_batches"], variant["ref_batches"] = 2, 2
    out = folder / path.name
    out.write_text(yaml.safe_dump(raw))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_dynamics_sweep_file_runs_and_reports_end_to_end(path: Path, tmp_path: Path) -> None:
    spec = shrunk(path, tmp_path)
    out = tmp_path / "out"
    result = subprocess.run([SGSWEEP, "run", str(spec), "--out", str(out), "--num-cpus", "2"],
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "8 ok, 0 failed" in result.stdout
    report = out / "report" / f"{path.stem}-tiny"
    for name in ("e3_success.md", "e3_vs_bptt.md", "success_vs_env_steps.png",
                 "return_mean_vs_env_steps.png", "success_diff_vs_env_steps.png",
                 "return_mean_diff_vs_env_steps.png", "lambda_stats.png",
                 "e3_grad_quality.md", "grad_quality.png"):
        assert (report / name).stat().st_size > 0, name
    grads = pd.read_csv(report / "e3_grad_quality.csv")
    assert sorted(grads.batch.unique()) == [1, 2, 3]
    versus = pd.read_csv(report / "e3_vs_bptt.csv")
    assert set(versus.method) == {"GRU", "LSTM", "SparseNet sgprop"}
