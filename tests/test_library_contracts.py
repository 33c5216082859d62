"""What the service relies on inside dramatiq, beyond its documented API, checked against
the installed release (the locked one in `scripts/test`, the newest in range in
`scripts/test --latest`). Each of these is used by one module only, which says why:

- ``service/messages.py`` writes dramatiq's message format itself (one encoder call,
  without building ``dramatiq.Message``);
- ``service/store/queue.py`` enqueues into dramatiq's Redis layout from Lua scripts and
  transactions (a state change and its message in one write);
- ``workers/broker.py`` subclasses the Redis consumer, reads its acks set and calls its
  ``dispatch`` script's maintenance (dramatiq 2.2 loses messages under Redis faults).

A release that changes any of them fails here first.
"""

from __future__ import annotations

import inspect
import time
from typing import Any

import dramatiq
import redis
from dramatiq.brokers import redis as dramatiq_redis

from service import messages
from service.messages import SessionRef
from service.store import Queue
from workers.broker import GuardedConsumer, PromptRedisBroker


def test_our_encoding_is_dramatiqs_message_format() -> None:
    """A message we encode decodes with dramatiq into the same fields, and dramatiq's
    own encoding of it is the same JSON object."""
    outgoing = messages.CREATE_SESSION.message(SessionRef("ses_1"), request_id="r", app="a")
    decoded = dramatiq.Message.decode(outgoing.payload)
    assert decoded.queue_name == messages.SESSIONS_QUEUE
    assert decoded.actor_name == messages.CREATE_SESSION.name
    assert decoded.args == ("ses_1",)
    assert decoded.options == {
        "request_id": "r",
        "app": "a",
        "redis_message_id": decoded.message_id,
    }
    assert dramatiq.Message.decode(decoded.encode()) == decoded


def test_what_the_store_enqueues_a_dramatiq_broker_delivers(
    redis_client: redis.Redis, redis_url: str
) -> None:
    """Written into dramatiq's Redis layout by the store, a message is consumed by a
    plain dramatiq Redis broker."""
    outgoing = messages.CREATE_SESSION.message(SessionRef("ses_2"))
    Queue(redis_client).enqueue(outgoing)
    broker = dramatiq_redis.RedisBroker(url=redis_url)  # type: ignore[no-untyped-call]
    broker.declare_queue(messages.SESSIONS_QUEUE)
    consumer = broker.consume(messages.SESSIONS_QUEUE, prefetch=1, timeout=100)
    try:
        received = _next_message(consumer)
        assert received.message_id == outgoing.message_id
        assert received.args == ("ses_2",)
        consumer.ack(received)
    finally:
        consumer.close()
        broker.close()


def test_the_consumer_and_dispatch_parts_the_broker_uses(redis_url: str) -> None:
    """The Redis consumer class, its batch cache, the acks set's name and the dispatch
    script's arguments are where workers/broker.py expects them."""
    assert issubclass(GuardedConsumer, dramatiq_redis._RedisConsumer)
    parameters = list(inspect.signature(dramatiq_redis._RedisConsumer.__init__).parameters)
    assert parameters == ["self", "broker", "queue_name", "prefetch", "timeout"]
    broker = PromptRedisBroker(url=redis_url)
    try:
        assert "dispatch" in broker.scripts
        assert isinstance(broker._max_unpack_size(), int)  # type: ignore[no-untyped-call]
        broker.declare_queue("contract")
        broker.client.rpush("dramatiq:contract", "id-1")
        broker.client.hset("dramatiq:contract.msgs", "id-1", b"{}")
        fetched = broker.do_fetch("contract", 1)
        assert fetched == [b"{}"]
        acks = f"{broker.namespace}:__acks__.{broker.broker_id}.contract"
        assert broker.client.smembers(acks) == {b"id-1"}
        consumer: Any = broker.consume("contract", prefetch=1, timeout=100)
        assert consumer.message_cache == []
        consumer.close()
    finally:
        broker.close()


def _next_message(consumer: Any) -> dramatiq.broker.MessageProxy:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        message = next(consumer)
        if message is not None:
            return message  # type: ignore[no-any-return]
    raise AssertionError("no message within 10 s")
