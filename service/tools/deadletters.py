"""Operator tools: dead letters (list, show, replay, discard) and replaying stored VTS
callbacks.

Replays are safe because every actor is idempotent: a replayed create finds its session
created, a replayed event finds itself applied, a replayed download finds the file stored.
What these print never holds a phone number: messages carry ids, and tracebacks are masked.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from service import messages
from service.messages import Outgoing
from service.phones import mask_text
from service.store import DeadLetters, Queue, StoredEvents
from service.tools.terminal import printable

# Options dramatiq keeps about a message's past attempts: a replay starts afresh.
_SPENT_OPTIONS = ("retries", "traceback", "requeue_timestamp", "redis_message_id", "eta")


@dataclass(frozen=True)
class DeadLetter:
    queue: str
    redis_id: str
    died_at: float
    message: dict[str, Any]
    note: str | None = None

    @property
    def error(self) -> str:
        """Why it was given up: the worker's note, else the last stored traceback's last
        line (masked)."""
        if self.note:
            return mask_text(self.note)
        traceback = str(self.message.get("options", {}).get("traceback") or "")
        lines = [line for line in traceback.strip().splitlines() if line.strip()]
        return mask_text(lines[-1]) if lines else "(no error recorded)"

    def summary(self) -> str:
        age = int(time.time() - self.died_at)
        retries = self.message.get("options", {}).get("retries", 0)
        return printable(
            f"{self.redis_id}  {self.queue:<13} {self.message.get('actor_name', '?'):<24} "
            f"age={age}s retries={retries}  {self.error}"
        )

    def details(self) -> str:
        return mask_text(json.dumps(self.message, indent=2, sort_keys=True))

    def renewed(self) -> Outgoing:
        """The same work as a fresh message, for its queue."""
        options = {k: v for k, v in self.message.get("options", {}).items()
                   if k not in _SPENT_OPTIONS}  # fmt: skip
        return messages.encode(
            self.queue,
            self.message["actor_name"],
            self.message.get("args", ()),
            self.message.get("kwargs", {}),
            {**options, messages.REPLAY_OPTION: True},
            message_id=self.message.get("message_id"),
        )


def dead_letters(
    store: DeadLetters, queues: tuple[str, ...] = messages.QUEUES
) -> Iterator[DeadLetter]:
    for queue in queues:
        letters = store.dead_letters(queue)
        notes = store.dead_letter_notes([redis_id for redis_id, _, _ in letters])
        for (redis_id, died_at, payload), note in zip(letters, notes, strict=True):
            yield DeadLetter(queue, redis_id, died_at, json.loads(payload), note)


def find(store: DeadLetters, redis_id: str) -> DeadLetter | None:
    return next((d for d in dead_letters(store) if d.redis_id == redis_id), None)


def replay(store: DeadLetters, letter: DeadLetter) -> bool:
    """Put the dead letter back on its queue; False if it was replayed meanwhile."""
    return store.replay_dead_letter(letter.queue, letter.redis_id, letter.renewed())


def discard(store: DeadLetters, letter: DeadLetter) -> bool:
    """Drop the dead letter for good; False if it was replayed or dropped meanwhile."""
    return store.discard_dead_letter(letter.queue, letter.redis_id)


def replay_webhooks(events: StoredEvents, queue: Queue, event_ids: list[str]) -> int:
    """Queue the stored callbacks ``event_ids`` for processing again; return how many."""
    jobs = {"session": messages.APPLY_EVENT, "recording": messages.APPLY_RECORDING_EVENT}
    count = 0
    for event_id in event_ids:
        stored = events.webhook(event_id)
        if stored is not None:
            queue.enqueue(jobs[stored[0]].message(messages.EventRef(event_id)))
            count += 1
    return count
