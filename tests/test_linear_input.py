"""Every parser of request data (headers, paths, queries, bodies, callback fields, the
masking of what is logged) costs time linear in its input: none can hold the event loop."""

from __future__ import annotations

import contextlib
import hashlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx2
import pytest
import redis
from starlette.requests import Request

from service import logs, phones, strictjson
from service.egress import EgressPolicy
from service.settings import Settings
from service.storage import LocalStorage
from service.store import RecordingStore
from service.vts import callbacks, dialects, signatures
from service.web import api, media, middleware, webhooks
from service.web.problems import Problem
from tests.conftest import API_KEY, http_client, make_settings, new_numbers

SIZE = 64 * 1024
AUDIO = b"RIFF\x24\x00\x00\x00WAVE" + bytes(range(32))
SPACES = " " * SIZE


def _request(name: bytes, value: str) -> Request:
    return Request({"type": "http", "headers": [(name, value.encode("latin-1"))]})


def _ignore(call: Callable[[], object]) -> Callable[[], None]:
    """``call``, its answer or refusal ignored: only its cost matters here."""

    def run() -> None:
        with contextlib.suppress(ValueError, LookupError, Problem, callbacks.InvalidEvent):
            call()

    return run


# Each parser of request data with the worst input of about SIZE bytes we know for it:
# long runs that a backtracking pattern would try from every position.
CASES: dict[str, Callable[[], None]] = {
    "if-none-match spaces": _ignore(lambda: media._matches_any("a" + SPACES + "x", '"x"')),
    "if-none-match tags": _ignore(lambda: media._matches_any('W/"a" ,' * (SIZE // 7), '"x"')),
    "range": _ignore(lambda: media._byte_range("bytes=" + "1" * SIZE + "-" + "1" * SIZE + "x", 9)),
    "prefer": _ignore(lambda: api._wait_seconds(_request(b"prefer", ",wait" + SPACES + "=x"))),
    "idempotency-key": _ignore(
        lambda: api._idempotency_key(_request(b"idempotency-key", "a" * SIZE))
    ),
    "x-request-id": _ignore(lambda: middleware._request_id("a1-" * (SIZE // 3))),
    "mask digits": _ignore(lambda: phones.mask_text("1 " * (SIZE // 2))),
    "mask groups": _ignore(lambda: phones.mask_text("+1 (1) " * (SIZE // 7))),
    "mask separators": _ignore(lambda: phones.mask_text("415-555-" * (SIZE // 8))),
    "mask pairs": _ignore(lambda: phones.mask_text("0" + " 12" * (SIZE // 3))),
    "mask nanp": _ignore(lambda: phones.mask_text("1-415-555-" * (SIZE // 10))),
    "callback_url": _ignore(lambda: EgressPolicy().refusal("https://x/?" + "a=&" * (SIZE // 3))),
    "callback_url host": _ignore(lambda: EgressPolicy().refusal("https://" + "1." * (SIZE // 2))),
    "log line": _ignore(
        lambda: logs.mask_phone_numbers(None, "info", {"route": "/" + "1." * (SIZE // 2)})
    ),
    "callback form": _ignore(
        lambda: callbacks.check("session", webhooks._form_params("a=" + "%2" * SIZE, strict=True))
    ),
    "callback json": _ignore(
        lambda: webhooks._json_params(b'{"a":"' + b"\\u0041" * (SIZE // 6) + b'"}')
    ),
    "callback fields": _ignore(
        lambda: callbacks.check("session", {"EventName": "a" * SIZE, "SessionUUID": "a-" * SIZE})
    ),
    "signature header": _ignore(
        lambda: signatures.verify_v3("https://h/p", {}, "1", " ," * (SIZE // 2), "t", "POST")
    ),
    "json surrogates": _ignore(lambda: strictjson.loads('"' + "\\ud800" * (SIZE // 6) + '"')),
    "vts timestamp": _ignore(
        lambda: dialects._timestamp("2026-01-01T00:00:00." + "1" * SIZE + SPACES + "\n")
    ),
}

# The old If-None-Match pattern took minutes on this input; each case takes milliseconds.
BOUND_SECONDS = 1.0

_CHILD = """
import sys, time
from tests.test_linear_input import CASES
for name, case in sorted(CASES.items()):
    started = time.perf_counter()
    case()
    print(name, time.perf_counter() - started, sep="\t", flush=True)
"""


@pytest.fixture(scope="module")
def seconds_taken() -> dict[str, float]:
    """What each case took, run one after the other in a child process: a parser that does
    backtrack is stopped at the deadline rather than holding the test run for minutes (it
    and the cases after it then have no figure)."""
    root = Path(__file__).resolve().parent.parent
    command = [sys.executable, "-c", _CHILD]
    with subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE, text=True) as child:
        try:
            output, _ = child.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            child.kill()
            output, _ = child.communicate()
    figures = (line.split("\t") for line in output.splitlines())
    return {name: float(seconds) for name, seconds in figures}


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_parser_of_request_data_is_linear(name: str, seconds_taken: dict[str, float]) -> None:
    """A parser of request data handles 64 KB of its worst input within a second."""
    assert name in seconds_taken, f"{name} (or a case before it) ran for more than 60 s"
    assert seconds_taken[name] < BOUND_SECONDS, name


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
def recording_path(settings: Settings, api: httpx2.Client, redis_client: redis.Redis) -> str:
    """The API path of a stored recording of one of the app's sessions."""
    first, second = new_numbers()
    parties = {"first_party": first, "second_party": second}
    session_id = api.post("/v1/sessions", json=parties).json()["id"]
    store = RecordingStore(redis_client)
    pending = store.upsert_pending(session_id, "rec-uuid-1", "wav")
    assert pending is not None
    with LocalStorage(settings.recordings_dir).open_writer(pending.stored_name) as upload:
        upload.write(AUDIO)
        upload.commit()
    digest = hashlib.sha256(AUDIO).hexdigest()
    store.mark_stored(pending.id, size=len(AUDIO), sha256=digest, content_type="audio/wav")
    return f"/v1/recordings/{pending.id}"


def _send_crafted(web_url: str, path: str, sent: threading.Event, answers: list[bytes]) -> None:
    """GET ``path`` with an If-None-Match of a, 16,000 spaces and x; set ``sent`` once the
    request is on its way, and keep the answer."""
    host, port = web_url.removeprefix("http://").split(":")
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {API_KEY}\r\n"
        f"If-None-Match: a{' ' * 16_000}x\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=120) as sock:
        sock.sendall(request.encode())
        sent.set()
        answers.append(sock.makefile("rb").read())


def test_a_crafted_if_none_match_does_not_stall_the_web(web_url: str, recording_path: str) -> None:
    """While a crafted If-None-Match is being answered, /healthz still answers at once."""
    answers: list[bytes] = []
    sent = threading.Event()
    args = (web_url, recording_path, sent, answers)
    crafted = threading.Thread(target=_send_crafted, args=args)
    crafted.start()
    try:
        assert sent.wait(30)
        with http_client(web_url, timeout=60) as client:
            # Asked again and again until the crafted request is answered, so that some
            # ask lands while it is being parsed (it first waits on Redis).
            waits = [_healthz_seconds(client)]
            while crafted.is_alive():
                waits.append(_healthz_seconds(client))
    finally:
        crafted.join(180)
    # Milliseconds now; the quadratic pattern held the event loop for 8 to 15 s.
    assert max(waits) < 3.0
    assert answers
    assert answers[0].startswith(b"HTTP/1.1 200")


def _healthz_seconds(client: httpx2.Client) -> float:
    started = time.monotonic()
    assert client.get("/healthz").status_code == 200
    return time.monotonic() - started
