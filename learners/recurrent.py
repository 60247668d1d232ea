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

Layout and speed (SparseNet). The cell runs neuron-major with the batch last: h_t is
(N, K, B), a neuron's local input (N, P·K, B) is one `index_select` of whole rows, and each
neuron's routing keys and slot weights are one fused matrix (N, Q, P·K), Q = M + M·K, so a
step is one batched GEMM (`torch.baddbmm`) plus the slot nonlinearities. Everything that
does not depend on the recurrence is computed for all steps at once before the loop: the
preprocessor and the input neurons' e_t terms (one GEMM, `drive`), and after it the
actor. The backward pass through time (`reverse`) is the cell's closed-form derivative,
two small GEMMs (into h_{t−1}, and accumulating the fused weights' gradient) and one
`index_add_` per step. BPTT reaches it through autograd (`Recurrence`), sgprop
through time (learners/sgprop_time.py) calls it with its mixing. `cell` is the same step
written plainly (batch first), kept as the readable definition the tests check the fast
path against. Per-step tensors and the sequence tensors built from them: `Tape`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
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
    """One step of the plain `RecurrentSparseNet.cell` (B batch, N neurons)."""

    prev: Tensor  # (B, N, K) h_{t−1}
    embed: Tensor  # (B, E) e_t
    x: Tensor  # (B, N, P·K) the parents' states
    scores: Tensor  # (B, N, M)
    routing: Tensor  # (B, N, M)
    pre: Tensor  # (B, N, M, K)
    act: Tensor  # (B, N, M, K)
    out: Tensor  # (B, N, K) h_t


@dataclass
class Tape:
    """A sequence through the fast SparseNet forward (T steps, B batch; Q = M + M·K).

    `embed`, `weights`, `bias` and `drive` carry their graphs to the parameters (when built
    with grad); the per-step lists and `states` are plain values (no graph).
    """

    embed: Tensor  # (T, B, E) e_t
    weights: Tensor  # (N, Q, P·K) fused routing keys and slot weights on the parents' states
    bias: Tensor  # (N, Q) 0 for the routing scores, the slot biases
    drive: Tensor  # (I, Q, T·B) the input neurons' e_t terms, every step at once
    x: list[Tensor] = field(default_factory=list)  # per step (N, P·K, B) parents' h_{t−1}
    routing: list[Tensor] = field(default_factory=list)  # per step (N, M, B)
    act: list[Tensor] = field(default_factory=list)  # per step (N, M, K, B) tanh(pre)
    states: Tensor | None = None  # (T, N, K, B) h_t
    stacked: dict[str, Tensor] = field(default_factory=dict)  # `sequence`'s, built once

    @property
    def steps(self) -> int:
        return len(self.x)

    def sequence(self, name: str) -> Tensor:
        """A per-step list ('x', 'routing', 'act') stacked with time next to the batch,
        (N, ..., T·B), every sample of a neuron contiguous (kept: several users)."""
        if name not in self.stacked:
            self.stacked[name] = torch.stack(getattr(self, name), -2).flatten(-2)
        return self.stacked[name]


@dataclass
class Recording:
    """The cell's per-step values as a rollout computed them (`RecurrentSparseNet.step`),
    for the update on the same batch to reuse instead of unrolling the cell again. Used
    only while every parameter is the one it was recorded with (`key`) and the batch
    size matches; otherwise ignored."""

    key: tuple
    x: list[Tensor] = field(default_factory=list)
    routing: list[Tensor] = field(default_factory=list)
    act: list[Tensor] = field(default_factory=list)
    states: list[Tensor] = field(default_factory=list)


def slot_backward(slopes: Tensor, routing: Tensor, act: Tensor, d_out: Tensor,
                  scale: float) -> Tensor:
    """The cell's derivative from h_t back to its fused pre-activations z = [scores·√D ;
    pre]: slopes w_m (1 − tanh²) and act (..., N, M, K, S), routing (..., N, M, S), d_out
    (..., N, K, S) → (..., N, Q, S) (S: any samples; leading dims broadcast)."""
    d_mk = d_out.unsqueeze(-3)
    shape = torch.broadcast_shapes(d_mk.shape, slopes.shape)
    out = d_out.new_empty(*shape[:-3], shape[-3] * (1 + shape[-2]), shape[-1])
    m = routing.shape[-2]
    torch.mul(d_mk, slopes, out=out[..., m:, :].unflatten(-2, shape[-3:-1]))
    d_routing = (act * d_mk).sum(-2)
    d_scores = d_routing.sub_((routing * d_routing).sum(-2, keepdim=True)).mul_(routing)
    torch.mul(d_scores, scale, out=out[..., :m, :])
    return out


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
        self.scale = 1.0 / math.sqrt(shape.input_dim)  # the routing scores' 1/√D
        self._children: Tensor | None = None  # `children_index`
        self._fused_key: tuple | None = None  # `fused` without grad: what the cache was built on
        self._fused_cache: tuple[tuple[Tensor, Tensor, Tensor], Tensor] | None = None

    def cell_parameters(self) -> list[nn.Parameter]:
        return [self.keys_p, self.keys_e, self.weights_p, self.weights_e, self.biases]

    def actor_parameters(self) -> list[nn.Parameter]:
        return [self.act_keys, self.act_weights, self.act_biases]

    # -- the plain definition (batch first, one step) -------------------------------------
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

    # -- the fast path ----------------------------------------------------------------------
    def fused(self) -> tuple[Tensor, Tensor, Tensor]:
        """(weights (N, Q, P·K), bias (N, Q), embed weights (I·Q, E)) of `Tape`. Without
        grad (rollouts) built once per parameter update: kept while no parameter of the
        cell or actor has been written to (their version counters) or moved."""
        if torch.is_grad_enabled():
            return self._fuse()
        return self._without_grad()[0]

    def parameter_key(self) -> tuple | None:
        """Changes whenever a parameter is written to in place (version counters, as
        optimizers do) or replaced or moved (storage, dtype); None where the parameters
        have no storage of their own (under torch.func transforms): nothing is cached."""
        try:
            return tuple((p._version, p.data_ptr(), p.dtype) for p in self.parameters())
        except RuntimeError:  # functorch's wrapped tensors have no data pointer
            return None

    def _without_grad(self) -> tuple[tuple[Tensor, Tensor, Tensor], Tensor]:
        key = self.parameter_key()
        if key is None:
            return self._fuse(), self.fused_actor()
        if self._fused_key != key:
            self._fused_cache = (self._fuse(), self.fused_actor())
            self._fused_key = key
        return self._fused_cache

    def _fuse(self) -> tuple[Tensor, Tensor, Tensor]:
        s = self.shape
        n, ni, mk = s.neurons, s.input_neurons, s.slots * s.dim
        weights = torch.cat([self.keys_p, self.weights_p.reshape(n, mk, s.parent_dim)], 1)
        bias = torch.cat([self.biases.new_zeros(n, s.slots), self.biases.reshape(n, mk)], 1)
        embed_w = torch.cat([self.keys_e, self.weights_e.reshape(ni, mk, s.embed)], 1)
        return weights, bias, embed_w.reshape(-1, s.embed)

    def drive(self, embed: Tensor, embed_w: Tensor) -> Tensor:
        """The input neurons' e_t terms of every step at once: embed (..., E) → (I, Q, S)
        with S the flattened leading dims of `embed`."""
        flat = embed.reshape(-1, embed.shape[-1])
        return torch.mm(embed_w, flat.t()).view(self.shape.input_neurons, -1, flat.shape[0])

    def advance(self, h: Tensor, weights: Tensor, bias: Tensor, drive: Tensor,
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One step, no graph: h_{t−1} (N, K, B), drive (I, Q, B) → (x, routing, act, h_t)."""
        s = self.shape
        n, b = s.neurons, h.shape[-1]
        x = h.index_select(0, self.wiring.reshape(-1)).view(n, s.parent_dim, b)
        z = torch.baddbmm(bias.unsqueeze(-1), weights, x)
        z[: s.input_neurons] += drive
        routing = torch.softmax(z[:, : s.slots] * self.scale, 1)
        act = torch.tanh(z[:, s.slots:]).view(n, s.slots, s.dim, b)
        return x, routing, act, (routing.unsqueeze(2) * act).sum(1)

    def tape(self, obs: Tensor, recording: Recording | None = None) -> Tape:
        """obs (T, B, O) → Tape: the unrolled cell (no graph), with the fused parameters and
        e_t terms holding their graphs if grad is enabled. The first steps come from
        `recording` where it is valid (a rollout of these observations)."""
        embed = self.pre(obs)
        weights, bias, embed_w = self.fused()
        tape = Tape(embed, weights, bias, self.drive(embed, embed_w))
        with torch.no_grad():
            tape.states = self.unroll(tape, obs.shape[1], recording)
        return tape

    def unroll(self, tape: Tape, batch: int, recording: Recording | None) -> Tensor:
        """Fill the tape's per-step lists (no graph) and return the states (T, N, K, B):
        the steps `recording` holds (where valid), then the cell from there on."""
        weights, bias, drive = tape.weights.detach(), tape.bias.detach(), tape.drive.detach()
        steps = drive.shape[-1] // batch
        reused = 0
        if (recording is not None and recording.key is not None
                and recording.key == self.parameter_key()
                and recording.states and recording.states[0].shape[-1] == batch):
            reused = min(len(recording.states), steps)
            tape.x += recording.x[:reused]
            tape.routing += recording.routing[:reused]
            tape.act += recording.act[:reused]
        states = recording.states[:reused] if recording is not None else []
        per_step = drive.view(drive.shape[0], drive.shape[1], steps, batch)
        h = states[-1] if states else self.initial_state(batch)
        for t in range(reused, steps):
            x, routing, act, h = self.advance(h, weights, bias, per_step[:, :, t])
            tape.x.append(x)
            tape.routing.append(routing)
            tape.act.append(act)
            states.append(h)
        return torch.stack(states)

    def reverse(self, tape: Tape, direct: Tensor,
                mixer: Callable[[int, Tensor], Tensor] | None = None,
                observe: Callable[[int, Tensor, Tensor], None] | None = None,
                ) -> tuple[tuple[Tensor, Tensor, Tensor], list[Tensor], list[Tensor]]:
        """Backwards in time from d_t = ∂loss/∂h_t through the actor at t only (N, K, T, B):
        g_t = d_t + (∂h_{t+1}/∂h_t)^T g̃_{t+1}, g̃_t = mixer(t, g_t) (None: g_t itself);
        `observe(t, g_t, slopes_t)` sees each step while its tensors are in cache.

        Returns ((weights, bias, drive) gradients: Σ over (t, b) of g̃_t pulled back through
        the cell, as `Tape` holds them), [g_t], [g̃_t] (lists in time order). The sums
        over samples are accumulated step by step (one small GEMM each)."""
        s = self.shape
        n, b, ni = s.neurons, direct.shape[-1], s.input_neurons
        steps = tape.steps
        back = tape.weights.detach().transpose(1, 2)  # (N, P·K, Q)
        children = self.children_index()
        d_weights = back.new_zeros(back.shape).transpose(1, 2)  # (N, Q, P·K), like weights
        d_bias = direct.new_zeros(tape.bias.shape)
        d_drive: list[Tensor] = [direct.new_empty(0)] * steps
        realised: list[Tensor] = [direct.new_empty(0)] * steps
        mixed: list[Tensor] = [direct.new_empty(0)] * steps
        carry: Tensor | None = None
        for t in reversed(range(steps)):
            g = direct[:, :, t] if carry is None else direct[:, :, t] + carry
            realised[t] = g
            m = g if mixer is None else mixer(t, g)
            mixed[t] = m
            slopes = self.slopes(tape, t)
            d_z = slot_backward(slopes, tape.routing[t], tape.act[t], m, self.scale)
            if observe is not None:
                observe(t, g, slopes)
            d_weights.baddbmm_(d_z, tape.x[t].transpose(1, 2))
            d_bias += d_z.sum(-1)
            d_drive[t] = d_z[:ni]
            if t > 0:
                d_x = torch.bmm(back, d_z).view(n * s.parents, s.dim, b)
                # Each neuron sums what its children send back: a gather and a sum, the
                # same order on every device (CUDA's index_add_ is not deterministic).
                d_x = torch.cat([d_x, d_x.new_zeros(1, s.dim, b)])
                carry = d_x.index_select(0, children).view(n, -1, s.dim, b).sum(1)
        drive = torch.stack(d_drive, -2).flatten(-2)  # (I, Q, T·B)
        return (d_weights, d_bias, drive), realised, mixed

    def children_index(self) -> Tensor:
        """(N·C,): for each neuron, the positions in the flat (N·P) wiring that read it (its
        children), padded to the most children C with N·P (a zero row); built once."""
        wiring = self.wiring
        if self._children is None or self._children.device != wiring.device:
            flat = wiring.reshape(-1).cpu()
            counts = torch.bincount(flat, minlength=self.shape.neurons)
            order = torch.argsort(flat, stable=True)
            table = torch.full((self.shape.neurons, int(counts.max())), flat.numel())
            mine = torch.arange(table.shape[1]) < counts.unsqueeze(1)
            table[mine] = order
            self._children = table.reshape(-1).to(wiring.device)
        return self._children

    def slopes(self, tape: Tape, t: int) -> Tensor:
        """w_m (1 − tanh²(pre)) at step t, (N, M, K, B) (`slot_backward`)."""
        act = tape.act[t]
        return tape.routing[t].unsqueeze(2) * (1.0 - act * act)

    def fused_actor(self) -> Tensor:
        """(A·2M, N·K): per action its M routing keys, then its M slot weights."""
        a, m = self.act_biases.shape
        return torch.cat([self.act_keys, self.act_weights], 1).reshape(2 * a * m, -1)

    def actor(self, states: Tensor) -> Tensor:
        """states (..., N·K) flat → logits (..., A): one GEMM for every slot's key and
        weight row."""
        a, m = self.act_biases.shape
        fused = self.fused_actor() if torch.is_grad_enabled() else self._without_grad()[1]
        both = torch.matmul(states, fused.t()).unflatten(-1, (a, 2 * m))
        scale = 1.0 / math.sqrt(states.shape[-1])
        routing = torch.softmax(both[..., :m] * scale, -1)
        return (routing * (both[..., m:] + self.act_biases)).sum(-1)

    @staticmethod
    def flat_states(states: Tensor) -> Tensor:
        """(T, N, K, B) → (T, B, N·K), what the actor reads."""
        return states.permute(0, 3, 1, 2).flatten(-2)

    def initial_state(self, batch: int) -> Tensor:
        return self.biases.new_zeros(self.shape.neurons, self.shape.dim, batch)

    def recording(self) -> Recording:
        """An empty `Recording` for a rollout with the current parameters."""
        return Recording(self.parameter_key())

    def step(self, obs: Tensor, state: Tensor,
             recording: Recording | None = None) -> tuple[Tensor, Tensor]:
        """One environment step: obs (B, O) → (logits (B, A), new state (N, K, B)); the
        cell's values appended to `recording` if given."""
        weights, bias, embed_w = self.fused()
        x, routing, act, h = self.advance(state, weights, bias,
                                          self.drive(self.pre(obs), embed_w))
        if recording is not None:
            recording.x.append(x)
            recording.routing.append(routing)
            recording.act.append(act)
            recording.states.append(h)
        return self.actor(h.permute(2, 0, 1).flatten(-2)), h

    def logits(self, obs: Tensor, recording: Recording | None = None) -> Tensor:
        """obs (T, B, O) → logits (T, B, A), differentiable (BPTT through `Recurrence`);
        the cell's forward taken from `recording` where valid."""
        embed = self.pre(obs)
        weights, bias, embed_w = self.fused()
        states = Recurrence.apply(self, weights, bias, self.drive(embed, embed_w), obs,
                                  recording)
        return self.actor(self.flat_states(states))


class Recurrence(torch.autograd.Function):
    """The SparseNet's unrolled cell as one autograd node: forward `RecurrentSparseNet.tape`'s
    loop, backward `reverse` (BPTT)."""

    @staticmethod
    def forward(ctx, model: RecurrentSparseNet, weights: Tensor, bias: Tensor, drive: Tensor,
                obs: Tensor, recording: Recording | None) -> Tensor:
        tape = Tape(obs.new_empty(0), weights, bias, drive)
        states = model.unroll(tape, obs.shape[1], recording)
        ctx.model, ctx.tape = model, tape
        return states

    @staticmethod
    def backward(ctx, d_states: Tensor):
        model, tape = ctx.model, ctx.tape
        d_weights, d_bias, d_drive = model.reverse(tape, d_states.permute(1, 2, 0, 3))[0]
        return None, d_weights, d_bias, d_drive, None, None


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

    def logits(self, obs: Tensor, recording: None = None) -> Tensor:
        """obs (T, B, O) → logits (T, B, A) (`recording`: the SparseNet's; none here)."""
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
