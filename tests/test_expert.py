"""E1: exact gradient, estimator statistics against closed forms, reproducibility."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from tasks import expert
from tasks.expert import ExpertConfig
from tasks.expert_reference import squared_errors


def _problem(cfg: ExpertConfig, seed: int = 0) -> expert.ExpertProblem:
    return expert.sample_problem(cfg, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("leak", [0.0, 0.7])
def test_exact_gradient_matches_central_finite_differences(leak: float) -> None:
    cfg = ExpertConfig(d=3, k=2, m=3, leak=leak)
    problem = _problem(cfg)
    theta = torch.zeros(2**cfg.d, cfg.d, dtype=torch.float64)
    eps = 1e-6
    fd = torch.zeros_like(theta)
    for r in range(theta.shape[0]):
        for i in range(cfg.d):
            step = torch.zeros_like(theta)
            step[r, i] = eps
            fd[r, i] = (expert.loss(problem, theta + step) - expert.loss(problem, theta - step)) / (
                2 * eps
            )
    exact = expert.exact_gradient(problem)
    assert exact.abs().max() > 1e-3  # not trivially zero
    torch.testing.assert_close(exact, fd, rtol=1e-6, atol=1e-9)


def test_clean_feedback_is_output_minus_target() -> None:
    problem = _problem(ExpertConfig(d=5, k=3, leak=0.4))
    torch.testing.assert_close(problem.clean, expert.outputs(problem) - problem.targets)


def _mc_gradients(cfg: ExpertConfig, draws: int, seed: int = 1):
    """BP and SG parameter-gradient estimates for `draws` noise draws on one problem."""
    problem = _problem(cfg)
    gen = torch.Generator().manual_seed(seed)
    observed = torch.stack([expert.sample_feedback(problem, cfg, gen) for _ in range(draws)])
    predicted = torch.stack([expert.synthetic_feedback(problem, o) for o in observed])
    bp = expert.parameter_gradient(problem, observed)
    sg = expert.parameter_gradient(problem, predicted)
    return problem, bp, sg


@pytest.mark.parametrize("case", ["noisy", "activation", "partial"])
def test_backprop_estimate_is_unbiased(case: str) -> None:
    cfg = ExpertConfig(d=4, k=2, case=case, n=2)
    problem, bp, _ = _mc_gradients(cfg, draws=4000)
    truth = expert.exact_gradient(problem)
    se = bp.std(0) / math.sqrt(bp.shape[0])
    z = (bp.mean(0) - truth) / se.clamp(min=1e-15)
    # 64 coordinates: all within 4.5 SE (a false alarm has probability < 1e-3).
    assert z.abs().max() < 4.5, z.abs().max()


@pytest.mark.parametrize(("d", "k", "n", "sigma"), [(5, 2, 1, 0.5), (6, 3, 2, 1.0)])
def test_noisy_case_mse_matches_closed_form(d: int, k: int, n: int, sigma: float) -> None:
    """E|ĝ_BP − g|² = (σ²/n)/R² Σ_r Σ_j |J_rᵀ a_j|², and SG divides it by 2^(d−k)."""
    cfg = ExpertConfig(d=d, k=k, n=n, sigma=sigma)
    problem, bp, sg = _mc_gradients(cfg, draws=3000)
    truth = expert.exact_gradient(problem)
    num_parts = 2**d
    per_expert = torch.einsum("rij,mi->rmj", problem.jacobians, problem.readout)
    closed_bp = sigma**2 / n / num_parts**2 * per_expert.pow(2).sum()
    closed_sg = closed_bp / 2 ** (d - k)
    for estimate, closed in ((bp, closed_bp), (sg, closed_sg)):
        sq = (estimate - truth).pow(2).sum((-2, -1))
        mean, se = sq.mean(), sq.std() / math.sqrt(sq.numel())
        assert abs(mean - closed) < 4 * se, (float(mean), float(closed), float(se))


def test_ratio_tracks_two_to_the_d_minus_k_on_a_small_grid() -> None:
    for d, k in [(4, 2), (6, 2), (7, 4)]:
        cfg = ExpertConfig(d=d, k=k, case="noisy")
        logs = expert.run_block(cfg, range(60))
        bp = sum(log.final()["sqerr_bp"] for log in logs)
        sg = sum(log.final()["sqerr_sg"] for log in logs)
        assert bp / sg == pytest.approx(2 ** (d - k), rel=0.25), (d, k, bp / sg)


@pytest.mark.parametrize("case", ["noisy", "activation", "partial"])
def test_k_equal_d_makes_sg_identical_to_bp(case: str) -> None:
    cfg = ExpertConfig(d=4, k=4, case=case, lams=(0.5,))
    for seed in range(3):
        final = expert.run_trial(cfg, seed).final()
        assert final["sqerr_sg"] == final["sqerr_bp"]
        assert final["sqerr_lam_0.5"] == pytest.approx(final["sqerr_bp"], rel=1e-12)


def test_sg_table_pools_feedback_by_local_key_hand_checked() -> None:
    cfg = ExpertConfig(d=2, k=1, m=1)
    problem = _problem(cfg)
    # Partitions r = 0..3 have bits (r&1, r>>1); the expert reads one coordinate c.
    c = int(problem.coords[0, 0])
    feedback = torch.tensor([[1.0], [2.0], [3.0], [4.0]], dtype=torch.float64)
    predicted = expert.synthetic_feedback(problem, feedback)
    if c == 0:  # key = bit 0: partitions {0, 2} and {1, 3}
        expected = torch.tensor([[2.0], [3.0], [2.0], [3.0]], dtype=torch.float64)
    else:  # key = bit 1: partitions {0, 1} and {2, 3}
        expected = torch.tensor([[1.5], [1.5], [3.5], [3.5]], dtype=torch.float64)
    torch.testing.assert_close(predicted, expected)


def test_leak_biases_sg_but_not_bp() -> None:
    noiseless = ExpertConfig(d=5, k=2, sigma=0.0)
    assert expert.run_trial(noiseless, 0).final()["sqerr_sg"] < 1e-25  # SG exact: Condition B
    leaky = replace(noiseless, leak=0.5)
    final = expert.run_trial(leaky, 0).final()
    assert final["sqerr_bp"] == 0.0
    assert final["sqerr_sg"] > 1e-4 * final["truth_sqnorm"]

    cfg = replace(leaky, sigma=0.5)
    problem, bp, sg = _mc_gradients(cfg, draws=2000)
    truth = expert.exact_gradient(problem)
    bias_sg = (sg.mean(0) - truth).pow(2).sum()
    bias_bp = (bp.mean(0) - truth).pow(2).sum()
    noise_floor = bp.var(0).sum() / bp.shape[0]  # expected |mean − truth|² if unbiased
    assert bias_bp < 3 * noise_floor
    assert bias_sg > 20 * noise_floor


def test_mixture_metric_matches_direct_mixture_and_edges() -> None:
    cfg = ExpertConfig(d=6, k=2, case="partial", lams=(0.0, 0.3, 1.0))
    final = expert.run_trial(cfg, 5).final()
    assert final["sqerr_lam_1"] == final["sqerr_bp"]
    assert final["sqerr_lam_0"] == final["sqerr_sg"]
    problem = _problem(cfg, 5)
    gen = torch.Generator().manual_seed(5)
    expert.sample_problem(cfg, gen)  # advance the stream exactly as run_trial does
    observed = expert.sample_feedback(problem, cfg, gen)
    mixed = 0.3 * observed + 0.7 * expert.synthetic_feedback(problem, observed)
    err = expert.parameter_gradient(problem, mixed) - expert.exact_gradient(problem)
    assert final["sqerr_lam_0.3"] == pytest.approx(float(err.pow(2).sum()), rel=1e-12)


@pytest.mark.pinned
@pytest.mark.parametrize("case", ["noisy", "activation", "partial"])
def test_torch_trial_agrees_with_plain_numpy_reference(case: str) -> None:
    cfg = ExpertConfig(d=5, k=3, case=case, leak=0.2, lams=(0.5,))
    gen = torch.Generator().manual_seed(3)
    problem = expert.sample_problem(cfg, gen)
    observed = expert.sample_feedback(problem, cfg, gen)
    reference = squared_errors(
        problem.states.numpy(), problem.jacobians.numpy(), problem.coords.numpy(),
        problem.a.numpy(), problem.clean.numpy(), observed.numpy(), cfg.lams,
    )
    final = expert.run_trial(cfg, 3).final()
    for name, value in reference.items():
        assert final[name] == pytest.approx(value, rel=1e-10), name


def test_seeds_reproducible_bit_for_bit_alone_or_in_a_block() -> None:
    cfg = ExpertConfig(d=6, k=2, case="activation", n=3, lams=(0.25,))
    block = expert.run_block(cfg, [4, 9, 11])
    alone = [expert.run_trial(cfg, s) for s in (4, 9, 11)]
    again = expert.run_block(cfg, [4, 9, 11])
    for a, b, c in zip(block, alone, again, strict=True):
        assert a.values == b.values == c.values
        assert a.names == b.names
    assert block[0].values != block[1].values


def test_problem_is_shared_across_cases_for_paired_comparisons() -> None:
    a = _problem(ExpertConfig(d=5, k=2, case="noisy"), 7)
    b = _problem(ExpertConfig(d=5, k=2, case="partial", n=4), 7)
    assert torch.equal(a.jacobians, b.jacobians) and torch.equal(a.clean, b.clean)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"d": 0, "k": 1}, "d"), ({"d": 3, "k": 4}, "k"), ({"d": 3, "k": 3, "leak": 0.1}, "leak"),
     ({"d": 3, "k": 2, "p": 0.0}, "p"), ({"d": 3, "k": 2, "lams": (1.5,)}, "lams"),
     ({"d": 3, "k": 2, "n": 0}, "n"), ({"d": 17, "k": 2}, "d")],
)
def test_invalid_configs_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(expert.ConfigError) as info:
        ExpertConfig(**kwargs).validate()
    assert info.value.field == field


def test_results_do_not_depend_on_how_seeds_are_batched(monkeypatch) -> None:
    cfg = ExpertConfig(d=5, k=2, case="noisy", lams=(0.5,))
    whole = expert.run_block(cfg, list(range(7)))
    monkeypatch.setattr(expert, "MAX_BLOCK_ELEMENTS", 3 * 2**5 * 25)  # batches of 3 seeds
    split = expert.run_block(cfg, list(range(7)))
    assert [log.values for log in whole] == [log.values for log in split]
