"""Seeded randomness the tasks share: independent per-seed streams, and sampling actions.

A task gives each seed several named streams (a task's `STREAMS` maps each name to its
index), so turning one use of randomness on or off (evaluation, gradient checkpoints)
never shifts the draws of another.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def stream(seed: int, index: int) -> torch.Generator:
    """The generator of stream `index` of `seed`: NumPy's SeedSequence of (seed, index), so
    streams of different seeds or indices are independent."""
    state = np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & (2**63 - 1))


def sample_actions(probs: Tensor, uniforms: Tensor) -> Tensor:
    """Inverse-CDF sampling over the last dim: probs (..., A), uniforms (...) → actions (...)
    (the first action whose cumulative probability reaches the uniform)."""
    cdf = probs.cumsum(-1)
    return (cdf < uniforms.unsqueeze(-1)).sum(-1).clamp(max=probs.shape[-1] - 1)
