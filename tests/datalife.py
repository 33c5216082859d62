"""Helpers for the data-lifecycle tests: a small workload through the real web, worker
and sandbox, and a reading of everything Redis holds."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx2
import redis

from tests.conftest import new_numbers, wait_until


@dataclass(frozen=True)
class Recorded:
    """A session with one recorded call, its recording stored."""

    session: dict[str, Any]
    recording: dict[str, Any]
    numbers: tuple[str, str]

    @property
    def id(self) -> str:
        return str(self.session["id"])


def recorded_session(api: httpx2.Client, sandbox: httpx2.Client, **extra: Any) -> Recorded:
    """Create a recorded session, place one bridged call, wait for its recording."""
    numbers = new_numbers()
    body = {"first_party": numbers[0], "second_party": numbers[1], "record": True,
            "record_file_format": "wav", **extra}  # fmt: skip
    session = api.post("/v1/sessions", json=body, headers={"Prefer": "wait=20"}).json()
    assert session["status"] == "active", session
    placed = sandbox.post(
        f"/_sandbox/sessions/{session['vts_session_uuid']}/calls",
        json={"caller": "first", "duration": 5},
    )
    assert placed.status_code == 202, placed.text

    def stored() -> dict[str, Any] | None:
        found = api.get(f"/v1/sessions/{session['id']}").json()
        done = [r for r in found["recordings"] if r["status"] == "stored"]
        return found if done and found["interaction_count"] == 1 else None

    current: dict[str, Any] = wait_until(stored, timeout=40, interval=0.1)
    return Recorded(current, current["recordings"][0], numbers)


def end(api: httpx2.Client, session_id: str) -> dict[str, Any]:
    """End the session and wait until it is expired."""
    assert api.delete(f"/v1/sessions/{session_id}").status_code == 202

    def expired() -> dict[str, Any] | None:
        found: dict[str, Any] = api.get(f"/v1/sessions/{session_id}").json()
        return found if found["status"] == "expired" else None

    result: dict[str, Any] = wait_until(expired, timeout=30, interval=0.1)
    return result


def contents(client: redis.Redis) -> Iterator[tuple[str, int, bytes]]:
    """Every key of the database: (name, TTL in seconds or -1, everything it holds). A key
    gone since the scan saw it (a work lock released meanwhile) is left out: its TTL
    would read -2, as if it had none."""
    for raw in client.scan_iter(count=1000):
        key = bytes(raw)
        ttl = int(client.ttl(key))
        if ttl != -2:
            yield key.decode(), ttl, key + b"\0" + b"\0".join(_values(client, key))


def _values(client: redis.Redis, key: bytes) -> list[bytes]:
    kind = bytes(client.type(key))  # type: ignore[arg-type]
    found: Any
    if kind == b"string":
        found = [client.get(key) or b""]
    elif kind == b"hash":
        found = [item for pair in client.hgetall(key).items() for item in pair]
    elif kind == b"list":
        found = client.lrange(key, 0, -1)
    elif kind == b"set":
        found = client.smembers(key)
    elif kind == b"zset":
        found = client.zrange(key, 0, -1)
    else:
        found = []  # gone since the scan saw it
    return [bytes(value) for value in found]


def forms(number: str) -> list[bytes]:
    """The ways a number may be written down in full: E.164, without '+', national."""
    digits = number.lstrip("+")
    return [number.encode(), digits.encode(), digits[1:].encode()]


def holding(client: redis.Redis, *needles: bytes) -> list[str]:
    """The keys whose name or any value contains one of ``needles``."""
    return [key for key, _, blob in contents(client) if any(n in blob for n in needles)]


def late_leg_end(session_uuid: str, first_party: str, sequence: int = 900) -> dict[str, str]:
    """A billed leg end for ``session_uuid``, as VTS sends it (numbers without '+')."""
    return {
        "EventName": "SessionFirstPartyHangup",
        "SessionUUID": session_uuid,
        "SequenceNumber": str(sequence),
        "FirstParty": first_party.lstrip("+"),
        "BilledDuration": "60",
        "Amount": "1.5",
    }


def store_unseen(client: redis.Redis, event_id: str, params: dict[str, str]) -> None:
    """Store a session callback and queue it as a web did that could not yet know its
    session was erased or purged (the worker then decides)."""
    from service import messages
    from service.store import Queue
    from service.store.keys import Keys

    uuid = params["SessionUUID"]
    fields = {"kind": "session", "params": json.dumps(params),
              "received_ms": str(int(time.time() * 1000))}  # fmt: skip
    client.hset(Keys.webhook(event_id), mapping=fields)  # type: ignore[arg-type]
    client.sadd(Keys.callbacks(uuid), event_id)
    Queue(client).enqueue(messages.APPLY_EVENT.message(messages.EventRef(event_id, uuid)))
