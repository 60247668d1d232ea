"""E3 learners: λ = 1 is BPTT, λ = 0 is the prediction, the temporal λ schedule, adaptive λ
against explicit per-sample gradients, finite differences, and the models' structure."""

from __future__ import annotations

import torch
from torch import Tensor

from learners.feedback import adaptive_lambda, lambda_mixture, optimal_lambda
from learners.recurrent import (
    RecurrentBaseline,
    RecurrentShape,
    RecurrentSparseNet,
    build_model,
    count_parameters,
)
from learners.reinforce import Batch, policy_loss
from learners.sgprop_time import (
    BPTT,
    SGPropTime,
    per_step_lambda,
    propagate_time,
    temporal_schedule,
    unit,
)

torch.set_num_threads(1)
SHAPE = RecurrentShape(obs_dim=5, actions=3, neurons=8, dim=2, parents=2, input_neurons=3,
                       slots=2, embed=6)


def tiny(seed: int = 0) -> tuple[RecurrentSparseNet, Batch, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    model = build_model("sparsenet", 5, 3, gen, SHAPE).double()
    t, b = 6, 4
    lengths = torch.tensor([6, 3, 5, 1])
    valid = torch.arange(t).unsqueeze(1) < lengths
    batch = Batch(obs=torch.randn(t, b, 5, generator=gen, dtype=torch.float64),
                  actions=torch.randint(3, (t, b), generator=gen),
                  rewards=torch.zeros(t, b), valid=valid, success=torch.zeros(b, dtype=bool))
    advantages = torch.randn(t, b, generator=gen, dtype=torch.float64) * valid
    return model, batch, advantages


def randomise_sg(learner: SGPropTime, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in learner.sg.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype))


def close(a: list[Tensor], b: list[Tensor], tol: float = 1e-11) -> None:
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=tol, atol=tol)


def test_sgprop_with_lambda_one_is_bptt_even_with_a_nonzero_predictor() -> None:
    model, batch, adv = tiny()
    bptt = BPTT(model, 0.01).gradients(batch, adv)[0]
    learner = SGPropTime(model, adaptive_lambda(1.0), 1e-5, 0.01, "parents")
    randomise_sg(learner)
    rules = learner.rule_gradients(batch, adv)
    close(rules["bp"], bptt)
    close(rules["mix"], bptt)  # λ = 1 tensor: the schedule keeps 1 and mix gives 1·g + 0·ĝ
    assert max((x - y).abs().max().item() for x, y in zip(rules["sg"], bptt, strict=True)) > 1e-3
    learner.backward(batch, adv)
    close([p.grad for p in model.parameters()], bptt)


def test_fixed_lambda_one_rule_never_builds_a_predictor_path() -> None:
    model, batch, adv = tiny()
    learner = SGPropTime(model, lambda_mixture(1.0), 1e-5, 0.01, "parents")
    stats = learner.backward(batch, adv)
    assert "sg_loss" not in stats
    close([p.grad for p in model.parameters()], BPTT(model, 0.01).gradients(batch, adv)[0])


def test_lambda_zero_cell_gradient_is_the_predictions_vjp_by_finite_differences() -> None:
    model, batch, adv = tiny()
    learner = SGPropTime(model, adaptive_lambda(1.0), 1e-5, 0.01, "none")
    randomise_sg(learner)
    grads = dict(zip(model.parameters(), learner.rule_gradients(batch, adv)["sg"], strict=True))
    trace = model(batch.obs, cut=True)
    n = batch.valid.sum().double()
    pred = learner.predictions(trace) / n
    inputs = [(st.prev.detach(), st.embed.detach()) for st in trace.steps]

    def objective() -> float:  # Σ_t ⟨ĝ_t, h_t(θ)⟩ with every step's inputs held fixed
        with torch.no_grad():
            return sum(float((model.cell(p, e).out * pred[t]).sum())
                       for t, (p, e) in enumerate(inputs))

    gen = torch.Generator().manual_seed(3)
    eps = 1e-6
    for param in model.cell_parameters():
        direction = torch.randn(param.shape, generator=gen, dtype=param.dtype)
        with torch.no_grad():
            param += eps * direction
            up = objective()
            param -= 2 * eps * direction
            down = objective()
            param += eps * direction
        fd = (up - down) / (2 * eps)
        assert abs(fd - float((grads[param] * direction).sum())) < 1e-7 * max(1.0, abs(fd))


def test_bptt_gradient_matches_finite_differences() -> None:
    model, batch, adv = tiny()
    grads = BPTT(model, 0.01).gradients(batch, adv)[0]
    gen = torch.Generator().manual_seed(4)
    dirs = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in model.parameters()]

    def loss() -> float:
        with torch.no_grad():
            return float(policy_loss(model.logits(batch.obs), batch.actions, adv, batch.valid,
                                     0.01)[0])

    eps = 1e-6
    with torch.no_grad():
        for p, d in zip(model.parameters(), dirs, strict=True):
            p += eps * d
        up = loss()
        for p, d in zip(model.parameters(), dirs, strict=True):
            p -= 2 * eps * d
        down = loss()
    analytic = sum(float((g * d).sum()) for g, d in zip(grads, dirs, strict=True))
    assert abs((up - down) / (2 * eps) - analytic) < 1e-7


def test_temporal_schedule_raises_lambda_toward_one_at_earlier_steps() -> None:
    gen = torch.Generator().manual_seed(0)
    lam = torch.rand(8, generator=gen, dtype=torch.float64)
    wiring = torch.rand(8, 8, generator=gen).argsort(-1)[:, :3]
    sched = temporal_schedule(lam, wiring, 6, "parents")
    assert torch.equal(sched[0], lam)
    assert bool((sched[1:] >= sched[:-1] - 1e-15).all()) and bool((sched <= 1).all())
    assert bool((sched[-1] > lam).all())
    share = ((1 - lam)[wiring]).mean(-1)  # one step back: the parents' own (1 − λ)
    torch.testing.assert_close(sched[1], lam + (1 - lam) * share)
    share2 = ((1 - lam) + lam * share)[wiring].mean(-1)
    torch.testing.assert_close(sched[2], lam + (1 - lam) * share2)
    ones = torch.ones(8, dtype=torch.float64)
    assert torch.equal(temporal_schedule(ones, wiring, 6, "parents"), ones.expand(6, 8))
    assert torch.equal(temporal_schedule(lam, wiring, 4, "none"), lam.expand(4, 8))


def test_per_step_lambda_counts_back_from_each_episodes_end() -> None:
    sched = torch.arange(5, dtype=torch.float64).unsqueeze(1).expand(5, 2)  # λ^(k) = k
    valid = torch.arange(5).unsqueeze(1) < torch.tensor([5, 2])
    lam = per_step_lambda(sched, valid)[..., 0, 0]
    assert lam[:, 0].tolist() == [4, 3, 2, 1, 0]
    assert lam[:2, 1].tolist() == [1, 0]


def test_adaptive_lambda_equals_the_estimate_from_explicit_per_sample_gradients() -> None:
    model, batch, _ = tiny()
    learner = SGPropTime(model, adaptive_lambda(1.0), 1e-5, 0.01, "parents")
    trace = model(batch.obs, cut=True)
    gen = torch.Generator().manual_seed(5)
    t, b, n, k = batch.obs.shape[0], batch.obs.shape[1], SHAPE.neurons, SHAPE.dim
    realised = torch.randn(t, b, n, k, generator=gen, dtype=torch.float64)
    predicted = 0.7 * realised + 0.5 * torch.randn(t, b, n, k, generator=gen,
                                                    dtype=torch.float64)
    fast = learner.batch_lambda(trace, realised, predicted, batch.valid)

    def per_neuron(step: int, item: int, feedback: Tensor) -> Tensor:
        st = trace.steps[step]
        grads = torch.autograd.grad(st.out[item], model.cell_parameters(),
                                    grad_outputs=feedback, retain_graph=True)
        keys_p, keys_e, weights_p, weights_e, biases = grads
        ni = SHAPE.input_neurons
        e_part = torch.cat([keys_e.flatten(1), weights_e.flatten(1)], 1)
        e_part = torch.cat([e_part, e_part.new_zeros(n - ni, e_part.shape[1])])
        return torch.cat([keys_p.flatten(1), weights_p.flatten(1), biases.flatten(1),
                          e_part], 1)  # (N, params of one neuron)

    w_rows, p_rows = [], []
    for step, item in batch.valid.nonzero().tolist():
        w_rows.append(per_neuron(step, item, unit(realised[step, item])))
        p_rows.append(per_neuron(step, item, unit(predicted[step, item])))
    slow = optimal_lambda(torch.stack(w_rows), torch.stack(p_rows), learner.lam)
    torch.testing.assert_close(fast, slow, rtol=1e-9, atol=1e-12)
    assert bool(((slow > 0) & (slow < 1)).any())


def test_sg_update_fits_its_bootstrapped_targets() -> None:
    model, batch, adv = tiny()
    learner = SGPropTime(model, adaptive_lambda(1.0), 5e-2, 0.01, "parents")
    trace = model(batch.obs, cut=True)
    assert float(learner.predictions(trace).abs().max()) == 0.0  # zero-initialised
    _, direct, _ = learner.top(trace, batch, adv)
    lam = learner.step_lambda(batch.valid)
    # λ = 1: the targets are BPTT's own g_t, so the first loss (zero predictions) is their
    # mean square over valid steps, neurons and dims.
    n = batch.valid.sum()
    targets = propagate_time(model, trace, direct, 1.0, None, params=False).realised
    first = float(((n * targets) ** 2)[batch.valid].mean())
    losses = [float(learner.update_synthetic(trace, direct, lam, batch.valid))
              for _ in range(150)]
    assert abs(losses[0] - first) < 1e-12 * max(1.0, first)
    # Not all of g_t is predictable from the local input (the future's actions and returns
    # are not in it), so the fit plateaus: it must still remove a good part of the loss.
    assert losses[-1] < 0.7 * losses[0] and losses[-1] <= min(losses[:10])


def test_adaptive_lambda_moves_from_one_and_stays_in_range() -> None:
    model, batch, adv = tiny()
    learner = SGPropTime(model, adaptive_lambda(1.0, 0.5), 1e-2, 0.01, "parents")
    for _ in range(4):
        learner.backward(batch, adv)
    stats = learner.lambda_stats()
    assert 0 <= float(stats["lambda_min"]) <= float(stats["lambda_p25"])
    assert float(stats["lambda_p75"]) <= float(stats["lambda_max"]) <= 1
    assert float(stats["lambda_mean"]) < 1.0


def test_only_input_neurons_read_the_observation() -> None:
    model, batch, _ = tiny()
    obs = batch.obs.clone()
    base = model(obs).steps[0].out
    obs[0] += 1.0
    moved = (model(obs).steps[0].out - base).abs().amax((0, 2))
    assert bool((moved[:SHAPE.input_neurons] > 0).all())
    assert bool((moved[SHAPE.input_neurons:] == 0).all())


def test_step_by_step_logits_match_the_sequence_forward() -> None:
    gen = torch.Generator().manual_seed(0)
    obs = torch.randn(5, 3, 56, generator=gen)
    for kind in ("sparsenet", "gru", "lstm"):
        model = build_model(kind, 56, 4, torch.Generator().manual_seed(1))
        state = model.initial_state(3)
        steps = []
        for t in range(5):
            logits, state = model.step(obs[t], state)
            steps.append(logits)
        torch.testing.assert_close(torch.stack(steps), model.logits(obs), rtol=1e-5, atol=1e-6)


def test_paper_sizes() -> None:
    gen = torch.Generator().manual_seed(0)
    sparse = build_model("sparsenet", 56, 4, gen)
    assert isinstance(sparse, RecurrentSparseNet)
    s = sparse.shape
    assert (s.neurons, s.dim, s.parents, s.input_neurons, s.slots) == (128, 6, 6, 16, 6)
    assert sparse.wiring.shape == (128, 6)
    assert all(len(set(row.tolist())) == 6 for row in sparse.wiring)
    for kind, cell in (("gru", torch.nn.GRUCell), ("lstm", torch.nn.LSTMCell)):
        model = build_model(kind, 56, 4, gen)
        assert isinstance(model, RecurrentBaseline) and isinstance(model.rnn, cell)
        assert model.rnn.hidden_size == 256
        widths = [m.out_features for m in model.actor if isinstance(m, torch.nn.Linear)]
        assert widths == [128, 128, 4]
    assert count_parameters(sparse) == 331288


def test_model_init_is_seeded_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(7)
    expected = torch.rand(1)
    torch.manual_seed(7)
    a = build_model("gru", 56, 4, torch.Generator().manual_seed(2))
    assert torch.equal(torch.rand(1), expected)
    b = build_model("gru", 56, 4, torch.Generator().manual_seed(2))
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
