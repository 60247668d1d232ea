"""`sgsweep` command line: run, tune, report, validate, status, logs.

User mistakes (bad spec, missing directory, busy directory) print one line starting with
`error:` and exit with code 2; nothing is written before the spec has been validated. So
do problems of DIR's file system (read-only, full, a file where a folder goes, `.lock` not
a file) and of files read back from DIR (damaged parts, a tune.json or journal that is
not what sgsweep wrote). A fault outside the user's hands (Ray did not start, an I/O
error) is one line too, exit code 1. Ctrl-C,
SIGTERM and SIGHUP stop at the next safe point (see orchestrator/signals.py) and exit with
130, 143 and 129.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

EXIT_USAGE = 2
EXIT_FAULT = 1


class UserError(Exception):
    """A mistake the user can fix; printed as one line, exit code 2."""


def _number(kind: type, minimum: float, inclusive: bool, expected: str,
            maximum: float = float("inf")):
    """An argparse type: `kind(text)` at least (or above) `minimum`, at most `maximum`."""

    def parse(text: str):
        try:
            # ASCII only: int() and float() also read other scripts' digits ("١٢").
            value = kind(text) if text.isascii() else None
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or value < minimum \
                or (not inclusive and value == minimum) or value > maximum:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


_positive_int = _number(int, 1, True, "a positive integer")
_port = _number(int, 1, True, "a port number in 1..65535", maximum=65535)
_non_negative_int = _number(int, 0, True, "an integer >= 0")
_positive_float = _number(float, 0.0, False, "a number > 0")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (and `-h` still shows the usage)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_USAGE, f"error: {self.prog}: {message} (see {self.prog} -h)\n")


def _add_engine_command(sub, name: str, help: str, spec_help: str) -> argparse.ArgumentParser:
    """`run` or `tune`: a file and the results directory (then its own options, then
    `_add_engine_options`)."""
    command = sub.add_parser(name, help=help)
    command.add_argument("spec", type=Path, help=spec_help)
    command.add_argument("--out", type=Path, required=True, help="results directory")
    return command


def _add_engine_options(command: argparse.ArgumentParser, retried: str) -> None:
    """Options `run` and `tune` share: where to run (Ray), where to track (MLflow)."""
    command.add_argument("--tracking-uri", default=None,
                         help="MLflow tracking URI (default: sqlite:///OUT/mlflow.db; "
                              "'none' to skip)")

    command.add_argument("--address", default=None,
                         help="Ray cluster address (default: start an embedded local Ray)")
    command.add_argument("--num-cpus", type=_positive_int, default=None,
                         help="CPUs for the embedded Ray (default: all)")
    command.add_argument("--num-gpus", type=_non_negative_int, default=None,
                         help="GPUs for the embedded Ray (default: detected)")
    command.add_argument("--max-retries", type=_non_negative_int, default=3,
                         help=f"retries of a {retried} whose Ray worker or node died (default 3)")
    command.add_argument("--no-report", action="store_true",
                         help="skip the report at the end")
    _add_max_trials(command)


def _add_max_trials(command: argparse.ArgumentParser) -> None:
    command.add_argument("--max-trials", type=_positive_int, default=None, metavar="N",
                         help="refuse a file of more trials (configs x seeds; default "
                              "100,000: orchestrator.spec.DEFAULT_MAX_TRIALS)")


def _add_level_option(command: argparse.ArgumentParser, default_help: str = "the sweep "
                      "file's tracking_level, else auto") -> None:
    from orchestrator.tracking.view import LEVELS

    command.add_argument("--tracking-level", choices=LEVELS, default=None,
                         help="MLflow runs: one per configuration (config), plus one per seed "
                              "(seed), or seed runs only where trials take >= 1 s (auto); "
                              f"default: {default_help}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="sgsweep",
        description="Seeded sweeps of feedback rules on Ray, recorded in Parquet and MLflow.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = _add_engine_command(sub, "run", "run (or resume) every trial of a sweep file",
                              "sweep file (YAML)")
    _add_engine_options(run, retried="chunk")
    _add_level_option(run)
    run.add_argument("--block-size", type=_positive_int, default=None,
                     help="seeds per block (default: the spec's, else automatic)")
    run.add_argument("--retry-failed", action="store_true", help="re-run failed trials")
    run.add_argument("--trial-timeout", type=_positive_float, default=None, metavar="SECONDS",
                     help="fail a trial that runs longer (default: the spec's timeout_s)")

    tune = _add_engine_command(sub, "tune", "run (or resume) an Optuna study of a tune file",
                               "tune file (YAML: a sweep file with `search`)")
    tune.add_argument("--storage", default=None,
                      help="Optuna storage URL, e.g. postgresql://... for a cluster "
                           "(default: a journal file OUT/study.journal)")
    _add_engine_options(tune, retried="rung")
    tune.add_argument("--n-trials", type=_positive_int, default=None,
                      help="Optuna trials to finish in total (default: the spec's n_trials)")

    status = sub.add_parser("status", help="done / failed / pending trials per sweep")
    status.add_argument("out", type=Path, help="results directory")

    sync = sub.add_parser("mlflow-sync", help="rebuild / repair the MLflow view from Parquet")
    sync.add_argument("out", type=Path, help="results directory")
    sync.add_argument("--tracking-uri", default=None,
                      help="MLflow tracking URI (default: sqlite:///OUT/mlflow.db)")
    _add_level_option(sync, default_help="as the sweep's latest run chose")

    ui = sub.add_parser("ui", help="start the MLflow UI on 127.0.0.1 for a results directory")
    ui.add_argument("out", type=Path, help="results directory")
    ui.add_argument("--port", type=_port, default=5000)

    dashboard = sub.add_parser("dashboard", help="start optuna-dashboard on 127.0.0.1 for "
                                                 "a `sgsweep tune` results directory")
    dashboard.add_argument("out", type=Path, help="results directory of `sgsweep tune`")
    dashboard.add_argument("--port", type=_positive_int, default=8080)

    validate = sub.add_parser("validate", help="check a sweep file and print its size")
    validate.add_argument("spec", type=Path)
    _add_max_trials(validate)

    schema = sub.add_parser("schema", help="write the JSON Schema of sweep and tune files "
                                           "(for editors: completion and checks as you type)")
    schema.add_argument("-o", "--output", type=Path, default=None,
                        help="file to write (default: standard output)")

    logs = sub.add_parser("logs", help="a failed trial's traceback and output tail")
    logs.add_argument("out", type=Path, help="results directory")
    logs.add_argument("trial_id", nargs="?", default=None, help="the trial's id")
    logs.add_argument("--failed", action="store_true",
                      help="the logs of every trial whose latest attempt failed")

    report = sub.add_parser("report", help="tables and figures for a results directory")
    report.add_argument("out", type=Path, help="results directory")
    report.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI to log the report to (default: OUT's store)")
    return parser


def main(argv: list[str] | None = None) -> int:
    from orchestrator import signals

    signals.reset()
    signals.install()  # before the heavy imports: Ctrl-C, SIGTERM, SIGHUP all stop cleanly
    args = build_parser().parse_args(argv)
    try:
        # Inside the try: Ctrl-C while torch/Ray are still importing is a clean exit too.
        from orchestrator.errors import RunError, visible
        from orchestrator.schedule import StartError
        from orchestrator.spec import SpecError
    except KeyboardInterrupt as exc:
        return _interrupted(args, exc)
    try:
        commands = {"run": cmd_run, "tune": cmd_tune, "validate": cmd_validate,
                    "report": cmd_report, "status": cmd_status, "logs": cmd_logs,
                    "mlflow-sync": cmd_sync,
                    "ui": cmd_ui, "dashboard": cmd_dashboard, "schema": cmd_schema}
        return commands[args.command](args)
    except (SpecError, UserError, RunError) as exc:
        print(f"error: {visible(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except StartError as exc:
        print(f"error: {visible(str(exc))}", file=sys.stderr)
        return EXIT_FAULT
    except OSError as exc:  # the file system: full, read-only, a file where a folder goes
        from orchestrator.engine import OS_HINTS, os_errno, os_error_line

        print(f"error: {visible(os_error_line(exc))}", file=sys.stderr)
        return EXIT_USAGE if os_errno(exc) in OS_HINTS else EXIT_FAULT
    except KeyboardInterrupt as exc:
        return _interrupted(args, exc)


def _interrupted(args: argparse.Namespace, exc: KeyboardInterrupt) -> int:
    """Exit code 128 + signal; `run` and `tune` say how to resume if they have not yet."""
    if args.command in ("run", "tune") and not getattr(exc, "reported", False):
        print("interrupted: completed trials are saved; run the same command again to resume",
              file=sys.stderr)
    return getattr(exc, "exit_code", 130)


def cmd_validate(args: argparse.Namespace) -> int:
    from orchestrator.spec import load_yaml, parse_spec

    raw = load_yaml(args.spec)
    if isinstance(raw, dict) and "search" in raw:  # a tune file
        from orchestrator.tune_spec import parse_tune_spec

        tuned = parse_tune_spec(raw, str(args.spec), args.max_trials)
        print(f"{args.spec}: ok — study {tuned.name!r}, task {tuned.task!r}, searching "
              f"{[d.name for d in tuned.search]}, {tuned.n_trials} trials x "
              f"{len(tuned.seeds)} seeds in {len(tuned.rungs)} rungs ({tuned.sampler}, "
              f"{tuned.pruner} pruner)")
        return 0
    spec = parse_spec(raw, str(args.spec), args.max_trials)
    print(f"{args.spec}: ok — sweep {spec.name!r}, task {spec.task!r}, "
          f"{len(spec.configs)} configs x {len(spec.seeds)} seeds = {spec.num_trials} trials")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    import json

    from orchestrator.schema import file_schema

    text = json.dumps(file_schema(), indent=2, ensure_ascii=False) + "\n"
    if args.output is None:
        sys.stdout.write(text)
        return 0
    args.output.write_text(text, encoding="utf-8")
    print(f"schema: {args.output}")
    return 0


def _engine_start(args: argparse.Namespace, load, options_type, **own):
    """What `run` and `tune` do before they start: the file checked (a `SpecError` before
    anything is written), --out a folder, the options they share from the command line
    plus their `own`. Returns (spec, options); a `RunError` later is printed by `main`."""
    spec = load(args.spec, args.max_trials)
    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"--out {args.out}: exists and is not a directory")
    return spec, options_type(
        out_dir=args.out, tracking_uri=args.tracking_uri, address=args.address,
        num_cpus=args.num_cpus, num_gpus=args.num_gpus, max_retries=args.max_retries,
        spec_path=args.spec, **own)


def cmd_run(args: argparse.Namespace) -> int:
    from orchestrator.runner import RunOptions, run_sweep
    from orchestrator.spec import load_spec

    spec, options = _engine_start(
        args, load_spec, RunOptions, tracking_level=args.tracking_level,
        block_size=args.block_size, retry_failed=args.retry_failed,
        trial_timeout_s=args.trial_timeout)
    summary = run_sweep(spec, options)
    print(f"{spec.name}: {summary.ok} ok, {summary.failed} failed, {summary.skipped} already "
          f"recorded, of {summary.total} trials in {summary.wall_s:.1f}s")
    for line in summary.first_errors:
        print(f"  failed: {line}")
    _finish(args, summary.tracking_uri, summary.tracking_error)
    return 0


def _finish(args: argparse.Namespace, tracking_uri: str | None,
            tracking_error: str | None) -> None:
    """Where the results went (Parquet, MLflow), then the report unless --no-report."""
    out = args.out.resolve()
    print(f"results: {out}/trials and {out}/metrics (Parquet)")
    if tracking_uri:
        print(f"mlflow:  {tracking_uri}"
              + (f" (not logged: {tracking_error})" if tracking_error else ""))
    if not args.no_report:
        from orchestrator.report import write_report

        report = write_report(args.out, tracking_uri=tracking_uri or "")
        if report is not None:
            print(f"report:  {report}")
    from orchestrator.tracking import default_tracking_uri

    if tracking_uri and tracking_uri == default_tracking_uri(args.out):  # DIR's own store
        print(f"browse:  {_prog()} ui {args.out}   (the MLflow UI on 127.0.0.1)")


def _prog() -> str:
    """The command as the user typed it (e.g. .venv/bin/sgsweep), so a printed hint can be
    pasted as it is."""
    return sys.argv[0] if Path(sys.argv[0]).name == "sgsweep" else "sgsweep"


def cmd_tune(args: argparse.Namespace) -> int:
    from orchestrator.tune import TuneOptions, tune
    from orchestrator.tune_spec import load_tune_spec

    spec, options = _engine_start(args, load_tune_spec, TuneOptions, storage=args.storage,
                                  n_trials=args.n_trials)
    summary = tune(spec, options)
    print(f"{spec.name}: {summary.ran} Optuna trials run now; study has {summary.complete} "
          f"complete, {summary.pruned} pruned, {summary.failed} failed "
          f"(target {summary.n_trials}) in {summary.wall_s:.1f}s")
    if summary.best_number is not None:
        params = ", ".join(f"{k}={v!r}" for k, v in summary.best_params.items())
        print(f"best:    trial {summary.best_number}, {spec.objective.metric} = "
              f"{summary.best_value:.6g} ({params})")
        print(f"         re-evaluate on fresh seeds: {_prog()} run {summary.best_file} "
              f"--out {args.out / 'best'}")
    _finish(args, summary.tracking_uri, summary.tracking_error)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from orchestrator.record import DamagedResults
    from orchestrator.status import format_status, sweep_status
    from orchestrator.tune import is_tuning_directory, study_status

    _require_results(args.out)
    statuses, damaged = sweep_status(args.out)
    print(format_status(statuses, args.out))
    if is_tuning_directory(args.out):
        print(study_status(args.out))
    if damaged:  # the healthy parts are reported above; the damaged ones named here
        raise DamagedResults(damaged)
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from orchestrator.status import failed_logs, trial_log

    if (args.trial_id is None) == (not args.failed):
        raise UserError("logs: give one TRIAL_ID or --failed")
    _require_results(args.out)
    if args.trial_id is not None:
        print(trial_log(args.out, args.trial_id), end="")
        return 0
    logs = failed_logs(args.out)
    if not logs:
        print(f"{args.out}: no failed trials")
    for i, (_, text) in enumerate(logs):
        print(("\n" if i else "") + text, end="")
    return 0


def _require_results(out: Path) -> None:
    if not (out / "trials").is_dir():
        raise UserError(f"{out}: no results here (expected {out}/trials from `sgsweep run`)")


def cmd_sync(args: argparse.Namespace) -> int:
    from orchestrator.errors import RunError
    from orchestrator.sync import sync_dir
    from orchestrator.tracking import TrackingError, resolve_tracking_uri

    _require_results(args.out)
    uri = resolve_tracking_uri(args.out, args.tracking_uri)
    if uri is None:
        raise UserError("mlflow-sync: --tracking-uri none leaves nothing to sync")
    from orchestrator.tune import is_tuning_directory, sync_study

    try:
        if is_tuning_directory(args.out):  # a tuning directory: the study's view
            logged, present = sync_study(args.out, uri)
            print(f"mlflow-sync: logged {logged} Optuna trial runs ({present} already "
                  f"present) to {uri}")
            return 0
        summary = sync_dir(args.out, uri, level=args.tracking_level)
    except (RunError, TrackingError) as exc:
        raise UserError(str(exc)) from None
    print(f"mlflow-sync: {summary.present} trials already mirrored; wrote "
          f"{summary.configs_written} config runs and {summary.seeds_written} seed runs; "
          f"closed or removed {summary.closed} stale runs; {summary.parents_created} "
          f"invocation runs created, in {uri}")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    import os
    import shutil
    import socket

    from orchestrator.tracking import default_tracking_uri, open_tracker

    db = args.out / "mlflow.db"
    if not db.is_file():
        raise UserError(f"{args.out}: no MLflow store here (expected {db})")
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", args.port))
        except OSError as exc:
            raise UserError(f"--port {args.port}: cannot listen on 127.0.0.1:{args.port} "
                            f"({exc.strerror}); choose another --port") from None
    uri = default_tracking_uri(args.out)
    base = f"http://127.0.0.1:{args.port}"
    print(f"MLflow UI for {args.out} on {base} (Ctrl-C stops it); runs tables:", flush=True)
    for sweep, url in open_tracker(uri, args.out).ui_urls(base, args.out):
        print(f"  {sweep}: {url}", flush=True)
    mlflow = shutil.which("mlflow", path=os.path.dirname(sys.executable)) or "mlflow"
    # One worker and no job runner: a browsing server for one person (MLflow's defaults
    # start four workers plus GenAI job consumers, ~14 processes and ~3 GiB).
    command = [mlflow, "server", "--backend-store-uri", uri, "--host", "127.0.0.1",
               "--port", str(args.port), "--workers", "1",
               "--default-artifact-root", (args.out / "mlartifacts").resolve().as_uri()]
    os.environ["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    return _serve(command, "MLflow UI")


def _serve(command: list[str], what: str) -> int:
    """Run a server until it exits or Ctrl-C / SIGTERM / SIGHUP arrives, then stop it with
    SIGTERM. The server runs in a session of its own, so the terminal's Ctrl-C reaches only
    sgsweep (a server stopped by SIGINT prints a traceback), and it is sent SIGTERM if
    sgsweep itself dies (Linux)."""
    import subprocess

    server = subprocess.Popen(command, preexec_fn=_detach_with_parent)  # noqa: PLW1509
    try:
        return server.wait()
    except KeyboardInterrupt:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        print(f"{what} stopped", file=sys.stderr)
        raise


def _detach_with_parent() -> None:
    """In the server's process before exec: its own session, and SIGTERM when the parent
    dies (PR_SET_PDEATHSIG; Linux only, elsewhere the session alone)."""
    import contextlib
    import ctypes
    import os
    import signal

    os.setsid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG


def cmd_dashboard(args: argparse.Namespace) -> int:
    """optuna-dashboard for the study DIR/tune.json names, on 127.0.0.1. What tune.json says
    is checked first (`study_info`): only an existing journal file or database is opened."""
    import os
    import shutil

    from orchestrator.tune import JOURNAL, STUDY_FILE, study_info

    where = args.out / STUDY_FILE
    if not where.is_file():
        raise UserError(f"{args.out}: no Optuna study here (expected {where} from `sgsweep "
                        "tune`)")
    if not 1 <= args.port <= 65535:
        raise UserError(f"--port {args.port}: expected a port number from 1 to 65535")
    info = study_info(args.out)  # checked: a planted storage is never opened or created
    storage = info.get("storage") or str(args.out / JOURNAL)
    if "://" not in storage and not Path(storage).is_file():
        raise UserError(f"{where}: the study's journal {storage} is missing")
    command = [shutil.which("optuna-dashboard", path=os.path.dirname(sys.executable))
               or "optuna-dashboard", storage, "--host", "127.0.0.1", "--port", str(args.port)]
    print(f"optuna-dashboard for study {info['study']!r} on http://127.0.0.1:{args.port} "
          "(Ctrl-C stops it)", flush=True)
    try:
        return _serve(command, "optuna-dashboard")
    except OSError as exc:
        raise UserError(f"cannot start optuna-dashboard ({exc}); install it with "
                        "`pip install optuna-dashboard`") from None


def cmd_report(args: argparse.Namespace) -> int:
    from orchestrator.report import write_report

    _require_results(args.out)
    path = write_report(args.out, tracking_uri=args.tracking_uri)
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
