"""Orchestration overhead, side by side in one run, on 2,000 tiny E1 trials (d 4-5).

(a) sgsweep's engine (Ray already up, Parquet on, MLflow off and on) vs the same trials
    in a plain Python loop in this process;
(b) the same trials through Ray Tune (`Tuner` with a grid), end to end;
(c) seed-block vectorisation: blocks of 20 seeds vs one seed at a time (in process);
(d) MLflow's marginal cost per trial on the SQLite store: 2,000 vs 20 trials, with and
    without MLflow, at the default tracking level (auto: config runs for these
    millisecond trials) and at `seed` (a run per trial too); target <= 3 ms by default;
(e) with --e1: the full E1 grid (sweeps/e1-expert.yaml, 6,480 trials) with MLflow and
    without; target <= 1.3x.

    .venv/bin/python benchmarks/bench_orchestrator.py [--num-cpus 2] [--tune-trials 200]
        [--repeats 3] [--e1] [--levels auto,seed] [--clock wall|cpu]

`--clock cpu` times the driver process's CPU (all its threads: Parquet, and the MLflow
writer with its SQLite store, which runs in the driver) instead of the wall clock: on a
machine other jobs saturate, MLflow's marginal cost stays measurable (fsync waits are not
counted). The E1 ratio is a wall-clock target: with `--clock cpu` it is not printed.

Ray Tune is timed on the first --tune-trials trials and compared per trial (its cost per
trial is flat: scheduling, a trial actor, checkpoint and result bookkeeping); pass
--tune-trials 2000 for the full set (over an hour on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from orchestrator import plan, schedule  # noqa: E402
from orchestrator.execute import run_blocks  # noqa: E402
from orchestrator.runner import RunOptions, run_sweep  # noqa: E402
from orchestrator.spec import config_dict, load_spec, parse_spec  # noqa: E402
from tasks import expert  # noqa: E402

SPEC = {
    "name": "bench", "task": "expert", "params": {"case": "noisy"},
    "grid": {"d": [4, 5], "k": [1, 2], "n": [1, 2, 3, 4, 5],
             "sigma": [0.1, 0.25, 0.5, 0.75, 1.0]},
    "seeds": 20,
}  # 100 configs x 20 seeds = 2,000 trials


def plain_loop(spec) -> float:
    start = time.perf_counter()
    for config in spec.configs:
        for seed in spec.seeds:
            expert.run_trial(config, seed)
    return time.perf_counter() - start


CLOCK = time.perf_counter  # --clock cpu: time.process_time


def engine(spec, tracking: bool, level: str | None = None) -> float:
    """Time of `run_sweep` into a fresh folder (with MLflow: a fresh SQLite store)."""
    with tempfile.TemporaryDirectory() as tmp:
        options = RunOptions(out_dir=Path(tmp), tracking_uri=None if tracking else "none",
                             tracking_level=level, address="auto", progress=lambda _: None,
                             live=False, show_progress=False)
        start = CLOCK()
        summary = run_sweep(spec, options)
        elapsed = CLOCK() - start
        assert summary.ok == spec.num_trials and summary.tracking_error is None, summary
    return elapsed


def marginal_ms(small, large, repeats: int, level: str | None) -> tuple[float, dict]:
    """MLflow's cost per extra trial: (large - small with MLflow) - (same without), per
    trial, interleaving the four runs and taking each one's median over `repeats`."""
    times: dict[tuple[str, bool], list[float]] = {}
    for _ in range(repeats):
        for name, spec in (("small", small), ("large", large)):
            for tracking in (False, True):
                times.setdefault((name, tracking), []).append(
                    engine(spec, tracking, level if tracking else None))
    med = {k: statistics.median(v) for k, v in times.items()}
    extra = (med["large", True] - med["small", True]) - (med["large", False]
                                                          - med["small", False])
    return 1000 * extra / (large.num_trials - small.num_trials), med


def ray_tune(spec, num_trials: int) -> float:
    from ray import tune

    configs = [config_dict(c) for c in spec.configs]
    points = [(i, s) for i in range(len(configs)) for s in spec.seeds][:num_trials]

    def trainable(params: dict) -> dict:
        from tasks.expert import ExpertConfig, run_trial

        cfg = ExpertConfig(**{k: tuple(v) if isinstance(v, list) else v
                              for k, v in configs[params["point"][0]].items()})
        return run_trial(cfg, params["point"][1]).final()

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        tuner = tune.Tuner(
            tune.with_resources(trainable, {"cpu": 1}),
            param_space={"point": tune.grid_search(points)},
            run_config=tune.RunConfig(storage_path=tmp, name="bench", verbose=0),
        )
        results = tuner.fit()
        elapsed = time.perf_counter() - start
        assert len(results) == len(points) and not results.errors
    return elapsed


def blocks_in_process(spec, block_size: int) -> float:
    blocks = plan.split_blocks(plan.expand(spec), block_size)
    start = time.perf_counter()
    run_blocks("expert", blocks)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--num-cpus", type=int, default=2)
    # Tune costs seconds per trial here; 200 trials time it well (scaled per trial).
    parser.add_argument("--tune-trials", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of each (d) measurement; the median is used")
    parser.add_argument("--e1", action="store_true",
                        help="also time the full E1 grid with and without MLflow")
    parser.add_argument("--levels", default="auto,seed",
                        help="tracking levels timed in (d), comma-separated")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: the driver's CPU time (for a saturated machine)")
    args = parser.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    levels = [level.strip() for level in args.levels.split(",") if level.strip()]
    wall = args.clock == "wall"  # (a)-(c) and (e) compare wall times, the workers' too
    import torch

    torch.set_num_threads(1)
    spec = parse_spec(SPEC)
    small = parse_spec({**SPEC, "grid": {"d": [4], "k": [1], "n": [1], "sigma": [0.5]}})
    n = spec.num_trials
    schedule.connect(None, args.num_cpus)
    engine(spec, tracking=False)  # warm the workers (imports), as in a long sweep
    engine(small, tracking=True)  # and MLflow's imports

    if wall:
        loop = plain_loop(spec)
        ours = engine(spec, tracking=False)
        ours_mlflow = engine(spec, tracking=True)
        one = blocks_in_process(spec, 1)
        twenty = blocks_in_process(spec, 20)
    marginal = {level: marginal_ms(small, spec, args.repeats, level) for level in levels}
    if wall and args.e1:
        e1 = load_spec(Path(__file__).resolve().parents[1] / "sweeps" / "e1-expert.yaml")
        e1_times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.repeats):  # interleaved, so load changes hit both alike
            for tracking in (False, True):
                e1_times[tracking].append(engine(e1, tracking=tracking))
        e1_without, e1_with = (statistics.median(e1_times[t]) for t in (False, True))
    tune_s = ray_tune(spec, args.tune_trials) if wall and args.tune_trials else float("nan")
    schedule.shutdown()

    print(f"{n} E1 trials, {args.num_cpus} CPUs, {args.clock} clock")
    if wall:
        print(f"(a) plain loop in process           {loop:8.2f} s   1.00x")
        print(f"    sgsweep engine (Parquet)        {ours:8.2f} s   "
              f"{ours / loop:.2f}x of the loop")
        print(f"    sgsweep engine (Parquet+MLflow) {ours_mlflow:8.2f} s   "
              f"{ours_mlflow / loop:.2f}x of the loop")
        if args.tune_trials:
            print(f"(b) Ray Tune, {args.tune_trials} trials          {tune_s:8.2f} s   "
                  f"{tune_s / args.tune_trials * n / ours:.1f}x slower than sgsweep (per "
                  f"trial, scaled to {n})")
        print(f"(c) one seed at a time              {one:8.2f} s")
        print(f"    blocks of 20 seeds              {twenty:8.2f} s   "
              f"{one / twenty:.2f}x faster")
    print(f"(d) MLflow marginal cost, {small.num_trials} vs {n} trials (median of "
          f"{args.repeats}; target <= 3 ms by default)")
    labels = {"auto": "auto (config runs)", "seed": "seed (+ a run per trial)"}
    for level, (ms, med) in marginal.items():
        print(f"    {labels.get(level, level):<26} {ms:6.2f} ms/trial   [{n}: "
              f"{med['large', False]:.2f} s -> {med['large', True]:.2f} s; {small.num_trials}: "
              f"{med['small', False]:.2f} s -> {med['small', True]:.2f} s]")
    if wall and args.e1:
        print(f"(e) E1 grid, {e1.num_trials} trials (median of {args.repeats}): "
              f"{e1_without:.1f} s without MLflow, {e1_with:.1f} s with   "
              f"{e1_with / e1_without:.2f}x (target <= 1.3x)")

if __name__ == "__main__":
    main()
