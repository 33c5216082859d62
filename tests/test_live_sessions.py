"""Live sessions per app: APP_MAX_LIVE_SESSIONS caps what one app holds (pending, active
and in progress), so that one app cannot take every virtual number; and VTS running out
of virtual numbers is waited out, not final."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dramatiq
import httpx2
import pytest
import redis

from devkit.sandbox.server import number_range
from service.errors import ConfigurationError
from service.models import Status
from service.settings import AppKey, Secret, Settings
from service.store import Sessions
from tests.conftest import (
    API_KEY,
    http_client,
    make_settings,
    new_numbers,
    sandbox_with,
    wait_until,
)
from tests.test_settings import VALID

OTHER_KEY = "other-app-key-" + "c" * 20


@pytest.fixture
def settings(redis_url: str, sandbox_url: str, web_port: int) -> Settings:
    return make_settings(
        redis_url,
        sandbox_url,
        public_base_url=f"http://127.0.0.1:{web_port}",
        api_keys=(AppKey("test", Secret(API_KEY)), AppKey("other", Secret(OTHER_KEY))),
        app_max_live_sessions=2,
    )


def _create(client: httpx2.Client, **headers: str) -> httpx2.Response:
    first, second = new_numbers()
    body = {"first_party": first, "second_party": second}
    return client.post("/v1/sessions", json=body, headers=headers)


def test_the_live_session_cap_is_read_with_a_default() -> None:
    """APP_MAX_LIVE_SESSIONS defaults to 1000, 0 turns the cap off, anything else that is
    not a whole number of 0 or more stops start-up naming it."""
    assert Settings.from_env(VALID).app_max_live_sessions == 1000
    assert Settings.from_env({**VALID, "APP_MAX_LIVE_SESSIONS": "0"}).app_max_live_sessions == 0
    for bad in ("-1", "many", "1.5"):
        with pytest.raises(ConfigurationError, match=r"^APP_MAX_LIVE_SESSIONS: "):
            Settings.from_env({**VALID, "APP_MAX_LIVE_SESSIONS": bad})


def test_an_app_at_its_live_session_cap_is_answered_429_until_one_ends(
    api: httpx2.Client, web_url: str, redis_client: redis.Redis
) -> None:
    """With two sessions pending, the app's third create is a 429 problem with
    Retry-After that names the cap; another app and an idempotent replay are not held
    back; once one of the two fails, the app creates again."""
    made = [_create(api, **{"Idempotency-Key": f"cap-{n}"}) for n in range(2)]
    assert [r.status_code for r in made] == [202, 202]
    refused = _create(api)
    assert refused.status_code == 429, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    assert int(refused.headers["retry-after"]) >= 1
    problem: dict[str, Any] = refused.json()
    assert "2 live sessions" in problem["detail"]
    assert "APP_MAX_LIVE_SESSIONS" not in problem["detail"]  # the app's concern is its own
    first, second = new_numbers()
    replayed = api.post(
        "/v1/sessions",
        json={"first_party": first, "second_party": second},
        headers={"Idempotency-Key": "cap-0"},
    )
    assert replayed.status_code == 422  # the key is answered as before, not counted
    with http_client(web_url, headers={"Authorization": f"Bearer {OTHER_KEY}"}) as other:
        assert _create(other).status_code == 202
    Sessions(redis_client).transition(made[0].json()["id"], Status.FAILED, allowed=[Status.PENDING])
    assert _create(api).status_code == 202
    assert _create(api).status_code == 429


def test_concurrent_creates_never_overshoot_the_cap(web_url: str) -> None:
    """Twelve creates at once from one app with a cap of two: exactly two are taken."""
    headers = {"Authorization": f"Bearer {OTHER_KEY}"}
    with http_client(web_url, headers=headers) as other, ThreadPoolExecutor(12) as pool:
        codes = sorted(pool.map(lambda _: _create(other).status_code, range(12)))
    assert codes == [202] * 2 + [429] * 10


@pytest.mark.parametrize(
    "sandbox_config", [sandbox_with(number_pool=number_range(1))], indirect=True
)
def test_no_virtual_number_available_is_waited_out(
    api: httpx2.Client, sandbox: httpx2.Client, worker: dramatiq.Worker
) -> None:
    """A create that VTS refuses for want of a free virtual number stays pending and is
    tried again with backoff; when a number is freed it becomes active."""
    holder = _create(api, Prefer="wait=10").json()
    assert holder["status"] == "active", holder
    waiting = _create(api).json()

    def refused_for_want_of_a_number() -> bool:
        answered: dict[str, int] = sandbox.get("/_sandbox/stats").json()["answered"]["create"]
        return answered.get("400", 0) >= 1

    wait_until(refused_for_want_of_a_number, timeout=30, interval=0.05)
    assert api.get(f"/v1/sessions/{waiting['id']}").json()["status"] == "pending"
    assert api.delete(f"/v1/sessions/{holder['id']}").status_code == 202

    def active() -> bool:
        return bool(api.get(f"/v1/sessions/{waiting['id']}").json()["status"] == "active")

    wait_until(active, timeout=60, interval=0.2)
