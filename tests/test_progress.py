"""The progress line fits an 80-column terminal, with its bar when there is room."""

from __future__ import annotations

import io

import pytest

from orchestrator.progress import Progress


def test_the_line_fits_80_columns_at_the_largest_sweep() -> None:
    progress = Progress(100_000, stream=io.StringIO(), live=False)
    progress.update(ok=99_000, failed=999, in_flight=1_000)
    progress.start -= 45 * 3600  # 45 hours in: the longest durations
    assert len("  " + progress.line()) <= 80, progress.line()


@pytest.mark.parametrize("columns", [80, 60, 120])
def test_a_live_line_never_wraps(columns: int, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", str(columns))
    stream = io.StringIO()
    progress = Progress(480, stream=stream, live=True)
    progress.start -= 100  # 2.4 trials/s
    progress.update(ok=240, failed=3, in_flight=2, force=True)
    drawn = stream.getvalue().removeprefix("\r")
    assert len(drawn) == columns - 1
    assert ("[" in drawn) == (columns >= 80), drawn
    assert "243/480 (240 ok, 3 failed, 2 running) 2.4/s 1m40s eta" in drawn
