"""The OpenAPI 3.1 document for ``/openapi.json``: every route and schema of the app API."""

from __future__ import annotations

from functools import cache
from typing import Any

from service.models import CREATE_OPTIONS, UPDATE_OPTIONS, Status
from service.web.validation import INT_BOUNDS, MAX_URL

_URL = {"type": "string", "format": "uri", "maxLength": MAX_URL}
_PHONE = {"type": "string", "description": "E.164: +, country code, number", "maxLength": 32}
_OPTION_SCHEMAS: dict[str, dict[str, Any]] = {
    "record": {"type": "boolean"},
    "record_file_format": {"type": "string", "enum": ["mp3", "wav"]},
    **{
        name: {"type": "integer", "minimum": low, "maximum": high, "description": "seconds"}
        for name, (low, high) in INT_BOUNDS.items()
    },
    "initiate_call_to_first_party": {"type": "boolean"},
    "first_party_play_url": _URL,
    "second_party_play_url": _URL,
}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema``, or null: how a session shows an option the app did not set."""
    return {**schema, "type": [schema["type"], "null"]}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/problem+json": {"schema": _ref("Problem")}},
    }


_OVER_SHARE = _problem(
    "the app is over its share of the VTS budget; retry after `Retry-After` seconds"
)
_ERRORS = {
    "401": _problem("missing or invalid API key"),
    "422": _problem("invalid fields; one entry per field in `errors`"),
    "503": _problem("storage unavailable; retry"),
}
_SESSION_ID = {
    "name": "session_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^ses_[0-9a-f]{32}$"},
}


def _schemas() -> dict[str, Any]:
    nullable_string = {"type": ["string", "null"]}
    return {
        "CreateSession": {
            "type": "object",
            "additionalProperties": False,
            "required": ["first_party", "second_party"],
            "properties": {
                "first_party": _PHONE,
                "second_party": _PHONE,
                **{name: _OPTION_SCHEMAS[name] for name in CREATE_OPTIONS},
                "callback_url": _URL,
                "metadata": {"type": "object", "description": "at most 2 KiB of JSON"},
            },
            "examples": [
                {"first_party": "+14155552671", "second_party": "+14155552672"},
                {
                    "first_party": "+447911123456",
                    "second_party": "+14155552672",
                    "record": True,
                    "session_expiry": 600,
                    "metadata": {"ride": "r-1"},
                },
            ],
        },
        "UpdateSession": {
            "type": "object",
            "additionalProperties": False,
            "minProperties": 1,
            "properties": {name: _OPTION_SCHEMAS[name] for name in UPDATE_OPTIONS},
            "examples": [{"session_expiry": 900}],
        },
        "Session": {
            "type": "object",
            "properties": {
                "id": {"type": "string"},
                "status": {"type": "string", "enum": [s.value for s in Status]},
                "vts_session_uuid": nullable_string,
                "virtual_number": nullable_string,
                "first_party": _PHONE,
                "second_party": _PHONE,
                **{name: _nullable(_OPTION_SCHEMAS[name]) for name in CREATE_OPTIONS},
                "callback_url": nullable_string,
                "created_at": {"type": "string", "format": "date-time"},
                "updated_at": {"type": "string", "format": "date-time"},
                "expires_at": nullable_string,
                "last_interaction_at": nullable_string,
                "interaction_count": {"type": "integer"},
                "call_count": {"type": "integer"},
                "billed_duration": {"type": "integer", "description": "seconds"},
                "call_amount": {"type": "string", "description": "decimal"},
                "recordings": {"type": "array", "items": {"type": "object"}},
                "error": {
                    "type": ["object", "null"],
                    "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                },
                "metadata": {"type": "object"},
            },
        },
        "SessionList": {
            "type": "object",
            "properties": {
                "data": {"type": "array", "items": _ref("Session")},
                "next_cursor": nullable_string,
            },
        },
        "Timeline": {
            "type": "object",
            "properties": {
                "session_id": {"type": "string"},
                "data": {"type": "array", "items": {"type": "object"}},
            },
        },
        "Problem": {
            "type": "object",
            "properties": {
                "type": {"type": "string"},
                "title": {"type": "string"},
                "status": {"type": "integer"},
                "detail": {"type": "string"},
                "errors": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
                    },
                },
            },
        },
    }


_RECORDING_ID = {
    "name": "recording_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^rec_[0-9a-f]{32}$"},
}

_WEBHOOKS = {
    "/webhooks/vts/session": "VTS session events (callback_url)",
    "/webhooks/vts/recording": "VTS recording events (recording_callback_url)",
}


def _webhook(summary: str) -> dict[str, Any]:
    """A callback route for VTS: V3-signed, form or JSON body (POST) or query (GET)."""
    operation = {
        "summary": summary,
        "security": [],
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
            "503": _problem("Redis cannot take the event; retry"),
        },
    }
    return {"get": operation, "post": operation}


def _paths() -> dict[str, Any]:
    session = _json(_ref("Session"), "the session")
    return {
        "/v1/sessions": {
            "post": {
                "summary": "Ask for a masked connection",
                "parameters": [
                    {"name": "Idempotency-Key", "in": "header", "schema": {"type": "string"}},
                    {"name": "Prefer", "in": "header", "schema": {"type": "string"},
                     "description": "wait=N (N <= 30): answer once the session is active"},
                ],
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": _ref("CreateSession")}}},
                "responses": {
                    "201": _json(_ref("Session"), "active (after Prefer: wait)"),
                    "202": _json(_ref("Session"), "accepted; status pending"),
                    "400": _problem("malformed JSON"),
                    "409": _problem("Idempotency-Key reused with another body"),
                    "413": _problem("body over 64 KiB"),
                    "415": _problem("body is not JSON"),
                    "429": _OVER_SHARE,
                    **_ERRORS,
                },
            },
            "get": {
                "summary": "List sessions, newest first",
                "parameters": [
                    {"name": "status", "in": "query",
                     "schema": {"type": "string", "enum": [s.value for s in Status]}},
                    {"name": "limit", "in": "query",
                     "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}},
                    {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": {"200": _json(_ref("SessionList"), "a page"), **_ERRORS},
            },
        },
        "/v1/sessions/{session_id}": {
            "parameters": [_SESSION_ID],
            "get": {"summary": "One session", "responses": {
                "200": session, "404": _problem("unknown session, or another app's"), **_ERRORS}},
            "patch": {
                "summary": "Change expiry, recording, limits or play URLs",
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": _ref("UpdateSession")}}},
                "responses": {"202": session, "400": _problem("malformed JSON"),
                              "404": _problem("unknown session, or another app's"),
                              "409": _problem("session already ended"),
                              "413": _problem("body over 64 KiB"),
                              "415": _problem("body is not JSON"),
                              "429": _OVER_SHARE, **_ERRORS},
            },
            "delete": {"summary": "End the session now", "responses": {
                "202": session, "404": _problem("unknown session, or another app's"),
                "429": _OVER_SHARE, **_ERRORS}},
        },
        "/v1/sessions/{session_id}/events": {
            "parameters": [_SESSION_ID],
            "get": {"summary": "The session's timeline", "responses": {
                "200": _json(_ref("Timeline"), "what happened, oldest first"),
                "404": _problem("unknown session, or another app's"), **_ERRORS}},
        },
        "/v1/sessions/{session_id}/erase": {
            "parameters": [_SESSION_ID],
            "post": {
                "summary": "Erase an ended session's personal data (idempotent)",
                "description": "The parties keep their last 4 digits; metadata, recordings "
                               "and stored callbacks are deleted; counters and the timeline "
                               "stay, with an 'erased' entry.",
                "responses": {"200": session, "404": _problem("unknown session"),
                              "409": _problem("session not ended yet: DELETE it first"),
                              **_ERRORS},
            },
        },
        "/v1/recordings/{recording_id}": {
            "parameters": [_RECORDING_ID],
            "get": {
                "summary": "A stored recording's audio (Range requests supported)",
                "responses": {
                    "200": {"description": "the file", "content": {
                        "audio/mpeg": {}, "audio/wav": {}}},
                    "206": {"description": "the requested byte range"},
                    "304": {"description": "not modified (If-None-Match)"},
                    "404": _problem("unknown, pending or failed recording, or another app's"),
                    "416": _problem("range outside the file"),
                    **_ERRORS,
                },
            },
            "delete": {
                "summary": "Delete a recording (its file is removed by a worker)",
                "responses": {"204": {"description": "deleted"},
                              "404": _problem("unknown or already deleted recording"),
                              **_ERRORS},
            },
        },
        **{path: _webhook(summary) for path, summary in _WEBHOOKS.items()},
        "/metrics": {"get": {"summary": "Prometheus metrics of this process",
                             "security": [],
                             "responses": {"200": {"description": "text exposition format"}}}},
        "/metrics/cluster": {"get": {
            "summary": "Prometheus metrics Redis holds for all processes: scrape once",
            "security": [],
            "responses": {"200": {"description": "text exposition format"}}}},
        "/healthz": {"get": {"summary": "Liveness", "security": [],
                             "responses": {"200": {"description": "alive"}}}},
        "/readyz": {"get": {"summary": "Readiness: Redis reachable", "security": [],
                            "responses": {"200": {"description": "ready"},
                                          "503": _problem("Redis unreachable")}}},
    }  # fmt: skip


@cache
def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "Masking service", "version": "1.0.0"},
        "security": [{"bearer": []}],
        "paths": _paths(),
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
