"""Tune files: a sweep file whose swept parameters are searched by Optuna instead of a grid.

    name: tune-e1                   # study name (and MLflow experiment)
    task: expert
    params: {d: 6, k: 2, leak: 0.3} # fixed parameters, as in a sweep file
    search:                         # Optuna distributions over task parameters
      lam: {low: 0.0, high: 1.0}            # float (the task field's type decides)
      sg_lr: {low: 1e-4, high: 1e-1, log: true}   # log-uniform float
      layers: {low: 2, high: 6}             # int (optional step, or log)
      adaptive: {choices: [true, false]}    # categorical
    objective: {metric: sqerr_lam, direction: minimize, aggregate: mean, value: final}
    n_trials: 40                    # Optuna trials to finish (complete, pruned or failed)
    seeds: 8                        # seeds of every Optuna trial (the same for all: paired)
    rung_size: 2                    # seeds per rung; the pruner may stop a trial between rungs
    parallelism: 2                  # Optuna trials in flight (default: what the cluster fits)
    sampler: tpe                    # tpe | cmaes | random | grid, or {type: tpe, seed: 0}
    pruner: wilcoxon                # wilcoxon | median | none, or {type: wilcoxon, ...}
    reeval_seeds: 20                # fresh seeds of best.yaml (default: as many as `seeds`)
    block_size / resources / timeout_s / description: as in a sweep file

`objective.value` turns one seed's metric history into a number (`final`: its value at the
last step; `mean`: its mean over steps, an area under the curve); `objective.aggregate`
combines seeds (`mean`, `iqm`: interquartile mean, or `median`).

Every problem raises `SpecError` with one line naming the file, the field and what was
expected, like sweep files: the fixed part is checked by the sweep-file parser itself, and
the search space by building the task config at every corner of it.
"""

from __future__ import annotations

import itertools
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from orchestrator.spec import (
    SpecError,
    SweepSpec,
    _coerce,
    _kind,
    _mapping,
    _seeds,
    _type_name,
    load_yaml,
    parse_spec,
)
from tasks import REGISTRY

SWEEP_KEYS = {"name", "task", "description", "params", "seeds", "block_size", "resources",
              "timeout_s"}
TUNE_KEYS = {"search", "objective", "n_trials", "rung_size", "parallelism", "sampler",
             "pruner", "reeval_seeds"}
SAMPLERS = ("tpe", "cmaes", "random", "grid")
PRUNERS = ("wilcoxon", "median", "none")
AGGREGATES = ("mean", "iqm", "median")
VALUES = ("final", "mean")
DIRECTIONS = ("minimize", "maximize")
# Corners of the search space checked against the task's own validation (beyond this many,
# each parameter's corners are checked with the others at their lower end).
MAX_CORNERS = 256


@dataclass(frozen=True)
class Dimension:
    """One searched parameter: a float or int range (optionally log/stepped) or choices."""

    name: str
    kind: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def distribution(self):
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if self.kind == "categorical":
            return CategoricalDistribution(list(self.choices))
        if self.kind == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log,
                                   step=int(self.step or 1))
        return FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def corners(self) -> list[Any]:
        return list(self.choices) if self.kind == "categorical" else [self.low, self.high]

    def grid_values(self) -> list[Any] | None:
        """Every value, when there are finitely many (the grid sampler needs them)."""
        if self.kind == "categorical":
            return list(self.choices)
        if self.kind == "int" and not self.log:
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        if self.kind == "float" and self.step:
            count = int(round((self.high - self.low) / self.step)) + 1
            return [self.low + i * self.step for i in range(count)]
        return None


@dataclass(frozen=True)
class Objective:
    metric: str
    direction: Literal["minimize", "maximize"] = "minimize"
    aggregate: Literal["mean", "iqm", "median"] = "mean"
    value: Literal["final", "mean"] = "final"


@dataclass(frozen=True)
class TuneSpec:
    name: str
    task: str
    base: dict[str, Any]  # the sweep-file fields (params typed as written), without search
    search: tuple[Dimension, ...]
    objective: Objective
    n_trials: int
    seeds: tuple[int, ...]
    rung_size: int
    parallelism: int | None
    sampler: str
    sampler_options: dict[str, Any]
    pruner: str
    pruner_options: dict[str, Any]
    reeval_seeds: tuple[int, ...]
    sweep: SweepSpec  # the fixed part at the search space's first corner (resources, ...)
    source: str = ""

    @property
    def rungs(self) -> list[tuple[int, ...]]:
        """Seeds in the order they run: one rung after another."""
        return [self.seeds[i:i + self.rung_size]
                for i in range(0, len(self.seeds), self.rung_size)]

    def distributions(self) -> dict[str, Any]:
        return {d.name: d.distribution() for d in self.search}

    def sweep_for(self, values: Mapping[str, Any], seeds: tuple[int, ...] | None = None,
                  name: str | None = None) -> SweepSpec:
        """The one-config sweep that evaluates `values` (raises SpecError if invalid)."""
        raw = {**self.base, "params": {**self.base.get("params", {}), **values},
               "seeds": list(seeds or self.seeds), "name": name or self.name}
        return parse_spec(raw, self.source or "<tune spec>")

    def best_sweep(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """A ready-to-run sweep file (as a mapping) that re-evaluates `values` on fresh seeds."""
        raw = {**self.base, "name": f"{self.name}-best",
               "params": {**self.base.get("params", {}), **dict(values)},
               "seeds": list(self.reeval_seeds)}
        about = self.base.get("description")
        raw["description"] = f"best parameters of study {self.name} on fresh seeds" + (
            f" ({about})" if about else "")
        return raw


def load_tune_spec(path: str | Path) -> TuneSpec:
    path = Path(path)
    return parse_tune_spec(load_yaml(path), str(path))


def parse_tune_spec(raw: Any, where: str = "<tune spec>") -> TuneSpec:
    def fail(field: str, message: str) -> SpecError:
        return SpecError(f"{where}: {field}: {message}")

    if not isinstance(raw, Mapping):
        raise SpecError(f"{where}: expected a mapping of tune fields, got {_kind(raw)}")
    keys = set(map(str, raw))
    for swept in ("grid", "variants"):
        if swept in keys:
            raise fail(swept, "not used in a tune file; search parameters under `search` "
                              "(a list of values is {choices: [...]})")
    unknown = sorted(keys - SWEEP_KEYS - TUNE_KEYS)
    if unknown:
        raise fail(unknown[0], f"unknown field; expected one of {sorted(SWEEP_KEYS | TUNE_KEYS)}")
    for required in ("name", "task", "seeds", "search", "objective", "n_trials"):
        if required not in raw:
            raise fail(required, "missing (required)")
    task_name = raw["task"]
    if not isinstance(task_name, str) or task_name not in REGISTRY:
        raise fail("task", f"unknown task {task_name!r}; expected one of {sorted(REGISTRY)}")
    task = REGISTRY[task_name]
    hints = typing.get_type_hints(task.config_type)
    fields = task.config_fields()

    params = _mapping(raw.get("params", {}), "params", fail)
    search_raw = _mapping(raw["search"], "search", fail)
    if not search_raw:
        raise fail("search", "expected at least one parameter to search")
    search = []
    for key, value in search_raw.items():
        field = f"search.{key}"
        if key not in fields:
            raise fail(field, f"unknown parameter of task {task.name!r}; expected one of "
                              f"{sorted(fields)}")
        if key in params:
            raise fail(field, "also set in params; give each parameter in one place")
        search.append(_dimension(key, value, hints[key], field, fail))

    base = {k: raw[k] for k in SWEEP_KEYS if k in raw}
    base["params"] = params
    seeds = _seeds(raw["seeds"], fail)
    sweep = _check_corners(base, search, where)

    objective = _objective(raw["objective"], fail)
    n_trials = _positive_int(raw["n_trials"], "n_trials", fail)
    pruner_raw = raw.get("pruner", "wilcoxon")
    pruner_name = pruner_raw.get("type") if isinstance(pruner_raw, Mapping) else pruner_raw
    rung_default = len(seeds) if pruner_name == "none" else max(1, math.ceil(len(seeds) / 4))
    rung_size = _positive_int(raw.get("rung_size", rung_default), "rung_size", fail)
    parallelism = raw.get("parallelism")
    if parallelism is not None:
        parallelism = _positive_int(parallelism, "parallelism", fail)
    sampler, sampler_options = _choice_with_options(
        raw.get("sampler", "tpe"), "sampler", SAMPLERS, {"seed": int}, fail)
    pruner, pruner_options = _choice_with_options(
        raw.get("pruner", "wilcoxon"), "pruner", PRUNERS,
        {"p_threshold": float, "n_startup_steps": int, "n_startup_trials": int}, fail)
    if "p_threshold" in pruner_options and not 0 < pruner_options["p_threshold"] < 1:
        raise fail("pruner.p_threshold", f"expected a p-value in (0, 1), got "
                                         f"{pruner_options['p_threshold']!r}")
    for key in ("n_startup_steps", "n_startup_trials"):
        if pruner_options.get(key, 0) < 0:
            raise fail(f"pruner.{key}", f"expected an integer >= 0, got {pruner_options[key]}")
    if sampler == "cmaes" and any(d.kind == "categorical" for d in search):
        raise fail("sampler", "cmaes searches numbers only; use tpe for choices")
    if sampler == "grid":
        for d in search:
            if d.grid_values() is None:
                raise fail(f"search.{d.name}", "the grid sampler needs finitely many values "
                                               "(choices, an int range, or a float step)")

    reeval = raw.get("reeval_seeds", len(seeds))
    if isinstance(reeval, int) and not isinstance(reeval, bool) and reeval >= 1:
        start = max(seeds) + 1
        reeval_seeds = tuple(range(start, start + reeval))
    else:
        reeval_seeds = _seeds(reeval, lambda f, m: fail(f.replace("seeds", "reeval_seeds", 1), m))
        shared = sorted(set(reeval_seeds) & set(seeds))
        if shared:
            raise fail("reeval_seeds", f"expected seeds not used in tuning, got {shared[0]} "
                                       "(in `seeds` too)")
    return TuneSpec(
        name=sweep.name, task=task.name, base=base, search=tuple(search), objective=objective,
        n_trials=n_trials, seeds=seeds, rung_size=rung_size, parallelism=parallelism,
        sampler=sampler, sampler_options=sampler_options, pruner=pruner,
        pruner_options=pruner_options, reeval_seeds=reeval_seeds, sweep=sweep, source=where,
    )


def _dimension(name: str, value: Any, hint: Any, field: str, fail) -> Dimension:
    if not isinstance(value, Mapping):
        raise fail(field, f"expected a distribution such as {{low: 0.0, high: 1.0}} or "
                          f"{{choices: [...]}}, got {_kind(value)}")
    keys = set(value)
    unknown = sorted(keys - {"low", "high", "log", "step", "choices"})
    if unknown:
        raise fail(f"{field}.{unknown[0]}", "unknown; expected low, high, log, step or choices")
    if "choices" in keys:
        if keys != {"choices"}:
            raise fail(field, "expected either choices or low/high, not both")
        choices = value["choices"]
        if not isinstance(choices, list) or not choices:
            raise fail(f"{field}.choices", f"expected a non-empty list, got {_kind(choices)}")
        typed = [_coerce(v, hint, f"{field}.choices[{i}]", fail) for i, v in enumerate(choices)]
        for i, v in enumerate(typed):
            if v in typed[:i]:
                raise fail(f"{field}.choices[{i}]", f"duplicate value {choices[i]!r}")
            if isinstance(v, tuple):
                raise fail(f"{field}.choices[{i}]", "expected a single value (Optuna "
                                                    "choices are numbers, text or booleans)")
        return Dimension(name, "categorical", choices=tuple(typed))
    for needed in ("low", "high"):
        if needed not in keys:
            raise fail(field, f"expected low and high (or choices), missing {needed}")
    number = _number_type(hint)
    if number is None:
        raise fail(field, f"parameter is {_type_name(hint)}; search it with choices: [...]")
    low = _coerce(value["low"], number, f"{field}.low", fail)
    high = _coerce(value["high"], number, f"{field}.high", fail)
    if not low < high:
        raise fail(field, f"expected low < high, got low={low!r}, high={high!r}")
    log = value.get("log", False)
    if not isinstance(log, bool):
        raise fail(f"{field}.log", f"expected true or false, got {log!r}")
    step = value.get("step")
    if step is not None:
        step = _coerce(step, number, f"{field}.step", fail)
        if not step > 0:
            raise fail(f"{field}.step", f"expected a step > 0, got {step!r}")
        if log and (number is float or step != 1):
            raise fail(f"{field}.step", "expected no step with log: true")
    if log and low <= 0:
        raise fail(f"{field}.low", f"expected low > 0 with log: true, got {low!r}")
    return Dimension(name, "int" if number is int else "float", low=low, high=high, log=log,
                     step=step)


def _number_type(hint: Any) -> type | None:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return _number_type(args[0]) if len(args) == 1 else None
    return hint if hint in (int, float) else None


def _check_corners(base: dict[str, Any], search: list[Dimension], where: str) -> SweepSpec:
    """Type-check and validate the task config at the search space's corners, by the
    sweep-file parser itself (its `grid.x` field names become `search.x`)."""
    corners = [d.corners() for d in search]
    if math.prod(len(c) for c in corners) <= MAX_CORNERS:
        points = list(itertools.product(*corners))
    else:
        first = tuple(c[0] for c in corners)
        points = [first] + [first[:i] + (v,) + first[i + 1:]
                            for i, c in enumerate(corners) for v in c[1:]]
    names = [d.name for d in search]
    variants = [dict(zip(names, point, strict=True)) for point in points]
    unique = [v for i, v in enumerate(variants) if v not in variants[:i]]
    try:
        for variant in unique:
            sweep = parse_spec({**base, "params": {**base["params"], **variant}}, where)
            if variant is unique[0]:
                first_sweep = sweep
    except SpecError as exc:
        message = str(exc)
        for name in names:
            message = message.replace(f": params.{name}:", f": search.{name}:")
        at = ", ".join(f"{k}={v!r}" for k, v in variant.items())
        raise SpecError(f"{message} (at search corner {at})") from None
    return first_sweep


def _objective(value: Any, fail) -> Objective:
    if not isinstance(value, Mapping):
        raise fail("objective", "expected a mapping such as {metric: eval_reward, "
                                f"direction: maximize}}, got {_kind(value)}")
    unknown = sorted(set(value) - {"metric", "direction", "aggregate", "value"})
    if unknown:
        raise fail(f"objective.{unknown[0]}", "unknown; expected metric, direction, "
                                              "aggregate or value")
    metric = value.get("metric")
    if not isinstance(metric, str) or not metric:
        raise fail("objective.metric", f"expected a recorded metric's name, got {metric!r}")
    out = {"metric": metric}
    for key, choices in (("direction", DIRECTIONS), ("aggregate", AGGREGATES),
                         ("value", VALUES)):
        if key in value:
            if value[key] not in choices:
                raise fail(f"objective.{key}", f"expected one of {list(choices)}, "
                                               f"got {value[key]!r}")
            out[key] = value[key]
    return Objective(**out)


def _positive_int(value: Any, field: str, fail) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise fail(field, f"expected a positive integer, got {value!r}")
    return value


def _choice_with_options(value: Any, field: str, choices: tuple[str, ...],
                         option_types: dict[str, type], fail) -> tuple[str, dict[str, Any]]:
    options: dict[str, Any] = {}
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - {"type"} - set(option_types))
        if unknown:
            raise fail(f"{field}.{unknown[0]}",
                       f"unknown; expected type or one of {sorted(option_types)}")
        for key, kind in option_types.items():
            if key in value:
                options[key] = _coerce(value[key], kind, f"{field}.{key}", fail)
        value = value.get("type", choices[0])
    if value not in choices:
        raise fail(field, f"expected one of {list(choices)}, got {value!r}")
    allowed = {"wilcoxon": {"p_threshold", "n_startup_steps"},
               "median": {"n_startup_trials", "n_startup_steps"}}.get(value, set())
    if field == "sampler":
        allowed = {"seed"}
    extra = sorted(set(options) - allowed)
    if extra:
        raise fail(f"{field}.{extra[0]}", f"not an option of {field} {value!r}")
    return value, options


def dump_sweep(raw: dict[str, Any], header: str) -> str:
    """YAML text of a sweep mapping, with a comment header."""
    order = ["name", "task", "description", "params", "seeds", "block_size", "resources",
             "timeout_s"]
    ordered = {k: raw[k] for k in order if k in raw}
    body = yaml.safe_dump(ordered, sort_keys=False, default_flow_style=None, width=100)
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    return comment + body
