"""The OpenAPI 3.1 documents: :func:`document` for apps (``/openapi.json``) and
:func:`internal_document` for VTS's callbacks and the metrics (``/openapi-internal.json``).

Their ``paths`` are the operations the routes declare (:mod:`service.web.operations`),
found by walking an app's routes; their schemas are generated from the typed models the
web decodes and encodes with (:mod:`service.schemas`). So the documents cannot drift from
what is routed and answered.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from functools import cache
from typing import Any

import msgspec
from starlette.routing import BaseRoute, Mount, Route

from service import schemas
from service.web.api import MAX_WAIT
from service.web.endpoints import Routed
from service.web.operations import ApiRoute, Operation, header_parameter, ref

_MODELS = (
    schemas.CreateSession,
    schemas.UpdateSession,
    schemas.Session,
    schemas.SessionList,
    schemas.Timeline,
    schemas.Problem,
    schemas.Notification,
    schemas.NotificationList,
    schemas.Recover,
    schemas.Recovery,
    schemas.PingRequest,
    schemas.Ping,
    schemas.PingNotification,
)


@cache
def _components() -> dict[str, Any]:
    _, components = msgspec.json.schema_components(
        _MODELS, ref_template="#/components/schemas/{name}"
    )
    components["UpdateSession"]["minProperties"] = 1
    components["CreateSession"]["examples"] = [
        {"first_party": "+14155552671", "second_party": "+14155552672"},
        {
            "first_party": "+447911123456",
            "second_party": "+14155552672",
            "record": True,
            "session_expiry": 600,
            "metadata": {"ride": "r-1"},
        },
    ]
    components["UpdateSession"]["examples"] = [{"session_expiry": 900}]
    return components


_HEADERS: dict[str, dict[str, Any]] = {
    "X-Request-ID": {
        "description": "the request's id (yours if it was sane, else a new one): quote it "
        "to operators, every log line of the request carries it",
        "schema": {"type": "string"},
    },
    "Location": {"description": "the session's URL", "schema": {"type": "string"}},
    "Idempotent-Replayed": {
        "description": "`true` when this answers an earlier request with the same "
        "Idempotency-Key and body",
        "schema": {"type": "string", "enum": ["true"]},
    },
    "Preference-Applied": {
        "description": f"`wait=N` when `Prefer: wait=N` was honoured (N capped at {MAX_WAIT})",
        "schema": {"type": "string", "pattern": "^wait=[0-9]+$"},
    },
    "Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}},
    "WWW-Authenticate": {"schema": {"type": "string"}},
    "ETag": {"description": "the file's sha256, quoted", "schema": {"type": "string"}},
    "Accept-Ranges": {"schema": {"type": "string", "enum": ["bytes"]}},
    "Content-Range": {
        "description": "`bytes first-last/size` (206), `bytes */size` (416)",
        "schema": {"type": "string"},
    },
    "Content-Length": {"schema": {"type": "integer"}},
    "Cache-Control": {"schema": {"type": "string"}},
}


def walk(table: Iterable[BaseRoute], prefix: str = "") -> Iterator[tuple[str, Route]]:
    """Every ``Route`` of ``table`` with the path it is served at (mounts walked into)."""
    for route in table:
        if isinstance(route, Mount):
            yield from walk(route.routes, prefix + route.path)
        elif isinstance(route, Routed):
            yield from walk(route.routes, prefix)
        elif isinstance(route, Route):
            yield prefix + route.path, route


def _paths(table: Iterable[BaseRoute], *, internal: bool) -> dict[str, Any]:
    """The ``paths`` of the operations of ``table`` for apps, or for VTS and operators.
    Routes not described (``include_in_schema=False``) are left out."""
    paths: dict[str, Any] = {}
    for path, route in walk(table):
        if not isinstance(route, ApiRoute):
            continue
        for method, operation in route.operations.items():
            if operation.internal is not internal:
                continue
            shared = {"parameters": list(route.parameters)} if route.parameters else {}
            paths.setdefault(path, shared)[method.lower()] = _operation(operation)
    return paths


def _operation(operation: Operation) -> dict[str, Any]:
    described: dict[str, Any] = {"operationId": operation.id, "summary": operation.summary}
    if operation.description is not None:
        described["description"] = operation.description
    if operation.anonymous:
        described["security"] = []
    if operation.parameters:
        described["parameters"] = list(operation.parameters)
    if operation.body is not None:
        described["requestBody"] = operation.body
    described["responses"] = operation.responses
    return described


def _webhooks() -> dict[str, Any]:
    """What an app's ``callback_url`` receives (OpenAPI 3.1 ``webhooks``)."""
    signed = [
        header_parameter("webhook-id", "the notification's id: the same on every retry"),
        header_parameter("webhook-timestamp", "seconds since the epoch"),
        header_parameter(
            "webhook-signature",
            "`v1,<base64 HMAC-SHA256>`, one per active "
            "secret of the app, separated by spaces (Standard Webhooks)",
        ),
    ]
    return {
        "sessionNotification": {
            "post": {
                "operationId": "receiveSessionNotification",
                "summary": "A session changed: created (active), failed, call ended, "
                "recording stored, expired",
                "description": "Sent to the session's `callback_url` (https, public "
                "addresses only), signed with the app's own secret, retried over about a "
                "day (NOTIFICATION_RETRY_SCHEDULE; a 429's or 503's Retry-After is "
                "honoured) until a 2xx; `410 Gone` disables the endpoint. The body never "
                "holds the parties' numbers.",
                "security": [],
                "parameters": signed,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": ref("Notification")}},
                },
                "responses": {"2XX": {"description": "received; anything else is retried"}},
            }
        },
        "ping": {
            "post": {
                "operationId": "receivePing",
                "summary": "A test of the endpoint, asked for by the app "
                "(`POST /v1/notifications/ping`)",
                "description": "Signed like every notification; it tells of nothing. "
                "Answering 2xx enables the endpoint again if it was disabled.",
                "security": [],
                "parameters": signed,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": ref("PingNotification")}},
                },
                "responses": {"2XX": {"description": "received"}},
            }
        },
    }


_PROBLEM_TYPES = (
    "Every problem's `type` is an absolute URL, `PUBLIC_BASE_URL/problems/<name>`: match "
    "on the name, the same in every deployment; the URL serves a page saying what the "
    "problem means (`getProblemType`)."
)


def document(table: Iterable[BaseRoute]) -> dict[str, Any]:
    """The app-facing document of the routes ``table`` (the public app's)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Masking service",
            "version": "1.0.0",
            "description": "Masked phone connections through VTS. " + _PROBLEM_TYPES,
        },
        "security": [{"bearer": []}],
        "paths": _paths(table, internal=False),
        "webhooks": _webhooks(),
        "components": {
            "schemas": _components(),
            "headers": _HEADERS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def internal_document(table: Iterable[BaseRoute]) -> dict[str, Any]:
    """What VTS and Prometheus call, among the routes ``table`` (both apps')."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Masking service: VTS callbacks and metrics",
            "version": "1.0.0",
            "description": "Not for apps. VTS callbacks are authenticated by their V3 "
            "signature against PUBLIC_BASE_URL. " + _PROBLEM_TYPES,
        },
        "paths": _paths(table, internal=True),
        "components": {
            "schemas": {
                "Problem": _components()["Problem"],
                "FieldProblem": _components()["FieldProblem"],
            },
            "headers": _HEADERS,
        },
    }
