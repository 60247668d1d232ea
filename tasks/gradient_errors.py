"""How far R one-batch gradient estimates ĝ_1..ĝ_R are from the gradient g they estimate.

Both decompose the same quantity, E‖ĝ − g‖² = ‖E ĝ − g‖² + E‖ĝ − E ĝ‖² (MSE = bias² +
variance of one estimate), with different estimators, because the tasks know g
differently; each records them under `grad_mse`, `grad_bias2`, `grad_var`, `grad_cos`:

- `ExactErrors` (E2, `tasks/bandit.py`): g is exact. Plug-in estimators, streamed over the
  R estimates without storing them: var = mean_r ‖ĝ_r − ĝ̄‖² divides by R, so it is biased
  low by the factor (R − 1)/R, and bias² = ‖ĝ̄ − g‖² is biased high by var/R; in exchange
  mse = bias² + var holds exactly for every sample.
- `errors_against_reference` (E3, `tasks/popgym_task.py`): g is itself estimated, as the
  mean of R_ref independent one-batch gradients (`reference_gradient`). Unbiased
  estimators, corrected for the reference's own noise: var divides by R − 1, bias² and mse
  subtract what the noise of ĝ̄ and of the reference adds, so bias² may come out < 0.

Tests check each claim (exact identities, and the expectations over many replications).
"""

from __future__ import annotations

import torch
from torch import Tensor


class ExactErrors:
    """Plug-in error decomposition of estimates of a known gradient, streamed.

    `truth` (S, P): the gradient, per seed. `add` one estimate (S, P) at a time; `finish`
    returns, per seed (S,): mse = mean_r ‖ĝ_r − g‖², bias2 = ‖ĝ̄ − g‖², var = mse − bias2
    = mean_r ‖ĝ_r − ĝ̄‖² (1/R: biased low by (R − 1)/R; clamped at 0 against round-off)
    and cos = mean_r cos(ĝ_r, g).
    """

    def __init__(self, truth: Tensor) -> None:
        self.truth = truth
        self.count = 0
        self.total: Tensor | int = 0
        self.sq_errors: Tensor | int = 0
        self.cosines: Tensor | int = 0

    def add(self, estimate: Tensor) -> None:
        t = self.truth
        err = ((estimate - t) ** 2).sum(-1)
        cos = ((estimate * t).sum(-1)
               / (estimate.norm(dim=-1) * t.norm(dim=-1)).clamp(min=1e-30))
        self.total = self.total + estimate.detach()
        self.sq_errors = self.sq_errors + err.detach()
        self.cosines = self.cosines + cos.detach()
        self.count += 1

    def finish(self) -> dict[str, Tensor]:
        r = self.count
        mse = self.sq_errors / r
        bias2 = ((self.total / r - self.truth) ** 2).sum(-1)
        return {"mse": mse, "bias2": bias2, "var": (mse - bias2).clamp(min=0.0),
                "cos": self.cosines / r}


def reference_gradient(draws: Tensor) -> tuple[Tensor, float]:
    """The mean of R_ref independent one-batch gradients (R_ref, P), and its squared
    standard error se² = Σ_i ‖g_i − ḡ‖² / (R_ref − 1) / R_ref (unbiased for E‖ḡ − g‖²)."""
    r = draws.shape[0]
    mean = draws.mean(0)
    se2 = float(((draws - mean) ** 2).sum(-1).sum() / (r - 1) / r)
    return mean, se2


def errors_against_reference(estimates: Tensor, reference: Tensor, se2: float,
                             ) -> dict[str, float]:
    """Unbiased error decomposition of R estimates (R, P) against a reference gradient (P,)
    with squared standard error `se2`, independent of the estimates:
    var = Σ_i ‖ĝ_i − ĝ̄‖² / (R − 1), mse = mean_i ‖ĝ_i − g_ref‖² − se2,
    bias2 = ‖ĝ̄ − g_ref‖² − var/R − se2 (may be < 0), cos = mean_i cos(ĝ_i, g_ref)."""
    r = estimates.shape[0]
    mean = estimates.mean(0)
    var = float(((estimates - mean) ** 2).sum(-1).sum() / (r - 1))
    raw = float(((estimates - reference) ** 2).sum(-1).mean())
    cos = torch.nn.functional.cosine_similarity(estimates, reference.unsqueeze(0), dim=-1)
    return {"mse": raw - se2, "var": var,
            "bias2": float(((mean - reference) ** 2).sum()) - var / r - se2,
            "cos": float(cos.mean())}
