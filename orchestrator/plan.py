"""Expand a validated spec into trials, then group trials into seed blocks.

A trial is one (config, seed). Its id is a hash of the task, the fully resolved config
(defaults filled in) and the seed, so the same computation always has the same id: that
is what resume and de-duplication key on. A block is trials of one config that differ
only in seed; the task may compute a block as one batched computation.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from orchestrator.spec import SweepSpec, config_dict


@dataclass(frozen=True)
class Trial:
    trial_id: str
    config_id: str
    seed: int


@dataclass(frozen=True)
class Block:
    config_id: str
    config: dict[str, Any]
    trials: tuple[Trial, ...]

    @property
    def seeds(self) -> list[int]:
        return [t.seed for t in self.trials]


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _digest(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()[:16]


def config_id(task: str, config: dict[str, Any]) -> str:
    return _digest({"task": task, "config": config})


def trial_id(task: str, config: dict[str, Any], seed: int) -> str:
    return _digest({"task": task, "config": config, "seed": seed})


def expand(spec: SweepSpec) -> list[Block]:
    """All trials of the spec, one block per config (seeds in spec order)."""
    blocks = []
    for config in spec.configs:
        values = config_dict(config)
        cid = config_id(spec.task, values)
        trials = tuple(Trial(trial_id(spec.task, values, s), cid, s) for s in spec.seeds)
        blocks.append(Block(cid, values, trials))
    return blocks


def split_blocks(blocks: list[Block], block_size: int) -> list[Block]:
    """Cut each block into pieces of at most `block_size` seeds."""
    out = []
    for block in blocks:
        for start in range(0, len(block.trials), block_size):
            out.append(Block(block.config_id, block.config, block.trials[start:start + block_size]))
    return out


def auto_block_size(num_trials: int, num_configs: int, parallelism: int) -> int:
    """Seeds per block: all seeds of a config, unless that leaves workers idle."""
    seeds_per_config = math.ceil(num_trials / max(num_configs, 1))
    if num_configs >= 2 * parallelism:
        return seeds_per_config
    return max(1, math.ceil(num_trials / (2 * parallelism * max(num_configs, 1))))


def pack(blocks: list[Block], max_trials: int) -> list[list[Block]]:
    """Group consecutive blocks into scheduling chunks of about `max_trials` trials.

    Tiny trials (milliseconds) would drown in per-task scheduling overhead, so several
    blocks ride in one Ray task. A block is never split across chunks.
    """
    chunks: list[list[Block]] = []
    current: list[Block] = []
    size = 0
    for block in blocks:
        if current and size + len(block.trials) > max_trials:
            chunks.append(current)
            current, size = [], 0
        current.append(block)
        size += len(block.trials)
    if current:
        chunks.append(current)
    return chunks
