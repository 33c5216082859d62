"""A call recording as this service knows it: its ids, its state, its Redis hash."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

FORMATS = frozenset({"mp3", "wav"})


class RecordingStatus(StrEnum):
    PENDING = "pending"
    STORED = "stored"
    FAILED = "failed"
    DELETED = "deleted"


def recording_id(vts_recording_uuid: str) -> str:
    """Our id for a VTS recording: the same for every delivery of its events."""
    return "rec_" + hashlib.sha256(vts_recording_uuid.encode()).hexdigest()[:32]


def recording_format(raw: str) -> str:
    """VTS's ``RecordingFormat`` (``mp3``, ``.WAV``…) as ``mp3`` or ``wav``; ValueError else."""
    value = raw.strip().lower().lstrip(".")
    if value not in FORMATS:
        raise ValueError("recording format must be mp3 or wav")
    return value


def stored_name(rec_id: str, fmt: str) -> str:
    """The storage name of a recording (a valid :func:`service.storage.check_name`)."""
    return f"{rec_id}.{recording_format(fmt)}"


def _int(raw: str | None) -> int | None:
    return int(raw) if raw else None


@dataclass(frozen=True)
class Recording:
    id: str
    session_id: str
    vts_recording_uuid: str
    format: str
    status: RecordingStatus
    stored_name: str
    created_at: datetime
    updated_at: datetime
    duration: int | None = None
    size: int | None = None
    sha256: str | None = None
    content_type: str | None = None
    error: str | None = None

    @classmethod
    def from_fields(cls, fields: Mapping[str, str]) -> Recording:
        return cls(
            id=fields["id"],
            session_id=fields["session_id"],
            vts_recording_uuid=fields["vts_recording_uuid"],
            format=fields["format"],
            status=RecordingStatus(fields["status"]),
            stored_name=fields["stored_name"],
            created_at=datetime.fromisoformat(fields["created_at"]),
            updated_at=datetime.fromisoformat(fields["updated_at"]),
            duration=_int(fields.get("duration")),
            size=_int(fields.get("size")),
            sha256=fields.get("sha256") or None,
            content_type=fields.get("content_type") or None,
            error=fields.get("error") or None,
        )
