"""Reading and checking the values of sweep and tune files: one public module both file
kinds use (`orchestrator.spec` for sweeps, `orchestrator.tune_spec` for tune files).

YAML is read within bounds (bytes, nesting, nodes with aliases counted at each use; YAML
1.1's octal and base-60 numbers refused); a value is checked against a task field's type
hint (`coerce`), and every problem is a `SpecError` of one line whose quoted values are cut
to a short prefix (`show`, `clip`). Limits: docs/sweep-files.md#limits.
"""

from __future__ import annotations

import math
import re
import reprlib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml

# Limits (docs/sweep-files.md#limits). A sweep or tune file is a few KB; these refuse what
# no researcher writes before it can cost memory or time.
# Trial-row columns: a task parameter may not take one of these names.
RESERVED_COLUMNS = {
    "trial_id", "sweep", "task", "seed", "status", "error", "duration_s", "config",
    "config_id", "finished_at", "invocation", "node", "device", "tags",
}
MAX_FILE_BYTES = 256 * 1024
MAX_DEPTH = 32  # nesting of mappings and lists
MAX_NODES = 200_000  # YAML nodes, an alias counted as the whole node it names
DEFAULT_MAX_TRIALS = 100_000  # configs × seeds; `--max-trials` overrides
MAX_NAME = 100  # sweep and study names become file names and MLflow experiment names
RESERVED_NAMES = {"Default"}  # MLflow's own experiment (id 0): a sweep there mixes with it
MAX_TEXT = 1_000  # a text parameter
SEED_LIMIT = 2**63 - 1  # seeds are 0 <= seed < 2^63 - 1 (an int64 column; len(range) fits)
INT_LIMIT = 2**63  # integer parameters are int64: -2^63 <= x < 2^63

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # matched with fullmatch
NON_FINITE = {"nan", "inf", "infinity"}
# 5e-3, 1.0E4, .5 — ASCII digits only (\d alone also matches other scripts' digits)
NUMBER_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", re.ASCII)

Seeds = range | tuple[int, ...]


class SpecError(ValueError):
    """A user mistake in a sweep or tune file; its message is the one line we print."""


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
                        None, None, f"duplicate key {show(key)} (first at line {first})",
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
        raise _ShapeError(node.start_mark, f"{clip(text, 40)} is an octal number in YAML 1.1 "
                          f"(read as {read_as}): write it without the leading 0, or quote it "
                          "as text", kind="ambiguous number")
    if YAML11_BASE60.fullmatch(text):
        raise _ShapeError(node.start_mark, f"{clip(text, 40)} is a base-60 number in YAML "
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
                    raise _ShapeError(event.start_mark, f"alias *{clip(event.anchor, 40)} "
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
        raise SpecError(f"{where}: not valid YAML{_at(mark)}: {clip(problem, 160)}") from None
    except (ValueError, OverflowError, RecursionError) as exc:  # e.g. a bad date
        line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "integer string conversion" in line:
            line = "a number with more than 4,300 digits"
        raise SpecError(f"{where}: not valid YAML: {clip(line, 160)}") from None


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


def check_name(value: Any, field: str, fail, suffix: str = "") -> str:
    """A sweep or study name: it becomes a file name and an MLflow experiment name, and so
    does `value + suffix` (a study's NAME-best sweep) when a suffix is given."""
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        raise fail(field, "expected letters, digits, '.', '_' or '-' (starting with a letter "
                          f"or digit), got {show(value)}")
    if len(value) > MAX_NAME - len(suffix):
        why = f" (NAME{suffix} names a sweep too)" if suffix else ""
        raise fail(field, f"expected at most {MAX_NAME - len(suffix)} characters{why}, got "
                          f"{len(value):,}")
    if value + suffix in RESERVED_NAMES:
        raise fail(field, f"{value + suffix!r} is MLflow's built-in experiment; choose another "
                          "name")
    return value


def mapping(value: Any, field: str, fail) -> dict[str, Any]:
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise fail(field, f"expected a mapping, got {kind_of(value)}")
    for key in value:
        if not isinstance(key, str):
            raise fail(field, f"expected parameter names as keys, got {show(key)}")
        if key in RESERVED_COLUMNS:
            raise fail(f"{field}.{key}", "reserved column name; rename the parameter")
    return dict(value)


def coerce(value: Any, hint: Any, field: str, fail, expected: str | None = None) -> Any:
    """Check `value` against a config field's type hint; return it in canonical form."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        choices = typing.get_args(hint)
        try:
            ok = value in choices and isinstance(value, bool) == isinstance(choices[0], bool)
        except TypeError:  # unhashable or incomparable
            ok = False
        if not ok:
            raise fail(field, f"expected one of {list(choices)}, got {show(value)}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None and len(args) < len(typing.get_args(hint)):
            return None
        for arg in args:
            try:
                return coerce(value, arg, field, fail)
            except SpecError:
                continue
        raise fail(field, f"expected {type_name(hint)}, got {show(value)}")
    if origin in (tuple, list):
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise fail(field, f"expected a list of {plural(args[0])}, got {kind_of(value)}")
        items = [coerce(v, args[0], f"{field}[{i}]", fail) for i, v in enumerate(value)]
        return tuple(items)
    if hint is bool:
        if not isinstance(value, bool):
            raise fail(field, f"expected true or false, got {show(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail(field, f"expected an integer, got {show(value)}{digits_hint(value)}")
        if not -INT_LIMIT <= value < INT_LIMIT:
            raise fail(field, f"expected an integer of at most 64 bits, got {show(value)}")
        return value
    if hint is float:
        return finite(value, field, fail, expected or "a number")
    if hint is str:
        if not isinstance(value, str):
            raise fail(field, f"expected text, got {show(value)}")
        if len(value) > MAX_TEXT:
            raise fail(field, f"expected at most {MAX_TEXT:,} characters, got {len(value):,}")
        return value
    raise fail(field, f"unsupported parameter type {hint!r}")  # a task-definition bug


def finite(value: Any, field: str, fail, expected: str = "a number") -> float:
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
        raise fail(field, f"expected {expected}, got {show(value)}{digits_hint(value)}")
    try:
        number = float(number)
    except OverflowError:  # an integer beyond float's range
        number = math.inf
    if not math.isfinite(number):
        raise fail(field, f"expected a finite number, got {show(value)}")
    return number


def digits_hint(value: Any) -> str:
    """A hint when text holds digits of another script (YAML reads "١٢" as text)."""
    if isinstance(value, str) and any(c.isdigit() and not c.isascii() for c in value):
        return " (numbers are written with the digits 0-9)"
    return ""


def type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return f"one of {list(typing.get_args(hint))}"
    if origin in (tuple, list):
        return f"a list of {plural(typing.get_args(hint)[0])}"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(hint))
    return {int: "an integer", float: "a number", str: "text", bool: "true or false",
            type(None): "null"}.get(hint, str(hint))


def plural(hint: Any) -> str:
    return {int: "integers", float: "numbers", str: "texts", bool: "booleans"}.get(
        hint, type_name(hint))


def parse_seeds(value: Any, field: str, fail) -> Seeds:
    """`N` (seeds 0..N-1) or `{start: S, count: N}` as a range, never materialised; or an
    explicit list of distinct seeds, kept in order. Seeds are 0 <= seed < 2^63 - 1."""
    expected = "a positive integer, {start: S, count: N} or a non-empty list of seeds"
    if isinstance(value, bool):
        raise fail(field, f"expected {expected}, got {show(value)}")
    if isinstance(value, int):
        if not 1 <= value <= SEED_LIMIT:
            raise fail(field, f"expected a positive number of seeds below 2^63, got "
                              f"{show(value)}")
        return range(value)
    if isinstance(value, Mapping):
        if set(value) != {"start", "count"}:
            raise fail(field, f"expected {{start: S, count: N}}, got keys "
                              f"{show(sorted(map(str, value)))}")
        start, count = value["start"], value["count"]
        for key, number, low in (("start", start, 0), ("count", count, 1)):
            if isinstance(number, bool) or not isinstance(number, int) or number < low:
                raise fail(f"{field}.{key}", f"expected an integer >= {low}, got "
                                             f"{show(number)}")
        if start + count > SEED_LIMIT:
            raise fail(field, f"expected seeds below 2^63 - 1, got start + count = "
                              f"{show(start + count)}")
        return range(start, start + count)
    if isinstance(value, list) and value:
        for i, seed in enumerate(value):
            if (isinstance(seed, bool) or not isinstance(seed, int)
                    or not 0 <= seed < SEED_LIMIT):
                raise fail(f"{field}[{i}]", f"expected a non-negative integer below 2^63 - 1, "
                                            f"got {show(seed)}")
        if (i := first_duplicate(value)) is not None:
            raise fail(f"{field}[{i}]", f"expected distinct seeds, got {value[i]} again")
        return tuple(value)
    raise fail(field, f"expected {expected}, got {kind_of(value)}{digits_hint(value)}")


def first_duplicate(values: list[Any]) -> int | None:
    """Index of the first value equal to an earlier one (linear: values are hashable)."""
    seen: set[Any] = set()
    for i, value in enumerate(values):
        if value in seen:
            return i
        seen.add(value)
    return None


def count_text(n: int, unit: str = "") -> str:
    """A count for a message: 1,000,000 (or 1e+18 past 10^15), with `unit` pluralised."""
    text = f"{n:,}" if n < 10**15 else f"{float(n):.2g}"
    return f"{text} {unit}{'s' if n != 1 else ''}" if unit else text


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxtuple = 2, 4, 6, 6
_REPR.maxset = _REPR.maxfrozenset = 4
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = 48


def show(value: Any) -> str:
    """A value for an error message: a short prefix of its repr, bounded work however
    large or self-similar (YAML aliases) the value is."""
    try:
        text = _REPR.repr(value)
    except Exception:  # noqa: BLE001 - a repr that fails must not hide the error
        text = f"<{type(value).__name__}>"
    return clip(text, 60)


def clip(text: str, limit: int) -> str:
    text = text.replace("\n", "\\n").replace("\r", "\\r")
    return text if len(text) <= limit else text[:limit - 1] + "…"


def kind_of(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "text", int: "an integer",
            float: "a number", bool: "a boolean"}.get(type(value), type(value).__name__)
