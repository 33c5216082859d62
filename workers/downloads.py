"""Downloading recordings into storage: streamed, checked, atomic, and only from VTS.

``download`` streams the file through a SHA-256 into a storage upload and commits it only
when every check passed (status, declared type, size limit, Content-Length, the bytes
really being WAV or MP3); on any error the upload is aborted, so nothing partial is ever
visible under the recording's name.

The URL comes from a callback, so it is treated as hostile (SSRF). ``DownloadPolicy`` is
the service's egress policy (:mod:`service.egress`: https only, no credentials in the URL,
public addresses only, checked on the address connected to) limited to exact host names
(VTS's API host and ``RECORDING_HOSTS``); redirects are followed by hand, to the same host
only, at most ``MAX_REDIRECTS`` times; VTS credentials go to VTS's own origin only. With a
client from elsewhere (a test's MockTransport) only the check made before each request
applies.
"""

from __future__ import annotations

import hashlib
from contextlib import closing
from dataclasses import dataclass, field

import httpx2
import structlog

from service import egress
from service.egress import (
    EgressPolicy,
    EgressRefused,
    EgressUnresolved,
    Resolver,
    default_port,
    origin,
    resolve,
)
from service.errors import (
    RecordingNotReady,
    RecordingRejected,
    RecordingUnavailable,
)
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


@dataclass(frozen=True)
class DownloadResult:
    size: int
    sha256: str
    content_type: str


@dataclass(frozen=True)
class DownloadPolicy:
    """Where recordings may be fetched from, and how much of them: the service's egress
    policy (:mod:`service.egress`) limited to ``hosts``.

    VTS's credentials go only to ``auth_origins`` (``scheme://host:port``, see
    :func:`service.egress.origin`): VTS's own origin, not any port of its host.
    ``allow_http`` and ``allow_private`` exist for the sandbox on loopback; never set
    them in production.
    """

    hosts: frozenset[str]
    auth_origins: frozenset[str]
    max_bytes: int
    allow_http: bool = False
    allow_private: bool = False
    resolver: Resolver = field(default=resolve, compare=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> DownloadPolicy:
        api = httpx2.URL(settings.vts_base_url)
        return cls(
            hosts=frozenset({api.host, *settings.recording_hosts}),
            auth_origins=frozenset({origin(api)}),
            max_bytes=settings.recording_max_bytes,
            allow_http=settings.egress_allow_http,
            allow_private=settings.egress_allow_private,
        )

    @property
    def egress(self) -> EgressPolicy:
        return EgressPolicy(self.hosts, self.allow_http, self.allow_private, self.resolver)

    def check(self, url: httpx2.URL) -> None:
        """Raise RecordingRejected unless ``url`` may be fetched (its host is resolved)."""
        try:
            self.egress.check(url)
        except EgressRefused as exc:
            raise _refused(url, exc.reason) from None
        except EgressUnresolved as exc:
            raise RecordingUnavailable("the recording host name did not resolve") from exc

    def addresses(self, host: str, port: int) -> list[str]:
        """The addresses of an allowed ``host``, all permitted, to connect to.

        Raises RecordingRejected (host or an address not allowed), RecordingUnavailable
        (the name does not resolve now).
        """
        url = httpx2.URL(scheme="https", host=host, port=port)
        try:
            return self.egress.addresses(host, port)
        except EgressRefused as exc:
            raise _refused(url, exc.reason) from None
        except EgressUnresolved as exc:
            raise RecordingUnavailable("the recording host name did not resolve") from exc


def _refused(url: httpx2.URL, reason: str) -> RecordingRejected:
    log.warning("recording_download_refused", host=url.host, path=url.path, reason=reason)
    return RecordingRejected(f"recording download refused: {reason}")


def build_client(policy: DownloadPolicy, *, timeout: float) -> httpx2.Client:
    """The client workers download with: guarded, no redirects, no environment proxies."""
    return egress.build_client(policy, timeout=timeout)


@dataclass(frozen=True)
class _Job:
    client: httpx2.Client
    policy: DownloadPolicy
    auth: tuple[str, str] | None
    expected_size: int | None

    def open(self, url: httpx2.URL) -> httpx2.Response:
        request = self.client.build_request("GET", url, headers=_HEADERS)
        request.headers.pop("Authorization", None)
        credentials = self.auth if origin(url) in self.policy.auth_origins else None
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
    RecordingRejected (don't) for VTS's side, StorageUnavailable (retry) or StorageError
    for storage's; on any error nothing is stored.
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
    ports = (url.port or default_port(url.scheme), target.port or default_port(target.scheme))
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
