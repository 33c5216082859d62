"""The routes VTS calls back: ``/webhooks/vts/session`` and ``/webhooks/vts/recording``.

Each request is parsed (query string, form or JSON), its V3 signature checked against the
public URL we gave VTS, and its event made durable in Redis with its processing queued,
in one round trip shared with concurrent requests; only then is it answered 200. The web
does nothing else with it.

Parsing comes before the signature (the signature covers the parsed fields, not the raw
body), so it is kept cheap for anyone: the body size is limited by the middleware, the
number of fields is counted before a form or query is split, and JSON is decoded straight
into one flat object of strings and bounded numbers, stopping at the first value of any
other shape. Everything else about the event is checked only once the signature holds.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from urllib.parse import unquote_plus

import msgspec
import structlog
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from service import messages, strictjson
from service.metrics import metrics
from service.phones import mask_text
from service.settings import Settings
from service.store import AsyncStoredEvents, IngestResult
from service.vts.callbacks import MAX_FIELDS, EventIds, InvalidEvent, Kind, check
from service.vts.signatures import NONCE_HEADERS, SIGNATURE_HEADERS, verify_v3
from service.web.endpoints import Endpoint
from service.web.operations import ApiRoute, Operation, problem
from service.web.problems import Problem

log = structlog.get_logger(__name__)

_JOB_OF: dict[Kind, messages.Job[messages.EventRef]] = {
    "session": messages.APPLY_EVENT,
    "recording": messages.APPLY_RECORDING_EVENT,
}


_NONCE_NAMES = tuple(name.lower().encode() for name in NONCE_HEADERS)
_SIGNATURE_NAMES = tuple(name.lower().encode() for name in SIGNATURE_HEADERS)
_WANTED = frozenset({b"content-type", *_NONCE_NAMES, *_SIGNATURE_NAMES})


def _headers(request: Request) -> dict[bytes, str]:
    """The first value of each header this route reads, in one pass over the raw headers
    (ASGI servers give names in lower case)."""
    found: dict[bytes, str] = {}
    for name, value in request.scope["headers"]:
        if name in _WANTED and name not in found:
            found[name] = value.decode("latin-1")
    return found


def _first(headers: dict[bytes, str], names: tuple[bytes, ...]) -> str:
    return next((headers[name] for name in names if name in headers), "")


async def _body_params(request: Request, headers: dict[bytes, str]) -> dict[str, str]:
    raw = await request.body()
    media = headers.get(b"content-type", "").split(";")[0].strip().lower()
    if media == "application/json":
        return _json_params(raw)
    if media in ("application/x-www-form-urlencoded", ""):
        try:
            return _form_params(raw.decode(), strict=True)
        except UnicodeDecodeError as exc:
            raise Problem(400, "the form body cannot be read", slug="malformed-body") from exc
    raise Problem(415, "send callbacks form-encoded or as JSON")


def _form_params(text: str, *, strict: bool) -> dict[str, str]:
    """The fields of a query string or form, read as ``parse_qsl`` reads them with blank
    values kept (``+`` is a space, ``%XX`` escapes decoded as UTF-8, undecodable bytes
    replaced; a later field of the same name wins). ``strict``: a field without ``=``,
    an empty one included, is an error. 400 past MAX_FIELDS, counted before splitting.

    Written out rather than calling ``parse_qsl``: most fields need no unquoting, and
    this skips it for them (a third of the form's cost)."""
    if not text:
        return {}
    if text.count("&") >= MAX_FIELDS:
        raise _unreadable()
    params: dict[str, str] = {}
    for field in text.split("&"):
        name, equals, value = field.partition("=")
        if not equals:
            if strict:
                raise _unreadable()
            if not field:
                continue
        params[_unquoted(name)] = _unquoted(value)
    return params


def _unquoted(text: str) -> str:
    if "%" in text or "+" in text:
        return unquote_plus(text, errors="replace")
    return text


def _unreadable() -> Problem:
    detail = f"the fields cannot be read, or there are more than {MAX_FIELDS}"
    return Problem(400, detail, slug="malformed-body")


# Straight into one flat object: the decoder stops at the first value of another shape
# (an array, an object, null), where a generic decode would read the whole body first.
# Like strictjson: no NaN or Infinity, no number beyond a float, no lone surrogate.
_FLAT_OBJECT = msgspec.json.Decoder(dict[str, str | int | float | bool])
_LARGEST = 10**strictjson.MAX_DIGITS


def _json_params(raw: bytes) -> dict[str, str]:
    try:
        body = _FLAT_OBJECT.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        detail = mask_text(f"the body is not one flat JSON object of strings and numbers: {exc}")
        raise Problem(400, detail, slug="malformed-body") from None
    if len(body) > MAX_FIELDS:
        raise Problem(400, f"at most {MAX_FIELDS} fields", slug="malformed-body")
    params: dict[str, str] = {}
    for name, value in body.items():
        if type(value) is int and not -_LARGEST < value < _LARGEST:
            detail = f"numbers are limited to {strictjson.MAX_DIGITS} digits"
            raise Problem(400, detail, slug="malformed-body")
        params[name] = value if isinstance(value, str) else json.dumps(value)
    return params


def _verify(
    request: Request, settings: Settings, params: dict[str, str], headers: dict[bytes, str]
) -> bool:
    """Whether the V3 signature is right for the URL VTS was given (never the Host header),
    with the current VTS token or, during a rotation, the previous one."""
    # From the scope, not request.url: that would rebuild the whole URL from the headers.
    base = settings.public_base_url + request.scope["path"]
    query = request.scope["query_string"].decode("latin-1")
    if request.method == "GET":
        url, signed = base, params
    else:
        url, signed = (f"{base}?{query}" if query else base), params
    nonce = _first(headers, _NONCE_NAMES)
    signatures = _first(headers, _SIGNATURE_NAMES)
    tokens = [settings.vts_auth_token, settings.vts_auth_token_previous]
    return any(
        verify_v3(url, signed, nonce, signatures, token.reveal(), request.method)
        for token in tokens
        if token is not None
    )


async def _ingest(request: Request, kind: Kind) -> Response:
    settings: Settings = request.app.state.settings
    headers = _headers(request)
    if request.method == "GET":
        query = request.scope["query_string"].decode("latin-1")
        params = _form_params(query, strict=False)
    else:
        params = await _body_params(request, headers)
    # "off" exists for development beside the sandbox only (settings refuse it otherwise);
    # any other value enforces.
    if settings.webhook_signature != "off" and not _verify(request, settings, params, headers):
        log.warning("webhook_signature_invalid", kind=kind)
        metrics().webhook_signature_failures.labels(kind).inc()
        raise Problem(401, "missing or invalid X-VTS-Signature-V3")
    try:
        event = check(kind, params)
    except InvalidEvent as exc:
        raise Problem(400, str(exc), slug="invalid-event") from None
    events: AsyncStoredEvents = request.app.state.events
    ids = request.app.state.event_ids.all(event)
    # The VTS session id rides along (an id, not a number): the worker then reads the
    # event and finds our session in one round trip.
    message = _JOB_OF[kind].message(messages.EventRef(ids[0], event.session_uuid))
    nonce = _first(headers, _NONCE_NAMES) or None
    result = await events.ingest_webhook(
        event, ids, message, nonce=nonce, received_ms=int(time.time() * 1000)
    )
    if result is IngestResult.REPLAYED:
        log.warning("webhook_nonce_replayed", kind=kind)
        raise Problem(401, "this nonce was already used for another callback")
    if result is IngestResult.DROPPED:
        # Answered as taken: VTS has nothing to retry, and the session's data is gone.
        log.info("webhook_dropped_session_gone", kind=kind, vts_session_uuid=event.session_uuid)
    return PlainTextResponse("OK")


def event_ids(settings: Settings) -> EventIds:
    """The ids callbacks are stored under, from the VTS token (and the previous one)."""
    previous = settings.vts_auth_token_previous
    return EventIds(settings.vts_auth_token.reveal(), previous.reveal() if previous else None)


async def session_events(request: Request) -> Response:
    return await _ingest(request, "session")


async def recording_events(request: Request) -> Response:
    return await _ingest(request, "recording")


def _operations(operation_id: str, summary: str) -> dict[str, Operation]:
    """A callback route's: V3-signed, a form or JSON body (POST) or a query (GET)."""
    signature = [
        {"name": name, "in": "header", "schema": {"type": "string"}}
        for name in (SIGNATURE_HEADERS[0], NONCE_HEADERS[0])
    ]
    responses = {
        "200": {"description": "stored and queued (or a duplicate, ignored)"},
        "400": problem("no EventName or SessionUUID, or a malformed field"),
        "401": problem("bad or missing signature, or a replayed nonce"),
        "413": problem("body over 64 KiB"),
        "415": problem("neither form-encoded nor JSON"),
        "503": problem("Redis cannot take the event; retry", "Retry-After"),
    }
    fields = {"type": "object", "additionalProperties": {"type": ["string", "number"]}}
    body = {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {"schema": fields},
            "application/json": {"schema": fields},
        },
    }
    query = Operation(
        id=f"{operation_id}ByQuery",
        summary=summary,
        parameters=signature,
        responses=responses,
        internal=True,
    )
    return {"GET": query, "POST": replace(query, id=operation_id, body=body)}


def routes() -> list[ApiRoute]:
    return [
        ApiRoute(
            "/webhooks/vts/session",
            Endpoint(session_events),
            _operations("receiveVtsSessionEvent", "VTS session events (callback_url)"),
        ),
        ApiRoute(
            "/webhooks/vts/recording",
            Endpoint(recording_events),
            _operations(
                "receiveVtsRecordingEvent", "VTS recording events (recording_callback_url)"
            ),
        ),
    ]
