"""The malformed-file corpus (tests/corpus/): every file is refused in one line naming the
file, with exit 2, by `validate` and by `run` / `tune` alike, and nothing is written.

Each corpus file says what it expects in its first lines:

    # expect: FRAGMENT          `validate`, `run` and `tune` print one line containing it
    # validate: ok              (machine/: resources no node has; only `run` can know that)
    # expect-run: FRAGMENT

Classes are folders: yaml/ (what the YAML reader refuses: alias bombs, deep nesting,
duplicate keys, ...), sizes/ (trial counts computed, never materialised), values/ (finite
floats in every spelling, 64-bit ints, duplicates), names/ (names become file names),
paths/ (spec fields never write outside DIR), tune/ (tune files), machine/ (resources).
Every file is checked in-process; a handful through the installed `sgsweep` command too.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.errors import visible
from orchestrator.spec import MAX_FILE_BYTES
from tests.helpers import SGSWEEP

CORPUS = Path(__file__).with_name("corpus")
FILES = sorted(CORPUS.rglob("*.yaml"))
CLASSES = {"yaml", "sizes", "values", "names", "paths", "tune", "machine"}
MAX_LINE = 500  # an error quotes at most a short prefix of any value


def expectations(path: Path) -> tuple[str | None, str]:
    """(what `validate` must say, None for ok; what `run` / `tune` must say)."""
    header = {}
    for line in path.read_bytes().decode("utf-8", "replace").splitlines():
        if not line.startswith("# "):
            break
        key, _, value = line[2:].partition(": ")
        header[key] = value
    if header.get("validate") == "ok":
        return None, header["expect-run"]
    return header["expect"], header["expect"]


def command_for(path: Path) -> str:
    return "tune" if path.parent.name == "tune" else "run"


def assert_one_line(err: str, path: Path, expected: str) -> None:
    assert err.startswith(f"error: {path}: "), err[:MAX_LINE]
    assert err.count("\n") == 1 and err.endswith("\n"), err[:MAX_LINE]
    # nothing that acts on a terminal or hides text: controls, bidi, zero-width characters
    assert visible(err[:-1]) == err[:-1], ascii(err[:MAX_LINE])
    assert expected in err, err[:MAX_LINE]
    assert len(err) <= MAX_LINE, f"{len(err)} characters: {err[:MAX_LINE]}"


def test_corpus_covers_every_class_with_at_least_140_files() -> None:
    assert len(FILES) >= 140
    assert {p.parent.name for p in FILES} == CLASSES
    for path in FILES:
        expectations(path)  # every file states what it expects


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(CORPUS)))
def test_corpus_file_is_refused_in_one_line_with_exit_2_and_nothing_written(
        path: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    validate_says, run_says = expectations(path)
    code = main(["validate", str(path)])
    out, err = capsys.readouterr()
    if validate_says is None:
        assert code == 0 and not err, err
    else:
        assert code == 2 and not out, out
        assert_one_line(err, path, validate_says)
    dest = tmp_path / "out"
    code = main([command_for(path), str(path), "--out", str(dest), "--tracking-uri", "none",
                 "--no-report"])
    out, err = capsys.readouterr()
    assert code == 2 and not out, out
    assert_one_line(err, path, run_says)
    assert not dest.exists()


def test_a_file_over_the_size_limit_is_refused_before_it_is_parsed(tmp_path, capsys) -> None:
    path = tmp_path / "huge.yaml"
    path.write_text("name: x\ntask: probe\nseeds: 1\n# " + "x" * MAX_FILE_BYTES + "\n")
    for argv in (["validate", str(path)], ["run", str(path), "--out", str(tmp_path / "o")]):
        assert main(argv) == 2
        assert_one_line(capsys.readouterr().err, path, "too large: more than 256 KiB")
    assert not (tmp_path / "o").exists()


def test_max_trials_raises_the_limit_for_a_sweep_that_needs_it(capsys) -> None:
    path = CORPUS / "sizes" / "grid-times-seeds-over-limit.yaml"
    assert main(["validate", str(path), "--max-trials", "200000"]) == 0
    assert "2000 configs x 100 seeds = 200000 trials" in capsys.readouterr().out
    assert main(["validate", str(path), "--max-trials", "199999"]) == 2
    assert "above the limit of 199,999" in capsys.readouterr().err


# A handful through the installed console script, as a user runs it (separate processes,
# two at a time: each one imports torch).
THROUGH_THE_COMMAND = [
    "yaml/alias-bomb-timeout.yaml", "sizes/seeds-1e18.yaml", "machine/num-cpus-million.yaml",
    "tune/grid-int-range-1e13.yaml",
]


def test_corpus_subset_is_refused_by_the_installed_command(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    checks = []
    for i, name in enumerate(THROUGH_THE_COMMAND):
        path = CORPUS / name
        validate_says, run_says = expectations(path)
        dest = tmp_path / f"out{i}"
        checks.append((path, dest, validate_says, [SGSWEEP, "validate", str(path)]))
        checks.append((path, dest, run_says, [SGSWEEP, command_for(path), str(path), "--out",
                                              str(dest), "--tracking-uri", "none",
                                              "--no-report"]))

    def run(argv: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(argv, capture_output=True, text=True, timeout=300)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(run, [argv for *_, argv in checks]))
    for (path, dest, says, argv), done in zip(checks, results, strict=True):
        if says is None:
            assert done.returncode == 0 and ": ok" in done.stdout, (argv, done.stderr)
            continue
        assert done.returncode == 2 and not done.stdout, (argv, done.stdout, done.stderr)
        assert_one_line(done.stderr, path, says)
        assert not dest.exists()


@pytest.mark.parametrize(("flag", "value"), [
    ("--trial-timeout", "nan"), ("--trial-timeout", "inf"), ("--trial-timeout", "-1"),
    ("--num-cpus", "١"), ("--max-retries", "３"), ("--trial-timeout", "٦٠"),
])
def test_command_line_numbers_are_finite_and_ascii(flag, value, tmp_path, capsys) -> None:
    path = CORPUS.parent.parent / "sweeps" / "smoke.yaml"
    with pytest.raises(SystemExit) as stop:
        main(["run", str(path), "--out", str(tmp_path / "o"), flag, value])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: sgsweep run: argument ") and err.count("\n") == 1, err
    assert f"{flag}: expected" in err and not (tmp_path / "o").exists()
