"""S3 outages are transient: an endpoint that refuses connections, throttles or answers
5xx raises StorageUnavailable with the S3 reason; a recording that arrives meanwhile is
stored intact once the endpoint is back. Other refusals are errors, not outages."""

from __future__ import annotations

import dataclasses
import secrets
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import dramatiq
import httpx2
import pytest
import redis
from botocore.config import Config
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.errors import StorageError, StorageUnavailable
from service.settings import S3Location, Settings
from service.storage.s3 import S3Storage
from tests.conftest import loopback_settings
from tests.servers import free_port, serve
from tests.test_recordings import _recorded_call, _recording
from tests.test_s3_storage import s3_endpoint, s3_location
from tests.test_storage_outages import _read, _store, failures, outage_then_stored

__all__ = ["s3_endpoint"]  # the fixture, shared with the bucket tests


# S3 behind a switch: a TCP forwarder to moto's server that can refuse connections (as an
# endpoint that is down does) and forward again on the same port, moto's data intact.


class Switch:
    """Forwards 127.0.0.1:``port`` to ``target``; ``off`` refuses new connections and cuts
    live ones, ``on`` forwards again."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.port = free_port()
        self._target = target
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.on()

    def on(self) -> None:
        listener = socket.create_server(("127.0.0.1", self.port))
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def off(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.shutdown(socket.SHUT_RDWR)  # wakes the accept()
            listener.close()
        with self._lock:
            live, self._open = self._open, set()
        for sock in live:
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._target)
            with self._lock:
                self._open |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                sock.close()


@pytest.fixture
def switch(s3_endpoint: str) -> Iterator[Switch]:
    url = httpx2.URL(s3_endpoint)
    forwarder = Switch((url.host, url.port or 80))
    yield forwarder
    forwarder.off()


def _client(where: S3Location) -> Any:
    """An S3 client that tries once (production's retries, within the call, would only make
    these tests slower: the outage outlasts them)."""
    return boto3.session.Session().client(
        "s3",
        endpoint_url=where.endpoint_url,
        region_name=where.region,
        aws_access_key_id=where.access_key_id,
        aws_secret_access_key="test-secret-key",
        config=Config(retries={"mode": "standard", "max_attempts": 1}, connect_timeout=2),
    )


@pytest.fixture
def switched(s3_endpoint: str, switch: Switch) -> S3Location:
    """A fresh bucket, reached through the switch."""
    where = s3_location(f"http://127.0.0.1:{switch.port}", "out-" + secrets.token_hex(6))
    _client(where).create_bucket(Bucket=where.bucket)
    return where


def test_an_s3_endpoint_refusing_connections_is_unavailable_until_back(
    switch: Switch, switched: S3Location
) -> None:
    """While the endpoint refuses connections every operation raises StorageUnavailable
    (counted, with the reason); once it is back the upload is stored and readable."""
    storage = S3Storage(_client(switched), switched.bucket, switched.prefix)
    before = failures("s3", "EndpointConnectionError")
    switch.off()
    for operation in (
        lambda: _store(storage, "rec_d.wav", b"RIFF....WAVE"),
        lambda: storage.exists("rec_d.wav"),
        lambda: storage.delete("rec_d.wav"),
    ):
        with pytest.raises(StorageUnavailable) as caught:
            operation()
        assert caught.value.reason == "EndpointConnectionError"
    assert failures("s3", "EndpointConnectionError") == before + 3
    switch.on()
    _store(storage, "rec_d.wav", b"RIFF....WAVE")
    assert _read(storage, "rec_d.wav") == b"RIFF....WAVE"


_SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


async def _throttling(request: Request) -> Response:
    await request.body()  # read: a body left unread breaks the kept-alive connection
    return Response(_SLOW_DOWN, status_code=503, media_type="application/xml")


def test_s3_throttling_and_5xx_are_unavailable_other_refusals_are_errors(
    switched: S3Location,
) -> None:
    """SlowDown (503) and a bare 5xx are StorageUnavailable; a missing bucket is a
    StorageError, not an outage."""
    app = Starlette(routes=[Route("/{path:path}", _throttling, methods=["GET", "PUT", "HEAD"])])
    with serve(app) as url:
        throttled = dataclasses.replace(switched, endpoint_url=url)
        storage = S3Storage(_client(throttled), throttled.bucket)
        with pytest.raises(StorageUnavailable) as caught:
            _store(storage, "rec_e.wav", b"x")
        assert caught.value.reason == "SlowDown"
        with pytest.raises(StorageUnavailable) as caught:
            storage.exists("rec_e.wav")  # HEAD: a status, no error body
        assert caught.value.reason == "503"
    missing = S3Storage(_client(switched), "no-such-bucket-here")
    with pytest.raises(StorageError) as refused:
        _store(missing, "rec_e.wav", b"x")
    assert not isinstance(refused.value, StorageUnavailable)
    assert refused.value.reason == "NoSuchBucket"


@pytest.fixture
def settings(
    redis_url: str, sandbox_url: str, web_port: int, switched: S3Location, tmp_path: Path
) -> Settings:
    return loopback_settings(
        redis_url,
        sandbox_url,
        web_port,
        recordings_dir=tmp_path / "unused",
        recordings_s3=switched,
    )


@pytest.fixture
def s3_worker(
    broker: dramatiq.Broker,
    settings: Settings,
    switched: S3Location,
    redis_client: redis.Redis,
) -> Iterator[dramatiq.Worker]:
    from workers import boot

    deps = boot.build(settings, redis_client)
    storage = S3Storage(_client(switched), switched.bucket, switched.prefix)
    broker.dependencies = dataclasses.replace(deps, storage=storage)  # type: ignore[attr-defined]
    worker = dramatiq.Worker(broker, worker_threads=4, worker_timeout=50)
    worker.start()
    yield worker
    worker.stop()
    broker.middleware[:] = [m for m in broker.middleware if type(m).__name__ != "_WorkerMiddleware"]
    deps.close()


def test_a_recording_arriving_while_s3_refuses_connections_is_stored_once_it_is_back(
    api: httpx2.Client,
    sandbox: httpx2.Client,
    s3_worker: dramatiq.Worker,
    redis_client: redis.Redis,
    switch: Switch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A recording that arrives while the S3 endpoint refuses connections is retried and
    stored intact once the endpoint is back: no failure, no dead letter."""
    outage_then_stored(
        api, sandbox, redis_client, capsys, backend="s3", reason="EndpointConnectionError",
        down=switch.off, up=switch.on,
    )  # fmt: skip


def test_a_recording_asked_for_while_s3_refuses_connections_is_503(
    api: httpx2.Client,
    sandbox: httpx2.Client,
    s3_worker: dramatiq.Worker,
    switch: Switch,
) -> None:
    """While the endpoint refuses connections the web answers 503 with Retry-After for a
    stored recording (not 500), and serves it again once the endpoint is back."""
    session, _ = _recorded_call(api, sandbox, "wav")
    recording = _recording(api, session["id"])
    switch.off()
    refused = api.get(recording["url"])
    assert refused.status_code == 503
    assert refused.headers["content-type"] == "application/problem+json"
    assert "retry-after" in refused.headers
    switch.on()
    assert api.get(recording["url"]).status_code == 200
