"""Ctrl-C, SIGTERM and SIGHUP as a request to stop, honoured where stopping is safe.

A signal that raises `KeyboardInterrupt` at an arbitrary bytecode can land inside
`ray.init`, `ray.wait` or `ray.shutdown` (Ray's C++ state then aborts the driver), in the
middle of a Parquet rename or an MLflow transaction. So while the engine works it runs in
`deferred()`: the first signal is only recorded, and the engine polls `requested()` at
points where it can stop cleanly (between `ray.wait` calls, between MLflow calls), then
raises `Interrupted` itself. A second signal stops at once (the user insists).

`install()` is called by the command line only; a library caller (tests, benchmarks,
notebooks) keeps Python's own Ctrl-C behaviour.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# Delivered by a terminal to its whole foreground process group (not only the driver).
TERMINAL_SIGNALS = {signal.SIGINT, signal.SIGHUP}


class Interrupted(KeyboardInterrupt):
    """A stop asked for by a signal; `exit_code` is the shell's 128 + signal number."""

    def __init__(self, signum: int = signal.SIGINT, reported: bool = False) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.reported = reported  # the resume line has been printed

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


_state = threading.local()  # only the main thread defers (signal handlers run there)
_requested: int | None = None
_installed = False


def _handler(signum: int, frame) -> None:
    global _requested
    if getattr(_state, "depth", 0) and _requested is None:
        _requested = signum
        return
    raise Interrupted(signum)


def install() -> None:
    """Route SIGINT, SIGTERM and SIGHUP through the stop request (main thread only)."""
    global _installed
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in SIGNALS:
        signal.signal(signum, _handler)
    _installed = True


def reinstall() -> None:
    """After a library replaced our handlers (`ray.init` installs its own for SIGTERM)."""
    if _installed:
        install()


def requested() -> int | None:
    """The signal that asked to stop, if any."""
    return _requested


def request(signum: int) -> None:
    """Record a stop asked for by other means (a library's own handler caught it)."""
    global _requested
    if _requested is None:
        _requested = signum


def check() -> None:
    """Raise `Interrupted` if a stop was asked for."""
    if _requested is not None:
        raise Interrupted(_requested)


def reset() -> None:
    global _requested
    _requested = None


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Record signals instead of raising them; code inside polls `requested()`. A stop
    requested but not acted on inside is raised on the way out."""
    _state.depth = getattr(_state, "depth", 0) + 1
    try:
        yield
    finally:
        _state.depth -= 1
    check()


@contextlib.contextmanager
def shielded_children() -> Iterator[None]:
    """Processes started inside ignore the terminal's Ctrl-C and hang-up.

    A terminal sends SIGINT to its whole foreground process group, which includes the
    embedded Ray's GCS and raylet: killed under a running driver they take it down with
    them. A blocked signal mask is inherited by the processes started here; the driver
    unblocks on exit and still receives the signal (it stays pending until then).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, TERMINAL_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextlib.contextmanager
def witnessed() -> Iterator[None]:
    """A stop signal that arrives inside is requested afterwards, whoever's handler saw it.

    While a library runs it may own a handler (`ray.init` installs one for SIGTERM that
    calls `sys.exit`), and the exception that handler raises can be swallowed where it
    lands: inside an at-fork hook of a process being started Python prints it as
    "Exception ignored ... Traceback" and the stop is lost (the run then went on to
    finish). The C-level wakeup fd records every signal whatever Python handler runs, so
    nothing is lost, and such a swallowed `SystemExit` is not printed (sys.unraisablehook).
    Only where `install()` made signals a stop request (the command line).
    """
    if not _installed or threading.current_thread() is not threading.main_thread():
        yield
        return
    read, write = os.pipe()
    os.set_blocking(read, False)
    os.set_blocking(write, False)
    previous = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    previous_hook = sys.unraisablehook

    def quiet_exit(unraisable) -> None:  # the lost SystemExit of a signal: requested below
        if not (isinstance(unraisable.exc_value, SystemExit)
                and unraisable.exc_value.code in SIGNALS):
            previous_hook(unraisable)

    sys.unraisablehook = quiet_exit
    try:
        yield
    finally:
        sys.unraisablehook = previous_hook
        signal.set_wakeup_fd(previous)
        try:
            seen = os.read(read, 4096)
        except BlockingIOError:
            seen = b""
        os.close(read)
        os.close(write)
        for signum in seen:
            if signum in SIGNALS:
                request(signum)
