"""The audio files the sandbox serves as recordings: valid WAV and MP3, of any length, cheaply.

The content is deterministic, so a file's sha256 depends only on its format and length
and can be reproduced anywhere. Files are never built whole: :meth:`Media.chunks` yields
the header, then the same precomputed block (about 64 kB) over and over, then a slice of
it, so serving a 500 MB file costs 64 kB of memory however long it is.

- **WAV**: a 44-byte RIFF/WAVE header (``fmt`` PCM, 8 kHz, mono, 16-bit little-endian:
  16 000 bytes a second) and the ``data`` chunk: a quiet 400 Hz triangle tone (peak
  1000 of 32767, about -30 dBFS), integer-computed so no libm difference can change it.
- **MP3**: MPEG-1 Layer III frames at 32 kHz, 32 kbps, mono, without CRC: each frame is
  144 bytes (144 * bitrate / sample rate, never padded) and lasts 1152 samples = 36 ms.
  A frame is its 4-byte header (``FF FB 18 C0``), 17 bytes of zero side information (no
  main data: decoders play silence) and zeros. No ID3 tag and no Xing header: a
  duration is the frame count times 36 ms. MPEG-1 at 32 kHz rather than an 8 kHz
  MPEG-2.5 stream, as every decoder and ``file`` know it and frames stay fixed-size.

A duration in whole seconds gives exactly that for WAV, and the nearest whole number of
frames (at least one) for MP3, so an MP3 is within 18 ms of it. A size in bytes is
rounded down to whole samples (WAV, at least the header) or whole frames (MP3, at least
one).
"""

from __future__ import annotations

import functools
import hashlib
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

Format = Literal["mp3", "wav"]
FORMATS: tuple[Format, ...] = ("mp3", "wav")

WAV_RATE = 8000
WAV_SAMPLE_BYTES = 2
WAV_HEADER_BYTES = 44
MP3_FRAME_BYTES = 144
MP3_FRAME_SAMPLES = 1152
MP3_RATE = 32000
MP3_FRAME_HEADER = bytes.fromhex("FFFB18C0")
_TONE_PERIOD = 20  # samples: 400 Hz at 8 kHz
_TONE_STEP = 200  # the triangle climbs 200 a sample, to a peak of 1000
_BLOCK_SAMPLES = 32_000  # four seconds of WAV; a multiple of the tone's period
_BLOCK_FRAMES = 444  # 63 936 bytes of MP3
CONTENT_TYPES: dict[Format, str] = {"mp3": "audio/mpeg", "wav": "audio/wav"}


@dataclass(frozen=True)
class Media:
    """One audio file: its format and its length in ``units`` (WAV samples, MP3 frames)."""

    format: Format
    units: int

    @classmethod
    def lasting(cls, format: Format, seconds: int) -> Media:
        """A file of ``seconds`` (the nearest whole frame count, at least one, for MP3)."""
        if format == "wav":
            return cls(format, seconds * WAV_RATE)
        frames = (2 * seconds * MP3_RATE + MP3_FRAME_SAMPLES) // (2 * MP3_FRAME_SAMPLES)
        return cls(format, max(1, frames))

    @classmethod
    def sized(cls, format: Format, size: int) -> Media:
        """The largest file of at most ``size`` bytes (but never less than one MP3 frame)."""
        if format == "wav":
            return cls(format, max(0, size - WAV_HEADER_BYTES) // WAV_SAMPLE_BYTES)
        return cls(format, max(1, size // MP3_FRAME_BYTES))

    @property
    def size(self) -> int:
        """Bytes."""
        if self.format == "wav":
            return WAV_HEADER_BYTES + self.units * WAV_SAMPLE_BYTES
        return self.units * MP3_FRAME_BYTES

    @property
    def duration(self) -> float:
        """Seconds."""
        if self.format == "wav":
            return self.units / WAV_RATE
        return self.units * MP3_FRAME_SAMPLES / MP3_RATE

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.format]

    def chunks(self, limit: int | None = None) -> Iterator[bytes]:
        """The file's bytes in pieces of at most about 64 kB; only the first ``limit``."""
        remaining = self.size if limit is None else min(limit, self.size)
        for piece in self._pieces():
            if remaining <= 0:
                return
            yield piece if len(piece) <= remaining else piece[:remaining]
            remaining -= len(piece)

    def _pieces(self) -> Iterator[bytes]:
        if self.format == "wav":
            yield _wav_header(self.units * WAV_SAMPLE_BYTES)
            block, per_block, unit = _tone_block(), _BLOCK_SAMPLES, WAV_SAMPLE_BYTES
        else:
            block, per_block, unit = _silent_frames(), _BLOCK_FRAMES, MP3_FRAME_BYTES
        whole, rest = divmod(self.units, per_block)
        for _ in range(whole):
            yield block  # the same object each time: nothing is copied
        if rest:
            yield block[: rest * unit]


def _wav_header(data_bytes: int) -> bytes:
    byte_rate = WAV_RATE * WAV_SAMPLE_BYTES
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        36 + data_bytes,
        b"WAVE",
        b"fmt ",
        16,  # the size of a PCM fmt chunk
        1,  # PCM
        1,  # mono
        WAV_RATE,
        byte_rate,
        WAV_SAMPLE_BYTES,  # block align
        8 * WAV_SAMPLE_BYTES,
        b"data",
        data_bytes,
    )


@functools.cache
def _tone_block() -> bytes:
    """Four seconds of the 400 Hz triangle tone, as 16-bit little-endian samples."""
    quarter = _TONE_PERIOD // 4
    shape = [k if k <= quarter else 2 * quarter - k if k <= 3 * quarter else k - _TONE_PERIOD
             for k in range(_TONE_PERIOD)]  # fmt: skip
    period = struct.pack(f"<{_TONE_PERIOD}h", *(_TONE_STEP * s for s in shape))
    return period * (_BLOCK_SAMPLES // _TONE_PERIOD)


@functools.cache
def _silent_frames() -> bytes:
    frame = MP3_FRAME_HEADER.ljust(MP3_FRAME_BYTES, b"\0")
    return frame * _BLOCK_FRAMES


@functools.lru_cache(maxsize=1024)
def sha256(media: Media) -> str:
    """The hex sha256 of the file; CPU-bound for large files, so call it off the event loop."""
    digest = hashlib.sha256()
    for piece in media.chunks():
        digest.update(piece)
    return digest.hexdigest()
