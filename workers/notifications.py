"""Notifications to the app that asked for a session, at its ``callback_url``.

Signed the Standard Webhooks way (``webhook-id``, ``webhook-timestamp``,
``webhook-signature`` headers) with the app's own secret; while a secret is being rotated,
with both (two signatures in the header, so the app may verify with either). Sent under
the service's egress policy (:mod:`service.egress`): https, public addresses only
(checked on the address connected to), no redirects followed; a destination the policy
refuses is given up at once and logged, never retried.

Each notification is a record (``service.store.notifications``), written by the same
script as the change it tells of; its attempts are timers in the schedule, so a slow or
failing receiver delays nothing else, and retries over a day survive restarts. Every
attempt is noted on the record. The body never holds the parties' numbers: the app
knows them by session id."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

import httpx2
import msgspec
import structlog
from standardwebhooks.webhooks import Webhook

from service import schemas
from service.egress import EgressRefused, EgressUnresolved, origin
from service.metrics import metrics
from service.models import NotificationKind, Session, iso
from service.settings import DEFAULT_APP
from service.store.apps import AppStore
from service.store.notifications import Attempt, State
from workers.dependencies import Dependencies

log = structlog.get_logger(__name__)

TIMEOUT_SECONDS = 5.0


def body(deps: Dependencies, kind: NotificationKind, session: Session, moment: datetime) -> str:
    """The JSON the app receives (OpenAPI ``webhooks``): the session as it is now, with
    its recordings, without the parties' numbers."""
    recordings = deps.recordings.for_session(session.id)
    return schemas.encode(schemas.notification(kind, session, recordings, moment)).decode()


@dataclass(frozen=True)
class Delivery:
    """One attempt's result: ``delivered`` on a 2xx; ``final`` when trying again cannot
    help (the egress policy refuses the address); ``gone`` on ``410 Gone``;
    ``retry_after`` (seconds) when a 429 or 503 said when to come back."""

    attempt: Attempt
    delivered: bool = False
    final: bool = False
    gone: bool = False
    retry_after: float | None = None


def send(
    deps: Dependencies, session_id: str, kind: NotificationKind, notification_id: str
) -> Delivery | None:
    """POST the notification once; None when there is nothing to send (the session is
    gone, or has no callback_url). Never raises for the receiver's failures: they are in
    the attempt."""
    session = deps.sessions.get_session(session_id)
    if session is None or not session.callback_url:
        return None
    return send_for(deps, session, kind, notification_id)


def send_for(
    deps: Dependencies, session: Session, kind: NotificationKind, notification_id: str
) -> Delivery:
    """POST the notification of ``session`` once to its ``callback_url``."""
    moment = datetime.now(UTC)
    payload = body(deps, kind, session, moment)
    return post(
        deps, session.app, session.callback_url or "",
        kind=kind, notification_id=notification_id, payload=payload, moment=moment,
    )  # fmt: skip


def post(
    deps: Dependencies,
    app: str | None,
    url: str,
    *,
    kind: str,
    notification_id: str,
    payload: str,
    moment: datetime,
) -> Delivery:
    """POST ``payload`` to ``url`` signed with the app's secrets, under the egress policy."""
    headers = {
        "content-type": "application/json",
        "webhook-id": notification_id,
        "webhook-timestamp": str(int(moment.timestamp())),
        "webhook-signature": sign(deps.apps, app, notification_id, moment, payload),
    }
    started = time.perf_counter()

    def attempt(status: int | None = None, error: str | None = None) -> Attempt:
        latency = round((time.perf_counter() - started) * 1000, 1)
        return Attempt(at=iso(moment) or "", latency_ms=latency, status=status, error=error)

    try:
        deps.egress.check(httpx2.URL(url))
        response = deps.receivers.post(url, content=payload, headers=headers)
    except EgressRefused as exc:
        log.warning("app_notification_refused", kind=kind, reason=exc.reason)
        return _counted(Delivery(attempt(error="egress_refused"), final=True))
    except (httpx2.HTTPError, EgressUnresolved) as exc:
        log.warning("app_notification_failed", kind=kind, error=type(exc).__name__)
        return _counted(Delivery(attempt(error=type(exc).__name__)))
    status = response.status_code
    if not response.is_success:
        log.warning("app_notification_failed", kind=kind, status=status)
        retry_after = _retry_after(response) if status in (429, 503) else None
        return _counted(
            Delivery(attempt(status=status), gone=status == 410, retry_after=retry_after)
        )
    log.info("app_notified", kind=kind, status=status)
    return _counted(Delivery(attempt(status=status), delivered=True))


def _counted(delivery: Delivery) -> Delivery:
    status = delivery.attempt.status
    status_class = f"{status // 100}xx" if status is not None else "error"
    outcome = "delivered" if delivery.delivered else "refused" if delivery.final else "failed"
    metrics().notification_attempts.labels(outcome, status_class).inc()
    return delivery


def _retry_after(response: httpx2.Response) -> float | None:
    """The receiver's ``Retry-After`` in seconds (a number or an HTTP date), if usable."""
    raw = response.headers.get("retry-after", "").strip()
    if raw.isascii() and raw.isdigit() and len(raw) <= 9:
        return float(raw)
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def endpoint_of(url: str) -> str:
    """The endpoint a callback URL belongs to: its origin (scheme, host and port)."""
    return origin(httpx2.URL(url))


def deliver(deps: Dependencies, notification_id: str) -> None:
    """Make the notification's next attempt, note it, and schedule the one after by the
    retry schedule (jittered; a 429's or 503's Retry-After instead, up to the schedule's
    longest step), or mark it ``failed`` when the schedule is spent or its endpoint is
    disabled (then without an attempt). A notification no longer pending (delivered,
    discarded, purged) is left alone; one whose session is gone is ``discarded``."""
    record = deps.notifications.get(notification_id)
    if record is None or record.state is not State.PENDING:
        deps.notifications.unschedule(notification_id)
        return
    structlog.contextvars.bind_contextvars(session_id=record.session_id)
    session = deps.sessions.get_session(record.session_id)
    if session is None or not session.callback_url:
        deps.notifications.attempted(notification_id, None, State.DISCARDED, None)
        return
    app, endpoint = session.app or DEFAULT_APP, endpoint_of(session.callback_url)
    health = deps.endpoints.state(app, endpoint)
    if health is not None and health.disabled_at:
        deps.notifications.attempted(notification_id, None, State.FAILED, None, record.failures)
        _given_up(record.type, "endpoint_disabled", len(record.attempts))
        return
    delivery = send_for(deps, session, record.type, notification_id)
    if delivery.delivered:
        deps.notifications.attempted(notification_id, delivery.attempt, State.DELIVERED, None)
        if health is not None:
            deps.endpoints.succeeded(app, endpoint)
        return
    disabled = not delivery.final and _endpoint_failed(deps, app, endpoint, delivery)
    retry = None if disabled else _next_attempt(deps, record.failures, delivery)
    state = State.PENDING if retry is not None else State.FAILED
    failures = record.failures + 1
    deps.notifications.attempted(notification_id, delivery.attempt, state, retry, failures)
    if retry is None:
        reason = "endpoint_disabled" if disabled else "refused" if delivery.final else "exhausted"
        _given_up(record.type, reason, len(record.attempts) + 1)


def _endpoint_failed(deps: Dependencies, app: str, endpoint: str, delivery: Delivery) -> bool:
    """Note the endpoint's failure; whether it is now disabled (at once on ``410``)."""
    after = 0.0 if delivery.gone else deps.notification_disable_after
    reason = "410 Gone" if delivery.gone else f"failed every attempt for {after:g} s"
    state, newly = deps.endpoints.failed(
        app, endpoint, deps.clock(), disable_after=after, reason=reason
    )
    if newly:
        metrics().notification_endpoints_disabled.inc()
        log.warning("app_endpoint_disabled", app=app, endpoint=endpoint, reason=reason)
    return state.disabled_at is not None


def _given_up(kind: str, reason: str, attempts: int) -> None:
    metrics().notifications_given_up.labels(reason).inc()
    log.warning("app_notification_given_up", kind=kind, reason=reason, attempts=attempts)


def _next_attempt(deps: Dependencies, failed_before: int, delivery: Delivery) -> datetime | None:
    """When to try again after the attempt that followed ``failed_before`` failures:
    the schedule's step, plus up to a tenth of it at random (receivers recovering from
    an outage are not hit by every sender at once); or the receiver's Retry-After, up
    to the schedule's longest step."""
    schedule = deps.notification_retry_schedule
    if delivery.final or failed_before >= len(schedule):
        return None
    if delivery.retry_after is not None:
        return deps.clock() + timedelta(seconds=min(delivery.retry_after, max(schedule)))
    delay = schedule[failed_before]
    return deps.clock() + timedelta(seconds=delay * (1 + random.random() / 10))


def ping(deps: Dependencies, ping_id: str, app: str, url: str) -> None:
    """Send a signed ``ping`` to ``url`` once and hand its attempt to the web request
    awaiting it. A ping answered 2xx enables the endpoint again."""
    moment = datetime.now(UTC)
    event = schemas.PingNotification("ping", moment.isoformat(), schemas.PingData(app))
    payload = schemas.encode(event).decode()
    delivery = post(
        deps, app, url, kind="ping", notification_id=ping_id, payload=payload, moment=moment
    )
    if delivery.delivered:
        deps.endpoints.succeeded(app, endpoint_of(url))
    attempt = schemas.NotificationAttempt(**msgspec.structs.asdict(delivery.attempt))
    result = schemas.Ping(id=ping_id, url=url, delivered=delivery.delivered, attempt=attempt)
    deps.notifications.ping_result(ping_id, schemas.encode(result))


def sign(apps: AppStore, app: str | None, msg_id: str, moment: datetime, payload: str) -> str:
    """The ``webhook-signature`` value: one signature per active secret of the app."""
    secrets = apps.notification_secrets(app or DEFAULT_APP)
    return " ".join(Webhook(secret).sign(msg_id, moment, payload) for secret in secrets)
