"""Full-episode REINFORCE for E3 (docs/e3.md), in one place.

A batch is B episodes padded to T steps; `valid[t, b]` marks the steps that happened.
    G_t      = r_t + γ G_{t+1}               within each episode (0 after its end)
    Â_t      = (G_t − mean) / (std + 1e-8)   mean and std over the valid steps of the batch
    loss     = −Σ_valid Â_t log π(a_t|·) / n_valid − β · Σ_valid H(π_t) / n_valid
with γ = 0.95 and β = 0.01 by default. The learner then clips the gradient norm (0.5) and
takes an Adam step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Batch:
    """B episodes of one rollout, padded to T steps."""

    obs: Tensor  # (T, B, O) float32
    actions: Tensor  # (T, B) int64
    rewards: Tensor  # (T, B) float32 (as the agent saw them: noisy in Explore)
    valid: Tensor  # (T, B) bool
    success: Tensor  # (B,) bool: the episode terminated
    # What the policy computed during the rollout (learners.recurrent.Recording), which the
    # update may reuse while the parameters are unchanged; None: recompute.
    recording: object | None = None

    @property
    def lengths(self) -> Tensor:
        return self.valid.sum(0)

    def padded(self, steps: int) -> Batch:
        """The batch with all-invalid steps appended up to `steps`: zero observations and
        actions (the reference's buffer after its last episode has ended)."""
        return Batch(obs=pad_steps(self.obs, steps), actions=pad_steps(self.actions, steps),
                     rewards=pad_steps(self.rewards, steps), valid=pad_steps(self.valid, steps),
                     success=self.success, recording=self.recording)


    def to(self, device: torch.device | str) -> Batch:
        """The batch on `device` (the environment records it on the CPU)."""
        return Batch(*(getattr(self, f).to(device) for f in
                       ("obs", "actions", "rewards", "valid", "success")),
                     recording=self.recording)  # computed where the model is


def pad_steps(x: Tensor, steps: int) -> Tensor:
    """Zeros appended along the leading (time) dim up to `steps` (never cut)."""
    extra = steps - x.shape[0]
    if extra <= 0:
        return x
    return torch.cat([x, x.new_zeros(extra, *x.shape[1:])])


def discounted_returns(rewards: Tensor, valid: Tensor, gamma: float) -> Tensor:
    """G_t = r_t + γ G_{t+1} over valid steps; (T, B) → (T, B), zero where not valid."""
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        running = torch.where(valid[t], rewards[t] + gamma * running, torch.zeros_like(running))
        returns[t] = running
    return returns


def normalised_returns(rewards: Tensor, valid: Tensor, gamma: float) -> Tensor:
    """Discounted returns standardised over the batch's valid steps (0 elsewhere)."""
    returns = discounted_returns(rewards, valid, gamma)
    v = returns[valid]
    mean = v.mean()
    std = v.std(unbiased=False) if v.numel() > 1 else torch.zeros_like(mean)
    return torch.where(valid, (returns - mean) / (std + 1e-8), torch.zeros_like(returns))


def policy_loss(logits: Tensor, actions: Tensor, advantages: Tensor, valid: Tensor,
                entropy_coef: float) -> tuple[Tensor, dict[str, Tensor]]:
    """The REINFORCE loss with entropy bonus; logits (T, B, A). Returns (loss, stats)."""
    logp_all = torch.log_softmax(logits, -1)
    logp = logp_all.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    mask = valid.to(logits.dtype)
    n = mask.sum().clamp(min=1.0)
    pg = -(advantages * logp * mask).sum() / n
    ent = (entropy * mask).sum() / n
    loss = pg - entropy_coef * ent
    return loss, {"policy_loss": pg.detach(), "entropy": ent.detach()}
