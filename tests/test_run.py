"""`sgsweep run` end to end on the embedded Ray: Parquet schema, MLflow runs, resume, report."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from orchestrator import plan
from orchestrator.errors import RunError
from orchestrator.report import load_results, write_report
from orchestrator.runner import RunOptions, run_sweep
from orchestrator.spec import parse_spec
from orchestrator.sync import sync_dir
from orchestrator.tracking import default_tracking_uri
from orchestrator.tracking.mlflow_tracker import client_for
from tests.mirror import assert_exact_mirror

SPEC = {
    "name": "it", "task": "expert", "params": {"lams": [0.5]},
    "grid": {"d": [4, 6], "k": [2, 3], "case": ["noisy", "activation"]}, "seeds": 4,
}


@pytest.fixture(scope="module")
def finished(ray_cluster, tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("run")
    spec = parse_spec(SPEC)
    summary = run_sweep(spec, RunOptions(out_dir=out, address="auto", progress=lambda _: None))
    return out, summary


def test_every_trial_recorded_once_and_ok(finished) -> None:
    out, summary = finished
    assert (summary.ok, summary.failed, summary.total) == (32, 0, 32)
    trials = ds.dataset(out / "trials").to_table().to_pandas()
    assert len(trials) == 32 and trials.trial_id.is_unique
    expected = {t.trial_id for b in plan.expand(parse_spec(SPEC)) for t in b.trials}
    assert set(trials.trial_id) == expected
    assert (trials.status == "ok").all() and trials.error.isna().all()


def test_trials_schema_has_fixed_columns_and_one_column_per_param(finished) -> None:
    out, _ = finished
    schema = ds.dataset(out / "trials").schema
    for name, kind in [("trial_id", pa.string()), ("sweep", pa.string()), ("task", pa.string()),
                       ("seed", pa.int64()), ("status", pa.string()), ("error", pa.string()),
                       ("duration_s", pa.float64()), ("config", pa.string()),
                       ("d", pa.int64()), ("k", pa.int64()), ("case", pa.string()),
                       ("sigma", pa.float64()), ("lams", pa.string())]:
        assert schema.field(name).type == kind, name
    row = ds.dataset(out / "trials").to_table().slice(0, 1).to_pylist()[0]
    config = json.loads(row["config"])
    assert config["d"] == row["d"] and config["case"] == row["case"]
    assert json.loads(row["lams"]) == [0.5] and row["sweep"] == "it"


def test_metrics_long_form_readable_by_pyarrow_and_duckdb(finished) -> None:
    import duckdb

    out, _ = finished
    metrics = ds.dataset(out / "metrics")
    assert metrics.schema.names == ["trial_id", "step", "metric", "value"]
    table = metrics.to_table().to_pandas()
    assert set(table.metric) == {"sqerr_bp", "sqerr_sg", "sqerr_lam_0.5", "truth_sqnorm"}
    assert len(table) == 32 * 4
    con = duckdb.connect()
    rows = con.execute(
        f"SELECT t.d, avg(m.value) FROM read_parquet('{out}/metrics/*.parquet') m "
        f"JOIN read_parquet('{out}/trials/*.parquet') t USING (trial_id) "
        "WHERE m.metric = 'sqerr_bp' GROUP BY t.d ORDER BY t.d").fetchall()
    assert [r[0] for r in rows] == [4, 6] and rows[0][1] > rows[1][1] > 0


def test_mlflow_mirrors_parquet_one_run_per_config_under_the_invocation(finished) -> None:
    out, summary = finished
    counts = assert_exact_mirror(out, default_tracking_uri(out), seed_runs="none")
    assert counts == {"invocation": 1, "config": 8}  # E1's millisecond trials: no seed runs
    again = sync_dir(out, default_tracking_uri(out))  # the live view == the synced view
    assert (again.configs_written, again.closed, again.present) == (0, 0, 32)
    client = client_for(default_tracking_uri(out))
    experiment = client.get_experiment_by_name("it")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parent = next(r for r in runs if r.data.tags.get("sgsweep.role") == "invocation")
    assert parent.info.run_id == summary.parent_run_id and parent.info.status == "FINISHED"
    assert parent.data.metrics["trials_ok"] == 32
    names = {r.info.run_name for r in runs if r.data.tags.get("sgsweep.role") == "config"}
    assert "noisy d=4 k=2" in names and len(names) == 8
    config = next(r for r in runs if r.info.run_name == "noisy d=4 k=2")
    assert {"sqerr_bp", "sqerr_bp_se", "sqerr_bp_ci95_low", "n_seeds"} <= set(config.data.metrics)


def test_seed_level_nests_a_run_per_trial_under_its_config(ray_cluster, tmp_path) -> None:
    spec = parse_spec({**SPEC, "grid": {"d": [4], "k": [2], "case": ["noisy", "partial"]},
                       "seeds": 3, "tracking_level": "seed"})
    summary = run_sweep(spec, RunOptions(out_dir=tmp_path, address="auto",
                                         progress=lambda _: None))
    assert summary.ok == 6 and summary.tracking_error is None
    counts = assert_exact_mirror(tmp_path, default_tracking_uri(tmp_path), seed_runs="all")
    assert counts == {"invocation": 1, "config": 2, "seed": 6}
    client = client_for(default_tracking_uri(tmp_path))
    experiment = client.get_experiment_by_name("it")
    names = {r.info.run_name for r in client.search_runs([experiment.experiment_id])}
    assert "partial · seed 2" in names
    # What the run wrote live is what a sync from Parquet would write: nothing to redo.
    again = sync_dir(tmp_path, default_tracking_uri(tmp_path))
    assert (again.configs_written, again.seeds_written, again.closed, again.present) == (
        0, 0, 0, 6)


def test_rerun_skips_recorded_trials(finished, ray_cluster) -> None:
    out, _ = finished
    again = run_sweep(parse_spec(SPEC), RunOptions(out_dir=out, address="auto",
                                                   progress=lambda _: None))
    assert (again.ok, again.skipped) == (0, 32)
    grown = dict(SPEC, seeds=5)
    more = run_sweep(parse_spec(grown), RunOptions(out_dir=out, address="auto",
                                                   progress=lambda _: None))
    assert (more.ok, more.skipped) == (8, 32)
    trials, _ = load_results(out)
    assert len(trials) == 40 and trials.trial_id.is_unique
    # Each config run now summarises 5 seeds, under the invocation that added the fifth.
    counts = assert_exact_mirror(out, default_tracking_uri(out), seed_runs="none")
    assert counts == {"invocation": 2, "config": 8}


def test_report_writes_table_figures_and_logs_them(finished) -> None:
    out, _ = finished
    folder = write_report(out) / "it"
    names = {p.name for p in folder.iterdir()}
    assert {"e1_ratios.csv", "e1_ratios.md", "ratio_vs_d_case-noisy.png",
            "ratio_vs_d_case-activation.png", "mse_vs_lambda_case-noisy.png"} <= names
    import pandas as pd

    table = pd.read_csv(folder / "e1_ratios.csv")
    assert {"mse_bp", "se_bp", "mse_sg", "ratio_bp_sg", "ci_low", "ci_high", "theory"} <= set(
        table.columns)
    assert (table.ci_low <= table.ratio_bp_sg).all() and (table.ratio_bp_sg <= table.ci_high).all()
    client = client_for(default_tracking_uri(out))
    experiment = client.get_experiment_by_name("it")
    parent = client.search_runs([experiment.experiment_id],
                                filter_string="tags.`sgsweep.role` = 'invocation'",
                                order_by=["attributes.start_time DESC"])[0]
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert "report/e1_ratios.csv" in logged and "report/ratio_vs_d_case-noisy.png" in logged


def test_mlflow_batches_respect_limits_and_lose_nothing() -> None:
    from orchestrator.tracking.mlflow_tracker import pack_batches

    params, metrics, tags = list(range(130)), list(range(2500)), ["t"]
    batches = list(pack_batches(params, metrics, tags))
    assert all(len(p) <= 100 and len(t) <= 100 and len(p) + len(m) + len(t) <= 1000
               for p, m, t in batches)
    assert sum((p for p, _, _ in batches), []) == params
    assert sum((m for _, m, _ in batches), []) == metrics
    assert len(batches) == 3  # 100+1+899, 30+970, 631
    assert list(pack_batches([1], [2], [])) == [([1], [2], [])]


def test_a_sweep_that_shares_configs_with_an_earlier_one_counts_and_reports_them(
        ray_cluster, tmp_path) -> None:
    # e2-lambda-mnist shares its adaptive and backprop configs with e2-base-mnist: run into
    # one DIR, the shared trials are recorded once (under the first sweep) and belong to both.
    import yaml

    from orchestrator.spec import load_spec
    from orchestrator.status import sweep_status

    out = tmp_path / "out"
    files = {}
    for name, labels in (("first", ["a"]), ("second", ["a", "b"])):
        files[name] = tmp_path / f"{name}.yaml"
        files[name].write_text(yaml.safe_dump({
            "name": name, "task": "probe", "variants": [{"label": x} for x in labels],
            "seeds": 2}))
        run_sweep(load_spec(files[name]), RunOptions(out_dir=out, address="auto",
                                                     spec_path=files[name],
                                                     progress=lambda _: None))
    counts = {s.sweep: (s.ok, s.total) for s in sweep_status(out)[0]}
    assert counts == {"first": (2, 2), "second": (4, 4)}
    write_report(out, tracking_uri="")
    summary = (out / "report" / "second" / "summary.csv").read_text()
    assert "\na,2," in summary and "\nb,2," in summary, summary


def test_another_sweep_under_a_name_already_in_dir_is_refused_a_grown_one_runs(
        ray_cluster, tmp_path: Path) -> None:
    """Reusing a sweep's name for a different sweep would replace DIR/specs/NAME.yaml and
    hide the earlier results from status and report: refused in one line. The same sweep
    grown (more seeds) plans every earlier trial and runs on."""
    import yaml

    from orchestrator.spec import load_spec
    from orchestrator.status import sweep_status

    out = tmp_path / "out"

    def run(labels: list[str], seeds: int):
        path = tmp_path / f"x-{'-'.join(labels)}-{seeds}.yaml"
        path.write_text(yaml.safe_dump({"name": "x", "task": "probe", "seeds": seeds,
                                        "variants": [{"label": x} for x in labels]}))
        return run_sweep(load_spec(path), RunOptions(out_dir=out, address="auto",
                                                     spec_path=path, progress=lambda _: None))

    run(["a"], 2)
    copy = (out / "specs" / "x.yaml").read_bytes()
    with pytest.raises(RunError, match=r"sweep 'x' is already here from another sweep file "
                                       r"\(2 of its recorded trials are not in this one"):
        run(["b"], 2)
    assert (out / "specs" / "x.yaml").read_bytes() == copy
    run(["a"], 3)  # grown: the earlier two trials are planned, one more runs
    assert [(s.sweep, s.ok, s.total) for s in sweep_status(out)[0]] == [("x", 3, 3)]
