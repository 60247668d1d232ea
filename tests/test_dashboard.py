"""`sgsweep dashboard DIR`: optuna-dashboard on 127.0.0.1 for a `sgsweep tune` study, opening
only the storage DIR/tune.json names after checking it."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from orchestrator.cli import main
from tests.helpers import SGSWEEP
from tests.two_node_sweep import free_ports

STUDY = {
    "name": "dash-probe", "task": "probe", "params": {"steps": 2},
    "search": {"work_ms": {"low": 0.0, "high": 5.0}},
    "objective": {"metric": "value", "direction": "minimize"},
    "n_trials": 3, "seeds": 2, "rung_size": 2, "parallelism": 1, "pruner": "none",
    "sampler": {"type": "random", "seed": 0},
}


def _listening_addresses(port: int) -> set[str]:
    """Local addresses of the IPv4/IPv6 sockets listening on `port` (from /proc/net)."""
    found = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_dashboard_serves_the_tuned_study_on_loopback_only(tmp_path: Path) -> None:
    spec = tmp_path / "dash.yaml"
    spec.write_text(yaml.safe_dump(STUDY))
    out = tmp_path / "out"
    tuned = subprocess.run([SGSWEEP, "tune", str(spec), "--out", str(out), "--num-cpus", "1",
                            "--tracking-uri", "none", "--no-report"],
                           capture_output=True, text=True, timeout=400)
    assert tuned.returncode == 0, tuned.stderr[-2000:]
    (port,) = free_ports(1)
    server = subprocess.Popen([SGSWEEP, "dashboard", str(out), "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, studies = time.monotonic() + 60, None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                studies = _get_json(f"http://127.0.0.1:{port}/api/studies")["study_summaries"]
                break
            except OSError:
                time.sleep(0.5)
        assert studies is not None, server.communicate(timeout=10)[0][-2000:]
        assert [s["study_name"] for s in studies] == ["dash-probe"]
        detail = _get_json(f"http://127.0.0.1:{port}/api/studies/{studies[0]['study_id']}")
        assert len(detail["trials"]) == 3
        assert {t["state"] for t in detail["trials"]} == {"Complete"}
        assert _listening_addresses(port) == {"0100007F"}  # 127.0.0.1, nothing else
    finally:
        server.terminate()
        server.wait(timeout=30)


OBJECTIVE = '"objective": {"metric": "m"}'


@pytest.mark.parametrize("tune_json, expected", [
    ("not json", "not readable as JSON"),
    ('["a list"]', "expected a JSON object"),
    ('{"study": "s", "storage": "sqlite:////tmp/sgsweep-planted-never-created.db", '
     f'{OBJECTIVE}}}', "is not DIR's journal, an existing journal or SQLite file"),
    (f'{{"study": "s", "storage": "/etc/passwd-not-a-journal", {OBJECTIVE}}}',
     "is not DIR's journal"),
    (f'{{"study": "s", "storage": "redis://host", {OBJECTIVE}}}', "or a postgresql/mysql URL"),
    (f'{{"study": "s", "storage": "", {OBJECTIVE}}}', "the study's journal"),
])
def test_dashboard_refuses_what_tune_json_should_not_say_in_one_line(
        tmp_path: Path, capsys, tune_json: str, expected: str) -> None:
    (tmp_path / "tune.json").write_text(tune_json)
    assert main(["dashboard", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and err.count("\n") == 1, err
    assert not Path("/tmp/sgsweep-planted-never-created.db").exists()


@pytest.mark.parametrize("argv, expected", [
    (["--port", "99999"], "expected a port number from 1 to 65535"),
    ([], "no Optuna study here"),
])
def test_dashboard_refuses_a_bad_port_or_a_directory_without_a_study(
        tmp_path: Path, capsys, argv: list[str], expected: str) -> None:
    if argv:
        (tmp_path / "tune.json").write_text(f'{{"study": "s", "storage": "", {OBJECTIVE}}}')
    assert main(["dashboard", str(tmp_path), *argv]) == 2
    assert expected in capsys.readouterr().err
