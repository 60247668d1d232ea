"""SparseNet and the parameter-matched MLP of the contextual bandit (docs/e2.md).

Every parameter carries a leading seed dimension S, so one block of seeds is one batched
computation; seed s only ever touches slice s, and each slice is drawn from that seed's own
generator, so a seed's numbers do not depend on which block it runs in.

Shapes: S seeds, B batch, I pixels, N neurons per layer (`width`), K neuron output dim
(`dim`), M slots, P parents, D_l input dim of layer l (D_0 = `fan_in` pixels, by
default P·K as in the reference code, so the parents sweep varies layer 0's fan-in too;
D_l = P·K for l ≥ 1), A actions.

SparseNet, layer l (all N neurons at once, no loop over neurons):
    x      = gather(h_{l−1}, wiring_l)                   fixed random inputs, D_l per neuron
    w      = softmax(x K_l^T / √D_l)                     routing over the M slots
    h_l    = Σ_m w_m tanh(A_m x + b_m)                   K outputs per neuron
    h_l    = tanh(h_l) + h_{l−1}                         for l ≥ 1 (residual)
    logits = flat(h_L) Kact^T / √(N·K)                   (S, B, A)
Init (as the reference code): every parameter N(0, 1/D_l) (the head 1/D_{L−1}); at the
paper's sizes that is N(0, 1/50) throughout and the parameter count is 2,818,000.

Layout (docs/performance.md#e2): a layer computes per neuron with the batch last,
(S, N, ·, B). Then a layer's gather copies whole rows of B values (one index_select),
the routing keys and slot maps of a neuron are one matrix [K; A] (M + M·K rows, D
columns) applied to its (D, B) input by one bmm over neurons, and the backward pass is
two more bmms of the same shape (parameter gradients, input feedback) and one index_add.
The backward pass is written out (`SparseNet.layer_backward`): the learners call it
directly, and `forward(images)` with autograd on wraps it in an autograd Function, so
autograd and the learners run the same arithmetic. `LayerTrace` shows a layer's tensors
in the batch-first shapes (S, B, N, ...) as views.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn


def seed_einsum(equation: str, *operands: Tensor) -> Tensor:
    """`torch.einsum` over a leading seed dim `s`, computed one seed at a time.

    BLAS picks its kernel (and so its rounding) by the shape of the whole batched call, so
    one einsum over 3 seeds can differ in the last bit from the same seed alone. Per-seed
    calls have the same shapes in any block, which keeps every seed bit-identical to its
    solo run (tests/test_bandit_task.py).
    """
    inputs, output = equation.split("->")
    terms = inputs.split(",")
    if not all(t.startswith("s") for t in [*terms, output]):
        raise ValueError(f"every term of {equation!r} must start with the seed index s")
    per_seed = ",".join(t[1:] for t in terms) + "->" + output[1:]
    # unbind, not indexing: its backward stacks the slices instead of zero-filling a full
    # tensor per seed.
    slices = zip(*(op.unbind(0) for op in operands), strict=True)
    results = [torch.einsum(per_seed, *ops) for ops in slices]
    return results[0].unsqueeze(0) if len(results) == 1 else torch.stack(results)


@dataclass(frozen=True)
class SparseNetShape:
    inputs: int  # pixels I
    actions: int  # A
    layers: int = 5  # L
    width: int = 200  # N
    dim: int = 10  # K
    fan_in: int | None = None  # pixels read by a layer-0 neuron; None: P·K (the reference)
    parents: int = 5  # P
    slots: int = 5  # M

    @property
    def pixels_per_neuron(self) -> int:
        return self.parents * self.dim if self.fan_in is None else self.fan_in

    def input_dim(self, layer: int) -> int:
        return self.pixels_per_neuron if layer == 0 else self.parents * self.dim

    def num_parameters(self) -> int:
        per_layer = [
            self.width * self.slots * (d + self.dim * d + self.dim)
            for d in (self.input_dim(layer) for layer in range(self.layers))
        ]
        return sum(per_layer) + self.actions * self.width * self.dim


@dataclass
class LayerTrace:
    """What one SparseNet layer computed, batch first (views of `LayerState`'s tensors)."""

    inputs: Tensor  # what the layer read: images (S,B,I) or h_{l−1} (S,B,N,K)
    x: Tensor  # (S, B, N, D) each neuron's local input
    scores: Tensor  # (S, B, N, M) routing logits x K^T / √D
    routing: Tensor  # (S, B, N, M) softmax(scores)
    pre: Tensor  # (S, B, N, M, K) A_m x + b_m
    act: Tensor  # (S, B, N, M, K) tanh(pre)
    mixed: Tensor  # (S, B, N, K) Σ_m w_m act_m
    out: Tensor  # (S, B, N, K) h_l


@dataclass
class LayerState:
    """One layer's forward pass in the layout it computes in: per neuron, batch last."""

    layer: int
    inputs: Tensor  # images (S, B, I) at layer 0, else h_{l−1} (S, N, K, B)
    x: Tensor  # (S, N, D, B)
    maps: Tensor  # (S, N, M + M·K, D): routing keys, then slot maps, as the bmm reads them
    scores: Tensor  # (S, N, M, B)
    routing: Tensor  # (S, N, M, B)
    slots: Tensor  # (S, N, M, K, B) A_m x, before the biases
    biases: Tensor  # (S, N, M, K, 1)
    act: Tensor  # (S, N, M, K, B) tanh(A_m x + b_m)
    mixed: Tensor  # (S, N, K, B)
    squashed: Tensor | None  # tanh(mixed) for l ≥ 1 (the residual branch)
    out: Tensor | None  # (S, N, K, B) h_l (None in the copy autograd keeps)
    _slope: Tensor | None = None

    @property
    def pre(self) -> Tensor:
        """A_m x + b_m, (S, N, M, K, B) (formed on demand: the learners need only `act`)."""
        return self.slots + self.biases

    @property
    def slope(self) -> Tensor:
        """∂mixed/∂pre = w_m (1 − tanh²), (S, N, M, K, B); computed once, then shared by
        every backward pass of the step (SG targets, policy, λ moments)."""
        if self._slope is None:
            r = self.routing.unsqueeze(3)
            slope = self.act * self.act
            self._slope = torch.addcmul(r, r, slope, value=-1.0, out=slope)
        return self._slope

    def residual_slope(self) -> Tensor | None:
        """∂out/∂mixed = 1 − tanh²(mixed) for l ≥ 1; None at layer 0 (no residual)."""
        return None if self.squashed is None else 1.0 - self.squashed * self.squashed

    def public(self) -> LayerTrace:
        def batch_first(t: Tensor) -> Tensor:  # (S, N, ..., B) → (S, B, N, ...)
            return t.movedim(-1, 1)

        inputs = self.inputs if self.layer == 0 else batch_first(self.inputs)
        return LayerTrace(inputs, batch_first(self.x), batch_first(self.scores),
                          batch_first(self.routing), batch_first(self.pre),
                          batch_first(self.act), batch_first(self.mixed),
                          batch_first(self.out))


@dataclass
class Trace:
    states: list[LayerState]
    logits: Tensor  # (S, B, A)

    @property
    def layers(self) -> list[LayerTrace]:
        return [state.public() for state in self.states]

    @property
    def top(self) -> Tensor:
        """h_L as the head reads it, (S, N, K, B)."""
        return self.states[-1].out


def per_seed(op: Callable[..., Tensor], *operands: Tensor) -> Tensor:
    """A BLAS call (`torch.bmm`, `torch.mm`, ...) made one seed (leading dim) at a time,
    for the reason of `seed_einsum`: the same shapes in any block, the same bits."""
    slices = zip(*(t.unbind(0) for t in operands), strict=True)
    results = [op(*ops) for ops in slices]
    return results[0].unsqueeze(0) if len(results) == 1 else torch.stack(results)


def gather_rows(features: Tensor, index: Tensor) -> Tensor:
    """features (S, U, *row), index (S, N, P) of rows → (S, N, P·row[0], *row[1:]).

    One index_select over all seeds (seed s's rows offset by s·U): a copy, so exact."""
    seeds, units = features.shape[:2]
    row = features.shape[2:]
    offsets = torch.arange(seeds, device=index.device).view(seeds, 1, 1) * units
    picked = features.reshape(seeds * units, -1).index_select(0, (index + offsets).flatten())
    return picked.view(seeds, index.shape[1], index.shape[2] * row[0], *row[1:])


def scatter_rows(grad: Tensor, index: Tensor, into: Tensor) -> Tensor:
    """The adjoint of `gather_rows` for (S, N, P·K, B) rows: adds them into `into`
    (S, U, K, B) in place, in index order (deterministic), and returns it."""
    seeds, units = into.shape[:2]
    offsets = torch.arange(seeds, device=index.device).view(seeds, 1, 1) * units
    into.view(seeds * units, -1).index_add_(0, (index + offsets).flatten(),
                                            grad.reshape(index.numel(), -1))
    return into


def mix_slots(routing: Tensor, per_slot: Tensor) -> Tensor:
    """Σ_m w_m v_m: routing (S, N, M, B), per_slot (S, N, M, K, B) → (S, N, K, B).

    Slot by slot into one small accumulator: no (S, N, M, K, B) temporary."""
    weights = routing.unsqueeze(3)
    total = weights[:, :, 0] * per_slot[:, :, 0]
    for m in range(1, routing.shape[2]):
        total.addcmul_(weights[:, :, m], per_slot[:, :, m])
    return total


def slot_feedback(state: LayerState, d_mixed: Tensor, out: Tensor) -> Tensor:
    """Feedback on the slot mixture (S, N, K, B) → what the neuron's bmm rows receive:
    `out` (S, N, M + M·K, B) gets d scores / √D (keys' rows), then d pre (maps' rows)."""
    m = state.routing.shape[2]
    d_pre = out[:, :, m:].unflatten(2, state.act.shape[2:4])
    torch.mul(d_mixed.unsqueeze(2), state.slope, out=d_pre)
    d_routing = (d_mixed.unsqueeze(2) * state.act).sum(3)  # Σ_k d_k act_mk: (S, N, M, B)
    r = state.routing
    d_scores = r * (d_routing - (r * d_routing).sum(2, keepdim=True))  # softmax's backward
    torch.div(d_scores, math.sqrt(state.x.shape[2]), out=out[:, :, :m])
    return out


def random_subsets(rows: int, population: int, size: int, gen: torch.Generator) -> Tensor:
    """`rows` independent random subsets of `size` distinct items of range(population)."""
    return torch.rand(rows, population, generator=gen).argsort(-1)[:, :size]


class _Layer(torch.autograd.Function):
    """A SparseNet layer for autograd: forward and backward are the network's own."""

    @staticmethod
    def forward(ctx, net: SparseNet, layer: int, states: list[LayerState], inputs: Tensor,
                *params: Tensor) -> Tensor:
        state = net.layer_state(layer, inputs)
        states.append(state)
        # The backward pass never reads h_l; holding the output would be a reference cycle.
        ctx.net, ctx.state = net, replace(state, out=None)
        return state.out

    @staticmethod
    def backward(ctx, d_out: Tensor):
        needs_inputs = ctx.needs_input_grad[3]
        grads, d_inputs = ctx.net.layer_backward(ctx.state, d_out.contiguous(), params=True,
                                                 inputs=needs_inputs)
        return None, None, None, d_inputs, *grads


class SparseNet(nn.Module):
    def __init__(self, shape: SparseNetShape, generators: Sequence[torch.Generator]) -> None:
        super().__init__()
        self.shape = shape
        n, k, m = shape.width, shape.dim, shape.slots
        per_seed_draws = [self._draw(shape, gen) for gen in generators]
        for layer in range(shape.layers):
            wiring, keys, weights, biases = (
                torch.stack([seed[0][layer][i] for seed in per_seed_draws]) for i in range(4)
            )
            d = shape.input_dim(layer)
            assert keys.shape[1:] == (n, m, d) and weights.shape[1:] == (n, m, k, d)
            self.register_buffer(f"wiring{layer}", wiring)
            setattr(self, f"keys{layer}", nn.Parameter(keys))
            setattr(self, f"weights{layer}", nn.Parameter(weights))
            setattr(self, f"biases{layer}", nn.Parameter(biases))
        self.head = nn.Parameter(torch.stack([seed[1] for seed in per_seed_draws]))

    @staticmethod
    def _draw(shape: SparseNetShape, gen: torch.Generator):
        """One seed's wiring and parameters, in a fixed draw order."""
        n, k, m = shape.width, shape.dim, shape.slots
        layers = []
        for layer in range(shape.layers):
            d = shape.input_dim(layer)
            if layer == 0:
                wiring = random_subsets(n, shape.inputs, shape.pixels_per_neuron, gen)
            else:
                wiring = random_subsets(n, n, shape.parents, gen)
            std = 1.0 / math.sqrt(d)
            keys = torch.randn(n, m, d, generator=gen) * std
            weights = torch.randn(n, m, k, d, generator=gen) * std
            biases = torch.randn(n, m, k, generator=gen) * std
            layers.append((wiring, keys, weights, biases))
        std = 1.0 / math.sqrt(shape.input_dim(shape.layers - 1))
        head = torch.randn(shape.actions, n * k, generator=gen) * std
        return layers, head

    @property
    def seeds(self) -> int:
        return self.head.shape[0]

    def layer_parameters(self) -> list[tuple[str, list[nn.Parameter]]]:
        """(name, parameters) per layer, bottom-up, then the action head."""
        groups = [
            (f"l{layer}", [getattr(self, f"{p}{layer}") for p in ("keys", "weights", "biases")])
            for layer in range(self.shape.layers)
        ]
        return [*groups, ("head", [self.head])]

    def layer_state(self, layer: int, inputs: Tensor) -> LayerState:
        """Layer `layer` on images (S, B, I) or h_{l−1} (S, N, K, B); no autograd graph."""
        keys, weights, biases = (getattr(self, f"{p}{layer}").detach()
                                 for p in ("keys", "weights", "biases"))
        wiring = getattr(self, f"wiring{layer}")
        with torch.no_grad():
            if layer == 0:
                pixels = inputs.detach().transpose(1, 2).unsqueeze(2)  # (S, I, 1, B)
                x = gather_rows(pixels.contiguous(), wiring)
            else:
                x = gather_rows(inputs.detach(), wiring)
            m = keys.shape[2]
            maps = torch.cat([keys, weights.flatten(2, 3)], 2)
            z = per_seed(torch.bmm, maps, x)  # (S, N, M + M·K, B)
            scores = z[:, :, :m] / math.sqrt(x.shape[2])
            routing = torch.softmax(scores, dim=2)
            slots = z[:, :, m:].unflatten(2, weights.shape[2:4])
            biases = biases.unsqueeze(-1)
            act = torch.add(slots, biases).tanh_()
            mixed = mix_slots(routing, act)
            squashed = torch.tanh(mixed) if layer > 0 else None
            out = squashed + inputs if squashed is not None else mixed
        return LayerState(layer, inputs, x, maps, scores, routing, slots, biases, act, mixed,
                          squashed, out)

    def layer_backward(self, state: LayerState, d_out: Tensor, params: bool, inputs: bool,
                       ) -> tuple[list[Tensor], Tensor | None]:
        """Feedback d_out on h_l (S, N, K, B) → ([∂keys, ∂weights, ∂biases] if `params`,
        feedback on h_{l−1} (S, N, K, B) if `inputs` and l ≥ 1, else None)."""
        shrink = state.residual_slope()
        d_mixed = d_out if shrink is None else d_out * shrink
        s, n, r, b = state.maps.shape[0], state.maps.shape[1], state.maps.shape[2], d_out.shape[3]
        errors = slot_feedback(state, d_mixed, d_out.new_empty(s, n, r, b))
        grads: list[Tensor] = []
        if params:
            m = state.routing.shape[2]
            d_maps = per_seed(torch.bmm, errors, state.x.transpose(2, 3))  # (S, N, M+MK, D)
            d_biases = errors[:, :, m:].sum(-1).unflatten(2, state.act.shape[2:4])
            grads = [d_maps[:, :, :m].contiguous(),
                     d_maps[:, :, m:].unflatten(2, state.act.shape[2:4]).contiguous(),
                     d_biases]
        if not inputs or state.layer == 0:
            return grads, None
        d_x = per_seed(torch.bmm, state.maps.transpose(2, 3), errors)  # (S, N, D, B)
        d_inputs = scatter_rows(d_x, getattr(self, f"wiring{state.layer}"), d_out.clone())
        return grads, d_inputs

    def readout(self, top: Tensor) -> Tensor:
        """h_L (S, N, K, B) → logits (S, B, A)."""
        flat = top.flatten(1, 2)
        return (per_seed(torch.mm, self.head, flat) / math.sqrt(flat.shape[1])).transpose(1, 2)

    def readout_backward(self, top: Tensor, d_logits: Tensor) -> tuple[Tensor, Tensor]:
        """Feedback on the logits (S, B, A) → (∂head (S, A, N·K), feedback on h_L)."""
        flat = top.flatten(1, 2)
        scaled = d_logits.transpose(1, 2) / math.sqrt(flat.shape[1])  # (S, A, B)
        d_head = per_seed(torch.mm, scaled, flat.transpose(1, 2))
        d_top = per_seed(torch.mm, self.head.detach().transpose(1, 2), scaled)
        return d_head, d_top.view(top.shape)

    def forward(self, images: Tensor, by_hand: bool = False) -> Trace:
        """images (S, B, I) → Trace. `by_hand`: no autograd graph (the learners propagate
        with `layer_backward`); else autograd reaches every parameter when grad is on."""
        states: list[LayerState] = []
        h = images
        graph = not by_hand and torch.is_grad_enabled()
        for layer in range(self.shape.layers):
            if graph:
                params = [getattr(self, f"{p}{layer}") for p in ("keys", "weights", "biases")]
                h = _Layer.apply(self, layer, states, h, *params)
                states[-1].out = h
            else:
                states.append(self.layer_state(layer, h))
                h = states[-1].out
        return Trace(states, self.readout(h))

    def logits(self, images: Tensor) -> Tensor:
        return self.forward(images).logits


class MLP(nn.Module):
    """`layers` tanh layers of `width`, then a linear action head.

    Init `xavier` (the reference code): Xavier-normal weights, std √(2/(fan_in + fan_out)),
    zero biases. `torch`: PyTorch's nn.Linear default, U(±1/√fan_in) weights and biases.
    At 784 inputs, width 745, 5 layers and 9 actions it has 2,814,619 parameters, matched
    to SparseNet's 2,818,000.
    """

    def __init__(self, inputs: int, actions: int, width: int, layers: int,
                 generators: Sequence[torch.Generator], init: str = "xavier") -> None:
        super().__init__()
        if init not in ("xavier", "torch"):
            raise ValueError(f"unknown MLP init {init!r}; expected xavier or torch")
        sizes = [inputs] + [width] * layers + [actions]
        self.depth = len(sizes) - 1
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            if init == "xavier":
                std = math.sqrt(2.0 / (fan_in + fan_out))
                weight = torch.stack([torch.randn(fan_in, fan_out, generator=g) * std
                                      for g in generators])
                bias = torch.zeros(len(generators), 1, fan_out)
            else:
                bound = 1.0 / math.sqrt(fan_in)
                draws = [(torch.rand(fan_in, fan_out, generator=g),
                          torch.rand(1, fan_out, generator=g)) for g in generators]
                weight = torch.stack([w for w, _ in draws]) * (2 * bound) - bound
                bias = torch.stack([b for _, b in draws]) * (2 * bound) - bound
            setattr(self, f"weight{i}", nn.Parameter(weight))  # (S, in, out)
            setattr(self, f"bias{i}", nn.Parameter(bias))  # (S, 1, out)

    def layer_parameters(self) -> list[tuple[str, list[nn.Parameter]]]:
        names = [f"l{i}" for i in range(self.depth - 1)] + ["head"]
        return [(name, [getattr(self, f"weight{i}"), getattr(self, f"bias{i}")])
                for i, name in enumerate(names)]

    def logits(self, images: Tensor) -> Tensor:
        h = images
        for i in range(self.depth):
            weight, bias = getattr(self, f"weight{i}"), getattr(self, f"bias{i}")
            # Per seed, for the same reason as `seed_einsum`.
            rows = [torch.addmm(*ops) for ops in zip(bias.unbind(0), h.unbind(0),
                                                      weight.unbind(0), strict=True)]
            h = rows[0].unsqueeze(0) if len(rows) == 1 else torch.stack(rows)
            if i < self.depth - 1:
                h = torch.tanh(h)
        return h


def count_parameters(model: nn.Module) -> int:
    """Parameters of one seed's model."""
    return sum(p[0].numel() for p in model.parameters())
