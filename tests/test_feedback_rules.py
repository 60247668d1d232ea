"""A feedback rule is one class the learners ask: registering it in `RULES` makes it a value
of `lam_rule` in E2 and E3, with no other change (docs/extending.md, "Add a feedback rule",
whose example class these tests run as the page writes it)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from torch import Tensor

from analysis import bandit as bandit_report
from analysis import popgym as popgym_report
from learners.compared import COMPARED, LABELS
from learners.feedback import RULES, AdaptiveLambda, FeedbackRule, adaptive_lambda, ema
from orchestrator.plan import expand
from orchestrator.spec import SpecError, parse_spec
from tasks import ConfigError
from tasks.bandit import BanditBlock, BanditConfig
from tasks.popgym_task import PopgymConfig, PopgymRun

torch.set_num_threads(1)

E2_SMALL = dict(width=8, dim=3, fan_in=10, parents=2, slots=2, layers=3, steps=12,
                eval_points=3, batch_size=16, eval_size=200)
E3_TINY = dict(neurons=12, dim=3, parents=3, input_neurons=4, slots=2, hidden=16,
               num_envs=4, batches=3)


def docs_example(language: str) -> str:
    """The first `language` block of docs/extending.md's "Add a feedback rule"."""
    page = (Path(__file__).parents[1] / "docs" / "extending.md").read_text()
    section = page[page.index("## Add a feedback rule"):]
    return section.split(f"```{language}\n")[1].split("```")[0]


def docs_example_rule() -> type[FeedbackRule]:
    """The example class of the page, run as written."""
    code = docs_example("python")
    namespace = {"dataclass": dataclass, "FeedbackRule": FeedbackRule, "Tensor": Tensor}
    exec(code, namespace)
    return namespace["TowardBackprop"]


TowardBackprop = docs_example_rule()


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setitem(RULES, "toward_bp", TowardBackprop)
    return "toward_bp"


def never(*args, **kwargs):
    raise AssertionError("the λ estimate was computed for a rule that does not need it")


def test_fixed_rule_keeps_its_lambda_and_adaptive_rule_moves_it_by_the_ema() -> None:
    fixed = RULES["fixed"]("fixed", 0.3, 0.9)
    state = fixed.initial_lambda((2, 5), dtype=torch.float64)
    assert torch.equal(state, torch.full((2, 5), 0.3, dtype=torch.float64))
    assert fixed.constant_lambda == 0.3 and not fixed.needs_estimate
    assert fixed.next_lambda(state, None) is state
    adaptive = adaptive_lambda(0.9, 0.8)
    assert isinstance(adaptive, AdaptiveLambda) and adaptive.needs_estimate
    assert adaptive.constant_lambda is None and adaptive.uses_predictor
    state = adaptive.initial_lambda((4,))
    estimate = torch.tensor([0.0, 0.25, 0.5, 1.0])
    assert torch.equal(adaptive.next_lambda(state, estimate), ema(state, estimate, 0.8))
    with pytest.raises(ValueError, match="estimate"):
        adaptive.next_lambda(state, None)


def test_a_registered_rule_drives_lambda_in_the_e2_learner(registered, monkeypatch) -> None:
    monkeypatch.setattr("learners.sgprop.layer_lambda", never)
    cfg = BanditConfig(**E2_SMALL, lam_rule=registered, lam=0.5, lam_momentum=0.5)
    cfg.validate()
    block = BanditBlock(cfg, [0, 1])
    assert isinstance(block.learner.rule, TowardBackprop)
    block.train_step()
    assert torch.equal(block.learner.mixing(0), torch.full((2, 8, 1, 1), 0.75))
    block.train_step()
    for lam in block.learner.lams:  # 0.5 → 0.75 → 0.875, exactly
        assert torch.equal(lam, torch.full((2, 8), 0.875))


def test_a_registered_rule_drives_lambda_in_the_e3_learner(registered, monkeypatch) -> None:
    monkeypatch.setattr("learners.sgprop_time.SGPropTime.batch_lambda", never)
    cfg = PopgymConfig(**E3_TINY, learner="sgprop", lam_rule=registered, lam=0.5,
                       lam_momentum=0.5)
    run = PopgymRun(cfg, 0)
    assert isinstance(run.learner.rule, TowardBackprop)
    stats = run.train_step()
    assert torch.equal(run.learner.lam, torch.full((12,), 0.75))
    assert stats["lambda_mean"] == 0.75


def test_lam_rule_is_a_sweep_value_and_leaves_other_trial_ids_alone(registered) -> None:
    raw = {"name": "x", "task": "bandit", "seeds": 1,
           "variants": [{"learner": "sgprop"}, {"learner": "sgprop", "lam_rule": registered}]}
    spec = parse_spec(raw)
    assert [type(c.rule()) for c in spec.configs] == [AdaptiveLambda, TowardBackprop]
    blocks = expand(spec)
    assert "lam_rule" not in blocks[0].config  # absent while unset: earlier ids unchanged
    assert blocks[1].config["lam_rule"] == registered
    assert blocks[0].trials[0].trial_id != blocks[1].trials[0].trial_id


def test_the_pages_sweep_file_selects_the_registered_rule(registered) -> None:
    spec = parse_spec(yaml.safe_load(docs_example("yaml")))
    rules = [c.rule() for c in spec.configs]
    assert [type(r) for r in rules] == [TowardBackprop] * 2
    assert [(r.lam, r.momentum) for r in rules] == [(0.5, 0.99), (0.9, 0.99)]


@pytest.mark.parametrize("change,field,message", [
    ({"lam_rule": "nope"}, "lam_rule", "expected one of ['toward_bp']"),
    ({"lam_rule": "adaptive"}, "lam_rule", "chosen by adaptive: true"),
    ({"lam_rule": "fixed"}, "lam_rule", "chosen by adaptive: false"),
    ({"lam_rule": "toward_bp", "learner": "backprop"}, "lam_rule", "only sgprop"),
    ({"lam_rule": "toward_bp", "adaptive": False}, "adaptive", "contradicts lam_rule"),
])
def test_lam_rule_errors_name_their_field(registered, change, field, message) -> None:
    change = {"learner": "sgprop", **change}
    for config in (BanditConfig(**E2_SMALL, **change), PopgymConfig(**E3_TINY, **change)):
        with pytest.raises(ConfigError) as err:
            config.validate()
        assert err.value.field == field and message in err.value.message


def test_an_unregistered_lam_rule_is_one_line_in_a_sweep_file() -> None:
    raw = {"name": "x", "task": "popgym", "seeds": 1, "grid": {"lam_rule": ["nope"]}}
    with pytest.raises(SpecError) as err:
        parse_spec(raw)
    assert "lam_rule: no rule beyond fixed and adaptive is registered" in str(err.value)
    assert "\n" not in str(err.value)


def test_reports_label_a_registered_rule_by_its_name() -> None:
    row = pd.Series({"learner": "sgprop", "adaptive": True, "lam": 0.5, "lam_rule": "toward_bp"})
    assert bandit_report.method_label(row) == "SparseNet sgprop toward_bp λ₀=0.5"
    assert popgym_report.method_label(row) == "SparseNet sgprop toward_bp λ₀=0.5"
    unset = row.drop("lam_rule")
    assert bandit_report.method_label(unset) == "SparseNet sgprop adaptive λ"
    nan = pd.Series({**unset.to_dict(), "lam_rule": float("nan")})  # other trials set it
    assert popgym_report.method_label(nan) == "SparseNet sgprop"


def test_learners_return_the_compared_settings_the_reports_label() -> None:
    assert [c.key for c in COMPARED] == ["bp", "mix", "sg"]  # recorded in metric names
    block = BanditBlock(BanditConfig(**E2_SMALL), [0])
    images, labels = block.sample_batch(block.gens["mse"])
    actions, rewards = block.act(block.learner.forward(images).logits.detach(), labels,
                                 block.gens["mse"])
    assert list(block.learner.rule_gradients(images, actions, rewards)) == list(LABELS)
    run = PopgymRun(PopgymConfig(**E3_TINY, learner="sgprop"), 0)
    assert list(run.learner.rule_gradients(*run.collect("grad"))) == list(LABELS)


def test_reports_read_the_compared_settings_without_importing_torch() -> None:
    code = ("import sys, analysis.bandit, analysis.popgym, learners.compared; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
def test_a_rule_from_another_installed_package_runs_on_ray_workers(tmp_path: Path) -> None:
    """An installed package declares the page's rule in the entry-point group
    `sgsweep.rules`; `sgsweep run` validates a sweep naming it and the Ray workers, which
    import the learners themselves, drive λ with it (0.5 → 0.75 → 0.875 → 0.9375)."""
    import pyarrow.dataset as ds

    from tests.helpers import SGSWEEP

    site = tmp_path / "site"
    (site / "towardbp_rule-1.0.dist-info").mkdir(parents=True)
    (site / "towardbp_rule.py").write_text(
        "from dataclasses import dataclass\nfrom torch import Tensor\n"
        "from learners.feedback import FeedbackRule\n\n" + docs_example("python"))
    (site / "towardbp_rule-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: towardbp-rule\nVersion: 1.0\n")
    (site / "towardbp_rule-1.0.dist-info" / "entry_points.txt").write_text(
        "[sgsweep.rules]\ntoward_bp_pkg = towardbp_rule:TowardBackprop\n")
    spec = tmp_path / "rule.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "rule-pkg", "task": "popgym", "seeds": 1,
        "params": {**E3_TINY, "learner": "sgprop", "lam_rule": "toward_bp_pkg", "lam": 0.5,
                   "lam_momentum": 0.5}}))
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = tmp_path / "out"
    done = subprocess.run([SGSWEEP, "run", str(spec), "--out", str(out), "--num-cpus", "1",
                           "--tracking-uri", "none", "--no-report"], capture_output=True,
                          text=True, timeout=600, env=env)
    assert done.returncode == 0 and "1 ok, 0 failed" in done.stdout, done.stderr[-3000:]
    metrics = ds.dataset(out / "metrics").to_table().to_pandas()
    lam = metrics[metrics.metric == "lambda_mean"].sort_values("step").value.tolist()
    assert lam == [0.75, 0.875, 0.9375]
    without = subprocess.run([SGSWEEP, "validate", str(spec)], capture_output=True, text=True,
                             timeout=120)  # the package not installed: one line, exit 2
    assert without.returncode == 2 and "lam_rule" in without.stderr, without.stderr
