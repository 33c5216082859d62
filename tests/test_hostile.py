"""Hostile input to the app API: refused cheaply with a problem, never a 500, never stored."""

from __future__ import annotations

import json
from typing import Any

import httpx2
import pytest
import redis

from service.errors import ConfigurationError
from service.problems import Problem
from service.settings import Settings
from service.store import Keys
from service.validation import Rules, parse_create
from tests.conftest import new_numbers

PROBLEM = "application/problem+json"


def _parties() -> str:
    first, second = new_numbers()
    return f'"first_party": "{first}", "second_party": "{second}"'


def _problem(response: httpx2.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


def _post_raw(api: httpx2.Client, raw: str | bytes, **headers: bytes) -> httpx2.Response:
    sent = {b"content-type": b"application/json"} | {k.encode(): v for k, v in headers.items()}
    return api.post("/v1/sessions", content=raw, headers=sent)


@pytest.mark.parametrize(
    "metadata",
    ['{"x": NaN}', '{"x": Infinity}', '{"x": -Infinity}', '{"x": 1e400}',
     '{"x": ' + "7" * 5000 + "}", '{"x": "\\ud800"}', '{"x": ' + "[" * 20_000 + "}"],
)  # fmt: skip
def test_json_beyond_rfc_8259_is_400_and_stores_nothing(
    api: httpx2.Client, redis_client: redis.Redis, metadata: str
) -> None:
    """NaN, infinities, huge numbers, lone surrogates and deep nesting are 400, not stored."""
    response = _post_raw(api, "{" + _parties() + ', "metadata": ' + metadata + "}")
    _problem(response, 400)
    assert redis_client.dbsize() == 0


def test_deeply_nested_body_is_400(api: httpx2.Client, redis_client: redis.Redis) -> None:
    """A body of 20,000 nested arrays is 400."""
    _problem(_post_raw(api, "[" * 20_000), 400)
    assert redis_client.dbsize() == 0


@pytest.mark.parametrize("prefer", ["wait=" + "9" * 5000, "wait=\u00b2", "wait=-1"])
def test_hostile_prefer_is_ignored_or_capped(api: httpx2.Client, prefer: str) -> None:
    """A Prefer header with thousands of digits or a non-ASCII digit never breaks a create."""
    response = _post_raw(api, "{" + _parties() + "}", prefer=prefer.encode("latin-1"))
    assert response.status_code in (201, 202), response.text


@pytest.mark.parametrize("limit", ["\u00b2", "\u0663", "9" * 5000, "-1", "1.0"])
def test_hostile_limits_are_422(api: httpx2.Client, limit: str) -> None:
    """A limit that is not 1 to 100 in ASCII digits is 422, whatever Unicode calls a digit."""
    body = _problem(api.get("/v1/sessions", params={"limit": limit}), 422)
    assert [e["field"] for e in body["errors"]] == ["limit"]


def test_metadata_size_counts_utf8_bytes(api: httpx2.Client) -> None:
    """1,200 bytes of 'é' in UTF-8 fit the 2 KiB of metadata (escaped they would not)."""
    body = json.loads("{" + _parties() + "}") | {"metadata": {"note": "\u00e9" * 600}}
    assert api.post("/v1/sessions", json=body).status_code == 202
    body = json.loads("{" + _parties() + "}") | {"metadata": {"note": "\u00e9" * 1100}}
    _problem(api.post("/v1/sessions", json=body), 422)


def test_an_unreadable_stored_session_never_breaks_the_list(
    api: httpx2.Client, redis_client: redis.Redis
) -> None:
    """A stored session that cannot be read is left out of lists; the others are listed."""
    good = api.post("/v1/sessions", json=json.loads("{" + _parties() + "}")).json()["id"]
    bad = api.post("/v1/sessions", json=json.loads("{" + _parties() + "}")).json()["id"]
    redis_client.hset(Keys.session(bad), "metadata", '{"x":NaN}')
    response = api.get("/v1/sessions")
    assert response.status_code == 200, response.text
    assert [s["id"] for s in response.json()["data"]] == [good]
    metrics = api.get("/metrics").text
    assert 'masking_unreadable_records_total{kind="session"}' in metrics


@pytest.mark.parametrize(
    ("number", "reason"),
    [("+14155552345 ext. 99", "extension"),
     ("+14155552345;ext=99", "extension"),
     ("+19005550123", "premium-rate"),
     ("+449098790123", "premium-rate"),
     ("+881631234567", "satellite"),
     ("+445512345678", "uan"),
     ("+447012345678", "personal")],
)  # fmt: skip
def test_numbers_outside_the_policy_are_422(
    api: httpx2.Client, redis_client: redis.Redis, number: str, reason: str
) -> None:
    """Extensions, premium-rate, satellite, UAN and personal numbers are refused, not stored."""
    first, _ = new_numbers()
    response = api.post("/v1/sessions", json={"first_party": first, "second_party": number})
    body = _problem(response, 422)
    (error,) = body["errors"]
    assert error["field"] == "second_party"
    assert reason in error["message"]
    assert number[2:] not in response.text
    assert redis_client.dbsize() == 0


def test_allowed_number_types_are_configurable() -> None:
    """ALLOWED_NUMBER_TYPES widens (or narrows) the policy; unknown type names are named."""
    env = {
        "REDIS_URL": "redis://127.0.0.1:1/0",
        "VTS_AUTH_ID": "MAXXXXXXXXXXXXXXXXXX",
        "VTS_AUTH_TOKEN": "very-secret-token",
        "PUBLIC_BASE_URL": "https://masking.example.com",
        "API_KEYS": "first-key-0123456789",
    }
    assert Settings.from_env(env).allowed_number_types == {
        "mobile", "fixed-line", "fixed-line-or-mobile"
    }  # fmt: skip
    wider = Settings.from_env(env | {"ALLOWED_NUMBER_TYPES": "mobile, premium-rate"})
    body = {"first_party": "+19005550123", "second_party": "+447911123456"}
    assert parse_create(body, Rules.from_settings(wider))["first_party"] == "+19005550123"
    with pytest.raises(Problem) as refused:
        parse_create({**body, "first_party": "+14155552345"}, Rules.from_settings(wider))
    assert "fixed-line-or-mobile number" in refused.value.errors[0].message
    with pytest.raises(ConfigurationError, match="ALLOWED_NUMBER_TYPES"):
        Settings.from_env(env | {"ALLOWED_NUMBER_TYPES": "mobile,landline"})
