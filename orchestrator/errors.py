"""Errors the command line prints as one line with exit code 2: problems the user can fix."""

from __future__ import annotations

import unicodedata


class RunError(RuntimeError):
    """An operational problem the user can fix (busy directory, unreachable cluster,
    damaged or tampered results directory)."""


# Characters a terminal acts on or hides: controls (ESC starts an escape sequence that can
# retitle the window or rewrite the screen), format characters (bidi overrides such as
# U+202E reorder what follows; zero-width ones hide text) and line/paragraph separators.
_HIDDEN = {"Cc", "Cf", "Zl", "Zp", "Co", "Cs"}


def visible(text: str) -> str:
    """`text` safe to print as one line: every control, format or separator character is
    shown as its escape (\\x1b, \\u202e, \\n) instead of acting on the terminal."""
    if text.isascii() and text.isprintable():
        return text
    out = []
    for char in text:
        if unicodedata.category(char) in _HIDDEN:
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else
                       f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(char)
    return "".join(out)
