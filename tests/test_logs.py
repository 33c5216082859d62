"""Logging: JSON lines through one pipeline, phone numbers masked everywhere."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from service import logs
from service.phones import mask_text
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


@pytest.mark.parametrize(
    "text",
    [NUMBER, NUMBER[1:], "+1 415-555-2671", "(415) 555-2671", "415.555.2671",
     "+1 (415) 555 2671", "tel:+14155552671", "https://x/y/14155552671?z=1"],
)  # fmt: skip
def test_every_written_form_of_a_number_is_masked(text: str) -> None:
    """The common ways of writing a number are all masked, keeping the last four digits."""
    masked = mask_text(f"before {text} after")
    assert "555" not in masked
    assert "2671" in masked


@pytest.mark.parametrize(
    "text",
    ["2026-11-27T22:22:10.123Z", "3e82ae9d-2c78-4d85-b1a4-6eae7dbafb36", "127.0.0.1:6379",
     "took 1234 ms", "ses_0123456789abcdef0123456789abcdef"],
)  # fmt: skip
def test_timestamps_ids_and_addresses_are_left_alone(text: str) -> None:
    """What is not a phone number is not masked."""
    assert mask_text(text) == text
