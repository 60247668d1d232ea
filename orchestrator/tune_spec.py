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
    resources / timeout_s / description: as in a sweep file

`block_size` is refused: each rung's seeds run as one block, so `rung_size` is the block
size of a study.

`objective.value` turns one seed's metric history into a number (`final`: its value at the
last step; `mean`: its mean over steps, an area under the curve); `objective.aggregate`
combines seeds (`mean`, `iqm`: interquartile mean, or `median`).

Every problem raises `SpecError` with one line naming the file, the field and what was
expected, like sweep files: the fixed part is checked by the sweep-file parser itself, and
the search space by building the task config at every corner of it. Sizes are bounded as in
sweep files: `n_trials` × seeds and `reeval_seeds` by the trial limit, the grid sampler's
grid (which Optuna materialises) by MAX_GRID_POINTS, computed before a value is listed.
"""

from __future__ import annotations

import itertools
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from orchestrator.spec import SweepSpec, parse_spec
from orchestrator.values import (
    DEFAULT_MAX_TRIALS,
    INT_LIMIT,
    Seeds,
    SpecError,
    check_name,
    clip,
    coerce,
    count_text,
    first_duplicate,
    kind_of,
    load_yaml,
    mapping,
    parse_seeds,
    show,
    type_name,
)
from tasks import REGISTRY

SWEEP_KEYS = {"name", "task", "description", "params", "seeds", "resources", "timeout_s"}
TUNE_KEYS = {"search", "objective", "n_trials", "rung_size", "parallelism", "sampler",
             "pruner", "reeval_seeds"}
BEST_SUFFIX = "-best"  # the sweep `tune` writes for re-evaluating the best trial: NAME-best
SAMPLERS = ("tpe", "cmaes", "random", "grid")
PRUNERS = ("wilcoxon", "median", "none")
AGGREGATES = ("mean", "iqm", "median")
VALUES = ("final", "mean")
DIRECTIONS = ("minimize", "maximize")
# Corners of the search space checked against the task's own validation (beyond this many,
# each parameter's corners are checked with the others at their lower end).
MAX_CORNERS = 256
# Points of the grid sampler's grid: Optuna lists them all up front.
MAX_GRID_POINTS = 100_000
OPTUNA_SEED_LIMIT = 2**32  # numpy's seed range, which Optuna's samplers use
MAX_METRIC = 250


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

    def grid_size(self) -> int | None:
        """How many values `grid_values` lists (computed, not listed); None if unbounded."""
        if self.kind == "categorical":
            return len(self.choices)
        if self.kind == "int" and not self.log:
            return (int(self.high) - int(self.low)) // int(self.step or 1) + 1
        if self.kind == "float" and self.step:
            return int(round((self.high - self.low) / self.step)) + 1
        return None

    def grid_values(self) -> list[Any] | None:
        """Every value, when there are finitely many (the grid sampler needs them)."""
        if self.kind == "categorical":
            return list(self.choices)
        if self.kind == "int" and not self.log:
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        if self.kind == "float" and self.step:
            return [self.low + i * self.step for i in range(self.grid_size() or 0)]
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
    seeds: Seeds
    rung_size: int
    parallelism: int | None
    sampler: str
    sampler_options: dict[str, Any]
    pruner: str
    pruner_options: dict[str, Any]
    reeval_seeds: Seeds
    sweep: SweepSpec  # the fixed part at the search space's first corner (resources, ...)
    source: str = ""

    @property
    def rungs(self) -> list[tuple[int, ...]]:
        """Seeds in the order they run: one rung after another."""
        return [tuple(self.seeds[i:i + self.rung_size])
                for i in range(0, len(self.seeds), self.rung_size)]

    def distributions(self) -> dict[str, Any]:
        return {d.name: d.distribution() for d in self.search}

    def sweep_for(self, values: Mapping[str, Any], seeds: Seeds | None = None,
                  name: str | None = None) -> SweepSpec:
        """The one-config sweep that evaluates `values` (raises SpecError if invalid)."""
        raw = {**self.base, "params": {**self.base.get("params", {}), **values},
               "seeds": list(seeds or self.seeds), "name": name or self.name}
        return parse_spec(raw, self.source or "<tune spec>")

    def best_sweep(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """A ready-to-run sweep file (as a mapping) that re-evaluates `values` on fresh seeds."""
        seeds = self.reeval_seeds
        raw = {**self.base, "name": f"{self.name}{BEST_SUFFIX}",
               "params": {**self.base.get("params", {}), **dict(values)},
               "seeds": ({"start": seeds.start, "count": len(seeds)}
                         if isinstance(seeds, range) else list(seeds))}
        about = self.base.get("description")
        raw["description"] = f"best parameters of study {self.name} on fresh seeds" + (
            f" ({about})" if about else "")
        return raw


def load_tune_spec(path: str | Path, max_trials: int | None = None) -> TuneSpec:
    path = Path(path)
    return parse_tune_spec(load_yaml(path), str(path), max_trials)


def parse_tune_spec(raw: Any, where: str = "<tune spec>",
                    max_trials: int | None = None) -> TuneSpec:
    """Validate a tune mapping: at most `max_trials` trials, n_trials × seeds (None:
    DEFAULT_MAX_TRIALS)."""
    max_trials = DEFAULT_MAX_TRIALS if max_trials is None else max_trials

    def fail(field: str, message: str) -> SpecError:
        return SpecError(f"{where}: {clip(field, 80)}: {message}")

    if not isinstance(raw, Mapping):
        raise SpecError(f"{where}: expected a mapping of tune fields, got {kind_of(raw)}")
    keys = set(map(str, raw))
    for swept in ("grid", "variants"):
        if swept in keys:
            raise fail(swept, "not used in a tune file; search parameters under `search` "
                              "(a list of values is {choices: [...]})")
    if "block_size" in keys:
        raise fail("block_size", "not used in a tune file; each rung's seeds run as one "
                                 "block (set rung_size)")
    unknown = sorted(keys - SWEEP_KEYS - TUNE_KEYS)
    if unknown:
        raise fail(unknown[0], f"unknown field; expected one of {sorted(SWEEP_KEYS | TUNE_KEYS)}")
    for required in ("name", "task", "seeds", "search", "objective", "n_trials"):
        if required not in raw:
            raise fail(required, "missing (required)")
    check_name(raw["name"], "name", fail, suffix=BEST_SUFFIX)
    task_name = raw["task"]
    if not isinstance(task_name, str) or task_name not in REGISTRY:
        raise fail("task", f"unknown task {show(task_name)}; expected one of "
                           f"{sorted(REGISTRY)}")
    task = REGISTRY[task_name]
    hints = typing.get_type_hints(task.config_type)
    fields = task.config_fields()

    params = mapping(raw.get("params", {}), "params", fail)
    search_raw = mapping(raw["search"], "search", fail)
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
    seeds = parse_seeds(raw["seeds"], "seeds", fail)
    n_trials = _positive_int(raw["n_trials"], "n_trials", fail)
    if n_trials * len(seeds) > max_trials:
        raise SpecError(
            f"{where}: {count_text(n_trials * len(seeds))} trials "
            f"({count_text(n_trials)} Optuna trials × {count_text(len(seeds))} seeds), above "
            f"the limit of {max_trials:,}; lower n_trials or seeds, or raise the limit with "
            "--max-trials")
    sweep = _check_corners(base, search, where)

    objective = _objective(raw["objective"], fail)
    pruner_raw = raw.get("pruner", "wilcoxon")
    pruner_name = pruner_raw.get("type") if isinstance(pruner_raw, Mapping) else pruner_raw
    rung_default = len(seeds) if pruner_name == "none" else max(1, math.ceil(len(seeds) / 4))
    rung_size = _positive_int(raw.get("rung_size", rung_default), "rung_size", fail)
    parallelism = raw.get("parallelism")
    if parallelism is not None:
        parallelism = _positive_int(parallelism, "parallelism", fail)
        if parallelism > n_trials:  # more in flight than trials to run is never useful
            raise fail("parallelism", f"expected at most n_trials ({n_trials:,}) Optuna trials "
                                      f"in flight, got {parallelism:,}")
    sampler, sampler_options = _choice_with_options(
        raw.get("sampler", "tpe"), "sampler", SAMPLERS, {"seed": int}, fail)
    pruner, pruner_options = _choice_with_options(
        raw.get("pruner", "wilcoxon"), "pruner", PRUNERS,
        {"p_threshold": float, "n_startup_steps": int, "n_startup_trials": int}, fail)
    if not 0 <= sampler_options.get("seed", 0) < OPTUNA_SEED_LIMIT:
        raise fail("sampler.seed", f"expected an integer in [0, 2^32), got "
                                   f"{show(sampler_options['seed'])}")
    if "p_threshold" in pruner_options and not 0 < pruner_options["p_threshold"] < 1:
        raise fail("pruner.p_threshold", f"expected a p-value in (0, 1), got "
                                         f"{show(pruner_options['p_threshold'])}")
    for key in ("n_startup_steps", "n_startup_trials"):
        if pruner_options.get(key, 0) < 0:
            raise fail(f"pruner.{key}", f"expected an integer >= 0, got {pruner_options[key]}")
    if sampler == "cmaes" and any(d.kind == "categorical" for d in search):
        raise fail("sampler", "cmaes searches numbers only; use tpe for choices")
    if sampler == "grid":
        for d in search:
            if d.grid_size() is None:
                raise fail(f"search.{d.name}", "the grid sampler needs finitely many values "
                                               "(choices, an int range, or a float step)")
        points = math.prod(d.grid_size() or 0 for d in search)
        if points > MAX_GRID_POINTS:
            sizes = " × ".join(f"{d.name} {count_text(d.grid_size() or 0)}" for d in search)
            raise fail("sampler", f"the grid has {count_text(points)} points ({sizes}), above "
                                  f"the limit of {MAX_GRID_POINTS:,} that the grid sampler "
                                  "lists; use a coarser step, fewer choices, or tpe")

    reeval = raw.get("reeval_seeds", len(seeds))
    if isinstance(reeval, int) and not isinstance(reeval, bool) and reeval >= 1:
        largest = seeds[-1] if isinstance(seeds, range) else max(seeds)
        reeval = {"start": largest + 1, "count": reeval}  # the N seeds after the tuning seeds
    reeval_seeds = parse_seeds(reeval, "reeval_seeds", fail)
    if len(reeval_seeds) > DEFAULT_MAX_TRIALS:
        raise fail("reeval_seeds", f"{count_text(len(reeval_seeds))} seeds for best.yaml, above "
                                   f"the limit of {DEFAULT_MAX_TRIALS:,} trials of a sweep")
    tuning = seeds if isinstance(seeds, range) else set(seeds)  # `in`: O(1) either way
    shared = next((s for s in reeval_seeds if s in tuning), None)
    if shared is not None:
        raise fail("reeval_seeds", f"expected seeds not used in tuning, got {shared} "
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
                          f"{{choices: [...]}}, got {kind_of(value)}")
    keys = set(map(str, value))
    unknown = sorted(keys - {"low", "high", "log", "step", "choices"})
    if unknown:
        raise fail(f"{field}.{unknown[0]}", "unknown; expected low, high, log, step or choices")
    if "choices" in keys:
        if keys != {"choices"}:
            raise fail(field, "expected either choices or low/high, not both")
        choices = value["choices"]
        if not isinstance(choices, list) or not choices:
            raise fail(f"{field}.choices", f"expected a non-empty list, got {kind_of(choices)}")
        typed = [coerce(v, hint, f"{field}.choices[{i}]", fail) for i, v in enumerate(choices)]
        for i, v in enumerate(typed):
            if isinstance(v, tuple):
                raise fail(f"{field}.choices[{i}]", "expected a single value (Optuna "
                                                    "choices are numbers, text or booleans)")
        if (i := first_duplicate(typed)) is not None:
            raise fail(f"{field}.choices[{i}]", f"duplicate value {show(choices[i])}")
        return Dimension(name, "categorical", choices=tuple(typed))
    for needed in ("low", "high"):
        if needed not in keys:
            raise fail(field, f"expected low and high (or choices), missing {needed}")
    number = _number_type(hint)
    if number is None:
        raise fail(field, f"parameter is {type_name(hint)}; search it with choices: [...]")
    low = coerce(value["low"], number, f"{field}.low", fail)
    high = coerce(value["high"], number, f"{field}.high", fail)
    if not low < high:
        raise fail(field, f"expected low < high, got low={show(low)}, high={show(high)}")
    if not math.isfinite(high - low):
        raise fail(field, f"expected a range of finite width, got low={show(low)}, "
                          f"high={show(high)}")
    log = value.get("log", False)
    if not isinstance(log, bool):
        raise fail(f"{field}.log", f"expected true or false, got {show(log)}")
    step = value.get("step")
    if step is not None:
        step = coerce(step, number, f"{field}.step", fail)
        if not step > 0 or not math.isfinite((high - low) / step):
            raise fail(f"{field}.step", f"expected a step > 0 that divides the range into "
                                        f"finitely many values, got {show(step)}")
        if log and (number is float or step != 1):
            raise fail(f"{field}.step", "expected no step with log: true")
    if log and low <= 0:
        raise fail(f"{field}.low", f"expected low > 0 with log: true, got {show(low)}")
    return Dimension(name, "int" if number is int else "float", low=low, high=high, log=log,
                     step=step)


def _number_type(hint: Any) -> type | None:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return _number_type(args[0]) if len(args) == 1 else None
    return hint if hint in (int, float) else None


def _check_corners(base: dict[str, Any], search: list[Dimension], where: str) -> SweepSpec:
    """Type-check and validate the task config at the search space's corners, by the
    sweep-file parser itself (its `params.x` / `variants[i].x` fields become `search.x`).
    The first corner is parsed as a sweep (returned); all corners then as the variants of
    one sweep, so the check is linear in the number of corners."""
    corners = [d.corners() for d in search]
    if math.prod(len(c) for c in corners) <= MAX_CORNERS:
        points = itertools.product(*corners)
    else:
        first = tuple(c[0] for c in corners)
        points = itertools.chain([first], (first[:i] + (v,) + first[i + 1:]
                                           for i, c in enumerate(corners) for v in c[1:]))
    names = [d.name for d in search]
    variants = [dict(zip(names, point, strict=True)) for point in dict.fromkeys(points)]
    try:
        # The trial count (n_trials × seeds) is checked by the caller.
        first_sweep = parse_spec({**base, "params": {**base["params"], **variants[0]}}, where,
                                 max_trials=math.inf)
    except SpecError as exc:
        raise _at_corner(str(exc), names, variants[0]) from None
    if len(variants) > 1:
        try:
            parse_spec({**base, "variants": variants}, where, max_trials=math.inf)
        except SpecError as exc:
            message = str(exc)
            found = re.search(r"variants\[(\d+)\]", message)
            if found is None:
                raise
            message = message.replace(f" (at {found.group(0)})", "")
            message = re.sub(r": variants\[\d+\]\.", ": params.", message)
            raise _at_corner(message, names, variants[int(found.group(1))]) from None
    return first_sweep


def _at_corner(message: str, names: list[str], corner: dict[str, Any]) -> SpecError:
    for name in names:
        message = message.replace(f": params.{name}:", f": search.{name}:")
    at = ", ".join(f"{k}={show(v)}" for k, v in corner.items())
    return SpecError(f"{message} (at search corner {clip(at, 200)})")


def _objective(value: Any, fail) -> Objective:
    if not isinstance(value, Mapping):
        raise fail("objective", "expected a mapping such as {metric: eval_reward, "
                                f"direction: maximize}}, got {kind_of(value)}")
    unknown = sorted(set(map(str, value)) - {"metric", "direction", "aggregate", "value"})
    if unknown:
        raise fail(f"objective.{unknown[0]}", "unknown; expected metric, direction, "
                                              "aggregate or value")
    metric = value.get("metric")
    if (not isinstance(metric, str) or not metric or len(metric) > MAX_METRIC
            or not metric.isprintable()):
        raise fail("objective.metric", f"expected a recorded metric's name (at most "
                                       f"{MAX_METRIC} printable characters), got {show(metric)}")
    out = {"metric": metric}
    for key, choices in (("direction", DIRECTIONS), ("aggregate", AGGREGATES),
                         ("value", VALUES)):
        if key in value:
            if value[key] not in choices:
                raise fail(f"objective.{key}", f"expected one of {list(choices)}, "
                                               f"got {show(value[key])}")
            out[key] = value[key]
    return Objective(**out)


def _positive_int(value: Any, field: str, fail) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < INT_LIMIT:
        raise fail(field, f"expected a positive integer, got {show(value)}")
    return value


def _choice_with_options(value: Any, field: str, choices: tuple[str, ...],
                         option_types: dict[str, type], fail) -> tuple[str, dict[str, Any]]:
    options: dict[str, Any] = {}
    if isinstance(value, Mapping):
        unknown = sorted(set(map(str, value)) - {"type"} - set(option_types))
        if unknown:
            raise fail(f"{field}.{unknown[0]}",
                       f"unknown; expected type or one of {sorted(option_types)}")
        for key, kind in option_types.items():
            if key in value:
                options[key] = coerce(value[key], kind, f"{field}.{key}", fail)
        value = value.get("type", choices[0])
    if value not in choices:
        raise fail(field, f"expected one of {list(choices)}, got {show(value)}")
    allowed = {"wilcoxon": {"p_threshold", "n_startup_steps"},
               "median": {"n_startup_trials", "n_startup_steps"}}.get(value, set())
    if field == "sampler":
        allowed = {"seed"}
    extra = sorted(set(options) - allowed)
    if extra:
        raise fail(f"{field}.{extra[0]}", f"not an option of {field} {show(value)}")
    return value, options


def dump_sweep(raw: dict[str, Any], header: str) -> str:
    """YAML text of a sweep mapping, with a comment header."""
    order = ["name", "task", "description", "params", "seeds", "block_size", "resources",
             "timeout_s"]
    ordered = {k: raw[k] for k in order if k in raw}
    body = yaml.safe_dump(ordered, sort_keys=False, default_flow_style=None, width=100)
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    return comment + body
