"""Redis clients for every process, from one URL: ``redis://``, ``rediss://``, ``unix://``,
or ``redis+sentinel://[:password@]host:port,host:port/master[/db]`` for a Redis behind
Sentinel (the client asks the Sentinels for the current primary on every new connection,
so after a failover it reconnects to the promoted replica)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel

SENTINEL_SCHEME = "redis+sentinel"


@dataclass(frozen=True)
class SentinelAddress:
    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    password: str | None = None


def sentinel_address(url: str) -> SentinelAddress:
    """Parse a ``redis+sentinel://`` URL; raise ValueError naming what is wrong."""
    parts = urlsplit(url)
    if parts.scheme != SENTINEL_SCHEME:
        raise ValueError(f"must be a {SENTINEL_SCHEME}:// URL")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    password = unquote(userinfo.partition(":")[2]) or None if userinfo else None
    sentinels = tuple(_host_port(item) for item in hosts.split(",") if item)
    path = [segment for segment in parts.path.split("/") if segment]
    if not sentinels or not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError("must be redis+sentinel://host:port[,host:port...]/master[/db]")
    return SentinelAddress(sentinels, path[0], int(path[1]) if len(path) == 2 else 0, password)


def sentinels_url(sentinels: str, master: str) -> str:
    """The ``redis+sentinel://`` URL for REDIS_SENTINELS (``host:port,...``) and a master."""
    hosts = [item.strip() for item in sentinels.split(",") if item.strip()]
    for item in hosts:
        _host_port(item)
    if not hosts or not master:
        raise ValueError("must list host:port pairs, with REDIS_SENTINEL_MASTER set")
    return f"{SENTINEL_SCHEME}://{','.join(hosts)}/{master}"


def _host_port(item: str) -> tuple[str, int]:
    host, _, port = item.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{item!r} is not host:port")
    return host, int(port)


def connect(url: str, **options: Any) -> redis.Redis:
    """A synchronous client (``options`` as for ``redis.Redis``)."""
    if urlsplit(url).scheme != SENTINEL_SCHEME:
        return redis.Redis.from_url(url, **options)
    address = sentinel_address(url)
    sentinel = redis.sentinel.Sentinel(
        address.sentinels, socket_timeout=options.get("socket_timeout", 2)
    )
    client: redis.Redis = sentinel.master_for(
        address.master, db=address.db, password=address.password, **options
    )
    return client


def connect_async(url: str, **options: Any) -> redis.asyncio.Redis:
    """An asyncio client (``options`` as for ``redis.asyncio.Redis``)."""
    if urlsplit(url).scheme != SENTINEL_SCHEME:
        return redis.asyncio.Redis.from_url(url, **options)
    address = sentinel_address(url)
    sentinel = redis.asyncio.sentinel.Sentinel(
        address.sentinels, socket_timeout=options.get("socket_timeout", 2)
    )
    client: redis.asyncio.Redis = sentinel.master_for(
        address.master, db=address.db, password=address.password, **options
    )
    return client


def cancelling() -> bool:
    """Whether the running task has been asked to stop. A cancellation that lands as
    redis-py's read timeout fires can reach the caller as redis-py's own TimeoutError: a
    loop that retries on Redis errors asks this first, so that it stops instead of
    retrying forever (a web waiting for it at shutdown never exited)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
