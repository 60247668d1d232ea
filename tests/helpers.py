"""Helpers of the real-process tests (several test modules use them): the installed
command, a probe sweep file, drivers started and signalled as a user would, and servers
waited for by condition with a deadline."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pyarrow.dataset as ds

from orchestrator.runner import RunOptions
from orchestrator.tracking import default_tracking_uri
from orchestrator.tracking.mlflow_tracker import client_for
from tests.mirror import all_runs
from tests.two_node_sweep import free_ports

BIN = Path(sys.executable).parent
SGSWEEP = str(BIN / "sgsweep")
ISOLATED = ["unshare", "--net", "--pid", "--fork", "--mount-proc"]  # loopback-only, own PIDs


def probe_spec(tmp: Path, name: str = "probe", seeds: int = 10, **params) -> Path:
    spec = tmp / f"{name}.yaml"
    values = ", ".join(f"{k}: {v}" for k, v in params.items())
    spec.write_text(f"name: {name}\ntask: probe\nparams: {{{values}}}\n"
                    f"grid: {{label: [a, b, c, d]}}\nseeds: {seeds}\n")
    return spec


def free_port() -> int:
    return free_ports(1)[0]


def trials_of(out: Path):
    return ds.dataset(out / "trials").to_table().to_pandas()


def quiet(**kwargs) -> RunOptions:
    return RunOptions(address="auto", progress=lambda _: None, live=False, **kwargs)


def isolated_env() -> dict[str, str]:
    return {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def isolated(command: list[str]) -> list[str]:
    # In a fresh network namespace loopback must be brought up first.
    script = "ip link set lo up && exec " + " ".join(f"'{c}'" for c in command)
    return [*ISOLATED, "sh", "-c", script]


def kill_9_after_parts(command: list[str], out: Path, parts: int, within_s: float) -> None:
    """Run `command` isolated, and once `out` holds `parts` trial part files (or `within_s`
    has passed) kill -9 its driver. The driver is PID 1 of its own namespace, so the
    embedded Ray dies with it, as in a reboot."""
    wrapper = subprocess.Popen(isolated(command), env=isolated_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if len(list((out / "trials").glob("part-*.parquet"))) >= parts:
            break
        time.sleep(0.05)
    driver = subprocess.run(["pgrep", "-P", str(wrapper.pid)], capture_output=True,
                            text=True).stdout.split()
    os.kill(int(driver[0]), signal.SIGKILL)
    wrapper.wait(timeout=60)


class Driver:
    """`sgsweep` as a user runs it, in its own process group as a shell job is (so a
    terminal's Ctrl-C, sent to the group, can be imitated); stderr collected as it comes."""

    def __init__(self, command: list[str], env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, env=env or isolated_env(),
                                        start_new_session=True)
        self.err: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stderr:
            self.err.append(line)

    def wait_until(self, ready, what: str, within_s: float = 600) -> None:
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline and self.process.poll() is None and not ready():
            time.sleep(0.05)
        assert self.process.poll() is None and ready(), (
            f"{what} did not happen while the driver ran: {''.join(self.err)[-3000:]}")

    def signal_group(self, signum: int) -> None:
        os.killpg(self.process.pid, signum)

    def finish(self, timeout: float = 600) -> tuple[int, str, str]:
        out = self.process.stdout.read()
        self.process.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return self.process.returncode, out, "".join(self.err)


def parts(out: Path) -> int:
    return len(list((out / "trials").glob("part-*"))) if (out / "trials").is_dir() else 0


def runs_by_role(out: Path, sweep: str) -> dict[str, list]:
    client = client_for(default_tracking_uri(out))
    experiment = client.get_experiment_by_name(sweep)
    by_role: dict[str, list] = {}
    for run in all_runs(client, experiment.experiment_id) if experiment else []:
        by_role.setdefault(run.data.tags.get("sgsweep.role"), []).append(run)
    return by_role


def assert_clean_stop(code: int, err: str, expected: int) -> None:
    assert code == expected, err[-3000:]
    assert "interrupted: completed trials are saved" in err and "again to resume" in err
    assert "Traceback" not in err and "Check failed" not in err, err[-3000:]


def start_mlflow_server(tmp_path: Path, port: int) -> subprocess.Popen:
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--default-artifact-root", str(tmp_path / "server-artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_http(f"http://127.0.0.1:{port}/health", server)
    return server


def wait_http(url: str, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "server exited"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(url)


def stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


def assert_plain_rerun_completes(command: list[str], out: Path, total: int,
                                 recorded: int) -> None:
    """A plain re-run of `command` (isolated, as the interrupted one) runs exactly the
    trials not yet recorded, and leaves each of the `total` trials recorded once, ok."""
    again = subprocess.run(isolated(command), env=isolated_env(), capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{total - recorded} ok, 0 failed, {recorded} already recorded" in again.stdout
    trials = trials_of(out)
    assert len(trials) == total and trials.trial_id.is_unique and (trials.status == "ok").all()
