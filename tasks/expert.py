"""E1: the expert simulation, where synthetic gradients beat backprop arbitrarily (docs/e1.md).

One node `u` takes every value of the hypercube {−1,+1}^d; each of the R = 2^d values is a
partition with its own parameter block θ_r and Jacobian J_r (so u_r(θ) = u_r + J_r θ_r).
m experts read k coordinates S_j of u: y_j = a_j·u_S + b_j, target t_j = β_j·u_S + γ_j
(+ leak·u_{o_j}, o_j ∉ S_j: a Condition-B violation). The loss is the mean over partitions
of Σ_j ½(y_j − t_j)², so the node gradient is Σ_j e_j a_j on S_j with e_j = y_j − t_j and
the exact parameter gradient of partition r is J_r^T ∇_u(r) / R.

The node only sees noisy feedback ẽ_j, averaged over n repeats (Condition A). Backprop
uses ẽ of each partition; the synthetic gradient is each expert's table over its 2^k
local keys (the mean ẽ over the 2^(d−k) partitions sharing a key); λ-mixtures mix the
two. Everything maps linearly to parameter gradients, so each estimator's squared error
is |J^T (Δe A)|² / R² with Δe its feedback error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from torch import Tensor

from learners.feedback import FeedbackRule, backprop, lambda_mixture, synthetic
from learners.predictors import TablePredictor
from tasks.base import ConfigError, MetricLog, Task

Case = Literal["noisy", "activation", "partial"]
MAX_D = 16  # J alone is 2^d·d² doubles: 0.5 GiB at d = 16


@dataclass(frozen=True)
class ExpertConfig:
    d: int  # hypercube dimension: R = 2^d partitions
    k: int  # coordinates each expert reads
    case: Case = "noisy"  # which Condition-A noise
    m: int = 5  # experts
    n: int = 1  # repeats averaged per partition
    sigma: float = 0.5  # `noisy`: feedback noise std
    p: float = 0.5  # `activation`: keep probability of the downstream activation
    tau: float = 0.5  # `partial`: latent std
    leak: float = 0.0  # weight of one coordinate outside S_j in expert j's target
    lams: tuple[float, ...] = ()  # extra λ-mixtures to score
    # One more λ-mixture, scored as `sqerr_lam`: a scalar to tune (`sgsweep tune`). Added
    # after results existed, so it is left out of trial ids while unset.
    lam: float | None = field(default=None, metadata={"added_later": True})

    def validate(self) -> None:
        if not 1 <= self.d <= MAX_D:
            raise ConfigError("d", f"expected an integer in 1..{MAX_D}, got {self.d}")
        if not 1 <= self.k <= self.d:
            raise ConfigError("k", f"expected 1 <= k <= d = {self.d}, got {self.k}")
        if self.m < 1:
            raise ConfigError("m", f"expected at least one expert, got {self.m}")
        if self.n < 1:
            raise ConfigError("n", f"expected at least one repeat, got {self.n}")
        if self.sigma < 0:
            raise ConfigError("sigma", f"expected a std >= 0, got {self.sigma}")
        if not 0 < self.p <= 1:
            raise ConfigError("p", f"expected a probability in (0, 1], got {self.p}")
        if self.tau < 0:
            raise ConfigError("tau", f"expected a std >= 0, got {self.tau}")
        if self.leak < 0:
            raise ConfigError("leak", f"expected a weight >= 0, got {self.leak}")
        if self.leak > 0 and self.k == self.d:
            raise ConfigError("leak", "needs k < d: there is no coordinate outside S_j")
        for lam in self.lams:
            if not 0.0 <= lam <= 1.0:
                raise ConfigError("lams", f"expected values in [0, 1], got {lam}")
        if len(set(self.lams)) != len(self.lams):
            raise ConfigError("lams", f"expected distinct values, got {list(self.lams)}")
        if self.lam is not None and not 0.0 <= self.lam <= 1.0:
            raise ConfigError("lam", f"expected λ in [0, 1], got {self.lam}")


@dataclass(frozen=True)
class ExpertProblem:
    """One sampled instance; identical across cases, n, noise levels and leak for a seed."""

    states: Tensor  # (R, d) ±1: partition r is the hypercube node with bits of r
    jacobians: Tensor  # (R, d, d)
    coords: Tensor  # (m, k) S_j
    outside: Tensor  # (m,) o_j ∉ S_j (−1 when k = d)
    a: Tensor  # (m, k)
    b: Tensor  # (m,)
    beta: Tensor  # (m, k)
    gamma: Tensor  # (m,)
    alpha: Tensor  # (m,) loadings of the latent in the `partial` case
    readout: Tensor  # (m, d) a_j placed on S_j: node gradient = e @ readout
    keys: Tensor  # (m, R) expert j's local key of partition r, in [0, 2^k)
    targets: Tensor  # (R, m) t_j(r)
    clean: Tensor  # (R, m) noise-free feedback e_j(r) = y_j(r) − t_j(r)


def hypercube(d: int, dtype: torch.dtype = torch.float64) -> Tensor:
    bits = (torch.arange(2**d).unsqueeze(1) >> torch.arange(d)) & 1
    return (2 * bits - 1).to(dtype)


def sample_problem(cfg: ExpertConfig, gen: torch.Generator) -> ExpertProblem:
    """Draw an instance. The draw order is fixed: changing it changes every seed's result."""
    d, k, m = cfg.d, cfg.k, cfg.m
    f64 = torch.float64
    states = hypercube(d)
    jacobians = torch.randn(2**d, d, d, generator=gen, dtype=f64) / d**0.5
    perms = torch.stack([torch.randperm(d, generator=gen) for _ in range(m)])
    coords = perms[:, :k]
    outside = perms[:, k] if k < d else torch.full((m,), -1, dtype=torch.long)
    a = torch.randn(m, k, generator=gen, dtype=f64) / k**0.5
    b = 0.1 * torch.randn(m, generator=gen, dtype=f64)
    beta = torch.randn(m, k, generator=gen, dtype=f64) / k**0.5
    gamma = 0.1 * torch.randn(m, generator=gen, dtype=f64)
    alpha = torch.randn(m, generator=gen, dtype=f64)

    local = states[:, coords]  # (R, m, k)
    targets = (beta * local).sum(-1) + gamma
    if cfg.leak > 0:
        targets = targets + cfg.leak * states[:, outside]
    clean = (a * local).sum(-1) + b - targets
    readout = torch.zeros(m, d, dtype=f64).scatter_(1, coords, a)
    local_bits = (local > 0).long()
    keys = (local_bits << torch.arange(k)).sum(-1).T.contiguous()  # (m, R)
    return ExpertProblem(
        states, jacobians, coords, outside, a, b, beta, gamma, alpha, readout, keys, targets, clean
    )


def sample_feedback(problem: ExpertProblem, cfg: ExpertConfig, gen: torch.Generator) -> Tensor:
    """Observed feedback ẽ (R, m): the mean of n noisy repeats of the clean feedback."""
    clean = problem.clean
    if cfg.case == "noisy":
        noise = torch.randn(clean.shape, generator=gen, dtype=clean.dtype)
        return clean + noise * (cfg.sigma / cfg.n**0.5)
    if cfg.case == "activation":
        count = torch.full(clean.shape, float(cfg.n), dtype=clean.dtype)
        kept = torch.binomial(count, torch.full_like(count, cfg.p), generator=gen)
        return clean * kept / (cfg.n * cfg.p)
    latent = torch.randn(clean.shape[0], 1, generator=gen, dtype=clean.dtype)
    return clean - problem.alpha * latent * (cfg.tau / cfg.n**0.5)


def parameter_gradient(problem: ExpertProblem, feedback: Tensor) -> Tensor:
    """Map expert feedback (..., R, m) to parameter gradients (..., R, d): J_r^T (e A) / R."""
    node_grad = feedback @ problem.readout
    return torch.einsum("rij,...ri->...rj", problem.jacobians, node_grad) / feedback.shape[-2]


def exact_gradient(problem: ExpertProblem) -> Tensor:
    return parameter_gradient(problem, problem.clean)


def outputs(problem: ExpertProblem, theta: Tensor | None = None) -> Tensor:
    """Expert outputs y_j (R, m) at parameters θ (R, d); θ = None means θ = 0."""
    states = problem.states
    if theta is not None:
        states = states + torch.einsum("rij,rj->ri", problem.jacobians, theta)
    return (problem.a * states[:, problem.coords]).sum(-1) + problem.b


def loss(problem: ExpertProblem, theta: Tensor) -> Tensor:
    """The objective whose gradient at θ = 0 is `exact_gradient` (targets held fixed)."""
    err = outputs(problem, theta) - problem.targets
    return 0.5 * (err**2).sum() / problem.states.shape[0]


def synthetic_feedback(problem: ExpertProblem, feedback: Tensor) -> Tensor:
    """Each expert's table prediction: mean feedback over partitions sharing its local key."""
    table = TablePredictor.fit(problem.keys, feedback.T.contiguous(), 2 ** problem.coords.shape[1])
    return table.predict(problem.keys).T


def rules(cfg: ExpertConfig) -> list[FeedbackRule]:
    extra = [] if cfg.lam is None else [replace(lambda_mixture(cfg.lam), name="lam")]
    return [backprop(), synthetic(), *(lambda_mixture(lam) for lam in cfg.lams), *extra]


def metric_name(rule: FeedbackRule) -> str:
    return {"backprop": "sqerr_bp", "synthetic": "sqerr_sg"}.get(rule.name, f"sqerr_{rule.name}")


def run_trial(cfg: ExpertConfig, seed: int, device: str = "cpu") -> MetricLog:
    return run_block(cfg, [seed], device)[0]


# Seeds per batched computation: stacked Jacobians up to ~2^18 doubles (2 MiB), which
# keeps them in cache; bigger batches were slower than seed-by-seed (benchmarks).
MAX_BLOCK_ELEMENTS = 2**18


def run_block(cfg: ExpertConfig, seeds: Sequence[int], device: str = "cpu") -> list[MetricLog]:
    """All seeds of a block as one batched computation over a leading seed dimension.

    Each seed draws its problem and feedback from its own generator, so a seed's result
    is the same whatever block it runs in (tests check this bit for bit).
    """
    per_seed = 2**cfg.d * cfg.d * cfg.d
    step = max(1, MAX_BLOCK_ELEMENTS // per_seed)
    logs: list[MetricLog] = []
    for start in range(0, len(seeds), step):
        logs.extend(_run_batch(cfg, seeds[start:start + step], device))
    return logs


def _run_batch(cfg: ExpertConfig, seeds: Sequence[int], device: str) -> list[MetricLog]:
    problems, observed = [], []
    for seed in seeds:
        gen = torch.Generator().manual_seed(seed)
        problems.append(sample_problem(cfg, gen))
        observed.append(sample_feedback(problems[-1], cfg, gen))
    jacobians = torch.stack([p.jacobians for p in problems]).to(device)  # (S, R, d, d)
    readout = torch.stack([p.readout for p in problems]).to(device)  # (S, m, d)
    keys = torch.stack([p.keys for p in problems]).to(device)  # (S, m, R)
    clean = torch.stack([p.clean for p in problems]).to(device)  # (S, R, m)
    realised = torch.stack(observed).to(device)  # (S, R, m)

    table = TablePredictor.fit(keys, realised.transpose(1, 2).contiguous(), 2**cfg.k)
    predicted = table.predict(keys).transpose(1, 2)  # (S, R, m)
    estimators = rules(cfg)
    feedback = torch.stack([rule.mix(realised, predicted) for rule in estimators], 1)
    errors = torch.cat([feedback - clean[:, None], clean[:, None]], 1)  # (S, K+1, R, m)
    node_grad = errors @ readout[:, None]  # (S, K+1, R, d)
    grads = torch.einsum("srij,skri->skrj", jacobians, node_grad) / 2**cfg.d
    sq = grads.pow(2).sum((-2, -1)).cpu()  # (S, K+1): estimators' errors, then |truth|²

    logs = []
    for row in sq.tolist():
        log = MetricLog()
        for rule, value in zip(estimators, row, strict=False):
            log.log(metric_name(rule), value)
        log.log("truth_sqnorm", row[-1])
        logs.append(log)
    return logs


def block_memory_bytes(cfg: ExpertConfig, seeds: int) -> int:
    """Upper estimate of a block's peak memory (bytes): the seeds computed together, each
    with its (R, m) tables per estimator (float64: local coordinates, realised and mixed
    feedback, errors) and the batched Jacobian product, plus the m experts' permutations.
    Measured peaks are 0.63-0.94x of it (d 10-14; docs/running.md, "Bounds")."""
    cells, estimators = 2**cfg.d * cfg.m, len(rules(cfg))
    together = min(seeds, max(1, MAX_BLOCK_ELEMENTS // (2**cfg.d * cfg.d * cfg.d)))
    per_seed = 8 * cells * (2 * cfg.k + 3 * (estimators + 1) + 4 * cfg.n + 8) \
        + 8 * (estimators + 3) * 2**cfg.d * cfg.d * cfg.d
    return together * per_seed + 300 * cfg.m


TASK = Task(
    name="expert",
    config_type=ExpertConfig,
    run_block=run_block,
    memory_bytes=block_memory_bytes,
    report="analysis.expert:report",
    tune_reference="analysis.expert:tune_reference",
)
