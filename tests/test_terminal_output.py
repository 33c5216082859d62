"""Operator tools print text from outside (log lines, dead letters, their errors) with every
control character written out: nothing they print can drive the terminal."""

from __future__ import annotations

import argparse
import io
import json
import time

import pytest
import redis

from service.store.apps import AppStore
from service.tools import appadmin, cli, deadletters, logtail

# What a request to /%1b]0;TITLE%07%1b[2J... leaves in the log: its path as the route.
HOSTILE = "/\x1b]0;TITLE\x07\x1b[2J\x1b]52;c;cGF5bG9hZA==\x07\rforged line\n\x7f\x9b31m"
# The colours logtail paints with, the only escape codes it may write itself.
STYLES = ("\x1b[0m", "\x1b[2m", "\x1b[1m", "\x1b[36m", "\x1b[35m", "\x1b[31m",
          "\x1b[34m", "\x1b[32m", "\x1b[33m", "\x1b[1;31m")  # fmt: skip


def _controls(text: str) -> list[str]:
    """The control characters (C0, DEL, C1) in ``text``, apart from line ends and our own
    colour codes."""
    for style in STYLES:
        text = text.replace(style, "")
    return [c for c in text.replace("\n", "") if ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0]


def _printed(line: str, *argv: str) -> str:
    out = io.StringIO()
    assert logtail.main([*argv], stdin=io.StringIO(line + "\n"), stdout=out) == 0
    return out.getvalue()


LOGGED = json.dumps({"event": "http_request", "level": "info", "route": HOSTILE})


@pytest.mark.parametrize(
    ("line", "argv", "lines"),
    [(LOGGED, ("--color",), 1),
     (LOGGED, ("--no-color",), 1),
     (LOGGED, ("--raw", "--no-color"), 1),
     (HOSTILE.replace("\n", ""), ("--no-color",), 1),
     # A traceback is printed a line at a time, below its record.
     (json.dumps({"event": "x", "exception": HOSTILE}), ("--color",), 3)],
    ids=["pretty-colour", "pretty-plain", "raw", "not-json", "traceback"],
)  # fmt: skip
def test_masking_logs_escapes_control_characters(
    line: str, argv: tuple[str, ...], lines: int
) -> None:
    """masking logs prints a logged escape sequence as visible text, colours on or off."""
    printed = _printed(line, *argv)
    assert _controls(printed) == []
    assert "TITLE" in printed
    assert len(printed.splitlines()) == lines
    assert "\\x1b]0;TITLE\\x07" in printed or "\\u001b]0;TITLE\\u0007" in printed


def test_raw_lines_stay_json() -> None:
    """--raw escapes DEL and C1 characters inside JSON strings as JSON escapes: the line
    still reads back as the same record."""
    record = {"event": "http_request", "route": "/\x7f\x9b2J"}
    printed = _printed(json.dumps(record, ensure_ascii=False), "--raw")
    assert _controls(printed) == []
    assert json.loads(printed) == record


def test_dead_letter_summaries_escape_control_characters() -> None:
    """A dead letter's actor and error are printed with control characters written out."""
    message = {"actor_name": "\x1b[2Jact", "options": {"traceback": f"Error: {HOSTILE}"}}
    letter = deadletters.DeadLetter("default", "1-0", time.time(), message)
    printed = letter.summary() + letter.details()
    assert _controls(printed) == []
    assert "\\x1b[2Jact" in printed


def test_masking_apps_refusals_escape_control_characters(redis_client: redis.Redis) -> None:
    """masking apps writes an unknown target back with its control characters written out."""
    out, err = io.StringIO(), io.StringIO()
    args = argparse.Namespace(action="revoke", key_id="\x1b]0;TITLE\x07", app=None)
    assert appadmin.run(AppStore(redis_client), args, out, err) == 2
    assert _controls(out.getvalue() + err.getvalue()) == []
    assert "\\x1b]0;TITLE\\x07" in err.getvalue()


def test_cli_errors_escape_control_characters(capsys: pytest.CaptureFixture[str]) -> None:
    """A CLI error naming what it was given prints it with control characters written out."""
    with pytest.raises(SystemExit):
        cli.fail("logs", "no such file: \x1b[2J\x9b31m")
    assert _controls(capsys.readouterr().err) == []
