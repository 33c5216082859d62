"""The job contract: payloads encode and decode as dramatiq's positional args, each job
retries by its own policy, and a message whose payload does not fit is given up at once."""

from __future__ import annotations

import json

import dramatiq
import msgspec
import pytest
import redis

from service import messages
from service.errors import EventNotReady, RecordingPending, SessionBusy, VtsUnavailable
from service.messages import EventRef, SessionRef
from service.settings import Settings
from service.store import Queue
from service.store.keys import Keys
from tests.conftest import make_settings, wait_until


def test_a_payload_travels_as_positional_args() -> None:
    """The message's args are the payload's fields in order, as earlier versions sent them."""
    outgoing = messages.APPLY_EVENT.message(EventRef("evt_1", "uuid-1"), request_id="r1", app="a")
    sent = json.loads(outgoing.payload)
    assert (sent["actor_name"], sent["queue_name"]) == ("apply_event", "events")
    assert (sent["args"], sent["kwargs"]) == (["evt_1", "uuid-1"], {})
    assert sent["options"]["request_id"] == "r1"
    assert sent["options"]["app"] == "a"
    assert sent["options"]["redis_message_id"] == outgoing.redis_message_id
    assert messages.APPLY_EVENT.decode(sent["args"], sent["kwargs"]) == EventRef("evt_1", "uuid-1")


def test_a_job_refuses_another_jobs_payload() -> None:
    """Enqueueing a job with a payload of the wrong type is a bug caught at once."""
    with pytest.raises(TypeError, match="apply_event takes a EventRef"):
        messages.APPLY_EVENT.message(SessionRef("ses_1"))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [([], {}), ([1], {}), (["evt_1", "u", "extra"], {}), (["evt_1", "u"], {"other": 1})],
)
def test_a_payload_that_does_not_fit_is_refused(
    args: list[object], kwargs: dict[str, object]
) -> None:
    """Missing, mistyped or unknown arguments are a validation error, not a crash later."""
    with pytest.raises(msgspec.ValidationError):
        messages.APPLY_EVENT.decode(args, kwargs)


def test_each_job_retries_by_its_own_policy() -> None:
    """Session work retries VTS being away 20 times; events wait as long as they must;
    a download retries its own errors; nothing retries a bug; Redis is always retried."""
    session_work = messages.UPDATE_SESSION.retry
    assert session_work.allows(19, VtsUnavailable("503"), max_retries=20)
    assert not session_work.allows(20, SessionBusy("busy"), max_retries=20)
    assert not session_work.allows(0, ValueError("bug"), max_retries=20)
    assert session_work.allows(10_000, redis.ConnectionError(), max_retries=20)
    events = messages.APPLY_EVENT.retry
    assert events.allows(10_000, EventNotReady("wait"), max_retries=0)
    assert not events.allows(0, VtsUnavailable("503"), max_retries=0)
    assert messages.delay_ms(EventNotReady("wait")) == 200
    assert messages.delay_ms(RecordingPending("later")) is None
    assert messages.delay_ms(VtsUnavailable("429", retry_after=3)) == 3000


@pytest.fixture
def settings(redis_url: str, sandbox_url: str) -> Settings:
    return make_settings(redis_url, sandbox_url, create_max_retries=1)


def test_the_create_retry_setting_governs_only_the_create(
    broker: dramatiq.Broker, worker: dramatiq.Worker
) -> None:
    """VTS_CREATE_MAX_RETRIES limits creates; update, expire and reconcile keep their own."""
    unavailable = dramatiq.Retry("VtsUnavailable")
    unavailable.__cause__ = VtsUnavailable("503")
    create = broker.get_actor(messages.CREATE_SESSION.name).options["retry_when"]
    assert create(0, unavailable)
    assert not create(1, unavailable)
    for job in (messages.UPDATE_SESSION, messages.EXPIRE_SESSION, messages.RECONCILE_SESSION):
        retry_when = broker.get_actor(job.name).options["retry_when"]
        assert retry_when(1, unavailable), job.name
        assert retry_when(19, unavailable), job.name
        assert not retry_when(20, unavailable), job.name


def test_a_message_that_does_not_fit_is_dead_lettered_at_once(
    worker: dramatiq.Worker, redis_client: redis.Redis
) -> None:
    """A malformed payload is never retried: it goes to the dead letters, with a note."""
    bad = messages.encode(messages.EVENTS_QUEUE, messages.APPLY_EVENT.name, [42], {}, {})
    Queue(redis_client).enqueue(bad)
    dead = Keys.dead_letters(messages.EVENTS_QUEUE)
    wait_until(lambda: redis_client.zscore(dead, bad.redis_message_id) is not None, timeout=30)
    note = redis_client.get(Keys.dead_letter_note(bad.redis_message_id))
    assert note is not None
    assert b"ValidationError" in note


def test_the_dependencies_are_closed_when_the_worker_has_shut_down(
    broker: dramatiq.Broker, settings: Settings, redis_client: redis.Redis
) -> None:
    """The worker's HTTP clients are closed by its shutdown, not left to the process's end."""
    from workers import boot

    deps = boot.build(settings, redis_client)
    broker.dependencies = deps  # type: ignore[attr-defined]
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    assert not deps.receivers.is_closed
    worker.stop()
    broker.middleware[:] = [m for m in broker.middleware if type(m).__name__ != "_WorkerMiddleware"]
    assert deps.receivers.is_closed
    assert deps.downloads.is_closed
