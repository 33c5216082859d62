"""Phone numbers: validation and normalisation to E.164, and masking for anything printed.

Masking keeps the last four digits, so operators can tell numbers apart without learning
them. ``mask_text`` finds numbers inside free text (log lines, exception messages,
tracebacks); it errs on the side of masking any long run of digits.
"""

from __future__ import annotations

import re
from functools import lru_cache

import phonenumbers

MASK = "***"

# E.164 with or without "+", and the common written forms ("+1 415-555-2345",
# "(415) 555-2345", "415.555.2345"). Bounded by non-word characters so that UUIDs,
# ISO timestamps and hex ids are left alone.
_PHONE_IN_TEXT = re.compile(
    r"""
    (?<![\w.-])
    (?:
        \+?\d{8,15}                                   # compact, e.g. +14155552345 or 14155552345
      | \+\d{1,3}(?:[\s.-]?\(?\d{1,4}\)?){2,5}        # international, separated
      | \(\d{2,4}\)\s?\d{3,4}[\s.-]\d{3,4}           # national with area code in parentheses
      | \d{3}[.-]\d{3}[.-]\d{4}                       # national, dotted or dashed
    )
    (?![\w-])
    """,
    re.VERBOSE,
)


_DIGIT = re.compile(r"\d")


class InvalidNumber(ValueError):
    """The value is not a valid phone number. The message never repeats the value."""


# A pure function of (value, region); parsing and validating cost ~16 µs a number, and
# active users' numbers repeat. Errors are not cached (lru_cache never caches a raise).
@lru_cache(maxsize=4096)
def normalise(value: str, default_region: str | None = None) -> str:
    """Return ``value`` as E.164 (``+14155552345``), or raise :class:`InvalidNumber`.

    Without ``default_region`` the number must carry its country code; a bare run of
    digits is read as E.164 without its ``+`` (VTS writes numbers that way).
    """
    text = value.strip()
    if default_region is None and text[:1].isdigit():
        text = "+" + text
    try:
        parsed = phonenumbers.parse(text, default_region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidNumber(
            "not a phone number; write it in E.164 form: +, country code, number"
        ) from exc
    if not phonenumbers.is_valid_number(parsed):
        raise InvalidNumber("not a valid phone number for its country")
    return str(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164))


def mask(number: str) -> str:
    """``+14155552345`` → ``***2345``."""
    digits = [c for c in number if c.isdigit()]
    return MASK + "".join(digits[-4:])


def mask_text(text: str) -> str:
    """Mask every phone-number-like run of digits inside ``text``."""
    # Most text logged holds no digit at all; searching for one costs far less than sub.
    if _DIGIT.search(text) is None:
        return text
    return _PHONE_IN_TEXT.sub(lambda m: mask(m.group(0)), text)
