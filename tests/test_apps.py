"""Apps: named keys from API_KEYS, managed keys (only their digests stored) that work and
stop working without a restart, per-app notification secrets, and operator commands that
need only REDIS_URL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import dramatiq
import httpx2
import pytest
import redis
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.apps import AppRegistry
from service.errors import ConfigurationError
from service.settings import AppKey, Secret, Settings
from service.store.apps import AppStore
from tests.conftest import http_client, make_settings, new_numbers, wait_until
from tests.servers import serve
from tests.test_settings import VALID

RIDES_KEY = "rides-key-" + "a" * 20
FOOD_KEY = "food-key-" + "b" * 20


@pytest.fixture
def settings(redis_url: str, sandbox_url: str, web_port: int) -> Settings:
    return make_settings(
        redis_url,
        sandbox_url,
        public_base_url=f"http://127.0.0.1:{web_port}",
        api_keys=(AppKey("rides", Secret(RIDES_KEY)), AppKey("food", Secret(FOOD_KEY))),
        apps_refresh=0.1,
        # The apps' receivers are plain http on loopback: what production refuses.
        egress_allow_http=True,
        egress_allow_private=True,
    )


def _client(web_url: str, key: str) -> httpx2.Client:
    headers = {"Authorization": f"Bearer {key}"}
    return http_client(web_url, headers=headers)


def test_api_keys_are_app_key_pairs() -> None:
    """API_KEYS names each key's app (two keys per app at most); a bare key is the app
    ``default``'s."""
    env = {**VALID, "API_KEYS": f"rides:{RIDES_KEY}, rides:{RIDES_KEY}2,food:{FOOD_KEY}"}
    keys = Settings.from_env(env).api_keys
    assert [(k.app, k.key.reveal()) for k in keys] == [
        ("rides", RIDES_KEY), ("rides", RIDES_KEY + "2"), ("food", FOOD_KEY)
    ]  # fmt: skip
    assert [k.app for k in Settings.from_env({**VALID, "API_KEYS": RIDES_KEY}).api_keys] == [
        "default"
    ]
    for bad in (f"a:{RIDES_KEY},a:{FOOD_KEY},a:{FOOD_KEY}x", "rides:short"):
        with pytest.raises(ConfigurationError, match=r"^API_KEYS: ") as caught:
            Settings.from_env({**VALID, "API_KEYS": bad})
        assert RIDES_KEY not in str(caught.value)
    with pytest.raises(ConfigurationError, match=r"^APP_SHARES: "):
        Settings.from_env({**VALID, "APP_SHARES": "rides:0"})


def test_a_key_listed_for_two_apps_is_a_configuration_error() -> None:
    """API_KEYS refuses one key listed twice (it would silently belong to the last app),
    without printing the key."""
    for listed in (f"a:{RIDES_KEY},b:{RIDES_KEY}", f"a:{RIDES_KEY},a:{RIDES_KEY}"):
        with pytest.raises(ConfigurationError, match=r"^API_KEYS: .*more than once") as caught:
            Settings.from_env({**VALID, "API_KEYS": listed})
        assert RIDES_KEY not in str(caught.value)


def test_an_app_name_that_is_not_valid_is_a_configuration_error() -> None:
    """``Rides:KEY`` in API_KEYS is refused, naming the rule, rather than read as the
    key ``Rides:KEY`` of the app ``default``."""
    for listed in (f"Rides:{RIDES_KEY}", f"rides app:{RIDES_KEY}", f":{RIDES_KEY}"):
        with pytest.raises(ConfigurationError, match=r"^API_KEYS: .*app name") as caught:
            Settings.from_env({**VALID, "API_KEYS": listed})
        assert RIDES_KEY not in str(caught.value)


def test_a_managed_key_works_until_revoked_without_a_restart(
    web_url: str, redis_client: redis.Redis
) -> None:
    """A key made with the store behind ``masking apps`` authenticates as its app within
    the refresh interval, is kept only as a digest, and is refused once revoked."""
    apps = AppStore(redis_client)
    key, key_id = apps.create_key("support")
    dumps: list[bytes | None] = [redis_client.dump(name) for name in redis_client.scan_iter()]
    everything = b"".join(d or b"" for d in dumps)
    assert key.encode() not in everything
    with _client(web_url, key) as support, _client(web_url, RIDES_KEY) as rides:
        wait_until(lambda: support.get("/v1/sessions").status_code == 200)
        first, second = new_numbers()
        made = support.post("/v1/sessions", json={"first_party": first, "second_party": second})
        assert made.status_code == 202
        assert rides.get(f"/v1/sessions/{made.json()['id']}").status_code == 404
        assert apps.revoke_key(key_id) == [key_id]
        wait_until(lambda: support.get("/v1/sessions").status_code == 401)
        assert rides.get("/v1/sessions").status_code == 200


def _masking(redis_url: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """Run ``masking`` with REDIS_URL as its only setting."""
    env = {"REDIS_URL": redis_url, "PATH": os.environ.get("PATH", "")}
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        env=env, input=stdin, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_operator_commands_need_only_redis_url(redis_url: str) -> None:
    """apps (create, list, secret, revoke), dlq, replay-webhooks and logs run with
    REDIS_URL alone; a new key is printed once and never listed."""
    created = _masking(redis_url, "apps", "create", "rides")
    assert created.returncode == 0, created.stderr
    key = next(line for line in created.stdout.splitlines() if line.startswith("msk_"))
    listed = _masking(redis_url, "apps", "list")
    assert listed.returncode == 0, listed.stderr
    assert "rides" in listed.stdout
    assert key not in listed.stdout
    rotated = _masking(redis_url, "apps", "secret", "rides", "--rotate")
    assert [line.split()[0] for line in rotated.stdout.splitlines()] == ["current", "previous"]
    assert _masking(redis_url, "apps", "revoke", "--app", "rides").returncode == 0
    assert _masking(redis_url, "dlq", "list").returncode == 0
    replayed = _masking(redis_url, "replay-webhooks", "--since", "2026-01-01T00:00:00+00:00")
    assert (replayed.returncode, replayed.stdout) == (0, "queued 0 stored callbacks again\n")
    line = json.dumps({"event": "session_created", "level": "info", "app": "rides"})
    shown = _masking(redis_url, "logs", stdin=line + "\n")
    assert (shown.returncode, "session_created" in shown.stdout) == (0, True)


def test_revoking_a_key_id_never_revokes_an_app_of_that_name(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """``revoke KEY_ID`` revokes that key only, even when an app is named like it;
    ``revoke --app NAME`` revokes the app's keys; a name given as a key id is refused
    with exit status 2 and the command to use."""
    apps = AppStore(redis_client)
    _, rides_key = apps.create_key("rides")
    _, lookalike_key = apps.create_key(rides_key)  # an app named like rides' key id
    revoked = _masking(redis_url, "apps", "revoke", rides_key)
    assert (revoked.returncode, revoked.stdout) == (
        0,
        f"revoked {rides_key}; refused within seconds\n",
    )
    assert (apps.get("rides").key_ids, apps.get(rides_key).key_ids) == ([], [lookalike_key])  # type: ignore[union-attr]
    refused = _masking(redis_url, "apps", "revoke", "support")
    assert refused.returncode == 2
    assert "masking apps revoke --app support" in refused.stderr
    by_app = _masking(redis_url, "apps", "revoke", "--app", rides_key)
    assert by_app.returncode == 0, by_app.stderr
    assert apps.get(rides_key).key_ids == []  # type: ignore[union-attr]


@dataclass
class Receiver:
    """An app's endpoint: keeps the bodies and headers of what it gets."""

    received: list[dict[str, Any]] = field(default_factory=list)

    async def handle(self, request: Request) -> Response:
        body = (await request.body()).decode()
        self.received.append({"headers": dict(request.headers), "body": body})
        return Response(status_code=204)

    def kinds(self) -> list[str]:
        return [json.loads(r["body"])["type"] for r in self.received]


def _verifies(secret: str, notification: dict[str, Any]) -> bool:
    try:
        Webhook(secret).verify(notification["body"], notification["headers"])
    except WebhookVerificationError:
        return False
    return True


@pytest.fixture
def receivers() -> Iterator[tuple[str, Receiver, Receiver]]:
    rides, food = Receiver(), Receiver()
    app = Starlette(
        routes=[
            Route("/rides", rides.handle, methods=["POST"]),
            Route("/food", food.handle, methods=["POST"]),
        ]
    )
    with serve(app) as url:
        yield url, rides, food


def test_notifications_are_signed_with_each_apps_own_secret(
    web_url: str,
    worker: dramatiq.Worker,
    redis_client: redis.Redis,
    receivers: tuple[str, Receiver, Receiver],
) -> None:
    """Each app verifies its notifications with its own secret and not another's; during
    a rotation both its secrets verify."""
    url, rides_inbox, food_inbox = receivers
    sessions = {}
    for app, key in (("rides", RIDES_KEY), ("food", FOOD_KEY)):
        first, second = new_numbers()
        body = {"first_party": first, "second_party": second, "callback_url": f"{url}/{app}"}
        with _client(web_url, key) as client:
            sessions[app] = client.post("/v1/sessions", json=body).json()["id"]
    wait_until(lambda: rides_inbox.kinds() == food_inbox.kinds() == ["session.active"], timeout=20)
    apps = AppStore(redis_client)
    rides_secret, food_secret = (apps.notification_secrets(a)[0] for a in ("rides", "food"))
    assert rides_secret != food_secret
    assert _verifies(rides_secret, rides_inbox.received[0])
    assert not _verifies(food_secret, rides_inbox.received[0])
    assert _verifies(food_secret, food_inbox.received[0])
    new_secret = apps.rotate_secret("rides").notification_secrets[0]
    with _client(web_url, RIDES_KEY) as client:
        assert client.delete(f"/v1/sessions/{sessions['rides']}").status_code == 202
    wait_until(lambda: rides_inbox.kinds()[-1:] == ["session.expired"], timeout=20)
    expired = rides_inbox.received[-1]
    assert _verifies(new_secret, expired)
    assert _verifies(rides_secret, expired)
    assert not _verifies(food_secret, expired)


def test_shares_split_the_apps_budget_by_weight() -> None:
    """Apps share VTS_APP_BUDGET equally by default, by APP_SHARES weights when given,
    among the apps that have a key (managed ones included)."""
    env = {**VALID, "API_KEYS": f"rides:{RIDES_KEY},food:{FOOD_KEY}", "VTS_APP_BUDGET": "90"}
    fair = AppRegistry(Settings.from_env(env))
    assert (fair.budget("rides").limit, fair.budget("food").limit) == (45, 45)
    weighted = AppRegistry(Settings.from_env({**env, "APP_SHARES": "rides:2"}))
    assert (weighted.budget("rides").limit, weighted.budget("food").limit) == (60, 30)
    weighted.load({"0" * 64: "support"})
    assert [weighted.budget(a).limit for a in ("rides", "food", "support")] == [45, 22, 22]
    assert Settings.from_env(VALID).vts_app_budget is None
    assert AppRegistry(Settings.from_env(VALID)).budget("default").limit == 240
