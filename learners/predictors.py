"""Local synthetic-gradient predictors.

`TablePredictor` is the least-squares SG model on a discrete local state: with one-hot
features of the key the regression solution is the mean target per key, so fitting is a
scatter-mean. It is exact, which makes it the reference predictor of the expert
simulation (E1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class TablePredictor:
    """ĝ(key) = mean of the targets observed with that key (0 where a key was never seen)."""

    table: Tensor  # (..., num_keys)
    counts: Tensor  # (..., num_keys)

    @classmethod
    def fit(cls, keys: Tensor, targets: Tensor, num_keys: int) -> TablePredictor:
        """Fit independent tables along the leading dims.

        keys: int64 (..., S) in [0, num_keys); targets: float (..., S).
        """
        lead = keys.shape[:-1]
        sums = torch.zeros(*lead, num_keys, dtype=targets.dtype, device=targets.device)
        counts = torch.zeros(*lead, num_keys, dtype=targets.dtype, device=targets.device)
        sums.scatter_add_(-1, keys, targets)
        counts.scatter_add_(-1, keys, torch.ones_like(targets))
        table = torch.where(counts > 0, sums / counts.clamp(min=1), torch.zeros_like(sums))
        return cls(table=table, counts=counts)

    def predict(self, keys: Tensor) -> Tensor:
        return torch.gather(self.table, -1, keys)
