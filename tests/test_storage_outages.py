"""Storage outages are transient: a full or read-only filesystem, an S3 endpoint that
refuses connections or throttles, raise StorageUnavailable with the real reason; the
recording waits for storage to come back and is stored intact, never marked failed."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dramatiq
import httpx2
import pytest
import redis
from prometheus_client import REGISTRY

from service import messages
from service.errors import ConfigurationError, StorageError, StorageUnavailable
from service.messages import QUEUES
from service.settings import Settings
from service.storage import LocalStorage
from service.store import DeadLetters
from tests.conftest import loopback_settings, make_settings, wait_until
from tests.test_recordings import _recorded_call, _recording
from tests.test_retry_logs import Lines


def failures(backend: str, reason: str) -> float:
    labels = {"backend": backend, "reason": reason}
    return REGISTRY.get_sample_value("masking_storage_failures_total", labels) or 0.0


def _store(storage: Any, name: str, data: bytes) -> None:
    with storage.open_writer(name) as upload:
        upload.write(data)
        upload.commit()


def _read(storage: Any, name: str) -> bytes:
    return b"".join(storage.open_reader(name))


def test_the_job_contract_does_not_import_botocore() -> None:
    """Importing the job contract loads no botocore: storage raises the service's errors."""
    code = "import sys, service.messages; print('botocore' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# Local storage on a filesystem of its own: a small tmpfs that the test fills or remounts
# read-only, the faults a disk really has (as root, file modes do not stop writes).


class Tmpfs:
    def __init__(self, path: Path, size: str) -> None:
        self.path = path
        path.mkdir()
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        if mounted.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")

    def remount(self, mode: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{mode}", str(self.path)], check=True)

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=True)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Tmpfs]:
    """A 4 MiB tmpfs, unmounted after the test."""
    mount = Tmpfs(tmp_path / "mnt", "4m")
    yield mount
    mount.unmount()


def test_a_read_only_filesystem_is_unavailable_until_writable_again(tmpfs: Tmpfs) -> None:
    """On a filesystem remounted read-only an upload raises StorageUnavailable (EROFS,
    without the path) and is counted; once writable again the same upload is stored."""
    storage = LocalStorage(tmpfs.path / "recordings")
    before = failures("local", "EROFS")
    tmpfs.remount("ro")
    with pytest.raises(StorageUnavailable) as caught:
        _store(storage, "rec_a.wav", b"RIFF....WAVE")
    assert caught.value.reason == "EROFS"
    assert str(tmpfs.path) not in str(caught.value)
    assert failures("local", "EROFS") == before + 1
    tmpfs.remount("rw")
    _store(storage, "rec_a.wav", b"RIFF....WAVE")
    assert _read(storage, "rec_a.wav") == b"RIFF....WAVE"


def test_a_full_filesystem_is_unavailable_and_leaves_nothing(tmpfs: Tmpfs) -> None:
    """An upload larger than the free space raises StorageUnavailable (ENOSPC); nothing,
    not even a temporary file, is left; once space is freed it is stored whole."""
    storage = LocalStorage(tmpfs.path / "recordings")
    filler = tmpfs.path / "filler"
    free = os.statvfs(tmpfs.path).f_bavail * os.statvfs(tmpfs.path).f_frsize
    filler.write_bytes(b"\0" * (free - 64 * 1024))
    data = bytes(range(256)) * 512  # 128 KiB
    with pytest.raises(StorageUnavailable) as caught:
        _store(storage, "rec_b.wav", data)
    assert caught.value.reason == "ENOSPC"
    assert list(storage.root.iterdir()) == []
    filler.unlink()
    _store(storage, "rec_b.wav", data)
    assert _read(storage, "rec_b.wav") == data


def test_other_local_failures_are_errors_not_outages(tmp_path: Path) -> None:
    """A failure that waiting does not cure (the root replaced by a file) is a StorageError
    but not StorageUnavailable."""
    storage = LocalStorage(tmp_path / "recordings")
    storage.root.rmdir()
    storage.root.write_bytes(b"")
    with pytest.raises(StorageError) as caught:
        _store(storage, "rec_c.wav", b"x")
    assert not isinstance(caught.value, StorageUnavailable)
    assert caught.value.reason == "ENOTDIR"


# End to end: a recording arrives while storage fails; storage comes back; the recording
# ends stored, byte-identical, with a warning logged and no dead letter.


def _dead_letters(client: redis.Redis) -> int:
    dead_letters = DeadLetters(client)
    return sum(len(dead_letters.dead_letters(queue)) for queue in QUEUES)


@pytest.fixture
def settings(
    request: pytest.FixtureRequest, redis_url: str, sandbox_url: str, web_port: int, tmpfs: Tmpfs
) -> Settings:
    """Recordings on the tmpfs; a test may override settings with ``indirect``."""
    overrides = getattr(request, "param", {})
    recordings = tmpfs.path / "recordings"
    return loopback_settings(
        redis_url, sandbox_url, web_port, recordings_dir=recordings, **overrides
    )


def outage_then_stored(
    api: httpx2.Client,
    sandbox: httpx2.Client,
    redis_client: redis.Redis,
    capsys: pytest.CaptureFixture[str],
    *,
    backend: str,
    reason: str,
    down: Callable[[], None],
    up: Callable[[], None],
) -> None:
    """A recorded call while storage is down (``down``): it waits, retried with warnings
    naming ``reason``; once storage is up it is stored byte-identical, with no error line,
    no dead letter and no failure on its timeline."""
    lines = Lines(capsys)
    dead_before = _dead_letters(redis_client)
    failures_before = failures(backend, reason)
    down()
    session, uuid = _recorded_call(api, sandbox, "wav")
    wait_until(lambda: failures(backend, reason) >= failures_before + 2, timeout=60)
    pending = api.get(f"/v1/sessions/{session['id']}").json()["recordings"]
    assert [r["status"] for r in pending] == ["pending"]
    up()
    recording = _recording(api, session["id"])
    truth = sandbox.get(f"/_sandbox/recordings/{uuid}").json()
    assert (recording["sha256"], recording["size"]) == (truth["sha256"], truth["size"])
    served = api.get(recording["url"])
    assert hashlib.sha256(served.content).hexdigest() == truth["sha256"]
    retried = [
        line for line in lines.named("work_retrying") if line["reason"] == "StorageUnavailable"
    ]
    assert retried
    assert {line["level"] for line in retried} == {"warning"}
    assert all(reason in line["detail"] for line in retried)
    assert [line for line in lines() if line["level"] in ("error", "critical")] == []
    assert _dead_letters(redis_client) == dead_before
    timeline = api.get(f"/v1/sessions/{session['id']}/events").json()
    assert "recording_failed" not in str(timeline)


def test_a_recording_arriving_while_the_disk_is_read_only_is_stored_once_writable(
    api: httpx2.Client,
    sandbox: httpx2.Client,
    worker: dramatiq.Worker,
    redis_client: redis.Redis,
    tmpfs: Tmpfs,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A recording that arrives while the recordings filesystem is read-only is retried
    (warnings, counted) and stored intact once it is writable again: no failure, no dead
    letter."""
    outage_then_stored(
        api, sandbox, redis_client, capsys, backend="local", reason="EROFS",
        down=lambda: tmpfs.remount("ro"), up=lambda: tmpfs.remount("rw"),
    )  # fmt: skip


@pytest.mark.parametrize("settings", [{"storage_retry_for": 2}], indirect=True)
def test_a_recording_whose_storage_stays_away_fails_as_a_storage_failure(
    api: httpx2.Client,
    sandbox: httpx2.Client,
    worker: dramatiq.Worker,
    redis_client: redis.Redis,
    tmpfs: Tmpfs,
) -> None:
    """Past STORAGE_RETRY_FOR the recording is failed with a reason naming storage, not
    VTS, and nothing is dead-lettered."""
    dead_before = _dead_letters(redis_client)
    tmpfs.remount("ro")
    session, _ = _recorded_call(api, sandbox, "wav")
    _recording(api, session["id"], status="failed")
    timeline = api.get(f"/v1/sessions/{session['id']}/events").json()
    failed = [entry for entry in str(timeline).split("}") if "recording_failed" in entry]
    assert failed
    assert "recording storage was unavailable for more than 2 s" in failed[0]
    assert "VTS" not in failed[0]
    assert _dead_letters(redis_client) == dead_before


def test_storage_retry_for_is_read_and_checked() -> None:
    """STORAGE_RETRY_FOR is seconds (default 3 hours); a malformed value is named."""
    from tests.test_settings import VALID

    assert Settings.from_env(VALID).storage_retry_for == 3 * 3600
    assert Settings.from_env({**VALID, "STORAGE_RETRY_FOR": "60"}).storage_retry_for == 60
    for bad in ("0", "soon", "-5"):
        with pytest.raises(ConfigurationError) as caught:
            Settings.from_env({**VALID, "STORAGE_RETRY_FOR": bad})
        assert caught.value.variable == "STORAGE_RETRY_FOR"


def test_storage_work_is_retried_for_storage_retry_for(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """Purges and file deletions retry storage outages for at least STORAGE_RETRY_FOR
    (dramatiq waits at least half the one-minute cap between tries), and a recording
    waits for its storage as long."""
    from workers import boot

    settings = make_settings(
        redis_url, "http://127.0.0.1:9", recordings_dir=tmp_path, storage_retry_for=7200
    )
    deps = boot.build(settings, redis_client)
    deps.close()
    for job in (messages.PURGE_SESSION, messages.DELETE_RECORDING_FILES):
        assert job.retry.max_backoff_ms == 60_000
        assert StorageUnavailable in job.retry.transient
        assert deps.max_retries(job) * 30 >= 7200
    assert deps.storage_retry_for.total_seconds() == 7200
    assert messages.APPLY_RECORDING_EVENT.retry.max_backoff_ms == 60_000
