"""The docs run as written: every command in README.md and docs/*.md runs from the
repository root after `make install` (the project's programs as `.venv/bin/...`, never a
bare `sgsweep` or `python` that may not be on PATH), names programs, make targets and
repository files that exist, and the cheap ones (`validate`, `schema`, `-h`) are run; every
relative link and anchor resolves.

Commands for another machine (a cluster's `sbatch`, `kubectl`, `ray up`, a job's own
command after `--`) are checked for the repository files they name only. A fenced block
whose first line is a comment saying "outside the repository" records commands run
elsewhere (the reference code's harnesses) and is skipped.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from orchestrator.cli import main

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LANGS = {"bash", "sh", "console", "shell"}
# Programs of the machine or of a cluster, not of this repository.
EXTERNAL = {"make", "cd", "tail", "sudo", "sbatch", "squeue", "kubectl", "docker", "ray",
            "ssh", "ls", "cat", "nice", "git", "curl", "source", "export", "du", "duckdb",
            "python3", "helm", "env", "uptime", "watch", "timeout", "hyperfine", "kill",
            "pkill", "chromium"}
PROJECT_PROGRAMS = {"sgsweep", "python", "pip", "mlflow", "optuna-dashboard", "ruff", "pytest"}
REPO_PATH = re.compile(r"^(sweeps|benchmarks|deploy|tests|docs|tasks|learners|orchestrator|"
                       r"analysis)/[\w./-]*[\w/]$")


def fenced_commands(page: Path) -> list[tuple[int, str]]:
    """(line number, command) of every shell command in the page's fenced blocks: blocks
    marked bash/sh/console, and `$ `-prompted lines in unmarked ones; continuation lines
    joined, comments dropped."""
    out = []
    lines = page.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        opening = re.match(r"^\s*```(\w*)\s*$", lines[i])
        if not opening:
            i += 1
            continue
        lang, start = opening.group(1), i + 1
        i += 1
        body = []
        while i < len(lines) and not re.match(r"^\s*```\s*$", lines[i]):
            body.append((i + 1, lines[i]))
            i += 1
        i += 1
        if lang not in SHELL_LANGS and lang != "":
            continue
        if body and "outside the repository" in body[0][1] and body[0][1].lstrip().startswith(
                "#"):
            continue
        pending, first = "", start
        for number, text in body:
            text = text.strip()
            if lang == "":
                if not text.startswith("$ "):
                    continue
                text = text[2:]
            elif text.startswith("$ "):
                text = text[2:]
            if not pending:
                first = number
            if text.endswith("\\"):
                pending += text[:-1] + " "
                continue
            command = _strip_comment(pending + text).strip()
            pending = ""
            if command:
                out.append((first, command))
    return out


def inline_commands(page: Path) -> list[tuple[int, str]]:
    """Inline code that is a whole command line (a program and a path or an option)."""
    out = []
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        for span in re.findall(r"`([^`]+)`", line):
            words = span.split()
            if (len(words) >= 2 and Path(words[0]).name in PROJECT_PROGRAMS
                    and any("/" in w or w.startswith("-") for w in words[1:])):
                out.append((number, span))
    return out


def _strip_comment(command: str) -> str:
    """The command without a trailing `# comment` (a # inside quotes or a word stays)."""
    return re.sub(r"(^|\s)#(?![^'\"]*['\"][^'\"]*$).*$", "", command)


SEPARATORS = {"&&", "||", ";", "|", "&"}


def words_of(command: str) -> list[str]:
    """Shell words, with ; && || | & as words of their own (quotes respected)."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    return list(lexer)


def program_of(words: list[str]) -> tuple[str, list[str]]:
    """The program a simple command runs and its arguments (after VAR=value, nice -n N,
    timeout S)."""
    while words and (re.match(r"^\w+=", words[0]) or words[0] in ("nice", "timeout")):
        skip = 3 if words[0] == "nice" and len(words) > 2 and words[1] == "-n" else \
            2 if words[0] == "timeout" else 1
        words = words[skip:]
    return (words[0], words[1:]) if words else ("", [])


def simple_commands(command: str) -> list[list[str]]:
    """The simple commands of a line, up to a `--` that hands the rest to another machine
    (ray job submit ... -- CMD, kubectl exec POD -- CMD)."""
    words = words_of(command)
    if "--" in words:
        words = words[:words.index("--")]
    out, current = [], []
    for word in words:
        if word in SEPARATORS:
            out.append(current)
            current = []
        else:
            current.append(word)
    return [c for c in [*out, current] if c]


def problems_of(command: str) -> list[str]:
    problems = []
    for words in simple_commands(command):
        program, args = program_of(words)
        if program in PROJECT_PROGRAMS:
            problems.append(f"bare {program!r}: write .venv/bin/{program}")
        elif program.startswith(".venv/bin/"):
            if Path(program).name not in PROJECT_PROGRAMS:
                problems.append(f"{program}: not a program `make install` puts in .venv/bin")
        elif program.startswith(("deploy/", "benchmarks/", "./")):
            if not (ROOT / program).is_file():
                problems.append(f"{program}: no such file")
        elif program not in EXTERNAL and not program.startswith("~/"):
            problems.append(f"{program!r}: unknown program (add it to EXTERNAL if it is one)")
        if program == "make":
            targets = re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M)
            problems += [f"make {a}: no such target" for a in args
                         if "=" not in a and not a.startswith("-") and a not in targets]
        for arg in args:
            if REPO_PATH.match(arg) and not (ROOT / arg).exists():
                problems.append(f"{arg}: no such file in the repository")
    return problems


COMMANDS = [(page, number, command) for page in PAGES
            for number, command in fenced_commands(page) + inline_commands(page)]


def test_the_docs_hold_commands() -> None:
    assert len(COMMANDS) > 50


@pytest.mark.parametrize(("page", "number", "command"), COMMANDS,
                         ids=[f"{p.name}:{n}" for p, n, _ in COMMANDS])
def test_every_command_runs_from_the_repository_root(page: Path, number: int,
                                                     command: str) -> None:
    assert not problems_of(command), f"{page.name}:{number}: {command}"


CHEAP = sorted({(c, p.name) for p, _, c in COMMANDS
                if re.match(r"^\.venv/bin/sgsweep (validate \S+\.yaml|schema|-h)", c)})


@pytest.mark.parametrize(("command", "page"), CHEAP, ids=[c for c, _ in CHEAP])
def test_cheap_commands_run(command: str, page: str, monkeypatch, capsys) -> None:
    monkeypatch.chdir(ROOT)
    words = words_of(command)[1:]
    if words[0] == "schema":
        words = ["schema"]  # to standard output: never overwrite the shipped file here
    try:
        code = main(words)
    except SystemExit as stop:  # -h
        code = stop.code
    assert code == 0, f"{page}: {command}: {capsys.readouterr().err}"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = page.read_text(encoding="utf-8")
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return {_slug(h) for h in re.findall(r"^#{1,6}\s+(.*)$", text, re.M)}


LINKS = [(page, target) for page in PAGES
         for target in re.findall(r"\]\(([^)\s]+)\)", re.sub(
             r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.S | re.M))
         if not re.match(r"^[a-z]+://|^mailto:", target)]


@pytest.mark.parametrize(("page", "target"), LINKS, ids=[f"{p.name}->{t}" for p, t in LINKS])
def test_every_relative_link_and_anchor_resolves(page: Path, target: str) -> None:
    path, _, anchor = target.partition("#")
    destination = (page.parent / path).resolve() if path else page
    assert destination.exists(), f"{page.name}: link to a missing {path}"
    if anchor and destination.suffix == ".md":
        assert anchor in anchors(destination), f"{page.name}: no heading #{anchor} in {path}"
