"""A JSON callback is read straight into one flat object of strings and numbers: reading
stops at the first value of another shape, so an unsigned body costs next to nothing
before its signature is checked (V3 signs the fields, so they are read first)."""

from __future__ import annotations

import time

import pytest

from service.web.problems import Problem
from service.web.webhooks import _json_params

# 63 KB of empty arrays: decoded whole, then refused for its depth, it cost ~18 ms a request.
ARRAYS = b"[" + b"[]," * 21_000 + b"[]]"
HOSTILE = [ARRAYS, b'{"EventName":' + ARRAYS + b"}", b'{"a":"x",' + b'"b":{},' * 9_000 + b'"c":1}']


@pytest.mark.parametrize("body", HOSTILE, ids=["array", "nested", "objects"])
def test_a_body_of_another_shape_is_refused_at_once(body: bytes) -> None:
    """A body that is not one flat object is 400, after reading no more than it must."""
    with pytest.raises(Problem) as refused:
        _json_params(body)
    assert refused.value.status == 400
    rounds = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(50):
            with pytest.raises(Problem):
                _json_params(body)
        rounds.append((time.perf_counter() - started) / 50)
    # Microseconds now; the whole decode took 18 ms and more.
    assert min(rounds) < 0.001


def test_flat_objects_are_read_as_before() -> None:
    """Strings stay as sent; numbers and booleans become their JSON text, as VTS signs them."""
    body = b'{"EventName":"SessionCreated","Duration":12,"Amount":0.0085,"Flag":true,"A":"1"}'
    assert _json_params(body) == {
        "EventName": "SessionCreated",
        "Duration": "12",
        "Amount": "0.0085",
        "Flag": "true",
        "A": "1",
    }


@pytest.mark.parametrize(
    "body",
    [b'{"a":NaN}', b'{"a":1e400}', b'{"a":' + b"9" * 31 + b"}", b'{"a":"\\ud800"}',
     b'{"a":null}', b'{"a":"x"} trailing', b"\xff", b"", b'"text"'],
)  # fmt: skip
def test_what_strict_json_refused_is_still_refused(body: bytes) -> None:
    """Constants, overflowing or 31-digit numbers, lone surrogates, null, junk: 400."""
    with pytest.raises(Problem) as refused:
        _json_params(body)
    assert refused.value.status == 400
