"""Errors the command line prints as one line with exit code 2: problems the user can fix."""

from __future__ import annotations

import unicodedata
import urllib.parse


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


def without_password(text: str, url: str | None) -> str:
    """`text` with the password of `url` (user:password@host) replaced by ***, wherever it
    appears: a storage URL is echoed in errors, and the library's own message may quote it."""
    if not url:
        return text
    try:
        password = urllib.parse.urlsplit(url).password
    except ValueError:  # not a URL that parses: it has no password to find
        return text
    return text.replace(password, "***") if password else text
