"""Every key the service writes has a lifetime: a TTL, or a bound decided where it is
written. A small workload runs end to end, then every key of Redis is checked."""

from __future__ import annotations

import re
from pathlib import Path

import dramatiq
import httpx2
import pytest
import redis

from service.models import FINAL, Status
from service.settings import Settings
from service.store import DeadLetters
from service.store.codec import decode_str
from service.store.keys import Keys
from tests.conftest import make_settings, new_numbers, wait_until
from tests.datalife import contents, end, recorded_session

# Keys without a TTL that are bounded all the same, and by what.
BOUNDED = [
    re.compile(pattern)
    for pattern in (
        r"masking:sessions(:status:[a-z_]+)?",  # an entry per session, purged with it
        r"masking:schedule",  # a few timers per session, purged with it
        r"masking:webhooks",  # trimmed by age as callbacks are stored
        r"masking:orphan-events",  # trimmed by age as orphans are kept
        r"masking:stats:[a-z]+",  # a fixed set of counters
        r"masking:apps",  # an entry per app
        r"masking:app-keys",  # an entry per managed key, revoked ones removed
        # An entry per notification, removed with its session (purge, erasure).
        r"masking:app-notifications:[a-z0-9_-]+",
        r"masking:notifications-pending",
        r"masking:endpoints-disabled",  # an entry per app endpoint, trimmed by age
        r"dramatiq:.+",  # queues, emptied by the workers; dead letters dropped after 7 days
    )
]
# Keys of one session, without a TTL: bounded by the session's life plus its retention.
_SESSION_KEY = re.compile(
    r"masking:session:(ses_[0-9a-f]{32})(:events|:applied|:recordings|:notifications)?"
)
_NOTIFICATION_KEY = re.compile(r"masking:notification(?:-attempts)?:(ses_[0-9a-f]{32})\..+")
_RECORDING_KEY = re.compile(r"masking:recording:rec_[0-9a-f]{32}")
_CLAIM_KEY = re.compile(r"masking:vts-session:[A-Za-z0-9-]+")


@pytest.fixture
def settings(redis_url: str, sandbox_url: str, web_port: int, tmp_path: Path) -> Settings:
    return make_settings(
        redis_url,
        sandbox_url,
        public_base_url=f"http://127.0.0.1:{web_port}",
        recordings_dir=tmp_path / "recordings",
        egress_allow_http=True,
        egress_allow_private=True,
    )


def _owner(client: redis.Redis, key: str) -> str | None:
    """The session a per-session key belongs to, or None if the key is not one."""
    if match := _SESSION_KEY.fullmatch(key) or _NOTIFICATION_KEY.fullmatch(key):
        return match.group(1)
    if _RECORDING_KEY.fullmatch(key):
        owner = client.hget(key, "session_id")
        return decode_str(owner) if owner else ""
    if _CLAIM_KEY.fullmatch(key):
        claim = client.get(key)
        return decode_str(claim) if claim else ""
    return None


def _bounded(client: redis.Redis, key: str) -> bool:
    """A key without TTL is bounded: a known bounded key, or a key of a session that is
    still going on or has its purge on the schedule."""
    if any(pattern.fullmatch(key) for pattern in BOUNDED):
        return True
    owner = _owner(client, key)
    if not owner:
        return False
    status = client.hget(Keys.session(owner), "status")
    if status is None:
        return False
    if Status(decode_str(status)) not in FINAL:
        return True
    return client.zscore(Keys.schedule(), f"purge:{owner}") is not None


def _failed_session(api: httpx2.Client, sandbox: httpx2.Client) -> str:
    sandbox.put("/_sandbox/faults", json={"error_rate": 1.0, "error_status": 400,
                                          "error_paths": ["create"]})  # fmt: skip
    first, second = new_numbers()
    body = {"first_party": first, "second_party": second}
    created = api.post("/v1/sessions", json=body, headers={"Prefer": "wait=20"}).json()
    sandbox.delete("/_sandbox/faults")
    assert created["status"] == "failed", created
    return str(created["id"])


def test_every_key_has_a_ttl_or_a_bound(
    api: httpx2.Client, sandbox: httpx2.Client, worker: dramatiq.Worker, redis_client: redis.Redis
) -> None:
    """After live, ended, failed and erased sessions, a deleted recording, idempotent
    requests and a dead letter, no key lacks both a TTL and a bound."""
    live = recorded_session(api, sandbox)
    # Its app's endpoint is down: its notifications stay pending, with their attempts.
    ended = recorded_session(api, sandbox, callback_url="http://127.0.0.1:9/hook")
    erased = recorded_session(api, sandbox, metadata={"k": "v"})
    assert api.delete(live.recording["url"]).status_code == 204
    for done in (ended, erased):
        end(api, done.id)
    assert api.post(f"/v1/sessions/{erased.id}/erase").status_code == 200
    first, second = new_numbers()
    keyed = {"first_party": first, "second_party": second}
    assert api.post("/v1/sessions", json=keyed, headers={"Idempotency-Key": "k-1"}).is_success
    _failed_session(api, sandbox)
    DeadLetters(redis_client).note_dead_letter("0" * 32, "a reason")
    queues = [Keys.queue(name) for name in ("sessions", "recordings")]
    wait_until(lambda: not any(redis_client.llen(queue) for queue in queues))

    unbounded = [
        key for key, ttl, _ in contents(redis_client) if ttl < 0 and not _bounded(redis_client, key)
    ]
    assert unbounded == []
    kinds = {key.split(":")[1] for key, _, _ in contents(redis_client)}
    assert {"session", "recording", "idempotency", "webhook", "dead-letter-error"} <= kinds
    assert {"notification", "notification-attempts", "app-notifications"} <= kinds
