"""Environment problems are one line, exit 2, no traceback: a read-only or full file system
(real tmpfs mounts in a private mount namespace), `.lock` being a folder, `--out` under a
regular file, a tune.json or Optuna journal that is not what `sgsweep tune` wrote, and a
storage URL planted in tune.json (never opened, nothing created)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from orchestrator import cli
from orchestrator.record import ResultStore

SGSWEEP = str(Path(sys.executable).parent / "sgsweep")


def probe_file(tmp: Path, seeds: int = 10) -> Path:
    spec = tmp / "probe.yaml"
    spec.write_text(f"name: envprobe\ntask: probe\nparams: {{steps: 20}}\n"
                    f"grid: {{label: [a, b, c, d]}}\nseeds: {seeds}\nblock_size: 1\n")
    return spec


def one_line_error(code: int, err: str, expected_code: int = 2) -> str:
    assert code == expected_code, err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert "Traceback" not in err
    return err


def in_mount(tmp: Path, options: str, script: str, timeout: float) -> subprocess.CompletedProcess:
    """`script` in a private mount namespace where MNT is a fresh tmpfs with `options`."""
    mnt = tmp / "mnt"
    mnt.mkdir()
    check = subprocess.run(["unshare", "--mount", "true"], capture_output=True)
    if check.returncode != 0:
        pytest.skip(f"no private mount namespace here: {check.stderr.decode().strip()}")
    return subprocess.run(
        ["unshare", "--mount", "sh", "-c",
         f"mount -t tmpfs -o {options} tmpfs {mnt} && MNT={mnt} && {script}"],
        capture_output=True, text=True, timeout=timeout)


def test_run_into_a_read_only_folder_is_one_line(tmp_path) -> None:
    spec = probe_file(tmp_path)
    result = in_mount(tmp_path, "size=1m,ro", f"exec {SGSWEEP} run {spec} --out $MNT/out "
                      "--tracking-uri none --no-report", timeout=300)
    err = one_line_error(result.returncode, result.stderr)
    assert "Read-only file system" in err and "choose a writable --out" in err


@pytest.mark.slow
@pytest.mark.parametrize("tracking, size", [("none", "32k"), ("default", "160k")])
def test_a_full_disk_stops_run_in_one_line_and_keeps_every_recorded_trial(
        tracking, size, tmp_path) -> None:
    """A tiny tmpfs fills while trials are recorded: one error line, exit 2, MLflow (its
    SQLite store on the same disk) one warning line at most, and every part that landed is
    intact."""
    spec = probe_file(tmp_path, seeds=30)
    copy = tmp_path / "copy"
    uri = "--tracking-uri none" if tracking == "none" else ""
    result = in_mount(tmp_path, f"size={size}", f"{SGSWEEP} run {spec} --out $MNT/out {uri} "
                      f"--num-cpus 1 --no-report; echo rc=$? >&2; cp -a $MNT/out {copy}",
                      timeout=900)
    err, rc = result.stderr.rsplit("rc=", 1)
    assert int(rc) == 2, result.stderr[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "No space left on device" in last, err[-3000:]
    assert "free some space" in last and "Traceback" not in err, err[-3000:]
    assert sum("mlflow" in line.lower() for line in err.splitlines()) <= 1, err[-3000:]
    store = ResultStore(copy)
    store.prepare()  # what an interrupted write left is cleared, as on the next run
    assert store.damage(deep=True) == []
    assert set(store.recorded().values()) <= {"ok"}
    if tracking == "none":  # Parquet alone filled the disk: parts did land before
        assert len(store.recorded()) >= 4


def test_a_folder_where_the_lock_file_goes_is_one_line(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    (out / ".lock").mkdir(parents=True)
    (out / "trials").mkdir()
    for argv in (["run", str(probe_file(tmp_path)), "--out", str(out), "--tracking-uri",
                  "none"], ["mlflow-sync", str(out)]):
        err = one_line_error(cli.main(argv), capsys.readouterr().err)
        assert f"{out}/.lock: Is a directory" in err and "move it away" in err, err


def test_out_under_a_regular_file_is_one_line(tmp_path, capsys) -> None:
    (tmp_path / "file").write_text("x")
    code = cli.main(["run", str(probe_file(tmp_path)), "--out", str(tmp_path / "file" / "out"),
                     "--tracking-uri", "none"])
    err = one_line_error(code, capsys.readouterr().err)
    assert "Not a directory" in err and "choose another --out" in err


def tuning_dir(tmp: Path, info: object) -> Path:
    out = tmp / "tuned"
    (out / "trials").mkdir(parents=True)
    (out / "tune.json").write_text(info if isinstance(info, str) else json.dumps(info))
    return out


@pytest.mark.parametrize("info, words", [
    ("{not json", "tune.json: not readable as JSON"),
    ([1, 2], "tune.json: expected a JSON object"),
    ({"study": "../../x", "storage": "", "objective": {"metric": "m"}}, "tune.json: study"),
    ({"study": "s", "spec": "../../etc/passwd", "storage": "", "objective": {"metric": "m"}},
     "tune.json: spec '../../etc/passwd' is not specs/s.yaml"),
    ({"study": "s", "storage": "", "objective": None}, "tune.json: objective"),
])
def test_an_invalid_tune_json_is_one_line(info, words, tmp_path, capsys) -> None:
    out = tuning_dir(tmp_path, info)
    for command in ("status", "report", "mlflow-sync"):
        err = one_line_error(cli.main([command, str(out)]), capsys.readouterr().err)
        assert words in err, (command, err)


@pytest.mark.parametrize("planted", ["sqlite:///{evil}", "sqlite:////{evil}", "{evil}",
                                     "http://127.0.0.1:9/{evil}", "sqlite://"])
def test_a_storage_url_planted_in_tune_json_is_refused_before_it_is_opened(
        planted, tmp_path, capsys) -> None:
    evil = tmp_path / f"evil-{uuid.uuid4().hex}.db"
    out = tuning_dir(tmp_path, {"study": "s", "storage": planted.format(evil=evil),
                                "objective": {"metric": "m"}})
    for command in ("status", "report"):
        err = one_line_error(cli.main([command, str(out)]), capsys.readouterr().err)
        assert "tune.json: storage" in err and "is not DIR's journal" in err, err
    assert not evil.exists() and not list(tmp_path.glob("**/evil-*"))


def test_a_garbled_optuna_journal_line_names_the_journal(tmp_path, capsys) -> None:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    out = tuning_dir(tmp_path, {"study": "s", "storage": "", "objective": {"metric": "m"}})
    journal = out / "study.journal"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="s", storage=JournalStorage(
        JournalFileBackend(str(journal))))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    lines = journal.read_text().splitlines(keepends=True)
    lines[1] = "{garbled\n"
    journal.write_text("".join(lines))
    err = one_line_error(cli.main(["status", str(out)]), capsys.readouterr().err)
    assert err.startswith(f"error: {journal}: "), err


def test_a_planted_storage_naming_some_other_sqlite_file_leaves_it_untouched(
        tmp_path, capsys) -> None:
    import sqlite3

    other = tmp_path / "other.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE notes (x)")
    before = other.read_bytes()
    out = tuning_dir(tmp_path, {"study": "s", "storage": f"sqlite:///{other}",
                                "objective": {"metric": "m"}})
    err = one_line_error(cli.main(["status", str(out)]), capsys.readouterr().err)
    assert "tune.json: storage" in err
    assert other.read_bytes() == before
