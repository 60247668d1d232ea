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
from learners.sparsenet import MLP, LayerTrace, SparseNet, SparseNetShape, Trace, seed_einsum

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

    def predict(self, layer: int, trace: LayerTrace) -> Tensor:
        """Predicted feedback for h_l (in the predictor's units): (S, B, N, K)."""
        x = trace.x.detach()
        # Σ_m w_m (G_m x + c_m): every slot's affine map first (one bmm over neurons), then
        # the routing-weighted sum; cheaper than forming w_m·x, which is M times larger.
        # The bmm leaves its output neuron-major, so the routing is laid out alike.
        per_slot = seed_einsum("sbnd,snmkd->snbmk", x, getattr(self, f"G{layer}"))
        per_slot = per_slot + getattr(self, f"c{layer}").unsqueeze(2)
        routing = trace.routing.detach().transpose(1, 2).contiguous()  # (S, N, B, M)
        return (routing.unsqueeze(-1) * per_slot).sum(-2).transpose(1, 2)


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

    With `params`, also the hidden layers' parameter gradients (the head's comes from the
    loss directly and is not included).
    """
    layers = model.layer_parameters()
    realised: list[Tensor] = [top_grad] * len(trace.layers)
    grads: list[list[Tensor]] = [[] for _ in trace.layers]
    g = top_grad
    for layer in reversed(range(len(trace.layers))):
        lt = trace.layers[layer]
        realised[layer] = g
        mixed = g if predicted[layer] is None else mix(lams[layer], g, predicted[layer])
        wrt = list(layers[layer][1]) if params else []
        if layer > 0:
            wrt.append(lt.inputs)
        if not wrt:
            continue
        out = torch.autograd.grad(lt.out, wrt, grad_outputs=mixed, retain_graph=True)
        if layer > 0:
            g = out[-1]
            out = out[:-1]
        grads[layer] = list(out)
    return Propagation(realised, [t for group in grads for t in group])


def unit(v: Tensor) -> Tensor:
    """v / ‖v‖ over the last dim; zero vectors stay zero."""
    return v / v.norm(dim=-1, keepdim=True).clamp(min=1e-12)


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


def seed_matmul(a: Tensor, b: Tensor) -> Tensor:
    """`torch.matmul` one seed (leading dim) at a time, for the reason of `seed_einsum`."""
    if a.shape[0] == 1:
        return torch.matmul(a, b)
    return torch.stack([torch.matmul(x, y) for x, y in zip(a, b, strict=True)])


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


def layer_lambda(lt: LayerTrace, layer: int, realised: Tensor, predicted: Tensor,
                 previous: Tensor, normalise: bool = True) -> Tensor:
    """The batch's MSE-optimal λ per neuron (S, N) for one SparseNet layer.

    Each sample's parameter-gradient contribution to neuron n has three blocks: routing
    keys e^K_b ⊗ x_b, slot weights e^A_b ⊗ x_b and slot biases e^A_b, with e^A = d ⊗ s
    (d the feedback on the slot mixture, s_mk = w_m (1 − tanh²) the slot slopes) and e^K
    the feedback pulled back to the routing scores. The four moments of
    `lambda_from_moments` are summed over the blocks without forming any contribution:
    ‖e^A_b ⊗ x_b‖² + ‖e^A_b‖² = (Σ_k d_k² Σ_m s_mk²)(‖x_b‖² + 1), and the batch means come
    from one contraction over the batch. With `normalise`, both feedbacks are taken through
    the residual's tanh first and then made unit vectors per sample and neuron (the
    reference code's order). Tests check it against materialised per-sample gradients.
    """
    w = through_residual(lt, layer, realised)
    p = through_residual(lt, layer, predicted)
    if normalise:
        w, p = unit(w), unit(p)

    # Everything below runs neuron-major, (S, N, B, ...): the layout the forward's slot
    # einsum leaves `act` in, so no large tensor is copied or read with a stride.
    def neuron_major(t: Tensor) -> Tensor:
        return t.detach().transpose(1, 2).contiguous()

    act = neuron_major(lt.act)  # (S, N, B, M, K)
    routing, x = neuron_major(lt.routing), neuron_major(lt.x)  # (S, N, B, M), (S, N, B, D)
    wu_pair = torch.stack([neuron_major(w), neuron_major(p - w)], -1)  # (S, N, B, K, 2)
    w, u = wu_pair.unbind(-1)
    batch = w.shape[2]
    r = routing.unsqueeze(-1)
    slope = torch.addcmul(r, r, act * act, value=-1.0)  # w_m (1 − tanh²): (S, N, B, M, K)
    slope_sq = (slope * slope).sum(-2)  # (S, N, B, K)
    x_sq = (x * x).sum(-1)  # (S, N, B)
    # Feedback on the mixture → routing scores, for w and u at once: (S, N, B, M, 2).
    d_routing = seed_matmul(act, wu_pair)
    r2 = routing.unsqueeze(-1)
    keys = r2 * (d_routing - (r2 * d_routing).sum(-2, keepdim=True)) / math.sqrt(x.shape[-1])
    key_w, key_u = keys.unbind(-1)
    u_sq = ((u * u * slope_sq).sum(-1) * (x_sq + 1.0) + (key_u * key_u).sum(-1) * x_sq)
    wu = ((w * u * slope_sq).sum(-1) * (x_sq + 1.0) + (key_w * key_u).sum(-1) * x_sq)
    # Batch sums of each block's contributions for w and u (divided by B at the end):
    # slot weights Σ_b e_b x_bᵀ and routing keys as matrix products over the batch.
    slot_w = (w.unsqueeze(-2) * slope).flatten(-2)  # (S, N, B, M·K)
    slot_u = (u.unsqueeze(-2) * slope).flatten(-2)
    x_t = x.transpose(-1, -2)  # (S, N, D, B)
    key_sums = seed_matmul(x_t, keys.flatten(-2)).unflatten(-1, (-1, 2))  # (S, N, D, M, 2)
    sums = [(seed_matmul(x_t, slot_w), seed_matmul(x_t, slot_u)),  # slot weights
            key_sums.unbind(-1),  # routing keys
            (slot_w.sum(2), slot_u.sum(2))]  # slot biases
    dims = lambda t: tuple(range(2, t.dim()))  # noqa: E731 - everything but (S, N)
    u_mean_sq = sum((bu * bu).sum(dims(bu)) for _, bu in sums) / batch**2
    w_mean_u_mean = sum((bw * bu).sum(dims(bu)) for bw, bu in sums) / batch**2
    return lambda_from_moments(u_sq.mean(2), u_mean_sq, wu.mean(2), w_mean_u_mean,
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


class Backprop:
    """Plain autograd through the whole network (SparseNet or MLP)."""

    def __init__(self, model: Model) -> None:
        self.model = model

    def forward(self, images: Tensor) -> Trace | Logits:
        if isinstance(self.model, SparseNet):
            return self.model(images)
        return Logits(self.model.logits(images))

    def backward(self, trace: Trace | Logits, actions: Tensor, rewards: Tensor,
                 ) -> dict[str, Tensor]:
        """Set .grad of every model parameter; returns per-seed statistics."""
        loss = reinforce_loss(trace.logits, actions, rewards)
        grads = torch.autograd.grad(loss, parameters_of(self.model))
        for p, g in zip(parameters_of(self.model), grads, strict=True):
            p.grad = g
        return {}

    def rule_gradients(self, images: Tensor, actions: Tensor, rewards: Tensor,
                       ) -> dict[str, list[Tensor]]:
        """Per-parameter gradient estimates of each rule this learner can form."""
        loss = reinforce_loss(self.forward(images).logits, actions, rewards)
        return {BACKPROP.key: list(torch.autograd.grad(loss, parameters_of(self.model)))}


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
        """λ of a layer as `mix` wants it: the rule's float if constant, else (S, 1, N, 1)."""
        if self.rule.constant_lambda is not None:
            return self.rule.constant_lambda
        lam = self.lams[layer]
        return lam.view(lam.shape[0], 1, lam.shape[1], 1)

    def forward(self, images: Tensor) -> Trace:
        return self.model(images, cut=True)

    def unit_scale(self, batch: int) -> float:
        """SG units per mean-loss unit: 1 (`mean`, the reference) or B (`sample`)."""
        return float(batch) if self.sg_units == "sample" else 1.0

    def predictions(self, trace: Trace, batch: int) -> list[Tensor | None]:
        """Current SG predictions in mean-loss units (None where no predictor is needed)."""
        if not self.rule.uses_predictor:
            return [None] * len(trace.layers)
        scale = self.unit_scale(batch)
        with torch.no_grad():
            return [self.sg.predict(layer, lt) / scale for layer, lt in enumerate(trace.layers)]

    def top(self, trace: Trace, actions: Tensor, rewards: Tensor) -> tuple[Tensor, Tensor]:
        """(head gradient, g_L) of the REINFORCE loss; touches only the head's graph."""
        loss = reinforce_loss(trace.logits, actions, rewards)
        head, top = torch.autograd.grad(loss, [self.model.head, trace.top])
        return head, top

    def update_synthetic(self, trace: Trace, top_grad: Tensor) -> Tensor:
        """One SG step on bootstrapped targets; returns the per-seed SG loss (S,)."""
        scale = self.unit_scale(top_grad.shape[1])
        lams = [self.mixing(layer) for layer in range(len(trace.layers))]
        preds = [self.sg.predict(layer, lt) for layer, lt in enumerate(trace.layers)]
        targets = propagate(self.model, trace, top_grad, lams,
                            [p.detach() / scale for p in preds], params=False).realised
        per_seed = sum(
            ((p - scale * t.detach()) ** 2).mean((1, 2, 3))
            for p, t in zip(preds, targets, strict=True)
        )
        self.sg_optimizer.zero_grad(set_to_none=True)
        per_seed.sum().backward()
        self.sg_optimizer.step()
        return per_seed.detach()

    def backward(self, trace: Trace, actions: Tensor, rewards: Tensor) -> dict[str, Tensor]:
        """SG update, then set .grad of the policy with the updated SG; adapt λ."""
        head, top_grad = self.top(trace, actions, rewards)
        stats: dict[str, Tensor] = {}
        if self.rule.uses_predictor:
            stats["sg_loss"] = self.update_synthetic(trace, top_grad)
        batch = top_grad.shape[1]
        lams = [self.mixing(layer) for layer in range(len(trace.layers))]
        predicted = self.predictions(trace, batch)
        prop = propagate(self.model, trace, top_grad, lams, predicted, params=True)
        params = parameters_of(self.model)
        for p, g in zip(params, [*prop.grads, head], strict=True):
            p.grad = g
        self.norms = feedback_norms(prop.realised, predicted)
        for layer, lt in enumerate(trace.layers):
            estimate = (layer_lambda(lt, layer, prop.realised[layer], predicted[layer],
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
        scale = self.unit_scale(top_grad.shape[1])
        with torch.no_grad():
            predicted = [self.sg.predict(layer, lt) / scale
                         for layer, lt in enumerate(trace.layers)]
        current = [self.mixing(layer) for layer in range(len(trace.layers))]
        return {
            setting.key: [*propagate(self.model, trace, top_grad,
                                     [setting.lambda_given(lam) for lam in current], predicted,
                                     params=True).grads, head]
            for setting in COMPARED
        }

    def lambda_means(self) -> list[Tensor]:
        """Per layer, the mean λ over neurons, per seed: (S,) each."""
        return [lam.mean(1) for lam in self.lams]
