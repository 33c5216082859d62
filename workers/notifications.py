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

import httpx2
import structlog
from standardwebhooks.webhooks import Webhook

from service import schemas
from service.egress import EgressRefused, EgressUnresolved
from service.models import Session, iso
from service.settings import DEFAULT_APP
from service.store.apps import AppStore
from service.store.notifications import Attempt, State
from workers.dependencies import Dependencies

log = structlog.get_logger(__name__)

KINDS = (
    "session.active",
    "session.failed",
    "session.call_ended",
    "session.recording_stored",
    "session.expired",
)
TIMEOUT_SECONDS = 5.0


def body(deps: Dependencies, kind: str, session: Session, moment: datetime) -> str:
    """The JSON the app receives (OpenAPI ``webhooks``): the session as it is now, with
    its recordings, without the parties' numbers."""
    recordings = deps.recordings.for_session(session.id)
    return schemas.encode(schemas.notification(kind, session, recordings, moment)).decode()


@dataclass(frozen=True)
class Delivery:
    """One attempt's result: ``delivered`` on a 2xx; ``final`` when trying again cannot
    help (the egress policy refuses the address)."""

    attempt: Attempt
    delivered: bool = False
    final: bool = False


def send(deps: Dependencies, session_id: str, kind: str, notification_id: str) -> Delivery | None:
    """POST the notification once; None when there is nothing to send (the session is
    gone, or has no callback_url). Never raises for the receiver's failures: they are in
    the attempt."""
    session = deps.store.get_session(session_id)
    if session is None or not session.callback_url:
        return None
    moment = datetime.now(UTC)
    payload = body(deps, kind, session, moment)
    headers = {
        "content-type": "application/json",
        "webhook-id": notification_id,
        "webhook-timestamp": str(int(moment.timestamp())),
        "webhook-signature": sign(deps.apps, session.app, notification_id, moment, payload),
    }
    started = time.perf_counter()

    def attempt(status: int | None = None, error: str | None = None) -> Attempt:
        latency = round((time.perf_counter() - started) * 1000, 1)
        return Attempt(at=iso(moment) or "", latency_ms=latency, status=status, error=error)

    try:
        deps.egress.check(httpx2.URL(session.callback_url))
        response = deps.receivers.post(session.callback_url, content=payload, headers=headers)
    except EgressRefused as exc:
        log.warning("app_notification_refused", kind=kind, reason=exc.reason)
        return Delivery(attempt(error="egress_refused"), final=True)
    except (httpx2.HTTPError, EgressUnresolved) as exc:
        log.warning("app_notification_failed", kind=kind, error=type(exc).__name__)
        return Delivery(attempt(error=type(exc).__name__))
    if not response.is_success:
        log.warning("app_notification_failed", kind=kind, status=response.status_code)
        return Delivery(attempt(status=response.status_code))
    log.info("app_notified", kind=kind, status=response.status_code)
    return Delivery(attempt(status=response.status_code), delivered=True)


def deliver(deps: Dependencies, notification_id: str) -> None:
    """Make the notification's next attempt, note it, and schedule the one after by the
    retry schedule (jittered), or mark it ``failed`` when the schedule is spent. A
    notification no longer pending (delivered, discarded, purged) is left alone."""
    record = deps.notifications.get(notification_id)
    if record is None or record.state is not State.PENDING:
        deps.notifications.unschedule(notification_id)
        return
    structlog.contextvars.bind_contextvars(session_id=record.session_id)
    delivery = send(deps, record.session_id, record.type, notification_id)
    if delivery is None:
        deps.notifications.unschedule(notification_id)
        return
    if delivery.delivered:
        deps.notifications.attempted(notification_id, delivery.attempt, State.DELIVERED, None)
        return
    retry = _next_attempt(deps, len(record.attempts), final=delivery.final)
    state = State.PENDING if retry is not None else State.FAILED
    deps.notifications.attempted(notification_id, delivery.attempt, state, retry)
    if retry is None:
        log.warning(
            "app_notification_given_up", kind=record.type, attempts=len(record.attempts) + 1
        )


def _next_attempt(deps: Dependencies, failed_before: int, *, final: bool) -> datetime | None:
    """When to try again after the attempt that followed ``failed_before`` failures:
    the schedule's step, plus up to a tenth of it at random (receivers recovering from
    an outage are not hit by every sender at once)."""
    schedule = deps.notification_retry_schedule
    if final or failed_before >= len(schedule):
        return None
    delay = schedule[failed_before]
    return deps.clock() + timedelta(seconds=delay * (1 + random.random() / 10))


def sign(apps: AppStore, app: str | None, msg_id: str, moment: datetime, payload: str) -> str:
    """The ``webhook-signature`` value: one signature per active secret of the app."""
    secrets = apps.notification_secrets(app or DEFAULT_APP)
    return " ".join(Webhook(secret).sign(msg_id, moment, payload) for secret in secrets)
