"""GPU check: every learner's training step on CUDA at the paper's sizes, λ = 1 against
backprop on CUDA, a 6-seed block batched vs sequential, and `sgsweep run` with 4 trials
sharing one GPU. One table at the end; exit 1 if a check fails. Under 5 minutes on one GPU.

    python benchmarks/gpu_check.py                        # on a GPU machine
    python benchmarks/gpu_check.py --device cpu --small   # the same checks without a GPU
    python benchmarks/gpu_check.py --e3-devices [--threads 1]  # E3: CPU vs GPU, any machine

`--e3-devices` times one E3 training batch (rollout + update, paper sizes) of GRU,
SparseNet BPTT and SparseNet sgprop on the CPU and, where CUDA is available, on the GPU,
side by side with the GPU's speedup, so the table says which device an E3 sweep should
ask for; without a GPU it prints the CPU column and says that no GPU is available.

Written against the tasks' public entry points only (configs, the E2 `BanditBlock` and
E3 `PopgymRun` with their `train_step`, `model` and `optimizer`, and the `sgsweep` command),
so it survives changes inside the learners. E2's contexts are synthetic images of MNIST's
shape (no dataset needed); the `sgsweep run` check uses the bundled digits.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow.dataset as ds
import torch

from tasks.bandit import BanditBlock, BanditConfig
from tasks.datasets import Dataset
from tasks.popgym_task import PopgymConfig, PopgymRun

E2_CASES = {
    "E2 SparseNet backprop": dict(learner="backprop"),
    "E2 SparseNet sgprop (adaptive λ)": dict(learner="sgprop", adaptive=True),
    "E2 MLP backprop": dict(learner="backprop", model="mlp"),
}
E3_CASES = {
    "E3 GRU BPTT": dict(model="gru", learner="backprop"),
    "E3 SparseNet BPTT": dict(model="sparsenet", learner="backprop"),
    "E3 SparseNet sgprop (adaptive λ)": dict(model="sparsenet", learner="sgprop"),
}
E2_SMALL = dict(width=32, dim=4, fan_in=16, slots=3, mlp_width=100)
E3_SMALL = dict(num_envs=2, length=12, neurons=16, dim=2, parents=3, input_neurons=4,
                slots=2, hidden=16)
SHARED_GPU_SPEC = """\
name: gpu-share
task: bandit
params: {{dataset: digits, steps: {steps}, eval_points: 2, learner: sgprop}}
seeds: 4
block_size: 1
resources: {resources}
"""

Row = tuple[str, str, str, str]  # check, device, measured, verdict


def synthetic(pixels: int, n: int = 2048) -> Dataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, pixels, generator=g)
    y = torch.randint(10, (n,), generator=g)
    return Dataset(x, y, x[:256], y[:256])


def synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def ms_per_step(step: Callable[[], object], device: str, warmup: int, rounds: int) -> float:
    """Fastest of `rounds` timed calls after `warmup` untimed ones, in milliseconds
    (`device`: where the step computes, for CUDA's synchronisation)."""
    for _ in range(warmup):
        step()
    best = float("inf")
    for _ in range(rounds):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 1000 * best


def where(module: torch.nn.Module) -> str:
    return str(next(module.parameters()).device)


def finite(module: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in module.parameters())


# Why a task computes elsewhere than asked (the table says so instead of a timing on the
# wrong device passing for a GPU one). Every task now computes where it is asked.
ELSEWHERE: dict[str, str] = {}


def learner_steps(args: argparse.Namespace) -> list[Row]:
    return e2_steps(args) + e3_steps(args)


def e2_steps(args: argparse.Namespace) -> list[Row]:
    rows = []
    data = synthetic(64 if args.small else 784)
    for name, case in E2_CASES.items():
        block = BanditBlock(BanditConfig(**(E2_SMALL if args.small else {}), **case), [0],
                            args.device, data=data)
        used = where(block.model)
        ms = ms_per_step(block.train_step, used, 2, args.rounds)
        rows.append((f"{name}: training step", used, f"{ms:.1f} ms/step",
                     verdict(used, args.device, finite(block.model), "E2")))
    return rows


def e3_steps(args: argparse.Namespace) -> list[Row]:
    rows = []
    for name, case in E3_CASES.items():
        run = PopgymRun(PopgymConfig(**(E3_SMALL if args.small else {}), **case), 0,
                        args.device)
        used = where(run.model)
        ms = ms_per_step(run.train_step, used, 1, max(1, args.rounds // 3))
        rows.append((f"{name}: training step (rollout + update)", used, f"{ms:.1f} ms/step",
                     verdict(used, args.device, finite(run.model), "E3")))
    return rows


def verdict(used: str, asked: str, ok: bool, task: str) -> str:
    """'ok', or where the step really ran when that is not the device asked for."""
    if not ok:
        return "FAIL: non-finite parameters"
    if torch.device(used).type != torch.device(asked).type:
        why = ELSEWHERE.get(task, f"the {task} task does not use {asked}")
        return f"ran on {torch.device(used).type}, not {asked}: {why}"
    return "ok"


@contextlib.contextmanager
def gradients_kept(block: BanditBlock | PopgymRun) -> Iterator[None]:
    """`train_step` without the optimizer's update, leaving the step's gradients in
    `.grad` (the step's own sampling and backward are untouched)."""
    optimizer = block.optimizer
    step, zero_grad = optimizer.step, optimizer.zero_grad
    optimizer.step = lambda *a, **k: None
    optimizer.zero_grad = lambda *a, **k: None
    try:
        yield
    finally:
        optimizer.step, optimizer.zero_grad = step, zero_grad


def grads_after_one_step(block: BanditBlock | PopgymRun) -> list[torch.Tensor]:
    with gradients_kept(block):
        block.train_step()
    return [p.grad.detach().double() for p in block.model.parameters()]


def relative_gap(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    num = sum(float((x - y).pow(2).sum()) for x, y in zip(a, b, strict=True)) ** 0.5
    den = sum(float(y.pow(2).sum()) for y in b) ** 0.5
    return num / max(den, 1e-300)


def lambda_one(args: argparse.Namespace) -> list[Row]:
    """sgprop with fixed λ = 1 must give backprop's gradients (same seed, same batch)."""
    rows = []
    sizes = E2_SMALL if args.small else {}
    data = synthetic(64 if args.small else 784)
    bp = BanditBlock(BanditConfig(**sizes, learner="backprop", lr=1e-3), [0], args.device,
                     data=data)
    sg = BanditBlock(BanditConfig(**sizes, learner="sgprop", adaptive=False, lam=1.0, lr=1e-3),
                     [0], args.device, data=data)
    gap = relative_gap(grads_after_one_step(sg), grads_after_one_step(bp))
    rows.append(("E2 sgprop λ=1 vs backprop: gradients", where(sg.model),
                 f"rel. gap {gap:.1e}", "FAIL" if gap >= args.tolerance
                 else verdict(where(sg.model), args.device, True, "E2")))
    small = E3_SMALL if args.small else {}
    bptt = PopgymRun(PopgymConfig(**small, learner="backprop"), 0, args.device)
    sgt = PopgymRun(PopgymConfig(**small, learner="sgprop", adaptive=False, lam=1.0), 0,
                    args.device)
    gap = relative_gap(grads_after_one_step(sgt), grads_after_one_step(bptt))
    rows.append(("E3 sgprop λ=1 vs BPTT: gradients", where(sgt.model), f"rel. gap {gap:.1e}",
                 "FAIL" if gap >= args.tolerance
                 else verdict(where(sgt.model), args.device, True, "E3")))
    return rows


def seed_blocks(args: argparse.Namespace) -> list[Row]:
    """E2 steps of a 6-seed block (one batched computation) vs 6 one-seed blocks."""
    rows = []
    data = synthetic(64 if args.small else 784)
    sizes = E2_SMALL if args.small else {}
    seeds = list(range(args.seeds))
    for name, case in E2_CASES.items():
        cfg = BanditConfig(**sizes, **case)
        batched = BanditBlock(cfg, seeds, args.device, data=data)
        singles = [BanditBlock(cfg, [s], args.device, data=data) for s in seeds]

        def sequential(singles: list[BanditBlock] = singles) -> None:
            for block in singles:
                block.train_step()

        t_batched = ms_per_step(batched.train_step, args.device, 2, args.rounds)
        t_sequential = ms_per_step(sequential, args.device, 2, args.rounds)
        rows.append((f"{name}: {len(seeds)} seeds batched vs sequential", where(batched.model),
                     f"{t_batched:.1f} vs {t_sequential:.1f} ms: "
                     f"{t_sequential / t_batched:.2f}x", "ok"))
    return rows


def shared_gpu_run(args: argparse.Namespace) -> list[Row]:
    """`sgsweep run` of 4 trials asking 0.25 GPU each: all 4 at once on one GPU."""
    cuda = torch.device(args.device).type == "cuda"
    resources = "{num_gpus: 0.25, num_cpus: 1}" if cuda else "{num_cpus: 0.5}"
    with tempfile.TemporaryDirectory(prefix="sgs-gpu-check-") as temp:
        spec = Path(temp) / "gpu-share.yaml"
        spec.write_text(SHARED_GPU_SPEC.format(steps=10 if args.small else 300,
                                               resources=resources))
        out = Path(temp) / "out"
        command = [str(Path(sys.executable).parent / "sgsweep"), "run", str(spec),
                   "--out", str(out), "--tracking-uri", "none", "--no-report"]
        if not cuda:
            command += ["--num-cpus", "2"]  # 4 trials x 0.5 CPU at once, as 4 x 0.25 GPU
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            tail = (done.stdout + done.stderr).strip().splitlines()[-1:]
            return [("sgsweep run, 4 trials x " + resources, args.device,
                     f"exit {done.returncode}", f"FAIL: {' '.join(tail)[:200]}")]
        table = ds.dataset(out / "trials").to_table(
            columns=["status", "device", "duration_s", "finished_at"]).to_pandas()
    devices = sorted(set(table.device))
    ends = table.finished_at.astype("int64") / 1e3  # ms → s
    spans = list(zip(ends - table.duration_s, ends, strict=True))
    together = max(sum(start <= t < end for start, end in spans) for t, _ in spans)
    want = "cuda" if cuda else "cpu"
    ok = devices == [want] and (table.status == "ok").all() and together == 4
    return [(f"sgsweep run, 4 trials x {resources}", ",".join(devices),
             f"{int((table.status == 'ok').sum())}/4 ok, {together} at once",
             "ok" if ok else f"FAIL: expected 4 ok trials on {want}, 4 at once")]


def e3_devices(args: argparse.Namespace) -> int:
    """E3 batches on the CPU vs the GPU (module doc, `--e3-devices`)."""
    cuda = torch.cuda.is_available()
    card = torch.cuda.get_device_name() if cuda else None
    sizes = E3_SMALL if args.small else {}
    print(f"gpu_check --e3-devices: E3 Escape, {'small' if args.small else 'paper'} sizes, "
          f"ms per training batch (rollout + update), fastest of {args.rounds}; CPU "
          f"{torch.get_num_threads()} thread(s); GPU: {card or 'none'}", flush=True)
    if not cuda:
        print("no CUDA GPU is available here (torch.cuda.is_available() is False): "
              "the GPU column is empty")
    print(f"{'model / rule':34s} {'CPU ms':>9s} {'GPU ms':>9s} {'GPU speedup':>12s}")
    for name, case in E3_CASES.items():
        times = {}
        for device in ("cpu", "cuda") if cuda else ("cpu",):
            run = PopgymRun(PopgymConfig(**sizes, **case), 0, device)
            times[device] = ms_per_step(run.train_step, device, 1, args.rounds)
        gpu = times.get("cuda")
        print(f"{name:34s} {times['cpu']:9.1f} "
              + (f"{gpu:9.1f} {times['cpu'] / gpu:11.2f}x" if gpu else f"{'-':>9s} {'-':>12s}"),
              flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true",
                        help="the digits sweeps' sizes and tiny E3 models (for a CPU run)")
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=10, help="timed steps (fastest taken)")
    parser.add_argument("--tolerance", type=float, default=1e-5,
                        help="largest relative gradient gap that counts as equal")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--e3-devices", action="store_true",
                        help="only the E3 CPU-vs-GPU table (runs without a GPU too)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.e3_devices:
        return e3_devices(args)
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False); "
              "run with --device cpu --small to check the script itself", file=sys.stderr)
        return 2
    card = torch.cuda.get_device_name() if torch.device(args.device).type == "cuda" else "CPU"
    print(f"gpu_check: {card}, torch {torch.__version__}, "
          f"{'small' if args.small else 'paper'} sizes", flush=True)
    started = time.perf_counter()
    rows: list[Row] = []
    for section in (learner_steps, lambda_one, seed_blocks, shared_gpu_run):
        rows += section(args)
        print(f"  {section.__name__} done at {time.perf_counter() - started:.0f}s", flush=True)
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    print()
    for row in [("check", "device", "measured", "verdict"), *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    print(f"\n{len(rows)} checks in {time.perf_counter() - started:.0f}s on {card}")
    elsewhere = [r[0] for r in rows if r[3].startswith("ran on")]
    if elsewhere:
        print(f"{len(elsewhere)} of them did not compute on {args.device} (see 'ran on'): "
              "their timings are not GPU timings")
    return 1 if any(r[3].startswith("FAIL") for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
