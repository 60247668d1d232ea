"""Trials and long-form metrics frames, shaped as the result store holds them, from running
task configs directly: report tests feed real results to the analysis code without Ray."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd

from tasks import MetricLog


def run_frames(run_block: Callable[[Any, list[int]], list[MetricLog]], configs: dict[str, Any],
               seeds: Sequence[int] = (0, 1)) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each config (keyed by a trial-id prefix) run as one seed block."""
    trials, metrics = [], []
    for prefix, cfg in configs.items():
        for seed, log in zip(seeds, run_block(cfg, list(seeds)), strict=True):
            tid = f"{prefix}-{seed}"
            trials.append({"trial_id": tid, "status": "ok", "seed": seed,
                           **dataclasses.asdict(cfg)})
            metrics += [{"trial_id": tid, "step": s, "metric": n, "value": x}
                        for n, s, x in zip(log.names, log.steps, log.values, strict=True)]
    return pd.DataFrame(trials), pd.DataFrame(metrics)
