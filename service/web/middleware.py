"""Pure ASGI middleware: request context and canonical log line, body size limit, API keys."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.apps import AppRegistry
from service.metrics import metrics
from service.phones import mask_text
from service.web.problems import Problem

MAX_LOGGED_PATH = 256
log = structlog.get_logger("service.http")
Observe = Callable[[float], None]
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_DIGIT_RUN = re.compile(r"\d{10}")
# Digits as a number is written in a request id (``415-555-2671``, ``1.415.555.2671``).
_WRITTEN = re.compile(r"[0-9][0-9.-]*")


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of header ``name`` (lower case, as ASGI servers give names).
    Cheaper than Starlette's ``request.headers.get``, which raises and catches a KeyError
    for every header that is absent."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _request_id(incoming: str | None) -> str:
    """The caller's request id when it is sane; ours otherwise. Request ids are logged as
    they are (unmasked), so one that may hold a phone number (ten digits in a row, or what
    the log masking would mask) is never kept."""
    if (
        incoming
        and _REQUEST_ID.match(incoming)
        and not _DIGIT_RUN.search(incoming)
        and mask_text(incoming) == incoming
        and not any(map(_written_number, _WRITTEN.findall(incoming)))
    ):
        return incoming
    return secrets.token_hex(16)


def _written_number(run: str) -> bool:
    """Whether a run of digits, dots and dashes from a request id is a number as written
    with separators. Read alone: the masking leaves a number right after a letter or a
    dash alone (``a415-555-2671``), as it must in text; in an id, that is no excuse. Runs
    of digits alone are left to the ten-digit rule, so UUIDs stay ids."""
    run = run.rstrip(".-")
    return not run.isdigit() and mask_text(run) != run


class RequestContext:
    """Binds ``request_id`` for everything logged during a request, echoes it in
    ``X-Request-ID``, and writes one ``http_request`` line when the request ends."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._children: dict[tuple[str, str, int], tuple[Callable[[], None], Observe]] = {}

    def _measures(self, method: str, route: str, status: int) -> tuple[Callable[[], None], Observe]:
        """The request counter's and latency histogram's children for these labels, looked
        up once (``labels()`` takes a lock and builds its key on every call). As many as
        the metrics' own children: the server accepts only known methods, routes are
        templates or ``unmatched``.
        """
        key = (method, route, status)
        found = self._children.get(key)
        if found is None:
            measured = metrics()
            counter = measured.http_requests.labels(method, route, status)
            histogram = measured.http_seconds.labels(method, route)
            found = self._children[key] = (counter.inc, histogram.observe)
        return found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(header(scope, b"x-request-id"))
        # Also where handlers read it: cheaper than the logging context.
        scope.setdefault("state", {})["request_id"] = request_id
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status = 500
        echo = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), echo]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            template = getattr(scope.get("route"), "path", None)
            # Metrics label by route template only: raw paths of 404s would be unbounded.
            count, observe = self._measures(scope["method"], template or "unmatched", status)
            count()
            observe(seconds)
            log.info(
                "http_request",
                method=scope["method"],
                # A raw path is the client's: log only its start.
                route=template or scope["path"][:MAX_LOGGED_PATH],
                status=status,
                duration_ms=round(seconds * 1000, 2),
            )
            structlog.contextvars.clear_contextvars()


class BodyTooLarge(Exception):
    pass


class BodyLimit:
    """Refuses bodies over ``limit`` bytes with 413: at once when ``Content-Length`` says so,
    otherwise as soon as the streamed body passes the limit (never reading it whole)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = header(scope, b"content-length")
        if length is None:
            await self._streamed(scope, receive, send)
        elif not length.isdigit() or int(length) > self.limit:
            await self._refuse(scope, receive, send)
        else:
            # The server reads exactly Content-Length bytes, so there is nothing to count.
            await self.app(scope, receive, send)

    async def _streamed(self, scope: Scope, receive: Receive, send: Send) -> None:
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if started:
                raise
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        problem = Problem(413, f"request bodies are limited to {self.limit} bytes")
        # Tell the client we will not read the rest, so it stops sending.
        problem.headers["connection"] = "close"
        await problem.response(scope)(scope, receive, send)


class BearerAuth:
    """Requires ``Authorization: Bearer <key>`` with a key of a known app on every path
    under ``prefix``. Puts the app's name in ``scope['state']['app']`` and binds it for
    every log line of the request (the name, never the key)."""

    def __init__(self, app: ASGIApp, apps: AppRegistry, prefix: str = "/v1/") -> None:
        self.app = app
        self.prefix = prefix
        self._apps = apps

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        name = self._app_for(header(scope, b"authorization") or "")
        if name is None:
            problem = Problem(
                401,
                "send a valid API key as 'Authorization: Bearer <key>'",
                headers={"www-authenticate": 'Bearer realm="masking"'},
            )
            await problem.response(scope)(scope, receive, send)
            return
        scope.setdefault("state", {})["app"] = name
        structlog.contextvars.bind_contextvars(app=name)
        await self.app(scope, receive, send)

    def _app_for(self, header: str) -> str | None:
        """The app whose key ``header`` presents, or None when it presents no valid key.

        Keys are looked up by their SHA-256, so the time taken says nothing about how much
        of a key matched."""
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return self._apps.app_for(token.strip())
