"""`probe`: a diagnostic task for smoke-testing a cluster and the engine's fault handling.

Each trial sleeps `work_ms`, then logs `value` (a seeded N(0, 1) draw) at `steps` steps.
Chosen seeds can raise, return NaN, hang or kill their worker process, so a lab can see
for itself what a sweep does when trials or workers misbehave (`sweeps/smoke.yaml`).

`crash_once_dir` names a scratch folder, not a path: its markers live under the machine's
temporary folder (`crash_marker_dir`), so a sweep file cannot make a worker create files
anywhere else; an absolute path or a `..` is refused when the file is validated.
"""

from __future__ import annotations

import os
import random
import re
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tasks.base import ConfigError, MetricLog, Task


@dataclass(frozen=True)
class ProbeConfig:
    work_ms: float = 0.0  # simulated compute per trial
    steps: int = 1  # history length of the `value` metric
    fail_seeds: tuple[int, ...] = ()  # raise an exception
    nan_seeds: tuple[int, ...] = ()  # log a NaN
    hang_seeds: tuple[int, ...] = ()  # never return (exercises the trial timeout)
    crash_seeds: tuple[int, ...] = ()  # kill the worker process (exercises Ray retries)
    crash_once_dir: str | None = None  # if set, each crash seed crashes only once (a name)
    label: str = ""  # free label, e.g. to make otherwise equal configs distinct

    def validate(self) -> None:
        if self.work_ms < 0:
            raise ConfigError("work_ms", f"expected a duration >= 0, got {self.work_ms}")
        if self.steps < 1:
            raise ConfigError("steps", f"expected at least one step, got {self.steps}")
        name = self.crash_once_dir
        if name is not None and (len(name) > 200 or not all(
                _PART.fullmatch(part) and part not in (".", "..") for part in name.split("/"))):
            raise ConfigError("crash_once_dir", "expected a relative folder name (letters, "
                                                "digits, '.', '_', '-', parts joined by '/', no "
                                                "'..', at most 200 characters): it is created "
                                                "under the temporary folder")


_PART = re.compile(r"[A-Za-z0-9_.-]+")


def crash_marker_dir(name: str) -> Path:
    """Where `crash_once_dir: NAME` keeps its markers: under this machine's temporary
    folder, never at a path the sweep file chooses."""
    return Path(tempfile.gettempdir()) / "sgsweep-probe" / name


def run_trial(cfg: ProbeConfig, seed: int, device: str = "cpu") -> MetricLog:
    if seed in cfg.crash_seeds:
        marker = (crash_marker_dir(cfg.crash_once_dir) / f"crashed-{seed}"
                  if cfg.crash_once_dir else None)
        if marker is None or not marker.exists():
            if marker is not None:
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.touch()
            os._exit(17)  # a hard worker death, as from the OOM killer or a segfault
    if seed in cfg.hang_seeds:
        while True:
            time.sleep(0.05)
    if cfg.work_ms:
        time.sleep(cfg.work_ms / 1000)
    if seed in cfg.fail_seeds:
        raise RuntimeError(f"probe: seed {seed} fails on purpose")
    rng = random.Random(seed)
    log = MetricLog()
    for step in range(cfg.steps):
        log.log("value", rng.gauss(0.0, 1.0), step)
    log.log("on_cuda", float(device.startswith("cuda")))
    if seed in cfg.nan_seeds:
        log.log("value", float("nan"), cfg.steps)
    return log


def run_block(cfg: ProbeConfig, seeds: Sequence[int], device: str = "cpu") -> list[MetricLog]:
    return [run_trial(cfg, seed, device) for seed in seeds]


TASK = Task(name="probe", config_type=ProbeConfig, run_block=run_block)
