"""`quadratic`: the smallest task — SGD on a quadratic bowl fed a λ-mixture of a noisy
true gradient and a biased synthetic one. It is the worked example of docs/extending.md.

Loss ½‖θ − μ‖² over θ ∈ R^d. Each step the "backprop" feedback is the gradient at one
noisy sample, g = θ − μ + ε with ε ~ N(0, σ²I) (unbiased, noisy); the "synthetic"
feedback is g* + b with a fixed bias b = `bias`·1 (noise-free, biased). The learner steps
θ ← θ − lr·(λ·g + (1−λ)·ĝ). The mixture's squared error has a closed form,
E‖λg + (1−λ)ĝ − g*‖² = λ²σ²d + (1−λ)²‖b‖², minimised at λ* = ‖b‖² / (σ²d + ‖b‖²);
and so does the loss SGD settles at: θ − μ becomes stationary with mean −(1−λ)b and
per-coordinate variance lr·λ²σ²/(2 − lr), so E loss = ½[(1−λ)²‖b‖² + d·lr·λ²σ²/(2 − lr)],
lowest at a larger λ than λ* (the step size damps the noise, not the bias): the lowest
gradient error is not the lowest loss. The tests check both closed forms.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from learners.feedback import lambda_mixture
from tasks.base import ConfigError, MetricLog, Task


@dataclass(frozen=True)
class QuadraticConfig:
    d: int = 10  # dimension of θ
    sigma: float = 1.0  # noise of the backprop feedback, per coordinate
    bias: float = 0.3  # bias of the synthetic feedback, per coordinate
    lam: float = 0.5  # weight of backprop in the mixture (1 = backprop, 0 = synthetic)
    lr: float = 0.1
    steps: int = 200
    log_every: int = 20

    def validate(self) -> None:
        if not 1 <= self.d <= 100_000:
            raise ConfigError("d", f"expected 1 <= d <= 100000, got {self.d}")
        if self.sigma < 0 or self.bias < 0:
            raise ConfigError("sigma" if self.sigma < 0 else "bias", "expected a value >= 0")
        if not 0.0 <= self.lam <= 1.0:
            raise ConfigError("lam", f"expected λ in [0, 1], got {self.lam}")
        if not 0.0 < self.lr < 2.0:  # beyond 2 the noise-free iteration itself diverges
            raise ConfigError("lr", f"expected 0 < lr < 2, got {self.lr}")
        if self.steps < 1 or self.log_every < 1:
            raise ConfigError("steps" if self.steps < 1 else "log_every", "expected >= 1")


def run_trial(cfg: QuadraticConfig, seed: int) -> MetricLog:
    generator = torch.Generator().manual_seed(seed)
    mu = torch.randn(cfg.d, generator=generator, dtype=torch.float64)
    theta = torch.zeros(cfg.d, dtype=torch.float64)
    bias = torch.full((cfg.d,), cfg.bias, dtype=torch.float64)
    rule = lambda_mixture(cfg.lam)
    log, sq_errors = MetricLog(), []
    for step in range(1, cfg.steps + 1):
        exact = theta - mu
        realised = exact + cfg.sigma * torch.randn(cfg.d, generator=generator, dtype=torch.float64)
        feedback = rule.mix(realised, exact + bias)
        sq_errors.append(float(((feedback - exact) ** 2).sum()))
        theta = theta - cfg.lr * feedback
        if step % cfg.log_every == 0 or step == cfg.steps:
            log.log("loss", 0.5 * float(((theta - mu) ** 2).sum()), step)
    log.log("feedback_sqerr", sum(sq_errors) / len(sq_errors), cfg.steps)
    return log


def run_block(cfg: QuadraticConfig, seeds: Sequence[int], device: str = "cpu") -> list[MetricLog]:
    return [run_trial(cfg, seed) for seed in seeds]


TASK = Task(name="quadratic", config_type=QuadraticConfig, run_block=run_block)
