"""A results folder cannot be turned against its user (issue 22, item 2): a symbolic link
planted at any name sgsweep writes, moves, locks or truncates inside DIR is refused in one
line naming it (exit 2, no traceback) and the file or folder it points to is untouched; a
tune.json storage outside DIR is written only when named with --storage. DIR itself being
a link is the user's own choice and works. Real files, real commands."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from orchestrator import cli, safefiles
from tests.helpers import SGSWEEP
from tests.test_environment_errors import one_line_error, probe_file

PRECIOUS = b"precious: not sgsweep's to write\n"
TUNE = {"name": "linktune", "task": "probe", "params": {"steps": 2},
        "search": {"work_ms": {"low": 1.0, "high": 2.0}},
        "objective": {"metric": "value", "direction": "minimize"},
        "n_trials": 2, "seeds": 2, "rung_size": 2, "parallelism": 1, "pruner": "none",
        "sampler": {"type": "random", "seed": 3}}


def sgsweep(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run([SGSWEEP, *args], capture_output=True, text=True, timeout=timeout,
                          env=env)


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    """A sweep folder (MLflow store, report) and a tuning folder, as sgsweep makes them."""
    tmp = tmp_path_factory.mktemp("made")
    spec = probe_file(tmp, seeds=2)
    sweep = sgsweep("run", str(spec), "--out", str(tmp / "sweep"), "--num-cpus", "1")
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    tune_spec = tmp / "tune.yaml"
    tune_spec.write_text(yaml.safe_dump(TUNE))
    tuned = sgsweep("tune", str(tune_spec), "--out", str(tmp / "tune"), "--num-cpus", "1",
                    "--tracking-uri", "none", "--no-report")
    assert tuned.returncode == 0, tuned.stderr[-3000:]
    return {"spec": spec, "sweep": tmp / "sweep", "tune_spec": tune_spec, "tune": tmp / "tune"}


@pytest.fixture()
def victim(tmp_path) -> Path:
    path = tmp_path / "victim" / "precious.txt"
    path.parent.mkdir()
    path.write_bytes(PRECIOUS)
    return path


def copy_of(made: dict[str, Path], kind: str, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(made[kind], out, symlinks=True)
    return out


def plant(link: Path, target: Path) -> Path:
    if link.is_dir() and not link.is_symlink():
        shutil.rmtree(link)
    elif link.exists() or link.is_symlink():
        link.unlink()
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    return link


def assert_untouched(victim: Path) -> None:
    assert victim.read_bytes() == PRECIOUS
    assert sorted(p.name for p in victim.parent.iterdir()) == [victim.name]


def refused(code: int, err: str, link: Path) -> None:
    line = one_line_error(code, err)
    assert f"{link}: is a symbolic link" in line, line


def test_a_lock_link_is_refused_by_a_real_run_and_its_target_kept(made, victim,
                                                                     tmp_path) -> None:
    out = copy_of(made, "sweep", tmp_path)
    link = plant(out / ".lock", victim)
    result = sgsweep("run", str(made["spec"]), "--out", str(out))
    refused(result.returncode, result.stderr, link)
    assert_untouched(victim)


# (folder made by, entry planted, link to the victim's folder instead of the file, command)
CASES = [
    ("sweep", "specs/envprobe.yaml", False, "run"),
    ("sweep", "specs", True, "run"),
    ("sweep", "trials", True, "run"),
    ("sweep", "mlflow.db", False, "run"),
    ("sweep", "mlflow.db-journal", False, "run"),
    ("sweep", "mlflow.db", False, "mlflow-sync"),
    ("sweep", ".tracking-id", False, "mlflow-sync"),
    ("sweep", "mlartifacts", True, "mlflow-sync"),
    ("sweep", "report", True, "report"),
    ("sweep", "report/envprobe", True, "report"),
    ("sweep", "report/envprobe/summary.csv", False, "report"),
    ("sweep", "mlflow.db", False, "report"),
    ("tune", "study.journal", False, "tune"),
    ("tune", "tune.json", False, "tune"),
    ("tune", "specs/linktune.yaml", False, "tune"),
]


@pytest.mark.parametrize(("kind", "entry", "to_folder", "command"), CASES,
                         ids=[f"{c[3]}:{c[1]}" for c in CASES])
def test_a_planted_link_is_refused_in_one_line_and_its_target_kept(
        kind, entry, to_folder, command, made, victim, tmp_path, capsys) -> None:
    out = copy_of(made, kind, tmp_path)
    if entry == "study.journal":  # torn last record: the repair would cut the victim
        victim.write_bytes(PRECIOUS + b"no newline")
    expected = victim.read_bytes()
    link = plant(out / entry, victim.parent if to_folder else victim)
    spec = made["tune_spec" if kind == "tune" else "spec"]
    argv = {"run": ["run", str(spec), "--out", str(out), "--num-cpus", "1"],
            "tune": ["tune", str(spec), "--out", str(out), "--num-cpus", "1",
                     "--tracking-uri", "none", "--no-report"],
            "mlflow-sync": ["mlflow-sync", str(out)], "report": ["report", str(out)]}[command]
    refused(cli.main(argv), capsys.readouterr().err, link)
    assert victim.read_bytes() == expected
    assert sorted(p.name for p in victim.parent.iterdir()) == [victim.name]


def test_a_damaged_part_goes_to_quarantine_never_through_a_link(made, victim,
                                                                 tmp_path, capsys) -> None:
    out = copy_of(made, "sweep", tmp_path)
    part = sorted((out / "trials").glob("part-*.parquet"))[0]
    part.write_bytes(part.read_bytes()[:50])  # truncated: `run` moves it to quarantine/
    link = plant(out / "quarantine", victim.parent)
    argv = ["run", str(made["spec"]), "--out", str(out), "--num-cpus", "1"]
    refused(cli.main(argv), capsys.readouterr().err, link)
    assert_untouched(victim)
    link.unlink()
    plant(out / "quarantine" / "trials", victim.parent)
    refused(cli.main(argv), capsys.readouterr().err, out / "quarantine" / "trials")
    assert_untouched(victim)


def test_a_part_that_is_a_link_is_damage_moved_aside_not_followed(made, victim,
                                                                  tmp_path, capsys) -> None:
    out = copy_of(made, "sweep", tmp_path)
    part = sorted((out / "metrics").glob("part-*.parquet"))[0]
    plant(part, victim)
    err = one_line_error(cli.main(["report", str(out)]), capsys.readouterr().err)
    assert f"{part}: a symbolic link, not a part sgsweep wrote" in err
    assert_untouched(victim)


def test_report_files_reach_mlflow_only_inside_dir_and_through_no_link(
        made, victim, tmp_path, capsys) -> None:
    """The artifact location comes from mlflow.db, a file in DIR too: a copy of DIR whose
    store still names the original's folder is refused, as is a link planted in a run's
    artifact folder of a store made here."""
    copy = copy_of(made, "sweep", tmp_path)
    err = one_line_error(cli.main(["report", str(copy)]), capsys.readouterr().err)
    assert f"{copy / 'mlflow.db'}: a run's artifact location" in err, err
    assert f"lies outside {copy}" in err, err
    out = tmp_path / "fresh"
    made_here = sgsweep("run", str(made["spec"]), "--out", str(out), "--num-cpus", "1")
    assert made_here.returncode == 0, made_here.stderr[-3000:]
    reports = sorted((out / "mlartifacts").glob("*/*/artifacts/report"))
    assert reports, "the sweep's report was logged to MLflow"
    link = plant(reports[0], victim.parent)
    refused(cli.main(["report", str(out)]), capsys.readouterr().err, link)
    assert_untouched(victim)


def test_a_tune_json_storage_outside_dir_is_written_only_when_given(made, tmp_path,
                                                                    capsys) -> None:
    out = copy_of(made, "tune", tmp_path)
    outside = tmp_path / "elsewhere.journal"
    shutil.copyfile(out / "study.journal", outside)
    before = outside.read_bytes()
    info = json.loads((out / "tune.json").read_text())
    (out / "tune.json").write_text(json.dumps({**info, "storage": str(outside)}))
    argv = ["tune", str(made["tune_spec"]), "--out", str(out), "--num-cpus", "1",
            "--tracking-uri", "none", "--no-report", "--n-trials", "3"]
    err = one_line_error(cli.main(argv), capsys.readouterr().err)
    assert f"storage {outside} lies outside {out}" in err and "--storage" in err, err
    assert outside.read_bytes() == before
    assert cli.main([*argv, "--storage", str(outside)]) == 0, capsys.readouterr().err
    assert len(outside.read_bytes()) > len(before)  # named on the command line: used


def test_dir_itself_may_be_a_link_to_a_real_folder(made, tmp_path) -> None:
    real = copy_of(made, "sweep", tmp_path)
    link = tmp_path / "results-link"
    link.symlink_to(real)
    result = sgsweep("run", str(made["spec"]), "--out", str(link), "--no-report")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "already recorded" in result.stderr
    synced = sgsweep("mlflow-sync", str(link))
    assert synced.returncode == 0, synced.stderr[-3000:]


def test_safe_writes_replace_names_and_refuse_links_hard_links_and_escapes(tmp_path) -> None:
    root = tmp_path / "dir"
    safefiles.write_text(root, root / "a" / "b.txt", "one")
    safefiles.write_text(root, root / "a" / "b.txt", "two")
    assert (root / "a" / "b.txt").read_text() == "two"
    assert sorted(p.name for p in (root / "a").iterdir()) == ["b.txt"]  # no temporary left
    other = tmp_path / "other.txt"
    other.write_bytes(PRECIOUS)
    os.link(other, root / "a" / "hard.txt")
    with pytest.raises(safefiles.UnsafePath, match="has 2 hard links"):
        os.close(safefiles.open_in_place(root, root / "a" / "hard.txt"))
    with pytest.raises(safefiles.UnsafePath, match="outside the results folder"):
        safefiles.write_text(root, root / ".." / "escape.txt", "x")
    (root / "a" / "link").symlink_to(other)
    with pytest.raises(safefiles.UnsafePath, match="is a symbolic link"):
        safefiles.write_text(root, root / "a" / "link", "x")
    assert other.read_bytes() == PRECIOUS and not (tmp_path / "escape.txt").exists()
