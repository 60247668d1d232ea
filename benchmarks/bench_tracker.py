"""MLflow's marginal cost per trial on the driver's recording path, without Ray.

The engine's driver does, per finished chunk, `ResultStore.write` (Parquet) then
`Invocation.record` (the tracker's writer thread), and at the end `compact` and `finish`.
This replays exactly that path on trials computed once in this process, with MLflow (a
fresh SQLite store) and without (`NoTracker`), for 2,000 and 20 tiny E1 trials (the
trials of benchmarks/bench_orchestrator.py), interleaved, and reports

    ((2,000 with - 20 with) - (2,000 without - 20 without)) / 1,980

as bench_orchestrator.py (d) does through Ray. What Ray adds is the same with and without
MLflow, so the difference is MLflow's; this one runs where Ray cannot start (a saturated
machine: its raylet gives up waiting for its agents). `--clock cpu` counts this process's
CPU (the writer thread and SQLite included; fsync waits not).

    .venv/bin/python benchmarks/bench_tracker.py [--repeats 3] [--levels auto,seed]
        [--clock wall|cpu]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from orchestrator import plan, sync
from orchestrator.execute import run_blocks
from orchestrator.record import ResultStore
from orchestrator.spec import parse_spec
from orchestrator.tracking import InvocationInfo, open_tracker, resolve_tracking_uri
from tasks import get_task

SPEC = {
    "name": "bench", "task": "expert", "params": {"case": "noisy"},
    "grid": {"d": [4, 5], "k": [1, 2], "n": [1, 2, 3, 4, 5],
             "sigma": [0.1, 0.25, 0.5, 0.75, 1.0]},
    "seeds": 20,
}  # 100 configs x 20 seeds = 2,000 trials, as in bench_orchestrator.py
CHUNK = 250  # trials per chunk: bench_orchestrator's 2,000 trials on 2 CPUs make chunks of 125


def record(spec, chunks, tracking: bool, level: str, clock) -> float:
    """Time of the driver's recording path for `chunks` into a fresh folder."""
    task = get_task(spec.task)
    blocks = plan.expand(spec)
    configs = {b.config_id: b.config for b in blocks}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        store = ResultStore(out)
        store.prepare()
        start = clock()
        uri = resolve_tracking_uri(out, None if tracking else "none")
        view = sync.sweep_view(out, spec.name, spec.task, sync.latest_trials(out),
                               configs.items(), level) if uri else None
        invocation = uuid.uuid4().hex[:12]
        live = open_tracker(uri, out).start(
            InvocationInfo(sweep=spec.name, task=spec.task, invocation=invocation, out_dir=out),
            view, {b.config_id: {t.trial_id for t in b.trials} for b in blocks})
        for records in chunks:
            store.write(records, sweep=spec.name, task=task, configs=configs,
                        invocation=invocation)
            live.record(records)
        store.compact()
        assert live.finish("FINISHED", {"trials_ok": spec.num_trials}) and live.error is None
        return clock() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--levels", default="auto,seed")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    large = parse_spec(SPEC)
    small = parse_spec({**SPEC, "grid": {"d": [4], "k": [1], "n": [1], "sigma": [0.5]}})
    chunks = {}
    for name, spec in (("small", small), ("large", large)):
        done = run_blocks(spec.task, plan.expand(spec))
        chunks[name] = [done[i:i + CHUNK] for i in range(0, len(done), CHUNK)]
    specs = {"small": small, "large": large}
    record(small, chunks["small"], True, "auto", clock)  # MLflow's imports, once
    print(f"{large.num_trials} vs {small.num_trials} E1 trials, driver's recording path "
          f"(Parquet + tracker) without Ray, {args.clock} clock, median of {args.repeats}")
    for level in [x.strip() for x in args.levels.split(",") if x.strip()]:
        times: dict[tuple[str, bool], list[float]] = {}
        for _ in range(args.repeats):
            for name in ("small", "large"):
                for tracking in (False, True):
                    times.setdefault((name, tracking), []).append(
                        record(specs[name], chunks[name], tracking, level, clock))
        med = {k: statistics.median(v) for k, v in times.items()}
        extra = (med["large", True] - med["small", True]) - (med["large", False]
                                                              - med["small", False])
        per_trial = 1000 * extra / (large.num_trials - small.num_trials)
        print(f"  {level:<6} {per_trial:6.2f} ms/trial   [{large.num_trials}: "
              f"{med['large', False]:.2f} s -> {med['large', True]:.2f} s; "
              f"{small.num_trials}: {med['small', False]:.2f} s -> "
              f"{med['small', True]:.2f} s]   (target <= 3 ms at the default, auto)")


if __name__ == "__main__":
    main()
