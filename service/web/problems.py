"""Errors as ``application/problem+json`` (RFC 9457), with one entry per bad field."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

MEDIA_TYPE = "application/problem+json"

_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    404: "Not found",
    405: "Method not allowed",
    406: "Not acceptable",
    409: "Conflict",
    413: "Request body too large",
    415: "Unsupported media type",
    422: "Invalid request",
    429: "Too many requests",
    500: "Internal error",
    503: "Service unavailable",
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
        self.errors = tuple(errors)
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": f"/problems/{self.slug}",
            "title": _TITLES.get(self.status, "Error"),
            "status": self.status,
            "detail": self.detail,
        }
        if self.errors:
            body["errors"] = [{"field": e.field, "message": e.message} for e in self.errors]
        return body

    def response(self) -> Response:
        return JSONResponse(
            self.body(), status_code=self.status, headers=self.headers, media_type=MEDIA_TYPE
        )


async def handle_problem(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, Problem)
    return exc.response()


async def handle_http_exception(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    detail = {
        404: "no such resource; see /openapi.json for the routes",
        405: "this method is not allowed on this resource",
    }.get(exc.status_code, str(exc.detail))
    return Problem(exc.status_code, detail, headers=exc.headers).response()
