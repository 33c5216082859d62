"""Notifications to the app's callback_url: signed, for each state change, retried, and a
failing receiver holds up nobody else."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dramatiq
import httpx2
import pytest
import redis
from standardwebhooks.webhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.models import NotificationKind
from service.settings import Settings
from service.store.apps import AppStore
from tests.conftest import make_settings, new_numbers, wait_until
from tests.servers import serve


@dataclass
class Receiver:
    """An app's endpoint: keeps what it gets; fails the first ``failures`` requests."""

    failures: int = 0
    received: list[dict[str, Any]] = field(default_factory=list)
    attempts: int = 0
    secret: str = ""

    async def handle(self, request: Request) -> Response:
        self.attempts += 1
        if self.attempts <= self.failures:
            return Response(status_code=500)
        body = (await request.body()).decode()
        Webhook(self.secret).verify(body, dict(request.headers))
        self.received.append({"headers": dict(request.headers), "body": body})
        return Response(status_code=204)

    def kinds(self) -> list[str]:
        return [json.loads(r["body"])["type"] for r in self.received]


@pytest.fixture
def settings(redis_url: str, sandbox_url: str, web_port: int) -> Settings:
    return make_settings(
        redis_url,
        sandbox_url,
        public_base_url=f"http://127.0.0.1:{web_port}",
        # The receiver is plain http on loopback: what production refuses.
        egress_allow_http=True,
        egress_allow_private=True,
        notification_retry_schedule=(0.5, 0.5, 1.0, 1.0, 2.0),
    )


@pytest.fixture
def receivers() -> Iterator[tuple[str, Receiver, Receiver]]:
    good, failing = Receiver(failures=2), Receiver(failures=10**6)
    app = Starlette(
        routes=[
            Route("/good", good.handle, methods=["POST"]),
            Route("/failing", failing.handle, methods=["POST"]),
        ]
    )
    with serve(app) as url:
        yield url, good, failing


def test_app_is_told_of_activation_call_end_and_expiry(
    api: httpx2.Client,
    sandbox: httpx2.Client,
    worker: dramatiq.Worker,
    receivers: tuple[str, Receiver, Receiver],
    redis_client: redis.Redis,
) -> None:
    """Active, call ended (with totals) and expired arrive signed, despite early 500s,
    while another session's receiver keeps failing."""
    url, good, failing = receivers
    good.secret = AppStore(redis_client).notification_secrets("test")[0]
    first, second = new_numbers()
    blocked = api.post("/v1/sessions", json={"first_party": first, "second_party": second,
                                             "callback_url": f"{url}/failing"})  # fmt: skip
    first, second = new_numbers()
    body = {"first_party": first, "second_party": second, "callback_url": f"{url}/good"}
    session = api.post("/v1/sessions", json=body, headers={"Prefer": "wait=20"}).json()
    wait_until(lambda: good.kinds() == ["session.active"], timeout=20)
    calls = f"/_sandbox/sessions/{session['vts_session_uuid']}/calls"
    assert sandbox.post(calls, json={"caller": "first"}).status_code == 202
    wait_until(lambda: good.kinds()[-1:] == ["session.call_ended"], timeout=20)
    api.delete(f"/v1/sessions/{session['id']}")
    wait_until(lambda: good.kinds()[-1:] == ["session.expired"], timeout=20)
    ended = json.loads(good.received[1]["body"])["data"]
    assert ended["call_count"] == 2
    assert ended["interaction_count"] == 1
    assert "first_party" not in ended
    assert first[2:] not in "".join(r["body"] for r in good.received)
    assert failing.attempts >= 1
    assert blocked.status_code == 202


def test_the_scripts_record_only_notification_kinds() -> None:
    """Every notification kind a Lua script records is one of NotificationKind."""
    scripts = Path(__file__).resolve().parents[1] / "service" / "store"
    written = {
        kind
        for script in scripts.glob("*.lua")
        for kind in re.findall(r"record_notification\([^)]*?'([a-z_.]+)'", script.read_text())
    }
    assert {"session.expired", "session.recording_stored"} <= written
    assert written <= set(NotificationKind)
