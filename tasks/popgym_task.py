"""E3: POPGym labyrinths, recurrent SparseNet (BPTT or sgprop through time) vs GRU / LSTM.

E3 of docs/concepts.md; by default what the reference code (`exp-popgym/trainers.py`) does,
docs/e3.md has the side-by-side proof and docs/deviations.md the options. Each batch:
`num_envs` fresh 6×6 mazes, one full episode each (Escape 80 / Explore 40; POPGym
truncates after length − 1 steps), wrapped previous-action → antialias → flatten
(tasks/mazes.py). Maze seeds (`maze_seeds: reference`): episode i of batch k (from 0) of
run seed s is POPGym's maze `s + i + k·num_envs`, so runs with nearby seeds share most
mazes, as in the reference (`independent`: drawn from the seed's own maze stream). In
Explore each step's reward is replaced by the step penalty −1/length with probability
`reward_noise` (default 0.75; Escape's default is 0), then +1 is added on completion (the
maze explored). A finished episode's observation stays its last one while the others run
on. Success = the episode terminated (goal reached / maze explored). Training:
full-episode REINFORCE (learners/reinforce.py), γ 0.95, returns normalised over the
batch's valid steps, entropy 0.01, gradient-norm clip 0.5, Adam, 300 batches.

Metrics (step = batch index, 1..batches; batch-level metrics are averaged over the
`log_every` batches ending at the step):
  success_rate, return_mean, return_p10/p25/p50/p75/p90 (undiscounted episode return as the
  agent saw it), episode_length, env_steps (cumulative valid steps), policy_loss, entropy,
  grad_norm (before clipping); sgprop: sg_loss, lambda_mean/min/max/p25/p75 (over neurons;
  λ after this batch's update), true_grad_norm / pred_norm / mixed_grad_norm (mean per-neuron
  ‖g_t‖, ‖ĝ_t‖, ‖g̃_t‖ over valid steps, mean-loss units, ĝ before this batch's SG step);
  at the last step also torch_threads (the intra-op threads the trial ran with),
  success_last5 (mean success of the last 5 batches) and success_auc
  (trapezoid area under success-vs-batch over the batch span, in [0, 1], as the
  reference's `normalized_auc`).
Gradient quality (beyond the paper), every `grad_every` batches (0: never) and after each
batch listed in `grad_at`, parameters,
SG and λ frozen, on batches from its own stream: a reference g_ref = mean of BPTT's
one-batch gradients over `ref_batches` batches (squared standard error se² = sample
variance / ref_batches), and each rule's one-batch estimates ĝ_i on `grad_batches` other
batches. Per group (`all`, `recurrent` = the cell's parameters):
  grad_mse/<rule>/<group>   mean_i ‖ĝ_i − g_ref‖² − se²            (unbiased for E‖ĝ − g‖²)
  grad_var/<rule>/<group>   Σ_i ‖ĝ_i − mean ĝ‖² / (R − 1)
  grad_bias2/<rule>/<group> ‖mean ĝ − g_ref‖² − var/R − se²         (unbiased; may be < 0)
  grad_cos/<rule>/<group>   mean_i cos(ĝ_i, g_ref)
  grad_ref_sq/<group>, grad_ref_se2/<group>   ‖g_ref‖², se²
(unbiased estimators, `tasks.gradient_errors.errors_against_reference`; E2 records plug-in
ones under the same names.) g is E[BPTT's one-batch gradient of the normalised-return
loss]; rules (`learners.compared`): `bp`, and for sgprop `mix` (the current λ-mixture with
its schedule) and `sg` (λ = 0 at every step).

Randomness: per seed independent streams (init, mazes [`maze_seeds: independent`], train =
actions and reward noise, grad), so gradient checkpoints never change a training
trajectory. Seeds in a block run one after the other (bit-identical to running alone).
Device: the model, learner and SG compute on the device the trial is given (CUDA where
Ray assigns a GPU); the maze replay (NumPy) and the action sampling (CPU generators, so
the same draws on every device) stay on the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from learners.feedback import FeedbackRule, rule_for
from learners.recurrent import Model, RecurrentShape, RecurrentSparseNet, build_model
from learners.reinforce import Batch, normalised_returns
from learners.sgprop_time import BPTT, SGPropTime
from tasks.base import ConfigError, MetricLog, Task, check_at_least, check_lambda_fields
from tasks.gradient_errors import errors_against_reference, reference_gradient
from tasks.mazes import ACTIONS, OBS_DIM, MazeBatch, StepResult
from tasks.sampling import sample_actions, stream

STREAMS = {"init": 0, "mazes": 1, "train": 2, "grad": 3}
LENGTH = {"escape": 80, "explore": 40}
NOISE = {"escape": 0.0, "explore": 0.75}
PERCENTILES = (10, 25, 50, 75, 90)


@dataclass(frozen=True)
class PopgymConfig:
    env: Literal["escape", "explore"] = "escape"
    model: Literal["sparsenet", "gru", "lstm"] = "sparsenet"
    learner: Literal["backprop", "sgprop"] = "backprop"
    num_envs: int = 20  # episodes per batch
    lr: float = 1e-3  # policy Adam LR
    batches: int = 300
    maze_size: int = 6
    length: int | None = None  # episode length; None: 80 (escape) / 40 (explore)
    reward_noise: float | None = None  # P(step reward → step penalty); None: 0 / 0.75
    gamma: float = 0.95
    entropy_coef: float = 0.01
    max_grad_norm: float = 0.5
    sg_lr: float = 1e-5  # sgprop: SG predictor Adam LR
    lam: float = 1.0  # sgprop: λ₀ if adaptive, else the fixed λ (1 = BPTT)
    adaptive: bool = True
    lam_momentum: float = 0.9
    lam_schedule: Literal["children", "parents", "none"] = "children"
    # sgprop: a rule of learners.feedback.RULES beyond fixed/adaptive (which `adaptive` picks)
    lam_rule: str | None = field(default=None, metadata={"added_later": True})
    sg_padding: Literal["mix", "mask"] = "mix"  # SG mixed at padded steps, or masked there
    sg_units: Literal["mean", "per_sample"] = "mean"  # SG learns the mean-loss g, or n·g
    maze_seeds: Literal["reference", "independent"] = "reference"
    neurons: int = 128  # SparseNet
    dim: int = 6
    parents: int = 6
    input_neurons: int = 16
    slots: int = 6
    hidden: int = 256  # GRU / LSTM
    log_every: int = 1
    grad_every: int = 0  # gradient-quality checkpoint period in batches; 0: none
    # gradient-quality checkpoints at these batches (besides any grad_every gives)
    grad_at: tuple[int, ...] = field(default=(), metadata={"added_later": True})
    grad_batches: int = 8  # one-batch estimates per rule and checkpoint
    ref_batches: int = 64  # batches averaged into the reference gradient

    def validate(self) -> None:
        check_at_least(1, {"num_envs": self.num_envs, "batches": self.batches,
                           "neurons": self.neurons, "dim": self.dim, "parents": self.parents,
                           "input_neurons": self.input_neurons, "slots": self.slots,
                           "hidden": self.hidden, "log_every": self.log_every})
        if self.maze_size < 6 or self.maze_size % 2:  # mazelib's smallest: 3×3 cells
            raise ConfigError("maze_size", f"expected an even size >= 6, got {self.maze_size}")
        if self.length is not None and self.length < 2:
            raise ConfigError("length", f"expected at least 2 steps, got {self.length}")
        if self.reward_noise is not None and not 0.0 <= self.reward_noise <= 1.0:
            raise ConfigError("reward_noise",
                              f"expected a probability in [0, 1], got {self.reward_noise}")
        for name in ("lr", "sg_lr", "max_grad_norm"):
            if not getattr(self, name) > 0:
                raise ConfigError(name, f"expected a positive number, got {getattr(self, name)}")
        if not 0.0 <= self.gamma <= 1.0:
            raise ConfigError("gamma", f"expected a discount in [0, 1], got {self.gamma}")
        if self.entropy_coef < 0:
            raise ConfigError("entropy_coef", f"expected >= 0, got {self.entropy_coef}")
        check_lambda_fields(self)
        if self.parents > self.neurons:
            raise ConfigError("parents", f"expected at most neurons = {self.neurons}")
        if self.input_neurons > self.neurons:
            raise ConfigError("input_neurons", f"expected at most neurons = {self.neurons}")
        check_at_least(0, {"grad_every": self.grad_every})
        if any(not 1 <= b <= self.batches for b in self.grad_at) or \
                list(self.grad_at) != sorted(set(self.grad_at)):
            raise ConfigError("grad_at", f"expected increasing batches in 1..{self.batches}, "
                                         f"got {list(self.grad_at)}")
        check_at_least(2, {"grad_batches": self.grad_batches, "ref_batches": self.ref_batches})
        if self.learner == "sgprop" and self.model != "sparsenet":
            raise ConfigError("learner", "sgprop needs model sparsenet (GRU/LSTM are BPTT only)")

    def grad_checkpoint(self, step: int) -> bool:
        """Whether a gradient-quality checkpoint follows batch `step` (1-based)."""
        return step in self.grad_at or bool(self.grad_every and step % self.grad_every == 0)

    @property
    def episode_length(self) -> int:
        return self.length if self.length is not None else LENGTH[self.env]

    @property
    def noise(self) -> float:
        return self.reward_noise if self.reward_noise is not None else NOISE[self.env]

    def rule(self) -> FeedbackRule:
        return rule_for(self.learner, self.lam, self.adaptive, self.lam_momentum,
                        self.lam_rule)

    def shape(self) -> RecurrentShape:
        return RecurrentShape(OBS_DIM, ACTIONS, self.neurons, self.dim, self.parents,
                              self.input_neurons, self.slots)


def random_seeds(gen: torch.Generator, n: int) -> list[int]:
    return torch.randint(0, 2**31 - 1, (n,), generator=gen).tolist()


def seen_rewards(res: StepResult, active: np.ndarray, flip: np.ndarray,
                 cfg: PopgymConfig) -> np.ndarray:
    """The rewards the agent learns from: the step penalty −1/length where `flip`, else
    POPGym's; in Explore then +1 on completion (after the replacement, as the reference);
    0 for episodes that had already ended."""
    reward = np.where(flip, -1.0 / cfg.episode_length, res.reward)
    if cfg.env == "explore":
        reward = reward + res.terminated
    return np.where(active, reward, 0.0)


@torch.no_grad()
def rollout(model: Model, mazes: MazeBatch, cfg: PopgymConfig, seeds: Sequence[int],
            act_gen: torch.Generator) -> Batch:
    """One episode in each of `num_envs` fresh mazes (POPGym seeds `seeds`), actions
    sampled from the policy. An episode that has ended keeps its last observation.

    The mazes are replayed on the CPU (NumPy) and the batch is recorded there; the policy
    computes wherever the model is, and its probabilities come back to the CPU for the
    sampling (CPU generator: the same draws on every device)."""
    n = cfg.num_envs
    device = next(model.parameters()).device
    obs = torch.from_numpy(mazes.reset(seeds))
    state = model.initial_state(n)
    # The SparseNet records its cell's values, so that the update need not unroll it again.
    recording = model.recording() if isinstance(model, RecurrentSparseNet) else None
    active = np.ones(n, bool)
    success = np.zeros(n, bool)
    record: dict[str, list[Tensor]] = {"obs": [], "actions": [], "rewards": [], "valid": []}
    while active.any():
        logits, state = (model.step(obs.to(device), state) if recording is None
                         else model.step(obs.to(device), state, recording))
        actions = sample_actions(torch.softmax(logits, -1).cpu(),
                                 torch.rand(n, generator=act_gen))
        res = mazes.step(actions.numpy(), active)
        flip = torch.rand(n, generator=act_gen).numpy() < cfg.noise
        record["obs"].append(obs)
        record["actions"].append(actions)
        record["rewards"].append(torch.from_numpy(seen_rewards(res, active, flip, cfg)).float())
        record["valid"].append(torch.from_numpy(active.copy()))
        success |= res.terminated
        obs = torch.from_numpy(np.where(active[:, None], res.obs, obs.numpy()))
        active = active & ~(res.terminated | res.truncated)
    return Batch(obs=torch.stack(record["obs"]), actions=torch.stack(record["actions"]),
                 rewards=torch.stack(record["rewards"]), valid=torch.stack(record["valid"]),
                 success=torch.from_numpy(success), recording=recording)


class PopgymRun:
    """One config and one seed: model, learner, optimiser, streams."""

    def __init__(self, cfg: PopgymConfig, seed: int, device: str = "cpu") -> None:
        cfg.validate()
        self.cfg = cfg
        # The model and learner compute on `device`; the environment stays on the CPU.
        self.device = torch.device(device)
        self.gens = {name: stream(seed, index) for name, index in STREAMS.items()}
        self.model = build_model(cfg.model, OBS_DIM, ACTIONS, self.gens["init"], cfg.shape(),
                                 cfg.hidden).to(self.device)  # initialised on the CPU
        self.learner: BPTT | SGPropTime
        if cfg.learner == "sgprop":
            assert isinstance(self.model, RecurrentSparseNet)
            self.learner = SGPropTime(
                self.model, cfg.rule(), cfg.sg_lr, cfg.entropy_coef, cfg.lam_schedule,
                horizon=cfg.episode_length, sg_clip=cfg.max_grad_norm,
                padding=cfg.sg_padding, units=cfg.sg_units)
        else:
            self.learner = BPTT(self.model, cfg.entropy_coef)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.mazes = MazeBatch(cfg.env, cfg.num_envs, cfg.maze_size, cfg.episode_length)
        self.seed = seed
        self.batches_done = 0

    def maze_seeds(self) -> list[int]:
        """The next training batch's POPGym maze seeds (module doc, `maze_seeds`)."""
        n = self.cfg.num_envs
        if self.cfg.maze_seeds == "independent":
            return random_seeds(self.gens["mazes"], n)
        return [self.seed + i + self.batches_done * n for i in range(n)]

    def collect(self, stream_name: str) -> tuple[Batch, Tensor]:
        """A batch and its normalised returns. Training takes the next training mazes and
        actions from the train stream; checkpoints draw both from the grad stream."""
        gen = self.gens[stream_name]
        if stream_name == "train":
            seeds = self.maze_seeds()
            self.batches_done += 1
        else:
            seeds = random_seeds(gen, self.cfg.num_envs)
        batch = rollout(self.model, self.mazes, self.cfg, seeds, gen)
        advantages = normalised_returns(batch.rewards, batch.valid, self.cfg.gamma)
        return batch.to(self.device), advantages.to(self.device)

    def update(self, batch: Batch, advantages: Tensor) -> dict[str, float]:
        """One learning step on a collected batch: gradients, clip, Adam."""
        stats = self.learner.backward(batch, advantages)
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        out = {name: float(v) for name, v in stats.items()}
        out["grad_norm"] = float(norm)
        return out

    def train_step(self) -> dict[str, float]:
        batch, advantages = self.collect("train")
        out = self.update(batch, advantages)
        returns = batch.rewards.sum(0).cpu().numpy()
        out.update({
            "success_rate": float(batch.success.float().mean()),
            "return_mean": float(returns.mean()),
            "episode_length": float(batch.lengths.float().mean()),
            "steps": float(batch.valid.sum()),
        })
        out.update({f"return_p{q}": float(v)
                    for q, v in zip(PERCENTILES, np.percentile(returns, PERCENTILES),
                                    strict=True)})
        if isinstance(self.learner, SGPropTime):
            out.update({k: float(v) for k, v in self.learner.lambda_stats().items()})
        return out

    def groups(self) -> dict[str, list[int]]:
        params = list(self.model.parameters())
        if isinstance(self.model, RecurrentSparseNet):
            rec = self.model.cell_parameters()
        else:
            rec = list(self.model.rnn.parameters())
        ids = {id(p) for p in rec}
        return {"all": list(range(len(params))),
                "recurrent": [i for i, p in enumerate(params) if id(p) in ids]}

    def gradient_quality(self) -> dict[str, float]:
        """Each rule's one-batch gradient vs a many-batch BPTT reference (see module doc)."""
        cfg = self.cfg
        groups = self.groups()

        def flat(grads: list[Tensor]) -> dict[str, Tensor]:
            return {g: torch.cat([grads[i].reshape(-1) for i in idx]).double()
                    for g, idx in groups.items()}

        reference = BPTT(self.model, cfg.entropy_coef)
        refs = [flat(reference.gradients(*self.collect("grad"))[0])
                for _ in range(cfg.ref_batches)]
        estimates: dict[str, list[dict[str, Tensor]]] = {}
        for _ in range(cfg.grad_batches):
            for rule, grads in self.learner.rule_gradients(*self.collect("grad")).items():
                estimates.setdefault(rule, []).append(flat(grads))
        out: dict[str, float] = {}
        for group in groups:
            g_ref, se2 = reference_gradient(torch.stack([x[group] for x in refs]))
            out[f"grad_ref_sq/{group}"] = float((g_ref * g_ref).sum())
            out[f"grad_ref_se2/{group}"] = se2
            for rule, ests in estimates.items():
                errors = errors_against_reference(torch.stack([x[group] for x in ests]),
                                                  g_ref, se2)
                out.update({f"grad_{stat}/{rule}/{group}": value
                            for stat, value in errors.items()})
        return out

    def run(self) -> MetricLog:
        cfg = self.cfg
        log = MetricLog()
        window: dict[str, float] = {}
        count, env_steps = 0, 0.0
        success: list[float] = []
        for step in range(1, cfg.batches + 1):
            stats = self.train_step()
            env_steps += stats.pop("steps")
            success.append(stats["success_rate"])
            for name, value in stats.items():
                window[name] = window.get(name, 0.0) + value
            count += 1
            if step % cfg.log_every == 0 or step == cfg.batches:
                log.log_dict({name: total / count for name, total in window.items()}, step)
                log.log("env_steps", env_steps, step)
                window, count = {}, 0
            if cfg.grad_checkpoint(step):
                log.log_dict(self.gradient_quality(), step)
        log.log("success_last5", float(np.mean(success[-5:])), cfg.batches)
        auc = np.trapezoid(success) / (len(success) - 1) if len(success) > 1 else success[0]
        log.log("success_auc", float(auc), cfg.batches)
        # Provenance: the intra-op threads this trial computed with (its CPU share in Ray).
        log.log("torch_threads", float(torch.get_num_threads()), cfg.batches)
        return log


def run_block(cfg: PopgymConfig, seeds: Sequence[int], device: str = "cpu") -> list[MetricLog]:
    return [PopgymRun(cfg, seed, device).run() for seed in seeds]


TASK = Task(
    name="popgym",
    config_type=PopgymConfig,
    run_block=run_block,
    report="analysis.popgym:report",
    uses_gpu=True,  # PopgymRun computes on the device it is given (mazes on the CPU)
)
