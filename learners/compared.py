"""The gradient estimates a gradient-quality checkpoint compares, and their names.

At a checkpoint a learner forms, on the same batch, each setting's parameter-gradient
estimate (`rule_gradients` of `learners/sgprop.py` and `learners/sgprop_time.py`): every
hidden neuron mixing with λ = 1 (backprop's own estimate), with the learner's current λ
(whatever its feedback rule made it) and with λ = 0 (pure SG). `key` is part of recorded
metric names (`grad_mse/<key>/<group>`), so it never changes; `label` names the setting in
the reports. Torch-free: the reports (analysis/) import it without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

Current = TypeVar("Current")


@dataclass(frozen=True)
class Compared:
    key: str
    label: str
    lam: float | None  # λ of every hidden neuron; None: the learner's current λ

    def lambda_given(self, current: Current) -> Current | float:
        """This setting's λ, where the learner's current λ is `current`."""
        return current if self.lam is None else self.lam


BACKPROP = Compared("bp", "backprop", 1.0)
MIXTURE = Compared("mix", "sgprop mixture", None)
SYNTHETIC = Compared("sg", "pure SG", 0.0)
COMPARED = (BACKPROP, MIXTURE, SYNTHETIC)  # the order in which learners return them
LABELS = {c.key: c.label for c in COMPARED}
