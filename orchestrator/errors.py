"""Errors the command line prints as one line with exit code 2: problems the user can fix."""

from __future__ import annotations


class RunError(RuntimeError):
    """An operational problem the user can fix (busy directory, unreachable cluster,
    damaged or tampered results directory)."""
