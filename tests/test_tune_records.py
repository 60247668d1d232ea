"""`sgsweep tune` keeps one Parquet row per trial id, and Optuna and Parquet agree on one
state per trial: when Optuna proposes the same parameters twice (at once or later), when a
stop falls between the Parquet write and Optuna's tell (a torn journal record, SIGTERM), and
when a seed kills its worker. Real Optuna journal storage, real Parquet, real Ray."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from analysis.tune import trials_table
from orchestrator.tune import TuneOptions, load_study, open_study, tune
from orchestrator.tune.study import JOURNAL
from orchestrator.tune_spec import parse_tune_spec
from tests.helpers import SGSWEEP, Driver, isolated_env, parts
from tests.test_tune import trials_of

PROBE = {
    "name": "probe-study", "task": "probe", "params": {"steps": 2},
    "search": {"label": {"choices": ["a", "b"]}},
    "objective": {"metric": "value", "direction": "minimize"},
    "n_trials": 6, "seeds": 4, "rung_size": 2, "parallelism": 2, "pruner": "none",
    "sampler": {"type": "random", "seed": 0},
}


def probe_study(**changes) -> dict:
    return {**PROBE, **changes}


def quiet(out: Path, lines: list[str] | None = None, **kwargs) -> TuneOptions:
    return TuneOptions(out_dir=out, address="auto", tracking_uri="",
                       progress=(lines.append if lines is not None else lambda _: None),
                       **kwargs)


def assert_one_row_per_trial_id_and_states_agree(out: Path) -> pd.DataFrame:
    """Parquet holds each trial id once; each row's optuna_state is its Optuna trial's
    state; nothing is left RUNNING."""
    rows = trials_of(out)
    assert rows.trial_id.is_unique, rows[rows.trial_id.duplicated(keep=False)]
    study, _ = load_study(out)
    states = {t.number: t.state.name.lower() for t in study.trials}
    assert "running" not in states.values(), states
    for number, state in rows.groupby("optuna_trial").optuna_state.unique().items():
        assert list(state) == [states[int(number)]], (number, state, states[int(number)])
    return rows


def test_the_same_parameters_proposed_twice_run_once_and_the_repeat_reuses_them(
        ray_cluster, tmp_path: Path) -> None:
    """Two categorical values, six trials: every value is proposed again, and trials 0 and
    1 (both enqueued as label=a) are in flight together. Each configuration's seeds run
    once: a repeat waits for the trial in flight, then reuses its records (same value,
    user attribute `reused` naming the trial) and writes no rows of its own."""
    spec = parse_tune_spec(probe_study())
    out = tmp_path / "study"
    out.mkdir()
    study = open_study(spec, out, None)
    study.enqueue_trial({"label": "a"})
    study.enqueue_trial({"label": "a"})
    summary = tune(spec, quiet(out))
    assert (summary.complete, summary.pruned, summary.failed) == (6, 0, 0)

    rows = assert_one_row_per_trial_id_and_states_agree(out)
    study, _ = load_study(out)
    by_label: dict[str, list] = {}
    for t in study.trials:
        by_label.setdefault(t.params["label"], []).append(t)
    assert len(by_label["a"]) >= 2 and sum(map(len, by_label.values())) == 6
    assert len(rows) == 4 * len(by_label) and (rows.status == "ok").all()
    for trials in by_label.values():
        first, *repeats = trials  # in order of number: the first ran, the rest reused
        assert set(rows[rows.config.str.contains(f'"label": "{first.params["label"]}"')]
                   .optuna_trial) == {first.number}
        for t in repeats:
            assert t.value == first.value
            assert t.user_attrs["reused"] == {str(s): first.number for s in range(4)}
    assert study.trials[1].user_attrs["reused"] == {"0": 0, "1": 0, "2": 0, "3": 0}
    table = trials_table(study).set_index("number")  # the tune report's trials table
    assert table.reused_from[1] == "trial 0: seeds 0, 1, 2, 3"
    assert pd.isna(table.reused_from[0])  # trial 0 ran its own seeds


@pytest.mark.parametrize("last", ["ran its seeds", "reused its seeds"])
def test_a_stop_between_the_parquet_write_and_the_tell_is_settled_on_resume(
        ray_cluster, tmp_path: Path, last: str) -> None:
    """The journal's last record (the last trial's tell) torn, as a kill -9 in the middle
    of writing it leaves it: on resume that trial is RUNNING in Optuna while Parquet says
    it finished. It is told COMPLETE with the value its records give — computed from the
    rows it wrote, or from those of the trial whose records it reused — not failed and
    run again: no new rows, one per trial id, states agree."""
    if last == "ran its seeds":  # a grid: three points, each run once
        raw = probe_study(sampler={"type": "grid"}, n_trials=3, parallelism=1,
                          search={"work_ms": {"choices": [0.0, 1.0, 2.0]}})
    else:  # trial 1 proposes trial 0's parameters again
        raw = probe_study(n_trials=2, parallelism=1)
    spec = parse_tune_spec(raw)
    out = tmp_path / "study"
    if last == "reused its seeds":
        out.mkdir()
        study = open_study(spec, out, None)
        study.enqueue_trial({"label": "b"})
        study.enqueue_trial({"label": "b"})
    first = tune(spec, quiet(out))
    assert first.complete == spec.n_trials
    study, _ = load_study(out)
    values = {t.number: t.value for t in study.trials}
    last_number = max(values)
    rows_before = trials_of(out)

    journal = out / JOURNAL
    data = journal.read_bytes()
    start = data.rstrip(b"\n").rfind(b"\n") + 1
    assert b'"state": 1' in data[start:] or b'"state":1' in data[start:], data[start:]
    journal.write_bytes(data[:start + (len(data) - start) // 2])  # the tell, torn
    (out / "best.yaml").unlink()

    lines: list[str] = []
    again = tune(spec, quiet(out, lines))
    assert any("1 trials a stop left unfinished in Optuna but recorded in Parquet told now"
               in line for line in lines), lines
    assert not any("orphaned" in line for line in lines), lines
    assert (again.ran, again.complete, again.settled, again.retried) == (
        0, spec.n_trials, 1, 0)
    study, _ = load_study(out)
    assert {t.number: t.value for t in study.trials} == values
    settled = study.trials[last_number]
    assert settled.user_attrs["settled_from_parquet"] is True
    if last == "reused its seeds":
        assert settled.user_attrs["reused"] == {"0": 0, "1": 0, "2": 0, "3": 0}
    assert sorted(settled.intermediate_values) == [0, 1, 2, 3]
    rows = assert_one_row_per_trial_id_and_states_agree(out)
    assert len(rows) == len(rows_before) and (out / "best.yaml").is_file()


def test_a_worker_killing_seed_in_a_study_costs_only_itself(ray_cluster, tmp_path) -> None:
    """Run's worker-death policy in tune: seed 1 kills its worker on every attempt, so its
    rung (seeds 0 and 1) is retried, then run one seed at a time. Only seed 1 is recorded
    failed ("killed its worker"); seed 0 is ok; the trial fails with that seed's error."""
    spec = parse_tune_spec(probe_study(
        params={"steps": 2, "crash_seeds": [1]}, n_trials=1, parallelism=1))
    out = tmp_path / "study"
    lines: list[str] = []
    summary = tune(spec, quiet(out, lines, max_retries=0))
    assert (summary.complete, summary.failed) == (0, 1)
    assert any("running them one seed at a time" in line for line in lines), lines
    rows = assert_one_row_per_trial_id_and_states_agree(out).sort_values("seed")
    assert rows.seed.tolist() == [0, 1]
    assert rows.status.tolist() == ["ok", "failed"]
    assert rows.error.iloc[1].startswith("killed its worker 1 time (run alone)")
    study, _ = load_study(out)
    assert study.trials[0].user_attrs["error"].startswith(
        "seed 1 failed: killed its worker 1 time (run alone)")


@pytest.mark.slow
def test_sigterm_mid_study_then_resume_keeps_one_row_per_trial_id_and_states_agree(
        tmp_path: Path) -> None:
    """`sgsweep tune` as a user runs it, stopped by SIGTERM while trials run: exit 143, the
    resume line, the study's tracker run closed KILLED. The same command resumes it to the
    end; Parquet then holds each trial id once, and every row's tags agree with Optuna."""
    from tests.helpers import runs_by_role

    spec_path = tmp_path / "t.yaml"
    spec_path.write_text(yaml.safe_dump(probe_study(
        params={"steps": 2, "work_ms": 150}, n_trials=8,
        search={"label": {"choices": ["a", "b", "c"]}})))
    out = tmp_path / "out"
    command = [SGSWEEP, "tune", str(spec_path), "--out", str(out), "--num-cpus", "2",
               "--no-report"]
    driver = Driver(command)
    driver.wait_until(lambda: parts(out) >= 1, "a first finished trial")
    driver.process.send_signal(signal.SIGTERM)
    code, _, err = driver.finish()
    assert code == 143, err[-3000:]
    assert "interrupted: finished trials are saved" in err and "Traceback" not in err
    assert [r.info.status for r in runs_by_role(out, "probe-study")["study"]] == ["KILLED"]

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=600,
                             env=isolated_env())
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    study, _ = load_study(out)
    assert sum(t.state.name == "COMPLETE" for t in study.trials) == 8
    rows = assert_one_row_per_trial_id_and_states_agree(out)
    assert len(rows) == 4 * rows.config.nunique()
