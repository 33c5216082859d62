"""Redis going away under a live worker: nothing the broker holds is lost or stuck.

Each test runs its own redis-server (AOF on) and its own broker, so that stopping and
restarting Redis touches nothing else; the worker is a real dramatiq ``Worker`` (threads
in this process) consuming through our broker.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.middleware import Retries

from devkit.embedded_redis import EmbeddedRedis
from tests.conftest import wait_until
from workers.broker import PromptRedisBroker

QUEUE = "faulty"


class Rig:
    """A private Redis, a broker on it, and a worker that is started on demand."""

    def __init__(self, directory: Path) -> None:
        self.server = EmbeddedRedis(directory, persist=True).start()
        self.client = redis.Redis.from_url(
            self.server.url, socket_timeout=5, socket_connect_timeout=2
        )
        self.broker = PromptRedisBroker(
            client=self.client,
            namespace="faults",
            middleware=[Retries(max_retries=5, min_backoff=100, max_backoff=200)],
            heartbeat_timeout=15_000,
        )
        self.worker: dramatiq.Worker | None = None

    def start_worker(self) -> dramatiq.Worker:
        self.worker = dramatiq.Worker(self.broker, worker_threads=2, worker_timeout=50)
        self.worker.start()
        return self.worker

    def restart_redis(self) -> None:
        self.server.stop()
        self.server.start()

    def done(self) -> set[str]:
        return {member.decode() for member in self.client.smembers("done")}  # type: ignore[union-attr]

    def close(self) -> None:
        if self.worker is not None:
            self.worker.stop()
        self.broker.close()
        self.server.stop()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    built = Rig(tmp_path / "redis")
    try:
        yield built
    finally:
        built.close()


def _note_actor(rig: Rig) -> Any:
    def note(mark: str) -> None:
        rig.client.sadd("done", mark)

    return dramatiq.actor(broker=rig.broker, queue_name=QUEUE, actor_name="note")(note)


def test_delayed_messages_come_back_after_redis_restarts(rig: Rig) -> None:
    """Messages waiting in a worker's delay queue when Redis goes away are processed once
    it is back, by the same live worker (not only when that worker dies)."""
    note = _note_actor(rig)
    worker = rig.start_worker()
    for mark, delay in (("sooner", 6_000), ("later", 7_000)):
        note.send_with_options(args=(mark,), delay=delay)
    delayed = f"faults:{QUEUE}.DQ"
    wait_until(lambda: rig.client.llen(delayed) == 0)  # both fetched into the worker
    consumer = worker.consumers[f"{QUEUE}.DQ"]
    before = consumer.consumer
    rig.server.stop()
    wait_until(lambda: consumer.consumer is not before, timeout=30)  # it saw the outage
    rig.server.start()
    wait_until(lambda: rig.done() == {"sooner", "later"}, timeout=30, interval=0.1)
    assert consumer.is_alive()


def test_a_retry_that_cannot_be_queued_is_not_lost(rig: Rig) -> None:
    """An actor fails while Redis is down, so its retry cannot be queued at once: it is
    queued when Redis is back, and the retry runs."""
    went_down = threading.Event()

    def flaky(mark: str) -> None:
        if not went_down.is_set():
            rig.server.stop()
            went_down.set()
            raise RuntimeError("fails while Redis is away")
        rig.client.sadd("done", mark)

    declare = dramatiq.actor(broker=rig.broker, queue_name=QUEUE, actor_name="flaky")
    declare(flaky).send("x")
    rig.start_worker()
    assert went_down.wait(30)
    rig.server.start()
    wait_until(lambda: rig.done() == {"x"}, timeout=30, interval=0.1)


def test_a_closing_consumer_puts_back_what_it_fetched_but_never_handed_out(rig: Rig) -> None:
    """A consumer fetches messages in batches; when its worker stops between two of them,
    the rest of the batch goes back on the queue at once instead of waiting in this
    worker's acks set for its heartbeat to expire."""
    note = _note_actor(rig)
    for mark in "abcd":
        note.send(mark)
    consumer = rig.broker.consume(QUEUE, prefetch=4)
    handed_out = next(consumer)
    assert handed_out is not None
    consumer.close()
    held = rig.client.smembers(f"faults:__acks__.{rig.broker.broker_id}.{QUEUE}")
    assert held == {handed_out.options["redis_message_id"].encode()}
    assert rig.client.llen(f"faults:{QUEUE}") == 3
