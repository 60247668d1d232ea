"""What every task provides: a typed config, a seeded block runner, and a metric log.

Tasks know nothing of Ray, MLflow or Parquet. A task receives one resolved config and a
block of seeds and returns one `MetricLog` per seed; the orchestrator does the rest.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from learners.feedback import CHOSEN_BY_ADAPTIVE, RULES


class ConfigError(ValueError):
    """A config value is invalid. `field` names the offending parameter."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def check_at_least(minimum: int, values: dict[str, int]) -> None:
    """Each named integer field is at least `minimum`."""
    expected = {0: ">= 0", 1: "a positive integer"}.get(minimum, f"at least {minimum}")
    for name, value in values.items():
        if value < minimum:
            raise ConfigError(name, f"expected {expected}, got {value}")


def check_lambda_fields(config: Any) -> None:
    """The λ fields of every task with an sgprop learner: `lam`, `lam_momentum`, and
    `lam_rule` — a rule of `learners.feedback.RULES` other than the two that `adaptive`
    chooses (one spelling each), for sgprop only, and not beside `adaptive: false`."""
    lam, momentum, lam_rule = config.lam, config.lam_momentum, config.lam_rule
    if not 0.0 <= lam <= 1.0:
        raise ConfigError("lam", f"expected λ in [0, 1], got {lam}")
    if not 0.0 <= momentum < 1.0:
        raise ConfigError("lam_momentum", f"expected [0, 1), got {momentum}")
    if lam_rule is None:
        return
    choices = [name for name in RULES if name not in CHOSEN_BY_ADAPTIVE]
    if lam_rule in CHOSEN_BY_ADAPTIVE:
        raise ConfigError("lam_rule", f"{lam_rule} λ is chosen by adaptive: "
                                      f"{str(lam_rule == 'adaptive').lower()}; leave lam_rule out")
    if lam_rule not in RULES:
        if not choices:
            raise ConfigError("lam_rule", "no rule beyond fixed and adaptive is registered in "
                                          f"learners.feedback.RULES, got {lam_rule!r}")
        raise ConfigError("lam_rule", f"expected one of {choices} (learners.feedback.RULES), "
                                      f"got {lam_rule!r}")
    if config.learner != "sgprop":
        raise ConfigError("lam_rule", "only sgprop chooses λ (backprop is λ = 1)")
    if not config.adaptive:
        raise ConfigError("adaptive", f"false contradicts lam_rule {lam_rule}, which chooses "
                                      "how λ moves; leave adaptive out")


@dataclass
class MetricLog:
    """Long-form metric record of one trial: (name, step, value) triples."""

    names: list[str] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)

    def log(self, name: str, value: float, step: int = 0) -> None:
        self.names.append(name)
        self.steps.append(int(step))
        self.values.append(float(value))

    def log_dict(self, metrics: dict[str, float], step: int = 0) -> None:
        for name, value in metrics.items():
            self.log(name, value, step)

    def final(self) -> dict[str, float]:
        """Each metric's value at its largest step."""
        last: dict[str, tuple[int, float]] = {}
        for name, step, value in zip(self.names, self.steps, self.values, strict=True):
            if name not in last or step >= last[name][0]:
                last[name] = (step, value)
        return {name: value for name, (_, value) in last.items()}

    def non_finite(self) -> str | None:
        """Name and step of the first NaN/inf value, if any."""
        for name, step, value in zip(self.names, self.steps, self.values, strict=True):
            if not math.isfinite(value):
                return f"{name} is {value} at step {step}"
        return None


# A block runner: (config, seeds, device) -> one MetricLog per seed, in seed order.
BlockRunner = Callable[[Any, Sequence[int], str], list[MetricLog]]


@dataclass(frozen=True)
class Task:
    """A registered task: everything sgsweep needs to know about it, in one place.

    `config_type` is a dataclass; fields without defaults are required in a sweep. Its
    optional `validate()` method raises `ConfigError` for cross-field problems.
    `run_block` computes a block of seeds (batched or one by one: either way, each seed's
    result must equal running that seed alone). `report` and `tune_reference` name, as
    "module:function", the analysis that draws the task's report and the closed-form
    optimum a tuning report compares a study against; they are imported only when a report
    is written, so a task stays free of plotting and pandas. `uses_gpu` False: the task
    computes on the CPU whatever GPU Ray assigns, so its blocks are run, and their trials
    recorded, with device "cpu". `memory_bytes(config, seeds)`, where a task's memory grows
    with its parameters: an upper estimate of the peak memory of a block of `seeds` seeds, so
    that a block no node can hold is refused before it runs (not retried out of memory).
    """

    name: str
    config_type: type
    run_block: BlockRunner
    report: str = ""
    tune_reference: str = ""
    uses_gpu: bool = True
    memory_bytes: Callable[[Any, int], int] | None = None

    def config_fields(self) -> dict[str, dataclasses.Field]:
        return {f.name: f for f in dataclasses.fields(self.config_type)}
