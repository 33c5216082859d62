"""Apps in Redis: their records (notification secrets) and their managed API keys.

Both hashes are bounded by what operators create (``masking apps``), so they carry no
TTL. A managed key is stored only as its SHA-256 digest.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio

from service.apps import check_name, key_digest, key_id, new_key, new_notification_secret
from service.models import iso, now
from service.settings import MAX_KEYS_PER_APP
from service.store.codec import decode_str
from service.store.names import PREFIX


class AppKeys:
    @staticmethod
    def apps() -> str:
        """Hash: app name -> its record (JSON: created_at, source, notification secrets)."""
        return f"{PREFIX}apps"

    @staticmethod
    def keys() -> str:
        """Hash: SHA-256 of a managed API key -> the app it belongs to (JSON)."""
        return f"{PREFIX}app-keys"

    @staticmethod
    def budget(app: str) -> str:
        """Sorted set: the app's recent VTS requests, scored by when they count (ms)."""
        return f"{PREFIX}app:{app}:vts-budget"

    @staticmethod
    def vts_rate_limit(auth_id: str) -> str:
        """The VTS account's rate limiter, shared by every worker."""
        return f"{PREFIX}rate-limit:vts:{auth_id}"

    @staticmethod
    def reconcile_rate_limit(auth_id: str) -> str:
        """The share of the VTS account's rate that reconciliation may spend."""
        return f"{PREFIX}rate-limit:vts-reconcile:{auth_id}"


def vts_rate_limit_key(auth_id: str) -> str:
    """The key of the VTS account's rate limiter (shared by every worker)."""
    return AppKeys.vts_rate_limit(auth_id)


def reconcile_rate_limit_key(auth_id: str) -> str:
    """The key of reconciliation's own share of the VTS account's rate."""
    return AppKeys.reconcile_rate_limit(auth_id)


class TooManyKeys(ValueError):
    pass


class UnknownApp(LookupError):
    pass


@dataclass(frozen=True)
class AppRecord:
    name: str
    created_at: str
    source: str
    notification_secrets: list[str]
    key_ids: list[str] = field(default_factory=list)


def _record(source: str) -> str:
    return json.dumps(
        {"created_at": iso(now()), "source": source,
         "notification_secrets": [new_notification_secret()]}
    )  # fmt: skip


def _decode(name: str, raw: bytes | str, key_ids: list[str]) -> AppRecord:
    data: dict[str, Any] = json.loads(raw)
    return AppRecord(
        name, data["created_at"], data["source"], list(data["notification_secrets"]), key_ids
    )


class AppStore:
    """Apps for the operator command and the workers (blocking redis-py)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def ensure(self, name: str, source: str = "managed") -> AppRecord:
        """The app's record, created (with a fresh notification secret) if it is new."""
        check_name(name)
        self.client.hsetnx(AppKeys.apps(), name, _record(source))
        raw = self.client.hget(AppKeys.apps(), name)
        return _decode(name, raw or b"", self._key_ids().get(name, []))

    def get(self, name: str) -> AppRecord | None:
        raw = self.client.hget(AppKeys.apps(), name)
        return _decode(name, raw, self._key_ids().get(name, [])) if raw else None

    def create_key(self, name: str) -> tuple[str, str]:
        """A new key for the app (created if new): (the key, its id). Only its digest is
        kept. Raises TooManyKeys when the app already has two."""
        self.ensure(name)
        if len(self._key_ids().get(name, [])) >= MAX_KEYS_PER_APP:
            raise TooManyKeys(f"{name} already has {MAX_KEYS_PER_APP} keys; revoke one first")
        key = new_key()
        digest = key_digest(key)
        entry = json.dumps({"app": name, "created_at": iso(now())})
        self.client.hset(AppKeys.keys(), digest, entry)
        return key, key_id(digest)

    def all(self) -> list[AppRecord]:
        key_ids = self._key_ids()
        raw: dict[bytes, bytes] = self.client.hgetall(AppKeys.apps())  # type: ignore[assignment]
        records = [
            _decode(decode_str(n), r, key_ids.get(decode_str(n), [])) for n, r in raw.items()
        ]
        return sorted(records, key=lambda record: record.name)

    def revoke_key(self, target: str) -> list[str]:
        """Revoke the managed key with id ``target``; return the ids revoked (none or it)."""
        return self._revoke([d for d in self._managed() if key_id(d) == target])

    def revoke_app(self, name: str) -> list[str]:
        """Revoke every managed key of the app ``name``; return the ids revoked."""
        return self._revoke([d for d, app in self._managed().items() if app == name])

    def _revoke(self, digests: list[str]) -> list[str]:
        if digests:
            self.client.hdel(AppKeys.keys(), *digests)
        return [key_id(digest) for digest in digests]

    def rotate_secret(self, name: str) -> AppRecord:
        """A new notification secret signs from now on; the current one keeps signing
        alongside until :meth:`drop_previous_secret`."""
        return self._change_secrets(name, lambda secrets: [new_notification_secret(), secrets[0]])

    def drop_previous_secret(self, name: str) -> AppRecord:
        return self._change_secrets(name, lambda secrets: secrets[:1])

    def notification_secrets(self, name: str) -> list[str]:
        """The secrets that sign the app's notifications (the current one first); an app
        without a record yet gets one."""
        raw = self.client.hget(AppKeys.apps(), name)
        if raw is None:
            self.client.hsetnx(AppKeys.apps(), name, _record("config"))
            raw = self.client.hget(AppKeys.apps(), name)
        return list(json.loads(raw or b"{}")["notification_secrets"])

    def _change_secrets(self, name: str, rewrite: Callable[[list[str]], list[str]]) -> AppRecord:
        """Replace the app's notification secrets by ``rewrite`` of them, atomically."""

        def update(pipe: redis.client.Pipeline) -> None:
            raw = pipe.hget(AppKeys.apps(), name)
            if raw is None:
                raise UnknownApp(f"no app named {name}")
            data = json.loads(raw)
            data["notification_secrets"] = rewrite(data["notification_secrets"])
            pipe.multi()
            pipe.hset(AppKeys.apps(), name, json.dumps(data))

        self.client.transaction(update, AppKeys.apps())
        found = self.get(name)
        if found is None:
            raise UnknownApp(f"no app named {name}")
        return found

    def _managed(self) -> dict[str, str]:
        raw: dict[bytes, bytes] = self.client.hgetall(AppKeys.keys())  # type: ignore[assignment]
        return {decode_str(digest): json.loads(entry)["app"] for digest, entry in raw.items()}

    def _key_ids(self) -> dict[str, list[str]]:
        ids: dict[str, list[str]] = {}
        for digest, app in sorted(self._managed().items()):
            ids.setdefault(app, []).append(key_id(digest))
        return ids


class AsyncAppStore:
    """What the web needs: the managed keys, and its configured apps registered."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.client = client

    async def managed_keys(self) -> dict[str, str]:
        """Every managed key's digest and its app."""
        raw = await self.client.hgetall(AppKeys.keys())
        return {decode_str(digest): json.loads(entry)["app"] for digest, entry in raw.items()}

    async def register(self, names: Iterable[str]) -> None:
        """Give each configured app a record (and so a notification secret) if it has none,
        so that ``masking apps`` shows it."""
        async with self.client.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hsetnx(AppKeys.apps(), name, _record("config"))
            await pipe.execute()
