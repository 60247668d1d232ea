"""Sweep files: parse, type-check and validate before anything runs.

A sweep file is YAML (the full reference, limits included: docs/sweep-files.md):

    name: e1-ratio                  # sweep name: letters, digits, '.', '_', '-'
    task: expert                    # a registered task
    description: ...                # optional free text
    params: {m: 5, sigma: 0.5}      # fixed parameters (optional)
    grid: {d: [4, 6], k: [2, 3]}    # cartesian product (optional; lists must be non-empty)
    variants:                       # optional: alternatives combined with the grid, e.g.
      - {learner: backprop, lr: 1e-3}   # per-learner hyperparameters
      - {learner: sgprop, lr: 5e-3}
    seeds: 20                       # N: seeds 0..N-1; {start: S, count: N}; or a list
    block_size: auto                # seeds run as one block (int or auto)
    resources: {num_cpus: 1, num_gpus: 0}   # per block, mapped to Ray resources
    timeout_s: 600                  # per trial; a trial past it is recorded as failed
    tracking_level: auto            # tracker runs: config | seed | auto (docs/mlflow.md)

Every problem raises `SpecError` with one line naming the file, the field and what was
expected. Sizes are computed, never materialised, before anything is built: the file's
bytes, its nesting depth and node count (YAML aliases counted at every use) are bounded
while it is read, and the number of trials (configs × seeds) is refused above
`max_trials` before a config is built. Values quoted in errors are cut to a short prefix.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.tracking.view import DEFAULT_LEVEL, LEVELS
from orchestrator.values import (  # noqa: F401 - SpecError and the limits are part of spec's API
    DEFAULT_MAX_TRIALS,
    INT_LIMIT,
    MAX_FILE_BYTES,
    MAX_NAME,
    NAME_PATTERN,
    Seeds,
    SpecError,
    check_name,
    clip,
    coerce,
    count_text,
    finite,
    first_duplicate,
    kind_of,
    load_yaml,
    mapping,
    parse_seeds,
    show,
)
from tasks import REGISTRY, ConfigError, Task

TOP_LEVEL_KEYS = {
    "name", "task", "description", "params", "grid", "variants", "seeds", "block_size",
    "resources", "timeout_s", "tracking_level",
}
RESOURCE_KEYS = {"num_cpus", "num_gpus", "memory_gb"}

# Limits (docs/sweep-files.md#limits). A sweep or tune file is a few KB; these refuse what
# no researcher writes before it can cost memory or time.
MAX_DESCRIPTION = 10_000
MAX_TIMEOUT_S = 1_000_000.0  # about 11.6 days per trial
MIN_RESOURCE = 1e-4  # Ray's resource granularity


@dataclass(frozen=True)
class Resources:
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory_gb: float = 0.0  # what a block asks Ray for (the spec's `resources`)
    # What the task estimates its largest block needs (`Task.memory_bytes`), and for which
    # parameters: checked against the nodes like memory_gb, never asked of Ray.
    estimated_memory_gb: float = 0.0
    estimated_for: str = ""


@dataclass(frozen=True)
class SweepSpec:
    name: str
    task: str
    configs: tuple[Any, ...]  # resolved, validated task configs (dataclass instances)
    seeds: Seeds  # a range for `N` and `{start, count}`, else the listed seeds in order
    block_size: int | None  # None: choose automatically
    resources: Resources
    description: str = ""
    source: str = ""  # the file it came from: errors found later name it
    timeout_s: float | None = None
    tracking_level: str = DEFAULT_LEVEL

    @property
    def num_trials(self) -> int:
        return len(self.configs) * len(self.seeds)


def load_spec(path: str | Path, max_trials: float | None = None) -> SweepSpec:
    path = Path(path)
    return parse_spec(load_yaml(path), str(path), max_trials)


# --- sweep files ---------------------------------------------------------------------------


def parse_spec(raw: Any, where: str = "<spec>", max_trials: float | None = None) -> SweepSpec:
    """Validate a sweep mapping: at most `max_trials` trials (None: DEFAULT_MAX_TRIALS;
    math.inf for checks that build configs only, such as a tune file's corners)."""
    max_trials = DEFAULT_MAX_TRIALS if max_trials is None else max_trials

    def fail(field: str, message: str) -> SpecError:
        return SpecError(f"{where}: {clip(field, 80)}: {message}")

    if not isinstance(raw, Mapping):
        raise SpecError(f"{where}: expected a mapping of sweep fields, got {kind_of(raw)}")
    unknown = sorted(set(map(str, raw)) - TOP_LEVEL_KEYS)
    if unknown:
        raise fail(unknown[0], f"unknown field; expected one of {sorted(TOP_LEVEL_KEYS)}")
    for required in ("name", "task", "seeds"):
        if required not in raw:
            raise fail(required, "missing (required)")

    name = check_name(raw["name"], "name", fail)
    task_name = raw["task"]
    if not isinstance(task_name, str) or task_name not in REGISTRY:
        raise fail("task", f"unknown task {show(task_name)}; expected one of "
                           f"{sorted(REGISTRY)}")
    task = REGISTRY[task_name]
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise fail("description", f"expected text, got {kind_of(description)}")
    if len(description) > MAX_DESCRIPTION:
        raise fail("description", f"expected at most {MAX_DESCRIPTION:,} characters, got "
                                  f"{len(description):,}")

    params = mapping(raw.get("params", {}), "params", fail)
    grid = mapping(raw.get("grid", {}), "grid", fail)
    if "grid" in raw and not grid:
        raise fail("grid", "expected a non-empty mapping of parameter -> list of values")
    variants_raw = raw.get("variants", [{}])
    if not isinstance(variants_raw, list) or not variants_raw:
        raise fail("variants", "expected a non-empty list of parameter mappings")
    variants = [mapping(v, f"variants[{i}]", fail) for i, v in enumerate(variants_raw)]

    fields = task.config_fields()
    hints = typing.get_type_hints(task.config_type)

    def known(field: str, key: str) -> None:
        if key not in fields:
            raise fail(field, f"unknown parameter of task {task.name!r}; expected one of "
                              f"{sorted(fields)}")

    typed_params: dict[str, Any] = {}
    for key, value in params.items():
        known(f"params.{key}", key)
        typed_params[key] = coerce(value, hints[key], f"params.{key}", fail)

    typed_grid: dict[str, list[Any]] = {}
    for key, values in grid.items():
        field = f"grid.{key}"
        known(field, key)
        if key in params:
            raise fail(field, "also set in params; give each parameter in one place")
        if not isinstance(values, list) or not values:
            raise fail(field, f"expected a non-empty list of values, got {kind_of(values)}")
        typed = [coerce(v, hints[key], f"{field}[{i}]", fail) for i, v in enumerate(values)]
        if (i := first_duplicate(typed)) is not None:
            raise fail(f"{field}[{i}]", f"duplicate value {show(values[i])}")
        typed_grid[key] = typed

    typed_variants: list[dict[str, Any]] = []
    for i, variant in enumerate(variants):
        typed_variant = {}
        for key, value in variant.items():
            field = f"variants[{i}].{key}"
            known(field, key)
            if key in grid:
                raise fail(field, "also swept in grid; give each parameter in one place")
            typed_variant[key] = coerce(value, hints[key], field, fail)
        typed_variants.append(typed_variant)
    if (i := first_duplicate([frozenset(v.items()) for v in typed_variants])) is not None:
        raise fail(f"variants[{i}]", "duplicate variant")

    seeds = parse_seeds(raw["seeds"], "seeds", fail)
    keys = list(typed_grid)
    num_configs = len(typed_variants) * math.prod(len(typed_grid[k]) for k in keys)
    if num_configs * len(seeds) > max_trials:
        raise SpecError(
            f"{where}: {count_text(num_configs * len(seeds))} trials "
            f"({count_text(num_configs, 'config')} from grid and variants × "
            f"{count_text(len(seeds), 'seed')}), above the limit "
            f"of {max_trials:,.0f}; split the sweep, or raise the limit with --max-trials")

    required = [name for name, f in fields.items() if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING]
    configs = []
    for v, variant in enumerate(typed_variants):
        for point in itertools.product(*(typed_grid[k] for k in keys)):
            values = {**typed_params, **variant, **dict(zip(keys, point, strict=True))}
            configs.append(_build_config(task, required, values, keys, point, variant,
                                         v if len(typed_variants) > 1 else None, fail))

    block_size = _block_size(raw.get("block_size", "auto"), fail)
    resources = _with_estimate(_resources(raw.get("resources", {}), fail), task, configs,
                               len(seeds))
    written = timeout_s = raw.get("timeout_s")
    if timeout_s is not None:
        timeout_s = coerce(timeout_s, float, "timeout_s", fail, expected="a number of seconds")
        if not 0 < timeout_s <= MAX_TIMEOUT_S:
            raise fail("timeout_s", f"expected seconds > 0 and at most {MAX_TIMEOUT_S:,.0f}, "
                                    f"got {show(written)}")
    tracking_level = raw.get("tracking_level", DEFAULT_LEVEL)
    if not isinstance(tracking_level, str) or tracking_level not in LEVELS:
        raise fail("tracking_level", f"expected one of {list(LEVELS)}, "
                                     f"got {show(tracking_level)}")
    return SweepSpec(
        name=name, task=task.name, configs=tuple(configs), seeds=seeds, block_size=block_size,
        resources=resources, description=description, source=where, timeout_s=timeout_s,
        tracking_level=tracking_level,
    )


def config_dict(config: Any) -> dict[str, Any]:
    """A config as plain JSON-able values (tuples become lists).

    A field a task added after results existed (metadata `added_later`) is left out while
    at its default, so the configs, and trial ids, of earlier sweeps do not change.
    """
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.metadata.get("added_later") and value == f.default:
            continue
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def _with_estimate(resources: Resources, task: Task, configs: list[Any],
                   seeds: int) -> Resources:
    """`resources` with the task's estimate of its largest block's memory, if it has one."""
    if task.memory_bytes is None or not configs:
        return resources
    needed, config = max(((task.memory_bytes(c, seeds), c) for c in configs),
                         key=lambda pair: pair[0])
    shown = ", ".join(f"{k}={v}" for k, v in config_dict(config).items())
    return dataclasses.replace(resources, estimated_memory_gb=needed / 2**30,
                               estimated_for=clip(shown, 120))


def unsatisfiable(resources: Resources, nodes: Iterable[Mapping[str, float]],
                  where: str = "any node") -> str | None:
    """Why no node can ever run one block needing `resources`, in one line naming the
    field; None if some node can. `nodes`: each node's total resources as Ray names them
    (`CPU`, `GPU`, `memory` in bytes); `where` names them in the message. The memory a
    block needs is the larger of `memory_gb` and the task's estimate."""
    memory_gb = max(resources.memory_gb, resources.estimated_memory_gb)
    need = {key: amount for key, amount in (
        ("CPU", resources.num_cpus), ("GPU", resources.num_gpus),
        ("memory", memory_gb * 2**30)) if amount > 0}
    nodes = list(nodes)
    if any(all(node.get(k, 0.0) >= v for k, v in need.items()) for node in nodes):
        return None
    for field, key in (("num_gpus", "GPU"), ("num_cpus", "CPU"), ("memory_gb", "memory")):
        if key in need and not any(node.get(key, 0.0) >= need[key] for node in nodes):
            most = max((node.get(key, 0.0) for node in nodes), default=0.0)
            if key == "memory" and resources.estimated_memory_gb > resources.memory_gb:
                return (f"params: a block needs about {resources.estimated_memory_gb:,.1f} GB "
                        f"of memory (the task's estimate at {resources.estimated_for}), but "
                        f"{where} has at most {most / 2**30:.1f} GB")
            if key == "memory":
                asked = f"{_amount(resources.memory_gb)} GB of memory"
                have = f"{most / 2**30:.1f} GB"
            else:
                unit = key if need[key] == 1 else f"{key}s"
                asked, have = f"{_amount(need[key])} {unit}", _amount(most)
            return f"resources.{field}: a block needs {asked}, but {where} has at most {have}"
    return f"resources: a block needs them all at once, but no node of {where} has"


# --- helpers -------------------------------------------------------------------------------


def _build_config(task: Task, required: list[str], values: dict, keys: list, point: tuple,
                  variant: dict, index: int | None, fail):
    missing = [name for name in required if name not in values]
    if missing:
        raise fail(f"params.{missing[0]}", f"missing; task {task.name!r} requires it")
    config = task.config_type(**values)
    validate = getattr(config, "validate", None)
    if validate is not None:
        try:
            validate()
        except ConfigError as exc:
            field = (
                f"grid.{exc.field}" if exc.field in keys
                else f"variants[{index or 0}].{exc.field}" if exc.field in variant
                else f"params.{exc.field}"
            )
            at = []
            if keys:
                point_text = ", ".join(f"{k}={show(v)}" for k, v in zip(keys, point, strict=True))
                at.append(f"grid point {clip(point_text, 200)}")
            if index is not None and not field.startswith("variants["):
                at.append(f"variants[{index}]")
            suffix = f" (at {' of '.join(at)})" if at else ""
            raise fail(field, clip(exc.message, 300) + suffix) from None
    return config


def _block_size(value: Any, fail) -> int | None:
    if value == "auto" or value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < INT_LIMIT:
        raise fail("block_size", f"expected a positive integer or 'auto', got {show(value)}")
    return value


def _resources(value: Any, fail) -> Resources:
    value = value or {}
    if not isinstance(value, Mapping):
        raise fail("resources", f"expected a mapping, got {kind_of(value)}")
    unknown = sorted(set(map(str, value)) - RESOURCE_KEYS)
    if unknown:
        raise fail(f"resources.{unknown[0]}", f"unknown; expected one of {sorted(RESOURCE_KEYS)}")
    out = {}
    for key, amount in value.items():
        field = f"resources.{key}"
        amount = finite(amount, field, fail, "a number >= 0")
        if amount < 0:
            raise fail(field, f"expected a number >= 0, got {show(amount)}")
        if 0 < amount < MIN_RESOURCE:
            raise fail(field, f"expected 0 or at least {MIN_RESOURCE} (Ray's granularity), "
                              f"got {show(amount)}")
        out[key] = amount
    if out.get("num_gpus", 0) > 1 and out["num_gpus"] != int(out["num_gpus"]):
        raise fail("resources.num_gpus", "expected a fraction below 1 or a whole number")
    return Resources(**out)


def _amount(x: float) -> str:
    return f"{int(x):,}" if x == int(x) and x < 10**15 else f"{x:.4g}"


