"""`sgsweep validate` on the nastiest files, side by side with a shipped sweep, in one run.

In process (imports done once): every file of the malformed corpus (tests/corpus/, all
refused) and the most expensive files the limits still accept, generated here: a grid of
99,856 configs (316 x 316, just under the 100,000-trial limit), a 30,000-value grid list
whose duplicate is its last value (the duplicate check is linear), 30,000 explicit seeds,
and a tune file with 30,000 categorical choices (every one is built as a task config).
Then the installed command end to end (a fresh process: imports included) on three files.

    .venv/bin/python benchmarks/bench_validate.py
"""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestrator.cli import main  # noqa: E402

SGSWEEP = shutil.which("sgsweep", path=str(Path(sys.executable).parent)) or "sgsweep"


def generated(folder: Path) -> list[Path]:
    files = {
        "grid-99856-configs-bandit.yaml":
            "name: x\ntask: bandit\nseeds: 1\ngrid:\n  lr: ["
            + ", ".join(f"{(i + 1) / 1000}" for i in range(316)) + "]\n  steps: ["
            + ", ".join(str(i + 1000) for i in range(316)) + "]\n",
        "grid-30000-values-duplicate-last.yaml":
            "name: x\ntask: probe\nseeds: 1\ngrid:\n  work_ms: ["
            + ", ".join(f"{i}.0" for i in range(30000)) + ", 0.0]\n",
        "seeds-30000-listed.yaml":
            "name: x\ntask: probe\nseeds: [" + ", ".join(str(i) for i in range(30000)) + "]\n",
        "tune-30000-choices.yaml":
            "name: t\ntask: bandit\nobjective: {metric: eval_expected_reward}\nn_trials: 10\n"
            "seeds: 2\nsearch:\n  steps: {choices: ["
            + ", ".join(str(i + 1000) for i in range(30000)) + "]}\n",
    }
    for name, text in files.items():
        (folder / name).write_text(text)
    return [folder / name for name in files]


def validate(path: Path) -> tuple[int, float, float, str]:
    sink = io.StringIO()
    wall, cpu = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        code = main(["validate", str(path)])
    return code, time.perf_counter() - wall, time.process_time() - cpu, sink.getvalue()


def main_() -> None:
    shipped = ROOT / "sweeps" / "default.yaml"
    validate(shipped)  # warm: imports
    _, base_wall, base_cpu, _ = validate(shipped)
    print(f"{'file':58s} {'exit':>4s} {'wall s':>7s} {'cpu s':>6s} {'x shipped':>9s}")
    print(f"{'sweeps/default.yaml (480 trials)':58s} {0:4d} {base_wall:7.3f} {base_cpu:6.3f} "
          f"{1.0:9.1f}")
    with tempfile.TemporaryDirectory(prefix="bench-validate-") as temp:
        corpus = sorted((ROOT / "tests" / "corpus").rglob("*.yaml"))
        rows = [(p.relative_to(ROOT / "tests"), *validate(p)) for p in corpus]
        rows += [(p.name, *validate(p)) for p in generated(Path(temp))]
        rows.sort(key=lambda r: -r[2])
        for name, code, wall, cpu, _ in rows[:12]:
            print(f"{str(name):58s} {code:4d} {wall:7.3f} {cpu:6.3f} {wall / base_wall:9.1f}")
        print(f"... {len(rows) - 12} more, each faster; all {len(corpus)} corpus files: "
              f"{sum(r[2] for r in rows if 'corpus' in str(r[0])):.2f} s wall in total")
        print("\nend to end (a fresh `sgsweep validate` process: Python + torch imports):")
        for path in (shipped, ROOT / "tests/corpus/yaml/alias-bomb-timeout.yaml",
                     Path(temp) / "grid-99856-configs-bandit.yaml"):
            start = time.perf_counter()
            done = subprocess.run([SGSWEEP, "validate", str(path)], capture_output=True,
                                  text=True, timeout=300)
            print(f"{path.name:58s} {done.returncode:4d} {time.perf_counter() - start:7.3f}")


if __name__ == "__main__":
    main_()
