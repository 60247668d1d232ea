"""SparseNet and the parameter-matched MLP of the contextual bandit (docs/e2.md).

Every parameter carries a leading seed dimension S, so one block of seeds is one batched
computation; seed s only ever touches slice s, and each slice is drawn from that seed's own
generator, so a seed's numbers do not depend on which block it runs in.

Shapes: S seeds, B batch, I pixels, N neurons per layer (`width`), K neuron output dim
(`dim`), M slots, P parents, D_l input dim of layer l (D_0 = `fan_in` pixels, by
default P·K as in the reference code, so the parents sweep varies layer 0's fan-in too;
D_l = P·K for l ≥ 1), A actions.

SparseNet, layer l (all N neurons at once: one gather + einsums, no loop over neurons):
    x      = gather(h_{l−1}, wiring_l)                   (S, B, N, D_l)  fixed random inputs
    w      = softmax(x K_l^T / √D_l)                     (S, B, N, M)    routing over slots
    h_l    = Σ_m w_m tanh(A_m x + b_m)                   (S, B, N, K)
    h_l    = tanh(h_l) + h_{l−1}                         for l ≥ 1 (residual)
    logits = flat(h_L) Kact^T / √(N·K)                   (S, B, A)
Init (as the reference code): every parameter N(0, 1/D_l) (the head 1/D_{L−1}); at the
paper's sizes that is N(0, 1/50) throughout and the parameter count is 2,818,000.

`forward(images, cut=True)` makes each layer's input a fresh leaf, so the sgprop learner
can take one vector-Jacobian product per layer and mix what flows between layers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

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
    """What one SparseNet layer computed, kept for the learners."""

    inputs: Tensor  # what the layer read: images (S,B,I) or h_{l−1} (S,B,N,K); a leaf if cut
    x: Tensor  # (S, B, N, D) each neuron's local input
    scores: Tensor  # (S, B, N, M) routing logits x K^T / √D
    routing: Tensor  # (S, B, N, M) softmax(scores)
    pre: Tensor  # (S, B, N, M, K) A_m x + b_m
    act: Tensor  # (S, B, N, M, K) tanh(pre)
    mixed: Tensor  # (S, B, N, K) Σ_m w_m act_m
    out: Tensor  # (S, B, N, K) h_l


@dataclass
class Trace:
    layers: list[LayerTrace]
    top: Tensor  # (S, B, N, K) h_L as the head reads it (a leaf if cut)
    logits: Tensor  # (S, B, A)


def gather_units(features: Tensor, index: Tensor) -> Tensor:
    """features (S, B, U, F), index (S, N, P) of units → (S, B, N, P·F)."""
    seeds, batch, _, width = features.shape
    _, neurons, parents = index.shape
    flat = index.reshape(seeds, 1, neurons * parents, 1).expand(seeds, batch, -1, width)
    return features.gather(2, flat).reshape(seeds, batch, neurons, parents * width)


def random_subsets(rows: int, population: int, size: int, gen: torch.Generator) -> Tensor:
    """`rows` independent random subsets of `size` distinct items of range(population)."""
    return torch.rand(rows, population, generator=gen).argsort(-1)[:, :size]


class SparseNet(nn.Module):
    def __init__(self, shape: SparseNetShape, generators: Sequence[torch.Generator]) -> None:
        super().__init__()
        self.shape = shape
        n, k, m = shape.width, shape.dim, shape.slots
        per_seed = [self._draw(shape, gen) for gen in generators]
        for layer in range(shape.layers):
            wiring, keys, weights, biases = (
                torch.stack([seed[0][layer][i] for seed in per_seed]) for i in range(4)
            )
            d = shape.input_dim(layer)
            assert keys.shape[1:] == (n, m, d) and weights.shape[1:] == (n, m, k, d)
            self.register_buffer(f"wiring{layer}", wiring)
            setattr(self, f"keys{layer}", nn.Parameter(keys))
            setattr(self, f"weights{layer}", nn.Parameter(weights))
            setattr(self, f"biases{layer}", nn.Parameter(biases))
        self.head = nn.Parameter(torch.stack([seed[1] for seed in per_seed]))

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

    def layer(self, layer: int, inputs: Tensor) -> LayerTrace:
        keys = getattr(self, f"keys{layer}")
        weights = getattr(self, f"weights{layer}")
        biases = getattr(self, f"biases{layer}")
        features = inputs.unsqueeze(-1) if layer == 0 else inputs
        x = gather_units(features, getattr(self, f"wiring{layer}"))
        scores = seed_einsum("sbnd,snmd->sbnm", x, keys) / math.sqrt(x.shape[-1])
        routing = torch.softmax(scores, dim=-1)
        pre = seed_einsum("sbnd,snmkd->sbnmk", x, weights) + biases.unsqueeze(1)
        act = torch.tanh(pre)
        mixed = (routing.unsqueeze(-1) * act).sum(-2)  # elementwise: no BLAS outer products
        out = torch.tanh(mixed) + inputs if layer > 0 else mixed
        return LayerTrace(inputs, x, scores, routing, pre, act, mixed, out)

    def readout(self, top: Tensor) -> Tensor:
        flat = top.flatten(2)
        return seed_einsum("sbj,saj->sba", flat, self.head) / math.sqrt(flat.shape[-1])

    def forward(self, images: Tensor, cut: bool = False) -> Trace:
        """images (S, B, I) → Trace. `cut`: each layer reads a detached leaf copy of its input."""
        layers = []
        h = images
        for layer in range(self.shape.layers):
            if cut and layer > 0:
                h = h.detach().requires_grad_(True)
            trace = self.layer(layer, h)
            layers.append(trace)
            h = trace.out
        top = h.detach().requires_grad_(True) if cut else h
        return Trace(layers, top, self.readout(top))

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
