"""Sweep files: parse, type-check and validate before anything runs.

A sweep file is YAML:

    name: e1-ratio                  # sweep name: letters, digits, '.', '_', '-'
    task: expert                    # a registered task
    description: ...                # optional free text
    params: {m: 5, sigma: 0.5}      # fixed parameters (optional)
    grid: {d: [4, 6], k: [2, 3]}    # cartesian product (optional; lists must be non-empty)
    variants:                       # optional: alternatives combined with the grid, e.g.
      - {learner: backprop, lr: 1e-3}   # per-learner hyperparameters
      - {learner: sgprop, lr: 5e-3}
    seeds: 20                       # int N: seeds 0..N-1, or an explicit list
    block_size: auto                # seeds run as one block (int or auto)
    resources: {num_cpus: 1, num_gpus: 0}   # per block, mapped to Ray resources
    timeout_s: 600                  # per trial; a trial past it is recorded as failed
    tracking_level: auto            # tracker runs: config | seed | auto (docs/mlflow.md)

Every problem raises `SpecError` with one line naming the file, the field and what was
expected.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from orchestrator.tracking.view import DEFAULT_LEVEL, LEVELS
from tasks import REGISTRY, ConfigError, Task

TOP_LEVEL_KEYS = {
    "name", "task", "description", "params", "grid", "variants", "seeds", "block_size",
    "resources", "timeout_s", "tracking_level",
}
RESOURCE_KEYS = {"num_cpus", "num_gpus", "memory_gb"}
RESERVED_COLUMNS = {
    "trial_id", "sweep", "task", "seed", "status", "error", "duration_s", "config",
    "config_id", "finished_at", "invocation", "node", "device", "tags",
}
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class SpecError(ValueError):
    """A user mistake in a sweep file; its message is the one line we print."""


@dataclass(frozen=True)
class Resources:
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory_gb: float = 0.0


@dataclass(frozen=True)
class SweepSpec:
    name: str
    task: str
    configs: tuple[Any, ...]  # resolved, validated task configs (dataclass instances)
    seeds: tuple[int, ...]
    block_size: int | None  # None: choose automatically
    resources: Resources
    description: str = ""
    source: str = ""
    timeout_s: float | None = None
    tracking_level: str = DEFAULT_LEVEL

    @property
    def num_trials(self) -> int:
        return len(self.configs) * len(self.seeds)


def load_spec(path: str | Path) -> SweepSpec:
    path = Path(path)
    return parse_spec(load_yaml(path), str(path))


def load_yaml(path: Path) -> Any:
    """A YAML file's content; a missing or malformed file is a one-line SpecError."""
    where = str(path)
    if not path.is_file():
        raise SpecError(f"{where}: no such sweep file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "malformed YAML"
        raise SpecError(f"{where}: not valid YAML{at}: {problem}") from None
    except UnicodeDecodeError:
        raise SpecError(f"{where}: not a text file") from None
    return raw


def parse_spec(raw: Any, where: str = "<spec>") -> SweepSpec:
    def fail(field: str, message: str) -> SpecError:
        return SpecError(f"{where}: {field}: {message}")

    if not isinstance(raw, Mapping):
        raise SpecError(f"{where}: expected a mapping of sweep fields, got {_kind(raw)}")
    unknown = sorted(set(map(str, raw)) - TOP_LEVEL_KEYS)
    if unknown:
        raise fail(unknown[0], f"unknown field; expected one of {sorted(TOP_LEVEL_KEYS)}")
    for required in ("name", "task", "seeds"):
        if required not in raw:
            raise fail(required, "missing (required)")

    name = raw["name"]
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise fail("name", f"expected letters, digits, '.', '_' or '-', got {name!r}")
    task_name = raw["task"]
    if not isinstance(task_name, str) or task_name not in REGISTRY:
        raise fail("task", f"unknown task {task_name!r}; expected one of {sorted(REGISTRY)}")
    task = REGISTRY[task_name]
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise fail("description", f"expected text, got {_kind(description)}")

    params = _mapping(raw.get("params", {}), "params", fail)
    grid = _mapping(raw.get("grid", {}), "grid", fail)
    if "grid" in raw and not grid:
        raise fail("grid", "expected a non-empty mapping of parameter -> list of values")
    variants_raw = raw.get("variants", [{}])
    if not isinstance(variants_raw, list) or not variants_raw:
        raise fail("variants", "expected a non-empty list of parameter mappings")
    variants = [_mapping(v, f"variants[{i}]", fail) for i, v in enumerate(variants_raw)]

    fields = task.config_fields()
    hints = typing.get_type_hints(task.config_type)

    def check_name(field: str, key: str) -> None:
        if key not in fields:
            raise fail(field, f"unknown parameter of task {task.name!r}; expected one of "
                              f"{sorted(fields)}")

    typed_params: dict[str, Any] = {}
    for key, value in params.items():
        check_name(f"params.{key}", key)
        typed_params[key] = _coerce(value, hints[key], f"params.{key}", fail)

    typed_grid: dict[str, list[Any]] = {}
    for key, values in grid.items():
        field = f"grid.{key}"
        check_name(field, key)
        if key in params:
            raise fail(field, "also set in params; give each parameter in one place")
        if not isinstance(values, list) or not values:
            raise fail(field, f"expected a non-empty list of values, got {_kind(values)}")
        typed = [_coerce(v, hints[key], f"{field}[{i}]", fail) for i, v in enumerate(values)]
        for i, value in enumerate(typed):
            if value in typed[:i]:
                raise fail(f"{field}[{i}]", f"duplicate value {values[i]!r}")
        typed_grid[key] = typed

    typed_variants: list[dict[str, Any]] = []
    for i, variant in enumerate(variants):
        typed_variant = {}
        for key, value in variant.items():
            field = f"variants[{i}].{key}"
            check_name(field, key)
            if key in grid:
                raise fail(field, "also swept in grid; give each parameter in one place")
            typed_variant[key] = _coerce(value, hints[key], field, fail)
        if typed_variant in typed_variants:
            raise fail(f"variants[{i}]", "duplicate variant")
        typed_variants.append(typed_variant)

    configs = []
    keys = list(typed_grid)
    for variant in typed_variants:
        for point in itertools.product(*(typed_grid[k] for k in keys)):
            values = {**typed_params, **variant, **dict(zip(keys, point, strict=True))}
            configs.append(_build_config(task, values, keys, point, variant, fail))

    seeds = _seeds(raw["seeds"], fail)
    block_size = _block_size(raw.get("block_size", "auto"), fail)
    resources = _resources(raw.get("resources", {}), fail)
    timeout_s = raw.get("timeout_s")
    if timeout_s is not None and (isinstance(timeout_s, bool) or not isinstance(
            timeout_s, (int, float)) or timeout_s <= 0):
        raise fail("timeout_s", f"expected a number of seconds > 0, got {timeout_s!r}")
    tracking_level = raw.get("tracking_level", DEFAULT_LEVEL)
    if tracking_level not in LEVELS:
        raise fail("tracking_level", f"expected one of {list(LEVELS)}, got {tracking_level!r}")
    return SweepSpec(
        name=name, task=task.name, configs=tuple(configs), seeds=seeds, block_size=block_size,
        resources=resources, description=description, source=where,
        timeout_s=float(timeout_s) if timeout_s is not None else None,
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


def _build_config(task: Task, values: dict, keys: list, point: tuple, variant: dict, fail):
    fields = task.config_fields()
    missing = [
        name for name, f in fields.items()
        if name not in values
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
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
                else f"variants.{exc.field}" if exc.field in variant
                else f"params.{exc.field}"
            )
            at = ", ".join(f"{k}={v!r}" for k, v in zip(keys, point, strict=True))
            suffix = f" (at grid point {at})" if at else ""
            raise fail(field, exc.message + suffix) from None
    return config


def _mapping(value: Any, field: str, fail) -> dict[str, Any]:
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise fail(field, f"expected a mapping, got {_kind(value)}")
    for key in value:
        if not isinstance(key, str):
            raise fail(field, f"expected parameter names as keys, got {key!r}")
        if key in RESERVED_COLUMNS:
            raise fail(f"{field}.{key}", "reserved column name; rename the parameter")
    return dict(value)


def _coerce(value: Any, hint: Any, field: str, fail) -> Any:
    """Check `value` against a config field's type hint; return it in canonical form."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices or isinstance(value, bool) != isinstance(choices[0], bool):
            raise fail(field, f"expected one of {list(choices)}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None and len(args) < len(typing.get_args(hint)):
            return None
        for arg in args:
            try:
                return _coerce(value, arg, field, fail)
            except SpecError:
                continue
        raise fail(field, f"expected {_type_name(hint)}, got {value!r}")
    if origin in (tuple, list):
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise fail(field, f"expected a list of {_plural(args[0])}, got {_kind(value)}")
        items = [_coerce(v, args[0], f"{field}[{i}]", fail) for i, v in enumerate(value)]
        return tuple(items)
    if hint is bool:
        if not isinstance(value, bool):
            raise fail(field, f"expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail(field, f"expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            # YAML 1.1 reads 5e-3 as a string; accept plain numbers written that way.
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
            raise fail(field, f"expected a number, got {value!r}")
        if value != value or value in (float("inf"), float("-inf")):
            raise fail(field, f"expected a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise fail(field, f"expected text, got {value!r}")
        return value
    raise fail(field, f"unsupported parameter type {hint!r}")  # a task-definition bug


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return f"one of {list(typing.get_args(hint))}"
    if origin in (tuple, list):
        return f"a list of {_plural(typing.get_args(hint)[0])}"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    return {int: "an integer", float: "a number", str: "text", bool: "true or false",
            type(None): "null"}.get(hint, str(hint))


def _plural(hint: Any) -> str:
    return {int: "integers", float: "numbers", str: "texts", bool: "booleans"}.get(
        hint, _type_name(hint))


def _seeds(value: Any, fail) -> tuple[int, ...]:
    if isinstance(value, bool):
        raise fail("seeds", f"expected a positive integer or a list of seeds, got {value!r}")
    if isinstance(value, int):
        if value < 1:
            raise fail("seeds", f"expected a positive number of seeds, got {value}")
        return tuple(range(value))
    if isinstance(value, list) and value:
        for i, seed in enumerate(value):
            if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
                raise fail(f"seeds[{i}]", f"expected a non-negative integer, got {seed!r}")
        if len(set(value)) != len(value):
            raise fail("seeds", "expected distinct seeds")
        return tuple(value)
    raise fail("seeds", f"expected a positive integer or a non-empty list, got {_kind(value)}")


def _block_size(value: Any, fail) -> int | None:
    if value == "auto" or value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise fail("block_size", f"expected a positive integer or 'auto', got {value!r}")
    return value


def _resources(value: Any, fail) -> Resources:
    value = value or {}
    if not isinstance(value, Mapping):
        raise fail("resources", f"expected a mapping, got {_kind(value)}")
    unknown = sorted(set(value) - RESOURCE_KEYS)
    if unknown:
        raise fail(f"resources.{unknown[0]}", f"unknown; expected one of {sorted(RESOURCE_KEYS)}")
    out = {}
    for key, amount in value.items():
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or amount < 0:
            raise fail(f"resources.{key}", f"expected a number >= 0, got {amount!r}")
        out[key] = float(amount)
    if out.get("num_gpus", 0) > 1 and out["num_gpus"] != int(out["num_gpus"]):
        raise fail("resources.num_gpus", "expected a fraction below 1 or a whole number")
    return Resources(**out)


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "text", int: "an integer",
            float: "a number", bool: "a boolean"}.get(type(value), type(value).__name__)
