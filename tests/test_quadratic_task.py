"""The worked example task (docs/extending.md): its logged numbers against closed forms."""

from __future__ import annotations

import math

import pytest

from tasks import REGISTRY, ConfigError
from tasks.quadratic import QuadraticConfig, run_block, run_trial


@pytest.mark.parametrize("lam", [0.0, 0.083, 0.5, 1.0])
def test_feedback_squared_error_matches_its_closed_form(lam: float) -> None:
    cfg = QuadraticConfig(d=10, sigma=1.0, bias=0.3, lam=lam, steps=4000)
    measured = run_trial(cfg, seed=3).final()["feedback_sqerr"]
    b2, noise = cfg.bias**2 * cfg.d, cfg.sigma**2 * cfg.d
    expected = lam**2 * noise + (1 - lam) ** 2 * b2
    # per-step variance of ‖λε + (1−λ)b‖²: 2λ⁴σ⁴d + 4λ²σ²(1−λ)²‖b‖²
    se = math.sqrt((2 * lam**4 * cfg.sigma**4 * cfg.d + 4 * lam**2 * (1 - lam) ** 2 * b2)
                   / cfg.steps)
    assert abs(measured - expected) <= 5 * se + 1e-12


@pytest.mark.parametrize("lam", [0.0, 0.63, 1.0])
def test_settled_loss_matches_the_stationary_closed_form(lam: float) -> None:
    cfg = QuadraticConfig(d=10, sigma=1.0, bias=0.3, lam=lam, lr=0.1, steps=200)
    finals = [log.final()["loss"] for log in run_block(cfg, range(300))]
    mean = sum(finals) / len(finals)
    expected = 0.5 * ((1 - lam) ** 2 * cfg.bias**2 * cfg.d
                      + cfg.d * cfg.lr * lam**2 * cfg.sigma**2 / (2 - cfg.lr))
    sd = math.sqrt(sum((f - mean) ** 2 for f in finals) / (len(finals) - 1))
    assert abs(mean - expected) <= 5 * sd / math.sqrt(len(finals)) + 1e-9


def test_a_seed_reproduces_bit_for_bit_and_is_registered_once() -> None:
    cfg = QuadraticConfig(lam=0.3, steps=50)
    first, again = run_trial(cfg, 7), run_trial(cfg, 7)
    assert (first.names, first.steps, first.values) == (again.names, again.steps, again.values)
    assert REGISTRY["quadratic"].config_type is QuadraticConfig


def test_invalid_lambda_is_refused_naming_the_field() -> None:
    with pytest.raises(ConfigError) as info:
        QuadraticConfig(lam=1.5).validate()
    assert info.value.field == "lam"
