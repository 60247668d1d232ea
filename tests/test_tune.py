"""`sgsweep tune`: tune files validated like sweep files, a study that finds E1's known
optimum, pruning recorded as such, best.yaml that `sgsweep run` runs, kill -9 + resume."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest
import yaml

from analysis.expert import lambda_quadratic, optimal_lambda
from orchestrator.cli import main
from orchestrator.record import ResultStore
from orchestrator.report import write_report
from orchestrator.runner import RunError, RunOptions, run_sweep
from orchestrator.spec import SpecError, load_spec, parse_spec
from orchestrator.tracking.mlflow_tracker import client_for
from orchestrator.tune import TuneOptions, aggregate, load_study, open_study, tune
from orchestrator.tune_spec import load_tune_spec, parse_tune_spec
from tests.helpers import SGSWEEP, isolated, isolated_env, kill_9_after_parts

E1 = {
    "name": "e1-lam", "task": "expert", "params": {"d": 6, "k": 2, "leak": 0.3},
    "search": {"lam": {"low": 0.0, "high": 1.0}},
    "objective": {"metric": "sqerr_lam", "direction": "minimize"},
    "n_trials": 14, "seeds": 6, "parallelism": 2, "sampler": {"type": "tpe", "seed": 1},
    "pruner": "none",
}


def _with(**changes) -> dict:
    spec = {**E1, **changes}
    return {k: v for k, v in spec.items() if v is not ...}


def quiet(out: Path, **kwargs) -> TuneOptions:
    return TuneOptions(out_dir=out, address="auto", progress=lambda _: None, **kwargs)


def trials_of(out: Path) -> pd.DataFrame:
    frame = ds.dataset(out / "trials").to_table().to_pandas()
    tags = frame.tags.map(json.loads)
    frame["optuna_trial"] = tags.map(lambda t: t.get("optuna_trial"))
    frame["optuna_state"] = tags.map(lambda t: t.get("optuna_state"))
    return frame


@pytest.mark.parametrize(
    ("search", "expected"),
    [
        ({}, "search: expected at least one parameter to search"),
        ({"zeta": {"low": 0, "high": 1}}, "search.zeta: unknown parameter of task 'expert'"),
        ({"lam": [0, 1]}, "search.lam: expected a distribution such as {low: 0.0, high: 1.0}"),
        ({"lam": {"low": 1.0, "high": 0.5}}, "search.lam: expected low < high"),
        ({"lam": {"low": 0.0}}, "search.lam: expected low and high (or choices), missing high"),
        ({"lam": {"low": 0.0, "high": 2.0}},
         "search.lam: expected λ in [0, 1], got 2.0 (at search corner lam=2.0)"),
        ({"lam": {"low": 0.0, "high": 1.0, "log": True}},
         "search.lam.low: expected low > 0 with log: true"),
        ({"lam": {"low": 0.0, "high": 1.0, "spread": 2}}, "search.lam.spread: unknown"),
        ({"n": {"low": 1.5, "high": 3}}, "search.n.low: expected an integer, got 1.5"),
        ({"case": {"low": 0, "high": 1}}, "search.case: parameter is one of ['noisy', "
                                          "'activation', 'partial']; search it with choices"),
        ({"case": {"choices": ["noisy", "loud"]}},
         "search.case.choices[1]: expected one of ['noisy', 'activation', 'partial']"),
        ({"case": {"choices": []}}, "search.case.choices: expected a non-empty list"),
        ({"d": {"low": 4, "high": 6}}, "search.d: also set in params"),
    ],
)
def test_bad_search_specs_are_rejected_with_the_field_named(search, expected) -> None:
    with pytest.raises(SpecError) as info:
        parse_tune_spec(_with(search=search), "t.yaml")
    message = str(info.value)
    assert message.startswith("t.yaml: ") and expected in message and "\n" not in message


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"objective": ...}, "objective: missing (required)"),
        ({"objective": {"metric": "x", "direction": "up"}},
         "objective.direction: expected one of ['minimize', 'maximize'], got 'up'"),
        ({"objective": {"metric": "x", "aggregate": "max"}}, "objective.aggregate: expected"),
        ({"objective": "sqerr_lam"}, "objective: expected a mapping"),
        ({"n_trials": 0}, "n_trials: expected a positive integer, got 0"),
        ({"sampler": "bayes"}, "sampler: expected one of ['tpe', 'cmaes', 'random', 'grid']"),
        ({"sampler": "grid"}, "search.lam: the grid sampler needs finitely many values"),
        ({"pruner": {"type": "wilcoxon", "p_threshold": 2.0}}, "pruner.p_threshold:"),
        ({"pruner": {"type": "median", "p_threshold": 0.1}},
         "pruner.p_threshold: not an option of pruner 'median'"),
        ({"grid": {"d": [4, 5]}}, "grid: not used in a tune file"),
        ({"reeval_seeds": [3, 40]}, "reeval_seeds: expected seeds not used in tuning, got 3"),
        ({"params": {"d": 6}}, "params.k: missing; task 'expert' requires it"),
    ],
)
def test_bad_tune_fields_are_rejected_with_the_field_named(changes, expected) -> None:
    with pytest.raises(SpecError) as info:
        parse_tune_spec(_with(**changes), "t.yaml")
    assert expected in str(info.value), str(info.value)


def test_cli_rejects_a_bad_tune_file_with_one_line_exit_2_and_writes_nothing(
        tmp_path: Path, capsys) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text(yaml.safe_dump(_with(search={"lam": {"low": 0.0, "high": 1.5}})))
    out = tmp_path / "out"
    assert main(["tune", str(spec), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: {spec}: search.lam: expected λ in [0, 1], got 1.5 "
                   "(at search corner lam=1.5)\n")
    assert not out.exists()


def test_cli_rejects_an_unusable_storage_url_with_one_line_exit_2_and_writes_nothing(
        tmp_path: Path, capsys) -> None:
    spec = tmp_path / "t.yaml"
    spec.write_text(yaml.safe_dump(_with()))
    out = tmp_path / "out"
    assert main(["tune", str(spec), "--out", str(out), "--storage", "nosuchdb://host/x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --storage nosuchdb://host/x: ") and err.count("\n") == 1, err
    assert not out.exists()


@pytest.mark.parametrize("command", ["run", "tune"])
def test_cli_refuses_an_address_where_no_ray_head_answers_in_one_line_and_writes_nothing(
        tmp_path, capsys, command) -> None:
    # Ray itself would retry a dead GCS address for minutes; nothing listens on this port.
    from tests.two_node_sweep import free_ports

    spec = tmp_path / "t.yaml"
    spec.write_text(yaml.safe_dump(_with()))
    spec = spec if command == "tune" else Path("sweeps/default.yaml")
    out = tmp_path / "out"
    for address, expected in ((f"127.0.0.1:{free_ports(1)[0]}", "no Ray head answers there"),
                              ("headnode", "expected HOST:PORT")):
        assert main([command, str(spec), "--out", str(out), "--address", address]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: --address {address}: ") and expected in err, err
        assert err.count("\n") == 1 and not out.exists()


def test_e1_scalar_lam_scores_like_lams_and_leaves_earlier_trial_ids_unchanged() -> None:
    import dataclasses

    from orchestrator import plan
    from tasks.expert import ExpertConfig, run_block

    (log,) = run_block(ExpertConfig(d=5, k=2, leak=0.2, lams=(0.3,), lam=0.3), [4])
    final = log.final()
    assert final["sqerr_lam"] == final["sqerr_lam_0.3"]
    # The trial id of a config without `lam` is what it was before the field existed.
    spec = parse_spec({"name": "t", "task": "expert", "params": {"d": 4, "k": 2}, "seeds": 1})
    before = {f.name: list(v) if isinstance(v := getattr(spec.configs[0], f.name), tuple)
              else v for f in dataclasses.fields(ExpertConfig) if f.name != "lam"}
    assert plan.expand(spec)[0].trials[0].trial_id == plan.trial_id("expert", before, 0)
    tuned = parse_spec({"name": "t", "task": "expert", "params": {"d": 4, "k": 2, "lam": 0.5},
                        "seeds": 1})
    assert plan.expand(tuned)[0].config["lam"] == 0.5


def test_iqm_drops_the_outer_quarters() -> None:
    assert aggregate([1, 2, 3, 100], "iqm") == 2.5
    assert aggregate([1, 2, 3, 100], "mean") == 26.5
    assert aggregate([1, 2, 3, 100], "median") == 2.5


def test_e1_study_reaches_the_closed_form_optimum(ray_cluster, tmp_path: Path) -> None:
    spec = parse_tune_spec(E1)
    out = tmp_path / "study"
    summary = tune(spec, quiet(out))
    assert (summary.complete, summary.pruned, summary.failed) == (14, 0, 0)

    # The closed form, from an independent plain sweep on the same seeds: the objective is
    # exactly quadratic in λ, so BP, SG and one mixture pin it down.
    ref = parse_spec({"name": "ref", "task": "expert", "seeds": 6,
                      "params": {"d": 6, "k": 2, "leak": 0.3, "lams": [0.5]}})
    run_sweep(ref, RunOptions(out_dir=tmp_path / "ref", tracking_uri="", address="auto",
                              progress=lambda _: None, live=False))
    metrics = ds.dataset(tmp_path / "ref" / "metrics").to_table().to_pandas()
    wide = metrics.pivot_table(index="trial_id", columns="metric", values="value")
    a, b, c = lambda_quadratic(wide.sqerr_bp, wide.sqerr_sg, wide["sqerr_lam_0.5"], 0.5)
    lam_opt, best_possible = optimal_lambda(a, b, c)
    assert 0.1 < lam_opt < 0.5  # an interior optimum: neither BP nor SG
    assert best_possible <= summary.best_value <= 1.02 * best_possible
    assert abs(summary.best_params["lam"] - lam_opt) < 0.1
    assert summary.best_value < 0.9 * min(a, b)  # better than both pure rules

    # Every Optuna trial's seeds are in the Parquet datasets of `run`, tagged.
    trials = trials_of(out)
    assert len(trials) == 14 * 6 and (trials.optuna_state == "complete").all()
    assert sorted(trials.optuna_trial.unique()) == list(range(14))
    per_trial = trials.groupby("optuna_trial").lam.nunique()
    assert (per_trial == 1).all()
    # MLflow: one study run with one child per Optuna trial.
    client = client_for(f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("e1-lam")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("sgsweep.role") == "study"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 14
    assert {r.data.tags["optuna.state"] for r in children} == {"COMPLETE"}
    assert parent.data.metrics["best_value"] == pytest.approx(summary.best_value)
    # Provenance: one invocation row that every trial row joins, and the study run's tags.
    (origin,) = ResultStore(out).read_invocations()
    assert origin["command"] == "tune" and set(trials.invocation) == {origin["invocation"]}
    assert parent.data.tags["sgsweep.code_version"] == origin["code_version"]
    assert parent.data.tags["sgsweep.cpu_capability"] == origin["cpu_capability"]

    # The report: figures, and the closed form computed from the study's own records.
    folder = write_report(out, tracking_uri="")
    for name in ("history.png", "importances.png", "slice.png", "trials.csv",
                 "provenance.md"):
        assert (folder / name).stat().st_size > 0
    closed = json.loads((folder / "closed_form.json").read_text())
    assert closed["lam_opt"] == pytest.approx(lam_opt, rel=1e-9)
    assert closed["quadratic_max_rel_error"] < 1e-9

    # best.yaml re-evaluates the best params on fresh seeds with `sgsweep run`.
    best = load_spec(summary.best_file)
    assert best.configs[0].lam == summary.best_params["lam"]
    assert not set(best.seeds) & set(spec.seeds) and len(best.seeds) == 6
    again = run_sweep(best, RunOptions(out_dir=tmp_path / "best", tracking_uri="",
                                       address="auto", progress=lambda _: None, live=False,
                                       spec_path=summary.best_file))
    assert (again.ok, again.failed) == (6, 0)

    # Re-running the finished study runs nothing and keeps everything; more trials continue
    # it (with a narrower search range: the search space may change, the seeds may not).
    rerun = tune(spec, quiet(out))
    assert rerun.ran == 0 and rerun.complete == 14 and len(trials_of(out)) == 14 * 6
    narrower = parse_tune_spec(_with(search={"lam": {"low": 0.2, "high": 0.4}}, n_trials=16))
    grown = tune(narrower, quiet(out))
    assert grown.ran == 2 and grown.complete == 16
    assert len(ResultStore(out).read_invocations()) == 2  # the re-run that ran nothing: none
    study, _ = load_study(out)
    assert all(0.2 <= t.params["lam"] <= 0.4 for t in study.trials[14:])
    with pytest.raises(RunError, match="was run with seeds .* its trials would not be "
                                       "comparable"):
        tune(parse_tune_spec(_with(seeds=7)), quiet(out))


def test_pruned_trials_are_recorded_as_pruned(ray_cluster, tmp_path: Path, capsys) -> None:
    # λ = 1 (backprop) is worse than λ = 0.3 on every seed here: once the Wilcoxon test
    # has 4 paired seeds (p = 1/16 < 0.1) it stops the trial.
    spec = parse_tune_spec(_with(n_trials=2, seeds=8, rung_size=2, parallelism=1,
                                 pruner="wilcoxon"))
    out = tmp_path / "study"
    out.mkdir()
    study = open_study(spec, out, None)
    study.enqueue_trial({"lam": 0.3})
    study.enqueue_trial({"lam": 1.0})
    summary = tune(spec, quiet(out))
    assert (summary.complete, summary.pruned) == (1, 1)
    study, _ = load_study(out)
    pruned = study.trials[1]
    assert pruned.state.name == "PRUNED" and pruned.params == {"lam": 1.0}
    assert sorted(pruned.intermediate_values) == [0, 1, 2, 3]
    trials = trials_of(out)
    rows = trials[trials.optuna_trial == 1]
    assert (rows.optuna_state == "pruned").all() and sorted(rows.seed) == [0, 1, 2, 3]
    assert (trials[trials.optuna_trial == 0].optuna_state == "complete").sum() == 8
    client = client_for(f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("e1-lam")
    states = {r.data.tags.get("optuna.trial_number"): r.data.tags.get("optuna.state")
              for r in client.search_runs([experiment.experiment_id])}
    assert states["0"] == "COMPLETE" and states["1"] == "PRUNED"
    table = pd.read_csv(write_report(out, tracking_uri="") / "trials.csv")
    assert table.set_index("number").loc[1, ["state", "seeds_run"]].tolist() == ["pruned", 4]
    capsys.readouterr()
    assert main(["status", str(out)]) == 0
    assert "study e1-lam: 1 complete, 1 pruned; best sqerr_lam = " in capsys.readouterr().out


@pytest.mark.slow
def test_tracking_server_down_then_mlflow_sync_rebuilds_the_study_view(
        ray_cluster, tmp_path: Path, capsys) -> None:
    from tests.helpers import free_port

    spec_path = tmp_path / "t.yaml"
    spec_path.write_text(yaml.safe_dump(_with(n_trials=3, seeds=4, rung_size=2,
                                              pruner="wilcoxon")))
    out = tmp_path / "out"
    down = tune(load_tune_spec(spec_path),
                quiet(out, tracking_uri=f"http://127.0.0.1:{free_port()}",
                      spec_path=spec_path))
    assert down.complete == 3 and down.tracking_error is not None
    uri = f"sqlite:///{tmp_path / 'later.db'}"
    capsys.readouterr()
    assert main(["mlflow-sync", str(out), "--tracking-uri", uri]) == 0
    assert "logged 3 Optuna trial runs (0 already present)" in capsys.readouterr().out
    assert main(["mlflow-sync", str(out), "--tracking-uri", uri]) == 0
    assert "logged 0 Optuna trial runs (3 already present)" in capsys.readouterr().out
    client = client_for(uri)
    runs = client.search_runs([client.get_experiment_by_name("e1-lam").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("sgsweep.role") == "study"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.tags["optuna.trial_number"] for r in children) == ["0", "1", "2"]
    assert parent.data.metrics["best_value"] == pytest.approx(down.best_value)
    history = client.get_metric_history(children[0].info.run_id, "seed_value")
    assert [m.step for m in history] == [0, 1, 2, 3]


def test_a_missing_objective_metric_stops_the_study_with_one_line(
        ray_cluster, tmp_path: Path) -> None:
    spec = parse_tune_spec(_with(objective={"metric": "sqerr_typo"}, n_trials=3,
                                 parallelism=2))
    with pytest.raises(RunError, match=r"objective.metric: task 'expert' recorded no metric "
                                       r"'sqerr_typo'; it recorded \['sqerr_bp'"):
        tune(spec, quiet(tmp_path / "out", tracking_uri=""))
    study, _ = load_study(tmp_path / "out")  # the trial in flight beside it is not RUNNING
    assert len(study.trials) == 2
    assert {t.state.name for t in study.trials} == {"FAIL"}


@pytest.mark.parametrize(
    ("sampler", "pruner", "search", "finished"),
    [
        ("cmaes", "median", {"lam": {"low": 0.0, "high": 1.0},
                             "sigma": {"low": 0.1, "high": 1.0, "log": True}}, 5),
        ("random", "none", {"lam": {"low": 0.0, "high": 1.0, "step": 0.25}}, 5),
        # The grid has 3 points: the study stops there rather than repeat them.
        ("grid", "wilcoxon", {"lam": {"choices": [0.2, 0.5, 0.8]}}, 3),
    ],
)
def test_every_sampler_and_pruner_runs_a_study(ray_cluster, tmp_path: Path, sampler, pruner,
                                               search, finished) -> None:
    spec = parse_tune_spec(_with(sampler={"type": sampler, "seed": 0}, pruner=pruner,
                                 search=search, n_trials=5, seeds=4, rung_size=2))
    summary = tune(spec, quiet(tmp_path, tracking_uri=""))
    assert summary.complete + summary.pruned == finished and summary.failed == 0
    study, _ = load_study(tmp_path)
    for trial in study.trials:
        assert set(trial.params) == set(search)
        if "step" in search.get("lam", {}):
            assert trial.params["lam"] in (0.0, 0.25, 0.5, 0.75, 1.0)
    if sampler == "grid":
        assert sorted(t.params["lam"] for t in study.trials) == [0.2, 0.5, 0.8]


def test_shipped_tune_files_are_valid(capsys) -> None:
    assert main(["validate", "sweeps/tune-e1.yaml"]) == 0
    assert "study 'tune-e1', task 'expert', searching ['lam'], 30 trials x 8 seeds in 4 " \
           "rungs (tpe, wilcoxon pruner)" in capsys.readouterr().out
    files = sorted(Path("sweeps").glob("tune-*.yaml"))
    assert {f.name for f in files} >= {"tune-e1.yaml", "tune-e2-digits.yaml"}
    for path in files:
        spec = load_tune_spec(path)
        assert spec.rungs and spec.search


@pytest.mark.slow
def test_kill_9_mid_study_then_resume_keeps_finished_trials_and_numbering(
        tmp_path: Path) -> None:
    spec_path = tmp_path / "probe-tune.yaml"
    spec_path.write_text(yaml.safe_dump({
        "name": "probe-tune", "task": "probe", "params": {"steps": 2},
        "search": {"work_ms": {"low": 150.0, "high": 250.0}},
        "objective": {"metric": "value", "direction": "minimize"},
        "n_trials": 16, "seeds": 4, "rung_size": 2, "parallelism": 2, "pruner": "none",
        "sampler": {"type": "random", "seed": 3}}))
    out = tmp_path / "out"
    command = [SGSWEEP, "tune", str(spec_path), "--out", str(out), "--num-cpus", "2",
               "--tracking-uri", "none", "--no-report"]
    kill_9_after_parts(command, out, parts=3, within_s=180)

    study, _ = load_study(out)
    before = {t.number: (t.state.name, t.params) for t in study.trials}
    complete_before = {n for n, (state, _) in before.items() if state == "COMPLETE"}
    running_before = {n for n, (state, _) in before.items() if state == "RUNNING"}
    rows_before = trials_of(out)
    # Killed between its Parquet write and its tell: RUNNING in Optuna, finished in Parquet.
    recorded = {n for n in running_before if (rows_before.optuna_trial == n).any()}
    orphans = running_before - recorded
    assert 3 <= len(complete_before | recorded) < 16 and orphans

    resumed = subprocess.run(isolated(command), env=isolated_env(), capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"{len(orphans)} trials orphaned by an earlier stop" in resumed.stderr
    assert (f"{len(recorded)} trials a stop left unfinished" in resumed.stderr) == bool(recorded)
    study, _ = load_study(out)
    after = {t.number: t for t in study.trials}
    # Finished trials kept as they were; numbering continues after the old trials.
    for n in complete_before:
        assert after[n].state.name == "COMPLETE" and after[n].params == before[n][1]
    for n in recorded:  # told what Parquet says, not run again
        assert after[n].state.name == "COMPLETE" and after[n].user_attrs["settled_from_parquet"]
    for n in orphans:
        assert after[n].state.name == "FAIL" and after[n].user_attrs["orphaned"]
    new = [t for t in after.values() if t.number >= len(before)]
    assert min(t.number for t in new) == len(before)
    retried = {t.user_attrs["retry_of"]: t for t in new if "retry_of" in t.user_attrs}
    assert set(retried) == orphans
    for n, t in retried.items():
        assert t.params == before[n][1] and t.state.name == "COMPLETE"
    complete = [t for t in after.values() if t.state.name == "COMPLETE"]
    assert len(complete) == 16
    # Parquet: each finished Optuna trial's 4 seeds exactly once, recorded by it or by the
    # trial whose records it reused (the seeded sampler proposes its first run's parameters
    # again after a resume); none of the orphans'.
    trials = trials_of(out)
    assert len(trials) >= len(rows_before) and trials.trial_id.is_unique
    assert (trials.optuna_state == "complete").all()
    assert set(trials.optuna_trial) <= {t.number for t in complete}
    for t in complete:
        own = set(trials[trials.optuna_trial == t.number].seed)
        reused = {int(s): n for s, n in t.user_attrs.get("reused", {}).items()}
        assert own | set(reused) == {0, 1, 2, 3} and not own & set(reused), t.number
        for seed, n in reused.items():
            assert ((trials.optuna_trial == n) & (trials.seed == seed)).sum() == 1
            assert after[n].params == t.params
    assert np.isfinite(study.best_value)


@pytest.mark.slow
def test_tune_on_a_ray_cluster_through_address(tmp_path: Path) -> None:
    import sys

    script = Path(__file__).with_name("tune_on_cluster.py")
    result = subprocess.run(isolated([sys.executable, str(script), str(tmp_path / "out")]),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["returncode"] == 0, summary["stderr"]
    assert "6 complete, 0 pruned, 0 failed" in summary["stdout"]
    assert summary["cluster_alive_after"]
    trials = trials_of(tmp_path / "out")
    assert len(trials) == 6 * 4 and (trials.status == "ok").all()
    # `sgsweep run best.yaml` re-evaluates the winner on 4 fresh seeds.
    assert summary["best_returncode"] == 0, summary["best_stderr"]
    assert "cluster-tune-best: 4 ok, 0 failed" in summary["best_stdout"]
    best = ds.dataset(tmp_path / "out" / "best" / "trials").to_table().to_pandas()
    assert sorted(best.seed) == [4, 5, 6, 7]


def test_a_storage_password_is_never_echoed(tmp_path, capsys) -> None:
    url = "postgresql://bob:s3cr3t-pw@127.0.0.1:1/study"  # nothing listens on port 1
    spec = Path(__file__).parent.parent / "sweeps" / "tune-e1.yaml"
    assert main(["tune", str(spec), "--out", str(tmp_path / "o"), "--storage", url]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--storage postgresql://bob:***@127.0.0.1:1/study" in err
    assert "s3cr3t-pw" not in err


def test_a_study_into_a_folder_of_sweep_results_is_refused(ray_cluster, tmp_path) -> None:
    """A tune into DIR holding `sgsweep run` results would write its own spec copy and
    report there, hiding the sweep's: refused in one line, nothing written."""
    out = tmp_path / "out"
    sweep = tmp_path / "probe.yaml"
    sweep.write_text("name: probe\ntask: probe\nseeds: 2\n")
    run_sweep(load_spec(sweep), RunOptions(out_dir=out, address="auto", spec_path=sweep,
                                           tracking_uri="", progress=lambda _: None))
    before = sorted(p.name for p in out.rglob("*"))
    with pytest.raises(RunError, match=r"holds the results of sweep 'probe' \(`sgsweep run`\); "
                                       r"a study goes in a folder of its own"):
        tune(parse_tune_spec(E1), quiet(out, tracking_uri=""))
    assert sorted(p.name for p in out.rglob("*")) == before
