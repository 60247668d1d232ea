"""E2 task: data, rewards, evaluation, exact gradients, grad-MSE metrics, seeds, config."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from learners.sgprop import parameters_of, reinforce_loss
from orchestrator.spec import SpecError, parse_spec
from tasks import REGISTRY, ConfigError
from tasks import datasets as ds
from tasks.bandit import BanditBlock, BanditConfig, expected_rewards, run_block
from tasks.sampling import sample_actions

SMALL = dict(width=8, dim=3, fan_in=10, parents=2, slots=2, layers=3, steps=12,
             eval_points=3, batch_size=16, eval_size=200)


def test_bandit_task_is_registered_with_its_report():
    assert REGISTRY["bandit"].config_type is BanditConfig
    assert REGISTRY["bandit"].report == "analysis.bandit:report"


def test_digits_without_class_2_has_nine_actions_and_no_twos():
    data, kept = ds.load_digits().without_classes((2,))
    full = ds.load_digits()
    assert kept == [0, 1, 3, 4, 5, 6, 7, 8, 9]
    assert int(data.train_y.max()) == 8 and int(data.train_y.min()) == 0
    assert len(data.train_y) == int((full.train_y != 2).sum())
    assert len(data.test_y) == int((full.test_y != 2).sum())
    assert abs(float(full.train_x.mean())) < 1e-5 and abs(float(full.train_x.std()) - 1) < 1e-4


def write_fake_mnist(folder, n_train=30, n_test=12, gz=False):
    rng = np.random.default_rng(0)
    suffix = ".gz" if gz else ""
    ds.write_idx(folder / f"train-images-idx3-ubyte{suffix}",
                 rng.integers(0, 256, (n_train, 28, 28)))
    ds.write_idx(folder / f"train-labels-idx1-ubyte{suffix}", np.arange(n_train) % 10)
    ds.write_idx(folder / f"t10k-images-idx3-ubyte{suffix}",
                 rng.integers(0, 256, (n_test, 28, 28)))
    ds.write_idx(folder / f"t10k-labels-idx1-ubyte{suffix}", np.arange(n_test) % 10)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_loader_reads_and_normalises_like_the_paper(tmp_path, gz):
    write_fake_mnist(tmp_path, gz=gz)
    data = ds.load_mnist(tmp_path)
    assert data.train_x.shape == (30, 784) and data.test_x.shape == (12, 784)
    raw = ds.read_idx(tmp_path / f"train-images-idx3-ubyte{'.gz' if gz else ''}")
    expected = (raw[3].reshape(-1) / 255.0 - 0.1307) / 0.3081
    np.testing.assert_allclose(data.train_x[3].numpy(), expected, rtol=1e-6, atol=1e-6)
    assert data.train_y.tolist() == [i % 10 for i in range(30)]


def test_mnist_missing_or_corrupt_files_are_one_line_errors(tmp_path):
    with pytest.raises(ds.DatasetError, match="does not exist"):
        ds.load_mnist(tmp_path / "nowhere")
    write_fake_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(ds.DatasetError, match="t10k-labels-idx1-ubyte"):
        ds.load_mnist(tmp_path)
    write_fake_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(ds.DatasetError, match="expected .* data bytes") as err:
        ds.load_mnist(tmp_path)
    assert "\n" not in str(err.value)
    path.write_bytes(b"\x01\x02\x03")
    with pytest.raises(ds.DatasetError, match="not an IDX file"):
        ds.read_idx(path)


def test_mnist_config_needs_an_existing_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SGSWEEP_MNIST_DIR", str(tmp_path / "not-installed"))
    with pytest.raises(ConfigError) as err:
        BanditConfig(dataset="mnist").validate()
    assert err.value.field == "data_dir" and "make install" in str(err.value)
    with pytest.raises(ConfigError) as err:
        BanditConfig(dataset="mnist", data_dir=str(tmp_path / "missing")).validate()
    assert err.value.field == "data_dir"


def test_bandit_trains_end_to_end_on_idx_files(tmp_path):
    write_fake_mnist(tmp_path)
    cfg = BanditConfig(dataset="mnist", data_dir=str(tmp_path), **{**SMALL, "fan_in": 50})
    (log,) = run_block(cfg, [0])
    assert 0.0 <= log.final()["eval_reward"] <= 1.0


@pytest.mark.parametrize("field,value", [
    ("p_flip", 1.5), ("steps", 0), ("batch_size", 1), ("lr", -1.0), ("sg_lr", 0.0),
    ("lam", 1.2), ("lam_momentum", 1.0), ("fan_in", 65), ("parents", 9), ("eval_points", 13),
    ("mse_every", -1), ("mse_batches", 1), ("exclude", (2, 2)), ("exclude", (11,)),
    ("width", 0), ("data_dir", "/tmp"),
])
def test_bad_config_values_name_the_field(field, value):
    with pytest.raises(ConfigError) as err:
        BanditConfig(**{**SMALL, field: value}).validate()
    assert err.value.field == field


def test_sgprop_on_an_mlp_is_a_config_error():
    with pytest.raises(ConfigError) as err:
        BanditConfig(learner="sgprop", model="mlp").validate()
    assert err.value.field == "learner"


def test_sweep_file_errors_name_the_bandit_field():
    raw = {"name": "x", "task": "bandit", "seeds": 1, "params": {"p_flip": 2.0}}
    with pytest.raises(SpecError, match="params.p_flip"):
        parse_spec(raw)
    raw = {"name": "x", "task": "bandit", "seeds": 1,
           "variants": [{"learner": "backprop", "lr": "1e-3"}, {"learner": "sgprop"}]}
    spec = parse_spec(raw)
    assert [c.policy_lr for c in spec.configs] == [1e-3, 5e-3]


def test_rewards_are_flipped_with_probability_p_flip():
    block = BanditBlock(BanditConfig(**{**SMALL, "p_flip": 0.3, "batch_size": 4000}), [0])
    images, labels = block.sample_batch(block.gens["train"])
    logits = torch.randn(1, 4000, block.actions)
    actions, rewards = block.act(logits, labels, block.gens["train"])
    correct = (actions == labels).float()
    assert abs(float((rewards != correct).float().mean()) - 0.3) < 0.03


def test_inverse_cdf_sampling_follows_the_policy():
    probs = torch.tensor([0.1, 0.6, 0.3]).expand(1, 30000, 3)
    uniforms = torch.rand(1, 30000, generator=torch.Generator().manual_seed(0))
    actions = sample_actions(probs, uniforms)
    freq = torch.bincount(actions.flatten(), minlength=3).float() / 30000
    torch.testing.assert_close(freq, torch.tensor([0.1, 0.6, 0.3]), atol=0.01, rtol=0)


def test_exact_gradient_equals_the_reinforce_gradient_summed_over_all_actions():
    block = BanditBlock(BanditConfig(**SMALL), [0, 1])
    exact = block.exact_gradient()
    # Score-function identity: Σ_a π(a|x) r̄(x,a) ∇log π(a|x) with π held fixed.
    n, a = block.train_x.shape[0], block.actions
    images = block.train_x.expand(2, -1, -1)
    logits = block.model.logits(images)
    weights = torch.softmax(logits, -1).detach() * expected_rewards(block.train_y, a, 0.4)
    actions = torch.arange(a).repeat(n).expand(2, -1)
    rewards = weights.reshape(2, -1) * a
    expanded = logits.repeat_interleave(a, dim=1)
    grads = torch.autograd.grad(reinforce_loss(expanded, actions, rewards),
                                parameters_of(block.model))
    for e, g in zip(exact, grads, strict=True):
        torch.testing.assert_close(e, g, rtol=1e-4, atol=1e-7)


def grad_metrics(cfg: BanditConfig, seeds=(0,)) -> dict[str, float]:
    block = BanditBlock(cfg, list(seeds))
    for _ in range(5):
        block.train_step()
    return {k: v[0].item() for k, v in block.grad_mse()[0].items()}


def test_grad_mse_decomposes_and_backprop_is_unbiased():
    cfg = BanditConfig(**{**SMALL, "mse_batches": 64, "learner": "sgprop"})
    m = grad_metrics(cfg)
    for rule in ("bp", "mix", "sg"):
        for group in ("l0", "l2", "head", "hidden", "all"):
            mse, b2, var = (m[f"grad_{s}/{rule}/{group}"] for s in ("mse", "bias2", "var"))
            assert mse == pytest.approx(b2 + var, rel=1e-4)
            assert -1.0 <= m[f"grad_cos/{rule}/{group}"] <= 1.0
    # For an unbiased estimator the squared bias of the mean of R draws is ≈ var / R.
    for group in ("hidden", "head"):
        assert m[f"grad_bias2/bp/{group}"] < 4 * m[f"grad_var/bp/{group}"] / 64
    assert m["grad_mse/bp/head"] == m["grad_mse/sg/head"]  # the head never uses SG
    assert m["grad_mse/bp/all"] == pytest.approx(
        m["grad_mse/bp/hidden"] + m["grad_mse/bp/head"], rel=1e-5)


@pytest.mark.parametrize("model", ["sparsenet", "mlp"])
def test_head_only_control_leaves_hidden_layers_at_their_init(model):
    block = BanditBlock(BanditConfig(**{**SMALL, "learner": "backprop", "model": model,
                                        "mlp_width": 8, "train_hidden": False}), [0])
    groups = block.model.layer_parameters()
    before = [p.detach().clone() for _, params in groups for p in params]
    for _ in range(3):
        block.train_step()
    after = [p.detach() for _, params in groups for p in params]
    n_head = len(groups[-1][1])
    assert all(torch.equal(a, b) for a, b in zip(before[:-n_head], after[:-n_head],
                                                 strict=True))
    assert not torch.equal(before[-1], after[-1])
    with pytest.raises(ConfigError, match="train_hidden"):
        BanditConfig(**{**SMALL, "learner": "sgprop", "train_hidden": False}).validate()


def test_update_stats_measure_the_steps_adam_update_against_the_exact_gradient():
    block = BanditBlock(BanditConfig(**{**SMALL, "learner": "backprop"}), [0])
    block.train_step()
    _, truth = block.grad_mse()
    params = parameters_of(block.model)
    before = [p.detach().clone() for p in params]
    block.train_step()
    stats = block.update_stats(before, truth)
    delta = torch.cat([(p.detach() - b).flatten() for p, b in zip(params, before, strict=True)])
    g = truth["all"][0]
    assert stats["update_norm/all"][0].item() == pytest.approx(delta.norm().item(), rel=1e-5)
    assert stats["update_gain/all"][0].item() == pytest.approx(-(delta @ g).item(), rel=1e-4)
    cos = -(delta @ g) / (delta.norm() * g.norm())
    assert stats["update_cos/all"][0].item() == pytest.approx(cos.item(), rel=1e-4)


def test_checkpoints_log_gradient_and_update_statistics_at_their_steps():
    (log,) = run_block(BanditConfig(**{**SMALL, "mse_every": 6, "mse_batches": 2}), [0])
    steps = {n: s for n, s in zip(log.names, log.steps, strict=True)}
    assert {s for n, s in zip(log.names, log.steps, strict=True)
            if n == "update_cos/hidden"} == {6, 12}
    assert steps["grad_mse/mix/l0"] == 12 and steps["update_norm/l0"] == 12


def test_grad_mse_of_the_mixture_equals_backprop_at_lambda_one():
    cfg = BanditConfig(**{**SMALL, "learner": "sgprop", "adaptive": False, "lam": 1.0})
    m = grad_metrics(cfg)
    assert m["grad_mse/mix/hidden"] == m["grad_mse/bp/hidden"]


@pytest.mark.parametrize("variant", [
    {"learner": "sgprop", "adaptive": True},
    {"learner": "sgprop", "adaptive": False, "lam": 0.5},
    {"learner": "backprop", "model": "mlp", "mlp_width": 24},
])
def test_a_seed_gives_the_same_metrics_alone_and_in_a_block(variant):
    cfg = BanditConfig(**{**SMALL, "mse_every": 6, "mse_batches": 2, **variant})
    block = run_block(cfg, [0, 1, 2])
    alone = run_block(cfg, [1])
    assert block[1].names == alone[0].names
    assert block[1].values == alone[0].values
    again = run_block(cfg, [1])
    assert again[0].values == alone[0].values
    assert block[0].values != block[1].values


@pytest.mark.parametrize("learner,model", [("backprop", "sparsenet"), ("backprop", "mlp")])
def test_backprop_blocks_are_bit_identical_to_single_seeds(learner, model):
    cfg = BanditConfig(**{**SMALL, "learner": learner, "model": model, "mlp_width": 16})
    assert run_block(cfg, [0, 3])[1].values == run_block(cfg, [3])[0].values


def test_mse_checkpoints_do_not_change_the_training_trajectory():
    cfg = BanditConfig(**SMALL)
    plain = run_block(cfg, [0])[0]
    measured = run_block(BanditConfig(**{**SMALL, "mse_every": 4, "mse_batches": 2}), [0])[0]
    keep = [(n, s, v) for n, s, v in zip(measured.names, measured.steps, measured.values,
                                         strict=True) if not n.startswith(("grad_", "update_"))]
    assert keep == list(zip(plain.names, plain.steps, plain.values, strict=True))


def test_metrics_are_logged_at_the_evaluation_points():
    (log,) = run_block(BanditConfig(**SMALL), [0])
    steps = sorted({s for n, s in zip(log.names, log.steps, strict=True) if n == "eval_reward"})
    assert steps == [1, 6, 12]  # int(linspace(1, 12, 3)), the reference's schedule
    final = log.final()
    assert {"eval_reward", "eval_expected_reward", "train_reward", "sg_loss", "lambda_mean",
            "lambda/l0", "lambda/l2"} <= set(final)
    assert 0.0 <= final["lambda_mean"] <= 1.0


@pytest.mark.slow
def test_policies_learn_the_noise_free_digits_bandit():
    cfg = BanditConfig(**{**SMALL, "width": 32, "dim": 4, "fan_in": None, "slots": 3,
                          "layers": 5, "parents": 5, "p_flip": 0.0, "steps": 300,
                          "batch_size": 64, "eval_points": 1})
    for learner in ("backprop", "sgprop"):
        (log,) = run_block(BanditConfig(**{**cfg.__dict__, "learner": learner}), [0])
        assert log.final()["eval_expected_reward"] > 0.5  # chance is 1/9
