"""Damaged result folders: every command names the bad part file and what is wrong in one
line; `run` moves unreadable parts (with their twins) to DIR/quarantine/ and re-runs their
trials; a missing or short metrics part is caught from the row counts its trials part
records. Real Parquet files, damaged byte by byte as a disk or a person would."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator import cli, plan
from orchestrator.execute import run_blocks
from orchestrator.record import METRICS_ROWS, TRIALS_ROWS, DamagedResults, ResultStore
from orchestrator.runner import RunOptions, run_sweep
from orchestrator.spec import parse_spec
from tasks import get_task

SPEC = {"name": "healme", "task": "probe", "params": {"steps": 3},
        "grid": {"label": ["a", "b", "c"]}, "seeds": 4}


def recorded(out: Path) -> list[str]:
    """DIR with one part per config, recorded as `sgsweep run` records them (without Ray:
    the same execution path, in this process); returns the part names."""
    spec = parse_spec(SPEC)
    store = ResultStore(out)
    store.prepare()
    (out / "specs").mkdir()
    (out / "specs" / "healme.yaml").write_text(
        "name: healme\ntask: probe\nparams: {steps: 3}\ngrid: {label: [a, b, c]}\nseeds: 4\n")
    names = []
    for block in plan.expand(spec):
        records = run_blocks("probe", [block])
        names.append(store.write(records, sweep="healme", task=get_task("probe"),
                                 configs={block.config_id: block.config}, invocation="x"))
    return names


def garble(path: Path) -> None:
    """Overwrite everything between the header and the footer (the data pages)."""
    data = bytearray(path.read_bytes())
    footer = int.from_bytes(data[-8:-4], "little") + 8
    data[4:len(data) - footer] = bytes(0x5A for _ in range(len(data) - footer - 4))
    path.write_bytes(bytes(data))


def drop_last_row(path: Path) -> None:
    table = pq.read_table(path)
    pq.write_table(table.slice(0, table.num_rows - 1), path)


DAMAGE = {
    "zero-byte": (lambda p: p.write_bytes(b""), "trials", "empty file (0 bytes)"),
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "trials",
                  "truncated ("),
    "garbled-header": (lambda p: p.write_bytes(b"JUNK" + p.read_bytes()[4:]), "trials",
                       "not a Parquet file (garbled"),
    "garbled-data": (garble, "trials", "garbled data ("),
    "wrong-schema": (lambda p: pq.write_table(pa.table({"x": [1, 2]}), p), "trials",
                     "wrong schema: no column 'trial_id'"),
    "missing-metrics": (lambda p: p.unlink(), "metrics", "missing (its trials part"),
    "short-metrics": (drop_last_row, "metrics", "(set from the row counts)"),
}


def test_each_trials_part_records_its_and_its_metrics_row_counts(tmp_path) -> None:
    names = recorded(tmp_path)
    meta = pq.read_schema(tmp_path / "trials" / names[0]).metadata
    metrics_rows = pq.read_metadata(tmp_path / "metrics" / names[0]).num_rows
    assert int(meta[TRIALS_ROWS]) == 4 and int(meta[METRICS_ROWS]) == metrics_rows == 4 * 4
    assert ResultStore(tmp_path).damage(deep=True) == []


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_status_report_and_sync_name_the_damaged_part_in_one_line(kind, tmp_path,
                                                                   capsys) -> None:
    names = recorded(tmp_path)
    damage, folder, words = DAMAGE[kind]
    if kind == "short-metrics":
        rows = pq.read_metadata(tmp_path / folder / names[1]).num_rows
        words = f"{rows - 1} rows, but {rows} were written"
    bad = tmp_path / folder / names[1]
    damage(bad)
    for command in (["status"], ["report"], ["mlflow-sync"]):
        code = cli.main([*command, str(tmp_path)])
        out, err = capsys.readouterr()
        assert code == 2, (command, err)
        assert err.count("\n") == 1 and err.startswith(f"error: {bad}: {words}"), (command, err)
        assert "quarantine" in err and "Traceback" not in err
        if command == ["status"]:  # the healthy parts are still reported; the damaged
            # part's four trials count as pending (`run` sets it aside and re-runs them)
            assert out == "healme: 8 done, 0 failed, 4 pending (of 12)\n", out


def test_a_garbled_column_is_named_by_the_reader_that_meets_it(tmp_path) -> None:
    """Data pages garbled behind an intact footer: found when read, naming the part."""
    names = recorded(tmp_path)
    garble(tmp_path / "metrics" / names[2])
    assert ResultStore(tmp_path).damage() == []  # the cheap check reads footers only
    with pytest.raises(DamagedResults, match=rf"{names[2]}: garbled data"):
        ResultStore(tmp_path).read_metrics()


def test_heal_moves_every_damaged_part_and_its_twin_to_quarantine(tmp_path) -> None:
    names = recorded(tmp_path)
    kinds = ["truncated", "garbled-data", "short-metrics"]
    for kind, name in zip(kinds, names, strict=True):
        damage, folder, _ = DAMAGE[kind]
        damage(tmp_path / folder / name)
    before = {p.name: p.read_bytes() for p in (tmp_path / "trials").iterdir()}
    lines: list[str] = []
    found = ResultStore(tmp_path).heal(lines.append)
    assert len(found) == len(lines) == 3
    assert not list((tmp_path / "trials").glob("part-*"))
    assert not list((tmp_path / "metrics").glob("part-*"))
    kept = {p.name: p.read_bytes() for p in (tmp_path / "quarantine" / "trials").iterdir()}
    assert kept == before  # moved aside byte for byte, never deleted
    assert len(list((tmp_path / "quarantine" / "metrics").iterdir())) == 3
    assert ResultStore(tmp_path).recorded() == {}


def test_run_quarantines_damaged_parts_and_runs_their_trials_again(ray_cluster,
                                                                   tmp_path) -> None:
    names = recorded(tmp_path)
    DAMAGE["zero-byte"][0](tmp_path / "trials" / names[0])
    DAMAGE["missing-metrics"][0](tmp_path / "metrics" / names[1])
    lines: list[str] = []
    summary = run_sweep(parse_spec(SPEC), RunOptions(
        out_dir=tmp_path, address="auto", tracking_uri="", live=False, progress=lines.append))
    assert (summary.ok, summary.failed, summary.skipped) == (8, 0, 4)
    assert sum(line.startswith("damaged: ") for line in lines) == 2, lines
    store = ResultStore(tmp_path)
    assert store.damage(deep=True) == []
    trials = store.read_trials().to_pandas()
    assert len(trials) == 12 and trials.trial_id.is_unique and (trials.status == "ok").all()
    metrics = store.read_metrics().to_pandas()
    assert metrics.groupby("trial_id").size().eq(4).all() and metrics.trial_id.nunique() == 12
    # Both trials parts moved (the empty one, and the one whose metrics went missing),
    # with the empty part's metrics twin.
    assert len(os.listdir(tmp_path / "quarantine" / "trials")) == 2
    assert len(os.listdir(tmp_path / "quarantine" / "metrics")) == 1


def test_a_planted_sweep_name_cannot_make_report_write_outside_dir(tmp_path, capsys) -> None:
    names = recorded(tmp_path)
    part = tmp_path / "trials" / names[0]
    table = pq.read_table(part)
    planted = table.set_column(table.schema.get_field_index("sweep"), "sweep",
                               pa.array(["../../escaped"] * table.num_rows))
    pq.write_table(planted, part)
    for command in ("report", "status"):
        assert cli.main([command, str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {part}: sweep '../../escaped' is not a sweep name"), err
        assert err.count("\n") == 1
    assert not (tmp_path.parent.parent / "escaped").exists()
    assert not (tmp_path / "report").exists()
    shutil.rmtree(tmp_path / "trials")
