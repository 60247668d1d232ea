"""E2 models and learners: SparseNet structure, backprop/sgprop edges, the adaptive λ."""

from __future__ import annotations

import math

import pytest
import torch

from learners.feedback import lambda_from_moments, lambda_mixture, optimal_lambda
from learners.sgprop import (
    Backprop,
    SGProp,
    layer_lambda,
    local_errors,
    parameters_of,
    propagate,
    reinforce_loss,
)
from learners.sparsenet import MLP, SparseNet, SparseNetShape, count_parameters

TINY = SparseNetShape(inputs=20, actions=4, layers=3, width=6, dim=3, fan_in=7, parents=2,
                      slots=2)


def gens(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def batch(model: SparseNet | MLP, b: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(100 + seed)
    s = model.head.shape[0] if isinstance(model, SparseNet) else model.weight0.shape[0]
    inputs = TINY.inputs if isinstance(model, SparseNet) else model.weight0.shape[1]
    images = torch.randn(s, b, inputs, generator=g)
    actions = torch.randint(TINY.actions, (s, b), generator=g)
    rewards = (torch.rand(s, b, generator=g) < 0.5).float()
    return images, actions, rewards


def reference_layer(model: SparseNet, layer: int, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    """A SparseNet layer in plain autograd ops, batch first (the module docstring's
    formulas, as the code computed them before the written-out backward pass):
    inputs (S, B, I) images or (S, B, N, K) h_{l−1}.

    Its sums run in another order than the layer's (two einsums and autograd's backward
    against one bmm over [keys; maps] and the closed form), so comparisons with it are
    float32 round-off apart and use `assert_close`'s float32 tolerance (rtol 1.3e-6,
    atol 1e-5: a few ulp of the O(1) values here), not bit equality."""
    keys, weights, biases = model.layer_parameters()[layer][1]
    wiring = getattr(model, f"wiring{layer}")
    x = torch.stack([seed_inputs[:, index].flatten(2) if layer else seed_inputs[:, index]
                     for seed_inputs, index in zip(inputs, wiring, strict=True)])
    scores = torch.einsum("sbnd,snmd->sbnm", x, keys) / math.sqrt(x.shape[-1])
    routing = torch.softmax(scores, -1)
    pre = torch.einsum("sbnd,snmkd->sbnmk", x, weights) + biases.unsqueeze(1)
    act = torch.tanh(pre)
    mixed = (routing.unsqueeze(-1) * act).sum(-2)
    out = torch.tanh(mixed) + inputs if layer > 0 else mixed
    return {"x": x, "scores": scores, "routing": routing, "pre": pre, "act": act,
            "mixed": mixed, "out": out}


def neuron_major(t: torch.Tensor) -> torch.Tensor:
    """(S, B, N, ...) → (S, N, ..., B), the layout the learners' feedback tensors use."""
    return t.movedim(1, -1).contiguous()


def randomise_sg(learner: SGProp, seed: int = 7) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in learner.sg.parameters():
            p.copy_(torch.randn(p.shape, generator=g))


def test_sparsenet_has_2818000_parameters_at_paper_sizes():
    shape = SparseNetShape(inputs=784, actions=9)
    assert shape.num_parameters() == 2_818_000
    assert count_parameters(SparseNet(shape, gens(0))) == 2_818_000


def test_mlp_of_width_745_is_parameter_matched_to_sparsenet():
    mlp = MLP(784, 9, width=745, layers=5, generators=gens(0))
    assert count_parameters(mlp) == 2_814_619
    assert abs(count_parameters(mlp) - 2_818_000) / 2_818_000 < 0.002


def test_sparsenet_layer_matches_a_per_neuron_reference():
    model = SparseNet(TINY, gens(3))
    images, _, _ = batch(model, b=4)
    trace = model(images)
    h = images[0]
    for layer, lt in enumerate(trace.layers):
        wiring = getattr(model, f"wiring{layer}")[0]
        outs = []
        for n in range(TINY.width):
            x = h[:, wiring[n]] if layer == 0 else h[:, wiring[n]].reshape(h.shape[0], -1)
            keys = getattr(model, f"keys{layer}")[0, n]
            weights = getattr(model, f"weights{layer}")[0, n]
            biases = getattr(model, f"biases{layer}")[0, n]
            w = torch.softmax(x @ keys.T / math.sqrt(x.shape[1]), -1)
            slots = torch.tanh(torch.einsum("bd,mkd->bmk", x, weights) + biases)
            out = (w.unsqueeze(-1) * slots).sum(1)
            outs.append(torch.tanh(out) + h[:, n] if layer > 0 else out)
        h = torch.stack(outs, 1)
        torch.testing.assert_close(lt.out[0], h, rtol=1e-5, atol=1e-6)
    logits = h.flatten(1) @ model.head[0].T / math.sqrt(TINY.width * TINY.dim)
    torch.testing.assert_close(trace.logits[0], logits, rtol=1e-5, atol=1e-6)


def test_sparsenet_neuron_reads_only_its_parents_and_itself():
    model = SparseNet(TINY, gens(1))
    images, _, _ = batch(model, b=1)
    state = model(images, by_hand=True).states[1]
    wiring = model.wiring1[0]
    touched: list[set[int]] = [set() for _ in range(TINY.width)]
    for unit in range(TINY.width):  # perturb one unit of h_0, see which neurons move
        inputs = state.inputs.clone()
        inputs[0, unit] += 0.5
        moved = (model.layer_state(1, inputs).out - state.out)[0].abs().sum((1, 2))
        for n in torch.nonzero(moved).flatten().tolist():
            touched[n].add(unit)
    for n in range(TINY.width):
        assert touched[n] <= set(wiring[n].tolist()) | {n}
        assert n in touched[n]
    assert all(len(set(row.tolist())) == TINY.fan_in for row in model.wiring0[0])
    assert all(len(set(row.tolist())) == TINY.parents for row in model.wiring1[0])


def test_backprop_gradients_match_finite_differences():
    model = SparseNet(TINY, gens(2)).double()
    images, actions, rewards = batch(model)
    images = images.double()

    def loss() -> torch.Tensor:
        return reinforce_loss(model(images).logits, actions, rewards.double())

    grads = Backprop(model).rule_gradients(images, actions, rewards.double())["bp"]
    g = torch.Generator().manual_seed(5)
    for p, grad in zip(parameters_of(model), grads, strict=True):
        for _ in range(2):
            i = int(torch.randint(p.numel(), (1,), generator=g))
            flat = p.data.view(-1)
            old = flat[i].item()
            flat[i] = old + 1e-6
            up = loss().item()
            flat[i] = old - 1e-6
            down = loss().item()
            flat[i] = old
            assert grad.reshape(-1)[i].item() == pytest.approx((up - down) / 2e-6, abs=1e-7)


def test_lambda_one_gives_exactly_backprops_parameter_gradients():
    model = SparseNet(TINY, gens(0, 1))
    images, actions, rewards = batch(model)
    expected = Backprop(model).rule_gradients(images, actions, rewards)["bp"]
    learner = SGProp(model, lambda_mixture(1.0), sg_lr=1e-3, generators=gens(0, 1))
    randomise_sg(learner)
    trace = learner.forward(images)
    head, top = learner.top(trace, actions, rewards)
    predicted = [learner.sg.predict(i, st) for i, st in enumerate(trace.states)]
    ones = [torch.ones(2, TINY.width, 1, 1) for _ in trace.states]  # adaptive-style tensor λ
    for lams in ([1.0] * TINY.layers, ones):
        got = [*propagate(model, trace, top, lams, predicted, params=True).grads, head]
        for a, b in zip(got, expected, strict=True):
            assert torch.equal(a, b)
    learner.backward(learner.forward(images), actions, rewards)
    for p, b in zip(parameters_of(model), expected, strict=True):
        assert torch.equal(p.grad, b)


def test_lambda_zero_hidden_gradients_are_purely_local_sg_gradients():
    model = SparseNet(TINY, gens(0))
    images, actions, rewards = batch(model)
    learner = SGProp(model, lambda_mixture(0.0), sg_lr=1e-2, generators=gens(0))
    randomise_sg(learner)
    before = [p.detach().clone() for p in learner.sg.parameters()]
    trace = learner.forward(images)
    learner.backward(trace, actions, rewards)
    # The SG update came first: the policy learnt from the *updated* predictor.
    assert any(not torch.equal(a, b) for a, b in zip(before, learner.sg.parameters(),
                                                      strict=True))
    for layer, (_, params) in enumerate(model.layer_parameters()[:-1]):
        state = trace.states[layer]
        local = learner.sg.predict(layer, state)  # mean-loss units, mixed as predicted
        inputs = state.inputs if layer == 0 else state.public().inputs
        out = reference_layer(model, layer, inputs)["out"]
        expected = torch.autograd.grad(out, params, grad_outputs=local.movedim(-1, 1))
        for p, e in zip(params, expected, strict=True):
            torch.testing.assert_close(p.grad, e)
    # ... and so they do not depend on the rewards at all; the head's does.
    flipped = learner.rule_gradients(images, actions, 1.0 - rewards)["sg"]
    same = learner.rule_gradients(images, actions, rewards)["sg"]
    for a, c in zip(flipped[:-1], same[:-1], strict=True):
        assert torch.equal(a, c)
    assert not torch.equal(flipped[-1], same[-1])


def test_sg_targets_bootstrap_from_the_layer_above_prediction():
    model = SparseNet(TINY, gens(4))
    images, actions, rewards = batch(model)
    learner = SGProp(model, lambda_mixture(0.0), sg_lr=1e-3, generators=gens(4))
    randomise_sg(learner)
    trace = learner.forward(images)
    _, top = learner.top(trace, actions, rewards)
    predicted = [learner.sg.predict(i, st) for i, st in enumerate(trace.states)]
    realised = propagate(model, trace, top, [0.0] * TINY.layers, predicted, False).realised
    assert torch.equal(realised[-1], top)  # the top layer's target is the exact g_L
    for layer in range(1, TINY.layers):
        inputs = trace.layers[layer].inputs.detach().requires_grad_(True)
        out = reference_layer(model, layer, inputs)["out"]
        (pulled,) = torch.autograd.grad(out, inputs,
                                        grad_outputs=predicted[layer].movedim(-1, 1))
        torch.testing.assert_close(realised[layer - 1], neuron_major(pulled))


def test_written_out_backward_and_local_errors_equal_autograd_of_the_plain_layer():
    model = SparseNet(TINY, gens(6))
    images, _, _ = batch(model)
    trace = model(images, by_hand=True)
    g = torch.Generator().manual_seed(4)
    for layer, state in enumerate(trace.states):
        lt = state.public()
        inputs = lt.inputs.detach().requires_grad_(layer > 0)
        reference = reference_layer(model, layer, inputs)
        for name in ("x", "scores", "routing", "pre", "act", "mixed", "out"):
            torch.testing.assert_close(getattr(lt, name), reference[name])
        feedback = torch.randn(state.out.shape, generator=g)
        grads, d_inputs = model.layer_backward(state, feedback, params=True, inputs=True)
        wrt = [*model.layer_parameters()[layer][1], *([inputs] if layer > 0 else []),
               reference["scores"], reference["pre"]]
        expected = torch.autograd.grad(reference["out"], wrt, feedback.movedim(-1, 1))
        for got, want in zip(grads, expected[:3], strict=True):
            torch.testing.assert_close(got, want)
        if layer > 0:
            torch.testing.assert_close(d_inputs, neuron_major(expected[3]))
        else:
            assert d_inputs is None
        # The batch-first closed form E3 uses (`local_errors`), on the same layer.
        d_scores, d_pre = local_errors(lt, layer, feedback.movedim(-1, 1))
        torch.testing.assert_close(d_scores, expected[-2])
        torch.testing.assert_close(d_pre, expected[-1])


def per_sample_contributions(model: SparseNet, lt, layer: int, feedback: torch.Tensor):
    """(B, N, P) per-sample parameter-gradient contributions of seed 0, materialised."""
    params = model.layer_parameters()[layer][1]
    out = reference_layer(model, layer, lt.inputs)["out"]
    rows = []
    for b in range(feedback.shape[1]):
        mask = torch.zeros_like(feedback)
        mask[:, b] = feedback[:, b]
        grads = torch.autograd.grad(out, params, grad_outputs=mask, retain_graph=True)
        rows.append(torch.cat([g[0].reshape(TINY.width, -1) for g in grads], 1))
    return torch.stack(rows)


def test_adaptive_lambda_moments_equal_optimal_lambda_on_materialised_gradients():
    model = SparseNet(TINY, gens(8)).double()
    images, _, _ = batch(model, b=6)
    trace = model(images.double(), by_hand=True)
    g = torch.Generator().manual_seed(2)
    previous = torch.full((1, TINY.width), 0.5, dtype=torch.float64)
    for layer, (state, lt) in enumerate(zip(trace.states, trace.layers, strict=True)):
        realised = torch.randn(lt.out.shape, generator=g, dtype=torch.float64)
        predicted = realised.mean(1, keepdim=True) + 0.3 * torch.randn(
            lt.out.shape, generator=g, dtype=torch.float64)
        # Normalised: unit vectors of the feedback on the slot mixture (after the residual's
        # tanh, the reference's order), expressed back as feedback on h_l for autograd.
        factor = (1 - torch.tanh(lt.mixed.detach()) ** 2) if layer > 0 else torch.ones(1)

        def unit_after_tanh(v: torch.Tensor, factor: torch.Tensor = factor) -> torch.Tensor:
            f = factor * v
            return f / f.norm(dim=-1, keepdim=True) / factor

        for normalise in (False, True):
            got = layer_lambda(state, neuron_major(realised), neuron_major(predicted),
                               previous, normalise)
            w = unit_after_tanh(realised) if normalise else realised
            wh = unit_after_tanh(predicted) if normalise else predicted
            expected = optimal_lambda(per_sample_contributions(model, lt, layer, w),
                                      per_sample_contributions(model, lt, layer, wh),
                                      previous[0])
            torch.testing.assert_close(got[0], expected, rtol=1e-9, atol=1e-9)
            assert ((got > 0) & (got < 1)).any()  # not all clipped: a real check


def test_adaptive_estimator_returns_the_analytic_optimum_on_a_constructed_batch():
    # One neuron, one parameter. BP samples w_b = 1 + ε_b, SG samples ŵ_b = 1 + β + η_b.
    w = torch.tensor([[[2.0]], [[0.0]], [[1.5]], [[0.5]]])  # w̄ = 1, Var_b(w) = 2/3
    what = torch.tensor([[[1.52]], [[1.48]], [[1.51]], [[1.49]]])  # biased, far less noisy
    u = what - w
    b = w.shape[0]
    var_ubar = u.var(0, unbiased=True).sum() / b  # Var(ū)
    cov = ((w - w.mean(0)) * (u - u.mean(0))).sum(0).sum() / (b - 1) / b  # Cov(w̄, ū)
    bias_sq = torch.clamp(u.mean(0).pow(2).sum() - var_ubar, min=0)
    # MSE(λ) of the mixed mean w̄ + (1−λ)ū if BP is unbiased; minimise on a dense grid.
    grid = torch.linspace(0, 1, 100_001, dtype=torch.float64)
    mse = 2 * (1 - grid) * cov.double() + (1 - grid) ** 2 * (var_ubar + bias_sq).double()
    best = grid[mse.argmin()]
    previous = torch.tensor([0.9])
    got = optimal_lambda(w, what, previous)
    assert got.item() == pytest.approx(best.item(), abs=1e-4)
    assert 0.05 < got.item() < 0.95  # an interior optimum, not a clip
    moments = (u.pow(2).sum(-1).mean(0), u.mean(0).pow(2).sum(-1),
               (w * u).sum(-1).mean(0), (w.mean(0) * u.mean(0)).sum(-1))
    assert torch.equal(lambda_from_moments(*moments, batch=b, previous=previous), got)


def test_adaptive_estimator_keeps_lambda_when_the_batch_is_uninformative():
    w = torch.ones(5, 3, 4)
    previous = torch.tensor([0.2, 0.7, 0.9])
    assert torch.equal(optimal_lambda(w, w.clone(), previous), previous)
    zeros = torch.zeros(3)
    assert torch.equal(lambda_from_moments(zeros, zeros, zeros, zeros, 5, previous), previous)


def test_adaptive_lambda_moves_towards_sg_when_feedback_is_noisy_and_sg_is_accurate():
    model = SparseNet(TINY, gens(9))
    images, _, _ = batch(model, b=64)
    state = model(images, by_hand=True).states[1]
    g = torch.Generator().manual_seed(3)
    mean = torch.randn(1, TINY.width, TINY.dim, 1, generator=g)
    noisy = mean + 3.0 * torch.randn(state.out.shape, generator=g)
    previous = torch.full((1, TINY.width), 0.9)
    lam_noisy = layer_lambda(state, noisy, mean.expand_as(noisy), previous, normalise=False)
    clean = mean + 0.01 * torch.randn(state.out.shape, generator=g)
    biased = mean.expand_as(clean) + 1.0
    lam_clean = layer_lambda(state, clean, biased, previous, normalise=False)
    assert lam_noisy.mean() < 0.3
    assert lam_clean.mean() > 0.9


def test_seed_slices_of_a_batched_model_are_independent():
    together = SparseNet(TINY, gens(0, 1, 2))
    alone = SparseNet(TINY, gens(1))
    for a, b in zip(together.parameters(), alone.parameters(), strict=True):
        assert torch.equal(a[1], b[0])
    images, actions, rewards = batch(together)
    grads = Backprop(together).rule_gradients(images, actions, rewards)["bp"]
    solo = Backprop(alone).rule_gradients(images[1:2], actions[1:2], rewards[1:2])["bp"]
    for a, b in zip(grads, solo, strict=True):
        assert torch.equal(a[1], b[0])
