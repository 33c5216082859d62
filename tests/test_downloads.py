"""Recording downloads: streamed and checked into storage, atomic, idempotent, SSRF-safe."""

from __future__ import annotations

import hashlib
import io
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx2
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route
from structlog.testing import capture_logs

from service.egress import origin
from service.errors import ConfigurationError
from service.settings import Settings
from service.storage import LocalStorage
from tests.servers import serve
from workers.downloads import (
    DownloadPolicy,
    RecordingNotReady,
    RecordingRejected,
    RecordingUnavailable,
    build_client,
    download,
)

AUTH = ("MAACCOUNT", "token-that-must-stay-secret")
PUBLIC_IP = "93.184.216.34"


def _wav(seconds: int = 10) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(b"\x01\x00" * 8000 * seconds)
    return buffer.getvalue()


WAV = _wav()
MP3 = b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"\xff\xfb" * 100


@dataclass
class Media:
    """A media server on loopback that records every request it gets."""

    url: str = ""
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def paths(self) -> list[str]:
        return [path for path, _ in self.requests]


def _media_app(media: Media, other_url: Callable[[], str]) -> Any:
    async def record(request: Request) -> Response:
        media.requests.append((request.url.path, dict(request.headers)))
        name = request.path_params["name"]
        if name == "missing":
            return Response(status_code=404)
        if name == "broken":
            return Response(status_code=503)
        if name == "same-host":
            return RedirectResponse("/rec.wav", status_code=302)
        if name == "loop":
            return RedirectResponse("/loop", status_code=302)
        if name == "other-host":
            return RedirectResponse(other_url() + "/rec.wav", status_code=302)
        return Response(WAV, media_type="audio/wav")

    app = Starlette(routes=[Route("/{name}", record)])

    async def asgi(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/cut":
            media.requests.append(("/cut", {}))
            headers = [(b"content-type", b"audio/wav"), (b"content-length", b"%d" % len(WAV))]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": WAV[:70000], "more_body": True})
            raise RuntimeError("connection cut on purpose")
        await app(scope, receive, send)

    return asgi


@pytest.fixture
def other() -> Iterator[Media]:
    """A second server, the target of cross-host redirects."""
    media = Media()
    with serve(_media_app(media, lambda: "")) as url:
        media.url = url
        yield media


@pytest.fixture
def media(other: Media) -> Iterator[Media]:
    media = Media()
    with serve(_media_app(media, lambda: other.url)) as url:
        media.url = url
        yield media


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "recordings")


# The sandbox and these servers are on loopback: happy paths must allow it explicitly.
LOOPBACK = DownloadPolicy(
    hosts=frozenset({"127.0.0.1"}),
    auth_origins=frozenset(),
    max_bytes=1024 * 1024,
    allow_http=True,
    allow_private=True,
)
# What production enforces (bar https, so loopback servers can show a refusal).
STRICT = DownloadPolicy(
    hosts=frozenset({"127.0.0.1", "localhost", "169.254.169.254", "10.0.0.1"}),
    auth_origins=frozenset(),
    max_bytes=1024 * 1024,
    allow_http=True,
)


@pytest.fixture
def client() -> Iterator[httpx2.Client]:
    with build_client(LOOPBACK, timeout=5) as client:
        yield client


def _files(storage: LocalStorage) -> list[str]:
    return sorted(p.name for p in storage.root.iterdir())


def _get(
    url: str,
    storage: LocalStorage,
    client: httpx2.Client,
    policy: DownloadPolicy = LOOPBACK,
    **options: Any,
) -> Any:
    options.setdefault("auth", AUTH)
    return download(
        url, dest_name="rec_1.wav", storage=storage, client=client, policy=policy, **options
    )


def test_download_stores_the_file_with_its_hash(
    media: Media, storage: LocalStorage, client: httpx2.Client
) -> None:
    """A 200 is streamed into storage; size, sha256 and type describe the stored bytes."""
    result = _get(media.url + "/rec.wav", storage, client)
    assert (result.size, result.sha256) == (len(WAV), hashlib.sha256(WAV).hexdigest())
    assert result.content_type == "audio/wav"
    assert b"".join(storage.open_reader("rec_1.wav")) == WAV
    assert _files(storage) == ["rec_1.wav"]


def test_second_download_does_not_fetch(
    media: Media, storage: LocalStorage, client: httpx2.Client
) -> None:
    """An already stored recording is described from storage, not fetched again."""
    first = _get(media.url + "/rec.wav", storage, client)
    second = _get(media.url + "/rec.wav", storage, client)
    assert second == first
    assert media.paths() == ["/rec.wav"]


def test_404_is_not_ready(media: Media, storage: LocalStorage, client: httpx2.Client) -> None:
    """VTS's 404 right after the event means: not there yet."""
    with pytest.raises(RecordingNotReady):
        _get(media.url + "/missing", storage, client)
    assert _files(storage) == []


def test_5xx_is_unavailable(media: Media, storage: LocalStorage, client: httpx2.Client) -> None:
    """A 5xx is worth retrying."""
    with pytest.raises(RecordingUnavailable) as caught:
        _get(media.url + "/broken", storage, client)
    assert caught.value.status == 503


def test_cut_connection_is_unavailable_and_stores_nothing(
    media: Media, storage: LocalStorage, client: httpx2.Client
) -> None:
    """A body cut short by the peer is retryable, and no partial file remains."""
    with pytest.raises(RecordingUnavailable):
        _get(media.url + "/cut", storage, client)
    assert _files(storage) == []


def test_same_host_redirect_is_followed(
    media: Media, storage: LocalStorage, client: httpx2.Client
) -> None:
    """A redirect on the same host is followed by hand."""
    assert _get(media.url + "/same-host", storage, client).size == len(WAV)
    assert media.paths() == ["/same-host", "/rec.wav"]


def test_redirect_loops_end(media: Media, storage: LocalStorage, client: httpx2.Client) -> None:
    """At most three redirects are followed."""
    with pytest.raises(RecordingRejected, match="too many redirects"):
        _get(media.url + "/loop", storage, client)
    assert len(media.requests) == 4


def test_redirect_to_another_host_is_refused(
    media: Media, other: Media, storage: LocalStorage
) -> None:
    """A redirect off the host is refused before any connection to its target."""
    policy = replace(LOOPBACK, hosts=frozenset({"127.0.0.1", "localhost"}))
    media_url = media.url.replace("127.0.0.1", "localhost")
    with (
        build_client(policy, timeout=5) as client,
        pytest.raises(RecordingRejected, match="another host"),
    ):
        _get(media_url + "/other-host", storage, client, policy)
    assert media.paths() == ["/other-host"]
    assert other.requests == []


def test_auth_is_sent_to_auth_origins_only(
    media: Media, other: Media, storage: LocalStorage
) -> None:
    """VTS's credentials go to its own origin only (not another port of its host); a
    client's own Authorization is dropped."""
    leaky = httpx2.Client(headers={"Authorization": "Bearer leaked"}, auth=("x", "y"))
    with leaky:
        _get(media.url + "/rec.wav", storage, leaky, LOOPBACK)
    vts = replace(LOOPBACK, auth_origins=frozenset({origin(httpx2.URL(media.url))}))
    with build_client(vts, timeout=5) as client:
        storage.delete("rec_1.wav")
        _get(media.url + "/rec.wav", storage, client, vts)
        storage.delete("rec_1.wav")
        _get(other.url + "/rec.wav", storage, client, vts)
    sent = [headers.get("authorization") for _, headers in media.requests]
    assert sent == [None, httpx2.BasicAuth(*AUTH)._auth_header]
    assert [headers.get("authorization") for _, headers in other.requests] == [None]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:6379/",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/rec.wav",
        "http://localhost:{port}/rec.wav",
        "http://127.0.0.1:{port}/rec.wav",
        "http://media.evil.example/rec.wav",
        "ftp://127.0.0.1/rec.wav",
        "http://user:pass@127.0.0.1:{port}/rec.wav",
    ],
)
def test_ssrf_targets_are_refused(media: Media, storage: LocalStorage, url: str) -> None:
    """Private, loopback, link-local and unlisted targets are refused before connecting."""
    port = media.url.rsplit(":", 1)[1]
    with build_client(STRICT, timeout=5) as client, pytest.raises(RecordingRejected):
        _get(url.format(port=port), storage, client, STRICT)
    assert media.requests == []
    assert _files(storage) == []


def test_https_only_unless_allowed(storage: LocalStorage) -> None:
    """Plain http is refused by default."""
    policy = replace(STRICT, allow_http=False, hosts=frozenset({"media.test"}))
    with httpx2.Client(transport=_mock(_ok)) as client, pytest.raises(RecordingRejected):
        _get("http://media.test/rec.wav", storage, client, policy)


def test_connections_go_to_the_checked_address(media: Media, storage: LocalStorage) -> None:
    """The guarded client connects to the address the policy resolved and checked."""
    port = media.url.rsplit(":", 1)[1]
    policy = replace(LOOPBACK, hosts=frozenset({"media.test"}), resolver=lambda h, p: ["127.0.0.1"])
    with build_client(policy, timeout=5) as client:
        result = _get(f"http://media.test:{port}/rec.wav", storage, client, policy)
    assert result.size == len(WAV)
    assert media.requests[0][1]["host"] == f"media.test:{port}"


def test_dns_rebinding_is_refused_at_connect(media: Media, storage: LocalStorage) -> None:
    """A name that resolves publicly at the check but privately at connect is refused."""
    answers = iter([[PUBLIC_IP], ["127.0.0.1"]])
    policy = replace(STRICT, hosts=frozenset({"media.test"}), resolver=lambda h, p: next(answers))
    port = media.url.rsplit(":", 1)[1]
    with build_client(policy, timeout=5) as client, pytest.raises(RecordingRejected):
        _get(f"http://media.test:{port}/rec.wav", storage, client, policy)
    assert media.requests == []


def test_refusals_log_no_secrets(storage: LocalStorage) -> None:
    """A refusal is logged with host and path only: no query string, no credentials."""
    url = "http://169.254.169.254/latest/meta-data?X-Amz-Signature=sig-secret"
    with (
        capture_logs() as logs,
        build_client(STRICT, timeout=5) as client,
        pytest.raises(RecordingRejected) as caught,
    ):
        _get(url, storage, client, STRICT)
    [entry] = [e for e in logs if e["event"] == "recording_download_refused"]
    assert (entry["host"], entry["path"]) == ("169.254.169.254", "/latest/meta-data")
    text = repr(logs) + str(caught.value)
    assert "sig-secret" not in text
    assert AUTH[1] not in text


# Fine-grained cases, with a MockTransport behind a name that resolves to a public address.

MOCK = replace(STRICT, hosts=frozenset({"media.test"}), resolver=lambda h, p: [PUBLIC_IP])


def _mock(handler: Callable[[httpx2.Request], httpx2.Response]) -> httpx2.MockTransport:
    return httpx2.MockTransport(handler)


def _ok(_: httpx2.Request) -> httpx2.Response:
    return httpx2.Response(200, content=WAV, headers={"Content-Type": "audio/wav"})


def _fetch(
    handler: Callable[[httpx2.Request], httpx2.Response],
    storage: LocalStorage,
    policy: DownloadPolicy = MOCK,
    **options: Any,
) -> Any:
    with httpx2.Client(transport=_mock(handler)) as client:
        return _get("https://media.test/rec.wav", storage, client, policy, **options)


def test_429_is_unavailable_with_retry_after(storage: LocalStorage) -> None:
    """A 429 is retryable and carries the host's Retry-After."""
    with pytest.raises(RecordingUnavailable) as caught:
        _fetch(lambda _: httpx2.Response(429, headers={"Retry-After": "7"}), storage)
    assert caught.value.retry_after == 7


def test_other_4xx_is_rejected(storage: LocalStorage) -> None:
    """A 403 will not get better by retrying."""
    with pytest.raises(RecordingRejected):
        _fetch(lambda _: httpx2.Response(403), storage)


def test_network_error_is_unavailable(storage: LocalStorage) -> None:
    """A connection error is retryable."""

    def refuse(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("refused", request=request)

    with pytest.raises(RecordingUnavailable):
        _fetch(refuse, storage)


def test_short_body_is_unavailable(storage: LocalStorage) -> None:
    """Fewer bytes than Content-Length is retryable, and nothing is stored."""

    def short(_: httpx2.Request) -> httpx2.Response:
        headers = {"Content-Type": "audio/wav", "Content-Length": str(len(WAV) + 10)}
        return httpx2.Response(200, headers=headers, stream=httpx2.ByteStream(WAV))

    with pytest.raises(RecordingUnavailable, match="Content-Length"):
        _fetch(short, storage)
    assert _files(storage) == []


def test_unexpected_size_is_unavailable(storage: LocalStorage) -> None:
    """A body of another size than the caller expects is not stored."""
    with pytest.raises(RecordingUnavailable, match="expected size"):
        _fetch(_ok, storage, expected_size=len(WAV) - 1)
    assert _files(storage) == []


def test_declared_size_over_the_limit_is_refused_unread(storage: LocalStorage) -> None:
    """A Content-Length over the limit is refused before the body is read."""
    policy = replace(MOCK, max_bytes=1000)
    with pytest.raises(RecordingRejected, match="size limit"):
        _fetch(_ok, storage, policy)


def test_streamed_size_over_the_limit_is_refused(storage: LocalStorage) -> None:
    """A body without Content-Length is cut off at the limit, and nothing is stored."""
    produced: list[int] = []

    def endless() -> Iterator[bytes]:
        yield WAV[:44]
        while True:
            produced.append(1)
            yield b"\x00" * 65536

    def handler(_: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"Content-Type": "audio/wav"}, content=endless())

    with pytest.raises(RecordingRejected, match="size limit"):
        _fetch(handler, storage, replace(MOCK, max_bytes=200_000))
    assert len(produced) <= 5
    assert _files(storage) == []


@pytest.mark.parametrize(
    ("content_type", "body", "stored_as"),
    [
        ("application/octet-stream", WAV, "audio/wav"),
        ("audio/mpeg", MP3, "audio/mpeg"),
        ("audio/x-wav; charset=binary", WAV, "audio/wav"),
    ],
)
def test_allowed_types(
    storage: LocalStorage, content_type: str, body: bytes, stored_as: str
) -> None:
    """Audio types and octet-stream are taken; the stored type is what the bytes are."""
    response = httpx2.Response(200, content=body, headers={"Content-Type": content_type})
    assert _fetch(lambda _: response, storage).content_type == stored_as


@pytest.mark.parametrize(
    ("content_type", "body"),
    [("text/html", WAV), ("audio/mpeg", WAV), ("application/octet-stream", b"<html>" * 10)],
)
def test_refused_types(storage: LocalStorage, content_type: str, body: bytes) -> None:
    """Other types, and bytes that are not the audio declared, are refused."""
    response = httpx2.Response(200, content=body, headers={"Content-Type": content_type})
    with pytest.raises(RecordingRejected):
        _fetch(lambda _: response, storage)
    assert _files(storage) == []


def test_cross_host_redirect_refused_before_the_request(storage: LocalStorage) -> None:
    """A redirect to 127.0.0.1 is refused without a request to it."""
    seen: list[str] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(str(request.url.host))
        return httpx2.Response(302, headers={"Location": "https://127.0.0.1:6379/"})

    with pytest.raises(RecordingRejected, match="another host"):
        _fetch(handler, storage)
    assert seen == ["media.test"]


def test_redirect_to_plain_http_is_refused(storage: LocalStorage) -> None:
    """A same-host redirect from https to http is refused."""

    def handler(_: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(302, headers={"Location": "http://media.test/rec.wav"})

    with pytest.raises(RecordingRejected, match="away from https"):
        _fetch(handler, storage)


def _env(**extra: str) -> dict[str, str]:
    return {
        "REDIS_URL": "redis://127.0.0.1:6379/0",
        "VTS_AUTH_ID": "MAACCOUNT",
        "VTS_AUTH_TOKEN": "token",
        "PUBLIC_BASE_URL": "https://masking.example.com",
        "API_KEYS": "k" * 16,
        **extra,
    }


def test_policy_from_settings() -> None:
    """VTS's API host and RECORDING_HOSTS are allowed; credentials go to the API host only."""
    env = _env(RECORDING_HOSTS="media.vtscom.net, CDN.example.com.", RECORDING_MAX_BYTES="5")
    policy = DownloadPolicy.from_settings(Settings.from_env(env))
    assert policy.hosts == {"api.vtscom.net", "media.vtscom.net", "cdn.example.com"}
    assert policy.auth_origins == {"https://api.vtscom.net:443"}
    assert (policy.max_bytes, policy.allow_http, policy.allow_private) == (5, False, False)


@pytest.mark.parametrize(
    ("name", "value"),
    [("RECORDING_HOSTS", "https://media.example.com"), ("EGRESS_ALLOW_PRIVATE", "maybe")],
)
def test_bad_recording_settings_are_named(name: str, value: str) -> None:
    """A malformed recording variable stops start-up with its name."""
    with pytest.raises(ConfigurationError, match=name):
        Settings.from_env(_env(**{name: value}))
