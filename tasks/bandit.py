"""E2: the noisy contextual bandit, and the gradient MSE of each rule.

Classification becomes a bandit: the context is an image, the actions are the classes that
are not excluded (the paper drops digit 2), the reward is 1[a = label] flipped with
probability `p_flip`. The policy (SparseNet or MLP) is trained by REINFORCE without a
baseline, batch 64, Adam, by `backprop` or `sgprop` (fixed λ, or adaptive λ from λ₀).
Evaluation: `eval_size` test images drawn with replacement, actions sampled from the
policy, noise-free reward. Defaults follow the authors' code (`exp-mnist-bandit/`);
`fan_in`, `mlp_init`, `eval_contexts`, `sg_init`, `sg_units` and `lam_normalise` name our
deviations from it (docs/deviations.md).

Metrics (step = number of policy updates so far):
- at `eval_points` steps spread as the reference code spreads them (int(linspace(1,
  steps, eval_points)): the first after one update, the last at `steps`):
  `eval_reward` (sampled actions, noise-free reward: the paper's metric),
  `eval_expected_reward` (mean π(label|x) on the same contexts, without action noise),
  `train_reward` (mean observed noisy reward since the previous evaluation),
  sgprop only: `sg_loss` (mean SG regression loss since the previous evaluation),
  `lambda/l<i>` (mean λ over layer i's neurons), `lambda_mean` (over all layers), and
  from that step's update `feedback_norm/bp/l<i>` = ‖g_i‖ and `feedback_norm/sg/l<i>` =
  ‖ĝ_i‖ (over the batch, mean-loss units; the reference code logs the same two norms).
- every `mse_every` steps (0: never), beyond the paper, at the parameters θ that step's
  update starts from: with the policy, the SG predictor and λ frozen, R = `mse_batches`
  fresh batches, for each rule's parameter-gradient estimate ĝ_r against the exact
  population gradient g* of the expected noisy loss (−mean over training contexts of
  Σ_a π(a|x) E[r|x,a], E[r|x,a] = p + (1−2p)·1[a=y]):
    `grad_mse/<rule>/<group>`   mean_r ‖ĝ_r − g*‖²
    `grad_bias2/<rule>/<group>` ‖mean_r ĝ_r − g*‖²
    `grad_var/<rule>/<group>`   mean_r ‖ĝ_r − mean ĝ‖²   (mse = bias2 + var)
    `grad_cos/<rule>/<group>`   mean_r cos(ĝ_r, g*)
    `grad_truth_sq/<group>`     ‖g*‖²
  (plug-in estimators, `tasks.gradient_errors.ExactErrors`: var divides by R, biased low
  by (R − 1)/R; E3 records unbiased ones under the same names);
  rules (`learners.compared`): `bp` (backprop), and for sgprop `mix` (the current
  λ-mixture) and `sg` (λ = 0);
  groups: `l0`..`l<L−1>` (hidden layers), `head`, `hidden` (all hidden layers), `all`.
  All rules see the same batches (paired). The head's estimate is the same for every rule.
  Then the step's actual update Δθ (Adam's, from the learner's own batch):
    `update_norm/<group>` ‖Δθ‖,  `update_cos/<group>` cos(Δθ, −g*),
    `update_gain/<group>` −⟨g*, Δθ⟩ (first-order decrease of the expected loss),
  which tell a better gradient estimate from a larger or better-aimed step.

Randomness: each seed has four independent streams (init, train, eval, mse), so turning
evaluation or MSE checkpoints on or off never changes a training trajectory.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from learners.feedback import FeedbackRule, rule_for
from learners.sgprop import Backprop, SGProp, parameters_of
from learners.sparsenet import MLP, SparseNet, SparseNetShape
from tasks import datasets
from tasks.base import ConfigError, MetricLog, Task, check_at_least, check_lambda_fields
from tasks.gradient_errors import ExactErrors
from tasks.sampling import sample_actions, stream

# Policy learning rates of the paper, used when `lr` is not given.
PAPER_LR = {("sparsenet", "sgprop"): 5e-3, ("sparsenet", "backprop"): 1e-3,
            ("mlp", "backprop"): 2e-5}
STREAMS = {"init": 0, "train": 1, "eval": 2, "mse": 3}
CHUNK = 256  # images per forward pass in evaluation and exact gradients (fixed: results
# must not depend on how many seeds share a block)


@dataclass(frozen=True)
class BanditConfig:
    learner: Literal["backprop", "sgprop"] = "sgprop"
    model: Literal["sparsenet", "mlp"] = "sparsenet"
    dataset: Literal["digits", "mnist"] = "digits"
    data_dir: str | None = None  # mnist: IDX folder; None: the MNIST `make install` put in place
    exclude: tuple[int, ...] = (2,)  # classes dropped from the bandit
    p_flip: float = 0.4  # probability that the reward is flipped
    steps: int = 1500
    batch_size: int = 64
    lr: float | None = None  # policy Adam LR; None: the paper's for this model/learner
    sg_lr: float = 5e-3  # SG predictor Adam LR
    lam: float = 0.9  # sgprop: fixed λ, or λ₀ if adaptive (1 = backprop, 0 = pure SG)
    adaptive: bool = True  # sgprop: adapt λ per neuron
    lam_momentum: float = 0.9  # EMA momentum of adaptive λ
    # sgprop: a rule of learners.feedback.RULES beyond fixed/adaptive (which `adaptive` picks)
    lam_rule: str | None = field(default=None, metadata={"added_later": True})
    lam_normalise: bool = True  # adaptive λ from unit-normalised feedback directions
    layers: int = 5  # SparseNet
    width: int = 200
    dim: int = 10
    fan_in: int | None = None  # pixels per layer-0 neuron; None: dim × parents (reference)
    parents: int = 5
    slots: int = 5
    mlp_width: int = 745
    mlp_layers: int = 5
    mlp_init: Literal["xavier", "torch"] = "xavier"  # xavier: the reference's init
    eval_points: int = 20
    eval_size: int = 4000  # test contexts per evaluation
    # sampled: drawn with replacement (reference); fixed: the first eval_size, each once
    eval_contexts: Literal["sampled", "fixed"] = "sampled"
    sg_init: Literal["normal", "zero"] = "normal"  # normal: N(0, 1/D) as the reference
    sg_units: Literal["mean", "sample"] = "mean"  # mean: batch-mean-loss gradients (reference)
    # false: backprop trains the action head only, hidden layers stay at their init (a
    # random-features control, beyond the paper: docs/e2.md)
    train_hidden: bool = field(default=True, metadata={"added_later": True})
    mse_every: int = 0  # gradient-MSE checkpoint period in steps; 0: none
    mse_batches: int = 32  # R fresh batches per checkpoint

    def validate(self) -> None:
        if self.dataset == "mnist":
            try:
                datasets.mnist_paths(self.data_dir)
            except datasets.DatasetError as exc:
                raise ConfigError("data_dir", str(exc)) from None
        elif self.data_dir is not None:
            raise ConfigError("data_dir", "only used with dataset mnist")
        if any(not 0 <= c <= 9 for c in self.exclude):
            raise ConfigError("exclude", f"expected classes in 0..9, got {list(self.exclude)}")
        if len(set(self.exclude)) != len(self.exclude) or len(self.exclude) > 8:
            raise ConfigError("exclude", "expected distinct classes leaving at least two")
        if not 0.0 <= self.p_flip <= 1.0:
            raise ConfigError("p_flip", f"expected a probability in [0, 1], got {self.p_flip}")
        check_at_least(1, {"steps": self.steps, "layers": self.layers, "width": self.width,
                           "dim": self.dim, "fan_in": self.pixels_per_neuron,
                           "parents": self.parents, "slots": self.slots,
                           "mlp_width": self.mlp_width, "mlp_layers": self.mlp_layers,
                           "eval_points": self.eval_points, "eval_size": self.eval_size})
        check_at_least(2, {"batch_size": self.batch_size})
        if self.lr is not None and not self.lr > 0:
            raise ConfigError("lr", f"expected a positive learning rate, got {self.lr}")
        if not self.sg_lr > 0:
            raise ConfigError("sg_lr", f"expected a positive learning rate, got {self.sg_lr}")
        check_lambda_fields(self)
        if self.pixels_per_neuron > datasets.PIXELS[self.dataset]:
            where = "" if self.fan_in is not None else (
                f" (fan_in defaults to dim × parents = {self.pixels_per_neuron})")
            raise ConfigError("fan_in", f"{self.dataset} has only "
                                        f"{datasets.PIXELS[self.dataset]} pixels{where}")
        if self.parents > self.width:
            raise ConfigError("parents", f"expected at most width = {self.width}")
        if self.eval_points > self.steps:
            raise ConfigError("eval_points", f"expected at most steps = {self.steps}")
        check_at_least(0, {"mse_every": self.mse_every})
        check_at_least(2, {"mse_batches": self.mse_batches})
        if self.learner == "sgprop" and self.model != "sparsenet":
            raise ConfigError("learner", "sgprop needs model sparsenet (the MLP is BP only)")
        if not self.train_hidden and self.learner != "backprop":
            raise ConfigError("train_hidden", "false is a backprop control (head only)")

    @property
    def pixels_per_neuron(self) -> int:
        return self.dim * self.parents if self.fan_in is None else self.fan_in

    @property
    def policy_lr(self) -> float:
        return self.lr if self.lr is not None else PAPER_LR[(self.model, self.learner)]

    def rule(self) -> FeedbackRule:
        return rule_for(self.learner, self.lam, self.adaptive, self.lam_momentum,
                        self.lam_rule)

    def eval_steps(self) -> list[int]:
        """int(linspace(1, steps, eval_points)), as the reference code (duplicates merged);
        a single evaluation is at the end (linspace would put it after the first step)."""
        if self.eval_points == 1:
            return [self.steps]
        return sorted({int(v) for v in np.linspace(1, self.steps, num=self.eval_points)})


@functools.lru_cache(maxsize=4)
def _load(name: str, data_dir: str | None) -> datasets.Dataset:
    return datasets.load(name, data_dir)


def bandit_data(cfg: BanditConfig) -> tuple[datasets.Dataset, list[int]]:
    """The dataset with excluded classes dropped; DatasetError becomes a ConfigError."""
    try:
        data = _load(cfg.dataset, str(Path(cfg.data_dir)) if cfg.data_dir else None)
    except datasets.DatasetError as exc:
        raise ConfigError("data_dir", str(exc)) from None
    return data.without_classes(cfg.exclude)


def expected_rewards(labels: Tensor, actions: int, p_flip: float) -> Tensor:
    """E[r | x, a] for every action: p + (1 − 2p)·1[a = y]; labels (...,) → (..., A)."""
    onehot = torch.nn.functional.one_hot(labels, actions).to(torch.float32)
    return p_flip + (1.0 - 2.0 * p_flip) * onehot


class BanditBlock:
    """One config and a block of seeds, trained as one batched computation."""

    def __init__(self, cfg: BanditConfig, seeds: Sequence[int], device: str = "cpu",
                 data: datasets.Dataset | None = None) -> None:
        """`data` replaces the configured dataset (benchmarks use synthetic contexts)."""
        cfg.validate()
        self.cfg = cfg
        self.seeds = list(seeds)
        self.device = torch.device(device)
        if data is None:
            data, self.classes = bandit_data(cfg)
        else:
            data, self.classes = data.without_classes(cfg.exclude)
        self.actions = len(self.classes)
        self.train_x = data.train_x.to(self.device)
        self.train_y = data.train_y.to(self.device)
        if cfg.eval_contexts == "fixed":
            self.test_x = data.test_x[: cfg.eval_size].to(self.device)
            self.test_y = data.test_y[: cfg.eval_size].to(self.device)
        else:
            self.test_x, self.test_y = data.test_x.to(self.device), data.test_y.to(self.device)
        self.gens = {name: [stream(s, index) for s in self.seeds]
                     for name, index in STREAMS.items()}
        self.model = build_model(cfg, data.pixels, self.actions, self.gens["init"]).to(self.device)
        self.learner: Backprop | SGProp
        if cfg.learner == "sgprop":
            assert isinstance(self.model, SparseNet)
            # The SG predictor's init draws continue the init stream after the model's.
            self.learner = SGProp(self.model, cfg.rule(), cfg.sg_lr, self.gens["init"],
                                  cfg.lam_normalise, cfg.sg_init, cfg.sg_units)
        else:
            self.learner = Backprop(self.model)
        # fused: one pass over the parameters, bit-identical to the default loop on CPU
        trained = (list(self.model.parameters()) if cfg.train_hidden
                   else self.model.layer_parameters()[-1][1])  # the action head only
        self.optimizer = torch.optim.Adam(trained, lr=cfg.policy_lr, fused=True)

    @property
    def num_seeds(self) -> int:
        return len(self.seeds)

    def _uniform(self, gens: list[torch.Generator], n: int) -> Tensor:
        return torch.stack([torch.rand(n, generator=g) for g in gens]).to(self.device)

    def sample_batch(self, gens: list[torch.Generator]) -> tuple[Tensor, Tensor]:
        """Each seed's own batch of training contexts: images (S, B, I), labels (S, B)."""
        return self._draw(self.train_x, self.train_y, gens, self.cfg.batch_size)

    def _draw(self, images: Tensor, labels: Tensor, gens: list[torch.Generator], n: int,
              ) -> tuple[Tensor, Tensor]:
        """n contexts per seed drawn with replacement: (S, n, I), (S, n)."""
        idx = torch.stack([torch.randint(images.shape[0], (n,), generator=g)
                           for g in gens]).to(self.device)
        return images[idx], labels[idx]

    def act(self, logits: Tensor, labels: Tensor, gens: list[torch.Generator],
            ) -> tuple[Tensor, Tensor]:
        """Sample actions from π and the noisy rewards: (actions, rewards), each (S, B)."""
        batch = labels.shape[1]
        probs = torch.softmax(logits.detach(), -1)
        actions = sample_actions(probs, self._uniform(gens, batch))
        flips = self._uniform(gens, batch) < self.cfg.p_flip
        rewards = ((actions == labels) != flips).to(torch.float32)
        return actions, rewards

    def train_step(self) -> dict[str, Tensor]:
        gens = self.gens["train"]
        images, labels = self.sample_batch(gens)
        trace = self.learner.forward(images)
        actions, rewards = self.act(trace.logits, labels, gens)
        stats = self.learner.backward(trace, actions, rewards)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        stats["train_reward"] = rewards.mean(1)
        return stats

    def _logits(self, images: Tensor) -> Tensor:
        return self.model.logits(images.expand(self.num_seeds, *images.shape))

    @torch.no_grad()
    def evaluate(self) -> tuple[Tensor, Tensor]:
        """(sampled-action reward, expected reward), each (S,), on test contexts."""
        gens = self.gens["eval"]
        if self.cfg.eval_contexts == "sampled":
            test_x, test_y = self._draw(self.test_x, self.test_y, gens, self.cfg.eval_size)
        else:
            test_x = self.test_x.expand(self.num_seeds, *self.test_x.shape)
            test_y = self.test_y.expand(self.num_seeds, -1)
        sampled, expected = [], []
        uniforms = self._uniform(gens, test_y.shape[1])
        for start in range(0, test_y.shape[1], CHUNK):
            labels = test_y[:, start:start + CHUNK]
            probs = torch.softmax(self.model.logits(test_x[:, start:start + CHUNK]), -1)
            actions = sample_actions(probs, uniforms[:, start:start + CHUNK])
            sampled.append((actions == labels).to(torch.float32))
            expected.append(probs.gather(-1, labels.unsqueeze(-1)).squeeze(-1))
        return torch.cat(sampled, 1).mean(1), torch.cat(expected, 1).mean(1)

    def exact_gradient(self) -> list[Tensor]:
        """∇θ of −mean_x Σ_a π(a|x) E[r|x,a] over all training contexts, per parameter."""
        params = parameters_of(self.model)
        total = [torch.zeros_like(p) for p in params]
        n = self.train_x.shape[0]
        for start in range(0, n, CHUNK):
            images = self.train_x[start:start + CHUNK]
            means = expected_rewards(self.train_y[start:start + CHUNK], self.actions,
                                     self.cfg.p_flip)
            probs = torch.softmax(self._logits(images), -1)
            loss = -(probs * means).sum((-1, -2)).sum() / n
            for acc, g in zip(total, torch.autograd.grad(loss, params), strict=True):
                acc += g
        return total

    def grad_mse(self) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Gradient-estimation statistics of each rule at the current parameters, (S,) each,
        and the exact gradient per group, (S, P_group)."""
        groups = self._groups()
        truth = self._flatten(self.exact_gradient(), groups)
        errors: dict[tuple[str, str], ExactErrors] = {}
        gens = self.gens["mse"]
        for _ in range(self.cfg.mse_batches):
            images, labels = self.sample_batch(gens)
            with torch.no_grad():
                logits = self.learner.forward(images).logits
            actions, rewards = self.act(logits, labels, gens)
            for rule, grads in self.learner.rule_gradients(images, actions, rewards).items():
                for group, est in self._flatten(grads, groups).items():
                    if (rule, group) not in errors:
                        errors[(rule, group)] = ExactErrors(truth[group])
                    errors[(rule, group)].add(est)
        out: dict[str, Tensor] = {}
        for (rule, group), error in errors.items():
            out.update({f"grad_{stat}/{rule}/{group}": value
                        for stat, value in error.finish().items()})
        for group, t in truth.items():
            out[f"grad_truth_sq/{group}"] = (t * t).sum(-1)
        return out, truth

    def update_stats(self, before: list[Tensor], truth: dict[str, Tensor]) -> dict[str, Tensor]:
        """Norm, cosine with −g* and first-order gain of the update from `before` to now."""
        groups = self._groups()
        now = [p.detach() for p in parameters_of(self.model)]
        delta = self._flatten([a - b for a, b in zip(now, before, strict=True)], groups)
        out: dict[str, Tensor] = {}
        for group, d in delta.items():
            t = truth[group]
            gain = -(d * t).sum(-1)
            norm = d.norm(dim=-1)
            out[f"update_norm/{group}"] = norm
            out[f"update_cos/{group}"] = gain / (norm * t.norm(dim=-1)).clamp(min=1e-30)
            out[f"update_gain/{group}"] = gain
        return out

    def _groups(self) -> list[tuple[str, list[int]]]:
        """Parameter indices (in `parameters_of` order) of each reported group."""
        groups, start = [], 0
        for name, params in self.model.layer_parameters():
            groups.append((name, list(range(start, start + len(params)))))
            start += len(params)
        hidden = [i for name, idx in groups if name != "head" for i in idx]
        return [*groups, ("hidden", hidden), ("all", list(range(start)))]

    def _flatten(self, grads: list[Tensor], groups: list[tuple[str, list[int]]],
                 ) -> dict[str, Tensor]:
        s = self.num_seeds
        return {name: torch.cat([grads[i].reshape(s, -1) for i in idx], 1)
                for name, idx in groups}

    def run(self) -> list[MetricLog]:
        cfg = self.cfg
        logs = [MetricLog() for _ in self.seeds]
        eval_steps = set(cfg.eval_steps())
        window: dict[str, Tensor] = {}
        count = 0

        def record(metrics: dict[str, Tensor], step: int) -> None:
            columns = {name: value.tolist() for name, value in metrics.items()}
            for i, log in enumerate(logs):
                log.log_dict({name: values[i] for name, values in columns.items()}, step)

        for step in range(1, cfg.steps + 1):
            checkpoint = cfg.mse_every and step % cfg.mse_every == 0
            if checkpoint:  # at the parameters this step's update starts from
                grad_stats, truth = self.grad_mse()
                before = [p.detach().clone() for p in parameters_of(self.model)]
            for name, value in self.train_step().items():
                window[name] = window.get(name, 0) + value
            count += 1
            if checkpoint:
                record({**grad_stats, **self.update_stats(before, truth)}, step)
            if step in eval_steps:
                sampled, expected = self.evaluate()
                metrics = {"eval_reward": sampled, "eval_expected_reward": expected}
                metrics.update({name: total / count for name, total in window.items()})
                if isinstance(self.learner, SGProp):
                    lams = self.learner.lambda_means()
                    metrics.update({f"lambda/l{i}": lam for i, lam in enumerate(lams)})
                    metrics["lambda_mean"] = torch.stack(lams).mean(0)
                    metrics.update(self.learner.norms)
                record(metrics, step)
                window, count = {}, 0
        return logs


def build_model(cfg: BanditConfig, pixels: int, actions: int,
                generators: Sequence[torch.Generator]) -> SparseNet | MLP:
    if cfg.model == "mlp":
        return MLP(pixels, actions, cfg.mlp_width, cfg.mlp_layers, generators, cfg.mlp_init)
    shape = SparseNetShape(inputs=pixels, actions=actions, layers=cfg.layers, width=cfg.width,
                           dim=cfg.dim, fan_in=cfg.pixels_per_neuron, parents=cfg.parents,
                           slots=cfg.slots)
    return SparseNet(shape, generators)


# On CPU a seed-batched step pays off only for small models. benchmarks/bench_bandit.py
# --threads 1 --clock cpu (a 6-seed block vs 6 sequential seeds, fastest of 5-10 rounds, on
# the shared 2-core machine; docs/performance.md) measured 1.82-2.00x at the digits sweeps'
# sizes but 0.94-1.00x at the paper's (width 200, dim 10): no gain there, so those run
# seed by seed.
CPU_BATCH_LIMIT = 512  # SparseNet width·dim (or MLP width) up to which CPU blocks are batched


def batch_seeds(cfg: BanditConfig, device: str) -> bool:
    if torch.device(device).type != "cpu":
        return True
    size = cfg.mlp_width if cfg.model == "mlp" else cfg.width * cfg.dim
    return size <= CPU_BATCH_LIMIT


def run_block(cfg: BanditConfig, seeds: Sequence[int], device: str = "cpu") -> list[MetricLog]:
    # Either way each seed's result is bit-identical to running it alone (tested).
    if batch_seeds(cfg, device):
        return BanditBlock(cfg, seeds, device).run()
    return [log for seed in seeds for log in BanditBlock(cfg, [seed], device).run()]


def num_parameters(cfg: BanditConfig, pixels: int, actions: int) -> int:
    if cfg.model == "mlp":
        sizes = [pixels] + [cfg.mlp_width] * cfg.mlp_layers + [actions]
        return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
    return SparseNetShape(pixels, actions, cfg.layers, cfg.width, cfg.dim,
                          cfg.pixels_per_neuron, cfg.parents, cfg.slots).num_parameters()


TASK = Task(
    name="bandit",
    config_type=BanditConfig,
    run_block=run_block,
    report="analysis.bandit:report",
)
