"""`sgsweep tune`: Optuna asks, Ray evaluates each trial's seeds, Parquet and MLflow record.

The driver holds the study and is its only writer. Up to `parallelism` Optuna trials are in
flight at once (ask/tell). A trial's seeds run in rungs: each rung is one seed block sent
through the same engine as `sgsweep run` (`schedule.ChunkPool` → `execute.run_blocks` on a
Ray worker). After a rung the trial reports every seed's value to Optuna (step = the
seed's index in `seeds`, the same in every trial, so trials are paired) and the pruner may
stop it. A finished trial's seed records go to the Parquet datasets of `run`, tagged with
the study, the Optuna trial number and its final state, and to MLflow as a child of the
study's parent run.

One row per trial id, one state per trial: a seed already recorded ok is reused by a later
trial of the same parameters, not run again, and a trial's records are written before
Optuna is told its state (see optimise.py).

Resume: the study lives in Optuna storage (a journal file in DIR by default). Re-running
the same command loads it; a trial a crash left RUNNING is told what its Parquet records
say if they are there, else marked FAIL (user attribute `orphaned`) and its parameters
enqueued again (resume.py); the study runs until `n_trials` trials have finished
(complete, pruned, or failed by their own error).

One module a job:
    command.py    `tune()`: check, hold DIR, open or resume the study, optimise, best.yaml
    study.py      storage, journal repair, DIR/tune.json, the study read back (`status`)
    search.py     the sampler and the pruner (the grid through Optuna's queue)
    optimise.py   the ask / run rungs / tell loop
    objective.py  a seed's value, the value over seeds, what a rung reports
    recorded.py   the study as Parquet holds it: seed records to reuse, their tags
    resume.py     trials a stop left RUNNING, settled with Parquet
    best.py       DIR/best.yaml
    mirror.py     the tracker's view of the study, `mlflow-sync`
"""

from orchestrator.tune.best import write_best
from orchestrator.tune.command import TuneOptions, TuneSummary, tune
from orchestrator.tune.mirror import start_study, sync_study
from orchestrator.tune.objective import aggregate, seed_value
from orchestrator.tune.study import (
    JOURNAL,
    STUDY_FILE,
    best_trial,
    is_tuning_directory,
    load_study,
    open_storage,
    open_study,
    study_info,
    study_status,
)

__all__ = [
    "JOURNAL", "STUDY_FILE", "TuneOptions", "TuneSummary", "aggregate", "best_trial",
    "is_tuning_directory", "load_study", "open_storage", "open_study", "seed_value",
    "start_study", "study_info", "study_status", "sync_study", "tune", "write_best",
]
