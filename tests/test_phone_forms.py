"""More written forms of phone numbers are masked in anything logged: international
groupings, NANP with its country code, French pairs, and request ids that hold one."""

from __future__ import annotations

import pytest

from service.phones import mask_text
from service.web.middleware import _request_id
from tests.test_logs import LEFT_ALONE

MASKED = [
    ("+44 7911 123456", "***3456"),
    ("+91 98765 43210", "***3210"),
    ("1-415-555-2671", "***2671"),
    ("1.415.555.2671", "***2671"),
    ("1 415 555 2671", "***2671"),
    ("06 12 34 56 78", "***5678"),
    ("06.12.34.56.78", "***5678"),
    ("415 5552671", "***2671"),
    ("415-5552671", "***2671"),
]
# Ids, versions, addresses and times that hold digits in groups, still not numbers.
ALSO_LEFT_ALONE = [
    "0f8e5c7a-1111-4c2b-9d3e-123456789abc",
    "41555526-7123-4567-8901-abcdefabcdef",
    "10.0.12.200",
    "2026-12-07 03:18:00.123456+00:00",
    "version 1.415.555",
    "took 415 ms of 5552 ms",
    "sequence 1 2 3 4 5 6",
    "06/12/2026 10:00",
    "took 104.3612345 ms",
]


@pytest.mark.parametrize(("text", "expected"), MASKED)
def test_more_written_forms_of_a_number_are_masked(text: str, expected: str) -> None:
    """International groupings, NANP with a country code, French pairs are masked."""
    assert mask_text(f"before {text} after") == f"before {expected} after"


@pytest.mark.parametrize("text", LEFT_ALONE + ALSO_LEFT_ALONE)
def test_ids_versions_and_times_are_still_left_alone(text: str) -> None:
    """What is not a phone number is still not masked."""
    assert mask_text(text) == text


@pytest.mark.parametrize(
    "incoming", ["a415-555-2671", "req_415.555.2671", "x(415) 555-2671", "id-1-415-555-2671z"]
)
def test_a_request_id_holding_a_written_number_is_replaced(incoming: str) -> None:
    """A request id with a written number inside, after a letter or before one, is not kept."""
    assert "2671" not in _request_id(incoming)


@pytest.mark.parametrize(
    "incoming",
    ["0f8e5c7a-1111-4c2b-9d3e-123456789abc", "req-2026-12-07-a1b2", "checkout.v2.retry-3"],
)
def test_ordinary_request_ids_are_kept(incoming: str) -> None:
    """Request ids that hold no number are kept as the client sent them."""
    assert _request_id(incoming) == incoming
