"""The HTTP API for apps: ``/v1/sessions``."""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime
from typing import Any

import msgspec
import structlog
from starlette.requests import Request
from starlette.responses import Response

from service import messages, schemas
from service.apps import AppRegistry, Budget
from service.messages import SessionRef
from service.metrics import metrics
from service.models import LIVE, Session, Status, iso, now
from service.phones import mask
from service.settings import Settings
from service.store import (
    AsyncRecordingStore,
    AsyncSessions,
    CreateResult,
    EnqueueResult,
    EraseResult,
    Erasure,
    InvalidCursor,
    UpdateResult,
    timeline_entry,
)
from service.web.endpoints import Endpoint
from service.web.middleware import header
from service.web.operations import (
    BODY_ERRORS,
    COMMON,
    INVALID,
    NOT_FOUND,
    ApiRoute,
    Operation,
    header_parameter,
    json_body,
    json_response,
    path_parameter,
    problem,
    ref,
)
from service.web.problems import FieldError, Problem
from service.web.validation import Rules, decode_create, decode_update, fingerprint
from service.web.watcher import SessionWatcher

log = structlog.get_logger(__name__)

MAX_WAIT = 30
_PREFER_WAIT = re.compile(r"(?:^|[;,\s])wait\s*=\s*([0-9]+)", re.IGNORECASE)
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
_SESSION_ID = re.compile(r"^ses_[0-9a-f]{32}$")
_LIMIT = re.compile(r"[0-9]{1,3}")  # ASCII digits: str.isdigit() also takes "²"
MAX_LIMIT = 100
DEFAULT_LIMIT = 20


def _sessions(request: Request) -> AsyncSessions:
    sessions: AsyncSessions = request.app.state.sessions
    return sessions


def _erasure(request: Request) -> Erasure:
    erasure: Erasure = request.app.state.erasure
    return erasure


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _rules(request: Request) -> Rules:
    """What this deployment accepts in a create request: built once, by ``create_app``."""
    rules: Rules = request.app.state.rules
    return rules


def _app(request: Request) -> str:
    """The app whose key authenticated the request (set by BearerAuth)."""
    app: str = request.scope["state"]["app"]
    return app


def _request_id(request: Request) -> str | None:
    """The request's id (set by RequestContext)."""
    request_id: str | None = request.scope["state"].get("request_id")
    return request_id


def _budget(request: Request, app: str) -> Budget:
    registry: AppRegistry = request.app.state.apps
    return registry.budget(app)


def _throttled(retry_after_ms: int) -> Problem:
    seconds = max(1, -(-retry_after_ms // 1000))
    return Problem(
        429,
        "this app has used its share of the VTS request budget; retry after "
        f"{seconds} s (the Retry-After header)",
        slug="app-budget-exceeded",
        headers={"retry-after": str(seconds)},
    )


# When an app at its live session cap is told to try again: sessions end by their expiry
# or a DELETE, which the service cannot foresee; a short wait keeps retries cheap.
FULL_RETRY_AFTER = 30


def _full(live: int) -> Problem:
    return Problem(
        429,
        f"this app holds {live} live sessions, as many as it may: end one (DELETE) or let "
        f"one expire, then retry (after {FULL_RETRY_AFTER} s, the Retry-After header)",
        slug="too-many-live-sessions",
        headers={"retry-after": str(FULL_RETRY_AFTER)},
    )


class JSON(Response):
    """A response whose content is one of the API's typed models (service.schemas)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return schemas.encode(content)


async def _json_body(request: Request, *, merge_patch: bool = False) -> bytes:
    """The raw body, once its Content-Type says JSON (or, for PATCH, a JSON merge patch)."""
    given = header(request.scope, b"content-type") or ""
    content_type = given.split(";")[0].strip().lower()
    if content_type != "application/json" and not (
        merge_patch and content_type == "application/merge-patch+json"
    ):
        also = " or 'application/merge-patch+json'" if merge_patch else ""
        raise Problem(415, f"send the body as JSON with 'Content-Type: application/json'{also}")
    return await request.body()


def _recordings(request: Request) -> AsyncRecordingStore:
    store: AsyncRecordingStore = request.app.state.recordings
    return store


def _wait_seconds(request: Request) -> int:
    match = _PREFER_WAIT.search(header(request.scope, b"prefer") or "")
    if match is None:
        return 0
    # A preference that makes no sense is ignored (RFC 7240); thousands of digits are
    # never turned into an int.
    digits = match.group(1)
    return 0 if len(digits) > 4 else min(int(digits), MAX_WAIT)


def _idempotency_key(request: Request) -> str | None:
    key = header(request.scope, b"idempotency-key")
    if key is not None and not _IDEMPOTENCY_KEY.match(key):
        raise Problem(
            400,
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
            errors=[FieldError("Idempotency-Key", "invalid")],
        )
    return key


def _session_id(request: Request) -> str:
    session_id: str = request.path_params["session_id"]
    if not _SESSION_ID.match(session_id):
        raise Problem(404, "no session with this id")
    return session_id


async def _existing(request: Request) -> Session:
    """The session named in the path, if it is the calling app's: another app's session is
    404, exactly like one that does not exist."""
    session = await _sessions(request).get_session(_session_id(request))
    if session is None or session.app != _app(request):
        raise Problem(404, "no session with this id")
    return session


def _location(session: Session) -> dict[str, str]:
    return {"location": f"/v1/sessions/{session.id}"}


def _new_session(fields: dict[str, Any], app: str, request_id: str | None) -> Session:
    moment = now()
    return Session(
        id="ses_" + secrets.token_hex(16),
        status=Status.PENDING,
        first_party=fields["first_party"],
        second_party=fields["second_party"],
        created_at=moment,
        updated_at=moment,
        options={k: v for k, v in fields.items() if k not in _NOT_OPTIONS},
        metadata=fields.get("metadata") or {},
        callback_url=fields.get("callback_url"),
        request_id=request_id,
        app=app,
    )


_NOT_OPTIONS = frozenset({"first_party", "second_party", "metadata", "callback_url"})


async def create_session(request: Request) -> Response:
    settings = _settings(request)
    wait = _wait_seconds(request)
    key = _idempotency_key(request)
    fields = decode_create(await _json_body(request), _rules(request))
    app = _app(request)
    session = _new_session(fields, app, _request_id(request))
    message = messages.CREATE_SESSION.message(
        SessionRef(session.id), request_id=session.request_id, app=app
    )
    idempotency = (app, key, fingerprint(fields)) if key else None
    outcome = await _sessions(request).create_session(
        session,
        message,
        idempotency=idempotency,
        idempotency_ttl=settings.idempotency_ttl,
        budget=_budget(request, app),
        max_live=settings.app_max_live_sessions,
    )
    if outcome.result is CreateResult.THROTTLED:
        raise _throttled(outcome.retry_after_ms)
    if outcome.result is CreateResult.FULL:
        raise _full(outcome.live)
    if outcome.result is CreateResult.CONFLICT:
        # The IETF draft on Idempotency-Key: 422 for a key reused with another body.
        # The store creates a session and records its key in one step, so no request
        # with a key is ever seen half done (the draft's 409).
        raise Problem(
            422,
            "this Idempotency-Key was used with a different request body; "
            "use a new key for a new request",
            slug="idempotency-key-reused",
        )
    headers = {"idempotent-replayed": "true"} if outcome.result is CreateResult.REPLAY else {}
    if wait:
        headers["preference-applied"] = f"wait={wait}"
    structlog.contextvars.bind_contextvars(session_id=outcome.session_id)
    # No line of its own: the request's http_request line carries the session_id.
    if outcome.result is CreateResult.CREATED and not wait:
        # Answer with what was just stored: no second round trip on the hot path.
        return JSON(schemas.session(session), status_code=202, headers=_location(session))
    return await _answer(request, outcome.session_id, wait, headers)


async def _answer(
    request: Request,
    session_id: str,
    wait: int,
    headers: dict[str, str],
    status: int | None = None,
) -> Response:
    """The session as it is now (or once it leaves ``pending``, within ``wait`` seconds).

    Unless ``status`` is given: 202 while pending, 201 once live, 200 once failed.
    """
    if wait:
        watcher: SessionWatcher = request.app.state.watcher
        found = await watcher.wait_for(
            session_id, lambda s: s.status is not Status.PENDING, float(wait)
        )
    else:
        found = await _sessions(request).get_session(session_id)
    if found is None:
        raise Problem(503, "the session could not be read back; retry with the same key")
    if status is None:
        status = 202 if found.status is Status.PENDING else 201 if found.status in LIVE else 200
    recordings = await _recordings(request).for_session(session_id)
    resource = schemas.session(found, recordings)
    return JSON(resource, status_code=status, headers=_location(found) | headers)


async def get_session(request: Request) -> Response:
    session = await _existing(request)
    recordings = await _recordings(request).for_session(session.id)
    return JSON(schemas.session(session, recordings))


async def list_sessions(request: Request) -> Response:
    params = request.query_params
    errors = [FieldError(k, "unknown parameter") for k in params if k not in _LIST_PARAMS]
    status = params.get("status")
    if status is not None and status not in Status.__members__.values():
        errors.append(FieldError("status", f"must be one of {', '.join(Status)}"))
    limit_raw = params.get("limit", str(DEFAULT_LIMIT))
    if not _LIMIT.fullmatch(limit_raw) or not 1 <= int(limit_raw) <= MAX_LIMIT:
        errors.append(FieldError("limit", f"must be a whole number from 1 to {MAX_LIMIT}"))
    if errors:
        raise Problem(422, "the query has invalid parameters", errors=errors)
    try:
        page = await _sessions(request).list_sessions(
            _app(request),
            status=Status(status) if status else None,
            limit=int(limit_raw),
            cursor=params.get("cursor"),
        )
    except InvalidCursor as exc:
        raise Problem(422, str(exc), errors=[FieldError("cursor", "invalid")]) from exc
    if page.skipped:
        metrics().unreadable_records.labels("session").inc(page.skipped)
    recordings = await _recordings(request).for_sessions([s.id for s in page.sessions])
    data = [schemas.session(s, recordings.get(s.id, ())) for s in page.sessions]
    return JSON(schemas.SessionList(data=data, next_cursor=page.next_cursor))


_LIST_PARAMS = frozenset({"status", "limit", "cursor"})


async def update_session(request: Request) -> Response:
    """Changes merge with those not yet sent to VTS (last writer wins per field): a burst
    of PATCHes to one session costs one VTS update per ``SESSION_UPDATE_INTERVAL``."""
    session_id = _session_id(request)
    changes = decode_update(await _json_body(request, merge_patch=True))
    app = _app(request)
    request_id = _request_id(request)
    message = messages.UPDATE_SESSION.message(
        SessionRef(session_id), request_id=request_id, app=app
    )
    entry = timeline_entry(
        "update_requested", changes=sorted(changes), request_id=request_id, app=app
    )
    result, detail = await _sessions(request).request_update(
        session_id,
        changes,
        message,
        entry,
        app=app,
        allowed=[Status.PENDING, *LIVE],
        budget=_budget(request, app),
    )
    _refuse(result, detail)
    return await _answer(request, session_id, 0, {}, status=202)


def _refuse(result: UpdateResult | EnqueueResult, detail: str) -> None:
    """The problem for a change the store did not make, if it did not."""
    match result:
        case UpdateResult.MISSING | EnqueueResult.MISSING:
            raise Problem(404, "no session with this id")
        case UpdateResult.THROTTLED | EnqueueResult.THROTTLED:
            raise _throttled(int(detail))
        case UpdateResult.SKIPPED | EnqueueResult.SKIPPED:
            raise Problem(409, f"the session is {detail} and can no longer be changed")


async def delete_session(request: Request) -> Response:
    session_id = _session_id(request)
    app = _app(request)
    request_id = _request_id(request)
    message = messages.EXPIRE_SESSION.message(
        SessionRef(session_id), request_id=request_id, app=app
    )
    entry = timeline_entry("end_requested", request_id=request_id, app=app)
    allowed = [Status.PENDING, *LIVE]
    result, detail = await _sessions(request).enqueue_if_status(
        session_id, allowed, message, entry, app=app, budget=_budget(request, app)
    )
    if result is not EnqueueResult.SKIPPED:
        _refuse(result, detail)
    # Ending a session that has already ended is not an error: the outcome is the same.
    return await _answer(request, session_id, 0, {}, status=202)


async def erase_session(request: Request) -> Response:
    """Erase an ended session's personal data; erasing it again changes nothing."""
    session = await _existing(request)
    request_id = _request_id(request)
    message = messages.DELETE_RECORDING_FILES.message(SessionRef(session.id), request_id=request_id)
    entry = timeline_entry("erased", request_id=request_id)
    masked = (mask(session.first_party), mask(session.second_party))
    result, current = await _erasure(request).erase_session(
        session, message, masked=masked, at=iso(now()) or "", entry=entry
    )
    if result is EraseResult.MISSING:
        raise Problem(404, "no session with this id")
    if result is EraseResult.LIVE:
        raise Problem(
            409, f"the session is {current}; end it (DELETE) first, then erase it",
            slug="session-not-ended",
        )  # fmt: skip
    log.info("session_erased", result=result)
    return await get_session(request)


async def session_events(request: Request) -> Response:
    session = await _existing(request)
    entries = []
    for raw in await _sessions(request).timeline(session.id):
        try:
            entries.append(schemas.timeline_entry(raw))
        except msgspec.ValidationError:
            # One entry written by an older version must not hide the whole timeline.
            metrics().unreadable_records.labels("timeline").inc()
    # Stored in the order things were applied, and VTS's callbacks arrive in any order:
    # shown by when each happened (a stable sort keeps ties as applied).
    entries.sort(key=_happened)
    return JSON(schemas.Timeline(session_id=session.id, data=entries))


def _happened(entry: schemas.TimelineEntry) -> tuple[int, int, int]:
    """When ``entry`` happened, to the second: VTS stamps its events in whole seconds, our
    own entries to the millisecond, so within one second our entries come first (a call
    is never before its session was created) and VTS's events follow by sequence. A VTS
    event's own time counts, else when the entry was written; an unreadable time sorts
    first."""
    vts = entry.event_time is not None
    for text in (entry.event_time, entry.at):
        if text:
            try:
                moment = datetime.fromisoformat(text)
            except ValueError:
                continue
            moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
            return int(moment.timestamp()), int(vts), entry.sequence or 0
    return _EARLIEST, int(vts), entry.sequence or 0


_EARLIEST = int(datetime.min.replace(tzinfo=UTC).timestamp())


SESSION_ID = path_parameter("session_id", {"type": "string", "pattern": _SESSION_ID.pattern})

_OVER_SHARE = problem(
    "the app is over its share of the VTS budget; retry after `Retry-After` seconds",
    "Retry-After",
)
_OVER_SHARE_OR_FULL = problem(
    "the app is over its share of the VTS budget, or holds as many live sessions as it "
    "may; retry after `Retry-After` seconds",
    "Retry-After",
)
_CREATED_HEADERS = ("Location", "Idempotent-Replayed", "Preference-Applied")

_CREATE = Operation(
    id="createSession",
    summary="Ask for a masked connection",
    description="The same Idempotency-Key with the same body answers the same "
    "session (never a second VTS session); with another body it is 422. "
    "A key is recorded with its session in one step, so no request with a key is "
    "ever seen half done.",
    parameters=[
        header_parameter("Idempotency-Key", "1 to 255 visible ASCII characters; per app"),
        header_parameter(
            "Prefer",
            f"`wait=N` (N <= {MAX_WAIT}): answer once the session "
            "has left `pending`, or after N seconds",
        ),
    ],
    body=json_body("CreateSession"),
    responses={
        "200": json_response(
            "Session",
            "the session has already ended (failed, or expired): after Prefer: wait, or replayed",
            *_CREATED_HEADERS,
        ),
        "201": json_response(
            "Session", "active (after Prefer: wait, or replayed)", *_CREATED_HEADERS
        ),
        "202": json_response("Session", "accepted; status pending", *_CREATED_HEADERS),
        **BODY_ERRORS,
        "429": _OVER_SHARE_OR_FULL,
        **COMMON,
    },
)
_LIST = Operation(
    id="listSessions",
    summary="List the app's sessions, newest first",
    parameters=[
        {
            "name": "status",
            "in": "query",
            "schema": {"type": "string", "enum": [s.value for s in Status]},
        },
        {
            "name": "limit",
            "in": "query",
            "schema": {
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_LIMIT,
                "default": DEFAULT_LIMIT,
            },
        },
        {
            "name": "cursor",
            "in": "query",
            "schema": {"type": "string"},
            "description": "`next_cursor` of the previous page",
        },
    ],
    responses={"200": json_response("SessionList", "a page"), "422": INVALID, **COMMON},
)
_GET = Operation(
    id="getSession",
    summary="One session, with its recordings",
    responses={"200": json_response("Session", "the session"), "404": NOT_FOUND, **COMMON},
)
_UPDATE = Operation(
    id="updateSession",
    summary="Change expiry, recording, limits or play URLs",
    description="A JSON merge patch (RFC 7396) of the options; `null` leaves an "
    "option as it is. Parties and create-only options cannot be changed. "
    "`application/json` is accepted too, with the same meaning.",
    # One media type: two with the same schema make generators (openapi-python-client)
    # emit a union of one type with itself that does not import.
    body={
        "required": True,
        "content": {"application/merge-patch+json": {"schema": ref("UpdateSession")}},
    },
    responses={
        "202": json_response("Session", "the session", "Location"),
        **BODY_ERRORS,
        "404": NOT_FOUND,
        "409": problem("the session has ended and can no longer be changed"),
        "429": _OVER_SHARE,
        **COMMON,
    },
)
_END = Operation(
    id="endSession",
    summary="End the session now (ending an ended session changes nothing)",
    responses={
        "202": json_response("Session", "the session", "Location"),
        "404": NOT_FOUND,
        "429": _OVER_SHARE,
        **COMMON,
    },
)
_EVENTS = Operation(
    id="listSessionEvents",
    summary="The session's timeline",
    responses={
        "200": json_response("Timeline", "what happened, oldest first"),
        "404": NOT_FOUND,
        **COMMON,
    },
)
_ERASE = Operation(
    id="eraseSession",
    summary="Erase an ended session's personal data (idempotent)",
    description="The parties keep their last 4 digits; metadata, recordings "
    "and stored callbacks are deleted; counters and the timeline "
    "stay, with an 'erased' entry.",
    responses={
        "200": json_response("Session", "the erased session"),
        "404": NOT_FOUND,
        "409": problem("session not ended yet: DELETE it first"),
        **COMMON,
    },
)


def routes() -> list[ApiRoute]:
    one = "/v1/sessions/{session_id}"
    by_id = [SESSION_ID]
    return [
        ApiRoute("/v1/sessions", Endpoint(create_session), {"POST": _CREATE}),
        ApiRoute("/v1/sessions", list_sessions, {"GET": _LIST}),
        ApiRoute(one, get_session, {"GET": _GET}, parameters=by_id),
        ApiRoute(one, update_session, {"PATCH": _UPDATE}, parameters=by_id),
        ApiRoute(one, delete_session, {"DELETE": _END}, parameters=by_id),
        ApiRoute(one + "/events", session_events, {"GET": _EVENTS}, parameters=by_id),
        ApiRoute(one + "/erase", erase_session, {"POST": _ERASE}, parameters=by_id),
    ]
