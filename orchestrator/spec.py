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
import re
import reprlib
import types
import typing
from collections.abc import Iterable, Mapping
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

# Limits (docs/sweep-files.md#limits). A sweep or tune file is a few KB; these refuse what
# no researcher writes before it can cost memory or time.
MAX_FILE_BYTES = 256 * 1024
MAX_DEPTH = 32  # nesting of mappings and lists
MAX_NODES = 200_000  # YAML nodes, an alias counted as the whole node it names
DEFAULT_MAX_TRIALS = 100_000  # configs × seeds; `--max-trials` overrides
MAX_NAME = 100  # sweep and study names become file names and MLflow experiment names
RESERVED_NAMES = {"Default"}  # MLflow's own experiment (id 0): a sweep there mixes with it
MAX_TEXT = 1_000  # a text parameter
MAX_DESCRIPTION = 10_000
MAX_TIMEOUT_S = 1_000_000.0  # about 11.6 days per trial
SEED_LIMIT = 2**63 - 1  # seeds are 0 <= seed < 2^63 - 1 (an int64 column; len(range) fits)
INT_LIMIT = 2**63  # integer parameters are int64: -2^63 <= x < 2^63
MIN_RESOURCE = 1e-4  # Ray's resource granularity

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # matched with fullmatch
NON_FINITE = {"nan", "inf", "infinity"}
# 5e-3, 1.0E4, .5 — ASCII digits only (\d alone also matches other scripts' digits)
NUMBER_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", re.ASCII)

Seeds = range | tuple[int, ...]


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


# --- reading YAML within bounds ------------------------------------------------------------

_Base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: 5x faster


class _StrictLoader(_Base):  # type: ignore[misc, valid-type]
    """Safe YAML that refuses a key given twice in one mapping (merge keys `<<` may still
    be overridden, as YAML intends)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            lines: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = lines.get(key)
                except TypeError:
                    continue  # unhashable: the base constructor names the problem
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {_show(key)} (first at line {first})",
                        key_node.start_mark)
                lines[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)

    def construct_yaml_int(self, node):
        _refuse_yaml11_number(node)
        return super().construct_yaml_int(node)

    def construct_yaml_float(self, node):
        _refuse_yaml11_number(node)
        return super().construct_yaml_float(node)


_StrictLoader.add_constructor("tag:yaml.org,2002:int", _StrictLoader.construct_yaml_int)
_StrictLoader.add_constructor("tag:yaml.org,2002:float", _StrictLoader.construct_yaml_float)

# YAML 1.1 reads these plain scalars as numbers no other YAML reader (nor a person) expects:
# 010 is 8 (octal) and 1:30 is 90 (base 60). Refused rather than silently run.
YAML11_OCTAL = re.compile(r"[-+]?0[0-7_]+")
YAML11_BASE60 = re.compile(r"[-+]?[0-9][0-9_]*(:[0-5]?[0-9])+(\.[0-9_]*)?")


def _refuse_yaml11_number(node: Any) -> None:
    text = node.value
    if node.style not in (None, "") or not isinstance(text, str):
        return  # quoted: text, never resolved as a number
    if YAML11_OCTAL.fullmatch(text):
        read_as = int(text.replace("_", ""), 8)
        raise _ShapeError(node.start_mark, f"{_clip(text, 40)} is an octal number in YAML 1.1 "
                          f"(read as {read_as}): write it without the leading 0, or quote it "
                          "as text", kind="ambiguous number")
    if YAML11_BASE60.fullmatch(text):
        raise _ShapeError(node.start_mark, f"{_clip(text, 40)} is a base-60 number in YAML "
                          "1.1 (1:30 is read as 90): write the number itself, or quote it as "
                          "text", kind="ambiguous number")


class _ShapeError(Exception):
    def __init__(self, mark: Any, message: str, kind: str = "too large") -> None:
        super().__init__(message)
        self.mark = mark
        self.kind = kind


def _check_shape(text: str) -> None:
    """Refuse a document nested deeper than MAX_DEPTH or with more than MAX_NODES nodes
    once aliases are expanded, from the event stream alone (linear in the text, nothing
    built): a billion-laughs alias bomb is a few hundred bytes."""
    depth = 0
    total = 0
    sizes: dict[str, int] = {}  # anchor -> expanded node count of the node it names
    open_anchors: list[tuple[str | None, int]] = []  # per open collection: anchor, total
    for event in yaml.parse(text, Loader=_Base):
        if isinstance(event, yaml.AliasEvent):
            if event.anchor not in sizes:
                if any(a == event.anchor for a, _ in open_anchors):
                    raise _ShapeError(event.start_mark, f"alias *{_clip(event.anchor, 40)} "
                                                        "refers to a node that contains it",
                                      kind="not valid YAML")
                continue  # undefined: the composer names it
            total += sizes[event.anchor]
        elif isinstance(event, yaml.ScalarEvent):
            total += 1
            if event.anchor:
                sizes[event.anchor] = 1
        elif isinstance(event, yaml.CollectionStartEvent):
            total += 1
            depth += 1
            if depth > MAX_DEPTH:
                raise _ShapeError(event.start_mark, f"nested deeper than {MAX_DEPTH} levels")
            open_anchors.append((event.anchor, total))
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
            anchor, start = open_anchors.pop()
            if anchor:
                sizes[anchor] = total - start + 1
        if total > MAX_NODES:
            raise _ShapeError(getattr(event, "start_mark", None),
                              f"more than {MAX_NODES:,} values (aliases counted at each use)")


def parse_yaml(text: str, where: str) -> Any:
    """A YAML document's content, within the limits; any problem is one SpecError line."""
    try:
        _check_shape(text)
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a safe loader
    except _ShapeError as exc:
        raise SpecError(f"{where}: {exc.kind}{_at(exc.mark)}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or "malformed YAML"
        if context := getattr(exc, "context", None):
            problem = f"{context}, {problem}"
        raise SpecError(f"{where}: not valid YAML{_at(mark)}: {_clip(problem, 160)}") from None
    except (ValueError, OverflowError, RecursionError) as exc:  # e.g. a bad date
        line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "integer string conversion" in line:
            line = "a number with more than 4,300 digits"
        raise SpecError(f"{where}: not valid YAML: {_clip(line, 160)}") from None


def load_yaml(path: Path) -> Any:
    """A YAML file's content; a missing, unreadable, oversized or malformed file is a
    one-line SpecError."""
    where = str(path)
    try:
        if not path.is_file():
            raise SpecError(f"{where}: no such sweep file")
        with open(path, "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise SpecError(f"{where}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise SpecError(f"{where}: too large: more than {MAX_FILE_BYTES // 1024} KiB (a sweep "
                        "file is a few KB; seeds: {start: S, count: N} names many seeds)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError(f"{where}: not a text file (expected UTF-8 YAML)") from None
    return parse_yaml(text, where)


def _at(mark: Any) -> str:
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


# --- sweep files ---------------------------------------------------------------------------


def parse_spec(raw: Any, where: str = "<spec>", max_trials: float | None = None) -> SweepSpec:
    """Validate a sweep mapping: at most `max_trials` trials (None: DEFAULT_MAX_TRIALS;
    math.inf for checks that build configs only, such as a tune file's corners)."""
    max_trials = DEFAULT_MAX_TRIALS if max_trials is None else max_trials

    def fail(field: str, message: str) -> SpecError:
        return SpecError(f"{where}: {_clip(field, 80)}: {message}")

    if not isinstance(raw, Mapping):
        raise SpecError(f"{where}: expected a mapping of sweep fields, got {_kind(raw)}")
    unknown = sorted(set(map(str, raw)) - TOP_LEVEL_KEYS)
    if unknown:
        raise fail(unknown[0], f"unknown field; expected one of {sorted(TOP_LEVEL_KEYS)}")
    for required in ("name", "task", "seeds"):
        if required not in raw:
            raise fail(required, "missing (required)")

    name = check_name(raw["name"], "name", fail)
    task_name = raw["task"]
    if not isinstance(task_name, str) or task_name not in REGISTRY:
        raise fail("task", f"unknown task {_show(task_name)}; expected one of "
                           f"{sorted(REGISTRY)}")
    task = REGISTRY[task_name]
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise fail("description", f"expected text, got {_kind(description)}")
    if len(description) > MAX_DESCRIPTION:
        raise fail("description", f"expected at most {MAX_DESCRIPTION:,} characters, got "
                                  f"{len(description):,}")

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

    def known(field: str, key: str) -> None:
        if key not in fields:
            raise fail(field, f"unknown parameter of task {task.name!r}; expected one of "
                              f"{sorted(fields)}")

    typed_params: dict[str, Any] = {}
    for key, value in params.items():
        known(f"params.{key}", key)
        typed_params[key] = _coerce(value, hints[key], f"params.{key}", fail)

    typed_grid: dict[str, list[Any]] = {}
    for key, values in grid.items():
        field = f"grid.{key}"
        known(field, key)
        if key in params:
            raise fail(field, "also set in params; give each parameter in one place")
        if not isinstance(values, list) or not values:
            raise fail(field, f"expected a non-empty list of values, got {_kind(values)}")
        typed = [_coerce(v, hints[key], f"{field}[{i}]", fail) for i, v in enumerate(values)]
        if (i := _first_duplicate(typed)) is not None:
            raise fail(f"{field}[{i}]", f"duplicate value {_show(values[i])}")
        typed_grid[key] = typed

    typed_variants: list[dict[str, Any]] = []
    for i, variant in enumerate(variants):
        typed_variant = {}
        for key, value in variant.items():
            field = f"variants[{i}].{key}"
            known(field, key)
            if key in grid:
                raise fail(field, "also swept in grid; give each parameter in one place")
            typed_variant[key] = _coerce(value, hints[key], field, fail)
        typed_variants.append(typed_variant)
    if (i := _first_duplicate([frozenset(v.items()) for v in typed_variants])) is not None:
        raise fail(f"variants[{i}]", "duplicate variant")

    seeds = parse_seeds(raw["seeds"], "seeds", fail)
    keys = list(typed_grid)
    num_configs = len(typed_variants) * math.prod(len(typed_grid[k]) for k in keys)
    if num_configs * len(seeds) > max_trials:
        raise SpecError(
            f"{where}: {_count(num_configs * len(seeds))} trials ({_count(num_configs, 'config')} "
            f"from grid and variants × {_count(len(seeds), 'seed')}), above the limit "
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
    resources = _resources(raw.get("resources", {}), fail)
    written = timeout_s = raw.get("timeout_s")
    if timeout_s is not None:
        timeout_s = _coerce(timeout_s, float, "timeout_s", fail, expected="a number of seconds")
        if not 0 < timeout_s <= MAX_TIMEOUT_S:
            raise fail("timeout_s", f"expected seconds > 0 and at most {MAX_TIMEOUT_S:,.0f}, "
                                    f"got {_show(written)}")
    tracking_level = raw.get("tracking_level", DEFAULT_LEVEL)
    if not isinstance(tracking_level, str) or tracking_level not in LEVELS:
        raise fail("tracking_level", f"expected one of {list(LEVELS)}, "
                                     f"got {_show(tracking_level)}")
    return SweepSpec(
        name=name, task=task.name, configs=tuple(configs), seeds=seeds, block_size=block_size,
        resources=resources, description=description, source=where, timeout_s=timeout_s,
        tracking_level=tracking_level,
    )


def check_name(value: Any, field: str, fail, suffix: str = "") -> str:
    """A sweep or study name: it becomes a file name and an MLflow experiment name, and so
    does `value + suffix` (a study's NAME-best sweep) when a suffix is given."""
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        raise fail(field, "expected letters, digits, '.', '_' or '-' (starting with a letter "
                          f"or digit), got {_show(value)}")
    if len(value) > MAX_NAME - len(suffix):
        why = f" (NAME{suffix} names a sweep too)" if suffix else ""
        raise fail(field, f"expected at most {MAX_NAME - len(suffix)} characters{why}, got "
                          f"{len(value):,}")
    if value + suffix in RESERVED_NAMES:
        raise fail(field, f"{value + suffix!r} is MLflow's built-in experiment; choose another "
                          "name")
    return value


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


def unsatisfiable(resources: Resources, nodes: Iterable[Mapping[str, float]],
                  where: str = "any node") -> str | None:
    """Why no node can ever run one block needing `resources`, in one line naming the
    field; None if some node can. `nodes`: each node's total resources as Ray names them
    (`CPU`, `GPU`, `memory` in bytes); `where` names them in the message."""
    need = {key: amount for key, amount in (
        ("CPU", resources.num_cpus), ("GPU", resources.num_gpus),
        ("memory", resources.memory_gb * 2**30)) if amount > 0}
    nodes = list(nodes)
    if any(all(node.get(k, 0.0) >= v for k, v in need.items()) for node in nodes):
        return None
    for field, key in (("num_gpus", "GPU"), ("num_cpus", "CPU"), ("memory_gb", "memory")):
        if key in need and not any(node.get(key, 0.0) >= need[key] for node in nodes):
            most = max((node.get(key, 0.0) for node in nodes), default=0.0)
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
                point_text = ", ".join(f"{k}={_show(v)}" for k, v in zip(keys, point, strict=True))
                at.append(f"grid point {_clip(point_text, 200)}")
            if index is not None and not field.startswith("variants["):
                at.append(f"variants[{index}]")
            suffix = f" (at {' of '.join(at)})" if at else ""
            raise fail(field, _clip(exc.message, 300) + suffix) from None
    return config


def _mapping(value: Any, field: str, fail) -> dict[str, Any]:
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise fail(field, f"expected a mapping, got {_kind(value)}")
    for key in value:
        if not isinstance(key, str):
            raise fail(field, f"expected parameter names as keys, got {_show(key)}")
        if key in RESERVED_COLUMNS:
            raise fail(f"{field}.{key}", "reserved column name; rename the parameter")
    return dict(value)


def _coerce(value: Any, hint: Any, field: str, fail, expected: str | None = None) -> Any:
    """Check `value` against a config field's type hint; return it in canonical form."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        choices = typing.get_args(hint)
        try:
            ok = value in choices and isinstance(value, bool) == isinstance(choices[0], bool)
        except TypeError:  # unhashable or incomparable
            ok = False
        if not ok:
            raise fail(field, f"expected one of {list(choices)}, got {_show(value)}")
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
        raise fail(field, f"expected {_type_name(hint)}, got {_show(value)}")
    if origin in (tuple, list):
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise fail(field, f"expected a list of {_plural(args[0])}, got {_kind(value)}")
        items = [_coerce(v, args[0], f"{field}[{i}]", fail) for i, v in enumerate(value)]
        return tuple(items)
    if hint is bool:
        if not isinstance(value, bool):
            raise fail(field, f"expected true or false, got {_show(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail(field, f"expected an integer, got {_show(value)}{_digits_hint(value)}")
        if not -INT_LIMIT <= value < INT_LIMIT:
            raise fail(field, f"expected an integer of at most 64 bits, got {_show(value)}")
        return value
    if hint is float:
        return _finite(value, field, fail, expected or "a number")
    if hint is str:
        if not isinstance(value, str):
            raise fail(field, f"expected text, got {_show(value)}")
        if len(value) > MAX_TEXT:
            raise fail(field, f"expected at most {MAX_TEXT:,} characters, got {len(value):,}")
        return value
    raise fail(field, f"unsupported parameter type {hint!r}")  # a task-definition bug


def _finite(value: Any, field: str, fail, expected: str = "a number") -> float:
    """A finite float, whether written as a number or as text (YAML 1.1 reads 5e-3 as
    text): nan and inf are refused in every spelling (.nan, .inf, "nan", "inf", 1e999)."""
    number = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and NUMBER_TEXT.fullmatch(value.strip()):
        number = float(value)
    elif isinstance(value, str) and value.strip().lower().lstrip("+-.") in NON_FINITE:
        number = math.nan  # "nan", "-inf", "Infinity", ".inf" written as text
    if number is None:
        raise fail(field, f"expected {expected}, got {_show(value)}{_digits_hint(value)}")
    try:
        number = float(number)
    except OverflowError:  # an integer beyond float's range
        number = math.inf
    if not math.isfinite(number):
        raise fail(field, f"expected a finite number, got {_show(value)}")
    return number


def _digits_hint(value: Any) -> str:
    """A hint when text holds digits of another script (YAML reads "١٢" as text)."""
    if isinstance(value, str) and any(c.isdigit() and not c.isascii() for c in value):
        return " (numbers are written with the digits 0-9)"
    return ""


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


def parse_seeds(value: Any, field: str, fail) -> Seeds:
    """`N` (seeds 0..N-1) or `{start: S, count: N}` as a range, never materialised; or an
    explicit list of distinct seeds, kept in order. Seeds are 0 <= seed < 2^63 - 1."""
    expected = "a positive integer, {start: S, count: N} or a non-empty list of seeds"
    if isinstance(value, bool):
        raise fail(field, f"expected {expected}, got {_show(value)}")
    if isinstance(value, int):
        if not 1 <= value <= SEED_LIMIT:
            raise fail(field, f"expected a positive number of seeds below 2^63, got "
                              f"{_show(value)}")
        return range(value)
    if isinstance(value, Mapping):
        if set(value) != {"start", "count"}:
            raise fail(field, f"expected {{start: S, count: N}}, got keys "
                              f"{_show(sorted(map(str, value)))}")
        start, count = value["start"], value["count"]
        for key, number, low in (("start", start, 0), ("count", count, 1)):
            if isinstance(number, bool) or not isinstance(number, int) or number < low:
                raise fail(f"{field}.{key}", f"expected an integer >= {low}, got "
                                             f"{_show(number)}")
        if start + count > SEED_LIMIT:
            raise fail(field, f"expected seeds below 2^63 - 1, got start + count = "
                              f"{_show(start + count)}")
        return range(start, start + count)
    if isinstance(value, list) and value:
        for i, seed in enumerate(value):
            if (isinstance(seed, bool) or not isinstance(seed, int)
                    or not 0 <= seed < SEED_LIMIT):
                raise fail(f"{field}[{i}]", f"expected a non-negative integer below 2^63 - 1, "
                                            f"got {_show(seed)}")
        if (i := _first_duplicate(value)) is not None:
            raise fail(f"{field}[{i}]", f"expected distinct seeds, got {value[i]} again")
        return tuple(value)
    raise fail(field, f"expected {expected}, got {_kind(value)}{_digits_hint(value)}")


def _block_size(value: Any, fail) -> int | None:
    if value == "auto" or value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < INT_LIMIT:
        raise fail("block_size", f"expected a positive integer or 'auto', got {_show(value)}")
    return value


def _resources(value: Any, fail) -> Resources:
    value = value or {}
    if not isinstance(value, Mapping):
        raise fail("resources", f"expected a mapping, got {_kind(value)}")
    unknown = sorted(set(map(str, value)) - RESOURCE_KEYS)
    if unknown:
        raise fail(f"resources.{unknown[0]}", f"unknown; expected one of {sorted(RESOURCE_KEYS)}")
    out = {}
    for key, amount in value.items():
        field = f"resources.{key}"
        amount = _finite(amount, field, fail, "a number >= 0")
        if amount < 0:
            raise fail(field, f"expected a number >= 0, got {_show(amount)}")
        if 0 < amount < MIN_RESOURCE:
            raise fail(field, f"expected 0 or at least {MIN_RESOURCE} (Ray's granularity), "
                              f"got {_show(amount)}")
        out[key] = amount
    if out.get("num_gpus", 0) > 1 and out["num_gpus"] != int(out["num_gpus"]):
        raise fail("resources.num_gpus", "expected a fraction below 1 or a whole number")
    return Resources(**out)


def _first_duplicate(values: list[Any]) -> int | None:
    """Index of the first value equal to an earlier one (linear: values are hashable)."""
    seen: set[Any] = set()
    for i, value in enumerate(values):
        if value in seen:
            return i
        seen.add(value)
    return None


def _amount(x: float) -> str:
    return f"{int(x):,}" if x == int(x) and x < 10**15 else f"{x:.4g}"


def _count(n: int, unit: str = "") -> str:
    """A count for a message: 1,000,000 (or 1e+18 past 10^15), with `unit` pluralised."""
    text = f"{n:,}" if n < 10**15 else f"{float(n):.2g}"
    return f"{text} {unit}{'s' if n != 1 else ''}" if unit else text


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxtuple = 2, 4, 6, 6
_REPR.maxset = _REPR.maxfrozenset = 4
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = 48


def _show(value: Any) -> str:
    """A value for an error message: a short prefix of its repr, bounded work however
    large or self-similar (YAML aliases) the value is."""
    try:
        text = _REPR.repr(value)
    except Exception:  # noqa: BLE001 - a repr that fails must not hide the error
        text = f"<{type(value).__name__}>"
    return _clip(text, 60)


def _clip(text: str, limit: int) -> str:
    text = text.replace("\n", "\\n").replace("\r", "\\r")
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "text", int: "an integer",
            float: "a number", bool: "a boolean"}.get(type(value), type(value).__name__)
