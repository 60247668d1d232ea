"""A JSON Schema of sweep and tune files, for editors (completion, hover, early red lines).

Generated from the definitions the validator itself uses: the top-level fields and limits of
`orchestrator.spec` and `orchestrator.tune_spec`, and each registered task's config
dataclass (field names, types, `Literal` choices, defaults, and the `#:`-free comments are
not needed: a field's type hint is its schema). What only code can check (a task's
`validate()`: ranges that depend on other fields, trial counts, names derived from others)
stays with `sgsweep validate`; the schema covers the structure, so an editor flags an
unknown field, a misspelt choice or a list where a number goes while the file is written.
`tests/test_schema.py` keeps the two in step (every shipped sweep passes the schema; every
corpus file refused for a structural reason is refused by it; `sweeps/schema.json` is what
`sgsweep schema` writes).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal

from orchestrator import spec as sweep_fields
from orchestrator import tune_spec as tune_fields
from orchestrator import values
from orchestrator.tracking.view import LEVELS
from tasks import REGISTRY, Task

SCHEMA_ID = "https://sgsweep.invalid/schema.json"  # a name, never fetched
# A number written as text (YAML 1.1 reads 5e-3 as text): the validator's NUMBER_TEXT, with
# ASCII digits spelt out (JSON Schema patterns differ on what \d matches).
NUMBER_AS_TEXT = r"^\s*[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?\s*$"
ONE_LINE = {"pattern": "[\\n\\r]"}  # `$` alone also matches before a final newline
NAME = {
    "type": "string", "pattern": f"^{values.NAME_PATTERN.pattern}$", "maxLength":
    values.MAX_NAME, "not": {"anyOf": [{"enum": sorted(values.RESERVED_NAMES)},
                                             ONE_LINE]},
    "description": "letters, digits, '.', '_' or '-'; also the MLflow experiment's name",
}
POSITIVE_INT = {"type": "integer", "minimum": 1, "exclusiveMaximum": values.INT_LIMIT}
AS_TEXT = {"type": "string", "pattern": NUMBER_AS_TEXT}
RESOURCES = {  # Ray's granularity: 0 or at least MIN_RESOURCE; GPUs: a fraction or whole
    "num_cpus": {"anyOf": [{"const": 0}, {"type": "number",
                                          "minimum": sweep_fields.MIN_RESOURCE}, AS_TEXT]},
    "num_gpus": {"anyOf": [{"const": 0}, {"type": "number", "minimum": sweep_fields.MIN_RESOURCE,
                                          "exclusiveMaximum": 1},
                           {"type": "integer", "minimum": 1}, AS_TEXT]},
    "memory_gb": {"anyOf": [{"type": "number", "minimum": 0}, AS_TEXT]},
}


def value_schema(hint: Any) -> dict[str, Any]:
    """The schema of one task-config field from its type hint (as `values.coerce` reads it)."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        return {"enum": list(typing.get_args(hint))}
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [value_schema(a) for a in typing.get_args(hint)]}
    if origin in (tuple, list):
        return {"type": "array", "items": value_schema(typing.get_args(hint)[0])}
    if hint is type(None):
        return {"type": "null"}
    if hint is bool:
        return {"type": "boolean"}
    if hint is int:
        return {"type": "integer", "minimum": -values.INT_LIMIT,
                "exclusiveMaximum": values.INT_LIMIT}
    if hint is float:
        return {"anyOf": [{"type": "number"}, AS_TEXT]}
    if hint is str:
        return {"type": "string", "maxLength": values.MAX_TEXT}
    raise TypeError(f"no schema for a task field of type {hint!r}")


def task_fields(task: Task) -> dict[str, dict[str, Any]]:
    """Each config field of `task`: its schema, with its default as the editor's hint."""
    hints = typing.get_type_hints(task.config_type)
    out = {}
    for name, field in task.config_fields().items():
        schema = value_schema(hints[name])
        if field.default is not dataclasses.MISSING:
            default = field.default
            schema["default"] = list(default) if isinstance(default, tuple) else default
        out[name] = schema
    return out


def _params(fields: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {"type": "object", "properties": fields, "additionalProperties": False}


def _per_task(kind: str) -> list[dict[str, Any]]:
    """`if task is T then params/grid/variants (or search) hold T's fields` for each task."""
    rules = []
    for name, task in sorted(REGISTRY.items()):
        fields = task_fields(task)
        names = sorted(fields)
        if kind == "sweep":
            then = {"params": _params(fields),
                    "grid": {"type": "object", "propertyNames": {"enum": names},
                             "properties": {k: {"type": "array", "minItems": 1,
                                                "uniqueItems": True, "items": s}
                                            for k, s in fields.items()}},
                    "variants": {"type": "array", "uniqueItems": True,
                                 "items": _params(fields)}}
        else:
            then = {"params": _params(fields),
                    "search": {"type": "object", "propertyNames": {"enum": names}}}
        rules.append({"if": {"properties": {"task": {"const": name}}, "required": ["task"]},
                      "then": {"properties": then}})
    return rules


def _seeds() -> dict[str, Any]:
    seed = {"type": "integer", "minimum": 0, "exclusiveMaximum": values.SEED_LIMIT}
    return {"description": "N (seeds 0..N-1), {start: S, count: N}, or a list of seeds",
            "anyOf": [{"type": "integer", "minimum": 1, "maximum": values.SEED_LIMIT},
                      {"type": "object", "required": ["start", "count"],
                       "additionalProperties": False,
                       "properties": {"start": {"type": "integer", "minimum": 0},
                                      "count": POSITIVE_INT}},
                      {"type": "array", "minItems": 1, "uniqueItems": True, "items": seed}]}


def _shared() -> dict[str, Any]:
    """The fields sweep and tune files have in common."""
    return {
        "name": NAME,
        "task": {"enum": sorted(REGISTRY), "description": "a registered task"},
        "description": {"type": "string", "maxLength": sweep_fields.MAX_DESCRIPTION},
        "params": {"type": "object", "description": "fixed task parameters"},
        "seeds": _seeds(),
        "resources": {"type": "object", "additionalProperties": False,
                      "properties": RESOURCES},
        "timeout_s": {"anyOf": [{"type": "number", "exclusiveMinimum": 0,
                                 "maximum": sweep_fields.MAX_TIMEOUT_S},
                                AS_TEXT],
                      "description": "seconds per trial; a trial past it is recorded failed"},
    }


def sweep_schema() -> dict[str, Any]:
    properties = {
        **_shared(),
        "grid": {"type": "object", "minProperties": 1,
                 "description": "parameter -> list of values (cartesian product)"},
        "variants": {"type": "array", "minItems": 1,
                     "description": "parameter mappings, each crossed with the grid"},
        "block_size": {"anyOf": [POSITIVE_INT, {"const": "auto"}]},
        "tracking_level": {"enum": list(LEVELS)},
    }
    assert set(RESOURCES) == sweep_fields.RESOURCE_KEYS, "the schema lags the validator"
    assert set(properties) == sweep_fields.TOP_LEVEL_KEYS, "the schema lags the validator"
    return {"type": "object", "title": "sgsweep sweep file", "properties": properties,
            "required": ["name", "task", "seeds"], "additionalProperties": False,
            "allOf": _per_task("sweep")}


def _choice(choices: tuple[str, ...], options: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [{"enum": list(choices)},
                      {"type": "object", "additionalProperties": False,
                       "properties": {"type": {"enum": list(choices)}, **options}}]}


def tune_schema() -> dict[str, Any]:
    dimension = {"type": "object", "additionalProperties": False, "properties": {
        "low": {}, "high": {}, "step": {}, "log": {"type": "boolean"},
        "choices": {"type": "array", "minItems": 1, "uniqueItems": True}}}
    objective = {"type": "object", "required": ["metric"], "additionalProperties": False,
                 "properties": {
                     "metric": {"type": "string", "minLength": 1,
                                "maxLength": tune_fields.MAX_METRIC, "not": ONE_LINE},
                     "direction": {"enum": list(tune_fields.DIRECTIONS)},
                     "aggregate": {"enum": list(tune_fields.AGGREGATES)},
                     "value": {"enum": list(tune_fields.VALUES)}}}
    properties = {
        **_shared(),
        "name": {**NAME, "maxLength": values.MAX_NAME - len(tune_fields.BEST_SUFFIX)},
        "search": {"type": "object", "minProperties": 1, "additionalProperties": dimension,
                   "description": "parameter -> {low, high[, step, log]} or {choices: [...]}"},
        "objective": objective,
        "n_trials": POSITIVE_INT,
        "rung_size": POSITIVE_INT,
        "parallelism": POSITIVE_INT,
        "sampler": _choice(tune_fields.SAMPLERS, {"seed": {
            "type": "integer", "minimum": 0, "exclusiveMaximum": tune_fields.OPTUNA_SEED_LIMIT}}),
        "pruner": _choice(tune_fields.PRUNERS, {
            "p_threshold": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
            "n_startup_steps": {"type": "integer", "minimum": 0},
            "n_startup_trials": {"type": "integer", "minimum": 0}}),
        "reeval_seeds": _seeds(),
    }
    assert set(properties) == tune_fields.SWEEP_KEYS | tune_fields.TUNE_KEYS, \
        "the schema lags the validator"
    return {"type": "object", "title": "sgsweep tune file", "properties": properties,
            "required": ["name", "task", "seeds", "search", "objective", "n_trials"],
            "additionalProperties": False, "allOf": _per_task("tune")}


def file_schema() -> dict[str, Any]:
    """One schema for both kinds: a file with `search` is a tune file, as `sgsweep
    validate` decides."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "sgsweep sweep or tune file",
        "description": "Written by `sgsweep schema`; docs/sweep-files.md and docs/tuning.md "
                       "describe every field.",
        "if": {"type": "object", "required": ["search"]},
        "then": tune_schema(),
        "else": sweep_schema(),
    }
