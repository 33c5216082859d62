"""Endpoints run as plain ASGI apps, for the routes every request of an app or of VTS takes.

Starlette wraps a function endpoint in ``request_response``, which adds a second
exception-handling layer for that route alone (to apply route-level handlers, of which we
have none) and a wrapper around ``send``. On ``POST /v1/sessions`` that layer was ~4 % of
the instructions of a request (see tests/benchmarks/README.md). Without it an error still
reaches the app's handlers, through ExceptionMiddleware, as from any other route.

``ExactRouter`` finds those routes by a lookup rather than by trying every route's pattern,
and ``Routed`` is how an app hands it every request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route, Router
from starlette.types import Receive, Scope, Send

Handler = Callable[[Request], Awaitable[Response]]


class Endpoint:
    """``handler`` as an ASGI app (Starlette's ``Route`` takes it as one, not a function)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.handler(Request(scope, receive, send))
        await response(scope, receive, send)


class ExactRouter(Router):
    """Starlette's router, which first looks up a route without path parameters by method
    and path, and hands the request to it as ``Router`` would have (``route``, ``endpoint``
    and ``path_params`` set in the scope). Anything else goes through ``Router`` itself,
    which tries each route's pattern in turn (three of them before ``POST /v1/sessions``).

    A path is looked up only when no earlier route's pattern matches it: the one ``Router``
    would choose is then the first route with that path and method. The routes are fixed
    once the router is made."""

    def __init__(self, routes: Sequence[BaseRoute], **options: Any) -> None:
        super().__init__(routes, **options)
        self._exact = _exact_routes(self.routes)

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            route = self._exact.get((scope["method"], _route_path(scope)))
            if route is not None:
                scope.setdefault("router", self)
                scope["route"] = route
                scope["endpoint"] = route.endpoint
                scope["path_params"] = dict(scope.get("path_params", {}))
                await route.app(scope, receive, send)
                return
        await super().app(scope, receive, send)


class Routed(BaseRoute):
    """The one route of an app whose routes an ExactRouter holds: it matches every request
    and hands it over unchanged. Starlette's app makes a router of its own, which would
    redirect "/path/" to "/path" with a Location built from the Host header (the
    client's); behind this route unknown paths are the ExactRouter's plain 404s. A
    ``Mount("")`` would do the same, with a regex match and a scope update per request."""

    def __init__(self, router: ExactRouter) -> None:
        self.router = router

    @property
    def routes(self) -> list[BaseRoute]:
        return self.router.routes

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        return Match.FULL, {}

    def url_path_for(self, name: str, /, **path_params: Any) -> Any:
        return self.router.url_path_for(name, **path_params)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.router(scope, receive, send)


def _route_path(scope: Scope) -> str:
    """The path the routes see: the request's, less the app's ``root_path`` when it is
    mounted under one (as ``Router`` computes it)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if not root or not path.startswith(root):
        return path
    # Only a whole leading segment is the root: "/api" is not the root of "/apiary".
    rest = path[len(root) :]
    return rest if rest[:1] in ("", "/") else path


def _exact_routes(routes: Sequence[BaseRoute]) -> dict[tuple[str, str], Route]:
    found: dict[tuple[str, str], Route] = {}
    earlier: list[BaseRoute] = []
    for route in routes:
        if (
            isinstance(route, Route)
            and route.methods
            and not route.param_convertors
            and not any(_may_match(other, route.path) for other in earlier)
        ):
            for method in route.methods:
                found.setdefault((method, route.path), route)
        earlier.append(route)
    return found


def _may_match(route: BaseRoute, path: str) -> bool:
    """Whether ``route`` could take a request for ``path`` (any route whose pattern is
    unknown could)."""
    pattern = getattr(route, "path_regex", None)
    return pattern is None or pattern.match(path) is not None
