"""Strict E.164 read from the compiled numbering plans: the general path's answers."""

from __future__ import annotations

import random
from collections.abc import Iterator

import hypothesis
import phonenumbers
from hypothesis import strategies as st
from phonenumbers import PhoneMetadata, PhoneNumberFormat

from service import numbering
from service.phones import InvalidNumber, _read, _read_generally, number_type, party

_TYPES = range(11)  # phonenumbers.PhoneNumberType, UNKNOWN aside
_DESCS = (
    *("general_desc", "fixed_line", "mobile", "toll_free", "premium_rate", "shared_cost"),
    *("personal_number", "voip", "pager", "uan", "voicemail"),
)
# Default regions a caller may parse with: none, one that shares +1, one whose national
# prefix is 0, and one whose prefix pattern transforms (AR). None of them should matter.
_DEFAULT_REGIONS = (None, "US", "GB", "AR")


def _answer(value: str, default_region: str | None, *, fast: bool) -> tuple[str, str]:
    """E.164 and type name, or the InvalidNumber message, by one path or the other."""
    read = _read if fast else _read_generally
    try:
        number = read(value, default_region)
    except InvalidNumber as exc:
        return "invalid", str(exc)
    return number.e164, number_type(number.country_code, number.kind)


def _check(values: Iterator[str]) -> tuple[int, int]:
    """Both paths agree on every value, for every default region; (values, read fast)."""
    seen = fast = 0
    for value in values:
        seen += 1
        fast += numbering.read(value) is not None
        for region in _DEFAULT_REGIONS:
            expected = _answer(value, region, fast=False)
            assert _answer(value, region, fast=True) == expected, (value, region)
    return seen, fast


def _examples() -> Iterator[tuple[int, str, str | None]]:
    """(country code, national number, national prefix) of every example number."""
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        metadata = PhoneMetadata.metadata_for_region(region, None)
        assert metadata is not None
        for kind in _TYPES:
            example = phonenumbers.example_number_for_type(region, kind)
            if example is not None:
                national = phonenumbers.national_significant_number(example)
                code = phonenumbers.country_code_for_region(region)
                yield code, national, metadata.national_prefix
    for code in sorted(phonenumbers.COUNTRY_CODES_FOR_NON_GEO_REGIONS):
        metadata = PhoneMetadata.metadata_for_nongeo_region(code, None)
        assert metadata is not None
        for name in _DESCS:
            desc = getattr(metadata, name)
            if desc is not None and desc.example_number:
                yield code, desc.example_number, metadata.national_prefix


def _mutations(code: int, national: str, prefix: str | None) -> Iterator[str]:
    """The example, digits changed, added and removed, and prefixes after the code."""
    yield f"+{code}{national}"
    for at in (0, len(national) // 2, len(national) - 1):
        changed = str((int(national[at]) + 5) % 10)
        yield f"+{code}{national[:at]}{changed}{national[at + 1 :]}"
    yield from (f"+{code}{national}{digit}" for digit in "05")
    yield f"+{code}{national[:-1]}"
    yield f"+{code}{national[1:]}"
    for inserted in {prefix or "", "0", "00", "1", "8", "9", "15"} - {""}:
        yield f"+{code}{inserted}{national}"
    # As written nationally (national prefix, carrier codes, AR's "15"), after the code.
    example = phonenumbers.parse(f"+{code}{national}")
    written = phonenumbers.format_number(example, PhoneNumberFormat.NATIONAL)
    yield f"+{code}" + "".join(c for c in written if c.isdigit())


def test_example_numbers_and_their_mutations_read_as_the_general_path_reads_them() -> None:
    """Every region's and non-geographic code's example numbers of every type, and each
    with a digit changed, added or removed, a national prefix or zeros after the country
    code: the same E.164 and type, or the same refusal, with and without a default region."""
    values = (v for example in _examples() for v in _mutations(*example))
    seen, fast = _check(values)
    assert seen > 15_000
    assert fast > 0.95 * seen


def test_random_numbers_of_every_country_code_read_as_the_general_path_reads_them() -> None:
    """Random digits after every country code, 8 to 15 digits in all, leading zeros too."""
    generator = random.Random(164)

    def values() -> Iterator[str]:
        for code in sorted(phonenumbers.COUNTRY_CODE_TO_REGION_CODE):
            for _ in range(100):
                size = generator.randint(8, 15) - len(str(code))
                digits = "".join(generator.choice("0123456789") for _ in range(size))
                yield f"+{code}{digits}"

    seen, fast = _check(values())
    assert fast == seen


@hypothesis.settings(max_examples=500, deadline=None)
@hypothesis.given(value=st.from_regex(r"\A\+?[0-9]{0,17}\Z").map(str.rstrip))
def test_any_run_of_digits_reads_as_the_general_path_reads_it(value: str) -> None:
    """Any length, leading zeros, unknown country codes, no "+": the same answers."""
    _check(iter([value]))


def test_every_country_code_has_a_plan() -> None:
    """The metadata holds nothing the plans do not mirror, so no number takes the long way
    for its country code alone (a new phonenumbers release may change that: then this
    fails, and the codes it lists are read by the general path until looked at)."""
    codes = phonenumbers.COUNTRY_CODE_TO_REGION_CODE
    assert [code for code in sorted(codes) if numbering.plan(code) is None] == []


def test_a_national_prefix_after_the_country_code_is_dropped_as_parse_drops_it() -> None:
    """+44 0 20..., a London number with its trunk 0, is the London number."""
    assert party("+4402079460958", None, frozenset({"fixed-line"})) == "+442079460958"
    assert numbering.read("+4402079460958") == numbering.read("+442079460958")
