"""Logging: JSON lines through one pipeline, phone numbers masked everywhere."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
import structlog.testing

from service import logs
from service.phones import MAX_TEXT, mask_text
from tests.conftest import configure_test_logs

NUMBER = "+14155552671"


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    buffer = io.StringIO()
    logs.configure(fmt="json", level="INFO", stream=buffer, cache_loggers=False)
    yield buffer
    structlog.contextvars.clear_contextvars()
    configure_test_logs()


def _records(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_lines_are_json_with_context(stream: io.StringIO) -> None:
    """A line is one JSON object with timestamp, level, event and the bound ids."""
    logs.bind(request_id="r-1", session_id="ses_1")
    structlog.get_logger("t").info("session_created", vts_session_uuid="u-1")
    [record] = _records(stream)
    assert record["event"] == "session_created"
    assert record["level"] == "info"
    assert record["timestamp"].endswith("Z")
    assert (record["request_id"], record["session_id"]) == ("r-1", "ses_1")


def test_numbers_are_masked_in_values_and_nested_data(stream: io.StringIO) -> None:
    """Numbers in values, lists and dicts keep only their last four digits."""
    structlog.get_logger("t").info(
        "x", party=NUMBER, nested={"a": [f"call {NUMBER[1:]}"]}, count=12
    )
    [record] = _records(stream)
    assert NUMBER[2:] not in json.dumps(record)
    assert record["party"] == "***2671"
    assert record["count"] == 12


def test_tracebacks_are_masked(stream: io.StringIO) -> None:
    """An exception whose message holds a number is logged with the number masked."""
    try:
        raise ValueError(f"library said {NUMBER} is busy")
    except ValueError:
        structlog.get_logger("t").exception("failed")
    [record] = _records(stream)
    assert "Traceback" in record["exception"]
    assert NUMBER[2:] not in record["exception"]


def test_library_lines_use_the_same_pipeline(stream: io.StringIO) -> None:
    """uvicorn's and dramatiq's stdlib lines come out as masked JSON with the context."""
    logs.bind(request_id="r-2")
    logging.getLogger("uvicorn.error").info("client %s hung up", NUMBER)
    logging.getLogger("dramatiq.worker").warning("retrying for %s", NUMBER)
    records = _records(stream)
    assert [r["logger"] for r in records] == ["uvicorn.error", "dramatiq.worker"]
    assert all(r["request_id"] == "r-2" for r in records)
    assert all(NUMBER[2:] not in r["event"] for r in records)


# Each written form of a number, masked to its last four digits.
MASKED = [
    (NUMBER, "***2671"),
    (NUMBER[1:], "***2671"),
    ("+1 415-555-2671", "***2671"),
    ("(415) 555-2671", "***2671"),
    ("415.555.2671", "***2671"),
    ("415 555 2345", "***2345"),
    ("415-555-2345", "***2345"),
    ("+1 (415) 555 2671", "***2671"),
    ("+44 20 7946 0958", "***0958"),
    ("020 7946 0958", "***0958"),
    ("07911 123456", "***3456"),
    ("tel:+14155552671", "tel:***2671"),
    ("https://x/y/14155552671?z=1", "https://x/y/***2671?z=1"),
    ("party_14155552345", "party_***2345"),
    ("14155552671,14155552672", "***2671,***2672"),
    ("+14155552345 ext. 99", "***2345 ext. 99"),
]
# What is not a phone number, left exactly as it is.
LEFT_ALONE = [
    "2026-11-27T22:22:10.123Z",
    "2026-11-27 10:00:00",
    '"message_timestamp": 1764504504505',
    "epoch 1764504504",
    "ts 1764504504.505",
    "amount 0.00850",
    "3e82ae9d-2c78-4d85-b1a4-6eae7dbafb36",
    "ses_0123456789abcdef0123456789abcdef",
    "rec_12345678901234567890123456789012",
    "127.0.0.1:6379",
    "192.168.100.200",
    "took 1234 ms",
    "version 1.2.3",
]


@pytest.mark.parametrize(("text", "expected"), MASKED)
def test_every_written_form_of_a_number_is_masked(text: str, expected: str) -> None:
    """The common ways of writing a number, spaced and national ones too, are masked."""
    assert mask_text(f"before {text} after") == f"before {expected} after"


@pytest.mark.parametrize("text", LEFT_ALONE)
def test_timestamps_ids_and_addresses_are_left_alone(text: str) -> None:
    """What is not a phone number is not masked."""
    assert mask_text(text) == text


def test_masking_cost_is_bounded_per_field() -> None:
    """A huge crafted value is cut to MAX_TEXT before it is searched, and says so."""
    crafted = ("/+1" + "1234567890123456789" + "x") * 50_000
    masked = mask_text(crafted)
    assert len(masked) < MAX_TEXT + 64
    assert masked.endswith(f"[{len(crafted) - MAX_TEXT} more characters]")


def test_request_line_keeps_a_bounded_path(stream: io.StringIO) -> None:
    """The http_request line of an unmatched 60 KB path holds only its start."""
    from starlette.applications import Starlette
    from starlette.testclient import TestClient

    from service.web.middleware import RequestContext

    app = Starlette(routes=[])
    app.add_middleware(RequestContext)
    path = "/" + "+1" * 30_000
    with TestClient(app) as client:
        assert client.get(path).status_code == 404
    (line,) = [r for r in _records(stream) if r["event"] == "http_request"]
    assert len(line["route"]) <= 256


@pytest.mark.parametrize(
    "incoming", ["14155552671", "call-4155552671", "req.14155552671.x", "+14155552671"]
)
def test_a_request_id_holding_a_number_is_replaced(stream: io.StringIO, incoming: str) -> None:
    """An incoming X-Request-ID that holds a phone number is neither logged nor echoed: the
    request gets an id of our own (request ids are logged as they are, unmasked)."""
    from starlette.applications import Starlette
    from starlette.testclient import TestClient

    from service.web.middleware import RequestContext

    app = Starlette(routes=[])
    app.add_middleware(RequestContext)
    with TestClient(app) as client:
        answer = client.get("/nowhere", headers={"X-Request-ID": incoming})
    assert "4155552671" not in answer.headers["x-request-id"]
    assert "4155552671" not in stream.getvalue()


def test_lines_from_many_threads_never_interleave(stream: io.StringIO) -> None:
    """structlog's lines and the stdlib's share one stream and one lock: every line written
    from 8 threads at once is one whole JSON object."""
    import threading

    def write(index: int) -> None:
        for n in range(200):
            structlog.get_logger("t").info("ours", thread=index, n=n, pad="x" * 300)
            logging.getLogger("dramatiq.worker").warning("theirs %d %d", index, n)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    records = _records(stream)
    assert len(records) == 8 * 200 * 2
    assert {r["logger"] for r in records} == {"t", "dramatiq.worker"}


def test_positional_arguments_and_levels(stream: io.StringIO) -> None:
    """``log.info("... %s", x)`` is formatted (and masked); lines below the level are not
    written; ``warn`` and ``exception`` name their stdlib levels."""
    log = structlog.get_logger("t")
    log.debug("hidden")
    log.info("calling %s now", NUMBER)
    log.warn("careful")
    try:
        raise KeyError("k")
    except KeyError:
        log.exception("failed")
    records = _records(stream)
    assert [(r["event"], r["level"]) for r in records] == [
        ("calling ***2671 now", "info"),
        ("careful", "warning"),
        ("failed", "error"),
    ]


def test_a_line_that_cannot_be_written_is_dropped() -> None:
    """A closed stream loses the line; the caller (a request, a message) carries on."""
    closed = io.StringIO()
    logs.configure(fmt="json", level="INFO", stream=closed, cache_loggers=False)
    try:
        closed.close()
        structlog.get_logger("t").info("lost")
    finally:
        configure_test_logs()


def test_a_logger_cached_before_configure_writes_where_the_last_configure_said() -> None:
    """A worker process configures again after the fork: loggers its parent already used
    (and cached) write to the new stream, as the stdlib's loggers do."""
    first, second = io.StringIO(), io.StringIO()
    try:
        logs.configure(fmt="json", level="INFO", stream=first, cache_loggers=True)
        log = structlog.get_logger("cached")
        log.info("before")
        logs.configure(fmt="json", level="INFO", stream=second, cache_loggers=True)
        log.info("after")
    finally:
        configure_test_logs()
    assert [json.loads(line)["event"] for line in first.getvalue().splitlines()] == ["before"]
    assert [json.loads(line)["event"] for line in second.getvalue().splitlines()] == ["after"]


def test_a_value_is_masked_every_time_it_is_logged(stream: io.StringIO) -> None:
    """Values that masking leaves alone are remembered to save work; one holding a number
    is masked on every line, never remembered as left alone."""
    log = structlog.get_logger("test")
    for _ in range(3):
        log.info("seen", route="/v1/sessions", who="call +14155552671 now")
    records = _records(stream)
    assert [r["route"] for r in records] == ["/v1/sessions"] * 3
    assert [r["who"] for r in records] == ["call ***2671 now"] * 3
    assert "+14155552671" not in logs._UNCHANGED


def test_lines_from_many_threads_to_standard_error_stay_whole() -> None:
    """Written straight to the process's standard error (one write per line, no lock),
    lines from eight threads at once never interleave, and library lines keep their own."""
    import subprocess
    import sys

    program = """
import logging, threading, structlog
from service import logs
logs.configure(fmt="json", level="INFO")
output = structlog.get_config()["logger_factory"]
assert output.descriptor == 2, output.descriptor
log = structlog.get_logger("load")
def run(n):
    for i in range(500):
        log.info("line", thread=n, i=i, pad="x" * (i % 300))
        if i % 50 == 0:
            logging.getLogger("library").warning("library line %d", i)
threads = [threading.Thread(target=run, args=(n,)) for n in range(8)]
for t in threads: t.start()
for t in threads: t.join()
"""
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True
    )
    records = [json.loads(line) for line in done.stderr.splitlines()]
    assert sum(r["event"] == "line" for r in records) == 8 * 500
    assert sum(r["event"].startswith("library line") for r in records) == 8 * 10


def test_the_request_line_is_captured_like_any_other(stream: io.StringIO) -> None:
    """The http_request line goes through structlog's configured processors: under
    ``capture_logs`` it is captured, and written as JSON otherwise."""
    from starlette.applications import Starlette
    from starlette.testclient import TestClient

    from service.web.middleware import RequestContext

    app = Starlette(routes=[])
    app.add_middleware(RequestContext)
    with TestClient(app) as client:
        with structlog.testing.capture_logs() as captured:
            client.get("/nowhere")
        client.post("/nowhere")
    [line] = [entry for entry in captured if entry["event"] == "http_request"]
    assert (line["method"], line["status"], line["log_level"]) == ("GET", 404, "info")
    [record] = [r for r in _records(stream) if r["event"] == "http_request"]
    assert (record["method"], record["logger"]) == ("POST", "service.http")


def test_only_the_process_s_own_standard_error_is_written_past_its_stream(
    tmp_path: Path,
) -> None:
    """A stream the process opened itself (its descriptor may be closed and reused) is
    always written through its object, never by descriptor."""
    with (tmp_path / "log").open("w", encoding="utf-8") as file:
        logs.configure(fmt="json", level="INFO", stream=file, cache_loggers=False)
        try:
            assert structlog.get_config()["logger_factory"].descriptor is None
            structlog.get_logger("test").info("kept")
        finally:
            configure_test_logs()
    assert json.loads((tmp_path / "log").read_text())["event"] == "kept"
