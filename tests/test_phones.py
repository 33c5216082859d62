"""Phone numbers: validation and type agree with phonenumbers' own API."""

from __future__ import annotations

import random

import phonenumbers
import pytest

from service.phones import InvalidNumber, _valid_type, normalise, party

ALL_TYPES = frozenset({"mobile", "fixed-line", "fixed-line-or-mobile", "toll-free"})


def _public(parsed: phonenumbers.PhoneNumber) -> int | None:
    """What is_valid_number and number_type say, each finding the region itself."""
    return phonenumbers.number_type(parsed) if phonenumbers.is_valid_number(parsed) else None


def test_validity_and_type_match_phonenumbers_for_every_region_and_type() -> None:
    """The example number of every region and type (valid ones), and each with its last
    digit changed (often invalid), get the same verdict and type as phonenumbers gives."""
    checked = 0
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for kind in range(11):
            example = phonenumbers.example_number_for_type(region, kind)
            if example is None:
                continue
            e164 = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.E164)
            changed = e164[:-1] + str((int(e164[-1]) + 5) % 10)
            for text in (e164, changed):
                parsed = phonenumbers.parse(text, None)
                assert _valid_type(parsed) == _public(parsed), text
                checked += 1
    assert checked > 2000


def test_random_numbers_of_every_country_code_match_phonenumbers() -> None:
    """Random digit runs after every country code: valid or not, the same answer."""
    generator = random.Random(15)
    for code in sorted(phonenumbers.COUNTRY_CODE_TO_REGION_CODE):
        for _ in range(20):
            digits = str(generator.randrange(10**5, 10**13))[: generator.randint(6, 13)]
            try:
                parsed = phonenumbers.parse(f"+{code}{digits}", None)
            except phonenumbers.NumberParseException:
                continue
            assert _valid_type(parsed) == _public(parsed), f"+{code}{digits}"


def test_parties_are_checked_and_normalised() -> None:
    """A valid mobile is E.164; an invalid or disallowed number says why, never which."""
    assert party("+1 415 555 2671", None, ALL_TYPES) == "+14155552671"
    assert normalise("14155552671") == "+14155552671"
    with pytest.raises(InvalidNumber, match="not a valid phone number") as invalid:
        party("+1 415 555 0000 0", None, ALL_TYPES)
    assert "415" not in str(invalid.value)
    with pytest.raises(InvalidNumber, match="is a toll-free number"):
        party("+1 800 253 0000", None, frozenset({"mobile"}))
