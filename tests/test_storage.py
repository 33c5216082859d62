"""The local storage backend: atomic uploads, private files, strict names, ranged reads."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from service.storage import CHUNK_SIZE, InvalidName, LocalStorage, NotStored, check_name


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "recordings")


def test_root_is_created_private(tmp_path: Path) -> None:
    """A missing root directory is created with mode 0700."""
    storage = LocalStorage(tmp_path / "a" / "recordings")
    assert _mode(storage.root) == 0o700


def test_commit_makes_the_file_visible_and_private(storage: LocalStorage) -> None:
    """A committed upload is visible under its name, mode 0600, with nothing else left."""
    with storage.open_writer("rec_1.wav") as upload:
        upload.write(b"RIFF")
        upload.write(b"data")
        assert not storage.exists("rec_1.wav")
        upload.commit()
    assert storage.exists("rec_1.wav")
    assert _mode(storage.root / "rec_1.wav") == 0o600
    assert [p.name for p in storage.root.iterdir()] == ["rec_1.wav"]
    assert b"".join(storage.open_reader("rec_1.wav")) == b"RIFFdata"


def test_an_error_in_the_block_leaves_nothing(storage: LocalStorage) -> None:
    """An exception before commit aborts: no file under the name, no temporary file."""

    def write_then_fail() -> None:
        with storage.open_writer("rec_2.wav") as upload:
            upload.write(b"partial")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_then_fail()
    assert list(storage.root.iterdir()) == []


def test_leaving_without_commit_leaves_nothing(storage: LocalStorage) -> None:
    """An upload never committed is discarded when its block ends."""
    with storage.open_writer("rec_3.wav") as upload:
        upload.write(b"partial")
    assert list(storage.root.iterdir()) == []


def test_abort_keeps_the_previous_version(storage: LocalStorage) -> None:
    """An aborted upload over an existing object leaves that object intact."""
    with storage.open_writer("rec_4.wav") as upload:
        upload.write(b"old")
        upload.commit()
    with storage.open_writer("rec_4.wav") as upload:
        upload.write(b"new and longer")
        upload.abort()
    assert b"".join(storage.open_reader("rec_4.wav")) == b"old"


@pytest.mark.parametrize(
    "name", ["", "../etc/passwd", "a/b.wav", ".hidden", "REC.wav", "rec.wav/", "x" * 200, "a..b"]
)
def test_names_are_validated(storage: LocalStorage, name: str) -> None:
    """Only lowercase ids with an optional short extension are storage names."""
    with pytest.raises(InvalidName):
        check_name(name)
    with pytest.raises(InvalidName):
        storage.exists(name)
    with pytest.raises(InvalidName), storage.open_writer(name):
        pass


def test_ranges_are_read_in_chunks(storage: LocalStorage) -> None:
    """open_reader yields bytes [start, end) in chunks of at most CHUNK_SIZE."""
    data = bytes(range(256)) * 1024
    with storage.open_writer("rec_5.mp3") as upload:
        upload.write(data)
        upload.commit()
    chunks = list(storage.open_reader("rec_5.mp3", 10, 10 + CHUNK_SIZE + 5))
    assert [len(c) for c in chunks] == [CHUNK_SIZE, 5]
    assert b"".join(chunks) == data[10 : 10 + CHUNK_SIZE + 5]
    assert b"".join(storage.open_reader("rec_5.mp3", len(data) - 3)) == data[-3:]
    assert storage.size("rec_5.mp3") == len(data)


def test_missing_objects(storage: LocalStorage) -> None:
    """A missing object raises NotStored at the call; delete is idempotent."""
    with pytest.raises(NotStored):
        storage.open_reader("rec_6.wav")
    with pytest.raises(NotStored):
        storage.size("rec_6.wav")
    storage.delete("rec_6.wav")
    assert not storage.exists("rec_6.wav")
