"""Errors as ``application/problem+json`` (RFC 9457), with one entry per bad field.

A problem's ``type`` is an absolute URL, ``PUBLIC_BASE_URL`` + ``/problems/`` + a name
(``not-found``, ``idempotency-key-reused``...): an identifier apps match on, and a page
this service serves, saying what the problem means (:data:`TYPES`; docs/api.md too).
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.types import Scope

MEDIA_TYPE = "application/problem+json"
# Every problem type: its status and what it means (served at /problems/{name}).
TYPES: dict[str, tuple[int, str]] = {
    "bad-request": (
        400,
        "A header or field that cannot be read, such as an Idempotency-Key "
        "that is not 1-255 visible ASCII characters.",
    ),
    "malformed-json": (
        400,
        "The body is not JSON within our bounds: RFC 8259, numbers of "
        "at most 30 digits, at most 32 levels of nesting, UTF-8.",
    ),
    "malformed-body": (400, "A VTS callback whose body cannot be read."),
    "invalid-event": (400, "A VTS callback whose fields are missing or out of bounds."),
    "unauthorized": (
        401,
        "The API key is missing or unknown (on VTS callbacks: the signature is missing or wrong).",
    ),
    "not-found": (
        404,
        "No such session or recording (or notification) for this app, or no such route.",
    ),
    "method-not-allowed": (405, "The route does not serve this method."),
    "conflict": (409, "The session has ended and can no longer be changed."),
    "session-not-ended": (
        409,
        "Erasure was asked for a session that is pending or live: end it first.",
    ),
    "request-body-too-large": (413, "The body is over the size limit (64 KiB)."),
    "unsupported-media-type": (
        415,
        "The body is not application/json (or, for PATCH, application/merge-patch+json).",
    ),
    "range-not-satisfiable": (
        416,
        "The Range starts past the end of the file; Content-Range says the size.",
    ),
    "invalid-request": (422, "Invalid fields or query parameters, one entry per field in errors."),
    "idempotency-key-reused": (
        422,
        "The Idempotency-Key was used before with another body: use a new key.",
    ),
    "too-many-requests": (429, "Too many requests: retry after Retry-After seconds."),
    "request-header-fields-too-large": (
        431,
        "The request line and headers are over the size limit (WEB_MAX_HEADER_BYTES, "
        "16 KiB by default); the connection is closed.",
    ),
    "app-budget-exceeded": (
        429,
        "The app is over its share of the VTS request budget: retry after Retry-After seconds.",
    ),
    "too-many-live-sessions": (
        429,
        "The app holds as many live sessions as it may: end one, then retry after "
        "Retry-After seconds.",
    ),
    "internal-error": (
        500,
        "A fault on our side; it has been logged with the request's X-Request-ID.",
    ),
    "ping-timeout": (
        504,
        "The ping's one attempt did not finish in time (the workers are busy or away): try again.",
    ),
    "service-unavailable": (
        503,
        "Storage (Redis) is unavailable: retry after Retry-After seconds.",
    ),
}

_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    404: "Not found",
    405: "Method not allowed",
    406: "Not acceptable",
    409: "Conflict",
    413: "Request body too large",
    415: "Unsupported media type",
    416: "Range not satisfiable",
    422: "Invalid request",
    429: "Too many requests",
    431: "Request header fields too large",
    500: "Internal error",
    503: "Service unavailable",
    504: "Ping timeout",
}


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str


class Problem(Exception):
    """Raised anywhere in a request; rendered as problem+json by the app."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        slug: str | None = None,
        errors: Sequence[FieldError] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.slug = slug or _TITLES.get(status, "error").lower().replace(" ", "-")
        assert self.slug in TYPES, f"undocumented problem type {self.slug}"
        self.errors = tuple(errors)
        self.headers = dict(headers or {})

    def body(self, base: str) -> dict[str, Any]:
        """The problem document; ``base`` is the service's public URL (PUBLIC_BASE_URL)."""
        body: dict[str, Any] = {
            "type": f"{base}/problems/{self.slug}",
            "title": _TITLES.get(self.status, "Error"),
            "status": self.status,
            "detail": self.detail,
        }
        if self.errors:
            body["errors"] = [{"field": e.field, "message": e.message} for e in self.errors]
        return body

    def response(self, scope: Scope) -> Response:
        """The answer to the request of ``scope``, in an app made by ``create_app``."""
        base: str = scope["app"].state.public_base_url
        return JSONResponse(
            self.body(base), status_code=self.status, headers=self.headers, media_type=MEDIA_TYPE
        )


async def handle_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Problem)
    return exc.response(request.scope)


async def problem_type(request: Request) -> Response:
    """``GET /problems/{name}``: what a problem type means, for people who follow its URL."""
    name = request.path_params["name"]
    if name not in TYPES:
        raise Problem(404, "no such problem type; docs/api.md lists them")
    status, meaning = TYPES[name]
    page = (
        f"<!doctype html><title>{name}</title><h1>{name}</h1>"
        f"<p>HTTP {status} {_TITLES[status]}. {html.escape(meaning)}</p>"
    )
    return HTMLResponse(page)


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    detail = {
        404: "no such resource; see /openapi.json for the routes",
        405: "this method is not allowed on this resource",
    }.get(exc.status_code, str(exc.detail))
    return Problem(exc.status_code, detail, headers=exc.headers).response(request.scope)
