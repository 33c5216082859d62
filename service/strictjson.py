"""JSON from outside, read strictly: RFC 8259 and nothing more, within bounds.

Python's ``json`` takes ``NaN``, ``Infinity`` and ``1e400`` (which it reads as infinity),
integers of any length (slowly, and past 4,300 digits with an error) and nesting until the
interpreter's recursion limit. None of these can be written back as JSON, so a value that
holds one would break every later read of it. :func:`loads` refuses them all with
:class:`InvalidJson`.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

MAX_DEPTH = 32
MAX_DIGITS = 30
# An escaped UTF-16 surrogate: the only way a decoded string can hold one, and one alone
# cannot be written as UTF-8 (to Redis, or back to the client).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class InvalidJson(ValueError):
    """The text is not JSON, or not JSON within our bounds; the message says which."""


def _refuse_constant(name: str) -> Any:
    raise InvalidJson(f"{name} is not a JSON value")


def _integer(text: str) -> int:
    if len(text) > MAX_DIGITS:
        raise InvalidJson(f"numbers are limited to {MAX_DIGITS} digits")
    return int(text)


def _real(text: str) -> float:
    if len(text) > MAX_DIGITS:
        raise InvalidJson(f"numbers are limited to {MAX_DIGITS} digits")
    value = float(text)
    if not math.isfinite(value):
        raise InvalidJson("a number is too large")
    return value


_DECODER = json.JSONDecoder(parse_int=_integer, parse_float=_real, parse_constant=_refuse_constant)


def loads(raw: bytes | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """The value ``raw`` holds (UTF-8), or InvalidJson."""
    try:
        text = raw.decode() if isinstance(raw, bytes) else raw
        value = _DECODER.decode(text)
    except UnicodeDecodeError as exc:
        raise InvalidJson("the text is not UTF-8") from exc
    except RecursionError as exc:
        raise InvalidJson(f"nested deeper than {max_depth} levels") from exc
    except json.JSONDecodeError as exc:
        raise InvalidJson(f"not JSON: {exc.msg} at character {exc.pos}") from exc
    if _SURROGATE_ESCAPE.search(text):
        _check_encodable(value)
    # Counting brackets is cheap and bounds the depth from above: usually no walk is needed.
    brackets = text.count("[") + text.count("{")
    if brackets > max_depth and depth(value) > max_depth:
        raise InvalidJson(f"nested deeper than {max_depth} levels")
    return value


def _check_encodable(value: Any) -> None:
    try:
        json.dumps(value, ensure_ascii=False).encode()
    except UnicodeEncodeError as exc:
        raise InvalidJson("a string holds a lone UTF-16 surrogate") from exc


def depth(value: Any) -> int:
    """How many arrays and objects deep ``value`` goes (0 for a scalar); no recursion."""
    deepest, pending = 0, [(value, 0)]
    while pending:
        item, level = pending.pop()
        if isinstance(item, dict):
            pending.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            pending.extend((v, level + 1) for v in item)
        else:
            continue
        deepest = max(deepest, level + 1)
    return deepest
