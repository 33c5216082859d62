"""``GET /v1/recordings/{id}``: a stored recording, streamed from our storage; ``DELETE``.

Conditional and range requests as RFC 9110 has them: ``ETag`` = the sha256;
``If-None-Match`` with one tag, a list, weak tags (compared weakly) or ``*`` → 304;
one byte range per request → 206 (several are answered with the whole file, as HTTP
allows), a range outside the file → 416, an invalid ``Range`` header is ignored (200), and
so is any ``Range`` under an ``If-Range`` that does not name the current file. A recording
that is unknown, still pending or failed is 404: there is nothing to serve.
"""

from __future__ import annotations

import re
from typing import Any

import structlog
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from service import messages
from service.errors import StorageUnavailable
from service.recordings import Recording, RecordingStatus
from service.storage import NotStored, Storage
from service.store import AsyncRecordingStore, AsyncSessions, DeleteResult, timeline_entry
from service.web.middleware import header
from service.web.operations import (
    COMMON,
    NOT_FOUND,
    ApiRoute,
    Operation,
    header_parameter,
    headers,
    path_parameter,
    problem,
)
from service.web.problems import Problem

_ID = re.compile(r"^rec_[0-9a-f]{32}$")
_RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)", re.IGNORECASE)
# Larger than any file: longer digit strings are never turned into an int.
_HUGE = 10**18


def _position(digits: str) -> int:
    return int(digits) if len(digits) < 19 else _HUGE


def _matches_any(header: str, etag: str) -> bool:
    """Whether an ``If-None-Match`` value names ``etag`` (weak comparison) or is ``*``."""
    if header.strip() == "*":
        return True
    # Split and compared, never searched with a pattern: a header is the client's, and
    # each member costs its own length once however much space surrounds it.
    for member in header.split(","):
        tag = member.strip(" \t")
        if tag.removeprefix("W/") == etag:
            return True
    return False


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive (first, last) byte the ``Range`` header asks for; None for all
    (no header, several ranges, or an invalid one, which RFC 9110 says to ignore)."""
    match = _RANGE.fullmatch(header.strip()) if header else None
    if match is None or not (match.group(1) or match.group(2)):
        return None
    first, last = match.group(1), match.group(2)
    if first and last and _position(last) < _position(first):
        return None  # invalid: ignored
    if not first:  # the last N bytes
        start, end = max(0, size - _position(last)), size - 1
        if _position(last) == 0:
            start = size  # a suffix of no bytes cannot be satisfied
    else:
        start = _position(first)
        end = min(_position(last), size - 1) if last else size - 1
    if start >= size or start > end:
        raise Problem(
            416, "the requested range is outside the file",
            headers={"content-range": f"bytes */{size}"},
        )  # fmt: skip
    return start, end


async def _owned(request: Request) -> Recording | None:
    """The recording named in the path, if its session is the calling app's: another
    app's recording is None, exactly like one that does not exist."""
    rec_id = request.path_params["recording_id"]
    store: AsyncRecordingStore = request.app.state.recordings
    recording = await store.get(rec_id) if _ID.match(rec_id) else None
    sessions: AsyncSessions = request.app.state.sessions
    if recording is None or await sessions.owner(recording.session_id) != request.state.app:
        return None
    return recording


async def _stored(request: Request) -> Recording:
    recording = await _owned(request)
    if recording is None or recording.status is not RecordingStatus.STORED:
        raise Problem(404, "no stored recording with this id")
    return recording


async def get_recording(request: Request) -> Response:
    recording = await _stored(request)
    size, etag = recording.size or 0, f'"{recording.sha256}"'
    headers = {"etag": etag, "accept-ranges": "bytes", "cache-control": "private, max-age=3600"}
    if _matches_any(header(request.scope, b"if-none-match") or "", etag):
        return Response(status_code=304, headers=headers)
    if_range = header(request.scope, b"if-range")
    ranged = if_range is None or if_range.strip() == etag  # If-Range compares strongly
    wanted = _byte_range(header(request.scope, b"range"), size) if ranged else None
    start, end = wanted or (0, size - 1)
    headers["content-length"] = str(end - start + 1)
    if wanted is not None:
        headers["content-range"] = f"bytes {start}-{end}/{size}"
    storage: Storage = request.app.state.storage
    media_type = recording.content_type or "application/octet-stream"
    try:
        # An object store answers over the network: not on the event loop.
        if request.method == "HEAD":
            # Whether the file is there, by its size (a stat, an S3 HEAD): a reader would
            # open the file, or GET the object, for nothing.
            await run_in_threadpool(storage.size, recording.stored_name)
            status = 206 if wanted else 200
            return Response(status_code=status, headers=headers, media_type=media_type)
        chunks = await run_in_threadpool(storage.open_reader, recording.stored_name, start, end + 1)
    except NotStored:
        raise Problem(404, "the recording's file is missing from storage") from None
    except StorageUnavailable:
        retry = {"retry-after": "5"}
        raise Problem(
            503, "recording storage is unavailable; retry shortly", headers=retry
        ) from None
    return StreamingResponse(
        chunks,
        status_code=206 if wanted else 200,
        headers=headers,
        media_type=media_type,
    )


async def delete_recording(request: Request) -> Response:
    """Delete the recording (its file goes by a worker, promptly); 204, or 404 if unknown."""
    recording = await _owned(request)
    if recording is None or recording.status is RecordingStatus.DELETED:
        raise Problem(404, "no recording with this id")
    rec_id = recording.id
    store: AsyncRecordingStore = request.app.state.recordings
    request_id = structlog.contextvars.get_contextvars().get("request_id")
    message = messages.DELETE_RECORDING_FILES.message(
        messages.SessionRef(recording.session_id), request_id=request_id
    )
    entry = timeline_entry("recording_deleted", recording_id=rec_id, request_id=request_id)
    if await store.delete(recording, message, entry) is DeleteResult.MISSING:
        raise Problem(404, "no recording with this id")
    structlog.contextvars.bind_contextvars(session_id=recording.session_id)
    return Response(status_code=204)


def _audio(media: str) -> dict[str, Any]:
    # "binary" for generators of OpenAPI 3.0 lineage; contentMediaType as 3.1 has it.
    return {"schema": {"type": "string", "format": "binary", "contentMediaType": media}}


# application/octet-stream: what a file of unknown format is served as, and the binary
# type generators map to bytes (they skip a response of audio types alone).
_FILE = {media: _audio(media) for media in ("audio/mpeg", "audio/wav", "application/octet-stream")}
_FILE_HEADERS = ("ETag", "Accept-Ranges", "Cache-Control", "Content-Length")


def _read(operation_id: str, summary: str) -> Operation:
    return Operation(
        id=operation_id,
        summary=summary,
        parameters=[
            header_parameter(
                "Range",
                "one range, `bytes=first-last`, `bytes=first-` or "
                "`bytes=-suffix`; several are answered with the whole file",
            ),
            header_parameter(
                "If-None-Match", "an ETag (or a list, or `*`): 304 if it names this file"
            ),
            header_parameter(
                "If-Range", "the ETag: the range is served only if the file is still this one"
            ),
        ],
        responses={
            "200": {
                "description": "the file",
                "headers": headers(*_FILE_HEADERS),
                "content": _FILE,
            },
            "206": {
                "description": "the requested byte range",
                "headers": headers(*_FILE_HEADERS, "Content-Range"),
                "content": _FILE,
            },
            "304": {
                "description": "not modified (If-None-Match)",
                "headers": headers("ETag", "Accept-Ranges", "Cache-Control"),
            },
            "404": problem("unknown, pending or failed recording, or another app's"),
            "416": problem("the range is outside the file", "Content-Range"),
            **COMMON,
        },
    )


_DELETE = Operation(
    id="deleteRecording",
    summary="Delete a recording (its file is removed by a worker)",
    responses={"204": {"description": "deleted", "headers": headers()}, "404": NOT_FOUND, **COMMON},
)
RECORDING_ID = path_parameter("recording_id", {"type": "string", "pattern": _ID.pattern})


def routes() -> list[ApiRoute]:
    path, by_id = "/v1/recordings/{recording_id}", [RECORDING_ID]
    reads = {
        "GET": _read("getRecording", "A stored recording's audio"),
        "HEAD": _read("getRecordingHead", "A stored recording's headers"),
    }
    return [
        ApiRoute(path, get_recording, reads, parameters=by_id),
        ApiRoute(path, delete_recording, {"DELETE": _DELETE}, parameters=by_id),
    ]
