"""The web's connection limits, enforced where uvicorn reads bytes off the socket.

uvicorn has public options for two of them: ``limit_concurrency`` (requests beyond it are
answered ``503`` and their connection closed) and ``timeout_keep_alive`` (an idle
connection between requests). It has none for the rest with httptools, its parser
here: no cap on a request's head (``h11_max_incomplete_event_size`` only applies to h11,
and httptools gathers a header's value in memory until it ends: a 64 MB header cost
seconds of CPU and 120 MB), and no timer while the head is being read (a new connection
that never sends, or one that sends a header line every few seconds, is kept forever).

Both are added by a subclass of uvicorn's httptools protocol, passed as its ``http``
option (a documented way to give uvicorn a protocol class): it feeds the parser no more
than the head may hold, answers ``431`` beyond it, and closes a connection whose head has
not arrived within the timeout. It overrides five methods of that class and calls each
original, so uvicorn's own handling (pipelining, keep-alive, ``503``) is unchanged;
tests/test_web_limits.py holds it to that on every uvicorn the lock allows.
"""

from __future__ import annotations

import asyncio
import json
import resource

import structlog
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.web.problems import MEDIA_TYPE, Problem

log = structlog.get_logger(__name__)

TOO_LARGE = 431
# Seconds a refused connection is still read (and what arrives dropped) after the 431:
# closed at once with the rest of a large head unread, the kernel would answer with a
# reset, which can destroy the 431 before the client reads it (nginx's lingering close).
LINGER = 2.0


# Descriptors the web holds besides its connections: listeners, Redis, storage, logs.
RESERVED_DESCRIPTORS = 64


def check_descriptors(max_connections: int) -> None:
    """Warn when the process may run out of descriptors before WEB_MAX_CONNECTIONS is
    reached: then new connections are not even accepted (not answered 503)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < max_connections + RESERVED_DESCRIPTORS:
        log.warning(
            "web_descriptor_limit_low",
            descriptors=soft,
            web_max_connections=max_connections,
            advice="raise the descriptor limit (ulimit -n) or lower WEB_MAX_CONNECTIONS",
        )


def _too_large(base: str, limit: int) -> bytes:
    """The whole 431 response, problem+json, with the connection closed after it."""
    problem = Problem(TOO_LARGE, f"the request line and headers are over {limit} bytes")
    body = json.dumps(problem.body(base)).encode()
    head = (
        f"HTTP/1.1 431 Request Header Fields Too Large\r\n"
        f"content-type: {MEDIA_TYPE}\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def protocol(
    *, max_header_bytes: int, header_timeout: float, public_base_url: str
) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with a cap on each request's head and a deadline
    for reading it."""
    refusal = _too_large(public_base_url, max_header_bytes)

    class LimitedHttpToolsProtocol(HttpToolsProtocol):
        # Bytes of the current request's head fed so far; None while its body is read
        # or its response written (the head is complete).
        _head: int | None = 0
        _head_timer: asyncio.TimerHandle | None = None
        _refused = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            # A connection that never sends a byte is closed like a slow one.
            self._arm_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_head_timer()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            # Fed in slices no longer than the head may still grow: the parser never
            # holds more than the cap of one head, however large the read.
            view = memoryview(data)
            while view and not self.transport.is_closing() and not self._refused:
                if self._head is None:
                    piece, view = view[:max_header_bytes], view[max_header_bytes:]
                else:
                    self._arm_head_timer()
                    room = max_header_bytes - self._head
                    piece, view = view[:room], view[room:]
                    self._head += len(piece)
                super().data_received(bytes(piece))
                if self._head is not None and self._head >= max_header_bytes:
                    self._refuse()

        def on_headers_complete(self) -> None:
            self._head = None
            self._disarm_head_timer()
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            # The next request's head may follow at once (pipelining) or after an idle
            # while (keep-alive, uvicorn's own timer): it is counted from here.
            self._head = 0
            super().on_message_complete()

        def _refuse(self) -> None:
            self._disarm_head_timer()
            self._refused = True
            self.transport.write(refusal)
            # The client sees the end after the 431; it closing ends the wait
            # (eof_received), or LINGER does.
            self.transport.write_eof()
            self.loop.call_later(LINGER, self.transport.close)

        def _arm_head_timer(self) -> None:
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(header_timeout, self._head_timed_out)

        def _disarm_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self.cycle is not None and not self.cycle.response_complete:
                # A response is still being made for the previous request; the next
                # head (pipelined) gets its full time once it is the one awaited.
                self._arm_head_timer()
                return
            if not self.transport.is_closing():
                self.transport.close()

    return LimitedHttpToolsProtocol
