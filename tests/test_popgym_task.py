"""E3 task: batched labyrinths = POPGym + wrappers, reward noise, seeding, config errors."""

from __future__ import annotations

import dataclasses
import math
import os
import random

import numpy as np
import pytest
import torch

from learners.reinforce import discounted_returns, normalised_returns
from tasks import REGISTRY, ConfigError, MetricLog
from tasks.mazes import OBS_DIM, MazeBatch, StepResult, _GlobalRngGuard, wrapped_popgym_env
from tasks.popgym_task import (
    STREAMS,
    PopgymConfig,
    PopgymRun,
    rollout,
    run_block,
    seen_rewards,
)
from tasks.sampling import stream

torch.set_num_threads(1)

TINY = dict(neurons=12, dim=3, parents=3, input_neurons=4, slots=2, hidden=16,
            num_envs=4, batches=3)


@pytest.mark.parametrize("env,length", [("escape", 80), ("explore", 40)])
def test_batched_mazes_replay_popgym_with_its_wrappers_exactly(env: str, length: int) -> None:
    n = 6
    batch = MazeBatch(env, n, 6, length)
    refs = [wrapped_popgym_env(env, 6, length) for _ in range(n)]
    assert refs[0].observation_space.shape == (OBS_DIM,)
    rng = np.random.default_rng(1)
    compared = 0
    for episode in range(3):
        seeds = [100 * episode + i for i in range(n)]
        obs = batch.reset(seeds)
        ref_obs = []
        for ref, seed in zip(refs, seeds, strict=True):
            with _GlobalRngGuard():
                ref_obs.append(ref.reset(seed=seed)[0])
        np.testing.assert_array_equal(obs, np.array(ref_obs))
        done = np.zeros(n, bool)
        while not done.all():
            actions = rng.integers(4, size=n)
            res = batch.step(actions, ~done)
            for i in np.flatnonzero(~done):
                o, r, term, trunc, _ = refs[i].step(int(actions[i]))
                np.testing.assert_array_equal(res.obs[i], o)
                assert (res.reward[i], res.terminated[i], res.truncated[i]) == (r, term, trunc)
                compared += 1
            done |= res.terminated | res.truncated
    assert compared > 3 * n * 10


def test_observation_is_one_hot_view_actions_and_first_step_flag() -> None:
    batch = MazeBatch("escape", 3, 6, 80)
    obs = batch.reset([0, 1, 2])
    assert obs.shape == (3, 56) and obs.dtype == np.float32
    # 9 view cells + env action (5 kinds each), wrapper action (4), is_t0 (2): one 1 each.
    blocks = [obs[:, 5 * i:5 * i + 5] for i in range(10)] + [obs[:, 50:54], obs[:, 54:56]]
    assert all((b.sum(1) == 1).all() for b in blocks)
    assert (obs[:, 45 + 4] == 1).all()  # env's previous action is NONE at reset
    assert (obs[:, 50] == 1).all()  # wrapper's null action 0
    assert (obs[:, 55] == 1).all()  # is_t0
    step = batch.step(np.array([1, 2, 3])).obs
    assert (step[:, 54] == 1).all()
    assert step[np.arange(3), 50 + np.array([1, 2, 3])].tolist() == [1, 1, 1]


def test_maze_generation_leaves_global_rngs_alone_and_is_seeded() -> None:
    random.seed(5)
    np.random.seed(5)
    before = (random.random(), np.random.rand())
    random.seed(5)
    np.random.seed(5)
    a = MazeBatch("explore", 2, 6, 40)
    a.reset([3, 4])
    assert (random.random(), np.random.rand()) == before
    b = MazeBatch("explore", 2, 6, 40)
    b.reset([3, 4])
    np.testing.assert_array_equal(a.grid, b.grid)
    b.reset([5, 6])
    assert not np.array_equal(a.grid, b.grid)


def _rollout(cfg: PopgymConfig, seed: int = 0):
    run = PopgymRun(cfg, seed)
    return rollout(run.model, run.mazes, cfg, run.maze_seeds(), run.gens["train"])


@pytest.mark.parametrize("noise,expected", [(0.0, None), (1.0, "all")])
def test_reward_noise_edges(noise: float, expected: str | None) -> None:
    cfg = PopgymConfig(env="explore", reward_noise=noise, **TINY)
    batch = _rollout(cfg)
    rewards = batch.rewards[batch.valid]
    if expected == "all":
        assert torch.all(rewards == torch.tensor(-1 / 40, dtype=torch.float32))
    else:  # the first move to a new square earns POPGym's positive reward
        assert (rewards > 0).any()


def test_reward_noise_replaces_the_stated_fraction_of_new_square_rewards() -> None:
    base = PopgymConfig(env="explore", reward_noise=0.0, **{**TINY, "num_envs": 64})
    noisy = dataclasses.replace(base, reward_noise=0.75)
    clean, masked = _rollout(base), _rollout(noisy)
    # Same seed: same mazes and the same action uniforms, so the same trajectories.
    torch.testing.assert_close(clean.actions, masked.actions)
    positive = clean.rewards > 0
    kept = (masked.rewards[positive] > 0).float().mean().item()
    assert positive.sum() > 250
    assert abs(kept - 0.25) < 0.08
    assert PopgymConfig(env="explore").noise == 0.75 and PopgymConfig(env="escape").noise == 0.0


def test_explore_adds_one_on_completion_after_the_noise_replacement() -> None:
    res = StepResult(obs=np.zeros((4, OBS_DIM), np.float32),
                     reward=np.array([0.05, 0.05, -0.025, 0.05]),
                     terminated=np.array([True, False, True, False]),
                     truncated=np.zeros(4, bool))
    active = np.array([True, True, True, False])
    flip = np.array([True, False, False, False])
    explore = PopgymConfig(env="explore")
    np.testing.assert_allclose(seen_rewards(res, active, flip, explore),
                               [-1 / 40 + 1, 0.05, -0.025 + 1, 0.0])
    # Escape: POPGym's reward already holds the +1 of reaching the goal.
    escape = PopgymConfig(env="escape")
    np.testing.assert_allclose(seen_rewards(res, active, flip, escape),
                               [-1 / 80, 0.05, -0.025, 0.0])


def test_explore_episodes_that_finish_earn_one_even_when_every_reward_is_noise() -> None:
    cfg = PopgymConfig(env="explore", reward_noise=1.0, length=300, **{**TINY, "num_envs": 8})
    batch = _rollout(cfg)
    assert bool(batch.success.any()) and not bool(batch.success.all())
    last = batch.rewards[batch.lengths - 1, torch.arange(8)]
    torch.testing.assert_close(last, torch.where(batch.success, 1 - 1 / 300, -1 / 300))
    rewards = batch.rewards[batch.valid]
    assert int((rewards > 0).sum()) == int(batch.success.sum())


def test_reference_maze_seeds_are_seed_plus_env_plus_batch_times_envs() -> None:
    cfg = PopgymConfig(env="escape", length=10, **TINY)
    run = PopgymRun(cfg, 7)
    run.collect("train")
    run.collect("grad")  # checkpoints draw their own mazes and leave the sequence alone
    assert run.maze_seeds() == [7 + 4, 8 + 4, 9 + 4, 10 + 4]
    other = PopgymRun(dataclasses.replace(cfg, maze_seeds="independent"), 7)
    assert other.maze_seeds() != [7, 8, 9, 10]


def test_a_finished_episode_keeps_its_last_observation() -> None:
    cfg = PopgymConfig(env="escape", length=80, **{**TINY, "num_envs": 16})
    batch = _rollout(cfg)
    lengths = batch.lengths
    short = int(torch.argmin(lengths))
    end = int(lengths[short])
    assert end < batch.obs.shape[0]
    repeated = batch.obs[end:, short]
    assert bool((repeated == repeated[0]).all())
    assert not torch.equal(batch.obs[end - 1, short], repeated[0])  # it moved at its last step


def test_success_is_termination_and_lengths_respect_truncation() -> None:
    cfg = PopgymConfig(env="escape", length=12, **{**TINY, "num_envs": 16})
    batch = _rollout(cfg)
    lengths = batch.lengths
    assert int(lengths.max()) <= 11  # POPGym truncates after length − 1 steps
    assert torch.equal(batch.success, lengths < 11) or bool(batch.success[lengths < 11].all())
    # A successful escape ends on the goal: its last reward includes the +1.
    last = batch.rewards[lengths - 1, torch.arange(16)]
    assert torch.equal(last > 0.5, batch.success)


def test_discounted_and_normalised_returns() -> None:
    rewards = torch.tensor([[1.0, 0.0], [2.0, 5.0], [3.0, 0.0]])
    valid = torch.tensor([[True, True], [True, True], [True, False]])
    g = discounted_returns(rewards, valid, 0.5)
    torch.testing.assert_close(g, torch.tensor([[1 + 0.5 * 2 + 0.25 * 3, 2.5],
                                                [2 + 0.5 * 3, 5.0], [3.0, 0.0]]))
    a = normalised_returns(rewards, valid, 0.5)
    assert a[2, 1] == 0
    assert abs(float(a[valid].mean())) < 1e-6
    assert abs(float(a[valid].std(unbiased=False)) - 1) < 1e-5


@pytest.mark.parametrize("model,learner", [("gru", "backprop"), ("lstm", "backprop"),
                                           ("sparsenet", "backprop"), ("sparsenet", "sgprop")])
def test_seed_reproducible_bit_for_bit_and_independent_of_block(model: str, learner: str) -> None:
    cfg = PopgymConfig(env="explore", model=model, learner=learner, length=10, **TINY)
    solo = run_block(cfg, [1])[0]
    block = run_block(cfg, [0, 1])
    assert block[1] == solo
    again = run_block(cfg, [1])[0]
    assert again == solo
    assert block[0].values != solo.values


def test_training_logs_every_metric() -> None:
    cfg = PopgymConfig(env="escape", model="sparsenet", learner="sgprop", length=10,
                       grad_every=3, grad_batches=2, ref_batches=3, **TINY)
    final = run_block(cfg, [0])[0].final()
    for name in ("success_rate", "return_mean", "return_p10", "return_p90", "episode_length",
                 "env_steps", "policy_loss", "entropy", "grad_norm", "sg_loss", "lambda_mean",
                 "true_grad_norm", "pred_norm", "mixed_grad_norm",
                 "lambda_min", "lambda_max", "lambda_p25", "lambda_p75", "success_last5",
                 "success_auc", "grad_mse/bp/all", "grad_mse/mix/recurrent",
                 "grad_bias2/sg/all", "grad_var/mix/all", "grad_cos/bp/all",
                 "grad_ref_sq/all", "grad_ref_se2/recurrent"):
        assert name in final, name
    assert 0 <= final["success_rate"] <= 1 and final["env_steps"] > 0


def test_streams_are_independent_per_name_and_seed() -> None:
    draws = {(s, n): torch.rand(3, generator=stream(s, i)).tolist()
             for s in (0, 1) for n, i in STREAMS.items()}
    assert len({tuple(v) for v in draws.values()}) == len(draws)


@pytest.mark.parametrize("change,field", [
    ({"env": "cartpole"}, None),
    ({"num_envs": 0}, "num_envs"),
    ({"maze_size": 5}, "maze_size"),
    ({"maze_size": 4}, "maze_size"),
    ({"reward_noise": 1.5}, "reward_noise"),
    ({"lr": 0.0}, "lr"),
    ({"gamma": 1.5}, "gamma"),
    ({"lam": -0.1}, "lam"),
    ({"lam_momentum": 1.0}, "lam_momentum"),
    ({"parents": 200}, "parents"),
    ({"grad_batches": 1}, "grad_batches"),
    ({"model": "gru", "learner": "sgprop"}, "learner"),
])
def test_bad_config_is_one_line_error_naming_the_field(change: dict, field: str | None) -> None:
    if field is None:  # an unknown Literal value is caught by the sweep loader's type check
        from orchestrator.spec import SpecError, parse_spec
        with pytest.raises(SpecError, match="env") as err:
            parse_spec({"name": "x", "task": "popgym", "params": {"env": "cartpole"},
                        "seeds": 1})
        assert "\n" not in str(err.value)
        return
    with pytest.raises(ConfigError) as err:
        PopgymConfig(**change).validate()
    assert err.value.field == field and "\n" not in str(err.value)


def test_task_is_registered() -> None:
    assert REGISTRY["popgym"].config_type is PopgymConfig


def run_on(device: str) -> tuple[PopgymRun, MetricLog]:
    cfg = PopgymConfig(env="escape", model="sparsenet", learner="sgprop", length=6,
                       grad_every=2, grad_batches=2, ref_batches=2, **{**TINY, "batches": 2})
    run = PopgymRun(cfg, 0, device)
    return run, run.run()


def test_e3_computes_on_the_device_it_is_given_through_one_code_path() -> None:
    # No branch depends on the device type: model, learner, SG, λ schedule and gradient
    # checkpoints run wherever the model is, the mazes and sampling on the CPU. Asking for
    # the CPU explicitly walks the code a GPU trial walks, and gives the default's numbers.
    run, log = run_on("cpu")
    assert {p.device.type for p in run.model.parameters()} == {"cpu"}
    assert {p.device.type for p in run.learner.sg.parameters()} == {"cpu"}
    assert log == run_block(run.cfg, [0])[0]
    from orchestrator.execute import run_blocks
    from orchestrator.plan import Block, Trial

    block = Block("c", dataclasses.asdict(run.cfg), (Trial("t0", "c", 0),))
    (record,) = run_blocks("popgym", [block], device="cpu")
    assert record.status == "ok" and record.device == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_e3_on_cuda_trains_there_and_is_recorded_so() -> None:
    run, log = run_on("cuda")
    assert {p.device.type for p in run.model.parameters()} == {"cuda"}
    assert log.non_finite() is None
    from orchestrator.execute import run_blocks
    from orchestrator.plan import Block, Trial

    block = Block("c", dataclasses.asdict(run.cfg), (Trial("t0", "c", 0),))
    (record,) = run_blocks("popgym", [block], device="cuda")
    assert record.status == "ok" and record.device == "cuda", record.error


@pytest.mark.timeout(300)
def test_each_e3_trial_in_a_ray_worker_uses_as_many_threads_as_its_cpu_share(
        ray_cluster) -> None:
    # Ray reuses a worker across tasks, and torch reads OMP_NUM_THREADS once, at import:
    # a worker first used by a 2-CPU task ran later 1-CPU trials on 2 threads until
    # orchestrator.execute set each trial's threads (docs/performance.md, E3). The 2-CPU
    # block goes first so that its worker, reused, has to come down to 1 thread.
    from orchestrator import schedule
    from orchestrator.plan import Block, Trial
    from orchestrator.spec import Resources

    config = dataclasses.asdict(PopgymConfig(env="escape", length=4, **{**TINY,
                                                                          "batches": 1}))
    user = os.environ.get("OMP_NUM_THREADS")  # exported by the user: Ray leaves it, so do we
    seen = []
    for i, cpus in enumerate((2.0, 1.0, 0.5, 2.0, 1.0)):
        block = Block(f"c{i}", config, (Trial(f"t{i}", f"c{i}", 0),))
        (record,) = ray_cluster.get(schedule.submit("popgym", [block], Resources(num_cpus=cpus),
                                                    max_retries=0))
        assert record.status == "ok", record.error
        threads = record.metrics.values[record.metrics.names.index("torch_threads")]
        seen.append((cpus, threads))
    expected = [(cpus, float(int(user) if user else max(1, math.floor(cpus))))
                for cpus, _ in seen]
    assert seen == expected


@pytest.mark.parametrize("learner", ["backprop", "sgprop"])
def test_update_reusing_the_rollouts_cell_values_matches_recomputing_them(learner: str) -> None:
    # The rollout records the SparseNet cell's per-step values; the update on that batch
    # reuses them (same parameters, same observations). Recomputed, they differ only by
    # float32 rounding (the e_t terms are computed per step in the rollout, for all steps
    # at once in the update), so the gradients agree to float32 precision.
    cfg = PopgymConfig(env="escape", model="sparsenet", learner=learner, length=10, **TINY)
    grads = []
    for keep in (True, False):
        run = PopgymRun(cfg, 0)
        batch, advantages = run.collect("train")
        assert batch.recording is not None and len(batch.recording.states) == len(batch.obs)
        if not keep:
            batch = dataclasses.replace(batch, recording=None)
        run.learner.backward(batch, advantages)
        grads.append([p.grad.clone() for p in run.model.parameters()])
    for reused, recomputed in zip(*grads, strict=True):
        torch.testing.assert_close(reused, recomputed, rtol=1e-5, atol=1e-7)


def test_a_recording_from_other_parameters_is_not_used() -> None:
    cfg = PopgymConfig(env="escape", model="sparsenet", length=10, **TINY)
    run = PopgymRun(cfg, 0)
    batch, advantages = run.collect("train")
    run.update(batch, advantages)  # Adam moves every parameter: the recording is stale
    fresh = run.model.tape(batch.obs)
    given = run.model.tape(batch.obs, batch.recording)
    assert torch.equal(given.states, fresh.states)
    assert not torch.equal(given.states, torch.stack(batch.recording.states))
