"""Redis clients for every process, from one URL: ``redis://``, ``rediss://``, ``unix://``,
or ``redis+sentinel://[:password@]host:port,host:port/master[/db]`` for a Redis behind
Sentinel (the client asks the Sentinels for the current primary on every new connection;
``follow_master`` drops the pooled connections when the Sentinels announce a new one).

A write is acknowledged only once it has reached ``Durability.replicas`` replicas (``WAIT``,
see ``wait_for_replicas``; the workers wait through ``Replicas``, once per message):
replication is asynchronous, and a master demoted by a planned failover keeps taking
writes until Sentinel reconfigures it, then throws them away when it resyncs from the
promoted replica."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
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


class ReplicasBehind(redis.RedisError):
    """Fewer replicas than required confirmed a write in time: it may not survive a
    failover, so it is not acknowledged (the web answers 503, a worker retries)."""


# A write that touches no key, so that WAIT after it covers everything the master took
# before it, from any connection (an actor's writes over pooled connections, the write a
# replayed create found), not only this connection's own writes: WAIT waits for the
# offset of the connection's last write.
MARK = (b"PUBLISH", b"masking:replicated", b"")


@dataclass(frozen=True)
class Durability:
    """How many replicas (``replicas``) must hold a write, within ``timeout`` seconds,
    before it is acknowledged; 0 acknowledges what the master alone took."""

    replicas: int = 0
    timeout: float = 1.0

    def wait_command(self) -> tuple[bytes, int, int]:
        return b"WAIT", self.replicas, max(1, int(self.timeout * 1000))

    def check(self, acked: object) -> None:
        """Raise ReplicasBehind unless ``acked`` (WAIT's reply, or the error replied for
        it or for the mark) counts enough replicas."""
        if isinstance(acked, Exception):
            raise ReplicasBehind(f"WAIT failed: {acked}")
        if not isinstance(acked, int) or acked < self.replicas:
            raise ReplicasBehind(f"{acked} of {self.replicas} replicas confirmed the write")


def wait_for_replicas(client: redis.Redis, durability: Durability) -> None:
    """Return once every write the master took so far has reached ``durability.replicas``
    replicas; raise ReplicasBehind when it has not within the timeout, RedisError when
    Redis cannot be asked. One round trip."""
    if not durability.replicas:
        return
    with client.pipeline(transaction=False) as pipe:
        pipe.execute_command(*MARK)  # type: ignore[no-untyped-call]
        pipe.execute_command(*durability.wait_command())  # type: ignore[no-untyped-call]
        marked, acked = pipe.execute(raise_on_error=False)
    durability.check(marked if isinstance(marked, Exception) else acked)


@dataclass(frozen=True)
class Replicas:
    """The replicas ``client``'s writes must reach before the work that made them is
    acknowledged (``durability``)."""

    client: redis.Redis
    durability: Durability = Durability()

    def wait(self) -> None:
        """Return once everything written so far holds on the replicas ``durability``
        asks for; raise ReplicasBehind (a RedisError: the work is retried) otherwise."""
        wait_for_replicas(self.client, self.durability)


async def wait_for_replicas_async(client: redis.asyncio.Redis, durability: Durability) -> None:
    """``wait_for_replicas`` for an asyncio client."""
    if not durability.replicas:
        return
    async with client.pipeline(transaction=False) as pipe:
        pipe.execute_command(*MARK)
        pipe.execute_command(*durability.wait_command())
        marked, acked = await pipe.execute(raise_on_error=False)
    durability.check(marked if isinstance(marked, Exception) else acked)


SWITCH_CHANNEL = "+switch-master"


class MasterFollower:
    """One thread per Sentinel, listening for ``+switch-master`` of our master, calling
    ``on_switch`` once per new master address.

    redis-py asks the Sentinels for the master only when it opens a connection, so pooled
    connections to a master demoted by a planned failover stay in use (their writes taken,
    then lost) until that master refuses writes, seconds later: the connections are
    dropped as soon as the Sentinels switch instead. Sentinels that cannot be reached are
    tried again every second."""

    def __init__(self, address: SentinelAddress, on_switch: Callable[[], None]) -> None:
        self._master = address.master
        self._on_switch = on_switch
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._current = ""
        self._threads = [
            threading.Thread(target=self._listen, args=hp, name="sentinel-follower", daemon=True)
            for hp in address.sentinels
        ]

    def start(self) -> MasterFollower:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _listen(self, host: str, port: int) -> None:
        while not self._stop.is_set():
            client = redis.Redis(host, port, socket_timeout=5, socket_connect_timeout=2)
            try:
                with client.pubsub(ignore_subscribe_messages=True) as pubsub:
                    pubsub.subscribe(SWITCH_CHANNEL)
                    while not self._stop.is_set():
                        self._seen(pubsub.get_message(timeout=0.5))
            except (redis.RedisError, OSError):
                self._stop.wait(1.0)
            finally:
                client.close()

    def _seen(self, message: dict[str, Any] | None) -> None:
        if message is None:
            return
        data = message["data"]
        name, *addresses = (data.decode() if isinstance(data, bytes) else str(data)).split()
        if name != self._master or len(addresses) != 4:
            return
        new = " ".join(addresses[2:])
        with self._lock:
            if new == self._current:  # every Sentinel announces the same switch
                return
            self._current = new
        self._on_switch()


def follow_master(client: redis.Redis, url: str) -> MasterFollower | None:
    """For a Sentinel URL, a started follower dropping ``client``'s pooled connections
    whenever the master changes; None for a plain Redis URL."""
    if urlsplit(url).scheme != SENTINEL_SCHEME:
        return None
    return MasterFollower(sentinel_address(url), client.connection_pool.disconnect).start()


def follow_master_async(client: redis.asyncio.Redis, url: str) -> MasterFollower | None:
    """``follow_master`` for an asyncio client, made in its event loop (the pool is the
    loop's: the connections are dropped there). A batch then in flight fails as a
    connection error (503: Redis may have run it); the next goes to the new master."""
    if urlsplit(url).scheme != SENTINEL_SCHEME:
        return None
    loop = asyncio.get_running_loop()
    pool = client.connection_pool
    dropping: set[asyncio.Task[None]] = set()

    def drop() -> None:
        task = loop.create_task(pool.disconnect())
        dropping.add(task)
        task.add_done_callback(dropping.discard)

    def switched() -> None:
        loop.call_soon_threadsafe(drop)

    return MasterFollower(sentinel_address(url), switched).start()


def cancelling() -> bool:
    """Whether the running task has been asked to stop. A cancellation that lands as
    redis-py's read timeout fires can reach the caller as redis-py's own TimeoutError: a
    loop that retries on Redis errors asks this first, so that it stops instead of
    retrying forever (a web waiting for it at shutdown never exited)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
