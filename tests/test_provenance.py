"""Provenance (DIR/invocations/, MLflow tags, the report header and its mixed-version
warning) and failed trials' logs (DIR/logs/, `sgsweep logs`, the status pointer), with a
real `sgsweep run` of the probe task on the embedded Ray."""

from __future__ import annotations

import importlib.metadata
import logging
import os
import shutil
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from orchestrator.cli import main
from orchestrator.execute import LOG_TAIL_BYTES, captured_output, trial_log
from orchestrator.record import HARDWARE_COLUMNS, ResultStore, _atomic_write
from orchestrator.report import write_report
from orchestrator.runner import run_sweep
from orchestrator.spec import load_spec
from tests.helpers import SGSWEEP, probe_spec, quiet, runs_by_role, trials_of

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def failed_run(ray_cluster, tmp_path_factory) -> Path:
    """A probe sweep whose seed 1 fails in each of its 4 configs."""
    tmp = tmp_path_factory.mktemp("provenance")
    spec = probe_spec(tmp, seeds=3, steps=3, fail_seeds="[1]")
    out = tmp / "out"
    summary = run_sweep(load_spec(spec), quiet(out_dir=out, spec_path=spec))
    assert (summary.ok, summary.failed) == (8, 4)
    return out


def _failed_ids(out: Path) -> list[str]:
    trials = trials_of(out)
    return sorted(trials[trials.status == "failed"].trial_id)


def test_one_invocation_row_that_every_trial_row_joins(failed_run) -> None:
    (row,) = ResultStore(failed_run).read_invocations()
    trials = trials_of(failed_run)
    assert set(trials.invocation) == {row["invocation"]}
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    assert row["git_commit"] == head and row["code_version"].startswith(head[:12])
    dirty = bool(subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain",
                                 "--untracked-files=no"], capture_output=True, text=True,
                                check=True).stdout.strip())
    assert row["git_dirty"] is dirty and ("+dirty." in row["code_version"]) is dirty
    for name in ("torch", "numpy", "ray", "mlflow", "optuna", "pyarrow", "popgym"):
        assert row[name] == importlib.metadata.version(name)
    assert row["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert row["command"] == "run" and row["sweep"] == "probe" and row["cpu_model"]
    assert row["torch_threads"] >= 1 and row["host"]
    # where each trial ran: the worker's host, device, no GPU here, its CPU capability
    assert (trials.device == "cpu").all() and (trials.gpu == "").all()
    assert trials.node.str.len().gt(0).all()
    assert (trials.cpu_capability == row["cpu_capability"]).all()


def test_the_invocation_run_carries_provenance_tags(failed_run) -> None:
    (row,) = ResultStore(failed_run).read_invocations()
    (run,) = runs_by_role(failed_run, "probe")["invocation"]
    tags = run.data.tags
    assert tags["sgsweep.invocation"] == row["invocation"]
    assert tags["mlflow.source.git.commit"] == row["git_commit"]
    assert tags["sgsweep.code_version"] == row["code_version"]
    assert tags["sgsweep.cpu_capability"] == row["cpu_capability"]
    assert tags["sgsweep.version.torch"] == row["torch"]
    assert tags["sgsweep.git_dirty"] == str(row["git_dirty"]).lower()


def test_a_failed_trial_keeps_its_traceback_and_ok_trials_no_log(failed_run) -> None:
    failed = _failed_ids(failed_run)
    assert sorted(p.stem for p in (failed_run / "logs").glob("*.log")) == failed
    text = (failed_run / "logs" / f"{failed[0]}.log").read_text()
    assert "Traceback (most recent call last)" in text
    assert 'raise RuntimeError(f"probe: seed {seed} fails on purpose")' in text
    assert "RuntimeError: probe: seed 1 fails on purpose" in text
    assert "During handling" not in text  # the seed's own traceback, not its block's


def test_logs_command_prints_one_or_all_and_status_points_to_it(failed_run, capsys) -> None:
    failed = _failed_ids(failed_run)
    assert main(["logs", str(failed_run), failed[0]]) == 0
    assert capsys.readouterr().out == (failed_run / "logs" / f"{failed[0]}.log").read_text()
    assert main(["logs", str(failed_run), "--failed"]) == 0
    out = capsys.readouterr().out
    assert all(f"trial {tid} " in out for tid in failed) and out.count("Traceback (most") >= 4
    assert main(["status", str(failed_run)]) == 0
    assert f"sgsweep logs {failed_run} --failed" in capsys.readouterr().out
    ok = sorted(set(trials_of(failed_run).trial_id) - set(failed))[0]
    assert main(["logs", str(failed_run), ok]) == 2
    assert "succeeded" in capsys.readouterr().err
    done = subprocess.run([SGSWEEP, "logs", str(failed_run), "0123456789abcdef"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "no trial '0123456789abcdef'" in done.stderr


def test_report_header_shows_provenance_and_warns_on_mixed_versions(
        failed_run, tmp_path, caplog) -> None:
    out = tmp_path / "out"
    shutil.copytree(failed_run, out)
    (row,) = ResultStore(out).read_invocations()
    with caplog.at_level(logging.WARNING):
        summary = (write_report(out, tracking_uri="") / "probe" / "summary.md").read_text()
    assert summary.startswith("# Report: sweep probe\n\n## Provenance\n")
    assert f"invocation `{row['invocation']}`" in summary
    assert f"code {row['code_version']}" in summary and f"torch {row['torch']}" in summary
    assert "Warning" not in summary and not caplog.records

    # A second invocation (--retry-failed) from the same code: still no warning ...
    again = run_sweep(load_spec(out / "specs" / "probe.yaml"),
                      quiet(out_dir=out, retry_failed=True, tracking_uri=""))
    assert again.failed == 4
    rows = ResultStore(out).read_invocations()
    assert len(rows) == 2 and set(trials_of(out).invocation) == {r["invocation"] for r in rows}
    write_report(out, tracking_uri="")
    assert "Warning" not in (out / "report" / "probe" / "summary.md").read_text()
    # ... but the same invocation recorded from another commit and CPU is warned about.
    second = next(r for r in rows if r["invocation"] != row["invocation"])
    ResultStore(out).write_invocation({**second, "git_commit": "f" * 40,
                                       "code_version": "ffffffffffff"})
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        summary = (write_report(out, tracking_uri="") / "probe" / "summary.md").read_text()
    assert "> **Warning:** sweep probe: its trials come from 2 code versions (" in summary
    assert "ffffffffffff" in summary and row["code_version"] in summary
    assert any("2 code versions" in r.getMessage() for r in caplog.records)


def test_mixed_cpu_capabilities_are_warned_about(failed_run, tmp_path) -> None:
    """One trial recorded as a worker with another torch CPU capability records it."""
    out = tmp_path / "out"
    shutil.copytree(failed_run, out)
    here = torch.backends.cpu.get_cpu_capability()
    other = "DEFAULT" if here != "DEFAULT" else "AVX2"
    part = sorted((out / "trials").glob("part-*.parquet"))[0]
    table = pq.read_table(part)
    values = [other] + [here] * (table.num_rows - 1)
    table = table.set_column(table.schema.get_field_index("cpu_capability"), "cpu_capability",
                             pa.array(values, pa.string()))
    _atomic_write(table, out, part)
    summary = (write_report(out, tracking_uri="") / "probe" / "summary.md").read_text()
    assert (f"> **Warning:** sweep probe: its trials ran on CPUs of 2 torch capabilities "
            f"({', '.join(sorted([here, other]))}); seeded results are bit-identical per "
            "machine only") in summary


def test_parts_written_before_the_hardware_columns_still_read(failed_run, tmp_path) -> None:
    out = tmp_path / "out"
    shutil.copytree(failed_run, out)
    old = sorted((out / "trials").glob("part-*.parquet"))[0]
    table = pq.read_table(old)
    _atomic_write(table.drop_columns([name for name, _ in HARDWARE_COLUMNS]), out, old)
    store = ResultStore(out)
    assert store.damage(deep=True) == []
    latest = store.latest()
    assert len(latest) == 12
    if "gpu" in latest:  # other parts have it: the old part's rows read as null
        assert latest.cpu_capability.isna().sum() == table.num_rows
    summary = (write_report(out, tracking_uri="") / "probe" / "summary.md").read_text()
    assert "## Provenance" in summary and "Warning" not in summary


def test_captured_output_keeps_a_bounded_tail_and_redirects_nothing(capfd) -> None:
    """stdout and stderr are files here (pytest's), as in a Ray worker (its log files)."""
    with captured_output() as output:
        os.write(1, b"a" * (3 * LOG_TAIL_BYTES))
        os.write(2, b"the end\n")
    assert output.tail == f"[stdout]\n{'a' * (LOG_TAIL_BYTES // 2)}\n[stderr]\nthe end"
    shown = capfd.readouterr()
    assert len(shown.out) == 3 * LOG_TAIL_BYTES and shown.err == "the end\n"  # all shown
    log = trial_log("x" * (2 * LOG_TAIL_BYTES), output.tail)
    assert len(log.encode()) < 2 * LOG_TAIL_BYTES + 200
