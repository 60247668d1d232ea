"""This host's processes, read from Linux's /proc (empty elsewhere), and stopping them.

No heavy imports: besides `orchestrator.schedule`, the watcher of an embedded Ray runs this
module on its own (`python -m orchestrator.processes PID:START ...`). It reads standard
input until EOF; unless the driver wrote "done" first (it stopped its Ray itself), it stops
each given process that still runs with the same start time (a pid reused meanwhile by
another process is left alone).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path


def processes() -> dict[int, tuple[int, int, str]]:
    """Every process on this host: pid -> (parent pid, session id, command line); Linux's
    /proc, empty elsewhere (there a failed start may leave processes behind)."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            argv = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace")
        except (OSError, IndexError):
            continue  # gone meanwhile
        table[int(stat.parent.name)] = (int(fields[1]), int(fields[3]), argv)
    return table


def descendants(root: int, table: dict[int, tuple[int, int, str]]) -> set[int]:
    """Every process below `root` in `table` (`processes()`): children, theirs, and so on."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def stop(pids: set[int], grace_s: float) -> None:
    """SIGTERM, then SIGKILL to what still runs after `grace_s`."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signum)
        deadline = time.monotonic() + grace_s
        while pids and time.monotonic() < deadline:
            pids = {pid for pid in pids if running(pid)}
            time.sleep(0.1)


def running(pid: int) -> bool:
    """Alive and not a zombie (a child of ours that Ray's Popen has not reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def started_at(pid: int) -> int:
    """When `pid` started, in clock ticks since boot (-1 if it is gone)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return -1


def watch(targets: list[str]) -> None:
    """The watcher: `targets` are PID:START; see the module's doc."""
    if sys.stdin.read().strip() == "done":
        return
    born = dict(tuple(map(int, t.split(":"))) for t in targets)
    stop({pid for pid, start in born.items() if started_at(pid) == start}, grace_s=3.0)


if __name__ == "__main__":
    watch(sys.argv[1:])
