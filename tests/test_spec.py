"""Sweep files: every mistake is one line naming the field, exit code 2, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator import plan
from orchestrator.cli import main
from orchestrator.spec import SpecError, load_spec, parse_spec

GOOD = {
    "name": "t", "task": "expert", "params": {"m": 3},
    "grid": {"d": [4, 5], "k": [2], "case": ["noisy", "partial"]}, "seeds": 3,
}


def _with(**changes) -> dict:
    spec = {**GOOD, **changes}
    return {k: v for k, v in spec.items() if v is not ...}


def test_good_spec_expands_to_grid_times_seeds_with_stable_ids() -> None:
    spec = parse_spec(GOOD)
    assert spec.num_trials == 2 * 2 * 3
    blocks = plan.expand(spec)
    ids = [t.trial_id for b in blocks for t in b.trials]
    assert len(set(ids)) == len(ids) == 12
    again = [t.trial_id for b in plan.expand(parse_spec(dict(GOOD))) for t in b.trials]
    assert ids == again
    # The id is a function of the resolved config: an explicit default changes nothing.
    explicit = parse_spec(_with(params={"m": 3, "n": 1}))
    assert [t.trial_id for b in plan.expand(explicit) for t in b.trials] == ids


def test_growing_the_grid_keeps_existing_trial_ids() -> None:
    small = {t.trial_id for b in plan.expand(parse_spec(GOOD)) for t in b.trials}
    grown = parse_spec(_with(grid={"d": [4, 5, 6], "k": [2], "case": ["noisy", "partial"]},
                             seeds=[0, 1, 2, 3]))
    big = {t.trial_id for b in plan.expand(grown) for t in b.trials}
    assert small < big and len(big) == 3 * 2 * 4


def test_variants_combine_with_the_grid() -> None:
    spec = parse_spec(_with(variants=[{"n": 1}, {"n": 2, "sigma": 1.0}]))
    assert len(spec.configs) == 2 * 4
    assert {(c.n, c.sigma) for c in spec.configs} == {(1, 0.5), (2, 1.0)}


def test_numbers_written_like_5e_3_are_read_as_floats() -> None:
    spec = parse_spec(_with(params={"sigma": "5e-3"}))
    assert spec.configs[0].sigma == 0.005


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (_with(colour="red"), "colour: unknown field"),
        (_with(task="nope"), "task: unknown task 'nope'"),
        (_with(name="bad name"), "name: expected letters"),
        (_with(seeds=...), "seeds: missing (required)"),
        (_with(seeds=0), "seeds: expected a positive number"),
        (_with(seeds=[1, 1]), "seeds: expected distinct seeds"),
        (_with(seeds=[-1]), "seeds[0]: expected a non-negative integer"),
        (_with(seeds="3"), "seeds: expected a positive integer or a non-empty list"),
        (_with(grid={}), "grid: expected a non-empty mapping"),
        (_with(grid={"d": []}), "grid.d: expected a non-empty list"),
        (_with(grid={"d": 4}), "grid.d: expected a non-empty list of values, got an integer"),
        (_with(grid={"d": [4, "x"], "k": [2]}), "grid.d[1]: expected an integer, got 'x'"),
        (_with(grid={"d": [4, 4], "k": [2]}), "grid.d[1]: duplicate value 4"),
        (_with(grid={"d": [4], "k": [2], "case": ["loud"]}),
         "grid.case[0]: expected one of ['noisy', 'activation', 'partial'], got 'loud'"),
        (_with(grid={"d": [4], "k": [9]}), "grid.k: expected 1 <= k <= d = 4, got 9"),
        (_with(grid={"d": [4], "k": [2], "zeta": [1]}), "grid.zeta: unknown parameter"),
        (_with(params={"m": 3, "d": 4}), "grid.d: also set in params"),
        (_with(params={"sigma": -1.0}), "params.sigma: expected a std >= 0"),
        (_with(params={"sigma": True}), "params.sigma: expected a number, got True"),
        (_with(params={"lams": [0.5, 2]}), "params.lams: expected values in [0, 1]"),
        (_with(params={"lams": 0.5}), "params.lams: expected a list of numbers, got a number"),
        (_with(params=[1]), "params: expected a mapping, got a list"),
        (_with(grid={"k": [2]}), "params.d: missing; task 'expert' requires it"),
        (_with(variants=[]), "variants: expected a non-empty list"),
        (_with(variants=[{"d": 4}]), "variants[0].d: also swept in grid"),
        (_with(block_size=0), "block_size: expected a positive integer or 'auto'"),
        (_with(resources={"gpus": 1}), "resources.gpus: unknown"),
        (_with(resources={"num_gpus": -1}), "resources.num_gpus: expected a number >= 0"),
        (_with(params={"seed": 1}), "params.seed: reserved column name"),
        ([1, 2], "expected a mapping of sweep fields, got a list"),
    ],
)
def test_invalid_specs_are_rejected_with_the_field_named(spec, expected: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(spec, "s.yaml")
    message = str(info.value)
    assert message.startswith("s.yaml: ")
    assert expected in message, message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: t\ntask: expert\nseeds: [1\n", "not valid YAML at line"),
        ("just a string\n", "expected a mapping of sweep fields, got text"),
        ("", "expected a mapping of sweep fields, got nothing"),
    ],
)
def test_cli_rejects_bad_files_with_one_line_exit_2_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture, text: str, expected: str
) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text(text)
    out = tmp_path / "out"
    assert main(["run", str(spec), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {spec}: ") and expected in err and "\n" not in err
    assert not out.exists()


def test_cli_invalid_field_exit_2_nothing_written(tmp_path: Path, capsys) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: t\ntask: expert\ngrid: {d: [4], k: [7]}\nseeds: 2\n")
    out = tmp_path / "out"
    assert main(["run", str(spec), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: {spec}: grid.k: expected 1 <= k <= d = 4, got 7 "
                   "(at grid point d=4, k=7)")
    assert not out.exists()


def test_cli_missing_file_and_missing_results(tmp_path: Path, capsys) -> None:
    assert main(["run", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert "no such sweep file" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "no results here" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_shipped_sweep_files_are_valid() -> None:
    from orchestrator.tune_spec import load_tune_spec

    for path in sorted(Path("sweeps").glob("*.yaml")):
        if path.name.startswith("tune-"):  # tune files (`sgsweep tune`)
            load_tune_spec(path)
        else:  # the MNIST sweeps too: `make install` put the official MNIST in place
            load_spec(path)
    full = load_spec("sweeps/e1-expert.yaml")
    assert full.num_trials == 9 * 3 * 4 * 3 * 20


@pytest.mark.parametrize(
    ("argv", "expected"),
    [(["run", "s.yaml", "--out", "o", "--num-cpus", "0"],
      "error: sgsweep run: argument --num-cpus: expected a positive integer, got '0'"),
     (["run", "s.yaml", "--out", "o", "--trial-timeout", "x"],
      "error: sgsweep run: argument --trial-timeout: expected a number > 0, got 'x'"),
     (["run", "s.yaml"], "error: sgsweep run: the following arguments are required: --out"),
     (["frobnicate"], "error: sgsweep: argument command: invalid choice: 'frobnicate'")],
)
def test_bad_command_lines_are_one_line_exit_2(argv, expected, capsys, tmp_path) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and err.startswith(expected), err
