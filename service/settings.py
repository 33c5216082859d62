"""Configuration, read once from the environment into one immutable object.

Only this module reads the environment. A missing or malformed variable raises
:class:`~service.errors.ConfigurationError` naming it; secrets never appear in ``repr``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar
from urllib.parse import urlsplit

from service import redis_clients
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


# An app's name: what logs, timelines and `masking apps` show, never its key.
APP_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
# The app that owns a key given without a name (API_KEYS from before apps existed).
DEFAULT_APP = "default"
# Keys one app may hold at once: the old and the new, while a key is rotated.
MAX_KEYS_PER_APP = 2


@dataclass(frozen=True)
class AppKey:
    """One configured API key and the app it belongs to."""

    app: str
    key: Secret


@dataclass(frozen=True)
class S3Location:
    """Where recordings go in object storage, and how to reach it. Credentials left unset
    are found by boto3's default chain (instance or pod role, shared config)."""

    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: Secret | None = None
    session_token: Secret | None = None


@dataclass(frozen=True)
class Settings:
    redis_url: str
    vts_auth_id: str
    vts_auth_token: Secret
    public_base_url: str
    api_keys: tuple[AppKey, ...]
    vts_base_url: str = "https://api.vtscom.net"
    webhook_signature: WebhookSignature = "enforce"
    vts_auth_token_previous: Secret | None = None
    recordings_dir: Path = Path("recordings")
    recordings_s3: S3Location | None = None
    session_retention: int = 30 * 24 * 3600
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
    reconcile_settle: float = 30.0
    app_shares: tuple[tuple[str, int], ...] = ()
    vts_app_budget: int | None = None
    session_update_interval: float = 1.0
    apps_refresh: float = 2.0
    metrics_port: int = 9191
    worker_shutdown_timeout: float = 25.0
    metrics_host: str = "127.0.0.1"
    recording_hosts: tuple[str, ...] = ()
    egress_allow_http: bool = False
    egress_allow_private: bool = False
    recording_max_bytes: int = 200 * 1024 * 1024
    recording_timeout: float = 30.0
    # Seconds before each retry of an app notification (about 27 h in all), jitter added.
    notification_retry_schedule: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)
    storage_retry_for: int = 3 * 3600
    # Replicas that must hold a write before it is acknowledged (see redis_clients).
    redis_min_replicas_acked: int = redis_clients.Durability.replicas
    redis_replica_ack_timeout: float = redis_clients.Durability.timeout
    # Live sessions (pending, active, in progress) one app may hold; 0: no cap.
    app_max_live_sessions: int = 1000
    web_max_connections: int = 1000
    web_max_header_bytes: int = 16 * 1024
    web_keepalive_timeout: float = 5.0
    web_header_timeout: float = 10.0
    admin_port: int = 8001
    # Seconds an endpoint may fail every attempt before it is disabled (5 days).
    notification_disable_after: float = 5 * 24 * 3600
    # The part of VTS_RATE_LIMIT reconciliation may spend (the rest is the apps').
    reconcile_rate_share: float = 0.2

    @property
    def durability(self) -> redis_clients.Durability:
        return redis_clients.Durability(
            self.redis_min_replicas_acked, self.redis_replica_ack_timeout
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read every variable; raise ConfigurationError naming the first bad one."""
        env = _Env(os.environ if environ is None else environ)
        redis_url = _redis_location(env)
        return cls(
            redis_url=redis_url,
            vts_auth_id=env.required("VTS_AUTH_ID", _nonempty),
            vts_auth_token=Secret(env.required("VTS_AUTH_TOKEN", _nonempty)),
            public_base_url=env.required("PUBLIC_BASE_URL", _http_url).rstrip("/"),
            api_keys=env.required("API_KEYS", _api_keys),
            vts_base_url=env.optional("VTS_BASE_URL", _http_url, cls.vts_base_url).rstrip("/"),
            webhook_signature=_signature_for(env),
            vts_auth_token_previous=env.optional("VTS_AUTH_TOKEN_PREVIOUS", Secret, None),
            recordings_dir=env.optional("RECORDINGS_DIR", Path, cls.recordings_dir),
            recordings_s3=_s3_location(env),
            session_retention=env.optional(
                "SESSION_RETENTION", _positive_int, cls.session_retention
            ),
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
            reconcile_settle=env.optional(
                "RECONCILE_SETTLE", _positive_float, cls.reconcile_settle
            ),
            app_shares=env.optional("APP_SHARES", _app_shares, cls.app_shares),
            vts_app_budget=env.optional("VTS_APP_BUDGET", _positive_int, None),
            session_update_interval=env.optional(
                "SESSION_UPDATE_INTERVAL", _positive_float, cls.session_update_interval
            ),
            apps_refresh=env.optional("APPS_REFRESH", _positive_float, cls.apps_refresh),
            metrics_port=env.optional("METRICS_PORT", _port, cls.metrics_port),
            worker_shutdown_timeout=env.optional(
                "WORKER_SHUTDOWN_TIMEOUT", _positive_float, cls.worker_shutdown_timeout
            ),
            metrics_host=env.optional("METRICS_HOST", _address, cls.metrics_host),
            recording_hosts=env.optional("RECORDING_HOSTS", _hostnames, cls.recording_hosts),
            egress_allow_http=env.optional("EGRESS_ALLOW_HTTP", _bool, False),
            egress_allow_private=env.optional("EGRESS_ALLOW_PRIVATE", _bool, False),
            recording_max_bytes=env.optional(
                "RECORDING_MAX_BYTES", _positive_int, cls.recording_max_bytes
            ),
            recording_timeout=env.optional(
                "RECORDING_TIMEOUT", _positive_float, cls.recording_timeout
            ),
            notification_retry_schedule=env.optional(
                "NOTIFICATION_RETRY_SCHEDULE", _delays, cls.notification_retry_schedule
            ),
            storage_retry_for=env.optional(
                "STORAGE_RETRY_FOR", _positive_int, cls.storage_retry_for
            ),
            redis_min_replicas_acked=env.optional(
                "REDIS_MIN_REPLICAS_ACKED", _non_negative_int, _replicas_by_default(redis_url)
            ),
            redis_replica_ack_timeout=env.optional(
                "REDIS_REPLICA_ACK_TIMEOUT", _positive_float, cls.redis_replica_ack_timeout
            ),
            app_max_live_sessions=env.optional(
                "APP_MAX_LIVE_SESSIONS", _non_negative_int, cls.app_max_live_sessions
            ),
            web_max_connections=env.optional(
                "WEB_MAX_CONNECTIONS", _positive_int, cls.web_max_connections
            ),
            web_max_header_bytes=env.optional(
                "WEB_MAX_HEADER_BYTES", _header_bytes, cls.web_max_header_bytes
            ),
            web_keepalive_timeout=env.optional(
                "WEB_KEEPALIVE_TIMEOUT", _positive_float, cls.web_keepalive_timeout
            ),
            web_header_timeout=env.optional(
                "WEB_HEADER_TIMEOUT", _positive_float, cls.web_header_timeout
            ),
            admin_port=_admin_port(env),
            notification_disable_after=env.optional(
                "NOTIFICATION_DISABLE_AFTER", _positive_float, cls.notification_disable_after
            ),
            reconcile_rate_share=env.optional(
                "RECONCILE_RATE_SHARE", _share, cls.reconcile_rate_share
            ),
        )


def _admin_port(env: _Env) -> int:
    """ADMIN_PORT: the internal endpoints' port, never the public one (they would be
    public again)."""
    admin = env.optional("ADMIN_PORT", _port, Settings.admin_port)
    if admin == env.optional("PORT", _port, Settings.port):
        raise ConfigurationError("ADMIN_PORT", f"must differ from PORT (both are {admin})")
    return admin


def _header_bytes(raw: str) -> int:
    size = _int(raw)
    # Below 1 KiB ordinary requests (an API key, a traceparent, a proxy's
    # X-Forwarded-*) would be refused.
    if size < 1024:
        raise ValueError("must be at least 1024 (bytes)")
    return size


def _s3_location(env: _Env) -> S3Location | None:
    """``RECORDINGS_STORAGE=s3://bucket/prefix`` and the standard ``AWS_*`` variables."""
    bucket, prefix = env.optional("RECORDINGS_STORAGE", _s3_url, ("", ""))
    if not bucket:
        return None
    secret = env.optional("AWS_SECRET_ACCESS_KEY", Secret, None)
    token = env.optional("AWS_SESSION_TOKEN", Secret, None)
    return S3Location(
        bucket=bucket,
        prefix=prefix,
        endpoint_url=env.optional("AWS_ENDPOINT_URL", _http_url, None),
        region=env.optional("AWS_REGION", _nonempty, None)
        or env.optional("AWS_DEFAULT_REGION", _nonempty, None),
        access_key_id=env.optional("AWS_ACCESS_KEY_ID", _nonempty, None),
        secret_access_key=secret,
        session_token=token,
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
    scheme = urlsplit(raw).scheme
    if scheme == redis_clients.SENTINEL_SCHEME:
        redis_clients.sentinel_address(raw)
        return raw
    if scheme not in {"redis", "rediss", "unix"}:
        raise ValueError("must be a redis://, rediss://, unix:// or redis+sentinel:// URL")
    return raw


_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def _s3_url(raw: str) -> tuple[str, str]:
    parts = urlsplit(raw)
    if parts.scheme != "s3" or not _BUCKET.fullmatch(parts.netloc) or parts.query:
        raise ValueError("must be s3://bucket or s3://bucket/prefix")
    return parts.netloc, parts.path.strip("/")


def _redis_location(env: _Env) -> str:
    """REDIS_URL, or the Sentinels of REDIS_SENTINELS and REDIS_SENTINEL_MASTER."""
    master = env.optional("REDIS_SENTINEL_MASTER", _nonempty, "")
    sentinels = env.optional("REDIS_SENTINELS", _nonempty, "")
    if master or sentinels:
        if not sentinels:
            raise ConfigurationError("REDIS_SENTINELS", "is required with REDIS_SENTINEL_MASTER")
        try:
            return redis_clients.sentinels_url(sentinels, master)
        except ValueError as exc:
            raise ConfigurationError("REDIS_SENTINELS", str(exc)) from None
    return env.required("REDIS_URL", _redis_url)


def _http_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise ValueError("must be an absolute http:// or https:// URL")
    return raw


def _api_keys(raw: str) -> tuple[AppKey, ...]:
    """``app:key`` pairs; an entry without ``:`` is a key of the app ``default``. A key
    belongs to one app: listing it twice is an error, never a silent last-one-wins."""
    entries = [entry.strip() for entry in raw.split(",") if entry.strip()]
    if not entries:
        raise ValueError("must list at least one app:key pair")
    pairs = [_app_key(entry) for entry in entries]
    if len({pair.key for pair in pairs}) < len(pairs):
        raise ValueError("a key is listed more than once (each key belongs to one app)")
    per_app = [pair.app for pair in pairs]
    if any(per_app.count(name) > MAX_KEYS_PER_APP for name in per_app):
        raise ValueError(
            f"an app may have at most {MAX_KEYS_PER_APP} keys (the old and the new, for rotation)"
        )
    return tuple(pairs)


def _app_key(entry: str) -> AppKey:
    # Whatever precedes the first ':' is meant as an app name: one that is not valid (such
    # as 'Rides') is refused rather than read as part of a key of the app 'default'.
    name, colon, key = entry.partition(":")
    if not colon:
        name, key = DEFAULT_APP, entry
    elif not APP_NAME.fullmatch(name):
        raise ValueError(
            "an app name (before ':') is 1 to 32 characters: lower-case letters, digits, "
            "'-' and '_', starting with a letter or digit"
        )
    if len(key) < 16:
        raise ValueError("every key must be at least 16 characters long")
    return AppKey(name, Secret(key))


def _app_shares(raw: str) -> tuple[tuple[str, int], ...]:
    """``app:weight`` pairs, e.g. ``rides:2,food:1``; apps not listed weigh 1."""
    shares = []
    for entry in (e.strip() for e in raw.split(",") if e.strip()):
        name, _, weight = entry.partition(":")
        if not APP_NAME.fullmatch(name) or not weight.isdigit() or int(weight) < 1:
            raise ValueError("must be comma-separated app:weight pairs, weights 1 or more")
        shares.append((name, int(weight)))
    return tuple(shares)


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


def _non_negative_int(raw: str) -> int:
    value = _int(raw)
    if value < 0:
        raise ValueError("must be a whole number, 0 or more")
    return value


def _positive_int(raw: str) -> int:
    value = _int(raw)
    if value <= 0:
        raise ValueError("must be a positive whole number")
    return value


def _replicas_by_default(redis_url: str) -> int:
    """A Redis behind Sentinel has a replica to fail over to: a write is acknowledged once
    it holds it. A plain REDIS_URL may have none."""
    return 1 if redis_url.startswith(redis_clients.SENTINEL_SCHEME + "://") else 0


def _positive_float(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError("must be a number") from None
    if not value > 0:
        raise ValueError("must be a positive number")
    return value


def _share(raw: str) -> float:
    """A fraction above 0 and at most 1."""
    value = _positive_float(raw)
    if value > 1:
        raise ValueError("must be a fraction above 0 and at most 1, e.g. 0.2")
    return value


def _delays(raw: str) -> tuple[float, ...]:
    """Comma-separated positive seconds, e.g. ``5,300,1800``."""
    try:
        return tuple(_positive_float(item.strip()) for item in raw.split(","))
    except ValueError:
        raise ValueError("must be comma-separated positive seconds, e.g. 5,300,1800") from None


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


def redis_url_from_env(environ: Mapping[str, str] | None = None) -> str:
    """Only where Redis is (``REDIS_URL``, or its Sentinels): what the operator commands
    need (they never talk to VTS)."""
    return _redis_location(_Env(os.environ if environ is None else environ))


def environment() -> dict[str, str]:
    """A copy of the process environment, for commands that start other processes."""
    return dict(os.environ)
