"""What each route says of itself in the OpenAPI documents.

An :class:`ApiRoute` is a Starlette ``Route`` that carries one :class:`Operation` per
method it answers, and the schema of each of its path parameters; :mod:`service.web.openapi`
builds the documents' ``paths`` by walking an app's routes. A route deliberately left out of
the documents is a plain ``Route`` with ``include_in_schema=False``.

The parts the operations share (problem answers, parameters, references to the
documents' components) are here too, so each route module declares its operations with
the constants its validation uses.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.routing import Route

JSONSchema = Mapping[str, Any]


@dataclass(frozen=True, kw_only=True)
class Operation:
    """One method of a route: an OpenAPI operation. ``responses`` maps each status the
    route can answer to its OpenAPI response object; ``anonymous`` operations need no API
    key; ``internal`` ones are for VTS and operators (``/openapi-internal.json``), not apps."""

    id: str
    summary: str
    responses: Mapping[str, Any]
    description: str | None = None
    parameters: Sequence[Mapping[str, Any]] = ()
    body: Mapping[str, Any] | None = None
    anonymous: bool = False
    internal: bool = False


class ApiRoute(Route):
    """A route answering the methods of ``operations``, each described by its operation;
    ``parameters`` describes each path parameter (all of them, and only those)."""

    def __init__(
        self,
        path: str,
        endpoint: Callable[..., Any],
        operations: Mapping[str, Operation],
        *,
        parameters: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        super().__init__(path, endpoint, methods=list(operations))
        described = {parameter["name"] for parameter in parameters}
        if described != set(self.param_convertors):
            raise ValueError(f"{path}: describe each path parameter, and only those")
        self.operations = dict(operations)
        self.parameters = tuple(parameters)


def ref(name: str, kind: str = "schemas") -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def path_parameter(name: str, schema: JSONSchema, description: str | None = None) -> dict[str, Any]:
    parameter = {"name": name, "in": "path", "required": True, "schema": dict(schema)}
    return parameter if description is None else {**parameter, "description": description}


def header_parameter(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "header", "schema": {"type": "string"}, "description": description}


def headers(*names: str) -> dict[str, Any]:
    """References to the documents' response headers; every answer has ``X-Request-ID``."""
    return {name: ref(name, "headers") for name in ("X-Request-ID", *names)}


def json_response(schema: str, description: str, *names: str) -> dict[str, Any]:
    """An answer whose body is the component schema ``schema``, with the headers ``names``."""
    return {
        "description": description,
        "headers": headers(*names),
        "content": {"application/json": {"schema": ref(schema)}},
    }


def problem(description: str, *names: str) -> dict[str, Any]:
    """A problem document (RFC 9457) answer, with the headers ``names``."""
    return {
        "description": description,
        "headers": headers(*names),
        "content": {"application/problem+json": {"schema": ref("Problem")}},
    }


def json_body(schema: str, *, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": ref(schema)}}}


# What every /v1 route may answer: BearerAuth's 401, and 503 while Redis is away.
COMMON = {
    "401": problem("missing or invalid API key", "WWW-Authenticate"),
    "503": problem("storage unavailable; retry", "Retry-After"),
}
INVALID = problem("invalid fields or parameters; one entry per field in `errors`")
NOT_FOUND = problem("unknown id, or another app's")
# What a route reading a JSON body may answer about it (BodyLimit's 413 included).
BODY_ERRORS = {
    "400": problem("the body is not JSON (or not within bounds: depth, number size, UTF-8)"),
    "413": problem("body over 64 KiB"),
    "415": problem("the Content-Type is not JSON"),
    "422": INVALID,
}
