"""A half-created MLflow store is rebuilt from Parquet (issue 22, item 3). MLflow fills a
new SQLite store in one pass (tables, then its migrations); a disk that fills, or a kill,
in that pass leaves a store every later open fails on ("table ... already exists"). The
next `sgsweep run`, `tune` or `mlflow-sync` names it in one line, sets it aside and the
mirror is written again from Parquet, exactly. Made for real: MLflow's own creation cut by
a file size limit (EFBIG: SQLite's "database or disk is full", deterministic) and by a
real full tmpfs."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from orchestrator.tracking import default_tracking_uri
from orchestrator.tracking.mlflow_tracker import store_problem
from tests.helpers import SGSWEEP
from tests.mirror import assert_exact_mirror
from tests.test_environment_errors import in_mount, probe_file
from tests.test_results_folder_links import TUNE, sgsweep

MAKE_STORE = """
import signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
from mlflow import MlflowClient
MlflowClient(tracking_uri=f"sqlite:///{sys.argv[1]}").search_experiments()
"""


def half_created_store(db: Path, max_bytes: int) -> None:
    """MLflow's own store creation, cut where the file would outgrow `max_bytes`."""
    if shutil.which("prlimit") is None or not hasattr(signal, "SIGXFSZ"):
        pytest.skip("needs prlimit (util-linux) and SIGXFSZ to cut a write at a file size")
    result = subprocess.run(
        ["prlimit", f"--fsize={max_bytes}", sys.executable, "-c", MAKE_STORE, str(db)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode != 0, result.stderr[-2000:]
    assert "disk is full" in result.stderr or "disk I/O error" in result.stderr, \
        result.stderr[-2000:]
    assert db.stat().st_size <= max_bytes


@pytest.fixture(scope="module")
def parquet_only(tmp_path_factory) -> tuple[Path, Path]:
    """(sweep file, DIR) with results in Parquet and no MLflow store yet."""
    tmp = tmp_path_factory.mktemp("parquet")
    spec = probe_file(tmp, seeds=3)
    result = sgsweep("run", str(spec), "--out", str(tmp / "out"), "--num-cpus", "1",
                     "--tracking-uri", "none", "--no-report")
    assert result.returncode == 0, result.stderr[-3000:]
    return spec, tmp / "out"


def rebuilt_line(stderr: str, db: Path) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith(f"{db}: ")]
    assert len(lines) == 1, stderr[-3000:]
    assert "a new store is made" in lines[0] and "from Parquet" in lines[0], lines[0]
    return lines[0]


# Cut in MLflow's first step (its tables: MLflow would finish them itself) or in its
# migrations (every later open fails: the case).
@pytest.mark.parametrize(("max_bytes", "mlflow_fails_after"), [(12_288, False), (300_000, True)])
def test_mlflow_sync_rebuilds_a_store_whose_creation_hit_a_full_disk(
        max_bytes, mlflow_fails_after, parquet_only, tmp_path) -> None:
    _, made = parquet_only
    out = tmp_path / "out"
    shutil.copytree(made, out)
    db = out / "mlflow.db"
    half_created_store(db, max_bytes)
    problem = store_problem(db)
    assert problem is not None and problem[0].startswith("half-created"), problem
    if mlflow_fails_after:  # what the user met before: MLflow cannot open it again
        broken = tmp_path / "broken.db"
        shutil.copyfile(db, broken)
        again = subprocess.run([sys.executable, "-c", MAKE_STORE, str(broken)],
                               capture_output=True, text=True, timeout=300)
        assert again.returncode != 0 and "already exists" in again.stderr, again.stderr[-2000:]

    synced = sgsweep("mlflow-sync", str(out))
    assert synced.returncode == 0, synced.stderr[-3000:]
    line = rebuilt_line(synced.stderr, db)
    assert "half-created" in line and "removed" in line, line
    assert "--tracking-uri" not in synced.stderr
    counts = assert_exact_mirror(out, default_tracking_uri(out))
    assert counts.get("config") == 4, counts
    resynced = sgsweep("mlflow-sync", str(out))
    assert resynced.returncode == 0 and f"{db}: " not in resynced.stderr, resynced.stderr


def test_a_plain_rerun_rebuilds_a_half_created_store_and_a_garbled_one_is_kept(
        parquet_only, tmp_path) -> None:
    spec, made = parquet_only
    out = tmp_path / "out"
    shutil.copytree(made, out)
    db = out / "mlflow.db"
    half_created_store(db, 100_000)
    rerun = sgsweep("run", str(spec), "--out", str(out), "--num-cpus", "1", "--no-report")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "half-created" in rebuilt_line(rerun.stderr, db)
    assert "already exists" not in rerun.stderr and "warning" not in rerun.stderr
    assert_exact_mirror(out, default_tracking_uri(out))

    garbage = b"not a database, but maybe someone's notes\n" * 100
    db.write_bytes(garbage)
    synced = sgsweep("mlflow-sync", str(out))
    assert synced.returncode == 0, synced.stderr[-3000:]
    assert "not an SQLite database; moved to" in rebuilt_line(synced.stderr, db)
    kept = list((out / "quarantine").glob("mlflow*.db"))
    assert [p.read_bytes() for p in kept] == [garbage]
    fresh = tmp_path / "fresh"  # a new URI: this process's MLflow caches the store per URI
    shutil.copytree(out, fresh)
    assert_exact_mirror(fresh, default_tracking_uri(fresh))


def test_mlflow_sync_of_a_tuning_folder_rebuilds_a_half_created_store(tmp_path) -> None:
    spec = tmp_path / "tune.yaml"
    spec.write_text(yaml.safe_dump(TUNE))
    out = tmp_path / "out"
    tuned = sgsweep("tune", str(spec), "--out", str(out), "--num-cpus", "1",
                    "--tracking-uri", "none", "--no-report")
    assert tuned.returncode == 0, tuned.stderr[-3000:]
    db = out / "mlflow.db"
    half_created_store(db, 300_000)
    synced = sgsweep("mlflow-sync", str(out))
    assert synced.returncode == 0, synced.stderr[-3000:]
    assert "half-created" in rebuilt_line(synced.stderr, db)
    assert f"logged {TUNE['n_trials']} Optuna trial runs" in synced.stdout, synced.stdout


@pytest.mark.slow
def test_a_real_full_tmpfs_during_store_creation_then_space_freed(parquet_only,
                                                                  tmp_path) -> None:
    """The issue's case: the disk fills while MLflow creates DIR's store (exit 2, one line
    naming the store); once space is freed, a plain mlflow-sync rebuilds it."""
    _, made = parquet_only
    copy = tmp_path / "copy"
    script = (f"cp -a {made} $MNT/out && (cat /dev/zero > $MNT/fill 2>/dev/null; "
              "truncate -s -150K $MNT/fill; "
              f"{SGSWEEP} mlflow-sync $MNT/out; echo rc=$? >&2; "
              "rm $MNT/fill; "
              f"{SGSWEEP} mlflow-sync $MNT/out; echo rc=$? >&2; cp -a $MNT/out {copy})")
    result = in_mount(tmp_path, "size=16m", script, timeout=600)
    first, second, _ = result.stderr.split("rc=")
    assert first.startswith(f"error: {tmp_path}/mnt/out/mlflow.db: "), result.stderr[-3000:]
    assert "disk is full" in first and first.count("\n") == 1, result.stderr[-3000:]
    assert second.startswith("2\n") and result.stderr.rstrip().endswith("rc=0"), result.stderr
    assert "half-created" in rebuilt_line(second, tmp_path / "mnt" / "out" / "mlflow.db")
    assert_exact_mirror(copy, default_tracking_uri(copy))

