"""orchestrator.signals with real signals sent to this process: inside `deferred()` a first
signal is only recorded (the engine stops at its next safe point), a second one stops at
once, and a stop left unhandled is raised on the way out with the shell's exit code."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from orchestrator import signals


@pytest.fixture
def installed():
    previous = {s: signal.getsignal(s) for s in signals.SIGNALS}
    signals.reset()
    signals.install()
    yield
    for signum, handler in previous.items():
        signal.signal(signum, handler)
    signals.reset()


def deliver(signum: int) -> None:
    os.kill(os.getpid(), signum)  # Python runs the handler right after this call returns


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143),
                                               (signal.SIGHUP, 129)])
def test_a_signal_inside_deferred_is_recorded_then_raised_on_the_way_out(installed, signum,
                                                                        code) -> None:
    with pytest.raises(signals.Interrupted) as stopped, signals.deferred():
        deliver(signum)
        assert signals.requested() == signum  # recorded, nothing raised here
    assert stopped.value.exit_code == code and not stopped.value.reported


def test_a_second_signal_stops_at_once(installed) -> None:
    with pytest.raises(signals.Interrupted) as stopped, signals.deferred():
        deliver(signal.SIGINT)
        deliver(signal.SIGTERM)
        pytest.fail("the second signal should have raised")
    assert stopped.value.signum == signal.SIGTERM


def test_outside_deferred_a_signal_raises_where_it_lands(installed) -> None:
    with pytest.raises(signals.Interrupted):
        deliver(signal.SIGHUP)


def test_children_started_while_shielded_ignore_the_terminal_ctrl_c() -> None:
    # A terminal's Ctrl-C reaches the whole process group: Ray's GCS and raylet, started
    # shielded, must outlive it (the driver stops them after it has stopped).
    with signals.shielded_children():
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        child.send_signal(signal.SIGINT)
        with pytest.raises(subprocess.TimeoutExpired):
            child.wait(timeout=2)
        assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    finally:
        child.kill()
        child.wait()


def test_a_sigterm_a_library_handler_swallows_inside_witnessed_is_still_requested(
        installed) -> None:
    # ray.init's own SIGTERM handler raises SystemExit, which Python swallows when the
    # signal lands in an at-fork hook ("Exception ignored"): the stop must not be lost.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)  # the library's, loses it
    with signals.witnessed():
        deliver(signal.SIGTERM)
    assert signals.requested() == signal.SIGTERM


def test_witnessed_records_nothing_when_no_signal_arrives(installed) -> None:
    with signals.witnessed():
        pass
    assert signals.requested() is None


def test_the_lost_systemexit_of_a_signal_is_not_printed_but_others_are(installed,
                                                                        monkeypatch) -> None:
    import types

    def unraisable(exc: BaseException):
        return types.SimpleNamespace(exc_type=type(exc), exc_value=exc, exc_traceback=None,
                                     err_msg="Exception ignored in", object=None)

    printed: list[BaseException] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: printed.append(u.exc_value))
    with signals.witnessed():
        sys.unraisablehook(unraisable(SystemExit(signal.SIGTERM)))
        sys.unraisablehook(unraisable(ValueError("a real fault")))
    assert [type(e) for e in printed] == [ValueError]
