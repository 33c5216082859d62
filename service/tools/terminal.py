"""Text from outside, made safe to print on an operator's terminal.

Log lines, dead letters and their errors hold what clients and VTS sent (a request's path,
a callback's field): an escape sequence among them would retitle the terminal, clear it,
forge lines or write to the clipboard (OSC 52). Every operator tool prints such text
through :func:`printable`.
"""

from __future__ import annotations

# C0 (ESC among them), DEL and C1: 8-bit C1 codes such as CSI (U+009B) are read as escape
# sequences by terminals too.
_CONTROLS = (*range(0x20), *range(0x7F, 0xA0))
_VISIBLE = {code: f"\\x{code:02x}" for code in _CONTROLS}
# In a JSON line the only raw control characters can be DEL and C1 inside strings (a
# parsed line holds no other C0 than a tab between tokens, which drives nothing): written
# as JSON escapes, the line still reads back as the same record.
_JSON_VISIBLE = {code: f"\\u{code:04x}" for code in _CONTROLS if code != 0x09}


def printable(text: str) -> str:
    """``text`` with every control character written out as ``\\xNN`` (``\\x1b``)."""
    return text.translate(_VISIBLE)


def printable_json(line: str) -> str:
    """A line of JSON with every control character written as a JSON escape (``\\u009b``)."""
    return line.translate(_JSON_VISIBLE)
