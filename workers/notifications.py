"""Notifications to the app that asked for a session, at its ``callback_url``.

Signed the Standard Webhooks way (``webhook-id``, ``webhook-timestamp``,
``webhook-signature`` headers) with the app's own secret; while a secret is being rotated,
with both (two signatures in the header, so the app may verify with either). Sent under
the service's egress policy (:mod:`service.egress`): https, public addresses only
(checked on the address connected to), no redirects followed; a destination the policy
refuses is given up at once and logged, never retried or dead-lettered. Sent from their
own queue, so a
slow or failing receiver delays nothing else; retried with backoff, then given up (and
logged). The body never holds the parties' numbers: the app knows them by session id.
"""

from __future__ import annotations

from datetime import UTC, datetime

import httpx2
import structlog
from standardwebhooks.webhooks import Webhook

from service import messages, schemas
from service.egress import EgressRefused, EgressUnresolved
from service.errors import ReceiverUnavailable
from service.messages import Notification
from service.models import Session
from service.settings import DEFAULT_APP
from service.store import Store
from service.store.apps import AppStore
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


def send(deps: Dependencies, session_id: str, kind: str, notification_id: str) -> None:
    """POST the notification; raises ReceiverUnavailable on a network error or non-2xx."""
    session = deps.store.get_session(session_id)
    if session is None or not session.callback_url:
        return
    moment = datetime.now(UTC)
    payload = body(deps, kind, session, moment)
    headers = {
        "content-type": "application/json",
        "webhook-id": notification_id,
        "webhook-timestamp": str(int(moment.timestamp())),
        "webhook-signature": sign(deps.apps, session.app, notification_id, moment, payload),
    }
    try:
        deps.egress.check(httpx2.URL(session.callback_url))
        response = deps.receivers.post(session.callback_url, content=payload, headers=headers)
    except EgressRefused as exc:
        log.warning("app_notification_refused", kind=kind, reason=exc.reason)
        return
    except (httpx2.HTTPError, EgressUnresolved) as exc:
        raise ReceiverUnavailable(f"app receiver unreachable ({type(exc).__name__})") from None
    if not response.is_success:
        raise ReceiverUnavailable(f"app receiver answered {response.status_code}")
    log.info("app_notified", kind=kind, status=response.status_code)


def sign(apps: AppStore, app: str | None, msg_id: str, moment: datetime, payload: str) -> str:
    """The ``webhook-signature`` value: one signature per active secret of the app."""
    secrets = apps.notification_secrets(app or DEFAULT_APP)
    return " ".join(Webhook(secret).sign(msg_id, moment, payload) for secret in secrets)


def queue(store: Store, session: Session, kind: str, tag: str = "") -> None:
    """Queue a notification if the app asked for them. ``tag`` tells apart notifications
    of one kind (e.g. each call), and makes the id the same on a retried worker step."""
    if kind not in KINDS:
        raise ValueError(f"unknown notification kind {kind!r}")
    if not session.callback_url:
        return
    notification_id = f"{session.id}.{kind}{'.' + tag if tag else ''}"
    store.enqueue(messages.NOTIFY_APP.message(Notification(session.id, kind, notification_id)))
