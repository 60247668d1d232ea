"""`sgsweep tune`: Optuna asks, Ray evaluates each trial's seeds, Parquet and MLflow record.

The driver holds the study and is its only writer. Up to `parallelism` Optuna trials are in
flight at once (ask/tell). A trial's seeds run in rungs: each rung is one seed block sent
through the same execution path as `sgsweep run` (`schedule.submit` → `execute.run_blocks`
on a Ray worker). After a rung the trial reports every seed's value to Optuna (step = the
seed's index in `seeds`, the same in every trial, so trials are paired) and the pruner may
stop it. A finished trial's seed records go to the Parquet datasets of `run`, tagged with
the study, the Optuna trial number and its final state, and to MLflow as a child of the
study's parent run.

Resume: the study lives in Optuna storage (a journal file in DIR by default). Re-running
the same command loads it; trials left RUNNING by a crash are marked FAIL (user attribute
`orphaned`) and their parameters enqueued again, so they are retried first; the study runs
until `n_trials` trials have finished (complete, pruned, or failed by their own error).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator import plan, schedule, signals
from orchestrator.engine import EngineOptions, directory_lock, save_spec_copy
from orchestrator.errors import RunError
from orchestrator.record import ResultStore
from orchestrator.records import TrialRecord
from orchestrator.spec import MAX_NAME, NAME_PATTERN, SpecError, load_spec
from orchestrator.tracking import (
    InvocationInfo,
    Study,
    error_line,
    open_tracker,
    resolve_tracking_uri,
)
from orchestrator.tune_spec import Objective, TuneSpec, dump_sweep
from tasks import MetricLog, get_task

STUDY_FILE = "tune.json"  # marks a tuning directory; says where its study lives
JOURNAL = "study.journal"


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
    best_number: int | None
    best_value: float | None
    best_params: dict[str, Any]
    best_file: Path | None
    wall_s: float
    tracking_uri: str | None
    tracking_error: str | None


def seed_value(log: MetricLog, objective: Objective) -> float | None:
    """One seed's objective value: its metric at the last step, or its mean over steps."""
    points = sorted((s, v) for n, s, v in zip(log.names, log.steps, log.values, strict=True)
                    if n == objective.metric)
    if not points:
        return None
    return points[-1][1] if objective.value == "final" else float(np.mean([v for _, v in points]))


def aggregate(values: list[float], how: str) -> float:
    """Seeds' values combined: mean, median, or interquartile mean (the middle half)."""
    x = np.sort(np.asarray(values, dtype=float))
    if how == "median":
        return float(np.median(x))
    if how == "iqm":
        cut = int(math.floor(len(x) / 4))
        return float(x[cut:len(x) - cut].mean())
    return float(x.mean())


def storage_for(out_dir: Path, url: str | None):
    """The study's Optuna storage: a journal file in DIR, or a database URL (clusters)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if url:
        return optuna.storages.RDBStorage(url) if "://" in url else JournalStorage(
            JournalFileBackend(url))
    return JournalStorage(JournalFileBackend(str(out_dir / JOURNAL)))


def make_sampler(spec: TuneSpec):
    import optuna

    seed = spec.sampler_options.get("seed")
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if spec.sampler == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if spec.sampler == "grid":

        class AskTellGridSampler(optuna.samplers.GridSampler):
            """Without the `study.stop()` at the grid's last point, which only works inside
            `study.optimize`; `tune` caps n_trials at the grid's size instead."""

            def after_trial(self, study, trial, state, values) -> None:
                return None

        return AskTellGridSampler({d.name: d.grid_values() for d in spec.search}, seed=seed)
    # constant_liar: trials in flight count as bad guesses, so parallel asks spread out.
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def make_pruner(spec: TuneSpec):
    import optuna

    if spec.pruner == "none" or len(spec.rungs) == 1:
        return optuna.pruners.NopPruner()
    if spec.pruner == "median":
        return optuna.pruners.MedianPruner(**spec.pruner_options)
    return optuna.pruners.WilcoxonPruner(**spec.pruner_options)


def open_storage(out_dir: Path, url: str | None):
    """`storage_for`, with a bad URL or an unreachable database as a one-line RunError."""
    try:
        return storage_for(out_dir, url)
    except Exception as exc:  # noqa: BLE001 - a bad URL, unreachable database, bad journal
        where = f"--storage {url}" if url else str(out_dir / JOURNAL)
        raise RunError(f"{where}: {error_line(exc)}") from None


def open_study(spec: TuneSpec, out_dir: Path, storage_url: str | None, quiet: bool = True,
               storage=None):
    """Create or load the study; `storage`: one already opened for `storage_url`."""
    import optuna

    if quiet:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    # The Wilcoxon pruner and the matplotlib plots are marked experimental; that is known.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if storage is None:
        storage = open_storage(out_dir, storage_url)
    try:
        return optuna.create_study(
            study_name=spec.name, storage=storage,
            sampler=make_sampler(spec), pruner=make_pruner(spec),
            direction=spec.objective.direction, load_if_exists=True)
    except ValueError as exc:  # e.g. the stored study optimises in the other direction
        raise RunError(f"study {spec.name!r}: {str(exc).splitlines()[0]}") from None


def repair_journal(path: Path) -> None:
    """Undo what a kill -9 can leave in DIR's journal: a torn last record (cut back to the
    last complete line, or the next append would corrupt the log) and Optuna's lock file
    (stale: we hold DIR's lock, so no other sgsweep writes this study)."""
    Path(f"{path}.lock").unlink(missing_ok=True)
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as fh:
        data = fh.read()
        if not data.endswith(b"\n"):
            fh.truncate(data.rfind(b"\n") + 1)
            fh.flush()
            os.fsync(fh.fileno())


def is_tuning_directory(out_dir: Path) -> bool:
    return (out_dir / STUDY_FILE).is_file()


def study_info(out_dir: Path) -> dict[str, Any]:
    """What DIR/tune.json says: the study's name, storage, objective, seeds, search.

    Checked before any of it becomes a path or a storage URL (`RunError` naming the file):
    the study is a name, the spec copy is DIR/specs/STUDY.yaml, and the storage is DIR's
    journal or an existing database (reading a study never creates one)."""
    path = out_dir / STUDY_FILE
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunError(f"{path}: not readable as JSON ({error_line(exc)}); it is written by "
                       "`sgsweep tune`: restore it, or tune into another --out") from None
    if not isinstance(info, dict):
        raise RunError(f"{path}: expected a JSON object, got {type(info).__name__}")

    def bad(key: str, expected: str) -> RunError:
        text = repr(info.get(key))
        return RunError(f"{path}: {key} {text[:60] + ('...' if len(text) > 60 else '')} is "
                        f"not {expected}; it is written by `sgsweep tune`: restore it")

    study = info.get("study")
    if not (isinstance(study, str) and len(study) <= MAX_NAME and NAME_PATTERN.fullmatch(study)):
        raise bad("study", "a study name (letters, digits, '.', '_', '-')")
    if info.get("spec") not in (None, f"specs/{study}.yaml"):
        raise bad("spec", f"specs/{study}.yaml")
    objective = info.get("objective")
    if not (isinstance(objective, dict) and isinstance(objective.get("metric"), str)):
        raise bad("objective", "an objective with a metric")
    storage = info.get("storage") or ""
    if not isinstance(storage, str) or (storage and not _known_storage(out_dir, storage)):
        raise bad("storage", "DIR's journal, an existing journal or SQLite file, or a "
                             "postgresql/mysql URL")
    return info


DATABASES = {"sqlite", "postgresql", "mysql", "oracle", "mssql"}  # SQLAlchemy dialects


def _known_storage(out_dir: Path, url: str) -> bool:
    """A storage URL from tune.json that may be opened: a database of a known dialect (a
    SQLite file or journal must already exist: opening one creates it)."""
    if "://" not in url:
        return Path(url).is_file()
    scheme, _, rest = url.partition("://")
    if scheme.split("+")[0] not in DATABASES or any(c in url for c in "\n\r\0"):
        return False
    if scheme.split("+")[0] != "sqlite":
        return True
    path = Path(rest[1:].split("?")[0]) if rest.startswith("/") else None
    return path is not None and path.is_file() and _optuna_sqlite(path)


def _optuna_sqlite(path: Path) -> bool:
    """An SQLite file that holds Optuna's tables (read-only look: opening it as storage
    would add them to any database)."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro",
                                                uri=True)) as db:
            return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                              "name = 'studies'").fetchone() is not None
    except sqlite3.Error:
        return False


def load_study(out_dir: Path):
    """The study of a tuning directory (for reports)."""
    import optuna

    info = study_info(out_dir)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(out_dir, info.get("storage") or None)
    try:
        return optuna.load_study(study_name=info["study"], storage=storage), info
    except KeyError:
        raise RunError(f"{out_dir / STUDY_FILE}: its storage holds no study "
                       f"{info['study']!r}") from None


def study_status(out_dir: Path) -> str:
    """One line for `sgsweep status DIR` on a tuning directory."""
    study, info = load_study(out_dir)
    states: dict[str, int] = {}
    orphaned = 0
    for t in study.get_trials(deepcopy=False):
        states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
        orphaned += bool(t.user_attrs.get("orphaned"))
    counts = ", ".join(f"{v} {k}" for k, v in sorted(states.items())) or "no trials"
    line = f"study {info['study']}: {counts}" + (f" ({orphaned} orphaned by a stop, retried)"
                                                if orphaned else "")
    best = best_trial(study)
    if best is not None:
        line += f"; best {info['objective']['metric']} = {best.value:.6g} (trial {best.number})"
    return line


def sync_study(out_dir: Path, tracking_uri: str) -> tuple[int, int]:
    """`sgsweep mlflow-sync` for a tuning directory: log each finished Optuna trial that
    has no child run yet (e.g. the tracking server was down); returns (logged, present)."""
    from optuna.trial import TrialState

    from orchestrator.tune_spec import load_tune_spec

    study, info = load_study(out_dir)
    spec = load_tune_spec(out_dir / info["spec"]) if info.get("spec") else None
    if spec is None:
        raise RunError(f"{out_dir}: the tune file copy {info.get('spec')} is missing")
    tracker = start_study(tracking_uri, spec, out_dir, [])
    if tracker.error is not None:
        raise RunError(f"--tracking-uri {tracking_uri}: {tracker.error}")
    present = {str(n) for n in tracker.logged_trials()}
    logged = 0
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.RUNNING or t.state == TrialState.WAITING \
                or str(t.number) in present:
            continue
        steps = sorted(t.intermediate_values)
        per_seed = spec.pruner != "median"
        tracker.trial(t.number, t.state.name, dict(t.params),
                      t.value if t.state == TrialState.COMPLETE else None,
                      [t.intermediate_values[s] for s in steps] if per_seed else [],
                      [spec.seeds[s] for s in steps] if per_seed else [],
                      t.datetime_start.timestamp() if t.datetime_start else time.time(),
                      t.user_attrs.get("error"), t.user_attrs.get("retry_of"))
        logged += 1
    best = best_trial(study)
    trials = study.get_trials(deepcopy=False)
    counts = state_counts(trials)
    tracker.close(best.value if best else None, dict(best.params) if best else {}, counts)
    if tracker.error is not None:
        raise RunError(f"--tracking-uri {tracking_uri}: {tracker.error}")
    return logged, len(present & {str(t.number) for t in trials})


def state_counts(trials: list) -> dict[str, int]:
    """How many trials are complete, pruned and failed (keys as Optuna's states, lowercase)."""
    from optuna.trial import TrialState

    return {s.name.lower(): sum(t.state == s for t in trials)
            for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}


def finished_trials(study) -> list:
    """Trials that count towards n_trials: complete, pruned, or failed by their own error."""
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False)
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
            or (t.state == TrialState.FAIL and not t.user_attrs.get("orphaned"))]


def recover_orphans(study) -> int:
    """Mark trials left RUNNING by a crash FAIL (`orphaned`) and enqueue their params again."""
    import optuna
    from optuna.trial import TrialState

    orphans = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for frozen in orphans:
        trial = optuna.trial.Trial(study, frozen._trial_id)
        trial.set_user_attr("orphaned", True)
        study.tell(trial, state=TrialState.FAIL)
        study.enqueue_trial(frozen.params, user_attrs={"retry_of": frozen.number})
    return len(orphans)


@dataclass
class _Running:
    trial: Any  # optuna.trial.Trial
    sweep_config: dict[str, Any]
    block: plan.Block
    rung: int = 0
    values: list[float] = field(default_factory=list)
    records: list[TrialRecord] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    expecting: int = 0  # records of the rung in flight
    arrived: list[TrialRecord] = field(default_factory=list)  # ... those back so far


def start_study(uri: str | None, spec: TuneSpec, out_dir: Path, artifacts: list[Path]) -> Study:
    """The tracker's view of the study: one run per study, one per Optuna trial."""
    search = {d.name: str(d.distribution()) for d in spec.search}
    params = {"task": spec.task, "objective": json.dumps(vars(spec.objective)),
              "search": json.dumps(search), "seeds": json.dumps(list(spec.seeds)),
              "sampler": spec.sampler, "pruner": spec.pruner, "rung_size": spec.rung_size}
    return open_tracker(uri, out_dir).start_study(InvocationInfo(
        sweep=spec.name, task=spec.task, invocation="", out_dir=out_dir,
        params={k: str(v) for k, v in params.items()}, artifacts=artifacts))


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
    with signals.deferred(), directory_lock(out_dir):
        info_path = out_dir / STUDY_FILE
        if info_path.exists():
            info = study_info(out_dir)
            if info.get("study") != spec.name:
                raise RunError(f"{out_dir}: holds study {info.get('study')!r}, not "
                               f"{spec.name!r}; choose another --out")
            for key, now in (("objective", vars(spec.objective)), ("seeds", list(spec.seeds))):
                if key in info and info[key] != now:
                    raise RunError(
                        f"{out_dir}: study {spec.name!r} was run with {key} {info[key]}, the "
                        f"file now says {now}; its trials would not be comparable. Choose "
                        "another --out (search ranges, n_trials, sampler and pruner may change)")
            storage_url = options.storage or info.get("storage") or None
        else:
            storage_url = options.storage
        store = ResultStore(out_dir)
        store.prepare()
        store.heal(options.progress)  # damaged parts aside (their Optuna trials stay told)
        copy = save_spec_copy(out_dir, spec.name, options.spec_path)
        artifacts = [copy] if copy else []
        if not storage_url:
            repair_journal(out_dir / JOURNAL)
        study = open_study(spec, out_dir, storage_url, storage=given_storage)
        _atomic_text(info_path, json.dumps({
            "study": spec.name, "task": spec.task, "storage": storage_url or "",
            "objective": vars(spec.objective), "seeds": list(spec.seeds),
            "search": [d.name for d in spec.search], "pruner": spec.pruner,
            "spec": f"specs/{spec.name}.yaml" if options.spec_path else None,
        }, indent=1))
        retried = recover_orphans(study)
        if retried:
            options.progress(f"{spec.name}: {retried} trials orphaned by an earlier stop "
                             "marked failed; their parameters run again first")
        remaining = n_trials - len(finished_trials(study))
        tracking_uri = resolve_tracking_uri(out_dir, options.tracking_uri)
        tracker = (start_study(tracking_uri, spec, out_dir, artifacts)
                   if tracking_uri and remaining > 0 else None)
        ran = 0
        if remaining > 0:
            options.progress(f"{spec.name}: {remaining} Optuna trials to run "
                             f"({n_trials - remaining} of {n_trials} finished), "
                             f"{len(spec.seeds)} seeds each in {len(spec.rungs)} rungs")
            try:
                with schedule.session(options.address, options.num_cpus, options.num_gpus):
                    ran = _optimise(spec, study, store, tracker, options, remaining)
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

        trials = study.get_trials(deepcopy=False)
        counts = state_counts(trials)
        best = best_trial(study)
        best_file = write_best(spec, out_dir, best) if best is not None else None
        if tracker is not None:
            tracker.close(best.value if best else None, best.params if best else {}, counts)
        return TuneSummary(
            study=spec.name, n_trials=n_trials, ran=ran, complete=counts["complete"],
            pruned=counts["pruned"], failed=counts["fail"], retried=retried,
            best_number=best.number if best else None, best_value=best.value if best else None,
            best_params=dict(best.params) if best else {}, best_file=best_file,
            wall_s=time.perf_counter() - started, tracking_uri=tracking_uri,
            tracking_error=tracker.error if tracker else None,
        )


def best_trial(study):
    """The study's best complete trial, or None before the first one."""
    try:
        return study.best_trial
    except ValueError:  # no complete trial yet
        return None


def _optimise(spec: TuneSpec, study, store: ResultStore, tracker: Study | None,
              options: TuneOptions, remaining: int) -> int:
    """Keep up to `parallelism` trials in flight until `remaining` trials have finished, or
    a stop is requested (the caller raises it)."""
    from optuna.trial import TrialState

    task = get_task(spec.task)
    width = spec.parallelism or schedule.parallelism(spec.sweep.resources)
    pool: schedule.ChunkPool[_Running] = schedule.ChunkPool(
        spec.task, spec.sweep.resources, options.max_retries, spec.sweep.timeout_s,
        options.progress)
    invocation = uuid.uuid4().hex[:12]
    distributions = spec.distributions()
    rungs = spec.rungs
    asked = finished = 0
    best_seen = best_trial(study)

    def submit(run: _Running) -> None:
        seeds = set(rungs[run.rung])
        block = plan.Block(run.block.config_id, run.block.config,
                           tuple(t for t in run.block.trials if t.seed in seeds))
        run.expecting = len(block.trials)
        pool.submit([block], run)

    def finish(run: _Running, state, value: float | None = None, error: str | None = None):
        nonlocal finished, best_seen
        trial = run.trial
        if error:
            trial.set_user_attr("error", error[:2000])
        frozen = study.tell(trial, value if state == TrialState.COMPLETE else None,
                            state=state)
        finished += 1
        name = state.name
        if run.records:
            configs = {run.block.config_id: run.block.config}
            store.write(run.records, sweep=spec.name, task=task, configs=configs,
                        invocation=invocation,
                        tags={"study": spec.name, "optuna_trial": trial.number,
                              "optuna_state": name.lower()})
        if tracker is not None:
            tracker.trial(trial.number, name, dict(frozen.params), frozen.value
                          if state == TrialState.COMPLETE else None, run.values,
                          [r.seed for r in run.records], run.started, error,
                          frozen.user_attrs.get("retry_of"))
        shown = (f"{value:.6g}" if value is not None
                 else f"after {len(run.values)} seeds" if state == TrialState.PRUNED
                 else (error or "")[:120])
        options.progress(f"  trial {trial.number}: {name.lower()} {shown} "
                         f"{_fmt(frozen.params)} ({finished}/{remaining})")
        best = best_trial(study)
        if best is not None and (best_seen is None or best.number != best_seen.number):
            best_seen = best
            write_best(spec, options.out_dir, best)

    def rung_done(run: _Running, records: list[TrialRecord]) -> None:
        run.records.extend(records)
        bad = [r for r in records if r.status != "ok"]
        if bad:
            finish(run, TrialState.FAIL, error=f"seed {bad[0].seed} failed: {bad[0].error}")
            return
        for r in records:
            v = seed_value(r.metrics, spec.objective)
            if v is None:
                finish(run, TrialState.FAIL, error="no metric "
                       f"{spec.objective.metric!r} recorded")
                raise RunError(
                    f"objective.metric: task {spec.task!r} recorded no metric "
                    f"{spec.objective.metric!r}; it recorded "
                    f"{sorted(set(r.metrics.names))}")
            run.values.append(v)
            if spec.pruner != "median":
                run.trial.report(v, step=spec.seeds.index(r.seed))
        if spec.pruner == "median":
            run.trial.report(aggregate(run.values, spec.objective.aggregate),
                             step=len(run.values))
        run.rung += 1
        if run.rung == len(rungs):
            finish(run, TrialState.COMPLETE, aggregate(run.values, spec.objective.aggregate))
        elif run.trial.should_prune():
            finish(run, TrialState.PRUNED)
        else:
            submit(run)

    def top_up() -> None:
        nonlocal asked
        while len(pool) < width and asked < remaining and not signals.requested():
            trial = study.ask(distributions)
            asked += 1
            try:
                sweep = spec.sweep_for(trial.params)
            except SpecError as exc:
                run = _Running(trial, {}, plan.Block("", {}, ()))
                finish(run, TrialState.FAIL, error=f"invalid parameters: {exc}")
                continue
            (block,) = plan.expand(sweep)
            submit(_Running(trial, block.config, block))

    top_up()
    for done in pool.rounds(poll_s=1.0):
        for run, records in done:
            # A rung whose worker died comes back one seed at a time: wait for all of it.
            run.arrived.extend(records)
            if len(run.arrived) == run.expecting:
                order = {seed: i for i, seed in enumerate(rungs[run.rung])}
                arrived = sorted(run.arrived, key=lambda r: order[r.seed])
                run.arrived = []
                rung_done(run, arrived)
        top_up()
    return finished


def _fmt(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in params.items())


def write_best(spec: TuneSpec, out_dir: Path, best) -> Path:
    """DIR/best.yaml: the best trial's parameters on fresh seeds, ready for `sgsweep run`."""
    raw = spec.best_sweep(best.params)
    header = (f"Best of study {spec.name}: Optuna trial {best.number}, "
              f"{spec.objective.aggregate} {spec.objective.metric} ({spec.objective.value}) "
              f"= {best.value:.6g} over tuning seeds {list(spec.seeds)}.\n"
              f"Re-evaluates it on fresh seeds: sgsweep run best.yaml --out DIR")
    path = out_dir / "best.yaml"
    _atomic_text(path, dump_sweep(raw, header))
    load_spec(path)  # what we wrote must run
    return path


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(text)
    os.replace(tmp, path)
