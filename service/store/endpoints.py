"""The health of apps' notification endpoints (an endpoint is a callback URL's origin, per
app): since when each has failed every attempt, and whether it is disabled.

Only failing and disabled endpoints are kept (a success forgets the endpoint), in one
hash per app whose lifetime each write renews (``ENDPOINT_MEMORY_SECONDS``), and in one
index of the disabled ones, bounded by the apps' endpoints and trimmed by the same
lifetime: an endpoint no one has sent to for that long starts afresh.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import msgspec
import redis

from service.models import iso
from service.store import lua
from service.store.codec import decode_str
from service.store.names import PREFIX

# Longer than the default five days of failures before disabling and than a month of
# session retention (the records a recovery would send).
ENDPOINT_MEMORY_SECONDS = 40 * 24 * 3600


class EndpointKeys:
    @staticmethod
    def endpoints(app: str) -> str:
        """Hash: origin -> its state (JSON), for the app's failing or disabled endpoints."""
        return f"{PREFIX}app-endpoints:{app}"

    @staticmethod
    def disabled_endpoints() -> str:
        """Sorted set: '<app> <origin>' of each disabled endpoint, scored by when (ms)."""
        return f"{PREFIX}endpoints-disabled"


class EndpointState(msgspec.Struct, frozen=True, omit_defaults=True):
    """Since when (epoch ms) every attempt has failed; when and why it was disabled."""

    failing_since: int
    disabled_at: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class DisabledEndpoint:
    app: str
    origin: str
    disabled_at: str
    reason: str


def _member(app: str, origin: str) -> str:
    return f"{app} {origin}"


def disabled_count(client: redis.Redis) -> int:
    """How many endpoints are disabled now."""
    return int(client.zcard(EndpointKeys.disabled_endpoints()))


class EndpointHealth:
    """Endpoint health, for the workers that deliver and the operator's tools."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._failed = client.register_script(lua.source("endpoint_failed.lua"))

    def state(self, app: str, origin: str) -> EndpointState | None:
        raw = self.client.hget(EndpointKeys.endpoints(app), origin)
        return msgspec.json.decode(raw, type=EndpointState) if raw else None

    def failed(
        self, app: str, origin: str, moment: datetime, *, disable_after: float, reason: str
    ) -> tuple[EndpointState, bool]:
        """Note a failed attempt at ``moment``; the endpoint is disabled (for ``reason``)
        once it has failed every attempt for ``disable_after`` seconds (0: at once).
        Returns its state and whether this failure disabled it."""
        arguments = {
            "origin": origin,
            "member": _member(app, origin),
            "now_ms": int(moment.timestamp() * 1000),
            "now": iso(moment),
            "disable_after": int(disable_after * 1000),
            "reason": reason,
            "lifetime": ENDPOINT_MEMORY_SECONDS * 1000,
        }
        encoded, newly = self._failed(
            keys=[EndpointKeys.endpoints(app), EndpointKeys.disabled_endpoints()],
            args=[msgspec.json.encode(arguments)],
        )
        return msgspec.json.decode(encoded, type=EndpointState), bool(newly)

    def succeeded(self, app: str, origin: str) -> None:
        """Forget the endpoint's failures (and enable it, after a successful ping)."""
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hdel(EndpointKeys.endpoints(app), origin)
            pipe.zrem(EndpointKeys.disabled_endpoints(), _member(app, origin))
            pipe.execute()

    def enable(self, app: str) -> list[str]:
        """Enable every endpoint of the app and forget their failures; the origins that
        were disabled."""
        disabled = [d.origin for d in self.disabled() if d.app == app]
        with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(EndpointKeys.endpoints(app))
            for origin in disabled:
                pipe.zrem(EndpointKeys.disabled_endpoints(), _member(app, origin))
            pipe.execute()
        return disabled

    def disabled(self) -> list[DisabledEndpoint]:
        """Every disabled endpoint, the longest disabled first."""
        found = []
        for raw in self.client.zrange(EndpointKeys.disabled_endpoints(), 0, -1):
            if not isinstance(raw, bytes | str):
                continue
            app, _, origin = decode_str(raw).partition(" ")
            state = self.state(app, origin)
            if state is not None and state.disabled_at:
                found.append(DisabledEndpoint(app, origin, state.disabled_at, state.reason or ""))
        return found
