"""Every answer checked against the OpenAPI documents: a response hook for test clients.

``check(response)`` finds the operation by method and path template, and fails the test
when the status is not documented for it, the content type is not one of the documented
ones, a documented header holds a value its schema refuses, or a JSON body does not match
its schema (JSON Schema 2020-12, as OpenAPI 3.1 has it). A path no route serves must
answer a problem. The tests' clients install it (tests/conftest.py, tests/system.py).
"""

from __future__ import annotations

import json
import re
from functools import cache
from typing import Any

import httpx2
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from service.web.app import create_admin_app, create_app
from tests.conftest import make_settings

_ROOT = "urn:masking-openapi"
_PROBLEM = {"$ref": "#/components/schemas/Problem"}


@cache
def documents() -> tuple[dict[str, Any], dict[str, Any]]:
    """The documents as the apps serve them: the public app's and the admin app's."""
    settings = make_settings("redis://127.0.0.1:1", "http://127.0.0.1:1")
    return create_app(settings).state.openapi, create_admin_app(settings).state.openapi


def document() -> dict[str, Any]:
    """``/openapi.json``."""
    return documents()[0]


def internal_document() -> dict[str, Any]:
    """``/openapi-internal.json``."""
    return documents()[1]


@cache
def _combined() -> dict[str, Any]:
    """One document with both sets of paths (the internal one's refs are a subset)."""
    public = document()
    return {**public, "paths": public["paths"] | internal_document()["paths"]}


@cache
def _registry() -> Registry[Any]:
    resource: Resource[Any] = Resource.from_contents(_combined(), default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource(_ROOT, resource)
    return registry


@cache
def _templates() -> list[tuple[re.Pattern[str], str]]:
    return [
        (re.compile("^" + re.sub(r"\{[^/]+\}", "[^/]+", path) + "$"), path)
        for path in _combined()["paths"]
    ]


def validate(instance: Any, schema: dict[str, Any], what: str) -> None:
    """Fail unless ``instance`` matches ``schema`` (may be a $ref into the documents)."""
    wrapped = {"$ref": _ROOT + schema["$ref"]} if "$ref" in schema else schema
    validator = Draft202012Validator(wrapped, registry=_registry())
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(instance)
    ]
    assert not errors, f"{what} breaks its schema: {errors[:5]}"


def _operation(method: str, path: str) -> dict[str, Any] | None:
    for pattern, template in _templates():
        if pattern.match(path):
            item = _combined()["paths"][template]
            operation: dict[str, Any] | None = item.get(method)
            return operation
    return None


def _resolve(item: dict[str, Any]) -> dict[str, Any]:
    if "$ref" not in item:
        return item
    kind, name = item["$ref"].split("/")[-2:]
    resolved: dict[str, Any] = _combined()["components"][kind][name]
    return resolved


def _check_headers(response: httpx2.Response, documented: dict[str, Any], what: str) -> None:
    for name, spec in documented.items():
        value = response.headers.get(name)
        if value is None:
            continue
        schema = _resolve(spec)["schema"]
        typed: Any = int(value) if schema.get("type") == "integer" else value
        validate(typed, schema, f"{what} header {name}")


def check(response: httpx2.Response) -> None:
    """Fail when ``response`` is not what the OpenAPI documents promise for its request."""
    request = response.request
    method, path = request.method.lower(), request.url.path
    what = f"{request.method} {path} -> {response.status_code}"
    response.read()
    media = response.headers.get("content-type", "").split(";")[0].strip()
    operation = _operation(method, path)
    if operation is None and method == "head":
        operation = _operation("get", path)  # Starlette answers HEAD wherever GET is
    if operation is None:
        # No such route or method: a problem, whatever the path.
        assert response.status_code in (404, 405), f"{what}: undocumented operation"
        assert media == "application/problem+json", what
        validate(response.json(), _PROBLEM, what)
        return
    responses = operation["responses"]
    spec = responses.get(str(response.status_code)) or responses.get(
        f"{str(response.status_code)[0]}XX"
    )
    if spec is None and response.status_code == 413:
        # The body limit stands before every route, even those that take no body.
        spec = {"content": {"application/problem+json": {"schema": _PROBLEM}}}
    assert spec is not None, f"{what}: status not documented ({sorted(responses)})"
    _check_headers(response, spec.get("headers", {}), what)
    content = spec.get("content")
    if not content or method == "head" or not response.content:
        return
    assert media in content, f"{what}: content type {media!r} not in {sorted(content)}"
    if media.endswith("json"):
        validate(json.loads(response.content), content[media]["schema"], what)
