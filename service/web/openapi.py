"""The OpenAPI 3.1 documents: :func:`document` for apps (``/openapi.json``) and
:func:`internal_document` for VTS's callbacks and the metrics (``/openapi-internal.json``).

Their schemas are generated from the typed models the web decodes and encodes with
(:mod:`service.schemas`), so the documents cannot drift from what is answered.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import msgspec

from service import schemas
from service.models import Status
from service.web import problems

_MODELS = (
    schemas.CreateSession,
    schemas.UpdateSession,
    schemas.Session,
    schemas.SessionList,
    schemas.Timeline,
    schemas.Problem,
    schemas.Notification,
    schemas.NotificationList,
    schemas.Recover,
    schemas.Recovery,
    schemas.PingRequest,
    schemas.Ping,
    schemas.PingNotification,
)


@cache
def _components() -> dict[str, Any]:
    _, components = msgspec.json.schema_components(
        _MODELS, ref_template="#/components/schemas/{name}"
    )
    components["UpdateSession"]["minProperties"] = 1
    components["CreateSession"]["examples"] = [
        {"first_party": "+14155552671", "second_party": "+14155552672"},
        {
            "first_party": "+447911123456",
            "second_party": "+14155552672",
            "record": True,
            "session_expiry": 600,
            "metadata": {"ride": "r-1"},
        },
    ]
    components["UpdateSession"]["examples"] = [{"session_expiry": 900}]
    return components


def _ref(name: str, kind: str = "schemas") -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


_HEADERS: dict[str, dict[str, Any]] = {
    "X-Request-ID": {
        "description": "the request's id (yours if it was sane, else a new one): quote it "
        "to operators, every log line of the request carries it",
        "schema": {"type": "string"},
    },
    "Location": {"description": "the session's URL", "schema": {"type": "string"}},
    "Idempotent-Replayed": {
        "description": "`true` when this answers an earlier request with the same "
        "Idempotency-Key and body",
        "schema": {"type": "string", "enum": ["true"]},
    },
    "Preference-Applied": {
        "description": "`wait=N` when `Prefer: wait=N` was honoured (N capped at 30)",
        "schema": {"type": "string", "pattern": "^wait=[0-9]+$"},
    },
    "Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}},
    "WWW-Authenticate": {"schema": {"type": "string"}},
    "ETag": {"description": "the file's sha256, quoted", "schema": {"type": "string"}},
    "Accept-Ranges": {"schema": {"type": "string", "enum": ["bytes"]}},
    "Content-Range": {
        "description": "`bytes first-last/size` (206), `bytes */size` (416)",
        "schema": {"type": "string"},
    },
    "Content-Length": {"schema": {"type": "integer"}},
    "Cache-Control": {"schema": {"type": "string"}},
}


def _headers(*names: str) -> dict[str, Any]:
    return {name: _ref(name, "headers") for name in ("X-Request-ID", *names)}


def _json(schema: str, description: str, *headers: str) -> dict[str, Any]:
    return {
        "description": description,
        "headers": _headers(*headers),
        "content": {"application/json": {"schema": _ref(schema)}},
    }


def _problem(description: str, *headers: str) -> dict[str, Any]:
    return {
        "description": description,
        "headers": _headers(*headers),
        "content": {"application/problem+json": {"schema": _ref("Problem")}},
    }


_COMMON = {
    "401": _problem("missing or invalid API key", "WWW-Authenticate"),
    "503": _problem("storage unavailable; retry", "Retry-After"),
}
_INVALID = _problem("invalid fields or parameters; one entry per field in `errors`")
_NOT_FOUND = _problem("unknown id, or another app's")
_OVER_SHARE = _problem(
    "the app is over its share of the VTS budget; retry after `Retry-After` seconds",
    "Retry-After",
)
_OVER_SHARE_OR_FULL = _problem(
    "the app is over its share of the VTS budget, or holds as many live sessions as it "
    "may; retry after `Retry-After` seconds",
    "Retry-After",
)
_BODY_ERRORS = {
    "400": _problem("the body is not JSON (or not within bounds: depth, number size, UTF-8)"),
    "413": _problem("body over 64 KiB"),
    "415": _problem("the Content-Type is not JSON"),
    "422": _INVALID,
}
_SESSION_ID = {
    "name": "session_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^ses_[0-9a-f]{32}$"},
}
_RECORDING_ID = {
    "name": "recording_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^rec_[0-9a-f]{32}$"},
}
_SESSION_HEADERS = ("Location",)
_CREATED_HEADERS = ("Location", "Idempotent-Replayed", "Preference-Applied")


def _header_parameter(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "header", "schema": {"type": "string"}, "description": description}


def _create() -> dict[str, Any]:
    return {
        "operationId": "createSession",
        "summary": "Ask for a masked connection",
        "description": "The same Idempotency-Key with the same body answers the same "
        "session (never a second VTS session); with another body it is 422. "
        "A key is recorded with its session in one step, so no request with a key is "
        "ever seen half done.",
        "parameters": [
            _header_parameter("Idempotency-Key", "1 to 255 visible ASCII characters; per app"),
            _header_parameter(
                "Prefer",
                "`wait=N` (N <= 30): answer once the session "
                "has left `pending`, or after N seconds",
            ),
        ],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _ref("CreateSession")}},
        },
        "responses": {
            "200": _json(
                "Session",
                "the session has already ended (failed, or "
                "expired): after Prefer: wait, or replayed",
                *_CREATED_HEADERS,
            ),
            "201": _json("Session", "active (after Prefer: wait, or replayed)", *_CREATED_HEADERS),
            "202": _json("Session", "accepted; status pending", *_CREATED_HEADERS),
            **_BODY_ERRORS,
            "429": _OVER_SHARE_OR_FULL,
            **_COMMON,
        },
    }


def _list() -> dict[str, Any]:
    return {
        "operationId": "listSessions",
        "summary": "List the app's sessions, newest first",
        "parameters": [
            {
                "name": "status",
                "in": "query",
                "schema": {"type": "string", "enum": [s.value for s in Status]},
            },
            {
                "name": "limit",
                "in": "query",
                "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
            },
            {
                "name": "cursor",
                "in": "query",
                "schema": {"type": "string"},
                "description": "`next_cursor` of the previous page",
            },
        ],
        "responses": {"200": _json("SessionList", "a page"), "422": _INVALID, **_COMMON},
    }


def _one_session() -> dict[str, Any]:
    session = _json("Session", "the session", *_SESSION_HEADERS)
    return {
        "parameters": [_SESSION_ID],
        "get": {
            "operationId": "getSession",
            "summary": "One session, with its recordings",
            "responses": {"200": _json("Session", "the session"), "404": _NOT_FOUND, **_COMMON},
        },
        "patch": {
            "operationId": "updateSession",
            "summary": "Change expiry, recording, limits or play URLs",
            "description": "A JSON merge patch (RFC 7396) of the options; `null` leaves an "
            "option as it is. Parties and create-only options cannot be changed. "
            "`application/json` is accepted too, with the same meaning.",
            # One media type: two with the same schema make generators (openapi-python-client)
            # emit a union of one type with itself that does not import.
            "requestBody": {
                "required": True,
                "content": {"application/merge-patch+json": {"schema": _ref("UpdateSession")}},
            },
            "responses": {
                "202": session,
                **_BODY_ERRORS,
                "404": _NOT_FOUND,
                "409": _problem("the session has ended and can no longer be changed"),
                "429": _OVER_SHARE,
                **_COMMON,
            },
        },
        "delete": {
            "operationId": "endSession",
            "summary": "End the session now (ending an ended session changes nothing)",
            "responses": {"202": session, "404": _NOT_FOUND, "429": _OVER_SHARE, **_COMMON},
        },
    }


def _recording_get(operation_id: str, summary: str) -> dict[str, Any]:
    # "binary" for generators of OpenAPI 3.0 lineage; contentMediaType as 3.1 has it.
    def audio(media: str) -> dict[str, Any]:
        return {"schema": {"type": "string", "format": "binary", "contentMediaType": media}}

    # application/octet-stream: what a file of unknown format is served as, and the
    # binary type generators map to bytes (they skip a response of audio types alone).
    content = {
        "audio/mpeg": audio("audio/mpeg"),
        "audio/wav": audio("audio/wav"),
        "application/octet-stream": audio("application/octet-stream"),
    }

    file_headers = ("ETag", "Accept-Ranges", "Cache-Control", "Content-Length")
    return {
        "operationId": operation_id,
        "summary": summary,
        "parameters": [
            _header_parameter(
                "Range",
                "one range, `bytes=first-last`, `bytes=first-` or "
                "`bytes=-suffix`; several are answered with the whole file",
            ),
            _header_parameter(
                "If-None-Match", "an ETag (or a list, or `*`): 304 if it names this file"
            ),
            _header_parameter(
                "If-Range", "the ETag: the range is served only if the file is still this one"
            ),
        ],
        "responses": {
            "200": {
                "description": "the file",
                "headers": _headers(*file_headers),
                "content": content,
            },
            "206": {
                "description": "the requested byte range",
                "headers": _headers(*file_headers, "Content-Range"),
                "content": content,
            },
            "304": {
                "description": "not modified (If-None-Match)",
                "headers": _headers("ETag", "Accept-Ranges", "Cache-Control"),
            },
            "404": _problem("unknown, pending or failed recording, or another app's"),
            "416": _problem("the range is outside the file", "Content-Range"),
            **_COMMON,
        },
    }


def _probe(operation_id: str, summary: str, extra: dict[str, Any]) -> dict[str, Any]:
    body = {"type": "object", "properties": {"status": {"type": "string"}}, "required": ["status"]}
    ok = {
        "description": "ok",
        "headers": _headers(),
        "content": {"application/json": {"schema": body}},
    }
    return {
        "get": {
            "operationId": operation_id,
            "summary": summary,
            "security": [],
            "responses": {"200": ok, **extra},
        }
    }


def _paths() -> dict[str, Any]:
    return {
        "/v1/sessions": {"post": _create(), "get": _list()},
        "/v1/sessions/{session_id}": _one_session(),
        "/v1/sessions/{session_id}/events": {
            "parameters": [_SESSION_ID],
            "get": {
                "operationId": "listSessionEvents",
                "summary": "The session's timeline",
                "responses": {
                    "200": _json("Timeline", "what happened, oldest first"),
                    "404": _NOT_FOUND,
                    **_COMMON,
                },
            },
        },
        "/v1/sessions/{session_id}/erase": {
            "parameters": [_SESSION_ID],
            "post": {
                "operationId": "eraseSession",
                "summary": "Erase an ended session's personal data (idempotent)",
                "description": "The parties keep their last 4 digits; metadata, recordings "
                "and stored callbacks are deleted; counters and the timeline "
                "stay, with an 'erased' entry.",
                "responses": {
                    "200": _json("Session", "the erased session"),
                    "404": _NOT_FOUND,
                    "409": _problem("session not ended yet: DELETE it first"),
                    **_COMMON,
                },
            },
        },
        **_notification_paths(),
        "/v1/recordings/{recording_id}": {
            "parameters": [_RECORDING_ID],
            "get": _recording_get("getRecording", "A stored recording's audio"),
            "head": _recording_get("getRecordingHead", "A stored recording's headers"),
            "delete": {
                "operationId": "deleteRecording",
                "summary": "Delete a recording (its file is removed by a worker)",
                "responses": {
                    "204": {"description": "deleted", "headers": _headers()},
                    "404": _NOT_FOUND,
                    **_COMMON,
                },
            },
        },
        "/problems/{name}": {
            "get": {
                "operationId": "getProblemType",
                "summary": "What a problem type means: each problem's `type` is this URL",
                "security": [],
                "parameters": [
                    {
                        "name": "name",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "enum": sorted(problems.TYPES)},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "a short page for people",
                        "headers": _headers(),
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    },
                    "404": _problem("no such problem type"),
                },
            }
        },
        "/healthz": _probe("getHealth", "Liveness", {}),
        "/readyz": _probe(
            "getReadiness", "Readiness: Redis reachable", {"503": _problem("Redis unreachable")}
        ),
    }


_NOTIFICATION_ID = {
    "name": "notification_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^ses_[0-9a-f]{32}\\.[A-Za-z0-9_.:-]{1,200}$"},
    "description": "the notification's id: its `webhook-id`",
}


def _json_body(schema: str, *, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": _ref(schema)}}}


def _notification_paths() -> dict[str, Any]:
    return {
        "/v1/sessions/{session_id}/notifications": {
            "parameters": [_SESSION_ID],
            "get": {
                "operationId": "listSessionNotifications",
                "summary": "The notifications sent to the app for this session",
                "description": "Each with its state and every attempt (time, status or "
                "error, latency), oldest first.",
                "responses": {
                    "200": _json("NotificationList", "the delivery log"),
                    "404": _NOT_FOUND,
                    **_COMMON,
                },
            },
        },
        "/v1/notifications/{notification_id}/redeliver": {
            "parameters": [_NOTIFICATION_ID],
            "post": {
                "operationId": "redeliverNotification",
                "summary": "Send one notification again now, with the same webhook-id",
                "description": "Any state, delivered included: the record becomes `pending` "
                "with an attempt due now, and the retry schedule starts again.",
                "responses": {
                    "202": _json("NotificationRecord", "queued"),
                    "404": _NOT_FOUND,
                    **_COMMON,
                },
            },
        },
        "/v1/notifications/recover": {
            "post": {
                "operationId": "recoverNotifications",
                "summary": "Send again every notification not delivered since a time",
                "description": "Every `pending` or `failed` notification of the app created "
                "at or after `since` gets an attempt now and the retry schedule again.",
                "requestBody": _json_body("Recover"),
                "responses": {"202": _json("Recovery", "queued"), **_BODY_ERRORS, **_COMMON},
            },
        },
        "/v1/notifications/ping": {
            "post": {
                "operationId": "pingEndpoint",
                "summary": "Send a signed `ping` now and answer with its attempt",
                "description": "To `url`, or by default the app's endpoint (the callback URL "
                "of its latest notification), under the same egress policy as every "
                "notification. A 2xx enables the endpoint again if it was disabled.",
                "requestBody": _json_body("PingRequest", required=False),
                "responses": {
                    "200": _json("Ping", "the attempt, whatever the endpoint answered"),
                    **_BODY_ERRORS,
                    "504": _problem("the attempt did not finish in time; try again"),
                    **_COMMON,
                },
            },
        },
    }


def _webhooks() -> dict[str, Any]:
    """What an app's ``callback_url`` receives (OpenAPI 3.1 ``webhooks``)."""
    signed = [
        _header_parameter("webhook-id", "the notification's id: the same on every retry"),
        _header_parameter("webhook-timestamp", "seconds since the epoch"),
        _header_parameter(
            "webhook-signature",
            "`v1,<base64 HMAC-SHA256>`, one per active "
            "secret of the app, separated by spaces (Standard Webhooks)",
        ),
    ]
    return {
        "sessionNotification": {
            "post": {
                "operationId": "receiveSessionNotification",
                "summary": "A session changed: created (active), failed, call ended, "
                "recording stored, expired",
                "description": "Sent to the session's `callback_url` (https, public "
                "addresses only), signed with the app's own secret, retried over about a "
                "day (NOTIFICATION_RETRY_SCHEDULE; a 429's or 503's Retry-After is "
                "honoured) until a 2xx; `410 Gone` disables the endpoint. The body never "
                "holds the parties' numbers.",
                "security": [],
                "parameters": signed,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("Notification")}},
                },
                "responses": {"2XX": {"description": "received; anything else is retried"}},
            }
        },
        "ping": {
            "post": {
                "operationId": "receivePing",
                "summary": "A test of the endpoint, asked for by the app "
                "(`POST /v1/notifications/ping`)",
                "description": "Signed like every notification; it tells of nothing. "
                "Answering 2xx enables the endpoint again if it was disabled.",
                "security": [],
                "parameters": signed,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("PingNotification")}},
                },
                "responses": {"2XX": {"description": "received"}},
            }
        },
    }


_PROBLEM_TYPES = (
    "Every problem's `type` is an absolute URL, `PUBLIC_BASE_URL/problems/<name>`: match "
    "on the name, the same in every deployment; the URL serves a page saying what the "
    "problem means (`getProblemType`)."
)


@cache
def document() -> dict[str, Any]:
    """The app-facing document, served at ``/openapi.json``."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Masking service",
            "version": "1.0.0",
            "description": "Masked phone connections through VTS. " + _PROBLEM_TYPES,
        },
        "security": [{"bearer": []}],
        "paths": _paths(),
        "webhooks": _webhooks(),
        "components": {
            "schemas": _components(),
            "headers": _HEADERS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _vts_callback(operation_id: str, summary: str) -> dict[str, Any]:
    """A callback route for VTS: V3-signed, form or JSON body (POST) or query (GET)."""
    fields = {"type": "object", "additionalProperties": {"type": ["string", "number"]}}
    operation = {
        "summary": summary,
        "parameters": [
            {"name": "X-VTS-Signature-V3", "in": "header", "schema": {"type": "string"}},
            {"name": "X-VTS-Signature-V3-Nonce", "in": "header", "schema": {"type": "string"}},
        ],
        "responses": {
            "200": {"description": "stored and queued (or a duplicate, ignored)"},
            "400": _problem("no EventName or SessionUUID, or a malformed field"),
            "401": _problem("bad or missing signature, or a replayed nonce"),
            "413": _problem("body over 64 KiB"),
            "415": _problem("neither form-encoded nor JSON"),
            "503": _problem("Redis cannot take the event; retry", "Retry-After"),
        },
    }
    body = {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {"schema": fields},
            "application/json": {"schema": fields},
        },
    }
    return {
        "get": {**operation, "operationId": f"{operation_id}ByQuery"},
        "post": {**operation, "operationId": operation_id, "requestBody": body},
    }


def _metrics(operation_id: str, summary: str) -> dict[str, Any]:
    text = {"text/plain": {"schema": {"type": "string"}}}
    return {
        "get": {
            "operationId": operation_id,
            "summary": summary,
            "responses": {
                "200": {"description": "Prometheus text exposition format", "content": text}
            },
        }
    }


@cache
def internal_document() -> dict[str, Any]:
    """What VTS and Prometheus call: served at ``/openapi-internal.json``."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Masking service: VTS callbacks and metrics",
            "version": "1.0.0",
            "description": "Not for apps. VTS callbacks are authenticated by their V3 "
            "signature against PUBLIC_BASE_URL. " + _PROBLEM_TYPES,
        },
        "paths": {
            "/webhooks/vts/session": _vts_callback(
                "receiveVtsSessionEvent", "VTS session events (callback_url)"
            ),
            "/webhooks/vts/recording": _vts_callback(
                "receiveVtsRecordingEvent", "VTS recording events (recording_callback_url)"
            ),
            "/metrics": _metrics("getMetrics", "Prometheus metrics of this process"),
            "/metrics/cluster": _metrics(
                "getClusterMetrics",
                "Prometheus metrics Redis holds for all processes: scrape once per cluster",
            ),
        },
        "components": {
            "schemas": {
                "Problem": _components()["Problem"],
                "FieldProblem": _components()["FieldProblem"],
            },
            "headers": _HEADERS,
        },
    }
