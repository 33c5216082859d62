"""Recordings in an S3-compatible bucket: a real S3 server (moto's, on loopback) started
once for the run; multipart uploads in flat memory, atomic, ranged reads, end to end."""

from __future__ import annotations

import hashlib
import secrets
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import dramatiq
import httpx2
import pytest

from service.errors import ConfigurationError
from service.settings import S3Location, Secret, Settings
from service.storage import NotStored, open_storage, s3_client
from service.storage.s3 import S3Storage
from tests.conftest import make_settings, wait_until
from tests.servers import free_port
from tests.test_recordings import _recorded_call, _recording

MIB = 1024 * 1024
# The smallest part S3 accepts (the last part excepted).
PART = 5 * MIB


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's S3 server, its own process (so this one's memory is ours alone), for the run."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    command = [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    with log.open("wb") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(url, server), timeout=30, interval=0.1)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


def _answers(url: str, server: subprocess.Popen[bytes]) -> bool:
    if server.poll() is not None:
        raise RuntimeError(f"moto_server exited with {server.returncode}")
    try:
        httpx2.get(url + "/moto-api/", timeout=2)
    except httpx2.TransportError:
        return False
    return True


def s3_location(endpoint: str, bucket: str, prefix: str = "recordings") -> S3Location:
    return S3Location(
        bucket=bucket,
        prefix=prefix,
        endpoint_url=endpoint,
        region="us-east-1",
        access_key_id="test-access-key",
        secret_access_key=Secret("test-secret-key"),
    )


@pytest.fixture
def location(s3_endpoint: str) -> S3Location:
    """A fresh bucket for each test."""
    where = s3_location(s3_endpoint, "rec-" + secrets.token_hex(6))
    s3_client(where).create_bucket(Bucket=where.bucket)
    return where


@pytest.fixture
def storage(location: S3Location) -> S3Storage:
    return S3Storage(s3_client(location), location.bucket, location.prefix, part_size=PART)


def _keys(storage: S3Storage) -> list[str]:
    listed = storage.client.list_objects_v2(Bucket=storage.bucket)
    return [item["Key"] for item in listed.get("Contents", [])]


def _open_uploads(storage: S3Storage) -> int:
    return len(storage.client.list_multipart_uploads(Bucket=storage.bucket).get("Uploads", []))


def test_multipart_upload_round_trips_byte_identical_with_ranges(storage: S3Storage) -> None:
    """A 12 MiB object (three parts) reads back whole and in ranges, byte for byte."""
    data = secrets.token_bytes(12 * MIB + 123)
    with storage.open_writer("rec_1.wav") as upload:
        for offset in range(0, len(data), 64 * 1024):
            upload.write(data[offset : offset + 64 * 1024])
        assert not storage.exists("rec_1.wav")
        upload.commit()
    assert _keys(storage) == ["recordings/rec_1.wav"]
    assert storage.size("rec_1.wav") == len(data)
    whole = b"".join(storage.open_reader("rec_1.wav"))
    assert hashlib.sha256(whole).digest() == hashlib.sha256(data).digest()
    for start, end in [(0, 100), (PART - 7, PART + 9), (len(data) - 50, len(data)), (5, 5)]:
        assert b"".join(storage.open_reader("rec_1.wav", start, end)) == data[start:end]
    assert b"".join(storage.open_reader("rec_1.wav", PART)) == data[PART:]


def test_small_object_and_delete(storage: S3Storage) -> None:
    """An object under one part is stored too; delete removes it and is idempotent."""
    with storage.open_writer("rec_2.mp3") as upload:
        upload.write(b"ID3 small")
        upload.commit()
    assert b"".join(storage.open_reader("rec_2.mp3")) == b"ID3 small"
    storage.delete("rec_2.mp3")
    storage.delete("rec_2.mp3")
    assert not storage.exists("rec_2.mp3")
    with pytest.raises(NotStored):
        storage.open_reader("rec_2.mp3")
    with pytest.raises(NotStored):
        storage.size("rec_2.mp3")


def test_an_upload_left_without_commit_leaves_nothing(storage: S3Storage) -> None:
    """Parts already sent are discarded when the block ends without a commit."""
    with storage.open_writer("rec_3.wav") as upload:
        upload.write(secrets.token_bytes(PART + 10))
        assert _open_uploads(storage) == 1
    assert not storage.exists("rec_3.wav")
    assert _keys(storage) == []
    assert _open_uploads(storage) == 0


def test_upload_memory_stays_flat(storage: S3Storage) -> None:
    """Writing 24 MiB holds no more than about one part in memory at any time."""
    chunk = secrets.token_bytes(64 * 1024)
    tracemalloc.start()
    try:
        with storage.open_writer("rec_4.wav") as upload:
            for _ in range(24 * MIB // len(chunk)):
                upload.write(chunk)
            upload.commit()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert storage.size("rec_4.wav") == 24 * MIB
    assert peak < 2 * PART, f"peak {peak / MIB:.1f} MiB"


def test_recordings_storage_setting() -> None:
    """RECORDINGS_STORAGE takes s3://bucket[/prefix] and the standard AWS variables."""
    base = {"REDIS_URL": "redis://x", "VTS_AUTH_ID": "a", "VTS_AUTH_TOKEN": "t",
            "PUBLIC_BASE_URL": "https://x", "API_KEYS": "k" * 16}  # fmt: skip
    assert Settings.from_env(base).recordings_s3 is None
    settings = Settings.from_env(
        base
        | {
            "RECORDINGS_STORAGE": "s3://my-bucket/calls/audio/",
            "AWS_ENDPOINT_URL": "http://minio:9000",
            "AWS_DEFAULT_REGION": "eu-west-1",
            "AWS_SECRET_ACCESS_KEY": "very-secret",
        }
    )
    where = settings.recordings_s3
    assert where is not None
    assert (where.bucket, where.prefix, where.endpoint_url) == ("my-bucket", "calls/audio",
                                                                "http://minio:9000")  # fmt: skip
    assert where.region == "eu-west-1"
    assert "very-secret" not in repr(settings)
    for bad in ["/var/recordings", "s3://", "s3://Bad_Bucket/x", "https://bucket/x"]:
        with pytest.raises(ConfigurationError, match="RECORDINGS_STORAGE"):
            Settings.from_env(base | {"RECORDINGS_STORAGE": bad})


@pytest.fixture
def settings(
    redis_url: str, sandbox_url: str, web_port: int, location: S3Location, tmp_path: Path
) -> Settings:
    return make_settings(
        redis_url,
        sandbox_url,
        public_base_url=f"http://127.0.0.1:{web_port}",
        recordings_dir=tmp_path / "unused",
        recordings_s3=location,
        egress_allow_http=True,
        egress_allow_private=True,
    )


def test_recorded_call_is_stored_in_the_bucket_and_served(
    api: httpx2.Client, sandbox: httpx2.Client, worker: dramatiq.Worker, settings: Settings
) -> None:
    """The worker streams a recording into the bucket; the API serves it byte-identical,
    with ranges and the sha256 as ETag, and deleting it removes the object; nothing is
    written to the local directory."""
    session, uuid = _recorded_call(api, sandbox, "wav")
    recording = _recording(api, session["id"])
    truth = sandbox.get(f"/_sandbox/recordings/{uuid}").json()
    assert (recording["sha256"], recording["size"]) == (truth["sha256"], truth["size"])
    storage = open_storage(settings)
    assert isinstance(storage, S3Storage)
    assert _keys(storage) == [f"recordings/{recording['id']}.wav"]
    served = api.get(recording["url"])
    assert served.status_code == 200
    assert hashlib.sha256(served.content).hexdigest() == truth["sha256"]
    assert served.headers["etag"] == f'"{truth["sha256"]}"'
    part = api.get(recording["url"], headers={"Range": "bytes=100-199"})
    assert part.status_code == 206
    assert part.content == served.content[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{truth['size']}"
    etag = {"If-None-Match": f'"{truth["sha256"]}"'}
    assert api.get(recording["url"], headers=etag).status_code == 304
    assert not settings.recordings_dir.exists()
    assert api.delete(recording["url"]).status_code == 204
    wait_until(lambda: _keys(storage) == [], timeout=30, interval=0.1)
