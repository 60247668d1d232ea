"""Time per E2 training step at the paper's sizes, and the gain from batching seeds.

Contexts are synthetic 784-pixel images (MNIST's shape, 9 actions after dropping a
class), so no dataset is needed; a step is the full training step of the task (sample a
batch, forward, sample actions and noisy rewards, learner backward, Adam step).

    python benchmarks/bench_bandit.py                 # paper sizes, 6 seeds
    python benchmarks/bench_bandit.py --small         # the digits sweeps' sizes

Beside the times it prints each step's matrix-product FLOPs (torch's FlopCounterMode):
exact and load-independent, they bound what any implementation's time ratio can reach.
Each learner's rate (GFLOP/s) is also put against a dense single-thread GEMM (`torch.mm`
of 512-1024 square matrices, the best of those sizes) timed in the same rounds, and each
step against the MLP's (the same parameter count and about the same FLOPs).
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable

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


GEMM_SIZES = (512, 768, 1024)


def dense_gemms(device: str) -> dict[str, Callable[[], object]]:
    """One square `torch.mm` per size, as timed cases."""
    g = torch.Generator().manual_seed(0)
    cases: dict[str, Callable[[], object]] = {}
    for n in GEMM_SIZES:
        a, b = (torch.randn(n, n, generator=g).to(device) for _ in range(2))
        cases[f"mm {n}"] = functools.partial(torch.mm, a, b)
    return cases


def step_times(cases: dict[str, Callable[[], object]], warmup: int, rounds: int,
               device: str, clock=time.perf_counter) -> dict[str, float]:
    """Fastest seconds per call of each case (a block's `train_step`, a GEMM), interleaved.

    One call of every case per round, so load from other processes hits all cases alike,
    and the minimum over rounds is each case's undisturbed cost.
    """
    def one_call(case: Callable[[], object]) -> float:
        start = clock()
        case()
        if device != "cpu":
            torch.cuda.synchronize()
        return clock() - start

    for case in cases.values():
        for _ in range(warmup):
            one_call(case)
    best = {name: float("inf") for name in cases}
    for _ in range(rounds):
        for name, case in cases.items():
            best[name] = min(best[name], one_call(case))
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
    gemms = dense_gemms(args.device)
    timed = step_times({**{name: block.train_step for name, block in solo.items()}, **gemms},
                       args.warmup, args.steps, args.device, clock)
    dense = max(2 * n**3 / timed[f"mm {n}"] for n in GEMM_SIZES)
    print("dense GEMM " + ", ".join(f"{n}: {2 * n**3 / timed[f'mm {n}'] / 1e9:.1f}"
                                    for n in GEMM_SIZES) + f" GFLOP/s (best {dense / 1e9:.1f})")
    single = {name: timed[name] for name in solo}
    flops = {name: step_flops(block) for name, block in solo.items()}
    base, base_flops = single["SparseNet backprop"], flops["SparseNet backprop"]
    mlp = single["MLP backprop"]
    print(f"\n{'one seed':34s} {'ms/step':>9s} {'x SparseNet BP':>15s} {'x MLP':>6s} "
          f"{'GFLOP':>7s} {'x BP FLOPs':>11s} {'GFLOP/s':>8s} {'of GEMM':>8s}")
    for name, seconds in single.items():
        rate = flops[name] / seconds
        print(f"{name:34s} {1000 * seconds:9.1f} {seconds / base:15.2f} {seconds / mlp:6.2f} "
              f"{flops[name] / 1e9:7.2f} {flops[name] / base_flops:11.2f} {rate / 1e9:8.1f} "
              f"{rate / dense:8.0%}")
    if args.no_batching:
        return
    batched = step_times({name: block.train_step
                          for name, block in blocks(list(range(args.seeds))).items()},
                         args.warmup, args.steps, args.device, clock)
    print(f"\n{f'{args.seeds} seeds':34s} {'block ms':>9s} {'sequential ms':>14s} {'speedup':>8s}")
    for name, block in batched.items():
        sequential = args.seeds * single[name]
        print(f"{name:34s} {1000 * block:9.1f} {1000 * sequential:14.1f} "
              f"{sequential / block:8.2f}")

if __name__ == "__main__":
    main()
