"""How the study proposes and stops trials: the sampler and the pruner a tune file names.

The grid is walked through Optuna's public queue instead of its `GridSampler` (whose last
point calls `study.stop()`, which only works inside `study.optimize`): each point not yet in
the study is enqueued once, in the grid's order, just before it is asked for.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Mapping
from typing import Any

from orchestrator.tune_spec import TuneSpec

QUEUED = "queued_params"  # user attribute: the parameters a trial was enqueued with


def make_sampler(spec: TuneSpec):
    import optuna

    seed = spec.sampler_options.get("seed")
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if spec.sampler == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if spec.sampler == "grid":  # every trial is one of `GridQueue`'s; `tune` caps n_trials
        return optuna.samplers.RandomSampler(seed=seed)
    # constant_liar: trials in flight count as bad guesses, so parallel asks spread out.
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def make_pruner(spec: TuneSpec):
    import optuna

    if spec.pruner == "none" or len(spec.rungs) == 1:
        return optuna.pruners.NopPruner()
    if spec.pruner == "median":
        return optuna.pruners.MedianPruner(**spec.pruner_options)
    return optuna.pruners.WilcoxonPruner(**spec.pruner_options)


def enqueue(study, params: Mapping[str, Any], **user_attrs: Any) -> None:
    """Ask for these parameters next (after those already waiting); the trial keeps them
    in its user attributes, so they are known while it waits."""
    study.enqueue_trial(dict(params), user_attrs={**user_attrs, QUEUED: dict(params)})


class GridQueue:
    """The grid sampler, ask/tell style: `feed()` before each ask enqueues the next grid
    point no trial of the study has (run, running or waiting), unless a trial is already
    waiting (an orphan's retry)."""

    def __init__(self, study, spec: TuneSpec) -> None:
        self.study = study
        self.distributions = spec.distributions()
        self.taken: set[str | None] = set()
        names = [d.name for d in spec.search]
        self.points: Iterator[dict[str, Any]] = (
            dict(zip(names, values, strict=True))
            for values in itertools.product(*(d.grid_values() or [] for d in spec.search)))

    def feed(self) -> None:
        from optuna.trial import TrialState

        trials = self.study.get_trials(deepcopy=False)
        if any(t.state == TrialState.WAITING for t in trials):
            return
        self.taken.update(self._key(t.params or t.user_attrs.get(QUEUED) or {}) for t in trials)
        for point in self.points:
            key = self._key(point)
            if key is None or key not in self.taken:
                self.taken.add(key)
                enqueue(self.study, point)
                return

    def _key(self, params: Mapping[str, Any]) -> str | None:
        """The parameters as Optuna stores them (so 1 and 1.0 of a float are one point)."""
        if set(params) != set(self.distributions):
            return None
        try:
            return json.dumps({name: d.to_external_repr(d.to_internal_repr(params[name]))
                               for name, d in self.distributions.items()}, sort_keys=True)
        except (ValueError, TypeError):
            return None
