"""E3 throughput: environment steps per second per model and rule, and the batched maze env.

1. Training, per batch (`--envs escape,explore`): milliseconds per training batch of each
   model and rule side by side: the rollout (`num_envs` fresh mazes, actions from the
   policy) and the update (learner backward, clip, Adam), at the paper's sizes, and each
   total as a multiple of GRU's. The cases are interleaved batch by batch (so load that
   changes during the run hits all of them alike) and each column is the median over
   `--batches` batches after one warm-up batch; `--clock cpu` times this process's CPU
   (`time.process_time`), which other jobs on a shared machine do not inflate. Goals
   (issue 20, one thread): SparseNet BPTT ≤ 1.5× GRU, SparseNet sgprop ≤ 2.5× GRU.
2. Environment only: tasks.mazes.MazeBatch (all mazes stepped as arrays) against POPGym's
   own LabyrinthEscape/Explore with its previous-action → antialias → flatten wrappers,
   stepped one env after the other, on the same random actions; printed side by side with
   the ratio.
3. Seeds batched vs sequential (`--seeds N`, default 6; 0 skips): the training step of N
   seeds, each on its own `num_envs` mazes, per model (BPTT). Sequential = N PopgymRuns
   stepped one after the other (what the task does). Batched = the N
   seeds' parameters stacked (`torch.func.stack_module_state`), the model called under
   `torch.func.vmap` (per-seed weights → batched matmuls), all N·num_envs mazes in one
   MazeBatch, per-seed action/maze streams, one backward of the summed per-seed losses,
   per-seed norm clip, one Adam over the stacked parameters. Same work per seed both ways
   (num_envs, episode length, sizes); the batched rollout runs until the last of all
   N·num_envs episodes ends (the sequential one per seed), steps counted are valid steps.
   GRU/LSTM cells are written out (vmap has no batching rule for aten::lstm_cell and
   only a slow per-sample fallback for aten::gru_cell). SparseNet is not offered: its
   fast path's custom autograd.Function does not batch under vmap.
   Timings interleaved (sequential then batched, `--reps` times), fastest of each.

    OMP_NUM_THREADS=1 python benchmarks/bench_popgym.py --clock cpu --seeds 0  # per batch
    python benchmarks/bench_popgym.py --env explore --num-envs 40
    python benchmarks/bench_popgym.py --only-seeds --seeds 6
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import stack_module_state, vmap
from torch.nn.utils.stateless import _reparametrize_module

from learners.recurrent import RecurrentBaseline
from learners.reinforce import normalised_returns, policy_loss
from tasks.mazes import MazeBatch, _GlobalRngGuard, wrapped_popgym_env
from tasks.popgym_task import PopgymConfig, PopgymRun, random_seeds, seen_rewards
from tasks.sampling import sample_actions

CASES = {
    "GRU BPTT": dict(model="gru", learner="backprop"),
    "LSTM BPTT": dict(model="lstm", learner="backprop"),
    "SparseNet BPTT": dict(model="sparsenet", learner="backprop"),
    "SparseNet sgprop": dict(model="sparsenet", learner="sgprop"),
}


def batch_times(cfg: PopgymConfig,
                clock: Callable[[], float]) -> Iterator[tuple[float, float, float]]:
    """(rollout s, update s, env-steps) of one training batch after another (after one
    warm-up batch), the same work as `PopgymRun.train_step`."""
    run = PopgymRun(cfg, 0)
    run.train_step()  # warm-up
    while True:
        start = clock()
        batch, advantages = run.collect("train")
        mid = clock()
        run.update(batch, advantages)
        yield mid - start, clock() - mid, float(batch.valid.sum())


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


def _cell(rnn: nn.Module, x: Tensor, state):
    """nn.GRUCell / nn.LSTMCell written out with F.linear, so vmap batches it."""
    lin = nn.functional.linear
    gi = lin(x, rnn.weight_ih, rnn.bias_ih)
    if isinstance(rnn, nn.GRUCell):
        gh = lin(state, rnn.weight_hh, rnn.bias_hh)
        ir, iz, i_n = gi.chunk(3, -1)
        hr, hz, hn = gh.chunk(3, -1)
        r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
        n = torch.tanh(i_n + r * hn)
        return (1 - z) * n + z * state
    h, c = state
    i, f, g, o = (gi + lin(h, rnn.weight_hh, rnn.bias_hh)).chunk(4, -1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


class SeedStack:
    """N seeds of one config trained together: stacked parameters, one maze batch."""

    def __init__(self, cfg: PopgymConfig, seeds: list[int]) -> None:
        runs = [PopgymRun(cfg, s) for s in seeds]
        self.cfg, self.s, self.n = cfg, len(seeds), cfg.num_envs
        self.base = runs[0].model
        self.params, self.buffers = stack_module_state([r.model for r in runs])
        self.gens = [r.gens for r in runs]
        self.optimizer = torch.optim.Adam(list(self.params.values()), lr=cfg.lr)
        self.mazes = MazeBatch(cfg.env, self.s * self.n, cfg.maze_size, cfg.episode_length)
        self.v_step = vmap(self._step)
        self.v_logits = vmap(self._logits)

    def _step(self, params, buffers, obs, state):
        with _reparametrize_module(self.base, {**params, **buffers}):
            m = self.base
            if isinstance(m, RecurrentBaseline):
                state = _cell(m.rnn, m.pre(obs), state)
                h = state[0] if m.kind == "lstm" else state
                return m.actor(h), state
            return m.step(obs, state)

    def _logits(self, params, buffers, obs):
        with _reparametrize_module(self.base, {**params, **buffers}):
            m = self.base
            if not isinstance(m, RecurrentBaseline):
                return m.logits(obs)
            embed, state, hs = m.pre(obs), m.initial_state(obs.shape[1]), []
            for t in range(obs.shape[0]):
                state = _cell(m.rnn, embed[t], state)
                hs.append(state[0] if m.kind == "lstm" else state)
            return m.actor(torch.stack(hs))

    @torch.no_grad()
    def rollout(self):
        """Like tasks.popgym_task.rollout for all seeds at once, each on its own streams."""
        s, n, cfg = self.s, self.n, self.cfg
        seeds = sum((random_seeds(g["mazes"], n) for g in self.gens), [])
        obs = torch.from_numpy(self.mazes.reset(seeds))
        one = self.base.initial_state(n)  # one seed's, stacked: the models' own layout
        state = (tuple(torch.stack([x] * s) for x in one) if isinstance(one, tuple)
                 else torch.stack([one] * s))
        active = np.ones(s * n, bool)
        rec: dict[str, list] = {"obs": [], "actions": [], "rewards": [], "valid": []}
        while active.any():
            logits, state = self.v_step(self.params, self.buffers, obs.view(s, n, -1), state)
            u = torch.cat([torch.rand(n, generator=g["train"]) for g in self.gens])
            actions = sample_actions(torch.softmax(logits.reshape(s * n, -1), -1), u)
            res = self.mazes.step(actions.numpy(), active)
            flip = torch.cat([torch.rand(n, generator=g["train"])
                              for g in self.gens]).numpy() < cfg.noise
            rec["obs"].append(obs)
            rec["actions"].append(actions)
            rec["rewards"].append(torch.from_numpy(seen_rewards(res, active, flip, cfg)).float())
            rec["valid"].append(torch.from_numpy(active.copy()))
            obs = torch.from_numpy(np.where(active[:, None], res.obs, obs.numpy()))
            active = active & ~(res.terminated | res.truncated)
        return {k: torch.stack(v) for k, v in rec.items()}  # (T, S·n, ...)

    def train_step(self) -> float:
        s, n, cfg = self.s, self.n, self.cfg
        b = self.rollout()
        t = b["obs"].shape[0]
        per_seed = {k: v.view(t, s, n, *v.shape[2:]).transpose(0, 1) for k, v in b.items()}
        logits = self.v_logits(self.params, self.buffers, per_seed["obs"])  # (S, T, n, A)
        loss = logits.new_zeros(())
        for i in range(s):
            valid, rewards = per_seed["valid"][i], per_seed["rewards"][i]
            adv = normalised_returns(rewards, valid, cfg.gamma)
            loss = loss + policy_loss(logits[i], per_seed["actions"][i], adv, valid,
                                      cfg.entropy_coef)[0]
        loss.backward()
        grads = [p.grad for p in self.params.values()]
        norms = torch.stack([g.reshape(s, -1).pow(2).sum(1) for g in grads]).sum(0).sqrt()
        scale = (cfg.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(scale.view(-1, *[1] * (g.dim() - 1)))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(b["valid"].sum())


def seed_rates(cfg: PopgymConfig, seeds: int, reps: int) -> tuple[float, float]:
    """(sequential env-steps/s, batched env-steps/s) of one training step of all seeds."""
    runs = [PopgymRun(cfg, s) for s in range(seeds)]
    stack = SeedStack(cfg, list(range(seeds)))
    for run in runs:
        run.train_step()  # warm-up
    stack.train_step()
    seq = bat = 0.0
    for _ in range(reps):
        start = time.perf_counter()
        steps = sum(run.train_step()["steps"] for run in runs)
        seq = max(seq, steps / (time.perf_counter() - start))
        start = time.perf_counter()
        steps = stack.train_step()
        bat = max(bat, steps / (time.perf_counter() - start))
    return seq, bat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", choices=["escape", "explore"], default="escape",
                        help="environment of the env-only and seed benchmarks")
    parser.add_argument("--envs", default="escape,explore",
                        help="environments of the per-batch table (comma-separated)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="per-batch table: wall clock or this process's CPU time")
    parser.add_argument("--num-envs", type=int, default=20)
    parser.add_argument("--batches", type=int, default=5,
                        help="per-batch table: timed batches per case")
    parser.add_argument("--episodes", type=int, default=10, help="env-only benchmark (0 skips)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--seeds", type=int, default=6, help="seeds batched vs sequential")
    parser.add_argument("--reps", type=int, default=3, help="seed benchmark: fastest of")
    parser.add_argument("--seed-models", default="gru,lstm",
                        help="models of the seed benchmark (comma-separated; gru, lstm)")
    parser.add_argument("--only-seeds", action="store_true", help="seed benchmark only")
    parser.add_argument("--profile", action="store_true",
                        help="after the per-batch table: the sgprop update by phase")
    args = parser.parse_args()
    if "sparsenet" in args.seed_models.split(","):
        # Its fast path (learners/recurrent.py) is a custom autograd.Function that
        # torch.func.vmap cannot batch; batched seeds would need a seed dim in its Tape.
        parser.error("--seed-models: sparsenet cannot be batched under vmap (its custom "
                     "backward); expected gru and/or lstm")
    torch.set_num_threads(args.threads)
    print(f"E3, {args.num_envs} envs per batch, paper sizes, CPU, "
          f"{torch.get_num_threads()} thread(s)")
    if not args.only_seeds:
        for env in args.envs.split(","):
            per_batch_table(env, args)
            if args.profile:
                profile_updates(env, args)
        if args.episodes > 0:
            env_table(args)
    if args.seeds > 0:
        print(f"\n{args.seeds} seeds, training step (BPTT), env-steps/s, fastest of "
              f"{args.reps} interleaved")
        print(f"{'model':20s} {'sequential':>12s} {'batched':>12s} {'speedup':>8s}")
        for model in args.seed_models.split(","):
            cfg = PopgymConfig(env=args.env, num_envs=args.num_envs, model=model)
            seq, bat = seed_rates(cfg, args.seeds, args.reps)
            print(f"{model:20s} {seq:12.0f} {bat:12.0f} {bat / seq:8.2f}", flush=True)


def per_batch_table(env: str, args: argparse.Namespace) -> None:
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    runs = {name: batch_times(PopgymConfig(env=env, num_envs=args.num_envs, **case), clock)
            for name, case in CASES.items()}
    times: dict[str, list[tuple[float, float, float]]] = {name: [] for name in CASES}
    for _ in range(args.batches):
        for name, run in runs.items():  # interleaved: one batch of each case in turn
            times[name].append(next(run))
    print(f"\n{env}, {args.num_envs} envs, ms per batch (median of {args.batches}, "
          f"{args.clock} clock)")
    print(f"{'model / rule':20s} {'rollout':>9s} {'update':>9s} {'total':>9s} "
          f"{'x GRU':>7s} {'env-steps':>10s}")
    medians = {name: np.median(np.array(rows), axis=0) for name, rows in times.items()}
    base = medians["GRU BPTT"][0] + medians["GRU BPTT"][1]
    for name, (roll, update, steps) in medians.items():
        total = roll + update
        print(f"{name:20s} {1e3 * roll:9.1f} {1e3 * update:9.1f} {1e3 * total:9.1f} "
              f"{total / base:7.2f} {steps:10.0f}", flush=True)


def profile_updates(env: str, args: argparse.Namespace) -> None:
    """Where a SparseNet sgprop update spends its time, phase by phase (the steps of
    `SGPropTime.backward`, then clip and Adam), median over `--batches` freshly collected
    batches, on the chosen clock. (torch.profiler's per-operator overhead distorts these
    many small operators too much to be used here.)"""
    from learners.sgprop_time import LambdaMoments, feedback_norms, propagate_time

    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    run = PopgymRun(PopgymConfig(env=env, num_envs=args.num_envs,
                                 **CASES["SparseNet sgprop"]), 0)
    learner, model = run.learner, run.model
    run.train_step()  # warm-up
    phases: dict[str, list[float]] = {}

    def timed(name: str, fn: Callable[..., object], *args: object):
        start = clock()
        out = fn(*args)
        phases.setdefault(name, []).append(clock() - start)
        return out

    def clip_and_step() -> None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), run.cfg.max_grad_norm)
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)

    for _ in range(args.batches):
        batch, advantages = learner.prepare(*run.collect("train"))
        tape = timed("forward (recorded steps reused, padding unrolled)", model.tape,
                     batch.obs, batch.recording)
        actor, direct, _ = timed("actor and loss, d_t", learner.top, tape, batch, advantages)
        lam = timed("temporal λ schedule", learner.step_lambda, batch.valid)
        preds = timed("SG predictions", learner.predictions, tape, True)
        mixable = learner.mixable(preds, batch.valid)
        moments = LambdaMoments(model, tape, mixable, batch.valid)
        prop = timed("backward in time with λ moments", propagate_time, model, tape, direct,
                     lam, mixable, moments.add)
        grads = timed("parameter gradients (autograd)", learner.full_gradients, tape, prop,
                      actor)
        timed("λ estimate", moments.estimate, learner.lam)
        timed("feedback norms", feedback_norms, prop, mixable, batch.valid)
        timed("SG step", learner.update_synthetic, preds, prop.mixed, batch.valid)
        for param, grad in zip(model.parameters(), grads, strict=True):
            param.grad = grad
        timed("clip and Adam", clip_and_step)
    total = sum(float(np.median(v)) for v in phases.values())
    print(f"\n{env} SparseNet sgprop: update by phase, ms (median of {args.batches}, "
          f"{args.clock} clock), sum {1e3 * total:.0f} ms")
    for name, values in phases.items():
        ms = 1e3 * float(np.median(values))
        print(f"  {name:50s} {ms:7.1f}  {100 * ms / (1e3 * total):4.0f}%")


def env_table(args: argparse.Namespace) -> None:
    length = PopgymConfig(env=args.env).episode_length
    fast, slow = env_rates(args.env, args.num_envs, length, args.episodes)
    print(f"\n{'environment only':20s} {'MazeBatch':>14s} {'POPGym sequential':>18s} "
          f"{'speedup':>8s}")
    print(f"{'env-steps/s':20s} {fast:14.0f} {slow:18.0f} {fast / slow:8.1f}")


if __name__ == "__main__":
    main()
