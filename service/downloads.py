"""Downloading recordings into storage: streamed, checked, atomic, and only from VTS.

``download`` streams the file through a SHA-256 into a storage upload and commits it only
when every check passed (status, declared type, size limit, Content-Length, the bytes
really being WAV or MP3); on any error the upload is aborted, so nothing partial is ever
visible under the recording's name.

The URL comes from a callback, so it is treated as hostile (SSRF). ``DownloadPolicy``
allows exact host names only (VTS's API host and ``RECORDING_HOSTS``), https only, and
public addresses only; redirects are followed by hand, to the same host only, at most
``MAX_REDIRECTS`` times; VTS credentials go to ``auth_hosts`` only. ``build_client`` gives
a client whose connections go to the very address that was checked, at connect time, so
DNS rebinding between check and connect cannot reach a private address. With a client
from elsewhere (a test's MockTransport) only the check made before each request applies.
"""

from __future__ import annotations

import hashlib
import ipaddress
import socket
from collections.abc import Callable, Iterable
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpcore2
import httpx2
import structlog

from service.errors import ServiceError
from service.settings import Settings
from service.storage import CHUNK_SIZE, Storage, Upload

log = structlog.get_logger(__name__)

MAX_REDIRECTS = 3
_HEADERS = {"Accept": "audio/mpeg, audio/wav, */*;q=0.1", "Accept-Encoding": "identity"}

# Declared types we take, as the type we store. ``application/octet-stream`` is how object
# stores often serve media; whatever the declaration, the bytes must be WAV or MP3.
_AUDIO_TYPES = {
    "audio/mpeg": "audio/mpeg",
    "audio/mp3": "audio/mpeg",
    "audio/mpeg3": "audio/mpeg",
    "audio/x-mpeg-3": "audio/mpeg",
    "audio/wav": "audio/wav",
    "audio/wave": "audio/wav",
    "audio/x-wav": "audio/wav",
    "audio/vnd.wave": "audio/wav",
}
_GENERIC_TYPES = frozenset({"", "application/octet-stream", "binary/octet-stream"})
_SNIFF_BYTES = 12


class RecordingError(ServiceError):
    """A recording could not be downloaded. Messages hold no URL and no secret."""

    def __init__(self, reason: str, *, status: int | None = None) -> None:
        super().__init__(reason)
        self.status = status


class RecordingNotReady(RecordingError):
    """VTS answered 404: the file is not there yet (it often is a little later)."""


class RecordingUnavailable(RecordingError):
    """A network error, a 5xx/408/425/429 or an incomplete body: try again later.

    ``retry_after`` is the host's ``Retry-After`` in seconds, when it gave one.
    """

    def __init__(
        self, reason: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(reason, status=status)
        self.retry_after = retry_after


class RecordingRejected(RecordingError):
    """Refused by policy or by the host (other 4xx): retrying will not help."""


@dataclass(frozen=True)
class DownloadResult:
    size: int
    sha256: str
    content_type: str


Resolver = Callable[[str, int], list[str]]


def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (OSError when it does not)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def is_public(address: str) -> bool:
    """False for loopback, private, link-local, multicast, reserved, unspecified..."""
    ip = ipaddress.ip_address(address.partition("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    special = ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
    return ip.is_global and not (special or ip.is_reserved or ip.is_unspecified)


@dataclass(frozen=True)
class DownloadPolicy:
    """Where recordings may be fetched from, and how much of them.

    ``allow_http`` and ``allow_private`` exist for the sandbox on loopback; never set
    them in production.
    """

    hosts: frozenset[str]
    auth_hosts: frozenset[str]
    max_bytes: int
    allow_http: bool = False
    allow_private: bool = False
    resolver: Resolver = field(default=resolve, compare=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> DownloadPolicy:
        api_host = (urlsplit(settings.vts_base_url).hostname or "").lower()
        return cls(
            hosts=frozenset({api_host, *settings.recording_hosts}),
            auth_hosts=frozenset({api_host}),
            max_bytes=settings.recording_max_bytes,
            allow_http=settings.recording_allow_http,
            allow_private=settings.recording_allow_private,
        )

    def check(self, url: httpx2.URL) -> None:
        """Raise RecordingRejected unless ``url`` may be fetched (its host is resolved)."""
        if url.scheme != "https" and not (url.scheme == "http" and self.allow_http):
            raise _refused(url, "scheme not allowed")
        if url.userinfo:
            raise _refused(url, "credentials in the URL")
        self._permitted(url, url.port or _default_port(url.scheme))

    def addresses(self, host: str, port: int) -> list[str]:
        """The addresses of an allowed ``host``, all permitted, to connect to.

        Raises RecordingRejected (host or an address not allowed), RecordingUnavailable
        (the name does not resolve now).
        """
        return self._permitted(httpx2.URL(scheme="https", host=host, port=port), port)

    def _permitted(self, url: httpx2.URL, port: int) -> list[str]:
        if url.host not in self.hosts:
            raise _refused(url, "host not allowed")
        try:
            found = self.resolver(url.host, port)
        except OSError as exc:
            raise RecordingUnavailable("the recording host name did not resolve") from exc
        if not found or not (self.allow_private or all(map(is_public, found))):
            raise _refused(url, "host address not allowed")
        return found


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


def _refused(url: httpx2.URL, reason: str) -> RecordingRejected:
    log.warning("recording_download_refused", host=url.host, path=url.path, reason=reason)
    return RecordingRejected(f"recording download refused: {reason}")


class _GuardedBackend(httpcore2.NetworkBackend):
    """Connects only to addresses the policy permits, resolved and checked right here."""

    def __init__(self, policy: DownloadPolicy) -> None:
        self._policy = policy
        self._backend = httpcore2.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.NetworkStream:
        error: Exception = httpcore2.ConnectError("no address to connect to")
        for address in self._policy.addresses(host, port):
            try:
                return self._backend.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except (httpcore2.ConnectError, httpcore2.ConnectTimeout) as exc:
                error = exc
        raise error

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class GuardedTransport(httpx2.HTTPTransport):
    """An HTTPTransport pinned to the policy's permitted addresses (TLS still checks the
    certificate against the host name). No proxies: a proxy would connect for us."""

    def __init__(self, policy: DownloadPolicy, limits: httpx2.Limits | None = None) -> None:
        limits = limits or httpx2.Limits(max_connections=20, max_keepalive_connections=5)
        super().__init__(trust_env=False, limits=limits)
        # HTTPTransport takes no network backend, so its pool is replaced by one that has.
        self._pool = httpcore2.ConnectionPool(
            ssl_context=httpx2.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_GuardedBackend(policy),
        )


def build_client(policy: DownloadPolicy, *, timeout: float) -> httpx2.Client:
    """The client workers download with: guarded, no redirects, no environment proxies."""
    return httpx2.Client(
        transport=GuardedTransport(policy),
        trust_env=False,
        follow_redirects=False,
        timeout=httpx2.Timeout(timeout, connect=min(timeout, 10.0)),
    )


@dataclass(frozen=True)
class _Job:
    client: httpx2.Client
    policy: DownloadPolicy
    auth: tuple[str, str] | None
    expected_size: int | None

    def open(self, url: httpx2.URL) -> httpx2.Response:
        request = self.client.build_request("GET", url, headers=_HEADERS)
        request.headers.pop("Authorization", None)
        credentials = self.auth if url.host in self.policy.auth_hosts else None
        auth = httpx2.BasicAuth(*credentials) if credentials else None
        return self.client.send(request, auth=auth, follow_redirects=False, stream=True)


def download(
    url: str,
    *,
    dest_name: str,
    storage: Storage,
    client: httpx2.Client,
    policy: DownloadPolicy,
    auth: tuple[str, str] | None,
    expected_size: int | None = None,
) -> DownloadResult:
    """Fetch ``url`` into ``storage`` as ``dest_name``; return its size, hash and type.

    Idempotent: when ``dest_name`` is already stored, nothing is fetched and its result is
    computed from the stored file. ``auth`` (VTS's id and token) is sent to the policy's
    ``auth_hosts`` only. Raises RecordingNotReady (404), RecordingUnavailable (retry) or
    RecordingRejected (don't); on any error nothing is stored.
    """
    if storage.exists(dest_name):
        return describe(storage, dest_name)
    try:
        target = httpx2.URL(url)
    except httpx2.InvalidURL as exc:
        raise RecordingRejected("the recording URL is not a valid URL") from exc
    with storage.open_writer(dest_name) as upload:
        result = _fetch(target, upload, _Job(client, policy, auth, expected_size))
        upload.commit()
    log.info("recording_downloaded", stored_name=dest_name, size=result.size, host=target.host)
    return result


def _fetch(url: httpx2.URL, upload: Upload, job: _Job) -> DownloadResult:
    try:
        for _ in range(MAX_REDIRECTS + 1):
            job.policy.check(url)
            with closing(job.open(url)) as response:
                if not response.is_redirect:
                    return _receive(response, upload, job)
                url = _redirect(url, response)
    except (httpx2.TransportError, httpx2.DecodingError) as exc:
        reason = f"recording download failed: {type(exc).__name__}"
        raise RecordingUnavailable(reason) from exc
    raise _refused(url, "too many redirects")


def _redirect(url: httpx2.URL, response: httpx2.Response) -> httpx2.URL:
    """Where a redirect leads, if it stays on the same host (and port, and https)."""
    try:
        target = url.join(response.headers["Location"])
    except httpx2.InvalidURL as exc:
        raise _refused(url, "redirect to an invalid URL") from exc
    if url.scheme == "https" and target.scheme != "https":
        raise _refused(target, "redirect away from https")
    ports = (url.port or _default_port(url.scheme), target.port or _default_port(target.scheme))
    same_port = ports[0] == ports[1] or url.port is target.port is None  # http to https
    if target.host != url.host or not same_port:
        raise _refused(target, "redirect to another host")
    return target


def _receive(response: httpx2.Response, upload: Upload, job: _Job) -> DownloadResult:
    _check_status(response)
    declared = _declared_type(response)
    length = _content_length(response, job.policy.max_bytes)
    tally = _Tally()
    for chunk in response.iter_bytes(CHUNK_SIZE):
        tally.add(chunk)
        if tally.size > job.policy.max_bytes:
            raise _refused(response.url, "larger than the size limit")
        upload.write(chunk)
    if length is not None and _received(response, tally.size) != length:
        raise RecordingUnavailable("the recording body ended before its Content-Length")
    if job.expected_size is not None and tally.size != job.expected_size:
        raise RecordingUnavailable("the recording is not of the expected size")
    return tally.result(declared)


def _received(response: httpx2.Response, decoded: int) -> int:
    """Bytes received as sent (Content-Length counts them before any decoding)."""
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    return decoded if encoding == "identity" else response.num_bytes_downloaded


def _check_status(response: httpx2.Response) -> None:
    status = response.status_code
    if status == 200:
        return
    if status == 404:
        raise RecordingNotReady("the recording is not available yet (404)", status=status)
    reason = f"the recording host answered {status}"
    if status >= 500 or status in (408, 425, 429):
        retry_after = _retry_after(response.headers.get("Retry-After", ""))
        raise RecordingUnavailable(reason, status=status, retry_after=retry_after)
    raise RecordingRejected(reason, status=status)


def _retry_after(raw: str) -> float | None:
    return float(raw) if raw.strip().isdigit() else None


def _declared_type(response: httpx2.Response) -> str:
    """The declared content type as the type we store ('' for a generic one)."""
    declared = response.headers.get("Content-Type", "").partition(";")[0].strip().lower()
    if declared in _GENERIC_TYPES:
        return ""
    if declared not in _AUDIO_TYPES:
        raise _refused(response.url, "content type not allowed")
    return _AUDIO_TYPES[declared]


def _content_length(response: httpx2.Response, max_bytes: int) -> int | None:
    raw = response.headers.get("Content-Length")
    if raw is None:
        return None
    if not raw.strip().isdigit():
        raise RecordingUnavailable("the recording host sent an invalid Content-Length")
    if int(raw) > max_bytes:
        raise _refused(response.url, "larger than the size limit")
    return int(raw)


def sniff(head: bytes) -> str | None:
    """``audio/wav`` or ``audio/mpeg`` from a file's first 12 bytes; None for neither."""
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "audio/wav"
    if head[:3] == b"ID3" or (len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "audio/mpeg"
    return None


class _Tally:
    """Size, SHA-256 and first bytes of a body."""

    def __init__(self) -> None:
        self._digest = hashlib.sha256()
        self._head = b""
        self.size = 0

    def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        self._digest.update(chunk)
        if len(self._head) < _SNIFF_BYTES:
            self._head += chunk[: _SNIFF_BYTES - len(self._head)]

    def result(self, declared: str) -> DownloadResult:
        """The result, if the bytes are the audio declared ('' : any audio we take)."""
        actual = sniff(self._head)
        if actual is None:
            raise RecordingRejected("the recording is neither WAV nor MP3")
        if declared and declared != actual:
            raise RecordingRejected(f"the recording is {actual}, not {declared} as declared")
        return DownloadResult(self.size, self._digest.hexdigest(), actual)


def describe(storage: Storage, name: str) -> DownloadResult:
    """Size, SHA-256 and type of a stored recording, read back (streamed) from storage."""
    tally = _Tally()
    for chunk in storage.open_reader(name):
        tally.add(chunk)
    return tally.result("")
