"""The installed `sgsweep` command, as a user runs it (separate processes, real Ray)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from orchestrator.tracking import default_tracking_uri
from tests.mirror import assert_exact_mirror

SGSWEEP = shutil.which("sgsweep", path=str(Path(sys.executable).parent)) or "sgsweep"


@pytest.mark.slow
def test_default_sweep_runs_reports_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = subprocess.run([SGSWEEP, "run", "sweeps/default.yaml", "--out", str(out),
                            "--num-cpus", "2"], capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "480 ok, 0 failed" in first.stdout
    assert f"report:  {out}/report\n" in first.stdout, first.stdout[-2000:]
    assert len(ds.dataset(out / "trials").to_table()) == 480
    assert (out / "report" / "e1-small" / "ratio_vs_d_case-noisy.png").stat().st_size > 10_000
    assert (out / "mlflow.db").exists() and (out / "specs" / "e1-small.yaml").exists()
    # MLflow: one row per configuration (E1's millisecond trials get no seed runs).
    counts = assert_exact_mirror(out, default_tracking_uri(out), seed_runs="none")
    assert counts == {"invocation": 1, "config": 24}

    again = subprocess.run([SGSWEEP, "run", "sweeps/default.yaml", "--out", str(out),
                            "--no-report"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 ok, 0 failed, 480 already recorded" in again.stdout
    assert len(ds.dataset(out / "trials").to_table()) == 480


@pytest.mark.slow
def test_bad_spec_through_the_console_script(tmp_path: Path) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: x\ntask: expert\ngrid: {d: [4], k: [2]}\nseeds: 2\nbogus: 1\n")
    result = subprocess.run([SGSWEEP, "run", str(spec), "--out", str(tmp_path / "o")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "bogus: unknown field" in result.stderr
    assert not (tmp_path / "o").exists()
