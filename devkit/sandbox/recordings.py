"""Recordings in the sandbox: their events, their media, and the control routes for them.

**When.** A simulated call that bridged the parties with ``recorded`` true (see
:mod:`devkit.sandbox.calls`) makes one recording, in the session's
``record_file_format`` (default mp3), lasting the bridged time. Like the call, it is all
generated at once when the call is placed. With ``recording_fails: true`` on the call the
recording fails: its media never exists.

**Events**, to the session's ``recording_callback_url`` with
``recording_callback_method`` (nothing is sent without one), through the ``recording``
channel of :mod:`devkit.sandbox.callbacks` (V3-signed, same faults as session
events). Every value is a string; each event has ``EventName``, ``EventTimestamp``,
``SessionUUID``, ``FirstParty``, ``SecondParty``, ``VirtualNumber`` (without ``+``),
``RecordingUUID``, ``RecordingFormat`` (``mp3``/``wav``), ``RecordingStartTime`` (the
bridge's start) and ``SequenceNumber``, which counts the session's *recording* events
from 1 on its own: the session events have their counter, this channel has another, as
they reach different URLs.

- ``SessionRecordingInitiated``, stamped when the bridge starts;
- ``SessionRecordingCompleted``, stamped when the call ends, adds ``RecordingEndTime``,
  ``RecordingDuration`` (the bridged time in whole seconds), ``RecordingURL`` (the media,
  ``{base}/v1/Account/{auth_id}/Recording/{uuid}.{format}`` on the sandbox itself, base
  being the URL the call was placed through) and ``RecordingResourceURL``
  (``.../Recording/{uuid}/``);
- or ``SessionRecordingFailed`` instead, with ``RecordingEndTime`` and no media fields.

A completed recording's ``RecordingResourceURL`` becomes its call's ``interaction``
``recording_resource_url``.

**Media**: ``GET`` (and ``HEAD``) ``RecordingURL``, behind the account's Basic auth (401
otherwise), neither rate-limited nor counted as API traffic: VTS serves media apart from
its API. ``Content-Type`` ``audio/mpeg`` or ``audio/wav``, ``Content-Length``, and a file
from :mod:`devkit.sandbox.media`, streamed. An unknown or failed recording, or a
wrong extension, is 404. The media faults of :mod:`devkit.sandbox.traffic` apply.
``GET .../Recording/{uuid}/`` answers the recording's resource, in Plivo's shape.

**Control**, under ``/_sandbox/``: ``GET /recordings`` lists every recording,
``GET /recordings/{uuid}`` shows one, each as ``{"recording_uuid", "session_uuid",
"status" (completed|failed), "format", "content_type", "duration" (s, of the file),
"size" (bytes), "sha256" (of the file as served whole), "url", "resource_url"}``.
``POST /recordings`` with ``{"format": "mp3"|"wav" (default mp3), "duration_seconds": N}``
or ``{..., "size_bytes": N}`` (one of the two) makes a standalone recording (no session,
no events) for benchmarks, any size at no memory cost: 201 with it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.types import Send

from devkit.sandbox.callbacks import Event, event_time, party_fields
from devkit.sandbox.media import FORMATS, Format, Media, sha256
from devkit.sandbox.sessions import InvalidRequest, Session
from devkit.sandbox.traffic import Traffic

MAX_SECONDS = 1_000_000
MAX_BYTES = 2**40
_TRICKLE_TICKS = 10  # pieces a second when trickling


@dataclass(frozen=True)
class Recording:
    """One recording; times are epoch seconds by the sandbox clock."""

    recording_uuid: str
    media: Media
    url: str
    resource_url: str
    generated_at: float
    session_uuid: str | None = None
    start_time: float | None = None
    end_time: float | None = None
    failed: bool = False


async def _listing(recording: Recording) -> dict[str, object]:
    """The control view of a recording; hashing a large file runs off the event loop."""
    media = recording.media
    return {
        "recording_uuid": recording.recording_uuid,
        "session_uuid": recording.session_uuid,
        "status": "failed" if recording.failed else "completed",
        "format": media.format,
        "content_type": media.content_type,
        "duration": media.duration,
        "size": media.size,
        "sha256": await asyncio.to_thread(sha256, media),
        "url": recording.url,
        "resource_url": recording.resource_url,
    }


def recording_events(recording: Recording, session: Session, first_sequence: int) -> list[Event]:
    """Initiated, then Completed or Failed, numbered from ``first_sequence``."""
    assert recording.start_time is not None, "a session's recording has its times"
    assert recording.end_time is not None
    common = party_fields(session) | {
        "RecordingUUID": recording.recording_uuid,
        "RecordingFormat": recording.media.format,
        "RecordingStartTime": event_time(recording.start_time),
    }
    ending = {"RecordingEndTime": event_time(recording.end_time)}
    if not recording.failed:
        ending |= {
            "RecordingDuration": str(round(recording.end_time - recording.start_time)),
            "RecordingURL": recording.url,
            "RecordingResourceURL": recording.resource_url,
        }
    last = "Failed" if recording.failed else "Completed"
    moments = [("Initiated", recording.start_time, {}), (last, recording.end_time, ending)]
    return [
        {"EventName": f"SessionRecording{name}", "EventTimestamp": event_time(at)}
        | common
        | {"SequenceNumber": str(first_sequence + number)}
        | fields
        for number, (name, at, fields) in enumerate(moments)
    ]


class _MediaResponse(StreamingResponse):
    """A streamed body that may end without completing, which makes uvicorn drop the line."""

    def __init__(
        self, body: AsyncIterator[bytes], headers: Mapping[str, str], complete: bool
    ) -> None:
        super().__init__(body, headers=headers)
        self.complete = complete

    async def stream_response(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        async for chunk in self.body_iterator:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if self.complete:
            await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _flow(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def _trickle(chunks: Iterator[bytes], rate: float) -> AsyncIterator[bytes]:
    """The bytes of ``chunks`` at about ``rate`` bytes a second."""
    piece = max(1, int(rate / _TRICKLE_TICKS))
    for chunk in chunks:
        for start in range(0, len(chunk), piece):
            yield chunk[start : start + piece]
            await asyncio.sleep(piece / rate)


def _error(status: int, message: str) -> Response:
    return JSONResponse({"api_id": str(uuid.uuid4()), "error": message}, status)


def _not_found() -> Response:
    return _error(404, "recording not found")


def _whole(body: Mapping[str, object], name: str, high: int) -> int:
    value = body[name]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
        raise InvalidRequest(f"{name} must be a whole number from 0 to {high}")
    return value


def parse_standalone(body: object) -> Media:
    """The media a ``POST /_sandbox/recordings`` asks for; raises :class:`InvalidRequest`."""
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    if set(body) - {"format", "duration_seconds", "size_bytes"}:
        raise InvalidRequest("the known fields are format, duration_seconds and size_bytes")
    format = body.get("format", "mp3")
    if format not in FORMATS:
        raise InvalidRequest("format must be mp3 or wav")
    if ("duration_seconds" in body) == ("size_bytes" in body):
        raise InvalidRequest("give exactly one of duration_seconds and size_bytes")
    if "size_bytes" in body:
        return Media.sized(format, _whole(body, "size_bytes", MAX_BYTES))
    return Media.lasting(format, _whole(body, "duration_seconds", MAX_SECONDS))


class Archive:
    """Every recording of the sandbox's account, the media routes and the control routes."""

    def __init__(self, auth_id: str, traffic: Traffic, clock: Callable[[], float]) -> None:
        self.auth_id = auth_id
        self.traffic = traffic
        self.clock = clock
        self.recordings: dict[str, Recording] = {}
        self._sequences: Counter[str] = Counter()

    def _urls(self, recording_uuid: str, format: Format, base_url: str) -> tuple[str, str]:
        """The media's URL and the resource's, on the sandbox at ``base_url``."""
        folder = f"{base_url.rstrip('/')}/v1/Account/{self.auth_id}/Recording/{recording_uuid}"
        return f"{folder}.{format}", f"{folder}/"

    def _keep(self, recording: Recording) -> Recording:
        self.recordings[recording.recording_uuid] = recording
        return recording

    def record(
        self, session: Session, start: float, end: float, failed: bool, base_url: str
    ) -> tuple[Recording, list[Event]]:
        """Record ``session``'s bridge from ``start`` to ``end``: the recording, its events."""
        format: Format = "wav" if session.options["record_file_format"] == "wav" else "mp3"
        recording_uuid = str(uuid.uuid4())
        url, resource_url = self._urls(recording_uuid, format, base_url)
        media = Media.lasting(format, round(end - start))
        recording = Recording(
            recording_uuid,
            media,
            url,
            resource_url,
            generated_at=self.clock(),
            session_uuid=session.session_uuid,
            start_time=start,
            end_time=end,
            failed=failed,
        )
        self._keep(recording)
        first = self._sequences[session.session_uuid] + 1
        events = recording_events(recording, session, first)
        self._sequences[session.session_uuid] += len(events)
        self.traffic.stats.callbacks.update(events=len(events), recording_events=len(events))
        return recording, events

    def _served(self, request: Request) -> Recording | None:
        """The recording a media request names, if it exists and has media."""
        recording_uuid, _, extension = request.path_params["file"].rpartition(".")
        recording = self.recordings.get(recording_uuid)
        if recording is None or recording.failed or recording.media.format != extension:
            return None
        return recording

    async def media(self, request: Request) -> Response:
        """The media file, or what the faults make of it."""
        faults, counts = self.traffic.faults, self.traffic.stats.media
        recording = self._served(request)
        if (
            recording is None
            or self.clock() < recording.generated_at + faults.recording_404_seconds
        ):
            counts["not_found"] += 1
            return _not_found()
        if faults.recording_redirect_to is not None:
            counts["redirected"] += 1
            return RedirectResponse(faults.recording_redirect_to, 302)
        fault = self.traffic.media_fault()
        if fault == "error":
            return _error(faults.recording_error_status, "the sandbox injected this error")
        return self._stream(recording.media, request.method == "HEAD", cut=fault == "cut")

    def _stream(self, media: Media, head: bool, cut: bool) -> Response:
        faults, counts = self.traffic.faults, self.traffic.stats.media
        declared = max(0, media.size + faults.recording_wrong_length)
        headers = {"Content-Length": str(declared), "Content-Type": media.content_type}
        if head:
            counts["head"] += 1
            return _MediaResponse(_flow(iter(())), headers, complete=True)
        counts["served"] += 1
        sent = min(declared, media.size) // (2 if cut else 1)
        chunks, rate = media.chunks(sent), faults.recording_trickle_bytes_per_second
        body = _trickle(chunks, rate) if rate else _flow(chunks)
        return _MediaResponse(body, headers, complete=sent == declared)

    async def resource(self, request: Request) -> Response:
        """The recording's API resource, in Plivo's shape."""
        recording = self.recordings.get(request.path_params["recording_uuid"])
        if recording is None or recording.failed:
            return _not_found()
        start = recording.start_time or recording.generated_at
        body = {
            "api_id": str(uuid.uuid4()),
            "recording_id": recording.recording_uuid,
            "recording_format": recording.media.format,
            "recording_type": "session" if recording.session_uuid else "standalone",
            "recording_duration_ms": round(recording.media.duration * 1000),
            "recording_start_ms": round(start * 1000),
            "recording_end_ms": round(start * 1000 + recording.media.duration * 1000),
            "recording_url": recording.url,
            "resource_uri": recording.resource_url,
            "add_time": event_time(recording.generated_at),
        }
        return JSONResponse(body)

    async def list_recordings(self, request: Request) -> Response:
        every = [await _listing(recording) for recording in self.recordings.values()]
        return JSONResponse({"recordings": every})

    async def show(self, request: Request) -> Response:
        recording = self.recordings.get(request.path_params["recording_uuid"])
        if recording is None:
            return JSONResponse({"error": "recording not found"}, 404)
        return JSONResponse(await _listing(recording))

    async def create(self, request: Request) -> Response:
        try:
            media = parse_standalone(await request.json())
        except ValueError:
            return JSONResponse({"error": "the body must be a JSON object"}, 400)
        except InvalidRequest as exc:
            return JSONResponse({"error": str(exc)}, 400)
        recording_uuid = str(uuid.uuid4())
        url, resource_url = self._urls(recording_uuid, media.format, str(request.base_url))
        recording = self._keep(Recording(recording_uuid, media, url, resource_url, self.clock()))
        return JSONResponse(await _listing(recording), 201)

    def clear(self) -> None:
        self.recordings.clear()
        self._sequences.clear()
