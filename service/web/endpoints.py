"""Endpoints run as plain ASGI apps, for the routes every request of an app or of VTS takes.

Starlette wraps a function endpoint in ``request_response``, which adds a second
exception-handling layer for that route alone (to apply route-level handlers, of which we
have none) and a wrapper around ``send``. On ``POST /v1/sessions`` that layer was ~4 % of
the instructions of a request (see tests/benchmarks/README.md). Without it an error still
reaches the app's handlers, through ExceptionMiddleware, as from any other route.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

Handler = Callable[[Request], Awaitable[Response]]


class Endpoint:
    """``handler`` as an ASGI app (Starlette's ``Route`` takes it as one, not a function)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.handler(Request(scope, receive, send))
        await response(scope, receive, send)
