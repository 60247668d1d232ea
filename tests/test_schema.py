"""`sgsweep schema` and the validator agree: the JSON Schema editors use is generated from
the validator's own definitions, every shipped sweep and tune file passes it, and every
corpus file the validator refuses for a structural reason (an unknown or misspelt field, a
wrong type, a choice not offered, a name that is not one) is refused by it too. What a
schema cannot say is left to `sgsweep validate` and listed here with the reason."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from orchestrator.cli import main
from orchestrator.schema import file_schema
from orchestrator.spec import SpecError, load_yaml
from tests.test_corpus import CORPUS, FILES, expectations

SWEEPS = Path(__file__).parent.parent / "sweeps"
SHIPPED = sorted(SWEEPS.glob("*.yaml"))
VALIDATOR = jsonschema.Draft202012Validator(file_schema())

# Refused by `validate` for what a JSON Schema does not express:
BEYOND_A_SCHEMA_CLASSES = {
    "machine": "what the cluster can give: only `run` knows",
    "sizes": "trial counts: products of several fields",
    "paths": "a task's own checks of a path",
}
BEYOND_A_SCHEMA_MESSAGES = {
    "finite": "NaN and infinity: YAML's .nan/.inf are numbers to a JSON Schema",
    "the grid": "the grid sampler's size: a product over the search space",
    "grid sampler": "the grid sampler's size: a product over the search space",
    "Optuna trials": "n_trials × seeds: a product of two fields",
    "seeds for best.yaml": "a trial count",
    "at most n_trials": "a relation between two fields",
}
BEYOND_A_SCHEMA_FILES = {
    "values/int-param-as-float.yaml": "JSON has one number type: 4.0 is an integer to it",
}


def load(path: Path):
    return load_yaml(path)  # as `validate` reads it: a file that is not UTF-8 is a SpecError


def structural(path: Path) -> bool:
    message = expectations(path)[1]
    name = str(path.relative_to(CORPUS))
    return (path.parent.name not in BEYOND_A_SCHEMA_CLASSES
            and not any(f in message for f in BEYOND_A_SCHEMA_MESSAGES)
            and name not in BEYOND_A_SCHEMA_FILES)


def test_the_shipped_schema_is_what_sgsweep_schema_writes(tmp_path, capsys) -> None:
    assert main(["schema", "-o", str(tmp_path / "s.json")]) == 0
    written = (tmp_path / "s.json").read_text(encoding="utf-8")
    assert written == (SWEEPS / "schema.json").read_text(encoding="utf-8"), \
        "sweeps/schema.json is stale: run `.venv/bin/sgsweep schema -o sweeps/schema.json`"
    assert json.loads(written) == file_schema()
    jsonschema.Draft202012Validator.check_schema(file_schema())


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_file_passes_the_schema_and_names_it_for_editors(path: Path) -> None:
    errors = [e.message for e in VALIDATOR.iter_errors(load(path))]
    assert not errors, errors[:3]
    assert path.read_text(encoding="utf-8").startswith(
        "# yaml-language-server: $schema=schema.json\n")


PARSED = FILES


@pytest.mark.parametrize("path", PARSED, ids=lambda p: str(p.relative_to(CORPUS)))
def test_the_schema_refuses_what_the_validator_refuses_for_its_structure(path: Path) -> None:
    try:
        raw = load(path)
    except SpecError:  # the YAML reader refuses it before any schema could look
        return
    refused = any(True for _ in VALIDATOR.iter_errors(raw))
    if structural(path):
        assert refused, f"the schema accepts {path.name}: {expectations(path)[1]}"


def test_the_schema_names_every_task_field_with_its_choices() -> None:
    sweep = file_schema()["else"]
    rules = {r["if"]["properties"]["task"]["const"]: r["then"]["properties"]
             for r in sweep["allOf"]}
    bandit = rules["bandit"]["params"]["properties"]
    assert bandit["dataset"]["enum"] == ["digits", "mnist"]
    assert rules["expert"]["grid"]["properties"]["d"]["items"]["type"] == "integer"
    bad = {"name": "x", "task": "expert", "seeds": 2, "params": {"dd": 4}}
    assert any("dd" in e.message for e in VALIDATOR.iter_errors(bad))
