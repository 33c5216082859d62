"""Configuration, read once from the environment into one immutable object.

Only this module reads the environment. A missing or malformed variable raises
:class:`~service.errors.ConfigurationError` naming it; secrets never appear in ``repr``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar
from urllib.parse import urlsplit

from service.errors import ConfigurationError
from service.phones import DEFAULT_NUMBER_TYPES, TYPE_NAMES

T = TypeVar("T")

WebhookSignature = Literal["enforce", "off"]
LogFormat = Literal["json", "console"]


class Secret:
    """A string that keeps itself out of logs, reprs and tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class Settings:
    redis_url: str
    vts_auth_id: str
    vts_auth_token: Secret
    public_base_url: str
    api_keys: tuple[Secret, ...]
    vts_base_url: str = "https://api.vtscom.net"
    webhook_signature: WebhookSignature = "enforce"
    vts_auth_token_previous: Secret | None = None
    recordings_dir: Path = Path("recordings")
    log_format: LogFormat = "json"
    log_level: str = "INFO"
    port: int = 8000
    vts_rate_limit: int = 300
    vts_rate_window: float = 5.0
    vts_timeout: float = 10.0
    vts_connect_timeout: float = 3.0
    phone_default_region: str | None = None
    allowed_number_types: frozenset[str] = DEFAULT_NUMBER_TYPES
    max_body_bytes: int = 64 * 1024
    idempotency_ttl: int = 24 * 3600
    create_max_retries: int = 20
    reconcile_interval: float = 300.0
    notification_secret: Secret | None = None
    metrics_port: int = 9191
    metrics_host: str = "127.0.0.1"
    recording_hosts: tuple[str, ...] = ()
    egress_allow_http: bool = False
    egress_allow_private: bool = False
    recording_max_bytes: int = 200 * 1024 * 1024
    recording_timeout: float = 30.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read every variable; raise ConfigurationError naming the first bad one."""
        env = _Env(os.environ if environ is None else environ)
        return cls(
            redis_url=env.required("REDIS_URL", _redis_url),
            vts_auth_id=env.required("VTS_AUTH_ID", _nonempty),
            vts_auth_token=Secret(env.required("VTS_AUTH_TOKEN", _nonempty)),
            public_base_url=env.required("PUBLIC_BASE_URL", _http_url).rstrip("/"),
            api_keys=env.required("API_KEYS", _api_keys),
            vts_base_url=env.optional("VTS_BASE_URL", _http_url, cls.vts_base_url).rstrip("/"),
            webhook_signature=_signature_for(env),
            vts_auth_token_previous=env.optional("VTS_AUTH_TOKEN_PREVIOUS", Secret, None),
            recordings_dir=env.optional("RECORDINGS_DIR", Path, cls.recordings_dir),
            log_format=env.optional("LOG_FORMAT", _log_format, _default_log_format()),
            log_level=env.optional("LOG_LEVEL", _log_level, cls.log_level),
            port=env.optional("PORT", _port, cls.port),
            vts_rate_limit=env.optional("VTS_RATE_LIMIT", _positive_int, cls.vts_rate_limit),
            vts_rate_window=env.optional("VTS_RATE_WINDOW", _positive_float, cls.vts_rate_window),
            vts_timeout=env.optional("VTS_TIMEOUT", _positive_float, cls.vts_timeout),
            vts_connect_timeout=env.optional(
                "VTS_CONNECT_TIMEOUT", _positive_float, cls.vts_connect_timeout
            ),
            phone_default_region=env.optional("PHONE_DEFAULT_REGION", _region, None),
            allowed_number_types=env.optional(
                "ALLOWED_NUMBER_TYPES", _number_types, cls.allowed_number_types
            ),
            create_max_retries=env.optional(
                "VTS_CREATE_MAX_RETRIES", _positive_int, cls.create_max_retries
            ),
            reconcile_interval=env.optional(
                "RECONCILE_INTERVAL", _positive_float, cls.reconcile_interval
            ),
            notification_secret=env.optional("NOTIFICATION_SECRET", _webhook_secret, None),
            metrics_port=env.optional("METRICS_PORT", _port, cls.metrics_port),
            metrics_host=env.optional("METRICS_HOST", _address, cls.metrics_host),
            recording_hosts=env.optional("RECORDING_HOSTS", _hostnames, cls.recording_hosts),
            # RECORDING_ALLOW_*: the names from before notifications shared the policy.
            egress_allow_http=env.optional(
                "EGRESS_ALLOW_HTTP", _bool, env.optional("RECORDING_ALLOW_HTTP", _bool, False)
            ),
            egress_allow_private=env.optional(
                "EGRESS_ALLOW_PRIVATE",
                _bool,
                env.optional("RECORDING_ALLOW_PRIVATE", _bool, False),
            ),
            recording_max_bytes=env.optional(
                "RECORDING_MAX_BYTES", _positive_int, cls.recording_max_bytes
            ),
            recording_timeout=env.optional(
                "RECORDING_TIMEOUT", _positive_float, cls.recording_timeout
            ),
        )


class _Env:
    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def required(self, name: str, parse: Callable[[str], T]) -> T:
        raw = self._environ.get(name, "").strip()
        if not raw:
            raise ConfigurationError(name, "is required but not set")
        return self._parse(name, raw, parse)

    def optional(self, name: str, parse: Callable[[str], T], default: T) -> T:
        raw = self._environ.get(name, "").strip()
        return self._parse(name, raw, parse) if raw else default

    @staticmethod
    def _parse(name: str, raw: str, parse: Callable[[str], T]) -> T:
        try:
            return parse(raw)
        except ValueError as exc:
            raise ConfigurationError(name, str(exc)) from None


def _nonempty(raw: str) -> str:
    return raw


def _redis_url(raw: str) -> str:
    if urlsplit(raw).scheme not in {"redis", "rediss", "unix"}:
        raise ValueError("must be a redis://, rediss:// or unix:// URL")
    return raw


def _http_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise ValueError("must be an absolute http:// or https:// URL")
    return raw


def _api_keys(raw: str) -> tuple[Secret, ...]:
    keys = [key.strip() for key in raw.split(",") if key.strip()]
    if not keys:
        raise ValueError("must list at least one key")
    if any(len(key) < 16 for key in keys):
        raise ValueError("every key must be at least 16 characters long")
    return tuple(Secret(key) for key in keys)


def _webhook_secret(raw: str) -> Secret:
    body = raw.removeprefix("whsec_")
    try:
        if len(base64.b64decode(body, validate=True)) < 24:
            raise ValueError
    except (binascii.Error, ValueError):
        raise ValueError("must be whsec_ followed by at least 24 bytes in base64") from None
    return Secret(raw)


def _signature_mode(raw: str) -> WebhookSignature:
    if raw == "log":
        raise ValueError(
            "log is no longer a mode: during a VTS token rotation, set VTS_AUTH_TOKEN_PREVIOUS"
        )
    if raw not in ("enforce", "off"):
        raise ValueError("must be enforce or off")
    return raw  # type: ignore[return-value]


def _signature_for(env: _Env) -> WebhookSignature:
    """``off`` only beside a VTS on loopback (the sandbox): unsigned callbacks would change
    state, so no deployment that talks to the real VTS may run without signatures."""
    mode: WebhookSignature = env.optional("WEBHOOK_SIGNATURE", _signature_mode, "enforce")
    vts_host = urlsplit(env.optional("VTS_BASE_URL", _http_url, Settings.vts_base_url)).hostname
    if mode == "off" and vts_host not in ("127.0.0.1", "localhost", "::1"):
        raise ConfigurationError(
            "WEBHOOK_SIGNATURE", "off is for development only, with VTS_BASE_URL on loopback"
        )
    return mode


def _log_format(raw: str) -> LogFormat:
    if raw not in ("json", "console"):
        raise ValueError("must be json or console")
    return raw  # type: ignore[return-value]


def _default_log_format() -> LogFormat:
    return "console" if sys.stderr.isatty() else "json"


def _log_level(raw: str) -> str:
    level = raw.upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return level


def _int(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError("must be a whole number") from None


def _port(raw: str) -> int:
    port = _int(raw)
    if not 0 < port < 65536:
        raise ValueError("must be a TCP port, 1 to 65535")
    return port


def _address(raw: str) -> str:
    """An IP address to listen on (``0.0.0.0`` or ``::`` for every interface)."""
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        raise ValueError("must be an IP address such as 127.0.0.1 or 0.0.0.0") from None


def _positive_int(raw: str) -> int:
    value = _int(raw)
    if value <= 0:
        raise ValueError("must be a positive whole number")
    return value


def _positive_float(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError("must be a number") from None
    if not value > 0:
        raise ValueError("must be a positive number")
    return value


def _region(raw: str) -> str:
    if len(raw) != 2 or not raw.isalpha():
        raise ValueError("must be a two-letter region code such as US or GB")
    return raw.upper()


def _number_types(raw: str) -> frozenset[str]:
    types = frozenset(name.strip().lower() for name in raw.split(",") if name.strip())
    unknown = sorted(types - TYPE_NAMES)
    if unknown or not types:
        raise ValueError(
            f"unknown number type {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(sorted(TYPE_NAMES))}"
        )
    return types


def _bool(raw: str) -> bool:
    value = raw.lower()
    if value not in {"true", "false", "1", "0", "yes", "no"}:
        raise ValueError("must be true or false")
    return value in {"true", "1", "yes"}


_HOSTNAME = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*")


def _hostnames(raw: str) -> tuple[str, ...]:
    """Comma-separated exact host names (no scheme, port or wildcard), lowercased."""
    hosts = tuple(host.strip().lower().rstrip(".") for host in raw.split(",") if host.strip())
    if not all(_HOSTNAME.fullmatch(host) for host in hosts):
        raise ValueError("must be comma-separated host names, such as media.vtscom.net")
    return hosts


def notification_secret(settings: Settings) -> str:
    """The Standard Webhooks secret for app notifications: ``NOTIFICATION_SECRET``, or one
    derived from the VTS token (stable across restarts; set your own to share with apps)."""
    if settings.notification_secret is not None:
        return settings.notification_secret.reveal()
    token = settings.vts_auth_token.reveal().encode()
    derived = hmac.new(token, b"app-notifications", hashlib.sha256).digest()
    return "whsec_" + base64.b64encode(derived).decode()


def environment() -> dict[str, str]:
    """A copy of the process environment, for commands that start other processes."""
    return dict(os.environ)
