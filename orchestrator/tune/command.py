"""`sgsweep tune` from start to end: check, hold DIR, open (or resume) the study, run the
optimise loop on Ray, write best.yaml, close the tracker's study run."""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator import provenance, schedule, signals
from orchestrator.engine import EngineOptions, results_folder, spec_copy
from orchestrator.errors import RunError
from orchestrator.tracking import resolve_tracking_uri
from orchestrator.tune.best import write_best
from orchestrator.tune.mirror import log_trial, start_study
from orchestrator.tune.optimise import optimise
from orchestrator.tune.recorded import StudyRecords
from orchestrator.tune.resume import settle
from orchestrator.tune.study import (
    JOURNAL,
    best_trial,
    finished_trials,
    is_tuning_directory,
    open_storage,
    open_study,
    repair_journal,
    state_counts,
    stored_url,
    write_info,
)
from orchestrator.tune_spec import TuneSpec


@dataclass
class TuneOptions(EngineOptions):
    storage: str | None = None  # Optuna storage URL; None: a journal file in out_dir
    n_trials: int | None = None  # overrides the spec's


@dataclass
class TuneSummary:
    study: str
    n_trials: int
    ran: int  # trials finished by this invocation
    complete: int  # in the whole study
    pruned: int
    failed: int
    retried: int  # orphaned trials re-enqueued by this invocation
    settled: int  # trials a stop left RUNNING, told now what their Parquet records say
    best_number: int | None
    best_value: float | None
    best_params: dict[str, Any]
    best_file: Path | None
    wall_s: float
    tracking_uri: str | None
    tracking_error: str | None


def tune(spec: TuneSpec, options: TuneOptions) -> TuneSummary:
    """Run (or resume) the study of `spec` in `options.out_dir`."""

    out_dir = options.out_dir
    started = time.perf_counter()
    n_trials = options.n_trials or spec.n_trials
    if spec.sampler == "grid":  # past its last point the grid sampler would repeat points
        n_trials = min(n_trials, math.prod(len(d.grid_values() or []) for d in spec.search))
    # A --storage or --address that cannot be used is the user's mistake: say so before DIR
    # is touched.
    schedule.preflight(spec.source, spec.sweep.resources, options.address, options.num_cpus,
                       options.num_gpus, options.progress)
    given_storage = open_storage(out_dir, options.storage) if options.storage else None
    storage_url = options.storage

    def check() -> None:  # DIR holds this study, or none (before anything is written)
        nonlocal storage_url
        sweeps = sorted(p.stem for p in (out_dir / "specs").glob("*.yaml"))
        if sweeps and not is_tuning_directory(out_dir):  # a study would hide their results
            raise RunError(f"{out_dir}: holds the results of sweep {sweeps[0]!r} (`sgsweep "
                           "run`); a study goes in a folder of its own: choose another --out")
        storage_url = stored_url(out_dir, spec, options.storage)

    # Damaged parts go aside (their Optuna trials stay told).
    with results_folder(out_dir, spec.name, options.spec_path, options.progress,
                        check) as store:
        artifacts = [spec_copy(out_dir, spec.name)] if options.spec_path else []
        if not storage_url:
            repair_journal(out_dir / JOURNAL)
        storage = given_storage or open_storage(out_dir, storage_url)
        study = open_study(spec, out_dir, storage_url, storage=storage)
        write_info(out_dir, spec, storage_url, has_spec_copy=bool(options.spec_path))
        recorded = StudyRecords(store, spec)
        settled = settle(study, storage, spec, recorded)
        if settled.told:
            options.progress(f"{spec.name}: {len(settled.told)} trials a stop left unfinished "
                             "in Optuna but recorded in Parquet told now what their records "
                             "say")
        if settled.orphaned:
            options.progress(f"{spec.name}: {len(settled.orphaned)} trials orphaned by an "
                             "earlier stop marked failed; their parameters run again first")
        remaining = n_trials - len(finished_trials(study))
        tracking_uri = resolve_tracking_uri(out_dir, options.tracking_uri)
        invocation = uuid.uuid4().hex[:12]
        origin = provenance.collect(invocation, "tune", spec.name) if remaining > 0 else {}
        if origin:
            store.write_invocation(origin)
        tracker = (start_study(tracking_uri, spec, out_dir, artifacts,
                               provenance.mlflow_tags(origin) if origin else {})
                   if tracking_uri and (remaining > 0 or settled.told) else None)
        if tracker is not None:
            for number in settled.told:
                log_trial(tracker, spec, study.trials[number])
        ran = 0
        if remaining > 0:
            options.progress(f"{spec.name}: {remaining} Optuna trials to run "
                             f"({n_trials - remaining} of {n_trials} finished), "
                             f"{len(spec.seeds)} seeds each in {len(spec.rungs)} rungs")
            try:
                with schedule.session(options.address, options.num_cpus, options.num_gpus):
                    if not signals.requested():  # e.g. a SIGTERM while Ray started
                        ran = optimise(spec, study, store, recorded, tracker, options,
                                       remaining, invocation)
                signals.check()
            except schedule.StartError:
                if tracker is not None:
                    tracker.close(None, {}, {}, status="FAILED")
                raise
            except KeyboardInterrupt as exc:
                if tracker is not None:
                    tracker.close(None, {}, {}, status="KILLED")
                options.progress(f"interrupted: finished trials are saved in {out_dir}; run "
                                 "the same command again to resume")
                if isinstance(exc, signals.Interrupted):
                    exc.reported = True
                raise
        else:
            options.progress(f"{spec.name}: all {n_trials} Optuna trials already finished")

        store.compact()  # a failed seed run again by a later trial: its latest attempt
        trials = study.get_trials(deepcopy=False)
        counts = state_counts(trials)
        best = best_trial(study)
        best_file = write_best(spec, out_dir, best) if best is not None else None
        if tracker is not None:
            tracker.close(best.value if best else None, best.params if best else {}, counts)
        return TuneSummary(
            study=spec.name, n_trials=n_trials, ran=ran, complete=counts["complete"],
            pruned=counts["pruned"], failed=counts["fail"], retried=len(settled.orphaned),
            settled=len(settled.told),
            best_number=best.number if best else None, best_value=best.value if best else None,
            best_params=dict(best.params) if best else {}, best_file=best_file,
            wall_s=time.perf_counter() - started, tracking_uri=tracking_uri,
            tracking_error=tracker.error if tracker else None,
        )
