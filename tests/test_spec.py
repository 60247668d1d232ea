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
        (_with(seeds=[1, 1]), "seeds[1]: expected distinct seeds, got 1 again"),
        (_with(seeds=[-1]), "seeds[0]: expected a non-negative integer"),
        (_with(seeds="3"), "seeds: expected a positive integer, {start: S, count: N} or a"),
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
        (_with(tracking_level="trial"),
         "tracking_level: expected one of ['auto', 'config', 'seed'], got 'trial'"),
        (_with(tracking_level=["seed"]), "tracking_level: expected one of"),
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


# Trial ids of shipped sweeps, computed before seeds became ranges (and before any later
# change): resume keys on them, so a change that alters one would re-run recorded results.
# The E2 ids were recomputed, deliberately, when the E2 learners became the reference
# algorithm (docs/e2.md): results of the old algorithm must not count as the new one's.
# The E3 ids likewise when the E3 learners became the reference algorithm (docs/e3.md;
# new config fields lam_schedule, sg_padding, sg_units, maze_seeds, new defaults).
PINNED_IDS = {
    "default.yaml": "2b72c04d530f652a",
    "e1-expert.yaml": "222cb85d86c842f1",
    "e1-leak.yaml": "06657b8893200c61",
    "e2-base-mnist.yaml": "772484acbaf585ed",
    "e2-deviations-digits.yaml": "c99e769f3b5824e5",
    "e2-fidelity-digits.yaml": "9d0b68c938c99cb6",
    "e2-gradmse-digits.yaml": "4caa6287fefefb1b",
    "e2-gradmse-mnist.yaml": "f7c2a5eb9def8d8e",
    "e2-lambda-digits.yaml": "0cf2b9ba2ceb4212",
    "e2-lambda-mnist.yaml": "74b97b79800598b7",
    "e2-lr-digits.yaml": "29cf57ab3b6e28ba",
    "e2-lr-mlp-digits.yaml": "c8d170f70e6d4629",
    "e2-lr-mnist.yaml": "a7b84f9d9be390d4",
    "e2-parents-digits.yaml": "1c48eae26dec586e",
    "e2-parents-mnist.yaml": "65a19106e14d37d6",
    "e2-pflip-digits.yaml": "dd5209258bdfc45c",
    "e2-pflip-mnist.yaml": "699e266d844152d4",
    "e3-deviations.yaml": "8d14198a74f83caa",
    "e3-escape-dynamics.yaml": "a38fb23c46095217",
    "e3-escape-short.yaml": "769b0d4e260c7971",
    "e3-escape.yaml": "8a0c58ff066dd1a7",
    "e3-explore-short.yaml": "fa03e6c4ca2ad88a",
    "e3-explore-dynamics.yaml": "fb9c4c787b84f8b5",
    "e3-explore.yaml": "f06887ead0007cd2",
    "e3-gradquality-short.yaml": "fe741014f124b1e4",
    "e3-reference-check.yaml": "34b556e2880bb1a9",
    "example-quadratic.yaml": "c08fb6ec06498373",
    "smoke.yaml": "6b8dc51e4ca8c751",
}


def test_every_shipped_sweep_file_has_pinned_trial_ids() -> None:
    shipped = {p.name for p in Path("sweeps").glob("*.yaml") if not p.name.startswith("tune-")}
    assert shipped == set(PINNED_IDS), "pin the ids of a new sweep file in PINNED_IDS"


@pytest.mark.parametrize("name", sorted(PINNED_IDS))
def test_trial_ids_of_shipped_sweeps_are_pinned(name: str) -> None:
    import hashlib

    ids = [t.trial_id for b in plan.expand(load_spec(Path("sweeps") / name)) for t in b.trials]
    assert hashlib.sha256(",".join(ids).encode()).hexdigest()[:16] == PINNED_IDS[name]


def test_trial_ids_of_single_trials_are_pinned() -> None:
    from orchestrator.tune_spec import load_tune_spec

    default = plan.expand(load_spec("sweeps/default.yaml"))
    assert [default[0].trials[0].trial_id, default[-1].trials[-1].trial_id] == [
        "14391617a978f2e2", "cb34987eea06e72b"]
    tuned = load_tune_spec("sweeps/tune-e1.yaml")
    (rung,) = plan.expand(tuned.sweep_for({"lam": 0.25}, seeds=tuned.rungs[1]))
    assert [t.trial_id for t in rung.trials] == ["d13487df7b0ca6a5", "b54cebfdc646c85b"]
    (best,) = plan.expand(parse_spec(tuned.best_sweep({"lam": 0.25})))
    assert [best.trials[0].trial_id, best.trials[-1].trial_id, len(best.trials)] == [
        "50c2243e1a42402a", "a1692b45af959781", 20]


def test_seeds_as_a_count_a_range_or_a_list_give_the_same_trials() -> None:
    from orchestrator.spec import DEFAULT_MAX_TRIALS

    def ids(seeds) -> list[str]:
        return [t.trial_id for b in plan.expand(parse_spec(_with(seeds=seeds))) for t in b.trials]

    assert parse_spec(_with(seeds=3)).seeds == range(3)
    assert ids(3) == ids([0, 1, 2]) == ids({"start": 0, "count": 3})
    assert parse_spec(_with(seeds={"start": 5, "count": 2})).seeds == range(5, 7)
    # A huge count is a range: refused by its size, never listed.
    with pytest.raises(SpecError, match=r"1e\+18 seeds\), above the limit of 100,000"):
        parse_spec(_with(seeds=10**18, grid=..., params={"d": 4, "k": 2}), "s.yaml")
    assert parse_spec(_with(seeds=DEFAULT_MAX_TRIALS // 4)).num_trials == DEFAULT_MAX_TRIALS


def test_yaml_anchors_and_merge_keys_still_work_while_repeated_keys_are_refused(
        tmp_path: Path) -> None:
    path = tmp_path / "anchors.yaml"
    path.write_text("name: a\ntask: expert\nbase: &base {d: 4, k: 2, sigma: 0.5}\n"
                    .replace("base: ", "params: ")
                    + "variants:\n  - {<<: *base, sigma: 1.0}\n  - {n: 2}\nseeds: 2\n")
    spec = load_spec(path)
    assert {(c.sigma, c.n) for c in spec.configs} == {(1.0, 1), (0.5, 2)}
    path.write_text("name: a\ntask: expert\nparams: {d: 4, k: 2, d: 5}\nseeds: 2\n")
    with pytest.raises(SpecError, match=r"line 3, column 22: duplicate key 'd' \(first at line 3"):
        load_spec(path)


def test_values_in_errors_are_a_short_prefix_however_large_or_self_similar() -> None:
    layer: list = ["lol"] * 9
    for _ in range(30):  # 9^30 leaves once expanded: only a bounded prefix may be printed
        layer = [layer] * 9
    for spec in (_with(timeout_s=layer), _with(block_size=layer), _with(name=layer),
                 _with(grid={"d": [layer], "k": [2]}), _with(params={"m": "x" * 10**6})):
        with pytest.raises(SpecError) as info:
            parse_spec(spec, "s.yaml")
        assert len(str(info.value)) < 400, str(info.value)[:400]


def test_an_int_field_beyond_64_bits_and_non_finite_text_are_refused() -> None:
    for value in ("nan", " -inf", "Infinity", ".NaN", "1e400"):
        with pytest.raises(SpecError, match="params.sigma: expected a finite number"):
            parse_spec(_with(params={"sigma": value}), "s.yaml")
    assert parse_spec(_with(params={"sigma": " 2.5e-1 "})).configs[0].sigma == 0.25
    with pytest.raises(SpecError, match="params.n: expected an integer of at most 64 bits"):
        parse_spec(_with(params={"n": 2**63}), "s.yaml")


def test_resources_no_node_can_hold_are_named_by_field() -> None:
    from orchestrator.spec import Resources, unsatisfiable

    two_cpus = [{"CPU": 2.0, "memory": 8 * 2**30}]
    assert unsatisfiable(Resources(num_cpus=2), two_cpus) is None
    assert unsatisfiable(Resources(num_cpus=0.5, num_gpus=0.5), [{"CPU": 1, "GPU": 1}]) is None
    assert unsatisfiable(Resources(num_cpus=3), two_cpus) == (
        "resources.num_cpus: a block needs 3 CPUs, but any node has at most 2")
    assert unsatisfiable(Resources(num_gpus=1), two_cpus, "the embedded Ray") == (
        "resources.num_gpus: a block needs 1 GPU, but the embedded Ray has at most 0")
    assert "memory_gb: a block needs 9 GB of memory, but any node has at most 8.0 GB" in (
        unsatisfiable(Resources(memory_gb=9), two_cpus))
    # Each resource exists, never on one node.
    split = [{"CPU": 4}, {"CPU": 1, "GPU": 1}]
    assert unsatisfiable(Resources(num_cpus=2, num_gpus=1), split).startswith(
        "resources: a block needs them all at once")
    assert unsatisfiable(Resources(), []) is not None  # a cluster with no node


def test_the_embedded_ray_is_checked_before_it_starts(tmp_path: Path, capsys) -> None:
    from orchestrator import schedule
    from orchestrator.spec import Resources

    assert schedule.unfit(Resources(num_cpus=2), None, num_cpus=2, num_gpus=0) is None
    assert schedule.unfit(Resources(num_gpus=0.5), None, num_cpus=1, num_gpus=1) is None
    problem = schedule.unfit(Resources(num_cpus=1, num_gpus=1), None, num_cpus=2, num_gpus=0)
    assert problem.startswith("resources.num_gpus: a block needs 1 GPU, but the embedded Ray "
                              "has at most 0"), problem
    spec = tmp_path / "big.yaml"
    spec.write_text("name: big\ntask: probe\nseeds: 2\nresources: {num_cpus: 3}\n")
    out = tmp_path / "out"
    assert main(["run", str(spec), "--out", str(out), "--num-cpus", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {spec}: resources.num_cpus: a block needs 3 CPUs, but the "
                          "embedded Ray has at most 2") and err.count("\n") == 1, err
    assert not out.exists()
    assert main(["validate", str(spec)]) == 0  # validate knows no machine


def test_probe_markers_stay_under_the_temporary_folder(monkeypatch) -> None:
    import contextlib
    import shutil
    import uuid

    from tasks.base import ConfigError
    from tasks.probe import ProbeConfig, crash_marker_dir, run_trial

    for bad in ("/tmp/x", "../x", "a/../../b", "a//b", "", "a" * 201):
        with pytest.raises(ConfigError, match="expected a relative folder name"):
            ProbeConfig(crash_seeds=(1,), crash_once_dir=bad).validate()

    class Crashed(Exception):
        pass

    def crash(code: int) -> None:
        raise Crashed(code)

    monkeypatch.setattr("tasks.probe.os._exit", crash)
    name = f"test/{uuid.uuid4().hex}"
    cfg = ProbeConfig(crash_seeds=(1,), crash_once_dir=name)
    cfg.validate()
    try:
        with pytest.raises(Crashed):
            run_trial(cfg, 1)
        assert [p.name for p in crash_marker_dir(name).iterdir()] == ["crashed-1"]
        assert run_trial(cfg, 1).final()["value"] == run_trial(ProbeConfig(), 1).final()["value"]
    finally:
        shutil.rmtree(crash_marker_dir(name))
        with contextlib.suppress(OSError):  # other runs of this test may share it
            crash_marker_dir(name).parent.rmdir()


@pytest.mark.slow
def test_a_cluster_without_a_node_that_fits_is_refused_after_a_bounded_wait() -> None:
    import json
    import subprocess
    import sys

    from tests.helpers import isolated, isolated_env

    script = Path(__file__).with_name("unfit_on_cluster.py")
    result = subprocess.run(isolated([sys.executable, str(script)]), env=isolated_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["fits"] is None
    assert summary["too_big"].startswith("resources.num_cpus: a block needs 4 CPUs, but any "
                                         "node of the cluster at 127.0.0.1:"), summary
    assert "has at most 1 (after waiting 4 s for one to join)" in summary["too_big"]
    assert 4 <= summary["waited_s"] < 30 and len(summary["waiting"]) == 1


def test_a_timeout_at_its_limit_still_arms_the_timer_for_the_largest_block() -> None:
    from orchestrator.execute import _timed
    from orchestrator.spec import DEFAULT_MAX_TRIALS, MAX_TIMEOUT_S

    # A block of S seeds gets S times timeout_s; setitimer overflows past ~9e9 s.
    assert _timed(lambda: 7, MAX_TIMEOUT_S * DEFAULT_MAX_TRIALS) == 7


@pytest.mark.parametrize("command", ["run", "tune", "validate"])
def test_max_trials_help_states_the_default_the_parser_uses(command, capsys) -> None:
    from orchestrator.spec import DEFAULT_MAX_TRIALS

    with pytest.raises(SystemExit):
        main([command, "-h"])
    assert f"default {DEFAULT_MAX_TRIALS:,}" in " ".join(capsys.readouterr().out.split())


def test_a_block_the_task_estimates_too_big_for_any_node_is_refused_in_one_line() -> None:
    from orchestrator.spec import unsatisfiable

    spec = parse_spec({"name": "big", "task": "expert", "seeds": 2,
                       "params": {"d": 8, "k": 2, "m": 10**9}})
    assert spec.resources.memory_gb == 0 and spec.resources.estimated_memory_gb > 10_000
    problem = unsatisfiable(spec.resources, [{"CPU": 64, "memory": 2**40}], "any node")
    assert problem.startswith("params: a block needs about ") and "m=1000000000" in problem
    small = parse_spec({"name": "small", "task": "expert", "seeds": 20,
                        "params": {"d": 12, "k": 4}})
    assert small.resources.estimated_memory_gb < 0.1  # the paper's E1 sizes fit anywhere
    assert unsatisfiable(small.resources, [{"CPU": 2, "memory": 2**30}]) is None


def test_memory_a_machine_has_but_its_embedded_ray_cannot_give_is_refused(tmp_path, capsys):
    # 95% of the physical memory: below it, so a check against physical memory passes,
    # but above what the embedded Ray's "memory" resource will be (about 70% of what is
    # available), where Ray would leave the block pending forever.
    import os

    from orchestrator.cli import main

    physical_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    spec = tmp_path / "m.yaml"
    spec.write_text(f"name: m\ntask: probe\nseeds: 1\n"
                    f"resources: {{memory_gb: {int(physical_gb * 0.95)}}}\n")
    assert main(["run", str(spec), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "resources.memory_gb: a block needs" in err and "the embedded Ray has at most" in err
    assert err.count("\n") == 1 and not (tmp_path / "out").exists()
