"""Phone numbers: validation and normalisation to E.164, and masking for anything printed.

Masking keeps the last four digits, so operators can tell numbers apart without learning
them. ``mask_text`` finds numbers inside free text (log lines, exception messages,
tracebacks); it errs on the side of masking any long run of digits.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import NamedTuple

import phonenumbers

MASK = "***"

# E.164 with or without "+", and the common written forms ("+1 415-555-2345",
# "+44 7911 123456", "(415) 555-2345", "1-415-555-2345", "415 555 2345", "415 5552345",
# "07911 123456", "06 12 34 56 78"). Every quantifier is bounded and every
# group is set off by a separator, so each starting position costs a small constant: the
# whole search is linear in the text. A number may follow "_" (``party_14155552345``) but
# not a letter, digit, "." or "-", nor be followed by them: ids, UUIDs, decimals and dates
# are left alone.
_PHONE_IN_TEXT = re.compile(
    r"""
    (?<![^\W_]|[.+-])
    (?:
        \+?\d{8,15}                                          # +14155552345, 14155552345
      | \+\d{1,3}(?:[ .-]\(?\d{1,6}\)?|\(\d{1,4}\)){2,5}   # +1 415-555-2345, +44 7911 123456
      | \(\d{2,4}\)[ ]?\d{3,4}[ .-]\d{3,4}                  # (415) 555-2345
      | (?:1[ .-])?\d{3}(?:([ .-])\d{3}\1|[ -]\d{3})\d{4}     # 1.415.555.2345, 415 5552345
      | 0\d{2,4}[ ](?:\d{6,8}|\d{3,4}[ ]\d{3,4})             # 07911 123456, 020 7946 0958
      | 0\d([ .-])\d{2}(?:\2\d{2}){3}                       # 06 12 34 56 78
    )
    (?![^\W_]|[+-]|\.\d)
    """,
    re.VERBOSE,
)
# Unix time in seconds or milliseconds (2001 to 2033): 10 or 13 digits starting with 1.
# No phone number is written that way: NANP numbers with their country code have 11 digits,
# and national ones never start with 1.
_EPOCH = re.compile(r"1\d{9}(?:\d{3})?")
# What one string may cost: longer text is cut (and says so) before it is searched.
MAX_TEXT = 16 * 1024


# Any digit: text without one holds no number (a cheap first test, here and in logs).
DIGIT = re.compile(r"\d")


class InvalidNumber(ValueError):
    """The value is not a valid phone number. The message never repeats the value."""


_TYPE = phonenumbers.PhoneNumberType
# Our names for phonenumbers' number types, as ALLOWED_NUMBER_TYPES lists them, plus
# "satellite" and "international-network" for the non-geographic codes that phonenumbers
# calls mobile but cost like premium numbers.
NUMBER_TYPES = {
    _TYPE.FIXED_LINE: "fixed-line",
    _TYPE.MOBILE: "mobile",
    _TYPE.FIXED_LINE_OR_MOBILE: "fixed-line-or-mobile",
    _TYPE.TOLL_FREE: "toll-free",
    _TYPE.PREMIUM_RATE: "premium-rate",
    _TYPE.SHARED_COST: "shared-cost",
    _TYPE.VOIP: "voip",
    _TYPE.PERSONAL_NUMBER: "personal",
    _TYPE.PAGER: "pager",
    _TYPE.UAN: "uan",
    _TYPE.VOICEMAIL: "voicemail",
    _TYPE.UNKNOWN: "unknown",
}
TYPE_NAMES = frozenset({*NUMBER_TYPES.values(), "satellite", "international-network"})
DEFAULT_NUMBER_TYPES = frozenset({"mobile", "fixed-line", "fixed-line-or-mobile"})
_SATELLITE = frozenset({870, 881})  # Inmarsat, Global Mobile Satellite System
_NETWORKS = frozenset({882, 883})  # international networks, no country


_NOT_VALID = "not a valid phone number for its country"


class Number(NamedTuple):
    """A valid number read: its country code, E.164 form and phonenumbers type."""

    country_code: int
    e164: str
    kind: int


def _read(value: str, default_region: str | None) -> Number:
    """The valid number ``value`` holds, without an extension; InvalidNumber else."""
    parsed, kind = _parse(value, default_region)
    if parsed.extension:
        raise InvalidNumber("has an extension, which VTS cannot dial; give the number alone")
    assert parsed.country_code is not None  # parse sets it, or raises
    return Number(parsed.country_code, _e164(parsed), kind)


# A pure function of (value, region); parsing and validating cost ~20 µs a number, and
# active users' numbers repeat. Errors are not cached (lru_cache never caches a raise).
@lru_cache(maxsize=4096)
def _parse(value: str, default_region: str | None) -> tuple[phonenumbers.PhoneNumber, int]:
    """The valid number ``value`` holds and its phonenumbers type; InvalidNumber else."""
    text = value.strip()
    guessed = default_region is None and text[:1].isdigit()
    if guessed:
        text = "+" + text
    try:
        parsed = phonenumbers.parse(text, default_region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidNumber(
            "not a phone number; write it in E.164 form: +, country code, number"
        ) from exc
    kind = _valid_type(parsed)
    if kind is None:
        if guessed:
            # Digits alone are read as E.164 without its "+"; when that is no valid
            # number, the likely mistake is a national number without its country code.
            raise InvalidNumber(
                "missing country code; write the number in E.164 form: +, country code, number"
            )
        raise InvalidNumber(_NOT_VALID)
    return parsed, kind


def _valid_type(parsed: phonenumbers.PhoneNumber) -> int | None:
    """The type of ``parsed`` if it is a valid number, else None. ``number_type`` answers
    UNKNOWN for a number that is not valid (libphonenumber's contract), and it is what
    ``is_valid_number`` itself computes, so asking both would cost twice: for a +1
    number each looks for its region among NANP's and matches its patterns there."""
    kind = phonenumbers.number_type(parsed)
    return None if kind == phonenumbers.PhoneNumberType.UNKNOWN else int(kind)


def _e164(parsed: phonenumbers.PhoneNumber) -> str:
    return str(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164))


def normalise(value: str, default_region: str | None = None) -> str:
    """Return ``value`` as E.164 (``+14155552345``), or raise :class:`InvalidNumber`.

    Without ``default_region`` the number must carry its country code; a bare run of
    digits is read as E.164 without its ``+`` (VTS writes numbers that way).
    """
    return _e164(_parse(value, default_region)[0])


def number_type(country_code: int, kind: int) -> str:
    """The type of a valid number (``kind``: its phonenumbers type), by one of the names
    in :data:`TYPE_NAMES`."""
    if country_code in _SATELLITE:
        return "satellite"
    if country_code in _NETWORKS:
        return "international-network"
    return NUMBER_TYPES.get(kind, "unknown")


@lru_cache(maxsize=4096)
def party(value: str, default_region: str | None, allowed: frozenset[str]) -> str:
    """``value`` as E.164 if it may be a party to a session: a valid number of one of the
    ``allowed`` types, without an extension. Else :class:`InvalidNumber` saying why."""
    number = _read(value, default_region)
    name = number_type(number.country_code, number.kind)
    if name not in allowed:
        raise InvalidNumber(f"is a {name} number; allowed are {', '.join(sorted(allowed))}")
    return number.e164


def mask(number: str) -> str:
    """``+14155552345`` → ``***2345``."""
    digits = [c for c in number if c.isdigit()]
    return MASK + "".join(digits[-4:])


def mask_text(text: str) -> str:
    """Mask every phone-number-like run of digits inside ``text``.

    Costs time linear in ``text``, and at most that of :data:`MAX_TEXT` characters: longer
    text is cut there.
    """
    if len(text) > MAX_TEXT:
        text = text[:MAX_TEXT] + f"...[{len(text) - MAX_TEXT} more characters]"
    # Most text logged holds no digit at all; searching for one costs far less than sub.
    if DIGIT.search(text) is None:
        return text
    return _PHONE_IN_TEXT.sub(_masked, text)


def _masked(match: re.Match[str]) -> str:
    found = match.group(0)
    return found if _EPOCH.fullmatch(found) else mask(found)
