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

Computation (docs/performance.md, E3): both learners run the SparseNet's fast path of
learners/recurrent.py (`Tape`, `RecurrentSparseNet.reverse`); sgprop passes its mixing to
that backward loop and accumulates the λ moments inside it (`LambdaMoments`), and the SG
predicts every (t, b) at once. Sequence tensors are neuron-major with time and batch last:
g_t, ĝ_t, g̃_t are (N, K, T, B).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from learners.compared import BACKPROP, COMPARED
from learners.feedback import FeedbackRule, lambda_from_moments, mix
from learners.recurrent import Model, RecurrentShape, RecurrentSparseNet, Tape, slot_backward
from learners.reinforce import Batch, pad_steps, policy_loss

Lam = float | Tensor  # a fixed λ, or per (t, [b,] neuron): (T, B or 1, N, 1)


class BPTT:
    """Backprop through time: plain autograd of the REINFORCE loss."""

    def __init__(self, model: Model, entropy_coef: float) -> None:
        self.model = model
        self.entropy_coef = entropy_coef

    def gradients(self, batch: Batch, advantages: Tensor) -> tuple[list[Tensor], dict]:
        logits = self.model.logits(batch.obs, batch.recording)
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
        """Every sample at once, neuron-major (`learners.recurrent.Tape.sequence`):
        x (N, P·K, S), embed (S, E), routing (N, M, S) → (N, K, S)."""
        n, m, k, dp = self.g_p.shape
        ni, samples = self.input_neurons, x.shape[-1]
        per_slot = torch.baddbmm(self.c.reshape(n, m * k, 1), self.g_p.reshape(n, m * k, dp),
                                 x.detach())
        per_slot[:ni] += torch.mm(self.g_e.reshape(ni * m * k, -1),
                                  embed.detach().t()).view(ni, m * k, samples)
        return (routing.detach().unsqueeze(2) * per_slot.view(n, m, k, samples)).sum(1)


SCHEDULE_RATE = 0.1  # the reference's step of the `children` schedule


def children_counts(wiring: Tensor) -> Tensor:
    """(N, N): [i, c] = how often neuron i is a parent of neuron c."""
    n = wiring.shape[0]
    wiring = wiring.cpu()  # small; counted on the CPU, where index_put_ is deterministic
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
    steps = torch.arange(horizon, device=valid.device).unsqueeze(1)
    k = (lengths.unsqueeze(0) - 1 - steps).clamp(0, horizon - 1)
    return schedule[k].unsqueeze(-1)


def buffer_lambda(schedule: Tensor, steps: int) -> Tensor:
    """λ at t = 0 .. steps−1 with k counted back from the buffer's last step
    (t = horizon − 1), the same for every episode: (T, 1, N, 1)."""
    return schedule.flip(0)[:steps].unsqueeze(1).unsqueeze(-1)


@dataclass
class TimePropagation:
    realised: Tensor  # (N, K, T, B) g_t arriving at h_t
    mixed: Tensor  # (N, K, T, B) g̃_t, what flows on into the cell at t
    cell: tuple[Tensor, Tensor, Tensor]  # g̃ pulled back to the Tape's weights, bias, drive


def neuron_major_lambda(lam: Tensor) -> Tensor:
    """λ per (t, [b,] neuron) as the schedules give it, (T, B or 1, N, 1) → (N, 1, T, B or 1)."""
    return lam.permute(2, 3, 0, 1)


def propagate_time(model: RecurrentSparseNet, tape: Tape, direct: Tensor, lam: Lam,
                   predicted: Tensor | None,
                   observe: Callable[[int, Tensor, Tensor], None] | None = None,
                   ) -> TimePropagation:
    """λ-mixed propagation backwards in time (`RecurrentSparseNet.reverse`, which passes
    each step to `observe`); direct and predicted (N, K, T, B), `predicted` in mean-loss
    units (None: BP)."""
    mixer = None
    if predicted is not None:
        if isinstance(lam, float):
            def mixer(t: int, g: Tensor) -> Tensor:
                return mix(lam, g, predicted[:, :, t])
        else:
            per_step = neuron_major_lambda(lam)

            def mixer(t: int, g: Tensor) -> Tensor:
                return mix(per_step[:, :, t], g, predicted[:, :, t])
    cell, realised, mixed = model.reverse(tape, direct, mixer, observe)
    return TimePropagation(torch.stack(realised, 2), torch.stack(mixed, 2), cell)


def feedback_norms(prop: TimePropagation, predicted: Tensor, valid: Tensor) -> dict[str, Tensor]:
    """Mean over valid (t, b) and neurons of ‖g_t‖, ‖ĝ_t‖ (mean-loss units), ‖g̃_t‖ per
    neuron, as the reference logs them (`true_grad_norm`, `pred_norm`, `mixed_grad_norm`)."""
    count = valid.sum().clamp(min=1) * predicted.shape[0]

    def mean_norm(v: Tensor) -> Tensor:
        return (norm_over(v.detach(), 1) * valid).sum() / count

    return {"true_grad_norm": mean_norm(prop.realised), "pred_norm": mean_norm(predicted),
            "mixed_grad_norm": mean_norm(prop.mixed)}


def norm_over(v: Tensor, dim: int, keepdim: bool = False) -> Tensor:
    """‖v‖ along a dim that is not the last (`Tensor.norm` reads such a dim slowly)."""
    return (v * v).sum(dim, keepdim=keepdim).sqrt()


def unit_over(v: Tensor, dim: int) -> Tensor:
    """v / ‖v‖ along `dim`; zero vectors stay zero (`learners.sgprop.unit` along any dim)."""
    return v / norm_over(v, dim, keepdim=True).clamp(min=1e-12)


class LambdaMoments:
    """The four moments of `lambda_from_moments` per neuron, summed step by step.

    Each valid (t, b) is one sample. Its contribution to neuron i's parameter gradient is
    e ⊗ input per block (routing keys and slot weights on the parents' states, slot biases,
    and for input neurons keys and weights on e_t), e the feedback (a unit vector per
    neuron) pulled back through the cell (`slot_backward`, which folds the keys' 1/√D
    in), for the realised feedback w = unit(g_t) and the difference u = unit(ĝ_t) − w.
    No contribution is formed: ‖e ⊗ a‖² = ‖e‖²‖a‖², and Σ_b e_b ⊗ a_b is one small GEMM per
    step (inside the propagation, where the step's tensors are in cache). Invalid samples
    have their feedback zeroed (the local errors are linear in it), so sums run over the
    valid ones.
    """

    def __init__(self, model: RecurrentSparseNet, tape: Tape, predicted: Tensor,
                 valid: Tensor) -> None:
        s = model.shape
        self.model, self.tape, self.predicted = model, tape, predicted
        self.mask = valid.to(predicted.dtype)  # (T, B)
        self.count = int(valid.sum())
        n, q = s.neurons, s.slots * (1 + s.dim)
        like = predicted.new_zeros
        self.per_sample = like(2, n)  # Σ_b ⟨eu, ew⟩‖a‖², Σ_b ‖eu‖²‖a‖² over the blocks
        self.sum_x = like(n, 2 * q, s.parent_dim)  # Σ_b [ew ; eu] ⊗ x_b
        self.sum_bias = like(n, 2, s.slots * s.dim)  # Σ_b [ew ; eu] (slot rows)
        self.sum_e = like(s.input_neurons * 2 * q, s.embed)  # Σ_b [ew ; eu] ⊗ e_b
        self.bias_rows = like(q, 1)  # 1 on the rows of Q that have a slot bias
        self.bias_rows[s.slots:] = 1.0

    def add(self, t: int, realised: Tensor, slopes: Tensor) -> None:
        """Step t: g_t (N, K, B) and the step's slopes (N, M, K, B)."""
        s, tape = self.model.shape, self.tape
        ni, m = s.input_neurons, s.slots
        # [w ; u] per neuron (N, 2, K, B): unit feedbacks, masked, u = unit(ĝ) − w.
        feedback = unit_over(torch.stack([realised, self.predicted[:, :, t]], 1), 2)
        feedback.mul_(self.mask[t])
        feedback[:, 1] -= feedback[:, 0]
        # (N, 2, Q, B): both pulled back through the cell, side by side for one GEMM.
        e = slot_backward(slopes.unsqueeze(1), tape.routing[t].unsqueeze(1),
                          tape.act[t].unsqueeze(1), feedback, self.model.scale)
        x = tape.x[t]
        embed = tape.embed[t].detach()  # (B, E)
        # Each sample's squared input norm per row of Q: ‖x‖² (+ ‖e_t‖² for input neurons)
        # on the key and weight rows, + 1 on the slot-weight rows for the slot biases.
        inputs = (x * x).sum(1)  # (N, B)
        inputs[:ni] += (embed * embed).sum(-1)
        weighted_u = e[:, 1:] * (inputs.unsqueeze(1) + self.bias_rows).unsqueeze(1)
        self.per_sample += (e * weighted_u).sum((2, 3)).t()  # [⟨w, u⟩ ; ⟨u, u⟩] sums
        flat = e.flatten(1, 2)  # (N, 2Q, B)
        self.sum_x.baddbmm_(flat, x.transpose(1, 2))
        self.sum_bias += e[:, :, m:].sum(-1)
        self.sum_e.addmm_(flat[:ni].flatten(0, 1), embed)

    def estimate(self, previous: Tensor) -> Tensor:
        """λ̂ per neuron (N,), `previous` where the moments cannot decide."""
        s = self.model.shape
        q, ni = s.slots * (1 + s.dim), s.input_neurons
        n = max(self.count, 1)
        sw_x, su_x = self.sum_x[:, :q], self.sum_x[:, q:]
        sw_b, su_b = self.sum_bias[:, 0], self.sum_bias[:, 1]
        sum_e = self.sum_e.view(ni, 2, q, s.embed)
        sw_e, su_e = sum_e[:, 0], sum_e[:, 1]

        def dot(a_x: Tensor, a_b: Tensor, a_e: Tensor) -> Tensor:  # ⟨Σ a, Σ u⟩ over blocks
            out = (a_x * su_x).sum((1, 2)) + (a_b * su_b).sum(1)
            return out + nn.functional.pad((a_e * su_e).sum((1, 2)), (0, s.neurons - ni))

        wu, uu = self.per_sample
        # eps 1e-12: the reference's threshold on Var + bias² (unit-normalised feedback).
        return lambda_from_moments(uu / n, dot(su_x, su_b, su_e) / n**2, wu / n,
                                   dot(sw_x, sw_b, sw_e) / n**2, batch=self.count,
                                   previous=previous, eps=1e-12)


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

    def top(self, tape: Tape, batch: Batch, advantages: Tensor,
            ) -> tuple[list[Tensor], Tensor, dict]:
        """(actor gradients, d_t for every step (N, K, T, B), loss stats)."""
        states = tape.states.detach().requires_grad_(True)
        logits = self.model.actor(self.model.flat_states(states))
        loss, stats = policy_loss(logits, batch.actions, advantages, batch.valid,
                                  self.entropy_coef)
        out = torch.autograd.grad(loss, [*self.model.actor_parameters(), states])
        return list(out[:-1]), out[-1].permute(1, 2, 0, 3), stats

    def predictions(self, tape: Tape, grad: bool = False) -> Tensor:
        """The SG's outputs ĝ_t for every step, in its own units (N, K, T, B)."""
        with torch.set_grad_enabled(grad):
            out = self.sg.predict(tape.sequence("x"), tape.embed.reshape(-1, tape.embed.shape[-1]),
                                  tape.sequence("routing"))
        return out.unflatten(-1, tape.states.shape[::3])

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
            out = out * valid
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

    def full_gradients(self, tape: Tape, prop: TimePropagation,
                       actor: list[Tensor]) -> list[Tensor]:
        """Every parameter's gradient in `model.parameters()` order: the cell's and the
        preprocessor's through the fused parameters and e_t terms of `tape`."""
        inner = [*self.model.pre.parameters(), *self.model.cell_parameters()]
        grads = torch.autograd.grad([tape.weights, tape.bias, tape.drive], inner,
                                    grad_outputs=prop.cell,
                                    retain_graph=True)
        by_param = dict(zip(inner, grads, strict=True))
        by_param.update(zip(self.model.actor_parameters(), actor, strict=True))
        return [by_param[p] for p in self.model.parameters()]

    # -- one training step ----------------------------------------------------------------
    def backward(self, batch: Batch, advantages: Tensor) -> dict[str, Tensor]:
        """Policy gradients into `.grad`, λ's EMA, then the SG step (module doc)."""
        batch, advantages = self.prepare(batch, advantages)
        tape = self.model.tape(batch.obs, batch.recording)
        actor, direct, stats = self.top(tape, batch, advantages)
        lam = self.step_lambda(batch.valid)
        preds = mixable = None
        if self.rule.uses_predictor:
            preds = self.predictions(tape, grad=True)  # the SG before this batch's step
            mixable = self.mixable(preds, batch.valid)
        moments = (LambdaMoments(self.model, tape, mixable, batch.valid)
                   if mixable is not None and self.rule.needs_estimate else None)
        prop = propagate_time(self.model, tape, direct, lam, mixable,
                              moments.add if moments is not None else None)
        for p, g in zip(self.model.parameters(), self.full_gradients(tape, prop, actor),
                        strict=True):
            p.grad = g
        if preds is None or mixable is None:
            return stats
        estimate = moments.estimate(self.lam) if moments is not None else None
        self.lam = self.rule.next_lambda(self.lam, estimate)
        stats.update(feedback_norms(prop, mixable, batch.valid))
        stats["sg_loss"] = self.update_synthetic(preds, prop.mixed, batch.valid)
        return stats

    def update_synthetic(self, preds: Tensor, mixed: Tensor, valid: Tensor) -> Tensor:
        """One SG Adam step on mean (ĝ_t − g̃_t)² over valid (t, b), neurons and dims, in
        the SG's units; `preds` (N, K, T, B) carries a graph to the SG's parameters only."""
        mask = valid.to(preds.dtype)
        count = mask.sum().clamp(min=1) * preds.shape[0] * preds.shape[1]
        target = mixed.detach() * self.scale(valid)
        loss = ((preds - target) ** 2 * mask).sum() / count
        self.sg_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.sg_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.sg.parameters(), self.sg_clip)
        self.sg_optimizer.step()
        return loss.detach()

    def batch_lambda(self, tape: Tape, realised: Tensor, predicted: Tensor,
                     valid: Tensor) -> Tensor:
        """This batch's MSE-optimal λ per neuron (N,), every valid (t, b) one sample, from
        g_t and ĝ_t (N, K, T, B): `LambdaMoments` step by step, as `backward` runs it
        inside the propagation."""
        moments = LambdaMoments(self.model, tape, predicted, valid)
        for t in range(tape.steps):
            moments.add(t, realised[:, :, t], self.model.slopes(tape, t))
        return moments.estimate(self.lam)

    def rule_gradients(self, batch: Batch, advantages: Tensor) -> dict[str, list[Tensor]]:
        """Each `learners.compared` setting's gradient estimate: BPTT (λ=1), the current
        mixture and pure SG (λ=0)."""
        batch, advantages = self.prepare(batch, advantages)
        tape = self.model.tape(batch.obs, batch.recording)
        actor, direct, _ = self.top(tape, batch, advantages)
        predicted = self.mixable(self.predictions(tape), batch.valid)
        current = self.step_lambda(batch.valid)
        return {setting.key: self.full_gradients(
                    tape, propagate_time(self.model, tape, direct,
                                         setting.lambda_given(current), predicted),
                    actor)
                for setting in COMPARED}

    def lambda_stats(self) -> dict[str, Tensor]:
        q = torch.quantile(self.lam, torch.tensor([0.25, 0.75], dtype=self.lam.dtype,
                                                 device=self.lam.device))
        return {"lambda_mean": self.lam.mean(), "lambda_min": self.lam.min(),
                "lambda_max": self.lam.max(), "lambda_p25": q[0], "lambda_p75": q[1]}
