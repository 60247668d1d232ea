"""E1 trial speed: the vectorised torch task vs a straightforward NumPy implementation.

Both run in this process, side by side. The NumPy side is timed on pre-sampled inputs
(sampling excluded, in its favour); the torch side is a whole trial (sampling included).

    .venv/bin/python benchmarks/bench_expert.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import torch

from tasks import expert
from tasks.expert import ExpertConfig
from tasks.expert_reference import squared_errors


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)  # one trial per core, as in a sweep
    print(f"{'d':>3} {'k':>2} {'torch trial (ms)':>17} {'numpy (ms)':>11} {'speedup':>8}")
    for d, k in [(4, 2), (6, 2), (8, 2), (10, 2), (12, 2)]:
        cfg = ExpertConfig(d=d, k=k, case="noisy", lams=(0.5,))
        gen = torch.Generator().manual_seed(0)
        problem = expert.sample_problem(cfg, gen)
        observed = expert.sample_feedback(problem, cfg, gen)
        inputs = (problem.states.numpy(), problem.jacobians.numpy(), problem.coords.numpy(),
                  problem.a.numpy(), problem.clean.numpy(), observed.numpy(), cfg.lams)
        t_torch = best_of(lambda cfg=cfg: expert.run_trial(cfg, 0), args.repeats)
        reps = args.repeats if d <= 10 else 1
        t_numpy = best_of(lambda inputs=inputs: squared_errors(*inputs), reps)
        print(f"{d:>3} {k:>2} {t_torch * 1e3:>17.2f} {t_numpy * 1e3:>11.2f} "
              f"{t_numpy / t_torch:>7.1f}x")


if __name__ == "__main__":
    main()
