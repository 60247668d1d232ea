"""E3 throughput: environment steps per second per model and rule, and the batched maze env.

1. Training: env-steps/s of the full training step (rollout of `num_envs` fresh mazes,
   learner backward, clip, Adam) per model and rule, at the paper's sizes, and of the
   rollout alone (no learning). Steps are the episodes' valid steps; an untrained policy
   rarely solves a maze, so episodes run near full length.
2. Environment only: tasks.mazes.MazeBatch (all mazes stepped as arrays) against POPGym's
   own LabyrinthEscape/Explore with its previous-action → antialias → flatten wrappers,
   stepped one env after the other, on the same random actions; printed side by side with
   the ratio.

    python benchmarks/bench_popgym.py                    # escape, 20 envs
    python benchmarks/bench_popgym.py --env explore --num-envs 40
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from tasks.mazes import MazeBatch, _GlobalRngGuard, wrapped_popgym_env
from tasks.popgym_task import PopgymConfig, PopgymRun, rollout

CASES = {
    "GRU BPTT": dict(model="gru", learner="backprop"),
    "LSTM BPTT": dict(model="lstm", learner="backprop"),
    "SparseNet BPTT": dict(model="sparsenet", learner="backprop"),
    "SparseNet sgprop": dict(model="sparsenet", learner="sgprop"),
}


def training_rate(cfg: PopgymConfig, batches: int) -> tuple[float, float]:
    """(env-steps/s of training steps, env-steps/s of rollouts alone)."""
    run = PopgymRun(cfg, 0)
    run.train_step()  # warm-up
    steps, start = 0.0, time.perf_counter()
    for _ in range(batches):
        steps += run.train_step()["steps"]
    train = steps / (time.perf_counter() - start)
    steps, start = 0.0, time.perf_counter()
    for _ in range(batches):
        batch = rollout(run.model, run.mazes, cfg, run.gens["mazes"], run.gens["train"])
        steps += float(batch.valid.sum())
    return train, steps / (time.perf_counter() - start)


def env_rates(env: str, num_envs: int, length: int, episodes: int) -> tuple[float, float]:
    """(MazeBatch env-steps/s, POPGym wrapped envs stepped sequentially env-steps/s)."""
    rng = np.random.default_rng(0)
    actions = rng.integers(4, size=(episodes, length, num_envs))
    batch = MazeBatch(env, num_envs, 6, length)
    refs = [wrapped_popgym_env(env, 6, length) for _ in range(num_envs)]
    fast = slow = 0.0
    steps_fast = steps_slow = 0
    for ep in range(episodes):
        seeds = list(range(ep * num_envs, (ep + 1) * num_envs))
        start = time.perf_counter()
        batch.reset(seeds)
        active = np.ones(num_envs, bool)
        for t in range(length):
            res = batch.step(actions[ep, t], active)
            steps_fast += int(active.sum())
            active &= ~(res.terminated | res.truncated)
            if not active.any():
                break
        fast += time.perf_counter() - start
        start = time.perf_counter()
        for i, ref in enumerate(refs):
            with _GlobalRngGuard():
                ref.reset(seed=seeds[i])
            for t in range(length):
                _, _, term, trunc, _ = ref.step(int(actions[ep, t, i]))
                steps_slow += 1
                if term or trunc:
                    break
        slow += time.perf_counter() - start
    return steps_fast / fast, steps_slow / slow


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", choices=["escape", "explore"], default="escape")
    parser.add_argument("--num-envs", type=int, default=20)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--episodes", type=int, default=10, help="env-only benchmark")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"E3 {args.env}, {args.num_envs} envs per batch, paper sizes, CPU, "
          f"{torch.get_num_threads()} thread(s)")
    print(f"\n{'model / rule':20s} {'train steps/s':>14s} {'rollout steps/s':>16s} "
          f"{'train x GRU':>12s}")
    rates = {}
    for name, case in CASES.items():
        cfg = PopgymConfig(env=args.env, num_envs=args.num_envs, **case)
        rates[name] = training_rate(cfg, args.batches)
    base = rates["GRU BPTT"][0]
    for name, (train, roll) in rates.items():
        print(f"{name:20s} {train:14.0f} {roll:16.0f} {train / base:12.2f}")
    length = PopgymConfig(env=args.env).episode_length
    fast, slow = env_rates(args.env, args.num_envs, length, args.episodes)
    print(f"\n{'environment only':20s} {'MazeBatch':>14s} {'POPGym sequential':>18s} "
          f"{'speedup':>8s}")
    print(f"{'env-steps/s':20s} {fast:14.0f} {slow:18.0f} {fast / slow:8.1f}")


if __name__ == "__main__":
    main()
