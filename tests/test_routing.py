"""ExactRouter chooses the route Starlette's Router would, for every request."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from prometheus_client import REGISTRY
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route, Router
from starlette.testclient import TestClient
from starlette.types import Message, Scope

from service.web.app import create_admin_app, create_app
from service.web.endpoints import Endpoint, ExactRouter, Routed
from service.web.problems import MEDIA_TYPE
from tests.conftest import make_settings


def _named(name: str) -> Any:
    async def endpoint(request: Request) -> Response:
        return PlainTextResponse(f"{name} {request.path_params}")

    return endpoint


def _outcome(router: Router, method: str, path: str, root_path: str = "") -> tuple[Any, ...]:
    """What answering the request did: status, body, and what the scope says was chosen."""
    scope: Scope = {
        "type": "http",
        "method": method,
        "path": root_path + path,
        "root_path": root_path,
        "query_string": b"",
        "headers": [],
    }
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    async def run() -> None:
        try:
            await router(scope, receive, send)
        except HTTPException as exc:  # a 404 or 405, outside a Starlette app
            sent.append({"type": "raised", "error": repr(exc)})

    asyncio.run(run())
    return (
        tuple(repr(m) for m in sent),
        scope.get("route"),
        scope.get("endpoint"),
        scope.get("path_params"),
        scope.get("router") is router,
    )


METHODS = ("GET", "HEAD", "POST", "PATCH", "DELETE", "PUT")


def _same_choices(routes: list[BaseRoute], paths: list[str]) -> None:
    exact, plain = ExactRouter(routes), Router(routes)
    for method, path, root in itertools.product(METHODS, paths, ("", "/base")):
        assert _outcome(exact, method, path, root) == _outcome(plain, method, path, root), (
            method,
            path,
            root,
        )


def test_routes_shadowed_or_shared_are_chosen_as_by_router() -> None:
    """An earlier pattern that takes a static path, two routes on one path with other
    methods, a mount, a trailing slash: the same route, scope and answer."""
    routes: list[BaseRoute] = [
        Route("/items/{name}", _named("item"), methods=["GET"]),
        Route("/items/special", _named("special"), methods=["GET", "POST"]),
        Route("/plain", Endpoint(_named("plain-post")), methods=["POST"]),
        Route("/plain", _named("plain-get"), methods=["GET"]),
        Route("/plain", _named("plain-again"), methods=["POST"]),
        Mount("/mounted", routes=[Route("/inner", _named("inner"))]),
        Route("/mounted/inner", _named("shadowed by the mount"), methods=["GET"]),
        Route("/any", _named("any")),
    ]
    paths = ["/items/special", "/items/x", "/plain", "/plain/", "/mounted/inner", "/any", "/"]
    _same_choices(routes, paths)


def test_the_service_routes_are_chosen_as_by_router() -> None:
    app = create_app(make_settings("redis://127.0.0.1:9/0", "http://127.0.0.1:9"))
    (routed,) = app.routes
    assert isinstance(routed, Routed)
    assert isinstance(routed.router, ExactRouter)
    routes = list(routed.routes)
    paths = [*sorted({getattr(r, "path", "/") for r in routes}), "/v1/sessions/ses_1", "/nope"]
    # Only what routing decides: the endpoints are stood in for, as they need the store.
    stand_ins: list[BaseRoute] = [
        Route(r.path, _named(r.path), methods=sorted(r.methods or ()))
        for r in routes
        if isinstance(r, Route)
    ]
    _same_choices(stand_ins, paths)


def test_the_apps_answer_unrouted_requests_with_problems() -> None:
    """An unknown path is a 404 problem, a trailing slash is not redirected (to a Host
    the client chose), and a known path with another method is a 405 problem with Allow;
    unmatched requests are counted as such."""
    settings = make_settings("redis://127.0.0.1:9/0", "http://127.0.0.1:9")
    labels = {"method": "GET", "route": "unmatched", "status": "404"}
    before = REGISTRY.get_sample_value("masking_http_requests_total", labels) or 0.0
    client = TestClient(create_admin_app(settings), follow_redirects=False)
    unknown = client.get("/nope", headers={"Host": "evil.example"})
    slash = client.get("/metrics/", headers={"Host": "evil.example"})
    other = client.post("/metrics")
    for answer in (unknown, slash):
        assert (answer.status_code, answer.headers["content-type"]) == (404, MEDIA_TYPE)
        assert "location" not in answer.headers
    assert (other.status_code, other.headers["content-type"]) == (405, MEDIA_TYPE)
    assert set(other.headers["allow"].split(", ")) == {"GET", "HEAD"}
    assert REGISTRY.get_sample_value("masking_http_requests_total", labels) == before + 2
