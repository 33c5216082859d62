"""``masking logs``: filter and pretty-print a stream of JSON log lines.

Reads the lines that :mod:`service.logs` writes in production, from a file (``--follow``
starts at its end and prints what is added, like ``tail -f``) or from standard input
(``kubectl logs -f ... | masking logs --session ID``). Every line printed, pretty or raw,
JSON or not, goes through :func:`~service.phones.mask_text`: the log lines are masked
already, but this command also reads what other programs wrote (a crash traceback, a
proxy's lines).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from service.phones import mask_text
from service.tools.terminal import printable, printable_json

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
# The ids that tie a story together, shown first and in this order.
CORRELATION_KEYS = ("request_id", "session_id", "vts_session_uuid", "message_id", "actor")
_HEAD_KEYS = frozenset({"timestamp", "level", "event", "logger", "exception"})

FOLLOW_POLL_SECONDS = 0.2

_RESET = "\x1b[0m"
_DIM = "\x1b[2m"
_BOLD = "\x1b[1m"
_CYAN = "\x1b[36m"
_MAGENTA = "\x1b[35m"
_RED = "\x1b[31m"
_LEVEL_STYLES = {
    "debug": "\x1b[34m",
    "info": "\x1b[32m",
    "warning": "\x1b[33m",
    "error": _RED,
    "critical": "\x1b[1;31m",
}

Record = Mapping[str, Any]


@dataclass(frozen=True)
class Filter:
    """Which records to show; every given criterion must hold."""

    session: str | None = None
    request: str | None = None
    min_level: str = "debug"
    events: tuple[str, ...] = ()
    actor: str | None = None

    def matches(self, record: Record) -> bool:
        return (
            self._session_matches(record)
            and _given_equals(self.request, record.get("request_id"))
            and _given_equals(self.actor, record.get("actor"))
            and level_number(record.get("level")) >= LEVELS[self.min_level]
            and self._event_matches(record.get("event"))
        )

    def _session_matches(self, record: Record) -> bool:
        # Operators may hold our id (from the app) or VTS's (from a VTS ticket).
        if self.session is None:
            return True
        return self.session in (record.get("session_id"), record.get("vts_session_uuid"))

    def _event_matches(self, event: object) -> bool:
        if not self.events:
            return True
        return any(fnmatchcase(str(event), pattern) for pattern in self.events)


def _given_equals(wanted: str | None, value: object) -> bool:
    return wanted is None or wanted == value


def level_number(level: object) -> int:
    """The level's rank; lines with an unknown or missing level rank as ``info``."""
    return LEVELS.get(str(level).lower(), LEVELS["info"])


def parse(line: str) -> Record | None:
    """The JSON object on ``line``, or None when the line is anything else."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


class Renderer:
    """Turns a record into ``timestamp level event ids... key=value...`` (and a traceback).

    Every piece is masked on its own, before colouring: an escape code ends in a letter,
    which would hide a number right after it from the masking pattern. Control characters
    are written out after masking, for the same reason (``\x1b`` ends in a letter).
    """

    def __init__(self, *, color: bool) -> None:
        self.color = color

    def render(self, record: Record) -> str:
        level = str(record.get("level", "")).lower()
        pieces = [
            self._paint(str(record.get("timestamp", "-")), _DIM),
            self._paint(f"{level.upper() or '-':<8}", _LEVEL_STYLES.get(level, "")),
            self._paint(str(record.get("event", "")), _BOLD),
            *(self._field(key, record[key], _MAGENTA) for key in _correlation_keys(record)),
            *(self._field(key, value, _CYAN) for key, value in _other_items(record)),
        ]
        if "logger" in record:
            pieces.append(self._paint(f"logger={record['logger']}", _DIM))
        return " ".join(pieces) + self._exception(record.get("exception"))

    def _field(self, key: str, value: Any, style: str) -> str:
        return f"{self._paint(key, style)}={self._paint(_format_value(value), '')}"

    def _exception(self, exception: object) -> str:
        if not exception:
            return ""
        # Newlines only: splitlines() would also break at a carriage return or a C1 code,
        # and print what follows as a line of its own.
        lines = str(exception).rstrip("\n").split("\n")
        return "".join("\n    " + self._paint(line, _RED) for line in lines)

    def _paint(self, text: str, style: str) -> str:
        masked = printable(mask_text(text))
        return f"{style}{masked}{_RESET}" if self.color and style else masked


def _correlation_keys(record: Record) -> list[str]:
    return [key for key in CORRELATION_KEYS if record.get(key) is not None]


def _other_items(record: Record) -> list[tuple[str, Any]]:
    skip = _HEAD_KEYS.union(CORRELATION_KEYS)
    return [(key, value) for key, value in record.items() if key not in skip]


def _format_value(value: Any) -> str:
    # Plain words and ids stay unquoted, so that they are easy to copy into a filter.
    if isinstance(value, str) and value and not any(c.isspace() or c in "\"'=" for c in value):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


@dataclass(frozen=True)
class Options:
    filter: Filter
    renderer: Renderer
    raw: bool
    json_only: bool


def format_line(line: str, record: Record | None, options: Options) -> str | None:
    """What to print for one input line (without its newline) and the record parsed from
    it (None if it is not JSON), or None to skip it."""
    if record is None:
        return None if options.json_only else printable(mask_text(line))
    if not options.filter.matches(record):
        return None
    return printable_json(mask_text(line)) if options.raw else options.renderer.render(record)


def read_lines(stream: TextIO) -> Iterator[str]:
    for line in stream:
        yield line.rstrip("\r\n")


def follow(path: Path, *, last: int = 0, poll: float = FOLLOW_POLL_SECONDS) -> Iterator[str | None]:
    """The last ``last`` lines of ``path``, then the lines appended to it, forever.

    Starts at the end of the file, as ``tail -f`` does. Yields None whenever it has caught
    up, so that the caller can flush. A partial last line is held back until its newline
    arrives. A file that shrinks (truncated) is read again from the start; one that is
    replaced (rotated) is reopened and read from its start.
    """
    stream: BinaryIO = path.open("rb")
    stream.seek(_start_of_last_lines(stream, last))
    pending = b""
    try:
        while True:
            chunk = stream.readline()
            if chunk.endswith(b"\n"):
                yield _decode(pending + chunk)
                pending = b""
                continue
            pending += chunk
            yield None
            time.sleep(poll)
            stream = _reopen_if_replaced(path, stream)
    finally:
        stream.close()


def _decode(line: bytes) -> str:
    return line.decode("utf-8", errors="replace").rstrip("\r\n")


def _start_of_last_lines(stream: BinaryIO, count: int, block: int = 64 * 1024) -> int:
    """The offset where the last ``count`` lines of ``stream`` begin (its end for 0)."""
    end = stream.seek(0, os.SEEK_END)
    if count == 0:
        return end
    position, found = end, 0
    while position > 0:
        size = min(block, position)
        position -= size
        stream.seek(position)
        data = stream.read(size)
        # The newline that ends the file's last line does not start a line.
        index = size - 1 if position + size == end and data.endswith(b"\n") else size
        while (index := data.rfind(b"\n", 0, index)) != -1:
            found += 1
            if found == count:
                return position + index + 1
    return 0


def _reopen_if_replaced(path: Path, stream: BinaryIO) -> BinaryIO:
    try:
        current = path.stat()
    except FileNotFoundError:
        return stream  # mid-rotation: the new file is not there yet
    opened = os.fstat(stream.fileno())
    if (current.st_ino, current.st_dev) != (opened.st_ino, opened.st_dev):
        stream.close()
        return path.open("rb")
    if current.st_size < stream.tell():
        stream.seek(0)
    return stream


def run(lines: Iterable[str | None], options: Options, out: TextIO, *, live: bool) -> int:
    """Print what ``format_line`` keeps; flush at every catch-up (None) or, if ``live``,
    after every line, so that a follower sees lines as they come. Returns how many lines
    were JSON records."""
    records = 0
    for line in lines:
        if line is None:
            out.flush()
            continue
        record = parse(line)
        records += record is not None
        text = format_line(line, record, options)
        if text is not None:
            out.write(text + "\n")
            if live:
                out.flush()
    out.flush()
    return records


def _options(args: argparse.Namespace, out: TextIO, environ: Mapping[str, str]) -> Options:
    matcher = Filter(args.session, args.request, args.level, tuple(args.event), args.actor)
    # https://no-color.org: a set, non-empty NO_COLOR turns colours off unless asked for.
    color = out.isatty() and not environ.get("NO_COLOR") if args.color is None else args.color
    return Options(matcher, Renderer(color=color), raw=args.raw, json_only=args.json_only)


def main(
    argv: Sequence[str] | None = None,
    *,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Run ``masking logs`` with ``argv`` (its arguments); returns the exit status."""
    from service.tools import cli

    args = cli.parse(["logs", *(sys.argv[1:] if argv is None else argv)])
    try:
        return run_command(
            args,
            stdin=stdin or sys.stdin,
            stdout=stdout or sys.stdout,
            environ=os.environ if environ is None else environ,
        )
    except FileNotFoundError as exc:
        cli.fail("logs", f"no such file: {exc.filename}")


def run_command(
    args: argparse.Namespace, *, stdin: TextIO, stdout: TextIO, environ: Mapping[str, str]
) -> int:
    """Carry out ``masking logs`` as parsed into ``args``; returns the exit status. Raises
    FileNotFoundError when the file named does not exist."""
    out = stdout
    options = _options(args, out, environ)
    try:
        if args.file is None or args.file == "-":
            records = run(read_lines(stdin), options, out, live=True)
        elif args.follow:
            records = run(follow(Path(args.file), last=args.lines), options, out, live=False)
        else:
            with Path(args.file).open(encoding="utf-8", errors="replace") as stream:
                records = run(read_lines(stream), options, out, live=False)
        if not records and options.filter != Filter():
            # Console-format logs (LOG_FORMAT=console) pass through unfiltered: say why.
            sys.stderr.write(
                "masking logs: no JSON log line in the input, so no filter applied; "
                "the service writes JSON with LOG_FORMAT=json\n"
            )
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader (head, less) has gone: stop quietly, as tail does.
        _silence(out)
        return 0
    return 0


def _silence(out: TextIO) -> None:
    # Python flushes stdout again at exit; pointing it at /dev/null keeps that quiet.
    if out is sys.stdout:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
