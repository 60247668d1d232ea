"""Time per E2 training step at the paper's sizes, and the gain from batching seeds.

Contexts are synthetic 784-pixel images (MNIST's shape, 9 actions after dropping a
class), so no dataset is needed; a step is the full training step of the task (sample a
batch, forward, sample actions and noisy rewards, learner backward, Adam step).

    python benchmarks/bench_bandit.py                 # paper sizes, 6 seeds
    python benchmarks/bench_bandit.py --small         # the digits sweeps' sizes

Beside the times it prints each step's matrix-product FLOPs (torch's FlopCounterMode):
exact and load-independent, they bound what any implementation's time ratio can reach.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from tasks.bandit import BanditBlock, BanditConfig
from tasks.datasets import Dataset

CASES = {
    "SparseNet sgprop (adaptive λ)": dict(learner="sgprop", adaptive=True),
    "SparseNet sgprop (fixed λ=0.9)": dict(learner="sgprop", adaptive=False, lam=0.9),
    "SparseNet backprop": dict(learner="backprop"),
    "MLP backprop": dict(learner="backprop", model="mlp"),
}
SMALL = dict(width=32, dim=4, slots=3, mlp_width=100)


def synthetic(pixels: int, n: int = 2048) -> Dataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, pixels, generator=g)
    y = torch.randint(10, (n,), generator=g)
    return Dataset(x, y, x[:256], y[:256])


def step_times(blocks: dict[str, BanditBlock], warmup: int, rounds: int,
               device: str, clock=time.perf_counter) -> dict[str, float]:
    """Fastest seconds per training step of each block, steps interleaved across blocks.

    One step of every block per round, so load from other processes hits all cases alike,
    and the minimum over rounds is each case's undisturbed cost.
    """
    def one_step(block: BanditBlock) -> float:
        start = clock()
        block.train_step()
        if device != "cpu":
            torch.cuda.synchronize()
        return clock() - start

    for block in blocks.values():
        for _ in range(warmup):
            one_step(block)
    best = {name: float("inf") for name in blocks}
    for _ in range(rounds):
        for name, block in blocks.items():
            best[name] = min(best[name], one_step(block))
    return best


def step_flops(block: BanditBlock) -> int:
    """Matrix-product FLOPs of one training step (counted, not timed)."""
    with FlopCounterMode(display=False) as counter:
        block.train_step()
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="digits-sweep sizes")
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=10, help="timed rounds (min taken)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--no-batching", action="store_true", help="skip the seed-block test")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: this process's CPU time (steadier on a shared machine, "
                             "one thread, CPU device only)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = SMALL if args.small else {}
    data = synthetic(64 if args.small else 784)
    print(f"device {args.device}, {torch.get_num_threads()} threads, "
          f"{'digits-sweep' if args.small else 'paper'} sizes, batch 64, {args.clock} clock")
    def blocks(seeds: list[int]) -> dict[str, BanditBlock]:
        return {name: BanditBlock(BanditConfig(**sizes, **case), seeds, args.device, data=data)
                for name, case in CASES.items()}

    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    solo = blocks([0])
    single = step_times(solo, args.warmup, args.steps, args.device, clock)
    flops = {name: step_flops(block) for name, block in solo.items()}
    base, base_flops = single["SparseNet backprop"], flops["SparseNet backprop"]
    print(f"\n{'one seed':34s} {'ms/step':>9s} {'x SparseNet BP':>15s} {'GFLOP':>7s} "
          f"{'x BP FLOPs':>11s}")
    for name, seconds in single.items():
        print(f"{name:34s} {1000 * seconds:9.1f} {seconds / base:15.2f} "
              f"{flops[name] / 1e9:7.2f} {flops[name] / base_flops:11.2f}")
    if args.no_batching:
        return
    batched = step_times(blocks(list(range(args.seeds))), args.warmup, args.steps, args.device,
                         clock)
    print(f"\n{f'{args.seeds} seeds':34s} {'block ms':>9s} {'sequential ms':>14s} {'speedup':>8s}")
    for name, block in batched.items():
        sequential = args.seeds * single[name]
        print(f"{name:34s} {1000 * block:9.1f} {1000 * sequential:14.1f} "
              f"{sequential / block:8.2f}")

if __name__ == "__main__":
    main()
