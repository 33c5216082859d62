"""Structured logging for every process: one pipeline for structlog and stdlib loggers.

``configure`` is called once by each entry point (never at import). Lines from uvicorn,
dramatiq and any other library go through the same processors as ours, so every line is
JSON in production and every phone number is masked, tracebacks included.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import sys
import time
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

import msgspec
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from service.phones import DIGIT, MAX_TEXT, mask_text

# Values under these keys are ours and never hold a phone number; skipping them keeps
# timestamps and ids intact and saves work on the hot path.
_SAFE_KEYS = frozenset(
    {"timestamp", "level", "logger", "request_id", "message_id", "session_id", "actor", "event_id"}
)


# Short text with digits that masking left as it was (a route such as "/v1/sessions"):
# most such values recur on every line, and holding them holds no number.
_UNCHANGED: set[str] = set()


def mask_phone_numbers(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Mask every phone number in every string value, however deeply nested."""
    for key, value in event_dict.items():
        if key in _SAFE_KEYS:
            continue
        kind = type(value)
        # Most values of a line are short text without a digit, or numbers: left as they
        # are without a call.
        if kind is str:
            if value in _UNCHANGED:
                continue
            if DIGIT.search(value) is not None or len(value) > MAX_TEXT:
                masked = event_dict[key] = mask_text(value)
                if masked == value and len(value) <= 128 and len(_UNCHANGED) < 4096:
                    _UNCHANGED.add(value)
        elif not (kind is int or kind is float or kind is bool or value is None):
            event_dict[key] = _masked(value)
    return event_dict


def _masked(value: Any) -> Any:
    kind = type(value)
    if kind is str:
        return mask_text(value)
    # The common cases first, by exact type: a log line is mostly short text and numbers.
    if kind is int or kind is float or kind is bool or value is None:
        return value
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, Mapping):
        return {k: _masked(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_masked(v) for v in value]
    if isinstance(value, int | float | bool) or value is None:
        return value
    return mask_text(str(value))


def _drop_color_message(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    # uvicorn duplicates its message with ANSI colours in an extra field.
    event_dict.pop("color_message", None)
    return event_dict


def _timestamp(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """``timestamp``: now in UTC, ISO 8601 to the microsecond (``...T12:30:05.123456Z``).
    The text up to the second is made once per second."""
    moment = time.time()
    second = int(moment)
    cached = _this_second[0]  # one read: another thread may replace it meanwhile
    if cached[0] != second:
        cached = _this_second[0] = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    event_dict["timestamp"] = f"{cached[1]}.{int((moment - second) * 1e6):06d}Z"
    return event_dict


_this_second: list[tuple[int, str]] = [(-1, "")]


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        _timestamp,
        _drop_color_message,
    ]


def _render_json() -> Processor:
    """One JSON encode per line, with an encoder built once. Masking has already turned
    anything unusual into text; what msgspec still cannot encode (a key that is not text)
    goes through the stdlib's encoder, which turns it into text too."""
    encode = msgspec.json.Encoder(enc_hook=str).encode
    fallback = json.JSONEncoder(separators=(",", ":"), default=str).encode

    def render(_: WrappedLogger, __: str, event_dict: EventDict) -> str:
        try:
            return encode(event_dict).decode()
        except (TypeError, msgspec.EncodeError):
            return fallback(event_dict)

    return render


class LineWriter:
    """Where structlog's own lines go: straight to the stream of the last ``configure``,
    never interleaved with library lines written by its handler.

    Going through the stdlib instead (a ``LogRecord``, the handler, ``ProcessorFormatter``
    copying the event and running its chain) cost ~25 µs a line, a tenth of a request.
    When the stream is the process's own standard error or output, taking UTF-8 (as in
    production), a line is one ``write()``, which the kernel keeps whole (on a pipe, up
    to ``PIPE_BUF`` bytes): no lock is held while the write waits, where the handler's
    lock made a worker's other threads queue behind it. Longer lines, and other streams,
    are written under the handler's lock. A line that cannot be written is dropped, as the
    stdlib handler drops it.
    """

    def __init__(self, name: str, output: LineOutput) -> None:
        self.name = name
        self._output = output

    def msg(self, line: str) -> None:
        handler, fd = self._output.target
        data = line + "\n"
        if fd is not None and len(data) <= select.PIPE_BUF:
            encoded = data.encode()
            if len(encoded) <= select.PIPE_BUF:
                with contextlib.suppress(OSError):
                    os.write(fd, encoded)
                return
        handler.acquire()
        try:
            stream = handler.stream
            stream.write(data)
            stream.flush()
        except (OSError, ValueError):
            pass
        finally:
            handler.release()

    debug = info = warning = warn = error = err = exception = critical = fatal = log = msg


class LineOutput:
    """structlog's logger factory: a :class:`LineWriter` named as ``get_logger`` was, all
    writing where :meth:`write_to` last said.

    ``configure`` keeps the one it finds configured and points it at its new handler, so
    that loggers structlog cached before (a worker process configuring again after the
    fork) write to the new stream, as the stdlib's loggers do.
    """

    def __init__(self, handler: logging.StreamHandler[TextIO]) -> None:
        self.write_to(handler)

    def write_to(self, handler: logging.StreamHandler[TextIO]) -> None:
        # One attribute, replaced whole: a writer on another thread sees either pair.
        self.target = (handler, _descriptor(handler.stream))

    @property
    def descriptor(self) -> int | None:
        """The descriptor lines are written to directly, if any (see :class:`LineWriter`)."""
        return self.target[1]

    def __call__(self, *args: Any) -> LineWriter:
        return LineWriter(str(args[0]) if args else "root", self)


def _descriptor(stream: TextIO) -> int | None:
    """The descriptor of ``stream`` when it is the process's own standard error or output
    taking UTF-8: its descriptor lives as long as the process, and the handler flushes
    the stream after every line, so writing past it reorders nothing. Any other stream
    may be closed and its descriptor number reused, so it is written through its object."""
    if stream is not sys.__stderr__ and stream is not sys.__stdout__:
        return None
    if (getattr(stream, "encoding", "") or "").lower().replace("-", "") != "utf8":
        return None
    try:
        return stream.fileno()
    except (OSError, ValueError):  # io.UnsupportedOperation is both
        return None


def _output_for(handler: logging.StreamHandler[TextIO]) -> LineOutput:
    """The configured :class:`LineOutput`, pointed at ``handler``; a new one if there is none."""
    output = structlog.get_config()["logger_factory"]
    if not isinstance(output, LineOutput):
        return LineOutput(handler)
    output.write_to(handler)
    return output


def configure(
    *,
    fmt: str = "json",
    level: str = "INFO",
    stream: TextIO | None = None,
    cache_loggers: bool = True,
) -> None:
    """Route structlog and the stdlib root logger to one stream.

    Lines of the stdlib's loggers (uvicorn, dramatiq, ...) go through a handler whose
    ``ProcessorFormatter`` runs the shared chain; structlog's own lines skip the stdlib
    altogether: the level is checked first (a line below it costs a method call), the same
    chain builds the line and :class:`LineWriter` writes it. Both end in the same masking
    and renderer.
    """
    renderer: Processor = (
        _render_json()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=(stream or sys.stderr).isatty())
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_shared_processors(),
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            mask_phone_numbers,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "dramatiq"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    # One line per request at INFO, with full URLs: the VTS client logs its own.
    for name in ("httpx2", "httpcore2", "httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    chain: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.stdlib.add_logger_name,
        _timestamp,
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        mask_phone_numbers,
        renderer,
    ]
    structlog.configure(
        processors=chain,
        logger_factory=_output_for(handler),
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        # Tests turn caching off, so structlog.testing.capture_logs sees every logger.
        cache_logger_on_first_use=cache_loggers,
    )


def bind(**values: Any) -> None:
    """Bind correlation ids for everything logged in the current context."""
    structlog.contextvars.bind_contextvars(**values)


def context() -> MutableMapping[str, Any]:
    return structlog.contextvars.get_contextvars()
