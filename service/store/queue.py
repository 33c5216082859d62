"""Queue access: dramatiq's own Redis layout, for the messages the store enqueues without
a broker (in the same script as the write they follow, or in one transaction) and for
the queues' depths; ``deadletters`` reads and replays what dramatiq gave up.

dramatiq's Redis broker keeps queue ``q`` as a list ``dramatiq:q`` of message ids and a
hash ``dramatiq:q.msgs`` of id -> message; enqueueing is those two writes. Dead letters
are ``dramatiq:q.XQ`` (a sorted set dramatiq trims) and ``dramatiq:q.XQ.msgs``.
"""

from __future__ import annotations

import json
import time

import redis

from service.messages import Outgoing

DRAMATIQ_NAMESPACE = "dramatiq"


class QueueKeys:
    @staticmethod
    def queue(queue_name: str) -> str:
        return f"{DRAMATIQ_NAMESPACE}:{queue_name}"

    @staticmethod
    def queue_messages(queue_name: str) -> str:
        return f"{DRAMATIQ_NAMESPACE}:{queue_name}.msgs"

    @staticmethod
    def dead_letters(queue_name: str) -> str:
        return f"{DRAMATIQ_NAMESPACE}:{queue_name}.XQ"

    @staticmethod
    def dead_letter_messages(queue_name: str) -> str:
        return f"{DRAMATIQ_NAMESPACE}:{queue_name}.XQ.msgs"


def depth(client: redis.Redis, queue_name: str) -> int:
    """How many messages wait in the queue."""
    return int(client.llen(QueueKeys.queue(queue_name)))


def oldest_age(client: redis.Redis, queue_name: str) -> float:
    """Seconds since the oldest waiting message was enqueued; 0 when none waits."""
    oldest = client.lindex(QueueKeys.queue(queue_name), 0)
    if oldest is None:
        return 0.0
    raw = client.hget(QueueKeys.queue_messages(queue_name), oldest)
    if raw is None:
        return 0.0
    enqueued_ms = float(json.loads(raw).get("message_timestamp", time.time() * 1000))
    return max(0.0, time.time() - enqueued_ms / 1000)


class Queue:
    """Enqueueing without a broker."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def enqueue(self, *messages: Outgoing) -> None:
        """Queue messages from a worker or a tool, in one transaction (for each, the two
        writes dramatiq's enqueue makes)."""
        with self.client.pipeline(transaction=True) as pipe:
            for message in messages:
                queue = message.queue_name
                pipe.hset(
                    QueueKeys.queue_messages(queue), message.redis_message_id, message.payload
                )
                pipe.rpush(QueueKeys.queue(queue), message.redis_message_id)
            pipe.execute()
