"""Policy-gradient learners for the bandit: backprop and sgprop (λ-mixed propagation).

Objective: REINFORCE without baseline, loss = −mean_b r_b log π(a_b|x_b) per seed (seeds are
summed, which leaves each seed's gradient its own).

Every default below is what the authors' code (`exp-mnist-bandit/`) computes; the
`sg_init`, `sg_units` and `normalise` options name our deviations (docs/deviations.md).

Units: `g_l` below is the gradient of the *batch-mean* loss w.r.t. h_l (what backprop
delivers). By default (`sg_units="mean"`, the reference) the synthetic-gradient predictor
regresses g_l itself and enters the mixture as predicted. `sg_units="sample"` regresses
the per-sample feedback B·g_l (targets that do not shrink with the batch size) and mixes
ĝ_l / B. The predictor's G and c start N(0, 1/D_l) (`sg_init="normal"`, the reference)
or at zero (`sg_init="zero"`: mixtures then start at λ·g).

sgprop, per training step, on one batch and one forward pass:
1. SG update. Targets by the bootstrapped recursion, top-down with the current predictor:
   t_L = g_L,  t_{l−1} = (∂h_l/∂h_{l−1})^T [λ_l t_l + (1−λ_l) ĝ_l]; one Adam step on
   Σ_l mean (ĝ_l(x_l) − t_l)² (targets detached).
2. Policy update with the just-updated predictor:
   g̃_l = λ_l g_l + (1−λ_l) ĝ_l,  θ_l-gradient = (∂h_l/∂θ_l)^T g̃_l,
   g_{l−1} = (∂h_l/∂h_{l−1})^T g̃_l (the mixed gradient flows on).
3. Adaptive λ: from this batch's g_l and ĝ_l — taken through the residual's tanh to the
   neuron's slot mixture first, then normalised to a unit vector per sample and neuron
   (`normalise`, the reference's order) — the per-neuron MSE-optimal λ of
   `learners.feedback`, computed from outer-product moments, never materialising the
   (B, N, P) per-sample parameter gradients; then λ ← EMA(λ, λ̂, momentum). The new λ is
   used from the next step on, so a batch never chooses its own mixing weight. (The rule
   decides: `learners.feedback.FeedbackRule` — a fixed λ keeps its λ, and only a rule that
   `needs_estimate` has λ̂ computed at all.)

λ = 1 reproduces backprop's parameter gradients bit for bit (`mix` returns g itself);
λ = 0 makes every hidden layer learn from its own local prediction ĝ_l(x_l) only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from learners.compared import BACKPROP, COMPARED
from learners.feedback import FeedbackRule, lambda_from_moments, mix
from learners.sparsenet import (
    MLP,
    LayerState,
    LayerTrace,
    SparseNet,
    SparseNetShape,
    Trace,
    mix_slots,
    per_seed,
    seed_einsum,
    slot_feedback,
)

Model = SparseNet | MLP
Lam = float | Tensor  # a fixed λ, or per neuron (S, N)


@dataclass
class Logits:
    """The forward pass of a model without hidden-layer structure (the MLP)."""

    logits: Tensor


def reinforce_loss(logits: Tensor, actions: Tensor, rewards: Tensor) -> Tensor:
    """Σ_s −mean_b r log π(a|x); logits (S, B, A), actions and rewards (S, B)."""
    logp = torch.log_softmax(logits, dim=-1).gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    return -(rewards * logp).mean(1).sum()


def parameters_of(model: Model) -> list[nn.Parameter]:
    """The model's parameters in `layer_parameters` order (layer l0 .. head)."""
    return [p for _, group in model.layer_parameters() for p in group]


SG_INITS = ("normal", "zero")
SG_UNITS = ("mean", "sample")


class SyntheticGradients(nn.Module):
    """Per-neuron SG predictors ĝ(x) = Σ_m w_m(x) (G_m x + c_m) for every SparseNet layer.

    w is the neuron's own routing (detached: the SG optimiser does not train it) and x its
    local input: no label, no reward. `init="normal"` draws G and c from N(0, 1/D_l), one
    seed at a time from that seed's generator (the reference code's init); `"zero"` starts
    every prediction at 0.
    """

    def __init__(self, shape: SparseNetShape, generators: Sequence[torch.Generator],
                 init: str = "normal") -> None:
        super().__init__()
        if init not in SG_INITS:
            raise ValueError(f"unknown SG init {init!r}; expected one of {SG_INITS}")
        self.layers = shape.layers
        n, m, k = shape.width, shape.slots, shape.dim
        draws: list[list[tuple[Tensor, Tensor]]] = []
        for gen in generators:
            per_layer = []
            for layer in range(shape.layers):
                d = shape.input_dim(layer)
                if init == "zero":
                    per_layer.append((torch.zeros(n, m, k, d), torch.zeros(n, m, k)))
                else:
                    std = 1.0 / math.sqrt(d)
                    per_layer.append((torch.randn(n, m, k, d, generator=gen) * std,
                                      torch.randn(n, m, k, generator=gen) * std))
            draws.append(per_layer)
        for layer in range(shape.layers):
            setattr(self, f"G{layer}", nn.Parameter(torch.stack([s[layer][0] for s in draws])))
            setattr(self, f"c{layer}", nn.Parameter(torch.stack([s[layer][1] for s in draws])))

    def predict(self, layer: int, state: LayerState) -> Tensor:
        """Predicted feedback for h_l (in the predictor's units): (S, N, K, B)."""
        maps, offsets = (getattr(self, f"{p}{layer}").detach() for p in ("G", "c"))
        # Every slot's linear map at once (one bmm over neurons, like the layer's own),
        # the routing-weighted sum, then Σ_m w_m c_m as a small bmm over the M slots.
        per_slot = per_seed(torch.bmm, maps.flatten(2, 3), state.x)
        mixed = mix_slots(state.routing, per_slot.unflatten(2, maps.shape[2:4]))
        return mixed + per_seed(torch.bmm, offsets.transpose(2, 3), state.routing)

    def predict_backward(self, layer: int, state: LayerState, d_pred: Tensor) -> list[Tensor]:
        """Gradients [∂G_l, ∂c_l] of ⟨d_pred, predict(layer, state)⟩ (the routing is fixed:
        the SG optimiser does not train it)."""
        d_slots = state.routing.unsqueeze(3) * d_pred.unsqueeze(2)  # (S, N, M, K, B)
        d_maps = per_seed(torch.bmm, d_slots.flatten(2, 3), state.x.transpose(2, 3))
        d_offsets = per_seed(torch.bmm, state.routing, d_pred.transpose(2, 3))  # (S, N, M, K)
        return [d_maps.unflatten(2, d_slots.shape[2:4]), d_offsets]


@dataclass
class Propagation:
    realised: list[Tensor]  # g_l arriving at layer l (mean-loss units), bottom-up order
    grads: list[Tensor] = field(default_factory=list)  # per parameter, `parameters_of` order


def propagate(
    model: SparseNet,
    trace: Trace,
    top_grad: Tensor,
    lams: Sequence[Lam],
    predicted: Sequence[Tensor | None],
    params: bool,
) -> Propagation:
    """Top-down λ-mixed propagation; `predicted[l]` in mean-loss units (None: pure BP).

    Feedback tensors are (S, N, K, B), the layout `SparseNet.layer_backward` works in. With
    `params`, also the hidden layers' parameter gradients (the head's comes from the loss
    directly and is not included).
    """
    states = trace.states
    realised: list[Tensor] = [top_grad] * len(states)
    grads: list[list[Tensor]] = [[] for _ in states]
    g = top_grad
    for layer in reversed(range(len(states))):
        realised[layer] = g
        if not params and layer == 0:
            break
        mixed = g if predicted[layer] is None else mix(lams[layer], g, predicted[layer])
        grads[layer], d_inputs = model.layer_backward(states[layer], mixed, params=params,
                                                      inputs=layer > 0)
        if d_inputs is not None:
            g = d_inputs
    return Propagation(realised, [t for group in grads for t in group])


def logit_feedback(logits: Tensor, actions: Tensor, rewards: Tensor) -> Tensor:
    """∂ REINFORCE loss / ∂ logits, (S, B, A) (autograd on the logits alone: tiny)."""
    leaf = logits.detach().requires_grad_(True)
    (d_logits,) = torch.autograd.grad(reinforce_loss(leaf, actions, rewards), leaf)
    return d_logits


def unit(v: Tensor) -> Tensor:
    """v / ‖v‖ over the last dim; zero vectors stay zero."""
    return v / v.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def unit_features(v: Tensor) -> Tensor:
    """`unit` over the features of a (S, N, K, B) tensor: √Σ_k v_k², summed one feature at
    a time along B (torch's vector_norm over an inner dim of 10 is several times slower)."""
    return v / (v * v).sum(2, keepdim=True).sqrt_().clamp_(min=1e-12)


def outer_moments(ew: Tensor, eu: Tensor, x: Tensor | None) -> tuple[Tensor, ...]:
    """The four λ moments per (S, N) of per-sample contributions e_b ⊗ x_b.

    ew, eu: (S, B, N, Q) local errors of the BP and difference feedbacks; x: (S, B, N, D),
    or None for a bias (x = 1).
    """
    batch = ew.shape[1]
    if x is None:
        u_sq = (eu * eu).sum(-1).mean(1)
        wu = (ew * eu).sum(-1).mean(1)
        u_bar = eu.mean(1)
        w_bar = ew.mean(1)
    else:
        x_sq = (x * x).sum(-1)
        u_sq = ((eu * eu).sum(-1) * x_sq).mean(1)
        wu = ((ew * eu).sum(-1) * x_sq).mean(1)
        u_bar = seed_einsum("sbnq,sbnd->snqd", eu, x).flatten(-2) / batch
        w_bar = seed_einsum("sbnq,sbnd->snqd", ew, x).flatten(-2) / batch
    return u_sq, (u_bar * u_bar).sum(-1), wu, (w_bar * u_bar).sum(-1)


def through_residual(lt: LayerTrace, layer: int, feedback: Tensor) -> Tensor:
    """Feedback on h_l → feedback on the slot mixture (× (1 − tanh²) for l ≥ 1)."""
    if layer == 0:
        return feedback
    return feedback * (1.0 - torch.tanh(lt.mixed.detach()) ** 2)


def local_errors(lt: LayerTrace, layer: int, feedback: Tensor) -> tuple[Tensor, Tensor]:
    """Pull feedback on h_l (..., S, B, N, K) back to (scores, pre) of the same neuron.

    The closed form of the layer's own backward pass (leading dims broadcast, so several
    feedbacks go through at once); tests check it against autograd.
    """
    return slot_errors(lt, through_residual(lt, layer, feedback))


def slot_errors(lt: LayerTrace, d_mixed: Tensor) -> tuple[Tensor, Tensor]:
    """Feedback on the slot mixture (..., S, B, N, K) → (scores, pre) of the same neuron."""
    routing, act = lt.routing.detach(), lt.act.detach()
    d_pre = d_mixed.unsqueeze(-2) * routing.unsqueeze(-1) * (1.0 - act * act)
    d_routing = (d_mixed.unsqueeze(-2) * act).sum(-1)
    d_scores = routing * (d_routing - (routing * d_routing).sum(-1, keepdim=True))
    return d_scores, d_pre


def layer_lambda(state: LayerState, realised: Tensor, predicted: Tensor, previous: Tensor,
                 normalise: bool = True) -> Tensor:
    """The batch's MSE-optimal λ per neuron (S, N) for one SparseNet layer.

    Each sample's parameter-gradient contribution to neuron n has three blocks: routing
    keys e^K_b ⊗ x_b, slot weights e^A_b ⊗ x_b and slot biases e^A_b, with e^A = d ⊗ s
    (d the feedback on the slot mixture, s_mk = w_m (1 − tanh²) the slot slopes) and e^K
    the feedback pulled back to the routing scores. The four moments of
    `lambda_from_moments` are summed over the blocks without forming any contribution:
    ‖e^A_b ⊗ x_b‖² + ‖e^A_b‖² = (Σ_k d_k² Σ_m s_mk²)(‖x_b‖² + 1), and the batch sums
    Σ_b e_b ⊗ x_b of both feedbacks come from one bmm over neurons (the layer's own
    backward rows, `slot_feedback`, against x). With `normalise`, both feedbacks are taken
    through the residual's tanh first and then made unit vectors per sample and neuron
    (the reference code's order). Feedback tensors (S, N, K, B). Tests check it against
    materialised per-sample gradients.
    """
    shrink = state.residual_slope()
    w = realised if shrink is None else realised * shrink
    p = predicted if shrink is None else predicted * shrink
    if normalise:
        w, p = unit_features(w), unit_features(p)
    u = p - w
    seeds, neurons, rows, batch = *state.maps.shape[:3], w.shape[3]
    m = state.routing.shape[2]
    errors = w.new_empty(seeds, neurons, 2, rows, batch)  # w's rows, then u's
    slot_feedback(state, w, errors[:, :, 0])
    slot_feedback(state, u, errors[:, :, 1])
    x_sq = (state.x * state.x).sum(2)  # (S, N, B)
    slope_sq = (state.slope * state.slope).sum(2)  # (S, N, K, B)
    keys_w, keys_u = errors[:, :, 0, :m], errors[:, :, 1, :m]
    u_sq = (u * u * slope_sq).sum(2) * (x_sq + 1.0) + (keys_u * keys_u).sum(2) * x_sq
    wu = (w * u * slope_sq).sum(2) * (x_sq + 1.0) + (keys_w * keys_u).sum(2) * x_sq
    # Batch sums per block: keys and slot weights Σ_b e_b x_bᵀ (one bmm), slot biases Σ_b e_b.
    products = per_seed(torch.bmm, errors.view(seeds, neurons, 2 * rows, batch),
                        state.x.transpose(2, 3)).view(seeds, neurons, 2, -1)
    biases = errors[:, :, :, m:].sum(-1)  # (S, N, 2, M·K)
    u_mean_sq = ((products[:, :, 1] ** 2).sum(-1) + (biases[:, :, 1] ** 2).sum(-1)) / batch**2
    w_mean_u_mean = ((products[:, :, 0] * products[:, :, 1]).sum(-1)
                     + (biases[:, :, 0] * biases[:, :, 1]).sum(-1)) / batch**2
    return lambda_from_moments(u_sq.mean(-1), u_mean_sq, wu.mean(-1), w_mean_u_mean,
                               batch=batch, previous=previous)


def feedback_norms(realised: Sequence[Tensor], predicted: Sequence[Tensor | None],
                   ) -> dict[str, Tensor]:
    """Per layer, ‖g_l‖ and ‖ĝ_l‖ over the whole batch (mean-loss units), per seed (S,).

    The same quantities the reference code logs at its evaluation steps.
    """
    norms: dict[str, Tensor] = {}
    for layer, (g, p) in enumerate(zip(realised, predicted, strict=True)):
        norms[f"feedback_norm/bp/l{layer}"] = g.detach().flatten(1).norm(dim=1)
        if p is not None:
            norms[f"feedback_norm/sg/l{layer}"] = p.flatten(1).norm(dim=1)
    return norms


def policy_top(model: SparseNet, trace: Trace, actions: Tensor, rewards: Tensor,
               ) -> tuple[Tensor, Tensor]:
    """(head gradient, g_L (S, N, K, B)) of the REINFORCE loss."""
    return model.readout_backward(trace.top, logit_feedback(trace.logits, actions, rewards))


class Backprop:
    """Backprop through the whole network: the SparseNet's written-out backward pass
    (`propagate` with no prediction), autograd for the MLP."""

    def __init__(self, model: Model) -> None:
        self.model = model

    def forward(self, images: Tensor) -> Trace | Logits:
        if isinstance(self.model, SparseNet):
            return self.model(images, by_hand=True)
        return Logits(self.model.logits(images))

    def gradients(self, trace: Trace | Logits, actions: Tensor, rewards: Tensor,
                  ) -> list[Tensor]:
        """The loss gradient of every parameter, `parameters_of` order."""
        if isinstance(trace, Trace):
            assert isinstance(self.model, SparseNet)
            head, top = policy_top(self.model, trace, actions, rewards)
            layers = len(trace.states)
            hidden = propagate(self.model, trace, top, [1.0] * layers, [None] * layers,
                               params=True).grads
            return [*hidden, head]
        loss = reinforce_loss(trace.logits, actions, rewards)
        return list(torch.autograd.grad(loss, parameters_of(self.model)))

    def backward(self, trace: Trace | Logits, actions: Tensor, rewards: Tensor,
                 ) -> dict[str, Tensor]:
        """Set .grad of every model parameter; returns per-seed statistics."""
        grads = self.gradients(trace, actions, rewards)
        for p, g in zip(parameters_of(self.model), grads, strict=True):
            p.grad = g
        return {}

    def rule_gradients(self, images: Tensor, actions: Tensor, rewards: Tensor,
                       ) -> dict[str, list[Tensor]]:
        """Per-parameter gradient estimates of each rule this learner can form."""
        return {BACKPROP.key: self.gradients(self.forward(images), actions, rewards)}


class SGProp:
    """sgprop on a SparseNet with per-neuron SG predictors and fixed or adaptive λ."""

    def __init__(self, model: SparseNet, rule: FeedbackRule, sg_lr: float,
                 generators: Sequence[torch.Generator], normalise: bool = True,
                 sg_init: str = "normal", sg_units: str = "mean") -> None:
        """`generators`: one per seed, for the SG predictor's init (see SyntheticGradients)."""
        if sg_units not in SG_UNITS:
            raise ValueError(f"unknown SG units {sg_units!r}; expected one of {SG_UNITS}")
        self.model = model
        self.rule = rule
        self.normalise = normalise
        self.sg_units = sg_units
        shape = model.shape
        self.sg = SyntheticGradients(shape, generators, sg_init).to(model.head.device)
        self.norms: dict[str, Tensor] = {}
        # fused: one pass over the parameters, bit-identical to the default loop on CPU
        self.sg_optimizer = torch.optim.Adam(self.sg.parameters(), lr=sg_lr, fused=True)
        self.lams = [rule.initial_lambda((model.seeds, shape.width), device=model.head.device)
                     for _ in range(shape.layers)]

    def mixing(self, layer: int) -> Lam:
        """λ of a layer as `mix` wants it: the rule's float if constant, else (S, N, 1, 1)."""
        if self.rule.constant_lambda is not None:
            return self.rule.constant_lambda
        lam = self.lams[layer]
        return lam.view(*lam.shape, 1, 1)

    def forward(self, images: Tensor) -> Trace:
        return self.model(images, by_hand=True)

    def unit_scale(self, batch: int) -> float:
        """SG units per mean-loss unit: 1 (`mean`, the reference) or B (`sample`)."""
        return float(batch) if self.sg_units == "sample" else 1.0

    def predictions(self, trace: Trace, batch: int) -> list[Tensor | None]:
        """Current SG predictions in mean-loss units (None where no predictor is needed)."""
        if not self.rule.uses_predictor:
            return [None] * len(trace.layers)
        return self.scaled_predictions(trace, batch)

    def scaled_predictions(self, trace: Trace, batch: int) -> list[Tensor]:
        scale = self.unit_scale(batch)
        return [self.sg.predict(layer, st) / scale for layer, st in enumerate(trace.states)]

    def top(self, trace: Trace, actions: Tensor, rewards: Tensor) -> tuple[Tensor, Tensor]:
        """(head gradient, g_L) of the REINFORCE loss."""
        return policy_top(self.model, trace, actions, rewards)

    def update_synthetic(self, trace: Trace, top_grad: Tensor) -> Tensor:
        """One SG step on bootstrapped targets; returns the per-seed SG loss (S,)."""
        scale = self.unit_scale(top_grad.shape[3])
        lams = [self.mixing(layer) for layer in range(len(trace.states))]
        preds = [self.sg.predict(layer, st) for layer, st in enumerate(trace.states)]
        targets = propagate(self.model, trace, top_grad, lams,
                            [p / scale for p in preds], params=False).realised
        errors = [p - scale * t for p, t in zip(preds, targets, strict=True)]
        per_seed = sum((e * e).mean((1, 2, 3)) for e in errors)
        # ∂/∂p of mean((p − scale·t)²) over a seed's (N, K, B), the targets held fixed.
        grads = [g for layer, e in enumerate(errors)
                 for g in self.sg.predict_backward(layer, trace.states[layer],
                                                   e * (2.0 / e[0].numel()))]
        for param, grad in zip(self.sg.parameters(), grads, strict=True):
            param.grad = grad
        self.sg_optimizer.step()
        return per_seed

    def backward(self, trace: Trace, actions: Tensor, rewards: Tensor) -> dict[str, Tensor]:
        """SG update, then set .grad of the policy with the updated SG; adapt λ."""
        head, top_grad = self.top(trace, actions, rewards)
        stats: dict[str, Tensor] = {}
        if self.rule.uses_predictor:
            stats["sg_loss"] = self.update_synthetic(trace, top_grad)
        batch = top_grad.shape[3]
        lams = [self.mixing(layer) for layer in range(len(trace.states))]
        predicted = self.predictions(trace, batch)
        prop = propagate(self.model, trace, top_grad, lams, predicted, params=True)
        params = parameters_of(self.model)
        for p, g in zip(params, [*prop.grads, head], strict=True):
            p.grad = g
        self.norms = feedback_norms(prop.realised, predicted)
        for layer, state in enumerate(trace.states):
            estimate = (layer_lambda(state, prop.realised[layer], predicted[layer],
                                     self.lams[layer], self.normalise)
                        if self.rule.needs_estimate else None)
            self.lams[layer] = self.rule.next_lambda(self.lams[layer], estimate)
        return stats

    def rule_gradients(self, images: Tensor, actions: Tensor, rewards: Tensor,
                       ) -> dict[str, list[Tensor]]:
        """Each `learners.compared` setting's gradient estimate: backprop (λ=1), the
        current mixture and pure SG (λ=0)."""
        trace = self.forward(images)
        head, top_grad = self.top(trace, actions, rewards)
        predicted = self.scaled_predictions(trace, top_grad.shape[3])
        current = [self.mixing(layer) for layer in range(len(trace.states))]
        return {
            setting.key: [*propagate(self.model, trace, top_grad,
                                     [setting.lambda_given(lam) for lam in current], predicted,
                                     params=True).grads, head]
            for setting in COMPARED
        }

    def lambda_means(self) -> list[Tensor]:
        """Per layer, the mean λ over neurons, per seed: (S,) each."""
        return [lam.mean(1) for lam in self.lams]
