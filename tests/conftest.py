"""Shared fixtures. Ray tests use one small embedded cluster, shut down at exit."""

from __future__ import annotations

import os
import sys

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="module")
def ray_cluster():
    """The embedded Ray of this test process, (re)started for each module that asks for it:
    a test that runs a command in-process (`cli.main(["run", ...])`) stops the embedded
    Ray it used on its way out, as `sgsweep` does, and a later module must not then join
    whatever other Ray runs on the machine (`address="auto"`) or find none."""
    from orchestrator import schedule

    schedule.connect(None, num_cpus=2)  # imports Ray (loopback only, as `sgsweep run` does)
    import ray

    yield ray


@pytest.fixture(scope="session", autouse=True)
def _embedded_ray_stopped_at_exit():
    yield
    if "ray" in sys.modules:
        sys.modules["ray"].shutdown()
