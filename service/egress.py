"""Where the service may send requests: one policy for everything it fetches or posts.

URLs the service requests come from outside (a recording URL in a callback, an app's
``callback_url``), so they are treated as hostile (SSRF). :class:`EgressPolicy` allows
https only (plain http only where set up for development), no credentials in the URL, and
public addresses only: never loopback, private, link-local, multicast, reserved or
unspecified ones. The addresses are checked at connect time on the very address connected
to (:class:`GuardedTransport`), so DNS rebinding between a check and the connection cannot
reach a private address; proxies from the environment are never used (a proxy would
connect for us). Redirects are not followed by the clients built here.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol

import httpcore2
import httpx2

from service.errors import ServiceError
from service.settings import Settings

Resolver = Callable[[str, int], list[str]]


class EgressRefused(ServiceError):
    """The destination is not allowed; ``reason`` says why (never the whole URL)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"destination refused: {reason}")
        self.reason = reason


class EgressUnresolved(ServiceError):
    """The destination's host name does not resolve now; it may later."""


def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (OSError when it does not)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


# NAT64's well-known prefix (RFC 6052): the last 32 bits are the IPv4 address reached.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def is_public(address: str) -> bool:
    """False for loopback, private, link-local, multicast, reserved, unspecified..., and
    for an IPv6 address that carries such an IPv4 one (IPv4-mapped, 6to4, NAT64): a
    gateway would deliver it there."""
    ip = ipaddress.ip_address(address.partition("%")[0])
    if isinstance(ip, ipaddress.IPv6Address):
        ip = _carried(ip) or ip
    special = ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
    return ip.is_global and not (special or ip.is_reserved or ip.is_unspecified)


def _carried(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.ipv4_mapped or ip.sixtofour


def default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


def origin(url: httpx2.URL) -> str:
    """``scheme://host:port``, the port always written: what credentials are bound to."""
    return f"{url.scheme}://{url.host}:{url.port or default_port(url.scheme)}"


def _is_text_url(url: str) -> bool:
    # Printable ASCII only: no control characters, spaces or raw Unicode (percent-encode).
    return url.isascii() and url.isprintable() and " " not in url


@dataclass(frozen=True)
class EgressPolicy:
    """Which destinations may be requested.

    ``hosts``: exact host names allowed, or None for any (public) host. ``allow_http`` and
    ``allow_private`` exist for development beside the sandbox on loopback; never set
    them in production.
    """

    hosts: frozenset[str] | None = None
    allow_http: bool = False
    allow_private: bool = False
    resolver: Resolver = field(default=resolve, compare=False)

    @classmethod
    def from_settings(cls, settings: Settings, hosts: frozenset[str] | None = None) -> EgressPolicy:
        return cls(hosts, settings.egress_allow_http, settings.egress_allow_private)

    def refusal(self, url: str) -> str | None:
        """Why ``url`` can never be requested, from its text alone (no DNS); else None.

        For validation: what this finds is refused at once, what it cannot see (a name
        that resolves to a private address) is refused when the request is made.
        """
        return _refusal(self, url)

    def _refusal(self, url: str) -> str | None:
        if not _is_text_url(url):
            return "must be printable ASCII, without spaces or control characters"
        try:
            parsed = httpx2.URL(url)
        except httpx2.InvalidURL:
            return "is not a valid URL"
        try:
            self._check_text(parsed)
        except EgressRefused as exc:
            return exc.reason
        return None

    def check(self, url: httpx2.URL) -> None:
        """Raise EgressRefused unless ``url`` may be requested (its host is resolved)."""
        self._check_text(url)
        self.addresses(url.host, url.port or default_port(url.scheme))

    def addresses(self, host: str, port: int) -> list[str]:
        """The addresses of an allowed ``host``, all permitted, to connect to.

        Raises EgressRefused (host or an address not allowed) or EgressUnresolved.
        """
        if self.hosts is not None and host not in self.hosts:
            raise EgressRefused("host not allowed")
        try:
            found = self.resolver(host, port)
        except OSError as exc:
            raise EgressUnresolved("the host name did not resolve") from exc
        if not found or not (self.allow_private or all(map(is_public, found))):
            raise EgressRefused("host address not allowed")
        return found

    def _check_text(self, url: httpx2.URL) -> None:
        if url.scheme != "https" and not (url.scheme == "http" and self.allow_http):
            raise EgressRefused("scheme not allowed" + ("" if self.allow_http else ": https only"))
        if url.userinfo:
            raise EgressRefused("credentials in the URL")
        if not url.host:
            raise EgressRefused("no host")
        if self.hosts is not None and url.host not in self.hosts:
            raise EgressRefused("host not allowed")
        if not self.allow_private and _private_literal(url.host):
            raise EgressRefused("host address not allowed")


# An app gives the same callback URL with every session: parse each once. A pure function
# of the policy's text rules and the URL (no DNS), bounded in size.
@lru_cache(maxsize=1024)
def _refusal(policy: EgressPolicy, url: str) -> str | None:
    return policy._refusal(url)


def _private_literal(host: str) -> bool:
    """Whether ``host`` names loopback or a private address by its text alone: localhost
    (with a final dot too), an IP address, or an IPv4 one in a form the resolver takes
    (``127.1``, ``0x7f000001``, ``2130706433``)."""
    name = host.strip("[]").rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True  # RFC 6761: always loopback
    try:
        return not is_public(name)
    except ValueError:
        pass
    try:
        packed = socket.inet_aton(name)
    except OSError:
        return False  # a name, not an address: checked when it is resolved
    return not is_public(socket.inet_ntoa(packed))


class Destinations(Protocol):
    def addresses(self, host: str, port: int) -> list[str]: ...


class _GuardedBackend(httpcore2.NetworkBackend):
    """Connects only to addresses the policy permits, resolved and checked right here."""

    def __init__(self, policy: Destinations) -> None:
        self._policy = policy
        self._backend = httpcore2.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.NetworkStream:
        error: Exception = httpcore2.ConnectError("no address to connect to")
        for address in self._policy.addresses(host, port):
            try:
                return self._backend.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except (httpcore2.ConnectError, httpcore2.ConnectTimeout) as exc:
                error = exc
        raise error

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class GuardedTransport(httpx2.HTTPTransport):
    """An HTTPTransport pinned to the policy's permitted addresses (TLS still checks the
    certificate against the host name). No proxies: a proxy would connect for us."""

    def __init__(self, policy: Destinations, limits: httpx2.Limits | None = None) -> None:
        limits = limits or httpx2.Limits(max_connections=20, max_keepalive_connections=5)
        super().__init__(trust_env=False, limits=limits)
        # HTTPTransport takes no network backend, so its pool is replaced by one that has.
        self._pool = httpcore2.ConnectionPool(
            ssl_context=httpx2.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_GuardedBackend(policy),
        )


def build_client(policy: Destinations, *, timeout: float) -> httpx2.Client:
    """A client for ``policy``: guarded connections, no redirects, no environment proxies."""
    return httpx2.Client(
        transport=GuardedTransport(policy),
        trust_env=False,
        follow_redirects=False,
        timeout=httpx2.Timeout(timeout, connect=min(timeout, 10.0)),
    )
