"""The API fuzzed from its own OpenAPI documents (schemathesis): over real HTTP on loopback,
with real Redis, every operation answers without a 5xx, with a documented status, and
with a body that matches its schema. Examples are few, so that the test takes seconds;
``HYPOTHESIS_EXAMPLES`` raises them for a longer run by hand."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import schemathesis
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.web.app import create_admin_app, create_app
from tests.conftest import API_KEY, make_settings
from tests.contract import document, internal_document
from tests.servers import free_port, serve

EXAMPLES = int(os.environ.get("HYPOTHESIS_EXAMPLES", "12"))


# Built from the documents themselves (pure functions): no server is needed to collect.
# A ping is sent by a worker, which this web has not (it would wait, then answer 504);
# tests/test_notification_delivery.py covers it, its refusals included.
schema = schemathesis.openapi.from_dict(document()).exclude(operation_id="pingEndpoint")
internal = schemathesis.openapi.from_dict(internal_document())
_CHECKS = [
    schemathesis.checks.not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
_SETTINGS = hypothesis.settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(hypothesis.HealthCheck),
)


@pytest.fixture(scope="module")
def service_url(redis_url: str) -> Iterator[str]:
    """One web app for every operation (the function-scoped one would start 14)."""
    port = free_port()
    settings = make_settings(
        redis_url, "http://127.0.0.1:1", public_base_url=f"http://127.0.0.1:{port}"
    )
    with serve(create_app(settings), port=port) as url:
        yield url


@pytest.fixture(scope="module")
def admin_service_url(redis_url: str) -> Iterator[str]:
    """The web's ADMIN_PORT app, which serves the internal document's metrics routes."""
    settings = make_settings(redis_url, "http://127.0.0.1:1")
    with serve(create_admin_app(settings)) as url:
        yield url


@schema.parametrize()
@_SETTINGS
def test_every_operation_keeps_its_contract(case: Any, service_url: str) -> None:
    """Whatever is sent: no 5xx, a documented status, a body matching its schema."""
    case.call_and_validate(
        base_url=service_url, headers={"Authorization": f"Bearer {API_KEY}"}, checks=_CHECKS
    )


@internal.parametrize()
@_SETTINGS
def test_every_internal_operation_keeps_its_contract(
    case: Any, service_url: str, admin_service_url: str
) -> None:
    """VTS's callback routes and the metrics (on ADMIN_PORT), fuzzed the same way
    (unsigned: 4xx)."""
    base_url = admin_service_url if case.path.startswith("/metrics") else service_url
    case.call_and_validate(base_url=base_url, checks=_CHECKS)
