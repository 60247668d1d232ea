"""How the study proposes and stops trials: the sampler and the pruner a tune file names."""

from __future__ import annotations

from orchestrator.tune_spec import TuneSpec


def make_sampler(spec: TuneSpec):
    import optuna

    seed = spec.sampler_options.get("seed")
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if spec.sampler == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if spec.sampler == "grid":

        class AskTellGridSampler(optuna.samplers.GridSampler):
            """Without the `study.stop()` at the grid's last point, which only works inside
            `study.optimize`; `tune` caps n_trials at the grid's size instead."""

            def after_trial(self, study, trial, state, values) -> None:
                return None

        return AskTellGridSampler({d.name: d.grid_values() for d in spec.search}, seed=seed)
    # constant_liar: trials in flight count as bad guesses, so parallel asks spread out.
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def make_pruner(spec: TuneSpec):
    import optuna

    if spec.pruner == "none" or len(spec.rungs) == 1:
        return optuna.pruners.NopPruner()
    if spec.pruner == "median":
        return optuna.pruners.MedianPruner(**spec.pruner_options)
    return optuna.pruners.WilcoxonPruner(**spec.pruner_options)
