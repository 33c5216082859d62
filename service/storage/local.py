"""Recordings on the local filesystem, under ``RECORDINGS_DIR``.

The directory is private to the service (0700) and every file in it too (0600). An upload
is written to a hidden temporary file in the same directory, fsynced, then renamed over
its name (``os.replace`` is atomic within one filesystem), and the directory is fsynced so
the rename survives a crash. Temporary names start with ``.`` and so are never valid
storage names: a leftover from a crash is never served, and the next upload of the same
name removes it.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO

from service.storage.base import CHUNK_SIZE, NotStored, check_name, failure

_TEMP_PREFIX = ".upload-"
# What a disk does while it is full, remounted read-only, failing or overloaded (and NFS
# while its server is away): conditions that pass. Others (ENOTDIR, EACCES...) are not.
_TRANSIENT = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EROFS,
        errno.EIO,
        errno.EAGAIN,
        errno.EBUSY,
        errno.ETIMEDOUT,
        errno.ESTALE,
        errno.ENOBUFS,
        errno.EMFILE,
        errno.ENFILE,
    }
)


@contextmanager
def _translated(operation: str) -> Iterator[None]:
    """OSError as StorageUnavailable or StorageError, named by its errno, not its path."""
    try:
        yield
    except OSError as exc:
        reason = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
        raise failure("local", operation, reason, transient=exc.errno in _TRANSIENT) from exc


class LocalUpload:
    """One file being written; see :class:`service.storage.base.Upload`."""

    def __init__(self, root: Path, name: str) -> None:
        self._final = root / name
        # What an upload of this name left when its process was killed goes first. Uploads
        # of one name never overlap (one recording, one download job), so none is live.
        for leftover in root.glob(f"{_TEMP_PREFIX}{name}.*"):
            leftover.unlink(missing_ok=True)
        fd, temp = tempfile.mkstemp(dir=root, prefix=f"{_TEMP_PREFIX}{name}.")  # mode 0600
        self._temp = Path(temp)
        self._file: BinaryIO = os.fdopen(fd, "wb")
        self._done = False

    def write(self, data: bytes, /) -> int:
        with _translated("write"):
            return self._file.write(data)

    def commit(self) -> None:
        with _translated("commit"):
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self._temp, self._final)
            self._done = True
            _fsync_directory(self._final.parent)

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        # Aborting follows a failure, often of this very disk: closing flushes what is
        # buffered (ENOSPC again), unlinking needs a writable disk. Neither may hide the
        # failure; a temporary file left behind is never served and the next upload of
        # this name removes it.
        with suppress(OSError):
            self._file.close()
        with suppress(OSError):
            self._temp.unlink(missing_ok=True)


class LocalStorage:
    """A :class:`service.storage.base.Storage` rooted at one directory."""

    def __init__(self, root: Path) -> None:
        """Create ``root`` (mode 0700) if it does not exist; an existing one is kept as is."""
        self.root = root.resolve()
        if not self.root.is_dir():
            self.root.mkdir(mode=0o700, parents=True)
            self.root.chmod(0o700)  # mkdir's mode is filtered by the umask

    def _path(self, name: str) -> Path:
        return self.root / check_name(name)

    @contextmanager
    def open_writer(self, name: str) -> Iterator[LocalUpload]:
        with _translated("open"):
            upload = LocalUpload(self.root, check_name(name))
        try:
            yield upload
        finally:
            upload.abort()

    def exists(self, name: str) -> bool:
        with _translated("read"):
            return self._path(name).is_file()

    def size(self, name: str) -> int:
        with _translated("read"):
            try:
                return self._path(name).stat().st_size
            except FileNotFoundError:
                raise NotStored(f"no stored object {name}") from None

    def open_reader(self, name: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        if start < 0 or (end is not None and end < start):
            raise ValueError("need 0 <= start <= end")
        with _translated("read"):
            try:
                file = self._path(name).open("rb")
            except FileNotFoundError:
                raise NotStored(f"no stored object {name}") from None
        return _chunks(file, start, end)

    def delete(self, name: str) -> None:
        with _translated("delete"):
            self._path(name).unlink(missing_ok=True)


def _chunks(file: BinaryIO, start: int, end: int | None) -> Iterator[bytes]:
    with file, _translated("read"):
        file.seek(start)
        remaining = None if end is None else end - start
        while remaining is None or remaining > 0:
            chunk = file.read(CHUNK_SIZE if remaining is None else min(CHUNK_SIZE, remaining))
            if not chunk:
                return
            if remaining is not None:
                remaining -= len(chunk)
            yield chunk


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
