"""Where results came from: the code version, package versions and hardware of each
invocation (`sgsweep run` / `sgsweep tune`), and the hardware of each trial's worker.

An invocation's provenance is one row of `DIR/invocations/` (joined to the trials by the
`invocation` column every trial row carries) and tags on its MLflow run. The code version
is the git commit of the checkout sgsweep runs from, with whether its tracked files were
changed (and a hash of the change, so two different dirty trees differ); outside a git
checkout it is the installed package's version. Bit-identity of seeded results holds per
machine only (torch picks its kernels by CPU capability, see docs/running.md), so the
report warns when a sweep's trials mix code versions or CPU capabilities.

No Ray and no MLflow here; torch is imported only to read its CPU capability and threads.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import platform
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # the checkout, when run from one
PACKAGES = ("torch", "numpy", "ray", "mlflow", "optuna", "pyarrow", "popgym")
GIT_TIMEOUT_S = 10.0

# One row of DIR/invocations/: (column, kind) with kind one of str | bool | int | time.
FIELDS: list[tuple[str, str]] = [
    ("invocation", "str"), ("command", "str"), ("sweep", "str"), ("started_at", "time"),
    ("code_version", "str"), ("git_commit", "str"), ("git_dirty", "bool"),
    ("git_diff_sha", "str"), ("package_version", "str"), ("python", "str"),
    *[(name, "str") for name in PACKAGES],
    ("cpu_capability", "str"), ("torch_threads", "int"), ("host", "str"),
    ("cpu_model", "str"), ("platform", "str"),
]


def _git(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True,
                              timeout=GIT_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.decode("utf-8", "replace") if done.returncode == 0 else None


def code_version(root: Path = PACKAGE_ROOT) -> dict[str, Any]:
    """git_commit, git_dirty, git_diff_sha (of `git diff HEAD`, tracked files only: result
    folders inside the checkout do not make it dirty), package_version, code_version."""
    version = _package_version()
    top = _git(root, "rev-parse", "--show-toplevel")
    # only the checkout sgsweep itself lives in (not e.g. a repository holding a venv)
    if top is None or Path(top.strip()).resolve() != root.resolve():
        return {"git_commit": "", "git_dirty": None, "git_diff_sha": "",
                "package_version": version, "code_version": f"sgsweep {version}"}
    commit = (_git(root, "rev-parse", "HEAD") or "").strip()
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    dirty = None if status is None else bool(status.strip())
    diff_sha = ""
    if dirty:
        diff = _git(root, "diff", "HEAD")
        diff_sha = hashlib.sha256((diff or "").encode()).hexdigest()[:12]
    shown = commit[:12] or "unknown commit"
    if dirty:
        shown += f"+dirty.{diff_sha}"
    return {"git_commit": commit, "git_dirty": dirty, "git_diff_sha": diff_sha,
            "package_version": version, "code_version": shown}


def _package_version(name: str = "sgsweep") -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return ""


def cpu_model() -> str:
    """The CPU's "model name" from /proc/cpuinfo (Linux), else what `platform` says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_capability() -> str:
    """torch's CPU kernel level (e.g. AVX2, AVX512, DEFAULT): it decides bit-identity."""
    import torch

    return str(torch.backends.cpu.get_cpu_capability())


def collect(invocation: str, command: str, sweep: str,
            root: Path = PACKAGE_ROOT) -> dict[str, Any]:
    """This process's provenance as one DIR/invocations/ row."""
    import torch

    row: dict[str, Any] = {
        "invocation": invocation, "command": command, "sweep": sweep,
        "started_at": time.time(), **code_version(root),
        "python": platform.python_version(),
        **{name: _package_version(name) for name in PACKAGES},
        "cpu_capability": cpu_capability(), "torch_threads": torch.get_num_threads(),
        "host": socket.gethostname(), "cpu_model": cpu_model(),
        "platform": f"{platform.system()} {platform.release()} {platform.machine()}",
    }
    return {name: row[name] for name, _ in FIELDS}


def mlflow_tags(row: dict[str, Any]) -> dict[str, str]:
    """An invocation's provenance as MLflow tags: MLflow's own git commit tag (in a git
    checkout), the rest under `sgsweep.`."""
    tags = {"mlflow.source.git.commit": row["git_commit"]} if row.get("git_commit") else {}
    for name in ("code_version", "package_version", "python", "cpu_capability",
                 "torch_threads", "host", "cpu_model", "platform"):
        tags[f"sgsweep.{name}"] = str(row.get(name, ""))
    if row.get("git_dirty") is not None:
        tags["sgsweep.git_dirty"] = str(bool(row["git_dirty"])).lower()
    for name in PACKAGES:
        tags[f"sgsweep.version.{name}"] = str(row.get(name) or "")
    return tags


def trial_hardware(device: str) -> tuple[str, str]:
    """(GPU name or "" on CPU, torch CPU capability) of the process running a trial."""
    gpu = ""
    if device.startswith("cuda"):
        try:
            import torch

            gpu = torch.cuda.get_device_name(torch.device(device))
        except Exception as exc:  # noqa: BLE001 - a name is not worth failing a trial
            log.debug("no GPU name: %s", exc)
    try:
        capability = cpu_capability()
    except Exception:  # noqa: BLE001 - torch-free tasks
        capability = ""
    return gpu, capability


# -- reading it back --------------------------------------------------------------------

def header_lines(invocations: list[dict[str, Any]], trials: Any) -> list[str]:
    """The report header's Markdown lines for one sweep: its invocations' provenance (those
    its `trials` DataFrame names) and the trials' hardware."""
    used = set(trials["invocation"].dropna()) if "invocation" in trials else set()
    rows = sorted((r for r in invocations if r["invocation"] in used),
                  key=lambda r: r["started_at"])
    lines = ["## Provenance", ""]
    if not rows:
        lines.append("No invocation records (results written before sgsweep kept them).")
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(r["started_at"]))
        count = int((trials["invocation"] == r["invocation"]).sum())
        versions = ", ".join(f"{name} {r[name]}" for name in PACKAGES if r.get(name))
        lines.append(f"- invocation `{r['invocation']}` (`sgsweep {r['command']}`, {when}, "
                     f"{count} trials): code {r['code_version']}; Python {r['python']}; "
                     f"{versions}; driver {r['host']} ({r['cpu_model']}), torch CPU "
                     f"capability {r['cpu_capability']}, {r['torch_threads']} threads")
    for column, what in (("node", "worker hosts"), ("device", "devices"), ("gpu", "GPUs"),
                         ("cpu_capability", "worker CPU capabilities")):
        if column in trials:
            values = sorted({str(v) for v in trials[column].dropna() if str(v)})
            if values:
                lines.append(f"- {what}: {', '.join(values)}")
    return lines


def mixed_warnings(invocations: list[dict[str, Any]], trials: Any, sweep: str) -> list[str]:
    """One line per way a sweep's trials are not from one code version and one CPU
    capability (bit-identity holds per machine only)."""
    by_id = {r["invocation"]: r for r in invocations}
    used = [by_id[i] for i in sorted(set(trials.get("invocation", []))) if i in by_id]
    warnings = []
    codes = sorted({r["code_version"] for r in used})
    if len(codes) > 1:
        warnings.append(f"sweep {sweep}: its trials come from {len(codes)} code versions "
                        f"({', '.join(codes)}); results may not be comparable")
    # where the trials computed; the drivers' only for results written without it
    capabilities = ({str(v) for v in trials["cpu_capability"].dropna() if str(v)}
                    if "cpu_capability" in trials else set())
    capabilities = capabilities or {r["cpu_capability"] for r in used if r["cpu_capability"]}
    if len(capabilities) > 1:
        warnings.append(f"sweep {sweep}: its trials ran on CPUs of {len(capabilities)} torch "
                        f"capabilities ({', '.join(sorted(capabilities))}); seeded results "
                        "are bit-identical per machine only")
    return warnings
