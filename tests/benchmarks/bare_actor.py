"""The ceiling ``bench_events`` compares the events worker against: a dramatiq actor that
makes three Redis commands in one pipeline per message, on dramatiq's Redis broker with
its default middleware and the service's client, namespace and heartbeat settings.

``REDIS_URL=... dramatiq tests.benchmarks.bare_actor:setup tests.benchmarks.bare_actor``

The actor is declared by ``setup``, on the broker it builds: declared at import time it
would bind to dramatiq's default broker, since the CLI imports this module before it
calls ``setup``.
"""

from __future__ import annotations

import os

import dramatiq
import msgspec
import redis
from dramatiq.brokers.redis import RedisBroker

from service.messages import Job, RetryPolicy
from service.store import DRAMATIQ_NAMESPACE
from workers.broker import HEARTBEAT_TIMEOUT_MS


class Item(msgspec.Struct, array_like=True, frozen=True):
    item_id: str


JOB = Job("bench_bare_apply", "bench-bare", Item, RetryPolicy())
SEEN_KEY = "bench:bare-actor:seen"
LOG_KEY = "bench:bare-actor:log"
STATS_KEY = "bench:bare-actor:stats"


def setup() -> RedisBroker:
    """The dramatiq entry point: the broker, with the actor declared on it."""
    client = redis.Redis.from_url(
        os.environ["REDIS_URL"],
        health_check_interval=30,
        socket_timeout=10,
        socket_connect_timeout=5,
    )
    broker = RedisBroker(  # type: ignore[no-untyped-call]
        client=client, namespace=DRAMATIQ_NAMESPACE, heartbeat_timeout=HEARTBEAT_TIMEOUT_MS
    )
    dramatiq.set_broker(broker)

    def apply(item_id: str) -> None:
        with client.pipeline(transaction=False) as pipe:
            pipe.sadd(SEEN_KEY, item_id)
            pipe.rpush(LOG_KEY, item_id)
            pipe.hincrby(STATS_KEY, "applied", 1)
            pipe.execute()

    dramatiq.actor(actor_name=JOB.name, queue_name=JOB.queue, broker=broker)(apply)
    return broker
