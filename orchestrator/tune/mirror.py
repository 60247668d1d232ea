"""The study as the tracker shows it: one run per study, one per finished Optuna trial;
`sgsweep mlflow-sync` on a tuning directory."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from orchestrator.errors import RunError
from orchestrator.tracking import (
    InvocationInfo,
    Study,
    default_tracking_uri,
    open_tracker,
    rebuild_broken_store,
    store_name,
)
from orchestrator.tune.study import best_trial, load_study, state_counts
from orchestrator.tune_spec import TuneSpec


def start_study(uri: str | None, spec: TuneSpec, out_dir: Path, artifacts: list[Path],
                tags: dict[str, str] | None = None) -> Study:
    """The tracker's view of the study: one run per study, one per Optuna trial; `tags`:
    this invocation's provenance."""
    search = {d.name: str(d.distribution()) for d in spec.search}
    params = {"task": spec.task, "objective": json.dumps(vars(spec.objective)),
              "search": json.dumps(search), "seeds": json.dumps(list(spec.seeds)),
              "sampler": spec.sampler, "pruner": spec.pruner, "rung_size": spec.rung_size}
    return open_tracker(uri, out_dir).start_study(InvocationInfo(
        sweep=spec.name, task=spec.task, invocation="", out_dir=out_dir,
        params={k: str(v) for k, v in params.items()}, artifacts=artifacts, tags=tags or {}))


def sync_study(out_dir: Path, tracking_uri: str) -> tuple[int, int]:
    """`sgsweep mlflow-sync` for a tuning directory: log each finished Optuna trial that
    has no child run yet (e.g. the tracking server was down); returns (logged, present).
    Under DIR's lock; DIR's own store, if half-created, is rebuilt."""
    from orchestrator.engine import directory_lock

    with directory_lock(out_dir, purpose="mlflow-sync"):
        if tracking_uri == default_tracking_uri(out_dir):
            rebuild_broken_store(out_dir, lambda line: print(line, file=sys.stderr),
                                 by_sync=True)
        return _sync_study(out_dir, tracking_uri)


def _sync_study(out_dir: Path, tracking_uri: str) -> tuple[int, int]:
    from optuna.trial import TrialState

    from orchestrator.tune_spec import load_tune_spec

    where = store_name(out_dir, tracking_uri)
    study, info = load_study(out_dir)
    spec = load_tune_spec(out_dir / info["spec"]) if info.get("spec") else None
    if spec is None:
        raise RunError(f"{out_dir}: the tune file copy {info.get('spec')} is missing")
    tracker = start_study(tracking_uri, spec, out_dir, [])
    if tracker.error is not None:
        raise RunError(f"{where}: {tracker.error}")
    present = {str(n) for n in tracker.logged_trials()}
    logged = 0
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.RUNNING or t.state == TrialState.WAITING \
                or str(t.number) in present:
            continue
        log_trial(tracker, spec, t)
        logged += 1
    best = best_trial(study)
    trials = study.get_trials(deepcopy=False)
    counts = state_counts(trials)
    tracker.close(best.value if best else None, dict(best.params) if best else {}, counts)
    if tracker.error is not None:
        raise RunError(f"{where}: {tracker.error}")
    return logged, len(present & {str(t.number) for t in trials})


def log_trial(tracker: Study, spec: TuneSpec, t) -> None:
    """One finished Optuna trial (a FrozenTrial) as the study's tracker shows it."""
    from optuna.trial import TrialState

    steps = sorted(t.intermediate_values)
    per_seed = spec.pruner != "median"
    tracker.trial(t.number, t.state.name, dict(t.params),
                  t.value if t.state == TrialState.COMPLETE else None,
                  [t.intermediate_values[s] for s in steps] if per_seed else [],
                  [spec.seeds[s] for s in steps] if per_seed else [],
                  t.datetime_start.timestamp() if t.datetime_start else time.time(),
                  t.user_attrs.get("error"), t.user_attrs.get("retry_of"))
