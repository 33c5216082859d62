"""The storage contract every backend meets.

Objects are whole files under flat names that this service derives from its own ids
(``rec_<hex>.wav``), never from input. An object becomes visible under its name only when
its upload is committed, complete: readers never see a partial file.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Protocol

from service.errors import ServiceError, StorageError, StorageUnavailable
from service.metrics import metrics

CHUNK_SIZE = 64 * 1024

# Lowercase letters, digits, ``_`` and ``-``, then an optional short extension: no
# separators, no dots to climb with, nothing a filesystem or a bucket reads specially.
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,127}(\.[a-z0-9]{1,8})?")


class InvalidName(ValueError):
    """A storage name is not one this service makes."""


class NotStored(ServiceError):
    """No object is stored under the name."""


def failure(backend: str, operation: str, reason: str, *, transient: bool) -> StorageError:
    """The error to raise for a failed storage operation, counted by backend and reason.
    ``transient``: storage is away or full for now (StorageUnavailable: try again later)."""
    metrics().storage_failures.labels(backend, reason).inc()
    kind = StorageUnavailable if transient else StorageError
    return kind(backend, operation, reason)


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid storage name; raise InvalidName otherwise."""
    if not _NAME.fullmatch(name):
        raise InvalidName("storage names are lowercase ids with an optional extension")
    return name


class Upload(Protocol):
    """An object being written. Nothing is visible under its name before ``commit``."""

    def write(self, data: bytes, /) -> int: ...

    def commit(self) -> None:
        """Make the object durable and visible under its name, replacing any other."""

    def abort(self) -> None:
        """Discard everything written; idempotent, and a no-op after ``commit``."""


class Storage(Protocol):
    """A flat namespace of immutable objects."""

    def open_writer(self, name: str) -> AbstractContextManager[Upload]:
        """An upload for ``name``; leaving the block without ``commit`` aborts it."""

    def exists(self, name: str) -> bool: ...

    def size(self, name: str) -> int:
        """The object's size in bytes. Raises NotStored."""

    def open_reader(self, name: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """The bytes ``[start, end)`` of the object (``end`` None: to its end), in chunks
        of at most CHUNK_SIZE. Raises NotStored at the call, not on first iteration."""

    def delete(self, name: str) -> None:
        """Remove the object; idempotent."""
