"""Feedback rules: what feedback a node learns from.

A node sees two candidate feedbacks for its output:
- the realised feedback `g` that backprop delivers for this sample (unbiased, noisy), and
- the prediction `ĝ(x)` of a local synthetic-gradient model (pooled over samples, maybe biased).

Every rule is a λ-mixture `λ·g + (1−λ)·ĝ`, with λ per neuron in [0, 1].
Convention everywhere: λ = 1 is pure backprop, λ = 0 is pure synthetic gradient.
E1 (expert simulation), E2 (bandit) and E3 (RL) all mix through `mix`. A rule
(`FeedbackRule` and its subclasses, registered in `RULES`) owns how λ starts and moves;
the E2 and E3 learners ask it and implement no rule themselves. `optimal_lambda` and
`lambda_from_moments` estimate the batch's MSE-optimal λ for the rules that want it.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import ClassVar

import torch
from torch import Tensor


def mix(lam: float | Tensor, realised: Tensor, predicted: Tensor) -> Tensor:
    """λ·realised + (1−λ)·predicted, exact at the edges (λ=1 returns `realised` itself)."""
    if isinstance(lam, (int, float)):
        if lam == 1.0:
            return realised
        if lam == 0.0:
            return predicted
    return lam * realised + (1.0 - lam) * predicted


@dataclass(frozen=True)
class FeedbackRule:
    """A feedback rule: which λ a learner mixes with, and how λ moves during training.

    This base class holds λ fixed (`lambda_mixture`, and backprop and pure SG at its
    edges); a rule that moves λ subclasses it (`AdaptiveLambda`). The learners ask a rule
    only these questions, so a new rule is one subclass plus one line in `RULES`:
    - `initial_lambda(shape)`: the per-neuron λ state a learner starts from;
    - `constant_lambda`: λ as a float if it never changes (the learners then mix with the
      float, so λ = 1 and λ = 0 return g or ĝ itself), else None (they mix with the state);
    - `needs_estimate`: whether `next_lambda` wants the batch's MSE-optimal λ̂ (the
      learners compute that costly estimate only then, from `optimal_lambda`'s moments);
    - `next_lambda(previous, estimate)`: the state after a training step, used from the
      next step on, so a batch never chooses its own mixing weight.
    `lam` and `momentum` come from a task's `lam` and `lam_momentum` fields (`rule_for`).
    """

    name: str
    lam: float  # λ, or the λ₀ a rule that moves λ starts from
    momentum: float = 0.9  # the rate at which a rule that moves λ moves it

    needs_estimate: ClassVar[bool] = False

    @property
    def constant_lambda(self) -> float | None:
        """λ if it never changes, else None."""
        return self.lam

    @property
    def uses_predictor(self) -> bool:
        """Whether the rule needs a synthetic-gradient predictor at all."""
        return self.constant_lambda != 1.0

    def initial_lambda(self, shape: tuple[int, ...], device: torch.device | str | None = None,
                       dtype: torch.dtype | None = None) -> Tensor:
        """The λ state a learner starts from: `lam` for every neuron."""
        return torch.full(shape, self.lam, device=device, dtype=dtype)

    def next_lambda(self, previous: Tensor, estimate: Tensor | None) -> Tensor:
        """The λ state after a training step: a fixed rule keeps `previous`."""
        return previous

    def mix(self, realised: Tensor, predicted: Tensor, lam: float | Tensor | None = None) -> Tensor:
        """The feedback this rule learns from; `lam` overrides λ (a learner's state)."""
        return mix(self.lam if lam is None else lam, realised, predicted)


@dataclass(frozen=True)
class AdaptiveLambda(FeedbackRule):
    """λ per neuron, from λ₀ = `lam`, moved after each step toward the batch's MSE-optimal
    λ̂ by an exponential moving average: λ ← momentum·λ + (1 − momentum)·λ̂."""

    needs_estimate: ClassVar[bool] = True

    @property
    def constant_lambda(self) -> float | None:
        return None

    def next_lambda(self, previous: Tensor, estimate: Tensor | None) -> Tensor:
        if estimate is None:
            raise ValueError("adaptive λ needs the batch's λ estimate")
        return ema(previous, estimate, self.momentum)


# The rules a task's `lam_rule` field can name, built as RULES[name](name, lam, momentum).
# `fixed` and `adaptive` are chosen by a task's `adaptive` field instead (one spelling each).
RULES: dict[str, type[FeedbackRule]] = {"fixed": FeedbackRule, "adaptive": AdaptiveLambda}
CHOSEN_BY_ADAPTIVE = ("fixed", "adaptive")
ENTRY_POINTS = "sgsweep.rules"  # a rule of another installed package: NAME = "pkg.mod:Class"


def _register_installed_rules() -> None:
    """Add the rules other installed packages declare in the entry-point group
    `sgsweep.rules`. Read at import, so every process that imports the learners (the
    driver that validates a sweep file, and each Ray worker that runs a trial) knows them."""
    for point in entry_points(group=ENTRY_POINTS):
        rule = point.load()
        if not (isinstance(rule, type) and issubclass(rule, FeedbackRule)) \
                or point.name in RULES:
            raise ImportError(f"entry point {ENTRY_POINTS}:{point.name} = {point.value}: "
                              f"expected a FeedbackRule subclass under a name no other rule "
                              f"uses (taken: {sorted(RULES)})")
        RULES[point.name] = rule


_register_installed_rules()


def backprop() -> FeedbackRule:
    return FeedbackRule("backprop", 1.0)


def synthetic() -> FeedbackRule:
    return FeedbackRule("synthetic", 0.0)


def lambda_mixture(lam: float) -> FeedbackRule:
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lambda must be in [0, 1], got {lam}")
    return FeedbackRule(f"lam_{lam:g}", float(lam))


def adaptive_lambda(init: float = 0.9, momentum: float = 0.9) -> FeedbackRule:
    if not 0.0 <= init <= 1.0:
        raise ValueError(f"initial lambda must be in [0, 1], got {init}")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"lambda momentum must be in [0, 1), got {momentum}")
    return AdaptiveLambda("adaptive", float(init), float(momentum))


def rule_for(learner: str, lam: float, adaptive: bool, momentum: float,
             lam_rule: str | None = None) -> FeedbackRule:
    """The rule a task's learner fields select: backprop (λ = 1), or for sgprop the rule
    `lam_rule` names in `RULES`, or without one adaptive or fixed λ as `adaptive` says."""
    if learner == "backprop":
        return backprop()
    if lam_rule is None:
        return adaptive_lambda(lam, momentum) if adaptive else lambda_mixture(lam)
    return RULES[lam_rule](lam_rule, float(lam), float(momentum))


def optimal_lambda(
    realised: Tensor, predicted: Tensor, previous: Tensor, eps: float = 1e-6
) -> Tensor:
    """The batch estimate of the MSE-optimal λ per neuron (docs/concepts.md, adaptive λ).

    `realised` and `predicted` hold, per sample b and neuron, the parameter-gradient
    contribution of the BP feedback w_b and of the SG feedback ŵ_b: shape (B, N, P).
    With u_b = ŵ_b − w_b the mixed mean is w̄ + (1−λ)ū; if BP is unbiased its MSE is
    Var(w̄) + 2(1−λ)Cov(w̄, ū) + (1−λ)²(Var(ū) + |E ū|²), minimised at
    λ = 1 + Cov/(Var + bias²), clipped to [0, 1]. Where Var + bias² ≤ eps the batch says
    nothing and `previous` (shape (N,)) is kept.
    """
    batch = realised.shape[0]
    if batch < 2:
        return previous.clone()
    u = predicted - realised
    u_mean = u.mean(0)
    w_mean = realised.mean(0)
    u_mean_sq = (u_mean * u_mean).sum(-1)
    var = torch.clamp(((u * u).sum(-1).mean(0) - u_mean_sq) / (batch - 1), min=0.0)
    cov = ((realised * u).sum(-1).mean(0) - (w_mean * u_mean).sum(-1)) / (batch - 1)
    bias_sq = torch.clamp(u_mean_sq - var, min=0.0)
    denom = var + bias_sq
    lam = torch.clamp(1.0 + cov / denom.clamp(min=eps), 0.0, 1.0)
    return torch.where(denom > eps, lam, previous)


def ema(previous: Tensor, current: Tensor, momentum: float) -> Tensor:
    """Exponential moving average used to smooth adaptive λ across batches."""
    return momentum * previous + (1.0 - momentum) * current


def lambda_from_moments(
    u_sq_mean: Tensor,
    u_mean_sq: Tensor,
    wu_mean: Tensor,
    w_mean_u_mean: Tensor,
    batch: int,
    previous: Tensor,
    eps: float = 1e-6,
) -> Tensor:
    """`optimal_lambda` from its four batch moments, for when (B, N, P) is too big to hold.

    The moments, per neuron: mean_b ‖u_b‖², ‖ū‖², mean_b ⟨w_b, u_b⟩ and ⟨w̄, ū⟩ (u = ŵ − w).
    When each sample's contribution is an outer product e_b ⊗ x_b (a linear layer's
    parameter gradient), all four follow from the factors without forming e_b ⊗ x_b.
    Same formula, same clipping and the same `previous` fallback as `optimal_lambda`.
    """
    if batch < 2:
        return previous.clone()
    # ≥ 0 in exact arithmetic; clamped against round-off as the reference code does.
    var = torch.clamp((u_sq_mean - u_mean_sq) / (batch - 1), min=0.0)
    cov = (wu_mean - w_mean_u_mean) / (batch - 1)
    bias_sq = torch.clamp(u_mean_sq - var, min=0.0)
    denom = var + bias_sq
    lam = torch.clamp(1.0 + cov / denom.clamp(min=eps), 0.0, 1.0)
    return torch.where(denom > eps, lam, previous)
