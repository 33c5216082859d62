"""HEAD on a recording answers from the object's size alone: it never opens the file (or,
on S3, never GETs the object), and says what GET would."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
import redis

from service.settings import Settings
from service.storage import LocalStorage
from service.store import RecordingStore
from service.web.app import create_app
from tests.conftest import API_KEY, http_client, make_settings, new_numbers
from tests.servers import serve

AUDIO = b"RIFF\x24\x00\x00\x00WAVE" + bytes(range(32))


class WatchedStorage(LocalStorage):
    """Local storage that counts the readers it opens."""

    opened = 0

    def open_reader(self, name: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        WatchedStorage.opened += 1
        return super().open_reader(name, start, end)


@pytest.fixture
def settings(redis_url: str, web_port: int, tmp_path: Path) -> Settings:
    """No sandbox: nothing here reaches VTS."""
    return make_settings(
        redis_url,
        "http://127.0.0.1:1",
        public_base_url=f"http://127.0.0.1:{web_port}",
        recordings_dir=tmp_path / "recordings",
    )


@pytest.fixture
def client(settings: Settings, web_port: int) -> Iterator[httpx2.Client]:
    """A client of the app API of a web whose storage is watched."""
    app = create_app(settings)
    with serve(app, port=web_port) as url:
        app.state.storage = WatchedStorage(settings.recordings_dir)
        headers = {"Authorization": f"Bearer {API_KEY}"}
        with http_client(url, headers=headers) as client:
            yield client


def _recording(settings: Settings, client: httpx2.Client, redis_client: redis.Redis) -> str:
    first, second = new_numbers()
    body = {"first_party": first, "second_party": second}
    session_id = client.post("/v1/sessions", json=body).json()["id"]
    store = RecordingStore(redis_client)
    pending = store.upsert_pending(session_id, "rec-uuid-1", "wav")
    assert pending is not None
    with LocalStorage(settings.recordings_dir).open_writer(pending.stored_name) as upload:
        upload.write(AUDIO)
        upload.commit()
    digest = hashlib.sha256(AUDIO).hexdigest()
    store.mark_stored(pending.id, size=len(AUDIO), sha256=digest, content_type="audio/wav")
    return f"/v1/recordings/{pending.id}"


def test_head_answers_without_opening_the_file(
    settings: Settings, client: httpx2.Client, redis_client: redis.Redis
) -> None:
    """HEAD gives GET's status and headers, ranged too, and opens no reader."""
    path = _recording(settings, client, redis_client)
    WatchedStorage.opened = 0
    whole, ranged = client.head(path), client.head(path, headers={"Range": "bytes=2-4"})
    assert WatchedStorage.opened == 0
    assert (whole.status_code, whole.headers["content-length"], whole.content) == (200, "44", b"")
    assert whole.headers["content-type"] == "audio/wav"
    assert (ranged.status_code, ranged.headers["content-range"]) == (206, "bytes 2-4/44")
    assert client.get(path).content == AUDIO
    assert WatchedStorage.opened == 1


def test_head_of_a_file_missing_from_storage_is_404(
    settings: Settings, client: httpx2.Client, redis_client: redis.Redis
) -> None:
    """HEAD still finds out when the stored file has gone, as GET does."""
    path = _recording(settings, client, redis_client)
    for name in settings.recordings_dir.iterdir():
        name.unlink()
    assert client.head(path).status_code == 404
    assert client.get(path).status_code == 404
