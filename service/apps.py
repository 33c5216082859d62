"""Apps: the tenants of the service. Each has a name, one or two API keys, its own
notification secrets, and a share of the VTS budget.

Keys come from ``API_KEYS`` or are managed in Redis with ``masking apps``; for managed
keys only a SHA-256 digest is stored. The web holds every key's digest in memory
(:class:`AppRegistry`), refreshed from Redis every ``APPS_REFRESH`` seconds, so a request
is authenticated without a Redis round trip and a revoked key stops working within that
time.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from service.settings import APP_NAME, Settings

# The part of the VTS rate limit that apps' requests share, when VTS_APP_BUDGET is unset;
# the rest is left for the service's own calls (reconciliation, retries, lookups).
DEFAULT_BUDGET_FRACTION = 0.8
KEY_PREFIX = "msk_"


class InvalidAppName(ValueError):
    pass


def check_name(name: str) -> str:
    if not APP_NAME.fullmatch(name):
        raise InvalidAppName(
            "an app name is 1 to 32 characters: lower-case letters, digits, '-' and '_', "
            "starting with a letter or digit"
        )
    return name


def key_digest(key: str) -> str:
    """What is stored and compared for a key: its SHA-256, hex."""
    return hashlib.sha256(key.encode()).hexdigest()


def key_id(digest: str) -> str:
    """A key's public id (for lists and revocation): the start of its digest."""
    return digest[:12]


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def new_notification_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


@dataclass(frozen=True)
class Budget:
    """How many VTS requests an app may cause per ``window`` seconds."""

    limit: int
    window: float


class AppRegistry:
    """Which app a key belongs to, and each app's share of the VTS budget.

    Configured keys are fixed; managed ones are replaced wholesale by :meth:`load`.
    """

    def __init__(self, settings: Settings) -> None:
        self._configured = {key_digest(k.key.reveal()): k.app for k in settings.api_keys}
        self._managed: dict[str, str] = {}
        self._weights = dict(settings.app_shares)
        self._budget = settings.vts_app_budget or max(
            1, int(settings.vts_rate_limit * DEFAULT_BUDGET_FRACTION)
        )
        self._window = settings.vts_rate_window
        self._total = self._weight_of(self.apps())

    def configured_apps(self) -> list[str]:
        """The apps named in API_KEYS."""
        return sorted(set(self._configured.values()))

    def load(self, managed: Mapping[str, str]) -> None:
        """Take the managed keys (digest -> app) now in Redis."""
        self._managed = dict(managed)
        self._total = self._weight_of(self.apps())

    def app_for(self, key: str) -> str | None:
        digest = key_digest(key)
        return self._configured.get(digest) or self._managed.get(digest)

    def apps(self) -> set[str]:
        """Every app that has a key."""
        return set(self._configured.values()) | set(self._managed.values())

    def budget(self, app: str) -> Budget:
        """The app's share: the apps' budget split by weight (1 unless APP_SHARES says)
        among the apps that have a key."""
        weight = self._weights.get(app, 1)
        share = self._budget * weight // max(self._total, weight)
        return Budget(max(1, share), self._window)

    def _weight_of(self, apps: set[str]) -> int:
        return sum(self._weights.get(name, 1) for name in apps)
