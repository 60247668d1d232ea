"""E3 learners: BPTT and sgprop through time (docs/concepts.md: λ-mixtures and sgprop; docs/e3.md).

Both learners take one batch of episodes and its normalised returns, set `.grad` of every
model parameter and return statistics; the task clips the norm and steps Adam. The loss is
`learners.reinforce.policy_loss` (REINFORCE + entropy bonus, mean over valid steps).

`BPTT`: autograd through the whole unrolled episode (SparseNet, GRU or LSTM).

`SGPropTime` (recurrent SparseNet only), by default the reference algorithm (the authors'
`exp-popgym/trainers.py`, docs/e3.md has the side-by-side proof). One forward pass over
the batch padded to the episode length (`horizon`: the steps after an episode's end read
its last observation until every episode has ended, zeros after), then backwards in
time, with d_t = ∂loss/∂h_t through the actor at step t only (0 at padded steps):
    g_t  = d_t + (∂h_{t+1}/∂h_t)^T g̃_{t+1}          (g at the last step = d: nothing after)
    g̃_t = λ_t g_t + (1 − λ_t) ĝ_t(x_t)               per neuron, `learners.feedback.mix`
    cell-parameter gradient = Σ_t (∂h_t/∂θ)^T g̃_t,   e_t gradient → the preprocessor
ĝ_t comes from the per-neuron SG as it was before this batch (zero-initialised), and is
mixed at every step, padded ones included. Units: g_t and ĝ_t are gradients of the mean
loss. Then, on the same predictions: (1) adaptive λ: the per-neuron MSE-optimal λ̂ of
`learners.feedback` from this batch's g_t and ĝ_t (each a unit vector per neuron, every
valid (t, b) a sample; moments of the cell's parameter blocks as in E2), λ ← EMA(λ, λ̂,
0.9), used from the next batch on (λ starts at 1.0; the rule decides, as in E2: a fixed λ
stays, and λ̂ is computed only for a rule that `needs_estimate`); (2) one SG Adam step (LR 1e-5,
gradient norm clipped to `sg_clip` = 0.5) on mean over valid (t, b) and (N, K) of
(ĝ_t − g̃_t)², the mixed gradient detached.

Temporal λ schedule (`schedule`), λ^(k) for k steps back:
- `children` (reference): from the last step of the padded buffer (t = horizon − 1,
  λ^(0) = λ) backwards, λ^(k)[i] = min(1, λ^(k−1)[i] + 0.1 · mean_{c ∈ children(i)}
  (1 − λ^(k−1)[c])) (a neuron without children keeps λ^(k−1)); the same for every episode.
- `parents` (ours, a deviation): counted from each episode's own last step, c^(0) = 0,
      c^(k)[i] = mean_{p ∈ parents(i)} [(1 − λ[p]) + λ[p] · c^(k−1)[p]],
      λ^(k)[i] = λ[i] + (1 − λ[i]) · c^(k)[i]
  (c^(k): the share of synthetic feedback the parents' mixed gradient has accumulated).
- `none`: λ at every step.
Both raise λ toward 1 at earlier steps; λ = 1 stays exactly 1.

Deviations (named options, docs/deviations.md): `padding="mask"` mixes no prediction at
padded steps (and does not pad); `units="per_sample"` has the SG learn n·g_t (n = valid
steps in the batch) and mix ĝ_t / n.

With λ = 1 every mix returns g_t itself, so sgprop's gradient is BPTT's up to the order
in which per-step contributions are summed (tests: equal to float64 round-off).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from learners.compared import BACKPROP, COMPARED
from learners.feedback import FeedbackRule, lambda_from_moments, mix
from learners.recurrent import Model, RecurrentShape, RecurrentSparseNet, SequenceTrace
from learners.reinforce import Batch, pad_steps, policy_loss
from learners.sgprop import local_errors, outer_moments, unit
from learners.sparsenet import LayerTrace

Lam = float | Tensor  # a fixed λ, or per (t, [b,] neuron): (T, B or 1, N, 1)


class BPTT:
    """Backprop through time: plain autograd of the REINFORCE loss."""

    def __init__(self, model: Model, entropy_coef: float) -> None:
        self.model = model
        self.entropy_coef = entropy_coef

    def gradients(self, batch: Batch, advantages: Tensor) -> tuple[list[Tensor], dict]:
        logits = self.model.logits(batch.obs)
        loss, stats = policy_loss(logits, batch.actions, advantages, batch.valid,
                                  self.entropy_coef)
        return list(torch.autograd.grad(loss, list(self.model.parameters()))), stats

    def backward(self, batch: Batch, advantages: Tensor) -> dict[str, Tensor]:
        grads, stats = self.gradients(batch, advantages)
        for p, g in zip(self.model.parameters(), grads, strict=True):
            p.grad = g
        return stats

    def rule_gradients(self, batch: Batch, advantages: Tensor) -> dict[str, list[Tensor]]:
        return {BACKPROP.key: self.gradients(batch, advantages)[0]}


class SyntheticGradientsTime(nn.Module):
    """Per-neuron ĝ(x_t) = Σ_m w_m(x_t) (G_m x_t + c_m), zero-initialised.

    x_t is the neuron's local input [parents' h_{t−1} ; e_t for input neurons]; w its own
    routing (detached). Like the cell, the e_t block exists only for input neurons.
    """

    def __init__(self, shape: RecurrentShape) -> None:
        super().__init__()
        n, m, k = shape.neurons, shape.slots, shape.dim
        self.input_neurons = shape.input_neurons
        self.g_p = nn.Parameter(torch.zeros(n, m, k, shape.parent_dim))
        self.g_e = nn.Parameter(torch.zeros(shape.input_neurons, m, k, shape.embed))
        self.c = nn.Parameter(torch.zeros(n, m, k))

    def predict(self, x: Tensor, embed: Tensor, routing: Tensor) -> Tensor:
        """x (..., N, P·K), embed (..., E), routing (..., N, M) → (..., N, K)."""
        per_slot = torch.einsum("...nd,nmkd->...nmk", x.detach(), self.g_p) + self.c
        ni = self.input_neurons
        per_slot_e = torch.einsum("...e,nmke->...nmk", embed.detach(), self.g_e)
        per_slot = torch.cat([per_slot[..., :ni, :, :] + per_slot_e,
                              per_slot[..., ni:, :, :]], -3)
        return (routing.detach().unsqueeze(-1) * per_slot).sum(-2)


SCHEDULE_RATE = 0.1  # the reference's step of the `children` schedule


def children_counts(wiring: Tensor) -> Tensor:
    """(N, N): [i, c] = how often neuron i is a parent of neuron c."""
    n = wiring.shape[0]
    counts = torch.zeros(n, n, dtype=torch.float64)
    child = torch.arange(n).unsqueeze(1).expand_as(wiring)
    counts.index_put_((wiring.reshape(-1), child.reshape(-1)),
                      torch.ones(wiring.numel(), dtype=torch.float64), accumulate=True)
    return counts


def temporal_schedule(lam: Tensor, wiring: Tensor, horizon: int, schedule: str) -> Tensor:
    """λ^(k) for k = 0 .. horizon−1 steps back (module doc): (horizon, N)."""
    if schedule == "none":
        return lam.expand(horizon, -1).clone()
    out = [lam]
    if schedule == "children":
        counts = children_counts(wiring).to(lam)
        totals = counts.sum(1).clamp(min=1.0)  # no children: a zero row, deficit 0
        for _ in range(1, horizon):
            deficit = counts.matmul(1.0 - out[-1]) / totals
            out.append((out[-1] + SCHEDULE_RATE * deficit).clamp(max=1.0))
        return torch.stack(out)
    share = torch.zeros_like(lam)
    for _ in range(1, horizon):
        share = ((1.0 - lam) + lam * share)[wiring].mean(-1)
        out.append(lam + (1.0 - lam) * share)
    return torch.stack(out)


def per_step_lambda(schedule: Tensor, valid: Tensor) -> Tensor:
    """Pick λ^(k) for every (t, b), k = steps from episode b's last valid step: (T, B, N, 1)."""
    horizon = valid.shape[0]
    lengths = valid.sum(0)
    k = (lengths.unsqueeze(0) - 1 - torch.arange(horizon).unsqueeze(1)).clamp(0, horizon - 1)
    return schedule[k].unsqueeze(-1)


def buffer_lambda(schedule: Tensor, steps: int) -> Tensor:
    """λ at t = 0 .. steps−1 with k counted back from the buffer's last step
    (t = horizon − 1), the same for every episode: (T, 1, N, 1)."""
    return schedule.flip(0)[:steps].unsqueeze(1).unsqueeze(-1)


@dataclass
class TimePropagation:
    realised: Tensor  # (T, B, N, K) g_t arriving at h_t
    mixed: Tensor  # (T, B, N, K) g̃_t, what flows on into the cell at t
    cell_grads: list[Tensor] | None  # `cell_parameters` order
    embed_grad: Tensor | None  # (T, B, E)


def propagate_time(model: RecurrentSparseNet, trace: SequenceTrace, direct: Tensor,
                   lam: Lam, predicted: Tensor | None, params: bool) -> TimePropagation:
    """λ-mixed propagation backwards in time; `predicted` in mean-loss units (None: BP)."""
    cell_params = model.cell_parameters()
    grads: list[Tensor] | None = [torch.zeros_like(p) for p in cell_params] if params else None
    embed_grads: list[Tensor] = []
    realised: list[Tensor] = []
    mixes: list[Tensor] = []
    carry = torch.zeros_like(direct[0])
    for t in reversed(range(len(trace.steps))):
        st = trace.steps[t]
        g = direct[t] + carry
        realised.append(g)
        if predicted is None:
            mixed = g
        else:
            mixed = mix(lam if isinstance(lam, float) else lam[t], g, predicted[t])
        mixes.append(mixed)
        wrt: list[Tensor] = list(cell_params) if params else []
        wrt.append(st.embed)
        if t > 0:
            wrt.append(st.prev)
        out = torch.autograd.grad(st.out, wrt, grad_outputs=mixed, retain_graph=True)
        if t > 0:
            carry, out = out[-1], out[:-1]
        embed_grads.append(out[-1])
        if grads is not None:
            for acc, gp in zip(grads, out[:-1], strict=True):
                acc += gp
    realised.reverse()
    mixes.reverse()
    embed_grads.reverse()
    return TimePropagation(torch.stack(realised), torch.stack(mixes), grads,
                           torch.stack(embed_grads) if params else None)


def feedback_norms(prop: TimePropagation, predicted: Tensor, valid: Tensor) -> dict[str, Tensor]:
    """Mean over valid (t, b) and neurons of ‖g_t‖, ‖ĝ_t‖ (mean-loss units), ‖g̃_t‖ per
    neuron, as the reference logs them (`true_grad_norm`, `pred_norm`, `mixed_grad_norm`)."""
    count = valid.sum().clamp(min=1) * predicted.shape[-2]

    def mean_norm(v: Tensor) -> Tensor:
        return (v.detach().norm(dim=-1) * valid[..., None]).sum() / count

    return {"true_grad_norm": mean_norm(prop.realised), "pred_norm": mean_norm(predicted),
            "mixed_grad_norm": mean_norm(prop.mixed)}


class SGPropTime:
    """sgprop through time on a recurrent SparseNet: per-neuron SG, mixed BPTT, adaptive λ.

    `horizon`: the padded buffer's length (the episode length; None: the batch's own
    length). `sg_clip`: the SG gradient-norm clip (None: none). `schedule`, `padding`,
    `units`: see the module doc.
    """

    def __init__(self, model: RecurrentSparseNet, rule: FeedbackRule, sg_lr: float,
                 entropy_coef: float, schedule: str = "children", *,
                 horizon: int | None = None, sg_clip: float | None = 0.5,
                 padding: str = "mix", units: str = "mean") -> None:
        if schedule not in ("children", "parents", "none"):
            raise ValueError(f"unknown λ schedule {schedule!r}")
        if padding not in ("mix", "mask") or units not in ("mean", "per_sample"):
            raise ValueError(f"unknown padding {padding!r} or SG units {units!r}")
        self.model = model
        self.rule = rule
        self.entropy_coef = entropy_coef
        self.schedule = schedule
        self.horizon = horizon
        self.sg_clip = sg_clip
        self.padding = padding
        self.units = units
        like = {"device": model.biases.device, "dtype": model.biases.dtype}
        self.sg = SyntheticGradientsTime(model.shape).to(**like)
        self.sg_optimizer = torch.optim.Adam(self.sg.parameters(), lr=sg_lr)
        self.lam = rule.initial_lambda((model.shape.neurons,), **like)

    # -- pieces -------------------------------------------------------------------------
    def prepare(self, batch: Batch, advantages: Tensor) -> tuple[Batch, Tensor]:
        """The batch as the learner unrolls it: padded to `horizon` where predictions are
        mixed at padded steps (with `padding="mask"` padding would change nothing)."""
        if self.padding == "mask" or self.horizon is None:
            return batch, advantages
        return batch.padded(self.horizon), pad_steps(advantages, self.horizon)

    def top(self, trace: SequenceTrace, batch: Batch, advantages: Tensor,
            ) -> tuple[list[Tensor], Tensor, dict]:
        """(actor gradients, d_t for every step (T, B, N, K), loss stats)."""
        loss, stats = policy_loss(trace.logits, batch.actions, advantages, batch.valid,
                                  self.entropy_coef)
        out = torch.autograd.grad(loss, [*self.model.actor_parameters(), trace.states])
        return list(out[:-1]), out[-1], stats

    def predictions(self, trace: SequenceTrace, grad: bool = False) -> Tensor:
        """The SG's outputs ĝ_t for every step, in its own units (T, B, N, K)."""
        with torch.set_grad_enabled(grad):
            return torch.stack([self.sg.predict(st.x, st.embed, st.routing)
                                for st in trace.steps])

    def scale(self, valid: Tensor) -> Tensor | float:
        """SG units per mean-loss unit: 1, or n (valid steps) for `units="per_sample"`."""
        if self.units == "mean":
            return 1.0
        return valid.sum().clamp(min=1).to(self.lam.dtype)

    def mixable(self, predictions: Tensor, valid: Tensor) -> Tensor:
        """Predictions in mean-loss units, as they enter the mixture; with `padding="mask"`
        zero after an episode's end."""
        out = predictions.detach() / self.scale(valid)
        if self.padding == "mask":
            out = out * valid[..., None, None]
        return out

    def step_lambda(self, valid: Tensor) -> Lam:
        """λ at every step of the batch: the temporal schedule of the current λ (1.0 for a
        rule that holds λ = 1)."""
        if self.rule.constant_lambda == 1.0:
            return 1.0
        steps = valid.shape[0]
        horizon = max(self.horizon or steps, steps)
        sched = temporal_schedule(self.lam, self.model.wiring, horizon, self.schedule)
        if self.schedule == "parents":
            return per_step_lambda(sched[:steps], valid)
        return buffer_lambda(sched, steps)

    def full_gradients(self, trace: SequenceTrace, prop: TimePropagation,
                       actor: list[Tensor]) -> list[Tensor]:
        """Every parameter's gradient in `model.parameters()` order."""
        pre_params = list(self.model.pre.parameters())
        pre = torch.autograd.grad(trace.embed, pre_params, grad_outputs=prop.embed_grad,
                                  retain_graph=True)
        by_param = dict(zip(pre_params, pre, strict=True))
        by_param.update(zip(self.model.cell_parameters(), prop.cell_grads, strict=True))
        by_param.update(zip(self.model.actor_parameters(), actor, strict=True))
        return [by_param[p] for p in self.model.parameters()]

    # -- one training step ----------------------------------------------------------------
    def backward(self, batch: Batch, advantages: Tensor) -> dict[str, Tensor]:
        """Policy gradients into `.grad`, λ's EMA, then the SG step (module doc)."""
        batch, advantages = self.prepare(batch, advantages)
        trace = self.model(batch.obs, cut=True)
        actor, direct, stats = self.top(trace, batch, advantages)
        lam = self.step_lambda(batch.valid)
        preds = mixable = None
        if self.rule.uses_predictor:
            preds = self.predictions(trace, grad=True)  # the SG before this batch's step
            mixable = self.mixable(preds, batch.valid)
        prop = propagate_time(self.model, trace, direct, lam, mixable, params=True)
        for p, g in zip(self.model.parameters(), self.full_gradients(trace, prop, actor),
                        strict=True):
            p.grad = g
        if preds is None or mixable is None:
            return stats
        estimate = (self.batch_lambda(trace, prop.realised, mixable, batch.valid)
                    if self.rule.needs_estimate else None)
        self.lam = self.rule.next_lambda(self.lam, estimate)
        stats.update(feedback_norms(prop, mixable, batch.valid))
        stats["sg_loss"] = self.update_synthetic(preds, prop.mixed, batch.valid)
        return stats

    def update_synthetic(self, preds: Tensor, mixed: Tensor, valid: Tensor) -> Tensor:
        """One SG Adam step on mean (ĝ_t − g̃_t)² over valid (t, b), neurons and dims, in
        the SG's units; `preds` carries a graph to the SG's parameters only."""
        mask = valid.to(preds.dtype)[..., None, None]
        count = mask.sum().clamp(min=1) * preds.shape[-1] * preds.shape[-2]
        target = mixed.detach() * self.scale(valid)
        loss = ((preds - target) ** 2 * mask).sum() / count
        self.sg_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.sg_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.sg.parameters(), self.sg_clip)
        self.sg_optimizer.step()
        return loss.detach()

    def batch_lambda(self, trace: SequenceTrace, realised: Tensor, predicted: Tensor,
                     valid: Tensor) -> Tensor:
        """This batch's MSE-optimal λ per neuron (N,), every valid (t, b) one sample.

        Each sample's contribution to neuron i's parameter gradient is e ⊗ x per block
        (routing keys, slot weights, slot biases; parent and e_t parts), with e the feedback
        pulled back through the cell (`learners.sgprop.local_errors`); moments summed.
        """
        s = self.model.shape
        sel = valid.reshape(-1)

        def pick(name: str) -> Tensor:
            v = torch.stack([getattr(st, name) for st in trace.steps]).detach()
            return v.flatten(0, 1)[sel].unsqueeze(0)  # (1, n, ...)

        x, embed, out = pick("x"), pick("embed"), pick("out")
        lt = LayerTrace(inputs=x, x=x, scores=pick("scores"), routing=pick("routing"),
                        pre=pick("pre"), act=pick("act"), mixed=out, out=out)
        w = unit(realised.flatten(0, 1)[sel].unsqueeze(0))
        u = unit(predicted.flatten(0, 1)[sel].unsqueeze(0)) - w
        d_scores, d_pre = local_errors(lt, 0, torch.stack([w, u]))
        (ew_s, eu_s) = d_scores / math.sqrt(s.input_dim)
        (ew_p, eu_p) = d_pre.flatten(-2)
        ni = s.input_neurons
        e_in = embed.unsqueeze(2).expand(-1, -1, ni, -1)
        blocks = [
            outer_moments(ew_s, eu_s, x),
            outer_moments(ew_p, eu_p, x),
            outer_moments(ew_p, eu_p, None),
        ]
        e_blocks = [outer_moments(ew_s[:, :, :ni], eu_s[:, :, :ni], e_in),
                    outer_moments(ew_p[:, :, :ni], eu_p[:, :, :ni], e_in)]
        moments = [sum(parts) for parts in zip(*blocks, strict=True)]
        for part in e_blocks:
            for i, m in enumerate(part):
                moments[i] = moments[i] + nn.functional.pad(m, (0, s.neurons - ni))
        # eps 1e-12: the reference's threshold on Var + bias² (unit-normalised feedback).
        return lambda_from_moments(*moments, batch=int(sel.sum()),
                                   previous=self.lam.unsqueeze(0), eps=1e-12).squeeze(0)


    def rule_gradients(self, batch: Batch, advantages: Tensor) -> dict[str, list[Tensor]]:
        """Each `learners.compared` setting's gradient estimate: BPTT (λ=1), the current
        mixture and pure SG (λ=0)."""
        batch, advantages = self.prepare(batch, advantages)
        trace = self.model(batch.obs, cut=True)
        actor, direct, _ = self.top(trace, batch, advantages)
        predicted = self.mixable(self.predictions(trace), batch.valid)
        current = self.step_lambda(batch.valid)
        return {setting.key: self.full_gradients(
                    trace, propagate_time(self.model, trace, direct,
                                          setting.lambda_given(current), predicted, True),
                    actor)
                for setting in COMPARED}

    def lambda_stats(self) -> dict[str, Tensor]:
        q = torch.quantile(self.lam, torch.tensor([0.25, 0.75], dtype=self.lam.dtype))
        return {"lambda_mean": self.lam.mean(), "lambda_min": self.lam.min(),
                "lambda_max": self.lam.max(), "lambda_p25": q[0], "lambda_p75": q[1]}
