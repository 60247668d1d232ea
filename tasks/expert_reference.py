"""A straightforward NumPy implementation of one E1 trial's estimators.

Kept as an independent cross-check of `tasks.expert` (same inputs, same squared errors)
and as the speed baseline in `benchmarks/bench_expert.py`. It loops over partitions and
experts the way one would write it first.
"""

from __future__ import annotations

import numpy as np


def squared_errors(
    states: np.ndarray,  # (R, d) ±1
    jacobians: np.ndarray,  # (R, d, d)
    coords: np.ndarray,  # (m, k)
    a: np.ndarray,  # (m, k)
    clean: np.ndarray,  # (R, m)
    observed: np.ndarray,  # (R, m)
    lams: tuple[float, ...] = (),
) -> dict[str, float]:
    num_parts, d = states.shape
    m, k = coords.shape

    # SG: per expert, mean observed feedback over partitions sharing the local key.
    predicted = np.zeros_like(observed)
    for j in range(m):
        keys = {}
        for r in range(num_parts):
            keys.setdefault(tuple(states[r, coords[j]]), []).append(r)
        for members in keys.values():
            predicted[members, j] = observed[members, j].mean()

    def gradient(feedback: np.ndarray) -> np.ndarray:
        out = np.zeros((num_parts, d))
        for r in range(num_parts):
            node = np.zeros(d)
            for j in range(m):
                node[coords[j]] += feedback[r, j] * a[j]
            out[r] = jacobians[r].T @ node / num_parts
        return out

    truth = gradient(clean)
    result = {
        "sqerr_bp": float(((gradient(observed) - truth) ** 2).sum()),
        "sqerr_sg": float(((gradient(predicted) - truth) ** 2).sum()),
    }
    for lam in lams:
        mixed = lam * observed + (1 - lam) * predicted
        result[f"sqerr_lam_{lam:g}"] = float(((gradient(mixed) - truth) ** 2).sum())
    return result
