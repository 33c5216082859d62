"""The web's own limits and ports, on a real ``masking web`` process over real sockets:
head size (431), head-read and keep-alive timeouts, the connection limit (503), and the
internal endpoints on ADMIN_PORT only."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.errors import ConfigurationError
from service.settings import Settings
from tests.conftest import API_KEY, AUTH_ID, AUTH_TOKEN, wait_until
from tests.servers import free_port

# Generous: a slow or busy machine must not close what the test expects open, and every
# "closed" below is awaited with a deadline many times the configured timeout.
CLOSED_WITHIN = 60.0
WORKER_FAMILIES = {
    "masking_messages",
    "masking_message_seconds",
    "masking_vts_calls",
    "masking_vts_call_seconds",
    "masking_vts_rate_limit_waits",
    "masking_vts_rate_limit_wait_seconds",
    "masking_recordings",
    "masking_recording_bytes",
}


@dataclass
class Web:
    port: int
    admin_port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=CLOSED_WITHIN)


def _env(redis_url: str, port: int, admin_port: int, extra: dict[str, str]) -> dict[str, str]:
    return {
        "PATH": "/usr/bin:/bin",
        "REDIS_URL": redis_url,
        "VTS_AUTH_ID": AUTH_ID,
        "VTS_AUTH_TOKEN": AUTH_TOKEN,
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "API_KEYS": API_KEY,
        "PORT": str(port),
        "ADMIN_PORT": str(admin_port),
        "LOG_FORMAT": "json",
        **extra,
    }


def _answers(url: str) -> bool:
    try:
        return httpx2.get(url + "/healthz", timeout=5).status_code == 200
    except httpx2.TransportError:
        return False


@contextlib.contextmanager
def running_web(
    redis_url: str, tmp_path: Path, descriptors: int | None = None, **extra: str
) -> Iterator[Web]:
    port, admin_port = free_port(), free_port()
    env = _env(redis_url, port, admin_port, extra)
    command = [sys.executable, "-m", "service", "web", "--host", "127.0.0.1"]
    if descriptors is not None:
        command = ["/bin/sh", "-c", f'ulimit -n {descriptors} && exec "$0" "$@"', *command]
    with (tmp_path / f"web-{port}.log").open("wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    web = Web(port, admin_port, process, tmp_path / f"web-{port}.log")
    try:
        wait_until(lambda: _answers(web.url) or process.poll() is not None, timeout=60)
        assert process.poll() is None, (tmp_path / f"web-{port}.log").read_text()
        yield web
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _request(path: str = "/healthz", *, extra: bytes = b"") -> bytes:
    return b"GET " + path.encode() + b" HTTP/1.1\r\nHost: web\r\n" + extra + b"\r\n"


def _read_response(sock: socket.socket) -> tuple[int, bytes, bytes]:
    """Status, head and body of one response (Content-Length framed)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "closed in the middle of a body"
        body += chunk
    return int(head.split(b" ", 2)[1]), head, body


def _closed_by_server(sock: socket.socket) -> bool:
    """True once the server closes: recv returns nothing (or the peer reset)."""
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True


@pytest.fixture
def web(redis_url: str, tmp_path: Path) -> Iterator[Web]:
    with running_web(
        redis_url, tmp_path, WEB_HEADER_TIMEOUT="2", WEB_KEEPALIVE_TIMEOUT="1"
    ) as started:
        yield started


def test_a_head_over_the_header_cap_is_431_problem(web: Web) -> None:
    """A 20 KiB header is refused with 431 problem+json and the connection closed."""
    with web.connect() as sock:
        sock.sendall(_request(extra=b"X-Big: " + b"a" * (20 * 1024) + b"\r\n"))
        status, head, body = _read_response(sock)
        assert status == 431
        assert b"content-type: application/problem+json" in head.lower()
        problem = json.loads(body)
        assert problem["status"] == 431
        assert problem["type"].endswith("/problems/request-header-fields-too-large")
        assert _closed_by_server(sock)


def test_a_head_under_the_header_cap_is_served(web: Web) -> None:
    """Headers totalling 15 KiB (under the 16 KiB default) are served as usual."""
    with web.connect() as sock:
        sock.sendall(_request(extra=b"X-Big: " + b"a" * (15 * 1024) + b"\r\n"))
        assert _read_response(sock)[0] == 200


def test_a_megabytes_header_is_refused_without_reading_it(web: Web) -> None:
    """A head sent in one 4 MB write is refused at the cap: 431, not parsed whole."""
    with web.connect() as sock:
        head = _request(extra=b"X-Big: " + b"a" * (4 * 1024 * 1024) + b"\r\n")
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            sock.sendall(head)
        assert _read_response(sock)[0] == 431


def test_a_head_trickled_line_by_line_is_closed(web: Web) -> None:
    """A slowloris connection (one header line every 0.5 s) is closed by the 2 s
    head-read timeout, not kept while lines keep coming."""
    with web.connect() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: web\r\n")
        sock.settimeout(0.5)
        deadline = CLOSED_WITHIN
        closed = False
        while deadline > 0 and not closed:
            try:
                closed = _closed_by_server(sock)
            except TimeoutError:
                deadline -= 0.5
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    sock.sendall(b"X-Slow: a\r\n")
        assert closed


def test_a_connection_that_sends_nothing_is_closed(web: Web) -> None:
    """A connection that never sends a byte is closed by the head-read timeout."""
    with web.connect() as sock:
        assert _closed_by_server(sock)


def test_an_idle_keep_alive_connection_is_closed(web: Web) -> None:
    """After a response, a keep-alive connection left idle is closed (WEB_KEEPALIVE_TIMEOUT)."""
    with web.connect() as sock:
        sock.sendall(_request())
        assert _read_response(sock)[0] == 200
        assert _closed_by_server(sock)


def test_connections_beyond_the_limit_are_503(redis_url: str, tmp_path: Path) -> None:
    """With WEB_MAX_CONNECTIONS=2, two open connections are served and a third one's
    request is answered 503; once one closes, a new connection is served again."""
    with (
        running_web(
            redis_url,
            tmp_path,
            WEB_MAX_CONNECTIONS="2",
            WEB_KEEPALIVE_TIMEOUT="600",
            WEB_HEADER_TIMEOUT="600",
        ) as web,
        web.connect() as first,
        web.connect() as second,
    ):
        for sock in (first, second):
            sock.sendall(_request())
            assert _read_response(sock)[0] == 200
        with web.connect() as third:
            third.sendall(_request())
            assert _read_response(third)[0] == 503
        first.close()

        def served() -> bool:
            with web.connect() as again:
                again.sendall(_request())
                return _read_response(again)[0] == 200

        wait_until(served, timeout=CLOSED_WITHIN, interval=0.1)


def test_internal_endpoints_are_on_the_admin_port_only(web: Web) -> None:
    """/metrics, /metrics/cluster and /openapi-internal.json: 404 on PORT, 200 on ADMIN_PORT."""
    for path in ("/metrics", "/metrics/cluster", "/openapi-internal.json"):
        assert httpx2.get(web.url + path).status_code == 404, path
        assert httpx2.get(web.admin_url + path).status_code == 200, path
    assert httpx2.get(web.url + "/openapi.json").status_code == 200


def test_the_web_exposes_only_its_own_metric_families(web: Web) -> None:
    """The web's /metrics has its HTTP families and none of the workers' (always zero there)."""
    httpx2.get(web.url + "/healthz")
    text = httpx2.get(web.admin_url + "/metrics").text
    names = {family.name for family in text_string_to_metric_families(text)}
    assert "masking_http_requests" in names
    assert not names & WORKER_FAMILIES


def test_a_descriptor_limit_below_the_connection_limit_is_warned(
    redis_url: str, tmp_path: Path
) -> None:
    """With 256 descriptors and WEB_MAX_CONNECTIONS at its 1000, the web says at start-up
    that it may run out of descriptors first (it would stop accepting, not answer 503)."""
    with running_web(redis_url, tmp_path, descriptors=256) as web:
        lines = [json.loads(line) for line in web.log.read_text().splitlines() if line[:1] == "{"]
        (warning,) = [line for line in lines if line["event"] == "web_descriptor_limit_low"]
        assert (warning["descriptors"], warning["web_max_connections"]) == (256, 1000)


def test_admin_port_must_differ_from_port(redis_url: str) -> None:
    """ADMIN_PORT equal to PORT is a configuration error naming ADMIN_PORT; so is
    ``masking web --port`` given the admin port."""
    env = _env(redis_url, 8000, 8001, {})
    with pytest.raises(ConfigurationError, match="ADMIN_PORT"):
        Settings.from_env(env | {"ADMIN_PORT": "8000"})
    port = free_port()
    ran = subprocess.run(
        [sys.executable, "-m", "service", "web", "--host", "127.0.0.1", "--port", str(port)],
        env=_env(redis_url, free_port(), port, {}),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert ran.returncode == 2
    assert b"ADMIN_PORT" in ran.stderr


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WEB_MAX_CONNECTIONS", "0"),
        ("WEB_MAX_HEADER_BYTES", "100"),
        ("WEB_KEEPALIVE_TIMEOUT", "soon"),
        ("WEB_HEADER_TIMEOUT", "-1"),
        ("ADMIN_PORT", "70000"),
    ],
)
def test_malformed_limits_name_their_variable(name: str, value: str) -> None:
    """A malformed limit is a configuration error naming the variable."""
    env = _env("redis://127.0.0.1:1/0", 8000, 8001, {name: value})
    with pytest.raises(ConfigurationError, match=name):
        Settings.from_env(env)
