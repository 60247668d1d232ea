"""Feedback rules: exact edges of the λ-mixture and the adaptive-λ estimator's optimum."""

from __future__ import annotations

import pytest
import torch

from learners.feedback import (
    adaptive_lambda,
    backprop,
    ema,
    lambda_mixture,
    mix,
    optimal_lambda,
    synthetic,
)
from learners.predictors import TablePredictor


def test_mixture_edges_are_exactly_the_pure_rules() -> None:
    g = torch.randn(7, 3, dtype=torch.float64)
    g_hat = torch.randn(7, 3, dtype=torch.float64)
    assert backprop().mix(g, g_hat) is g
    assert synthetic().mix(g, g_hat) is g_hat
    assert torch.equal(mix(torch.ones(3, dtype=torch.float64), g, g_hat), g)
    torch.testing.assert_close(lambda_mixture(0.25).mix(g, g_hat), 0.25 * g + 0.75 * g_hat)
    assert not backprop().uses_predictor and synthetic().uses_predictor
    assert adaptive_lambda().uses_predictor


def test_rule_parameters_are_checked() -> None:
    with pytest.raises(ValueError, match="lambda"):
        lambda_mixture(1.5)
    with pytest.raises(ValueError, match="momentum"):
        adaptive_lambda(0.9, 1.0)


def _estimated_mse(w: torch.Tensor, w_hat: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """The batch MSE estimate the optimal λ minimises, written independently:
    MSE(λ) = Var(w̄) + 2(1−λ)·Cov(w̄, ū) + (1−λ)²·(Var(ū) + bias²), per neuron."""
    batch = w.shape[0]
    u = w_hat - w
    u_c = u - u.mean(0)
    w_c = w - w.mean(0)
    var_u = (u_c * u_c).sum(-1).sum(0) / (batch * (batch - 1))
    cov = (w_c * u_c).sum(-1).sum(0) / (batch * (batch - 1))
    bias_sq = torch.clamp((u.mean(0) ** 2).sum(-1) - var_u, min=0)
    var_w = (w_c * w_c).sum(-1).sum(0) / (batch * (batch - 1))
    mu = 1 - lam
    return var_w + 2 * mu * cov + mu**2 * (var_u + bias_sq)


def test_optimal_lambda_minimises_the_estimated_mse_on_constructed_batches() -> None:
    gen = torch.Generator().manual_seed(0)
    batch, neurons, params = 32, 6, 4
    truth = torch.randn(neurons, params, generator=gen, dtype=torch.float64)
    w = truth + 2.0 * torch.randn(batch, neurons, params, generator=gen, dtype=torch.float64)
    # SG feedback: a bias per neuron that grows with the neuron index, little noise.
    bias = torch.linspace(0, 3, neurons, dtype=torch.float64)[:, None]
    w_hat = truth + bias + 0.2 * torch.randn(batch, neurons, params, generator=gen,
                                             dtype=torch.float64)
    lam = optimal_lambda(w, w_hat, torch.full((neurons,), 0.5, dtype=torch.float64))
    grid = torch.linspace(0, 1, 10001, dtype=torch.float64)
    mse = torch.stack([_estimated_mse(w, w_hat, torch.full((neurons,), g)) for g in grid])
    best = grid[mse.argmin(0)]
    torch.testing.assert_close(lam, best, atol=2e-4, rtol=0)
    assert lam[0] < 0.2 and lam[-1] > lam[0]  # unbiased SG → mostly SG; biased → more BP


def test_optimal_lambda_closed_form_on_two_samples() -> None:
    # B = 2, one neuron, P = 1: w = [0, 2], ŵ = [1, 1] → u = [1, −1], ū = 0,
    # v = (1 − 0)/1 = 1, c = (mean(w·u) − w̄ū)/1 = (0·1 + 2·(−1))/2 = −1, b² = max(0 − 1, 0) = 0
    # λ = clip(1 + c/(v + b²)) = 0.
    w = torch.tensor([[[0.0]], [[2.0]]])
    w_hat = torch.tensor([[[1.0]], [[1.0]]])
    assert optimal_lambda(w, w_hat, torch.tensor([0.7])).item() == 0.0


def test_optimal_lambda_keeps_previous_when_the_batch_is_uninformative() -> None:
    w = torch.ones(8, 3, 2)
    lam = optimal_lambda(w, w.clone(), torch.tensor([0.1, 0.5, 0.9]))
    assert torch.equal(lam, torch.tensor([0.1, 0.5, 0.9]))


def test_ema_and_table_predictor() -> None:
    assert ema(torch.tensor(1.0), torch.tensor(0.0), 0.9).item() == pytest.approx(0.9)
    keys = torch.tensor([[0, 1, 0, 1, 3]])
    targets = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]])
    table = TablePredictor.fit(keys, targets, num_keys=4)
    assert table.table.tolist() == [[2.0, 3.0, 0.0, 5.0]]
    assert table.counts.tolist() == [[2.0, 2.0, 0.0, 1.0]]
    assert table.predict(keys).tolist() == [[2.0, 3.0, 2.0, 3.0, 5.0]]
