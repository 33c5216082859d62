"""The OpenAPI documents themselves: valid 3.1, named operations, every field's presence
and nullability stated, headers and statuses documented, apps' and internal routes apart,
and a response check (tests/contract.py) that does refuse what breaks them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx2
import pytest
from openapi_spec_validator import validate

from service import schemas
from service.web import openapi, problems
from service.web.app import create_admin_app, create_app
from service.web.operations import ApiRoute, Operation
from service.web.problems import Problem
from tests import contract
from tests.conftest import make_settings
from tests.contract import document, internal_document

OPERATIONS = {
    "createSession", "listSessions", "getSession", "updateSession", "endSession",
    "eraseSession", "listSessionEvents", "getRecording", "getRecordingHead",
    "deleteRecording", "getHealth", "getReadiness", "getProblemType",
    "listSessionNotifications", "redeliverNotification", "recoverNotifications",
    "pingEndpoint",
}  # fmt: skip


def _operations(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        operation["operationId"]: operation
        for item in doc["paths"].values()
        for method, operation in item.items()
        if method != "parameters"
    }


@pytest.mark.parametrize("doc", [document(), internal_document()], ids=["apps", "internal"])
def test_documents_are_valid_openapi_3_1(doc: dict[str, Any]) -> None:
    """Both documents validate as OpenAPI 3.1."""
    validate(doc)
    assert doc["openapi"] == "3.1.0"


def test_every_operation_is_named() -> None:
    """Each operation has an operationId, unique across both documents."""
    apps, internal = _operations(document()), _operations(internal_document())
    assert set(apps) == OPERATIONS
    assert not set(apps) & set(internal)
    total = sum(len(item) - ("parameters" in item) for item in document()["paths"].values())
    assert len(apps) == total


# Served, and deliberately in neither document: the documents themselves.
UNDESCRIBED = {("GET", "/openapi.json"), ("GET", "/openapi-internal.json")}


def _undescribed(table: list[Any]) -> set[tuple[str, str]]:
    """Each (method, path) the routes answer that neither document has an operation for.
    HEAD counts as described by GET, unless the route declares it apart."""
    paths = document()["paths"] | internal_document()["paths"]
    found = set()
    for path, route in openapi.walk(table):
        described = paths.get(path, {})
        methods = route.methods or {"any method"}
        for method in methods:
            if method == "HEAD" and "GET" in methods and "head" not in described:
                continue
            if method.lower() not in described:
                found.add((method, path))
    return found


def test_every_route_is_described() -> None:
    """Each method of each route of both apps is an operation of one of the documents,
    except the short list of routes left out on purpose."""
    settings = make_settings("redis://127.0.0.1:1", "http://127.0.0.1:1")
    table = [*create_app(settings).routes, *create_admin_app(settings).routes]
    assert _undescribed(table) == UNDESCRIBED


def test_a_route_describes_each_of_its_path_parameters() -> None:
    """A route whose path parameter has no schema cannot be declared."""
    operation = Operation(id="getThing", summary="a thing", responses={})
    with pytest.raises(ValueError, match="describe each path parameter"):
        ApiRoute("/things/{thing_id}", problems.problem_type, {"GET": operation})


def test_vts_callbacks_and_metrics_are_only_in_the_internal_document(
    web_url: str, admin_url: str
) -> None:
    """Apps' document has no VTS callback or metrics route; the internal one, served
    at /openapi-internal.json on ADMIN_PORT, has them."""
    apps = httpx2.get(web_url + "/openapi.json").json()
    internal = httpx2.get(admin_url + "/openapi-internal.json").json()
    assert not [p for p in apps["paths"] if p.startswith(("/webhooks", "/metrics"))]
    assert {"/webhooks/vts/session", "/webhooks/vts/recording", "/metrics"} <= set(
        internal["paths"]
    )


def test_every_session_field_is_required_and_unset_options_are_nullable() -> None:
    """A session always holds every field; an option the app did not set may be null."""
    session = document()["components"]["schemas"]["Session"]
    assert (
        set(session["required"])
        == set(session["properties"])
        == set(schemas.Session.__struct_fields__)
    )
    fmt = session["properties"]["record_file_format"]
    assert {"type": "null"} in fmt["anyOf"]
    assert document()["components"]["schemas"]["CreateSession"]["required"] == [
        "first_party",
        "second_party",
    ]


def test_recordings_and_timeline_items_are_typed() -> None:
    """Recordings and timeline entries have schemas, not bare objects."""
    components = document()["components"]["schemas"]
    recordings = components["Session"]["properties"]["recordings"]
    assert recordings["items"] == {"$ref": "#/components/schemas/Recording"}
    entry = components["TimelineEntry"]
    assert entry["required"] == ["at", "type"]
    assert entry["properties"]["duration"]["anyOf"][0]["type"] == "integer"


def _headers(operation: dict[str, Any], status: str) -> set[str]:
    return set(operation["responses"][status].get("headers", {}))


def test_headers_statuses_and_parameters_are_documented() -> None:
    """Each answer's headers, each status a route can give, and the conditional and
    range parameters are in the document."""
    ops = _operations(document())
    create = ops["createSession"]
    assert {"200", "201", "202", "400", "413", "415", "422", "429", "401", "503"} == set(
        create["responses"]
    )
    for status in ("200", "201", "202"):
        assert {"Location", "Idempotent-Replayed", "Preference-Applied", "X-Request-ID"} <= (
            _headers(create, status)
        )
    assert "Retry-After" in _headers(create, "429")
    assert {"400", "415", "409", "422"} <= set(ops["updateSession"]["responses"])
    assert "application/merge-patch+json" in ops["updateSession"]["requestBody"]["content"]
    recording = ops["getRecording"]
    assert {p["name"] for p in recording["parameters"]} == {"Range", "If-None-Match", "If-Range"}
    assert {"200", "206", "304", "416"} <= set(recording["responses"])
    assert "Content-Range" in _headers(recording, "206")
    assert "Content-Range" in _headers(recording, "416")
    audio = recording["responses"]["200"]["content"]["audio/wav"]["schema"]
    assert audio["format"] == "binary"


def test_notifications_are_documented_as_webhooks() -> None:
    """The notifications apps receive are OpenAPI 3.1 webhooks with a typed body."""
    post = document()["webhooks"]["sessionNotification"]["post"]
    schema = post["requestBody"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/Notification"}
    notification = document()["components"]["schemas"]["NotificationSession"]
    assert "first_party" not in notification["properties"]


def test_ping_is_documented_among_the_webhooks() -> None:
    """The ping event an app may ask for is a webhook too, with its typed body."""
    post = document()["webhooks"]["ping"]["post"]
    schema = post["requestBody"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/PingNotification"}
    assert {p["name"] for p in post["parameters"]} >= {"webhook-id", "webhook-signature"}


def _response(
    status: int, body: Any, path: str = "/v1/sessions", media: str = "application/json"
) -> httpx2.Response:
    request = httpx2.Request("GET", "http://127.0.0.1" + path)
    content = json.dumps(body).encode()
    return httpx2.Response(
        status, content=content, headers={"content-type": media}, request=request
    )


def test_contract_check_refuses_what_breaks_the_document() -> None:
    """The response check used by every API test fails on a body that breaks its schema,
    an undocumented status, and a problem without its fields."""
    page: dict[str, Any] = {"data": [], "next_cursor": None}
    contract.check(_response(200, page))
    with pytest.raises(AssertionError, match="breaks its schema"):
        contract.check(_response(200, {"data": [{"id": "x"}], "next_cursor": None}))
    with pytest.raises(AssertionError, match="status not documented"):
        contract.check(_response(418, page))
    with pytest.raises(AssertionError, match="breaks its schema"):
        contract.check(_response(404, {"title": "x"}, "/nowhere", "application/problem+json"))


def test_every_problem_type_is_documented() -> None:
    """docs/api.md names every problem type, and every type the code can answer has its
    entry in problems.TYPES (which /problems/{name} serves)."""
    root = Path(__file__).resolve().parents[1]
    documented = set(
        re.findall(
            r"^\| `([a-z-]+)`(?:, `([a-z-]+)`)? \|", (root / "docs/api.md").read_text(), re.M
        )
    )
    names = {name for pair in documented for name in pair if name}
    code = "".join(path.read_text() for path in (root / "service").rglob("*.py"))
    slugs = set(re.findall(r'slug="([a-z-]+)"', code))
    statuses = {400, 401, 404, 405, 409, 413, 415, 416, 422, 429, 500, 503, 504}
    slugs |= {Problem(status, "x").slug for status in statuses}
    assert slugs <= set(problems.TYPES), slugs - set(problems.TYPES)
    assert names == set(problems.TYPES)
