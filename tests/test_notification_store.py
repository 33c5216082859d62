"""The notification store's scripts, branch by branch, on real Redis: queueing a record
again (redeliver, recover), noting an attempt or a give-up, and endpoint health."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import redis

from service.models import NotificationKind, Status
from service.store import Sessions
from service.store.endpoints import EndpointHealth, disabled_count
from service.store.keys import Keys
from service.store.notifications import Attempt, NotificationStore, RequeueResult, State
from tests.conftest import stored_session

ORIGIN = "https://hooks.example.com:443"


def _recorded(redis_url: str, client: redis.Redis, session_id: str, kind: NotificationKind) -> str:
    """A notification of a stored session, recorded as a transition records one."""
    stored_session(redis_url, session_id)
    client.hset(Keys.session(session_id), "callback_url", "https://hooks.example.com/h")
    Sessions(client).transition(session_id, None, allowed=list(Status), notify=(kind, ""))
    return f"{session_id}.{kind}"


def test_requeue_queues_any_state_or_only_undelivered(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """Redelivery queues even a delivered record; recovery skips it; another app's or a
    missing record is 'missing'; a queued one is pending, due now, its failures reset."""
    notifications = NotificationStore(redis_client)
    nid = _recorded(redis_url, redis_client, "ses_" + "1" * 32, NotificationKind.ACTIVE)
    app = notifications.get(nid).app  # type: ignore[union-attr]
    attempt = Attempt(at="2026-01-01T00:00:00Z", latency_ms=1.0, status=204)
    assert notifications.attempted(nid, attempt, State.DELIVERED, None, 0)
    assert notifications.requeue(nid, app, undelivered=True) is RequeueResult.SKIPPED
    assert notifications.requeue(nid, "another-app") is RequeueResult.MISSING
    assert notifications.requeue("ses_" + "9" * 32 + ".session.active") is RequeueResult.MISSING
    assert notifications.requeue(nid, app) is RequeueResult.QUEUED
    record = notifications.get(nid)
    assert record is not None
    assert (record.state, record.failures, len(record.attempts)) == (State.PENDING, 0, 1)
    assert redis_client.zscore(Keys.schedule(), Keys.notification_timer(nid)) is not None
    assert redis_client.zscore(Keys.pending_notifications(), nid) is not None


def test_a_give_up_without_an_attempt_keeps_the_log_and_leaves_the_indexes(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """Failed without an attempt (endpoint disabled): no attempt is added, the timer and
    the pending entry go; a record gone (purged) is not written again."""
    notifications = NotificationStore(redis_client)
    nid = _recorded(redis_url, redis_client, "ses_" + "2" * 32, NotificationKind.ACTIVE)
    assert notifications.attempted(nid, None, State.FAILED, None, 3)
    record = notifications.get(nid)
    assert record is not None
    assert (record.state, record.attempts, record.failures) == (State.FAILED, [], 3)
    assert redis_client.zscore(Keys.schedule(), Keys.notification_timer(nid)) is None
    assert redis_client.zscore(Keys.pending_notifications(), nid) is None
    assert not notifications.attempted("gone.session.active", None, State.FAILED, None)
    assert not redis_client.exists(Keys.notification("gone.session.active"))


def test_recover_counts_only_what_it_queued_since_then(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """Recovery takes the app's records created since the time given, failed or pending,
    never delivered ones."""
    notifications = NotificationStore(redis_client)
    failed = _recorded(redis_url, redis_client, "ses_" + "3" * 32, NotificationKind.ACTIVE)
    delivered = _recorded(redis_url, redis_client, "ses_" + "4" * 32, NotificationKind.ACTIVE)
    app = notifications.get(failed).app  # type: ignore[union-attr]
    notifications.attempted(failed, None, State.FAILED, None)
    notifications.attempted(delivered, None, State.DELIVERED, None)
    future = datetime.now(UTC) + timedelta(hours=1)
    assert notifications.recover(app, future) == 0
    assert notifications.recover(app, datetime.now(UTC) - timedelta(hours=1)) == 1
    assert notifications.get(failed).state is State.PENDING  # type: ignore[union-attr]


def test_an_endpoint_is_disabled_after_failing_long_enough_or_at_once(
    redis_client: redis.Redis,
) -> None:
    """Failures within the window disable nothing; one past it disables, once; a 410
    (no window) disables at once; a success or enabling the app forgets it all."""
    health = EndpointHealth(redis_client)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    state, newly = health.failed("rides", ORIGIN, start, disable_after=60, reason="r")
    assert (state.disabled_at, newly) == (None, False)
    later = start + timedelta(seconds=30)
    assert health.failed("rides", ORIGIN, later, disable_after=60, reason="r")[1] is False
    past = start + timedelta(seconds=61)
    state, newly = health.failed("rides", ORIGIN, past, disable_after=60, reason="slow")
    assert (state.failing_since, newly, state.reason) == (
        int(start.timestamp() * 1000), True, "slow"
    )  # fmt: skip
    assert health.failed("rides", ORIGIN, past, disable_after=60, reason="r")[1] is False
    assert disabled_count(redis_client) == 1
    assert redis_client.ttl(Keys.endpoints("rides")) > 0
    assert health.enable("rides") == [ORIGIN]
    assert health.state("rides", ORIGIN) is None
    assert health.failed("food", ORIGIN, start, disable_after=0, reason="410 Gone")[1] is True
    assert [d.app for d in health.disabled()] == ["food"]
    health.succeeded("food", ORIGIN)
    assert (health.disabled(), disabled_count(redis_client)) == ([], 0)


def test_retry_after_is_read_as_seconds_or_an_http_date() -> None:
    """Retry-After in seconds or as an HTTP date is a wait in seconds; anything else (a
    negative or huge number, text, a date without a zone) is no wait at all."""
    from email.utils import format_datetime

    import httpx2

    from workers.notifications import _retry_after, endpoint_of

    def wait(value: str) -> float | None:
        return _retry_after(httpx2.Response(503, headers={"retry-after": value}))

    assert wait("120") == 120.0
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=90), usegmt=True)
    assert 60 < (wait(later) or 0) <= 90
    assert wait(format_datetime(datetime(2000, 1, 1, tzinfo=UTC), usegmt=True)) == 0.0
    for value in ("-5", "1" * 20, "soon", "Sat, 01 Jan 2000 00:00:00 -0000"):
        assert wait(value) is None, value
    assert endpoint_of("https://hooks.example.com/a?b=c") == "https://hooks.example.com:443"
    assert endpoint_of("http://127.0.0.1:8080/x") == "http://127.0.0.1:8080"


def test_a_given_up_message_is_not_logged_as_an_event_id() -> None:
    """The job told that another job's retries ran out (its argument is the given-up
    message) binds no event_id: only a stored callback's id is one, never a message with
    its traceback; a notification's attempt binds its notification_id."""
    import dramatiq
    import structlog
    from dramatiq.broker import MessageProxy

    from service import messages
    from workers.broker import LogContext

    def bound(actor: str, args: list[object]) -> dict[str, object]:
        message = MessageProxy(dramatiq.Message("sessions", actor, tuple(args), {}, {}))
        LogContext().before_process_message(dramatiq.get_broker(), message)
        return dict(structlog.contextvars.get_contextvars())

    exhausted = {"actor_name": "create_session", "args": ["ses_" + "0" * 32],
                 "options": {"traceback": "Traceback ..."}}  # fmt: skip
    context = bound(messages.CREATE_SESSION_EXHAUSTED.name, [exhausted, {"retries": 20}])
    assert "event_id" not in context
    assert bound(messages.APPLY_EVENT.name, ["evt-1"])["event_id"] == "evt-1"
    nid = "ses_" + "0" * 32 + ".session.active"
    notifying = bound(messages.NOTIFY_APP.name, [nid])
    assert (notifying["notification_id"], notifying["session_id"]) == (nid, "ses_" + "0" * 32)
    structlog.contextvars.clear_contextvars()
