"""Ray side of the engine, the one module that imports Ray: connect (an embedded local Ray
by default), run chunks of blocks as tasks, and wait for them (`ChunkPool`, the wait loop
`run` and `tune` share, with the worker-death policy).

There is no cancel: on a stop the driver stops waiting and shuts the session down, which
ends its tasks with it (`ray.cancel` racing a finishing task can abort the driver).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar

from orchestrator import signals
from orchestrator.errors import RunError
from orchestrator.execute import describe_error, run_blocks
from orchestrator.plan import Block
from orchestrator.processes import descendants as _descendants
from orchestrator.processes import processes as _processes
from orchestrator.processes import started_at as _started_at
from orchestrator.processes import stop as _stop
from orchestrator.records import TrialRecord
from orchestrator.spec import Resources, unsatisfiable

CLUSTER_FIT_WAIT_S = 600.0  # how long a cluster (or its autoscaler) may take to offer a node
SINGLE_MACHINE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": node address 127.0.0.1


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


class StartError(RuntimeError):
    """Ray did not start, could not be joined, or was lost (one line, not the user's
    mistake; the command line prints it and exits 1)."""


class RayLost(StartError):
    """The run cannot go on: the Ray node this driver runs on is gone (its raylet died),
    or no node left in the cluster can run a chunk. What finished is recorded; the rest
    stays pending for a re-run. `cause`: what happened; `advice`: what now."""

    def __init__(self, cause: str, advice: str = "what finished is saved: run the same "
                 "command again to run the rest") -> None:
        self.cause = cause
        super().__init__(f"{cause}; {advice}")


def preflight(source: str, resources: Resources, address: str | None, num_cpus: int | None,
              num_gpus: int | None, progress: Callable[[str], None] = print) -> None:
    """`RunError` in one line, before DIR is touched, if `--address` cannot be a Ray head
    or no node will ever run one block of `resources` (see `unfit`); a stop requested
    meanwhile is raised on the way out."""
    if problem := unreachable(address):
        raise RunError(problem)
    with signals.deferred():  # a cluster's fit check connects to Ray and may wait
        problem = unfit(resources, address, num_cpus, num_gpus, progress=progress,
                        stop=lambda: signals.requested() is not None)
    if problem:
        raise RunError(f"{source}: {problem}")


@contextlib.contextmanager
def session(address: str | None, num_cpus: int | None,
            num_gpus: int | None = None) -> Iterator[None]:
    """Ray for the length of the block: the cluster at `address` joined, or an embedded
    one started, and the embedded one stopped on the way out, however the block ends.
    Not started when a stop is already requested (callers check `signals.requested()`
    before using it); `StartError` if it does not start."""
    try:
        if not signals.requested():
            connect(address, num_cpus, num_gpus)
        yield
    finally:
        if address is None:
            shutdown()


def connect(address: str | None, num_cpus: int | None, num_gpus: int | None = None) -> None:
    """Join the Ray cluster at `address`, or start an embedded one; `StartError` if not."""
    with contextlib.nullcontext() if address else loopback_only():
        _connect(address, num_cpus, num_gpus)


def _connect(address: str | None, num_cpus: int | None, num_gpus: int | None) -> None:
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    kwargs: dict[str, Any] = {
        "include_dashboard": False, "logging_level": "WARNING", "configure_logging": True,
        "log_to_driver": True,
    }
    try:
        with signals.witnessed():  # a SIGTERM Ray's own handler saw but lost still stops us
            if address:
                ray.init(address=address, **kwargs)
            else:
                if num_gpus is not None:
                    kwargs["num_gpus"] = num_gpus  # else Ray detects the machine's GPUs
                _start_embedded(num_cpus or os.cpu_count() or 1, kwargs)
    except SystemExit as exc:
        # ray.init installs a SIGTERM handler that calls sys.exit(15): a SIGTERM during
        # start-up arrives here. Stop as for any signal (the caller polls `requested`).
        if exc.code != signal.SIGTERM:
            raise
        with contextlib.suppress(Exception):
            ray.shutdown()
        signals.request(signal.SIGTERM)
    except Exception as exc:  # noqa: BLE001 - e.g. "node timed out during startup"
        with contextlib.suppress(Exception):  # what did start (a GCS without its raylet)
            ray.shutdown()
        raise StartError(f"Ray did not start: {_one_line(exc)}") from None
    finally:
        signals.reinstall()  # ray.init replaces the SIGTERM handler with its own


@contextlib.contextmanager
def loopback_only() -> Iterator[None]:
    """While the embedded Ray is imported and started: it serves this machine alone, so
    nothing it starts may listen beyond 127.0.0.1.

    Ray binds its GCS, raylet, workers and agents (metrics exporter included) to its node's
    address, and turns `ray.init(_node_ip_address="127.0.0.1")` back into the machine's
    routable one. Its single-machine mode (its default on macOS and Windows) makes the
    node's address loopback instead. The driver reads that switch when it imports Ray,
    and the processes of the embedded Ray inherit it as they start; it is only lent to the
    start: processes the driver starts later (a `ray start` of the user's) see the
    environment as it was. A caller that imported Ray before keeps Ray's default; an
    explicit RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER wins."""
    lend = "ray" not in sys.modules and SINGLE_MACHINE not in os.environ
    if lend:
        os.environ[SINGLE_MACHINE] = "0"
    try:
        yield
    finally:
        if lend:
            os.environ.pop(SINGLE_MACHINE, None)


def _start_embedded(num_cpus: int, kwargs: dict[str, Any], attempts: int = 2) -> None:
    """A fresh local Ray ("local": without it ray.init() joins whatever cluster `ray start`
    last recorded in /tmp/ray/ray_current_cluster or RAY_ADDRESS, and fails on a stale
    record; clusters are reached only through --address).

    On a loaded machine its raylet can give up waiting for its Python agents to start
    ("timed out during startup"); a second attempt usually finds them warm. Its GCS and
    raylet must outlive a Ctrl-C at the terminal, which reaches the whole process group:
    the driver stops them itself (`shutdown`) once it has stopped."""
    import ray

    global _embedded_before
    for attempt in range(1, attempts + 1):
        before = _processes()
        try:
            with signals.shielded_children():
                ray.init(address="local", num_cpus=num_cpus, **kwargs)
            _embedded_before = before
            _watch_embedded(before)
            return
        except BaseException as exc:
            with contextlib.suppress(Exception):
                ray.shutdown()
            stop_started_since(before)
            if not isinstance(exc, Exception) or attempt == attempts or signals.requested():
                raise
            print(f"warning: Ray did not start ({_one_line(exc)}); trying once more",
                  file=sys.stderr)


def stop_started_since(before: dict[int, tuple[int, int, str]], grace_s: float = 10.0) -> None:
    """Stop what a failed `ray.init` started: `ray.shutdown` knows no node then, and its GCS,
    raylet and agents would run on (a retry would start a second set beside them). Only
    processes absent from `before` are touched: this driver's descendants, and processes of
    its session whose command line names its Ray session (`session_<time>_<this pid>`; an
    agent whose raylet died is re-parented to init)."""
    me, session = os.getpid(), os.getsid(0)
    own = re.compile(rf"session_[0-9_-]+_{me}\b")
    now = _processes()
    started = _descendants(me, now)
    started |= {pid for pid, (_, sid, argv) in now.items() if sid == session and own.search(argv)}
    _stop({pid for pid in started - {me} if pid not in before}, grace_s)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"


def unfit(resources: Resources, address: str | None, num_cpus: int | None,
          num_gpus: int | None, wait_s: float = CLUSTER_FIT_WAIT_S,
          progress: Callable[[str], None] = print,
          stop: Callable[[], bool] = lambda: False) -> str | None:
    """Why no node will ever run one block of `resources`, in one line; None if one can.

    Embedded Ray: compared, before it starts, with what it will have: `num_cpus`/`num_gpus`
    (else this machine's CPUs, and the GPUs torch sees) and `embedded_memory()`. A cluster:
    connects and waits up to `wait_s` for a node that fits, asking the autoscaler for one
    meanwhile, since Ray itself would leave such a block pending forever. The wait ends
    early (None) when `stop()` says so (a signal: the caller stops)."""
    if not address:
        gpus = num_gpus if num_gpus is not None else _visible_gpus() if resources.num_gpus else 0
        problem = unsatisfiable(resources, [{"CPU": num_cpus or os.cpu_count() or 1,
                                             "GPU": gpus, "memory": embedded_memory()}],
                                "the embedded Ray")
        return problem and (f"{problem} (this machine's, or what --num-cpus / --num-gpus "
                            "give it); lower it, or run on a cluster with --address")
    connect(address, num_cpus, num_gpus)
    if stop():  # a SIGTERM during ray.init (see `connect`)
        return None
    return wait_for_fit(resources, f"any node of the cluster at {address}", wait_s, progress,
                        stop)


# Ray's default object store: this share of the memory available when it starts, which its
# "memory" resource (what blocks may ask for) does not include.
OBJECT_STORE_SHARE = 0.3


def embedded_memory() -> float:
    """What the embedded Ray's "memory" resource will be (bytes): the memory available now
    less its object store's default share. Physical memory would admit a block that Ray
    then leaves pending forever (`memory_gb: 22` on a 24 GB machine)."""
    return available_memory() * (1.0 - OBJECT_STORE_SHARE)


def available_memory() -> float:
    """Bytes of memory available to new processes: Linux's MemAvailable (free memory plus
    what the kernel can reclaim), elsewhere the free pages."""
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def wait_for_fit(resources: Resources, where: str, wait_s: float = CLUSTER_FIT_WAIT_S,
                 progress: Callable[[str], None] = print,
                 stop: Callable[[], bool] = lambda: False) -> str | None:
    """Why no live node of the connected cluster will run one block of `resources`, after
    waiting up to `wait_s` for one to join (asking the autoscaler for one meanwhile, since
    Ray itself would leave such a block pending forever); None as soon as one can, or when
    `stop()` says so."""
    import ray
    from ray.autoscaler.sdk import request_resources

    deadline, asked = time.monotonic() + wait_s, False
    try:
        while True:
            problem = unsatisfiable(resources, [n["Resources"] for n in ray.nodes() if n["Alive"]],
                                    where)
            if problem is None or stop():
                return None
            if time.monotonic() >= deadline:
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


P = TypeVar("P")


class ChunkPool(Generic[P]):
    """Chunks of blocks in flight on Ray, each with a payload of the caller's: the one wait
    loop of `run` and `tune`.

    `rounds()` waits for chunks to finish and yields, after each wait, the (payload,
    records) of the chunks that finished in it (often none: the caller's chance to show
    progress; it may `submit` more at any time). A chunk Ray gives up on is first checked
    against its nodes (`NodeWatch`): a lost node is not the seeds' fault.

    - The node this driver runs on is gone (its raylet died: `LocalRayletDiedError`, or
      the cluster says so): nothing more can run; `RayLost` is raised and the chunks not
      yet back stay unrecorded, pending for a re-run.
    - Another node left the cluster while the chunk was out: the chunk is submitted again
      as it was (with Ray's retries afresh) to the nodes that remain, once a node that
      fits it is alive (`wait_for_fit`; `RayLost` if none joins).
    - Otherwise the worker-death policy: Ray retried it `max_retries` times (`submit`); if
      its worker died every time, its seeds are submitted again one at a time under the
      same payload (their records then come back one piece at a time), so only a seed
      that kills its worker when run alone is recorded failed (`lost_chunk`).

    The rounds end when nothing is in flight or a stop is requested (`signals.requested()`,
    polled between waits); chunks still running are then left to the session's shutdown
    (no `ray.cancel`, whose races with finishing tasks can abort the driver), and run again
    on resume."""

    def __init__(self, task_name: str, resources: Resources, max_retries: int,
                 timeout_s: float | None = None,
                 progress: Callable[[str], None] = print) -> None:
        self.task_name = task_name
        self.resources = resources
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        self.progress = progress
        self.nodes = NodeWatch()
        # ref -> (blocks, payload, nodes known gone when it was submitted)
        self._in_flight: dict[Any, tuple[list[Block], P, int]] = {}

    def __len__(self) -> int:
        """Chunks in flight."""
        return len(self._in_flight)

    def submit(self, blocks: list[Block], payload: P) -> None:
        ref = submit(self.task_name, blocks, self.resources, self.max_retries, self.timeout_s)
        self._in_flight[ref] = (blocks, payload, len(self.nodes.gone))

    def rounds(self, poll_s: float = 0.5) -> Iterator[list[tuple[P, list[TrialRecord]]]]:
        import ray

        while self._in_flight and not signals.requested():
            ready, _ = ray.wait(list(self._in_flight), num_returns=1, timeout=poll_s)
            finished = []
            for ref in ready:
                blocks, payload, gone_before = self._in_flight.pop(ref)
                try:
                    records: list[TrialRecord] = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    if signals.requested():
                        return  # lost to the stop, not to the trial: it runs again on resume
                    if killed_its_worker(exc):
                        if self._lost_with_a_node(exc, gone_before):
                            self.submit(blocks, payload)
                            continue
                        if num_trials(blocks) > 1:
                            self._one_seed_each(blocks, payload, exc)
                            continue
                    records = lost_chunk(blocks, exc, self.max_retries)
                finished.append((payload, records))
            yield finished

    def _lost_with_a_node(self, exc: BaseException, gone_before: int) -> bool:
        """Whether the chunk was lost with a node that left the cluster while it was out
        (True: run it again on the nodes that remain). `RayLost` if this driver's own node
        is gone, or no remaining node can run a chunk."""
        import ray

        newly_gone = self.nodes.refresh()
        own = ray.get_runtime_context().get_node_id()
        if isinstance(exc, ray.exceptions.LocalRayletDiedError) or own in self.nodes.dead:
            _lose_local_node()
            raise RayLost(f"the Ray node this driver runs on is gone ({self.nodes.describe(own)}"
                          f": {type(exc).__name__})")
        for node in newly_gone:
            self.progress(f"  a Ray node left the cluster ({self.nodes.describe(node)}); "
                          "its chunks run again on the nodes that remain")
        if len(self.nodes.gone) <= gone_before:
            return False
        problem = wait_for_fit(self.resources, "any node left in the cluster",
                               progress=self.progress,
                               stop=lambda: signals.requested() is not None)
        if problem:
            raise RayLost(f"a Ray node left the cluster and {problem}")
        return True

    def _one_seed_each(self, blocks: list[Block], payload: P, exc: BaseException) -> None:
        """Ray retried the chunk `max_retries` times and its worker died each time: run its
        seeds one by one, so only the seed that kills its worker is lost (and its innocent
        neighbours are not)."""
        singles = one_seed_each(blocks)
        self.progress(f"  a worker died {self.max_retries + 1} times running {len(singles)} "
                      f"trials ({_first_line(exc)}); running them one seed at a time")
        for single in singles:
            self.submit(single, payload)


class NodeWatch:
    """Which nodes of the connected Ray session are gone: marked dead by the cluster, or
    alive in its view but with a raylet that no longer accepts connections (the cluster
    marks a killed raylet dead only after missing its heartbeats for several seconds, while
    its tasks' failures reach the driver at once)."""

    PROBE_S = 2.0  # a raylet that does not accept a connection within this is gone

    def __init__(self) -> None:
        import ray

        # node id -> its raylet's address; nodes dead before the run are not news
        self.gone: dict[str, str] = {n["NodeID"]: _raylet(n) for n in ray.nodes()
                                     if not n["Alive"]}
        self.dead: set[str] = set(self.gone)  # ... those the cluster itself marked dead

    def refresh(self) -> list[str]:
        """Look again; returns the nodes newly found gone."""
        import ray

        newly = []
        for node in ray.nodes():
            node_id = node["NodeID"]
            if not node["Alive"]:
                self.dead.add(node_id)
            if node_id in self.gone:
                continue
            if not node["Alive"] or not _accepts(node["NodeManagerAddress"],
                                                 node["NodeManagerPort"], self.PROBE_S):
                self.gone[node_id] = _raylet(node)
                newly.append(node_id)
        return newly

    def describe(self, node_id: str) -> str:
        where = self.gone.get(node_id)
        return f"node {node_id[:8]}" + (f", raylet at {where}" if where else "")


def _raylet(node: dict[str, Any]) -> str:
    return f"{node['NodeManagerAddress']}:{node['NodeManagerPort']}"


def _accepts(host: str, port: int, timeout_s: float) -> bool:
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return True
    except OSError:
        return False


def num_trials(blocks: list[Block]) -> int:
    return sum(len(b.trials) for b in blocks)


def killed_its_worker(exc: BaseException) -> bool:
    """A worker or node death (crash, OOM kill, node lost), not an exception of the task's
    own code (`RayTaskError`: the same inputs would raise again)."""
    import ray

    return isinstance(exc, ray.exceptions.RayError) and not isinstance(
        exc, ray.exceptions.RayTaskError)


LOST_NODE_ERRORS = ("LocalRayletDiedError", "NodeDiedError")


def lost_with_its_node(error: str | None) -> bool:
    """Whether a failed record's error says its trial was lost with its Ray node. Older
    sgsweep recorded such trials failed ("killed its worker N times ...:
    LocalRayletDiedError"); they never ran to an end of their own, so they run again."""
    return isinstance(error, str) and any(name in error for name in LOST_NODE_ERRORS)


def one_seed_each(chunk: list[Block]) -> list[list[Block]]:
    """A chunk as one-trial chunks, in order."""
    return [[Block(b.config_id, b.config, (t,))] for b in chunk for t in b.trials]


def _first_line(exc: BaseException) -> str:
    return describe_error(exc).splitlines()[0][:300]


def lost_chunk(chunk: list[Block], exc: BaseException, max_retries: int) -> list[TrialRecord]:
    """Ray gave up on a chunk past `max_retries`: its trials are recorded failed. A single
    trial whose worker died on every attempt is the one that kills it."""
    now = time.time()
    attempts = max_retries + 1
    times = f"{attempts} time{'s' if attempts > 1 else ''}"
    if killed_its_worker(exc) and num_trials(chunk) == 1:
        error = f"killed its worker {times} (run alone): {_first_line(exc)}"
    elif killed_its_worker(exc):
        error = f"its worker died {times} running its block: {_first_line(exc)}"
    else:
        error = f"lost by Ray: {_first_line(exc)}"
    return [TrialRecord(t.trial_id, t.config_id, t.seed, "failed", error, 0.0, now)
            for block in chunk for t in block.trials]


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


def shutdown() -> None:
    """Leave Ray, stopping the embedded one.

    Once the raylet of this driver's node is gone, `ray.shutdown` would end the process on
    the spot (Ray exits when it cannot say goodbye to its raylet), before the run has said
    what happened. The embedded Ray's other processes are stopped here instead, and Ray's
    own exit hook ends the process (exit code 1) after the error line is printed."""
    import ray

    global _embedded_before
    if not ray.is_initialized():
        return
    if _local_node_lost:
        if _embedded_before is not None:
            stop_started_since(_embedded_before)  # its GCS and agents: our children
            if _lost_session_dir is not None:  # orphaned by the raylet, they would idle on
                stop_workers_of(_lost_session_dir)
        return
    ray.shutdown()
    _embedded_before = None
    _release_watcher()


# A driver killed with -9 takes its embedded GCS and raylet with it, but the raylet's agents
# (dashboard agent, runtime-env agent) idle on for a minute or more: they try to tell the
# dead GCS that their raylet died, with Ray's fixed 60 s timeout. A small watcher process
# (`python -m orchestrator.processes`, in a session of its own) holds the read end of a pipe
# from the driver: EOF without the word "done" (the driver died) makes it stop them.
_watcher: subprocess.Popen | None = None


def _watch_embedded(before: dict[int, tuple[int, int, str]]) -> None:
    """Start the watcher (Linux) over what the embedded Ray's start added under this
    driver: its GCS, raylet and agents, each named by pid and start time."""
    global _watcher
    if not Path("/proc").is_dir():
        return
    tree = _descendants(os.getpid(), _processes())
    targets = [f"{pid}:{born}" for pid in sorted(tree - set(before))
               if (born := _started_at(pid)) >= 0]
    if not targets:
        return
    with contextlib.suppress(OSError):
        _watcher = subprocess.Popen(  # noqa: S603 - our own interpreter and code
            [sys.executable, "-m", "orchestrator.processes", *targets], stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _release_watcher() -> None:
    """The embedded Ray stopped as it should: the watcher has nothing to do."""
    global _watcher
    if _watcher is None:
        return
    with contextlib.suppress(OSError, ValueError):
        _watcher.stdin.write(b"done\n")
        _watcher.stdin.close()
    with contextlib.suppress(subprocess.TimeoutExpired):
        _watcher.wait(timeout=10)
    _watcher = None


_embedded_before: dict[int, tuple[int, int, str]] | None = None  # processes before its start
_local_node_lost = False  # this driver's raylet is gone
_lost_session_dir: Path | None = None  # ... and the session folder of its node


def _lose_local_node() -> None:
    """Remember that this driver's node is gone (see `shutdown`), with its session folder
    (Ray names it in the node's socket paths), where its workers' logs name their pids."""
    import ray

    global _local_node_lost, _lost_session_dir
    _local_node_lost = True
    own = ray.get_runtime_context().get_node_id()
    sockets = [n["RayletSocketName"] for n in ray.nodes() if n["NodeID"] == own]
    _lost_session_dir = Path(sockets[0]).parent.parent if sockets else None


def stop_workers_of(session_dir: Path, grace_s: float = 5.0) -> None:
    """Stop the Ray workers a dead raylet leaves behind: the processes its session's logs
    name (`python-core-worker-ID_PID.log`) that still run as `ray::…` and started after
    this driver did (a pid reused by an older process is left alone)."""
    born = _started_at(os.getpid())
    workers = set()
    for log in (session_dir / "logs").glob("python-core-worker-*_*.log"):
        pid = log.stem.rpartition("_")[2]
        if not pid.isdigit():
            continue
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue  # gone already
        if argv.startswith(b"ray::") and _started_at(int(pid)) >= born:
            workers.add(int(pid))
    _stop(workers, grace_s)
