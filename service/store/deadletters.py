"""Dead letters: the messages dramatiq gave up (its ``<queue>.XQ`` sorted set and
``.XQ.msgs`` hash, which it trims after its ``dead_message_ttl``) and, beside each, the
note of why it was given up, kept as long."""

from __future__ import annotations

import redis

from service.messages import Outgoing
from service.store import lua
from service.store.codec import decode_str
from service.store.names import PREFIX
from service.store.queue import QueueKeys

# dramatiq's dead_message_ttl (7 days, its default): how long a dead letter, and so its
# note, is kept.
DEAD_LETTER_NOTE_TTL = 7 * 24 * 3600


class DeadLetterKeys:
    @staticmethod
    def dead_letter_note(redis_id: str) -> str:
        return f"{PREFIX}dead-letter-error:{redis_id}"


def dead_letter_count(client: redis.Redis, queue_name: str) -> int:
    return int(client.zcard(QueueKeys.dead_letters(queue_name)))


class DeadLetters:
    """Reading, noting, discarding and replaying dead letters."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._replay_dead_letter = client.register_script(lua.source("replay_dead_letter.lua"))

    def dead_letters(self, queue: str) -> list[tuple[str, float, bytes]]:
        """The queue's dead letters: (redis message id, when it died (epoch s), message)."""
        entries: list[tuple[bytes, float]] = self.client.zrange(  # type: ignore[assignment]
            QueueKeys.dead_letters(queue), 0, -1, withscores=True
        )
        ids = [decode_str(member) for member, _ in entries]
        payloads: list[bytes | None] = (
            self.client.hmget(QueueKeys.dead_letter_messages(queue), ids) if ids else []  # type: ignore[assignment]
        )
        return [
            (redis_id, score / 1000, payload)
            for redis_id, (_, score), payload in zip(ids, entries, payloads, strict=True)
            if payload is not None
        ]

    def note_dead_letter(self, redis_id: str, error: str) -> None:
        """Why a message was given up (dramatiq's dead letter keeps no final error); kept
        as long as dramatiq keeps the dead letter."""
        self.client.set(DeadLetterKeys.dead_letter_note(redis_id), error, ex=DEAD_LETTER_NOTE_TTL)

    def dead_letter_notes(self, redis_ids: list[str]) -> list[str | None]:
        if not redis_ids:
            return []
        notes: list[bytes | None] = self.client.mget(  # type: ignore[assignment]
            [DeadLetterKeys.dead_letter_note(i) for i in redis_ids]
        )
        return [decode_str(n) if n is not None else None for n in notes]

    def discard_dead_letter(self, queue: str, redis_id: str) -> bool:
        """Drop a dead letter and its note, atomically; False if it was gone already."""
        with self.client.pipeline(transaction=True) as pipe:
            pipe.zrem(QueueKeys.dead_letters(queue), redis_id)
            pipe.hdel(QueueKeys.dead_letter_messages(queue), redis_id)
            pipe.delete(DeadLetterKeys.dead_letter_note(redis_id))
            removed, _, _ = pipe.execute()
        return bool(removed)

    def replay_dead_letter(self, queue: str, redis_id: str, message: Outgoing) -> bool:
        """Put ``message`` (the dead letter, renewed) back on ``queue``, atomically."""
        done = self._replay_dead_letter(
            keys=[
                QueueKeys.dead_letters(queue),
                QueueKeys.dead_letter_messages(queue),
                QueueKeys.queue(message.queue_name),
                QueueKeys.queue_messages(message.queue_name),
                DeadLetterKeys.dead_letter_note(redis_id),
            ],
            args=[redis_id, message.redis_message_id, message.payload],
        )
        return bool(done)
