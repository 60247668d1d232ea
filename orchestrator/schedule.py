"""Ray side of the engine: connect (embedded local Ray by default), run chunks as tasks."""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from orchestrator.execute import TrialRecord, run_blocks
from orchestrator.plan import Block
from orchestrator.spec import Resources, unsatisfiable

CLUSTER_FIT_WAIT_S = 600.0  # how long a cluster (or its autoscaler) may take to offer a node


def unreachable(address: str | None, timeout_s: float = 10.0) -> str | None:
    """Why `--address HOST:PORT` cannot be a Ray head, in one line; None if it answers (or is
    `auto` / `ray://…`, which Ray resolves itself). Ray retries a dead GCS for minutes,
    printing warnings, so a wrong address is caught here before anything is written."""
    if not address or address == "auto" or "://" in address:
        return None
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return (f"--address {address}: expected HOST:PORT of the Ray head "
                "(e.g. 10.0.0.5:6379) or auto")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return None
    except OSError as exc:
        return (f"--address {address}: no Ray head answers there ({exc.strerror or exc}); "
                "expected the head's GCS address (`ray start --head` prints it)")


def connect(address: str | None, num_cpus: int | None, num_gpus: int | None = None) -> None:
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    kwargs: dict[str, Any] = {
        "include_dashboard": False, "logging_level": "WARNING", "configure_logging": True,
        "log_to_driver": True,
    }
    if address:
        ray.init(address=address, **kwargs)
    else:
        if num_gpus is not None:
            kwargs["num_gpus"] = num_gpus  # else Ray detects the machine's GPUs
        # "local": always a fresh embedded Ray. Without it ray.init() joins whatever
        # cluster `ray start` last recorded in /tmp/ray/ray_current_cluster (or RAY_ADDRESS),
        # and fails on a stale record; clusters are reached only through --address.
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, **kwargs)


def unfit(resources: Resources, address: str | None, num_cpus: int | None,
          num_gpus: int | None, wait_s: float = CLUSTER_FIT_WAIT_S,
          progress: Callable[[str], None] = print) -> str | None:
    """Why no node will ever run one block of `resources`, in one line; None if one can.

    Embedded Ray: compared, before it starts, with what it will have: `num_cpus`/`num_gpus`
    (else this machine's CPUs, and the GPUs torch sees) and the physical memory. A cluster:
    connects and waits up to `wait_s` for a node that fits, asking the autoscaler for one
    meanwhile, since Ray itself would leave such a block pending forever."""
    if not address:
        gpus = num_gpus if num_gpus is not None else _visible_gpus() if resources.num_gpus else 0
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        problem = unsatisfiable(resources, [{"CPU": num_cpus or os.cpu_count() or 1,
                                             "GPU": gpus, "memory": memory}],
                                "the embedded Ray")
        return problem and (f"{problem} (this machine's, or what --num-cpus / --num-gpus "
                            "give it); lower it, or run on a cluster with --address")
    import ray
    from ray.autoscaler.sdk import request_resources

    connect(address, num_cpus, num_gpus)
    deadline, asked = time.monotonic() + wait_s, False
    try:
        while True:
            problem = unsatisfiable(resources, [n["Resources"] for n in ray.nodes() if n["Alive"]],
                                    f"any node of the cluster at {address}")
            if problem is None or time.monotonic() >= deadline:
                return problem and (f"{problem} (after waiting {wait_s:.0f} s for one to "
                                    "join); lower it, or add such a node")
            if not asked:
                bundle = {k: v for k, v in (("CPU", resources.num_cpus),
                                            ("GPU", resources.num_gpus),
                                            ("memory", int(resources.memory_gb * 2**30))) if v}
                request_resources(bundles=[bundle])  # an autoscaler may start a node
                asked = True
                progress(f"{problem}; waiting up to {wait_s:.0f} s for one to join")
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
    finally:
        if asked:
            request_resources(bundles=[])  # the submitted tasks carry the demand from here


def _visible_gpus() -> int:
    """GPUs a task's "cuda" device can reach on this machine."""
    import torch

    return torch.cuda.device_count()


def parallelism(resources: Resources) -> int:
    """How many chunks the cluster can run at once."""
    import ray

    total = ray.cluster_resources()
    by_cpu = total.get("CPU", 1) / max(resources.num_cpus, 1e-3)
    if resources.num_gpus > 0:
        return max(1, int(min(by_cpu, total.get("GPU", 0) / resources.num_gpus)))
    return max(1, int(by_cpu))


def _run_chunk(task_name: str, blocks: list[Block], timeout_s: float | None) -> list[TrialRecord]:
    import ray

    device = "cuda" if ray.get_gpu_ids() else "cpu"
    node = f"{socket.gethostname()}:{ray.get_runtime_context().get_node_id()[:8]}"
    return run_blocks(task_name, blocks, device, timeout_s=timeout_s, node=node)


def submit(task_name: str, blocks: list[Block], resources: Resources, max_retries: int,
           timeout_s: float | None = None):

    options: dict[str, Any] = {
        "num_cpus": resources.num_cpus,
        "num_gpus": resources.num_gpus,
        "max_retries": max_retries,  # retried when a worker or node dies
        "retry_exceptions": False,  # a trial's own exception is a result, not a retry
    }
    if resources.memory_gb:
        options["memory"] = int(resources.memory_gb * 2**30)
    return _remote_run_chunk().options(**options).remote(task_name, blocks, timeout_s)


@functools.cache
def _remote_run_chunk():
    import ray

    return ray.remote(_run_chunk)


def cancel(refs) -> None:
    """Best effort on Ctrl-C: stop chunks still running. An error here must not hide the
    interrupt, and an embedded Ray is shut down right after anyway."""
    import ray

    for ref in refs:
        # The task may have finished or its worker be gone already.
        with contextlib.suppress(Exception):
            ray.cancel(ref, force=True)


def shutdown() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
