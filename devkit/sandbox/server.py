"""The VTS sandbox: a local server that behaves like VTS's masking-session API.

A stand-in for VTS in tests, development and benchmarks, for one account, with its state
in memory in one process. It is strict where VTS is strict, so that a client that works
against it has been held to VTS's rules rather than to a mock's goodwill.

API, under ``/v1/Account/{auth_id}/Masking/Session`` (with or without a trailing ``/``):
create (``POST``, 201), get (``GET /{uuid}``), list (``GET``), update (``POST /{uuid}``,
200) and expire (``DELETE /{uuid}``, 204 with an empty body). Field rules and bounds are in
:mod:`devkit.sandbox.sessions`; the two response dialects in
:mod:`devkit.sandbox.dialects`; rate limit and fault injection in
:mod:`devkit.sandbox.traffic`. Choices VTS leaves open:

- HTTP Basic auth (``auth_id``:``auth_token``); a path naming another account is 401 too.
- Bodies must be JSON objects sent as ``application/json``; anything else is 400.
- Every answer except the empty 204 carries an ``api_id``; errors are
  ``{"api_id", "error"}`` and never contain a phone number.
- Updating an expired session is 400 ``session is expired``; expiring one again is 204,
  as ``DELETE`` is idempotent.

Control API for tests, under ``/_sandbox/`` with the same auth, neither rate-limited nor
counted: ``GET``/``PUT``/``DELETE /faults``, ``GET /stats``, ``GET /sessions`` (every
session, full numbers), ``POST /reset`` (sessions, stats, faults, events, deliveries and
recordings), the simulated calls of :mod:`devkit.sandbox.calls`: ``POST
/sessions/{uuid}/calls``, ``GET /sessions/{uuid}/events``, ``GET /deliveries`` and ``POST
/drain``, and the recordings of :mod:`devkit.sandbox.recordings`: ``GET``/``POST
/recordings`` and ``GET /recordings/{uuid}``. Callbacks are delivered by
:mod:`devkit.sandbox.callbacks` and signed with :mod:`service.vts.signatures`.

Recording media, under ``/v1/Account/{auth_id}/Recording/`` with the same auth but
outside the API's rate limit and counts: ``GET``/``HEAD /{uuid}.{mp3|wav}`` and ``GET
/{uuid}/`` (the resource).

Run it with ``python -m devkit.sandbox.server --auth-id ID --auth-token TOKEN``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from decimal import Decimal
from urllib.parse import urlencode

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from devkit.sandbox.calls import Billing, CallSettings, EventFamily, Switchboard
from devkit.sandbox.dialects import (
    Dialect,
    change_body,
    internal_session,
    page_body,
    session_body,
)
from devkit.sandbox.recordings import Archive
from devkit.sandbox.sessions import (
    InvalidRequest,
    Query,
    Refused,
    SessionBook,
    parse_create,
    parse_query,
    parse_update,
)
from devkit.sandbox.traffic import Faults, Traffic
from service.phones import InvalidNumber, normalise

Endpoint = Callable[[Request], Awaitable[Response]]
Handler = Callable[[Request, str], Awaitable[Response]]

_SESSIONS = "/v1/Account/{auth_id}/Masking/Session"
_RECORDINGS = "/v1/Account/{auth_id}/Recording"
_FIRST_NUMBER = 14152000000  # +1 415 200 0000: ten thousand valid US numbers follow it
MAX_POOL = 10_000


def number_range(size: int) -> tuple[str, ...]:
    """``size`` consecutive valid US numbers in E.164, from +1 415 200 0000 (at most 10000)."""
    if not 1 <= size <= MAX_POOL:
        raise ValueError(f"a pool holds 1 to {MAX_POOL} numbers")
    return tuple(f"+{_FIRST_NUMBER + i}" for i in range(size))


@dataclass(frozen=True)
class SandboxConfig:
    auth_id: str
    auth_token: str
    dialect: Dialect = "envelope"
    number_pool: tuple[str, ...] = field(default_factory=lambda: number_range(50))
    rate_limit: int = 300
    rate_window: float = 5.0
    event_family: EventFamily = "hangup"
    billing_increment: int = 60
    rate_per_minute: Decimal = Decimal("0.0085")
    callback_timeout: float = 5.0

    def __post_init__(self) -> None:
        if not (self.auth_id and self.auth_token):
            raise ValueError("auth_id and auth_token must not be empty")
        if not self.number_pool or self.rate_limit < 1 or self.rate_window <= 0:
            raise ValueError("the pool, rate_limit and rate_window must all be positive")
        if self.billing_increment < 1 or self.callback_timeout <= 0 or self.rate_per_minute < 0:
            raise ValueError(
                "billing_increment and callback_timeout must be positive; rate_per_minute 0 or more"
            )
        for index, number in enumerate(self.number_pool):
            with suppress(InvalidNumber):
                if normalise(number) == number:
                    continue
            raise ValueError(f"number_pool[{index}] is not a valid number in E.164")


def create_sandbox_app(config: SandboxConfig, clock: Callable[[], float] = time.time) -> Starlette:
    """A fresh sandbox; ``clock`` gives epoch seconds (tests pass one they can move)."""
    sandbox = _Sandbox(config, clock)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await sandbox.calls.courier.close()

    return Starlette(
        routes=sandbox.routes(),
        exception_handlers={HTTPException: _http_error},
        lifespan=lifespan,
    )


def _error(
    api_id: str, status: int, message: str, headers: Mapping[str, str] | None = None
) -> Response:
    return JSONResponse({"api_id": api_id, "error": message}, status, headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Routing's own 404 and 405, in VTS's error shape."""
    assert isinstance(exc, HTTPException)
    return _error(str(uuid.uuid4()), exc.status_code, exc.detail, exc.headers)


def _unauthorised(api_id: str) -> Response:
    message = "authentication failed: use HTTP Basic auth with your Auth ID and Auth Token"
    return _error(api_id, 401, message, {"WWW-Authenticate": 'Basic realm="VTS"'})


def _basic_credentials(header: str) -> tuple[str, str]:
    """(user, password) from an ``Authorization`` header; empty strings when there are none."""
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return "", ""
    try:
        user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return "", ""
    return user, password


async def _json_object(request: Request) -> dict[str, object]:
    content_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if content_type != "application/json":
        raise InvalidRequest("the body must be JSON, sent as Content-Type: application/json")
    try:
        body = json.loads(await request.body())
    except ValueError:
        raise InvalidRequest("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    return body


async def _hold(request: Request, seconds: float) -> None:
    """Wait ``seconds``, or until the client hangs up if that comes first."""
    if seconds <= 0:
        return
    with suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            while (await request.receive())["type"] != "http.disconnect":
                pass


def _page_url(request: Request, query: Query, offset: int) -> str:
    params = dict(request.query_params) | {"limit": str(query.limit), "offset": str(offset)}
    return f"{request.url.path}?{urlencode(params)}"


class _Sandbox:
    """The sandbox's state, and its endpoints."""

    def __init__(self, config: SandboxConfig, clock: Callable[[], float]) -> None:
        self.config = config
        self.clock = clock
        self.book = SessionBook(config.number_pool, clock)
        self.traffic = Traffic(config.rate_limit, config.rate_window, clock)
        billing = Billing(config.billing_increment, config.rate_per_minute)
        settings = CallSettings(
            config.auth_id, config.auth_token, config.event_family, billing, config.callback_timeout
        )
        self.recordings = Archive(config.auth_id, self.traffic, clock)
        self.calls = Switchboard(self.book, self.traffic, self.recordings, settings)

    def routes(self) -> list[Route]:
        api: list[tuple[str, str, str, Handler]] = [
            ("", "POST", "create", self.create),
            ("", "GET", "list", self.list_sessions),
            ("/{session_uuid}", "GET", "get", self.get),
            ("/{session_uuid}", "POST", "update", self.update),
            ("/{session_uuid}", "DELETE", "expire", self.expire),
        ]
        control: list[tuple[str, str, Endpoint]] = [
            ("/faults", "GET", self.get_faults),
            ("/faults", "PUT", self.put_faults),
            ("/faults", "DELETE", self.delete_faults),
            ("/stats", "GET", self.stats),
            ("/sessions", "GET", self.sessions),
            ("/reset", "POST", self.reset),
            ("/sessions/{session_uuid}/calls", "POST", self.calls.simulate),
            ("/sessions/{session_uuid}/events", "GET", self.calls.session_events),
            ("/deliveries", "GET", self.calls.deliveries),
            ("/drain", "POST", self.calls.drain),
            ("/recordings", "GET", self.recordings.list_recordings),
            ("/recordings", "POST", self.recordings.create),
            ("/recordings/{recording_uuid}", "GET", self.recordings.show),
        ]
        media: list[tuple[str, Endpoint]] = [
            ("/{file}", self.recordings.media),  # GET, and HEAD with it
            ("/{recording_uuid}/", self.recordings.resource),
        ]
        return [
            *(
                Route(_SESSIONS + tail + slash, self._api(action, handler), methods=[method])
                for tail, method, action, handler in api
                for slash in ("", "/")
            ),
            *(
                Route("/_sandbox" + tail, self._control(handler), methods=[method])
                for tail, method, handler in control
            ),
            *(
                Route(_RECORDINGS + tail, self._control(handler), methods=["GET"])
                for tail, handler in media
            ),
        ]

    def _authorised(self, request: Request) -> bool:
        user, password = _basic_credentials(request.headers.get("authorization", ""))
        # Compare both in constant time, and both always, so timing reveals neither.
        user_ok = hmac.compare_digest(user.encode(), self.config.auth_id.encode())
        password_ok = hmac.compare_digest(password.encode(), self.config.auth_token.encode())
        return (user_ok & password_ok) and request.path_params.get("auth_id", user) == user

    def _api(self, action: str, handler: Handler) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            api_id = str(uuid.uuid4())
            self.traffic.stats.received[action] += 1
            response = await self._answer(request, action, handler, api_id)
            self.traffic.stats.answered[action][str(response.status_code)] += 1
            return response

        return endpoint

    async def _answer(
        self, request: Request, action: str, handler: Handler, api_id: str
    ) -> Response:
        """Auth, rate limit, latency and faults, then the handler, as VTS's edge would."""
        if not self._authorised(request):
            return _unauthorised(api_id)
        wait = self.traffic.admit()
        if wait is not None:
            return _error(api_id, 429, "too many requests", self.traffic.retry_after(wait))
        if latency := self.traffic.faults.latency_ms:
            await asyncio.sleep(latency / 1000)
        fault = self.traffic.inject(action)
        if fault == "rate_429":
            return _error(api_id, 429, "too many requests", self.traffic.retry_after(1))
        if fault == "error":
            status = self.traffic.faults.error_status
            return _error(api_id, status, "the sandbox injected this error")
        try:
            return await handler(request, api_id)
        except Refused as exc:
            return _error(api_id, exc.status, str(exc))

    async def create(self, request: Request, api_id: str) -> Response:
        session = self.book.create(parse_create(await _json_object(request)))
        self.traffic.stats.sessions_created += 1
        # The session exists whether or not the client is still there to hear about it.
        await _hold(request, self.traffic.stall())
        body = change_body(self.config.dialect, api_id, session, self.clock(), "Session created")
        return JSONResponse(body, 201)

    async def get(self, request: Request, api_id: str) -> Response:
        session = self.book.get(request.path_params["session_uuid"])
        return JSONResponse(session_body(self.config.dialect, api_id, session, self.clock()))

    async def list_sessions(self, request: Request, api_id: str) -> Response:
        query = parse_query(request.query_params)
        found, total = self.book.search(query)
        after, before = query.offset + query.limit, max(0, query.offset - query.limit)
        meta: dict[str, object] = {
            "limit": query.limit,
            "offset": query.offset,
            "total_count": total,
            "next": _page_url(request, query, after) if after < total else None,
            "previous": _page_url(request, query, before) if query.offset > 0 else None,
        }
        body = page_body(self.config.dialect, api_id, found, meta, self.clock())
        return JSONResponse(body)

    async def update(self, request: Request, api_id: str) -> Response:
        session = self.book.get(request.path_params["session_uuid"])
        self.book.update(session, parse_update(await _json_object(request)))
        body = change_body(self.config.dialect, api_id, session, self.clock(), "Session updated")
        return JSONResponse(body)

    async def expire(self, request: Request, api_id: str) -> Response:
        self.book.expire(self.book.get(request.path_params["session_uuid"]))
        return Response(status_code=204)

    def _control(self, handler: Endpoint) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            if not self._authorised(request):
                return _unauthorised(str(uuid.uuid4()))
            return await handler(request)

        return endpoint

    async def get_faults(self, request: Request) -> Response:
        return JSONResponse(self.traffic.faults.as_json())

    async def put_faults(self, request: Request) -> Response:
        try:
            faults = Faults.parse(json.loads(await request.body()))
        except ValueError as exc:  # malformed JSON, or InvalidFaults naming the setting
            return JSONResponse({"error": str(exc)}, 400)
        self.traffic.configure(faults)
        return JSONResponse(faults.as_json())

    async def delete_faults(self, request: Request) -> Response:
        self.traffic.configure(Faults())
        return Response(status_code=204)

    async def stats(self, request: Request) -> Response:
        return JSONResponse(self.traffic.stats.as_json())

    async def sessions(self, request: Request) -> Response:
        now = self.clock()
        every = [internal_session(session, now) for session in self.book.sessions.values()]
        return JSONResponse({"sessions": every})

    async def reset(self, request: Request) -> Response:
        self.book.clear()
        self.traffic.reset()
        await self.calls.clear()
        self.recordings.clear()
        return Response(status_code=204)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Serve the VTS sandbox.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8025)
    parser.add_argument("--auth-id", required=True)
    parser.add_argument("--auth-token", required=True)
    parser.add_argument("--dialect", choices=["envelope", "bare"], default="envelope")
    parser.add_argument("--pool-size", type=int, default=50, help=f"1 to {MAX_POOL}")
    parser.add_argument("--rate-limit", type=int, default=300, help="requests per window")
    parser.add_argument("--rate-window", type=float, default=5.0, help="seconds")
    parser.add_argument(
        "--event-family", choices=["hangup", "complete"], default="hangup", help="session events"
    )
    parser.add_argument(
        "--billing-increment", type=int, default=60, help="seconds a leg is billed by"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    """Serve the sandbox with one worker: its state lives in this one process."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        config = SandboxConfig(
            auth_id=args.auth_id,
            auth_token=args.auth_token,
            dialect=args.dialect,
            number_pool=number_range(args.pool_size),
            rate_limit=args.rate_limit,
            rate_window=args.rate_window,
            event_family=args.event_family,
            billing_increment=args.billing_increment,
        )
    except ValueError as exc:
        parser.error(str(exc))
    uvicorn.run(create_sandbox_app(config), host=args.host, port=args.port, workers=1)


if __name__ == "__main__":
    main()
