"""Shared fixtures. Ray tests use one small embedded cluster per session, shut down at exit."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def ray_cluster():
    from orchestrator import schedule

    schedule.connect(None, num_cpus=2)  # imports Ray (loopback only, as `sgsweep run` does)
    import ray

    yield ray
    ray.shutdown()
