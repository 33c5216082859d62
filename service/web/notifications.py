"""The HTTP API of an app's notifications: its delivery log, redelivery, recovery, ping.

An app sees and moves only its own records: another app's notification is 404, exactly
like one that does not exist. Redelivery and recovery only queue attempts (the workers
make them); so does a ping, whose answer the web awaits in Redis: the web itself never
calls out, so it needs no egress of its own and a slow endpoint holds no web worker's
connection to anything but Redis.
"""

from __future__ import annotations

import re
import secrets
from datetime import datetime
from typing import TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from service import messages, schemas
from service.messages import PingRef
from service.store.notifications import AsyncNotificationStore, RequeueResult
from service.web.api import JSON, SESSION_ID, _app, _existing, _request_id, _rules, _sessions
from service.web.middleware import header
from service.web.operations import (
    BODY_ERRORS,
    COMMON,
    NOT_FOUND,
    ApiRoute,
    Operation,
    json_body,
    json_response,
    path_parameter,
    problem,
)
from service.web.problems import FieldError, Problem

_NOTIFICATION_ID = re.compile(r"^ses_[0-9a-f]{32}\.[A-Za-z0-9_.:-]{1,200}$")
_RECOVER = msgspec.json.Decoder(schemas.Recover)
_PING = msgspec.json.Decoder(schemas.PingRequest)
T = TypeVar("T")
# Longer than the worker's one attempt (its connect and read timeouts) and its queueing.
PING_WAIT_SECONDS = 20.0


def _store(request: Request) -> AsyncNotificationStore:
    store: AsyncNotificationStore = request.app.state.notifications
    return store


async def _body(request: Request, *, optional: bool = False) -> bytes:
    """The JSON body; an empty body is ``{}`` when ``optional``."""
    raw = await request.body()
    if optional and not raw.strip():
        return b"{}"
    given = header(request.scope, b"content-type") or ""
    if given.split(";")[0].strip().lower() != "application/json":
        raise Problem(415, "send the body as JSON with 'Content-Type: application/json'")
    return raw


def _decode(decoder: msgspec.json.Decoder[T], raw: bytes) -> T:
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise Problem(422, f"the body is invalid: {exc}") from exc
    except (msgspec.DecodeError, RecursionError) as exc:
        raise Problem(400, "the body is not valid JSON", slug="malformed-json") from exc


def _since(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise Problem(
            422,
            "since must be an ISO 8601 time with its zone, e.g. 2026-01-31T14:00:00Z",
            errors=[FieldError("since", "invalid")],
        )
    return moment


async def _endpoint(request: Request, app: str) -> str | None:
    """The app's endpoint: the callback URL of its latest notification's session."""
    session_id = await _store(request).latest_session(app)
    session = await _sessions(request).get_session(session_id) if session_id else None
    return session.callback_url if session is not None else None


async def session_notifications(request: Request) -> Response:
    session = await _existing(request)
    records = await _store(request).for_session(session.id)
    data = [schemas.notification_record(record) for record in records]
    return JSON(schemas.NotificationList(session_id=session.id, data=data))


async def redeliver(request: Request) -> Response:
    """A new attempt now, with the same ``webhook-id``; a delivered one may be sent again."""
    notification_id: str = request.path_params["notification_id"]
    if not _NOTIFICATION_ID.match(notification_id):
        raise Problem(404, "no notification with this id")
    store = _store(request)
    if await store.requeue(notification_id, _app(request)) is not RequeueResult.QUEUED:
        raise Problem(404, "no notification with this id")
    record = await store.get(notification_id)
    if record is None:  # purged between the two reads
        raise Problem(404, "no notification with this id")
    return JSON(schemas.notification_record(record), status_code=202)


async def recover(request: Request) -> Response:
    """Queue again every notification of the app created since then and not delivered."""
    wanted = _decode(_RECOVER, await _body(request))
    since = _since(wanted.since)
    queued = await _store(request).recover(_app(request), since)
    return JSON(schemas.Recovery(since=wanted.since, queued=queued), status_code=202)


async def ping(request: Request) -> Response:
    """Send a signed ``ping`` now (by a worker) and answer with its attempt."""
    wanted = _decode(_PING, await _body(request, optional=True))
    app = _app(request)
    store = _store(request)
    url = wanted.url or await _endpoint(request, app)
    if url is None:
        raise Problem(
            422,
            "this app has no endpoint yet (no notification was sent to it): give a url",
            errors=[FieldError("url", "required")],
        )
    # The worker's egress policy, as far as the text shows: refused here at once.
    reason = _rules(request).egress.refusal(url)
    if reason is not None:
        raise Problem(422, f"url {reason}", errors=[FieldError("url", reason)])
    ping_id = "ping_" + secrets.token_hex(16)
    message = messages.PING_ENDPOINT.message(
        PingRef(ping_id, app, url), request_id=_request_id(request), app=app
    )
    result = await store.ping(message, ping_id, PING_WAIT_SECONDS)
    if result is None:
        raise Problem(504, "the ping's attempt did not finish in time; try again")
    return JSON(msgspec.json.decode(result, type=schemas.Ping))


_LOG = Operation(
    id="listSessionNotifications",
    summary="The notifications sent to the app for this session",
    description="Each with its state and every attempt (time, status or "
    "error, latency), oldest first.",
    responses={
        "200": json_response("NotificationList", "the delivery log"),
        "404": NOT_FOUND,
        **COMMON,
    },
)
_REDELIVER = Operation(
    id="redeliverNotification",
    summary="Send one notification again now, with the same webhook-id",
    description="Any state, delivered included: the record becomes `pending` "
    "with an attempt due now, and the retry schedule starts again.",
    responses={
        "202": json_response("NotificationRecord", "queued"),
        "404": NOT_FOUND,
        **COMMON,
    },
)
_RECOVER_ALL = Operation(
    id="recoverNotifications",
    summary="Send again every notification not delivered since a time",
    description="Every `pending` or `failed` notification of the app created "
    "at or after `since` gets an attempt now and the retry schedule again.",
    body=json_body("Recover"),
    responses={"202": json_response("Recovery", "queued"), **BODY_ERRORS, **COMMON},
)
_PING_ENDPOINT = Operation(
    id="pingEndpoint",
    summary="Send a signed `ping` now and answer with its attempt",
    description="To `url`, or by default the app's endpoint (the callback URL "
    "of its latest notification), under the same egress policy as every "
    "notification. A 2xx enables the endpoint again if it was disabled.",
    body=json_body("PingRequest", required=False),
    responses={
        "200": json_response("Ping", "the attempt, whatever the endpoint answered"),
        **BODY_ERRORS,
        "504": problem("the attempt did not finish in time; try again"),
        **COMMON,
    },
)
NOTIFICATION_ID = path_parameter(
    "notification_id",
    {"type": "string", "pattern": _NOTIFICATION_ID.pattern},
    "the notification's id: its `webhook-id`",
)


def routes() -> list[ApiRoute]:
    return [
        ApiRoute(
            "/v1/sessions/{session_id}/notifications",
            session_notifications,
            {"GET": _LOG},
            parameters=[SESSION_ID],
        ),
        ApiRoute("/v1/notifications/recover", recover, {"POST": _RECOVER_ALL}),
        ApiRoute("/v1/notifications/ping", ping, {"POST": _PING_ENDPOINT}),
        ApiRoute(
            "/v1/notifications/{notification_id}/redeliver",
            redeliver,
            {"POST": _REDELIVER},
            parameters=[NOTIFICATION_ID],
        ),
    ]
