"""Recurrent policies of E3 (docs/e3.md): recurrent SparseNet, GRU and LSTM.

Every model reads a sequence of observations (T, B, O) and returns logits (T, B, A). All
share the preprocessor of the paper (LayerNorm without affine parameters):
    e_t = LeakyReLU(Linear(LayerNorm(Linear(obs_t, 128)), 128))

Recurrent SparseNet (N neurons, each a K-vector state; M slots; P parents; the first
`input_neurons` neurons also read e_t):
    x_t[i]  = [h_{t−1}[parents(i)] (P·K) ; e_t (E) if i < input_neurons else 0]
    w_t[i]  = softmax(x_t[i] Keys_i^T / √D)                 D = P·K + E, over M slots
    h_t[i]  = Σ_m w_t[i]_m tanh(A_{i,m} x_t[i] + b_{i,m})   h_{−1} = 0
    logit_a = Σ_m r_{a,m} (W_{a,m}·z + c_{a,m}),  r_{a,·} = softmax_m(K_{a,m}·z / √(N·K)),
              z = flat(h_t) (N·K, unscaled): M slots per action, each routed on its own
The zero block of a non-input neuron's x is never materialised: the parent part and the
e_t part are separate parameters, and only the first `input_neurons` neurons have the
latter. Init: every SparseNet parameter N(0, 1/D), the actor's keys and weights
N(0, 1/(N·K)), its biases 0.

GRU / LSTM: the same preprocessor, a `hidden`-wide cell, and an actor of two LeakyReLU
layers of 128 then the logits. Init as the reference: every Linear and the cell's weight
matrices orthogonal (gain 1), biases 0, the logit layer's weights N(0, 0.01²).

`forward(obs, cut=True)` on the SparseNet gives each step's h_{t−1} and e_t as fresh leaves, so the
sgprop-through-time learner (learners/sgprop_time.py) can take one vector-Jacobian product
per step and mix what flows backwards in time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


def orthogonal(layer: nn.Linear) -> nn.Linear:
    """Orthogonal weights (gain 1), zero bias: the reference's init of every Linear."""
    nn.init.orthogonal_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class Preprocessor(nn.Module):
    def __init__(self, obs_dim: int, width: int = 128) -> None:
        super().__init__()
        self.inp = orthogonal(nn.Linear(obs_dim, width))
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.out = orthogonal(nn.Linear(width, width))

    def forward(self, obs: Tensor) -> Tensor:
        return nn.functional.leaky_relu(self.out(self.norm(self.inp(obs))))


@dataclass(frozen=True)
class RecurrentShape:
    obs_dim: int
    actions: int
    neurons: int = 128  # N
    dim: int = 6  # K
    parents: int = 6  # P
    input_neurons: int = 16  # neurons that read e_t
    slots: int = 6  # M
    embed: int = 128  # E, the preprocessor's width

    @property
    def parent_dim(self) -> int:
        return self.parents * self.dim

    @property
    def input_dim(self) -> int:
        """D: a neuron's local input as the paper writes it (zeros included)."""
        return self.parent_dim + self.embed


@dataclass
class StepTrace:
    """What the SparseNet cell computed at one step (B batch, N neurons)."""

    prev: Tensor  # (B, N, K) h_{t−1} as the cell read it (a leaf if cut)
    embed: Tensor  # (B, E) e_t as the cell read it (a leaf if cut)
    x: Tensor  # (B, N, P·K) the parents' states
    scores: Tensor  # (B, N, M)
    routing: Tensor  # (B, N, M)
    pre: Tensor  # (B, N, M, K)
    act: Tensor  # (B, N, M, K)
    out: Tensor  # (B, N, K) h_t


@dataclass
class SequenceTrace:
    embed: Tensor  # (T, B, E) the preprocessor's output e_t (with its graph)
    steps: list[StepTrace] = field(default_factory=list)
    states: Tensor | None = None  # (T, B, N, K) h_t as the actor reads it (leaf if cut)
    logits: Tensor | None = None  # (T, B, A)


class RecurrentSparseNet(nn.Module):
    def __init__(self, shape: RecurrentShape, gen: torch.Generator) -> None:
        super().__init__()
        self.shape = shape
        n, k, m, e = shape.neurons, shape.dim, shape.slots, shape.embed
        ni, dp = shape.input_neurons, shape.parent_dim
        self.pre = Preprocessor(shape.obs_dim, e)
        self.register_buffer(
            "wiring", torch.rand(n, n, generator=gen).argsort(-1)[:, : shape.parents])
        std = 1.0 / math.sqrt(shape.input_dim)
        self.keys_p = nn.Parameter(torch.randn(n, m, dp, generator=gen) * std)
        self.keys_e = nn.Parameter(torch.randn(ni, m, e, generator=gen) * std)
        self.weights_p = nn.Parameter(torch.randn(n, m, k, dp, generator=gen) * std)
        self.weights_e = nn.Parameter(torch.randn(ni, m, k, e, generator=gen) * std)
        self.biases = nn.Parameter(torch.randn(n, m, k, generator=gen) * std)
        z = n * k
        std = 1.0 / math.sqrt(z)
        a = shape.actions
        self.act_keys = nn.Parameter(torch.randn(a, m, z, generator=gen) * std)
        self.act_weights = nn.Parameter(torch.randn(a, m, z, generator=gen) * std)
        self.act_biases = nn.Parameter(torch.zeros(a, m))

    def cell_parameters(self) -> list[nn.Parameter]:
        return [self.keys_p, self.keys_e, self.weights_p, self.weights_e, self.biases]

    def actor_parameters(self) -> list[nn.Parameter]:
        return [self.act_keys, self.act_weights, self.act_biases]

    def cell(self, prev: Tensor, embed: Tensor) -> StepTrace:
        """One step for all neurons: prev (B, N, K), embed (B, E)."""
        s = self.shape
        batch = prev.shape[0]
        x = prev[:, self.wiring].reshape(batch, s.neurons, s.parent_dim)
        scores = torch.einsum("bnd,nmd->bnm", x, self.keys_p)
        pre = torch.einsum("bnd,nmkd->bnmk", x, self.weights_p) + self.biases
        ni = s.input_neurons
        scores_e = torch.einsum("be,nme->bnm", embed, self.keys_e)
        pre_e = torch.einsum("be,nmke->bnmk", embed, self.weights_e)
        # Input neurons add their e_t terms; the others' e_t block is zero.
        scores = torch.cat([scores[:, :ni] + scores_e, scores[:, ni:]], 1)
        pre = torch.cat([pre[:, :ni] + pre_e, pre[:, ni:]], 1)
        scores = scores / math.sqrt(s.input_dim)
        routing = torch.softmax(scores, -1)
        act = torch.tanh(pre)
        out = (routing.unsqueeze(-1) * act).sum(-2)
        return StepTrace(prev, embed, x, scores, routing, pre, act, out)

    def actor(self, states: Tensor) -> Tensor:
        """states (..., N, K) → logits (..., A)."""
        z = states.flatten(-2)
        scale = 1.0 / math.sqrt(z.shape[-1])
        routing = torch.softmax(torch.einsum("...z,amz->...am", z, self.act_keys) * scale, -1)
        per_slot = torch.einsum("...z,amz->...am", z, self.act_weights) + self.act_biases
        return (routing * per_slot).sum(-1)

    def initial_state(self, batch: int) -> Tensor:
        return self.biases.new_zeros(batch, self.shape.neurons, self.shape.dim)

    def step(self, obs: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """One environment step: obs (B, O) → (logits (B, A), new state)."""
        h = self.cell(state, self.pre(obs)).out
        return self.actor(h), h

    def forward(self, obs: Tensor, cut: bool = False) -> SequenceTrace:
        """obs (T, B, O) → SequenceTrace. `cut`: each step reads a detached leaf h_{t−1}."""
        embed = self.pre(obs)
        trace = SequenceTrace(embed=embed)
        h = self.initial_state(obs.shape[1])
        outs = []
        for t in range(obs.shape[0]):
            e_t = embed[t]
            if cut:
                h = h.detach().requires_grad_(t > 0)
                e_t = e_t.detach().requires_grad_(True)
            st = self.cell(h, e_t)
            trace.steps.append(st)
            h = st.out
            outs.append(h)
        states = torch.stack(outs)
        if cut:
            states = states.detach().requires_grad_(True)
        trace.states = states
        trace.logits = self.actor(states)
        return trace

    def logits(self, obs: Tensor) -> Tensor:
        return self.forward(obs).logits


class RecurrentBaseline(nn.Module):
    """GRU or LSTM: preprocessor → cell(hidden) → 2×128 LeakyReLU actor → logits."""

    def __init__(self, kind: str, obs_dim: int, actions: int, hidden: int = 256,
                 embed: int = 128, actor_width: int = 128) -> None:
        super().__init__()
        self.kind = kind
        self.hidden = hidden
        self.pre = Preprocessor(obs_dim, embed)
        cells = {"gru": nn.GRUCell, "lstm": nn.LSTMCell}
        self.rnn = cells[kind](embed, hidden)
        for name, param in self.rnn.named_parameters():
            if name.startswith("weight"):  # weight_ih (3H or 4H, E), weight_hh: each whole
                nn.init.orthogonal_(param)
            else:
                nn.init.zeros_(param)
        head = nn.Linear(actor_width, actions)
        nn.init.normal_(head.weight, std=0.01)
        nn.init.zeros_(head.bias)
        self.actor = nn.Sequential(
            orthogonal(nn.Linear(hidden, actor_width)), nn.LeakyReLU(),
            orthogonal(nn.Linear(actor_width, actor_width)), nn.LeakyReLU(), head)

    def initial_state(self, batch: int) -> Tensor | tuple[Tensor, Tensor]:
        zeros = self.actor[0].weight.new_zeros(batch, self.hidden)
        return (zeros, zeros.clone()) if self.kind == "lstm" else zeros

    def step(self, obs: Tensor, state):
        state = self.rnn(self.pre(obs), state)
        h = state[0] if self.kind == "lstm" else state
        return self.actor(h), state

    def logits(self, obs: Tensor) -> Tensor:
        state = self.initial_state(obs.shape[1])
        embed = self.pre(obs)
        hs = []
        for t in range(obs.shape[0]):
            state = self.rnn(embed[t], state)
            hs.append(state[0] if self.kind == "lstm" else state)
        return self.actor(torch.stack(hs))


Model = RecurrentSparseNet | RecurrentBaseline


def build_model(kind: str, obs_dim: int, actions: int, seed_gen: torch.Generator,
                shape: RecurrentShape | None = None, hidden: int = 256) -> Model:
    """The model of `kind` ('sparsenet', 'gru', 'lstm'), initialised from `seed_gen` only.

    torch.nn.init's initialisers draw from the global generator, so they run inside a
    forked RNG seeded from `seed_gen`: the caller's global state is untouched.
    """
    seed = int(torch.randint(0, 2**62, (1,), generator=seed_gen))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "sparsenet":
            shape = shape or RecurrentShape(obs_dim, actions)
            return RecurrentSparseNet(shape, seed_gen)
        return RecurrentBaseline(kind, obs_dim, actions, hidden)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
