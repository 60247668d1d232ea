"""Progress of a sweep: a live bar on a terminal, plain periodic lines otherwise."""

from __future__ import annotations

import shutil
import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, total: int, stream: TextIO | None = None, interval_s: float = 10.0,
                 live: bool | None = None, enabled: bool = True) -> None:
        self.total = total
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self.interval_s = 0.2 if self.live else interval_s
        self.ok = self.failed = self.in_flight = 0
        self.start = time.monotonic()
        self._last = 0.0
        self.enabled = enabled

    @property
    def done(self) -> int:
        return self.ok + self.failed

    def update(self, ok: int = 0, failed: int = 0, in_flight: int | None = None,
               force: bool = False) -> None:
        self.ok += ok
        self.failed += failed
        if in_flight is not None:
            self.in_flight = in_flight
        now = time.monotonic()
        if force or now - self._last >= self.interval_s:
            self._last = now
            self._draw(now)

    def line(self, now: float | None = None) -> str:
        elapsed = (now or time.monotonic()) - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = self.total - self.done
        eta = _duration(left / rate) if rate > 0 else "?"
        # Short enough for an 80-column terminal with room for a bar (about 60 characters).
        return (f"{self.done}/{self.total} ({self.ok} ok, {self.failed} failed, "
                f"{self.in_flight} running) {rate:.1f}/s {_duration(elapsed)} eta {eta}")

    def _draw(self, now: float) -> None:
        if not self.enabled:
            return
        text = self.line(now)
        if not self.live:
            print(f"  {text}", file=self.stream, flush=True)
            return
        width = shutil.get_terminal_size((80, 20)).columns
        bar_width = min(40, width - len(text) - 4)  # the text first: no bar if it fits alone
        filled = int(bar_width * self.done / max(self.total, 1))
        bar = f"[{'#' * filled}{'-' * (bar_width - filled)}] " if bar_width >= 10 else ""
        self.stream.write("\r" + f"{bar}{text}"[: width - 1].ljust(width - 1))
        self.stream.flush()

    def close(self) -> None:
        self.update(force=True)
        if self.live and self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
