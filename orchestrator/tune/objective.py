"""A trial's objective from its seeds' metric histories: each seed's value, then one
number over the seeds."""

from __future__ import annotations

import math

import numpy as np

from orchestrator.tune_spec import Objective, TuneSpec
from tasks import MetricLog


def seed_value(log: MetricLog, objective: Objective) -> float | None:
    """One seed's objective value: its metric at the last step, or its mean over steps."""
    points = sorted((s, v) for n, s, v in zip(log.names, log.steps, log.values, strict=True)
                    if n == objective.metric)
    if not points:
        return None
    return points[-1][1] if objective.value == "final" else float(np.mean([v for _, v in points]))


def aggregate(values: list[float], how: str) -> float:
    """Seeds' values combined: mean, median, or interquartile mean (the middle half)."""
    x = np.sort(np.asarray(values, dtype=float))
    if how == "median":
        return float(np.median(x))
    if how == "iqm":
        cut = int(math.floor(len(x) / 4))
        return float(x[cut:len(x) - cut].mean())
    return float(x.mean())


def reports(spec: TuneSpec, seeds: list[int], values: list[float],
            new: int) -> list[tuple[int, float]]:
    """What a trial reports to Optuna (step, value) once `new` more seeds have values
    (`seeds`/`values`: all so far, in the order they ran): each new seed's value at its
    index in `spec.seeds` (the same in every trial, so trials are paired), or for the
    median pruner the aggregate so far at step = seeds so far."""
    if new == 0:
        return []
    if spec.pruner == "median":
        return [(len(values), aggregate(values, spec.objective.aggregate))]
    return [(spec.seeds.index(s), v) for s, v in zip(seeds[-new:], values[-new:], strict=True)]
