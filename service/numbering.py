"""Numbering plans: phonenumbers' metadata for one country code, compiled once.

phonenumbers looks its patterns up (``re.compile``'s cache) for every number, and its
``parse`` is written for any input: punctuation, letters, extensions, RFC 3966, IDDs.
``read`` answers for the common input, a number written in strict E.164, from the
compiled plans alone, with the answer ``parse`` and then validation would give. Where it
cannot be certain of that answer it returns None, and the caller takes the general path.
Every step below mirrors a named phonenumbers function; tests compare the two paths.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from typing import NamedTuple

import phonenumbers
from phonenumbers import PhoneMetadata, PhoneNumberDesc

_TYPE = phonenumbers.PhoneNumberType
# "+", a country code (never starting with 0) and the national number: 8 to 15 digits.
# Longer or shorter input, or a 0 after the "+", takes parse's own detours.
_STRICT = re.compile(r"\+[1-9][0-9]{7,14}")
# parse's bounds on a national significant number (_MIN_ and _MAX_LENGTH_FOR_NSN).
_NSN_LENGTHS = range(2, 18)
# The types _number_type_helper tries before fixed-line and mobile, in its order.
_SPECIAL_TYPES = (
    (_TYPE.PREMIUM_RATE, "premium_rate"),
    (_TYPE.TOLL_FREE, "toll_free"),
    (_TYPE.SHARED_COST, "shared_cost"),
    (_TYPE.VOIP, "voip"),
    (_TYPE.PERSONAL_NUMBER, "personal_number"),
    (_TYPE.PAGER, "pager"),
    (_TYPE.UAN, "uan"),
    (_TYPE.VOICEMAIL, "voicemail"),
)


class Number(NamedTuple):
    """A number read: its country code, E.164 form and phonenumbers type (UNKNOWN when
    the number is not valid)."""

    country_code: int
    e164: str
    kind: int


def read(value: str) -> Number | None:
    """``value`` read as ``phonenumbers.parse(value)`` and then validation would read it,
    or None when ``value`` is not strict E.164 or its country code has no plan."""
    if _STRICT.fullmatch(value) is None:
        return None
    digits = value[1:]
    # _extract_country_code: the shortest prefix that is a known country code.
    for size in (1, 2, 3):
        code = int(digits[:size])
        if code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
            break
    else:
        return None
    country = plan(code)
    if country is None:
        return None
    national = country.national(digits[size:])
    if national is None:
        return None
    return Number(code, f"+{code}{national}", country.kind(national))


@dataclass(frozen=True, slots=True)
class _Desc:
    """A PhoneNumberDesc: the lengths it allows (any, when empty) and its pattern."""

    lengths: frozenset[int]
    pattern: re.Pattern[str]

    @classmethod
    def of(cls, desc: PhoneNumberDesc | None) -> _Desc | None:
        """None for a desc that matches nothing (absent, or without a pattern)."""
        if desc is None or not desc.national_number_pattern:
            return None
        return cls(frozenset(desc.possible_length), re.compile(desc.national_number_pattern))

    def matches(self, national: str) -> bool:
        """_is_number_matching_desc."""
        if self.lengths and len(national) not in self.lengths:
            return False
        return self.pattern.fullmatch(national) is not None


@dataclass(frozen=True, slots=True)
class _Region:
    """One region's leading digits and number types."""

    leading: re.Pattern[str] | None
    general: _Desc | None
    special: tuple[tuple[int, _Desc], ...]
    fixed_line: _Desc | None
    mobile: _Desc | None
    same_mobile_and_fixed_line: bool

    @classmethod
    def of(cls, metadata: PhoneMetadata) -> _Region:
        special = ((kind, _Desc.of(getattr(metadata, name))) for kind, name in _SPECIAL_TYPES)
        leading = metadata.leading_digits
        return cls(
            leading=None if leading is None else re.compile(leading),
            general=_Desc.of(metadata.general_desc),
            special=tuple((kind, desc) for kind, desc in special if desc is not None),
            fixed_line=_Desc.of(metadata.fixed_line),
            mobile=_Desc.of(metadata.mobile),
            same_mobile_and_fixed_line=bool(metadata.same_mobile_and_fixed_line_pattern),
        )

    def kind(self, national: str) -> int:
        """_number_type_helper: the number's type here, UNKNOWN when it is not valid."""
        if self.general is None or not self.general.matches(national):
            return _TYPE.UNKNOWN
        for kind, desc in self.special:
            if desc.matches(national):
                return kind
        if self.fixed_line is not None and self.fixed_line.matches(national):
            if self.same_mobile_and_fixed_line or self._mobile(national):
                return _TYPE.FIXED_LINE_OR_MOBILE
            return _TYPE.FIXED_LINE
        if not self.same_mobile_and_fixed_line and self._mobile(national):
            return _TYPE.MOBILE
        return _TYPE.UNKNOWN

    def _mobile(self, national: str) -> bool:
        return self.mobile is not None and self.mobile.matches(national)


@dataclass(frozen=True, slots=True)
class Plan:
    """One country code: how parse finds the national number after it (from its main
    region's metadata), and its regions in the order phonenumbers searches them."""

    national_prefix: re.Pattern[str] | None
    transform: str
    viable: re.Pattern[str] | None
    lengths: tuple[int, ...]
    local_lengths: frozenset[int]
    regions: tuple[_Region, ...]

    def national(self, number: str) -> str | None:
        """The national significant number parse makes of ``number``, the digits after
        the country code; None where parse would raise."""
        stripped = self._strip_national_prefix(number)
        # parse keeps a national prefix when the rest would not be long enough.
        if self._long_enough(stripped):
            number = stripped
        # No leading zeros to restore: the zeros parse counts (number_of_leading_zeros)
        # are put back in front of the national number exactly as they were.
        return number if len(number) in _NSN_LENGTHS else None

    def _strip_national_prefix(self, number: str) -> str:
        """_maybe_strip_national_prefix_carrier_code, without the carrier code."""
        if self.national_prefix is None:
            return number
        match = self.national_prefix.match(number)
        if match is None:
            return number
        if not self.transform or match.groups()[-1] is None:
            stripped = number[match.end() :]
        else:
            stripped = self.national_prefix.sub(self.transform, number, count=1)
        if self._viable(number) and not self._viable(stripped):
            return number
        return stripped

    def _viable(self, number: str) -> bool:
        return self.viable is not None and self.viable.fullmatch(number) is not None

    def _long_enough(self, number: str) -> bool:
        """_test_number_length neither TOO_SHORT, IS_POSSIBLE_LOCAL_ONLY nor
        INVALID_LENGTH (the lengths are sorted: ``plan`` checks)."""
        size = len(number)
        if size in self.local_lengths:
            return False
        return size in self.lengths or size > self.lengths[-1]

    def kind(self, national: str) -> int:
        """``number_type`` if ``is_valid_number``, else UNKNOWN: the region found as
        region_code_for_number finds it, then the type by its metadata."""
        if len(self.regions) == 1:
            return self.regions[0].kind(national)
        for region in self.regions:
            if region.leading is not None:
                if region.leading.match(national):
                    return region.kind(national)
            else:
                kind = region.kind(national)
                if kind != _TYPE.UNKNOWN:
                    return kind
        return _TYPE.UNKNOWN


@cache
def plan(country_code: int) -> Plan | None:
    """The plan of ``country_code``; None for a code whose metadata is irregular in a way
    the plan does not mirror (phonenumbers would skip regions, raise or check more)."""
    codes = phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(country_code, ())
    if not codes:
        return None
    main = PhoneMetadata.metadata_for_region_or_calling_code(country_code, codes[0])
    if main is None or main.general_desc is None:
        return None
    # _region_code_for_number_from_list reads each region's own metadata; it would skip a
    # region without any, which the plan does not mirror.
    found: list[PhoneMetadata | None] = [main]
    if len(codes) > 1:
        found = [PhoneMetadata.metadata_for_region(code, None) for code in codes]
    regions = [metadata for metadata in found if metadata is not None]
    if len(regions) < len(codes) or not _regular(country_code, codes, main, regions):
        return None
    prefix = main.national_prefix_for_parsing
    viable = main.general_desc.national_number_pattern
    return Plan(
        national_prefix=re.compile(prefix) if prefix else None,
        transform=main.national_prefix_transform_rule or "",
        viable=re.compile(viable) if viable else None,
        lengths=main.general_desc.possible_length,
        local_lengths=frozenset(main.general_desc.possible_length_local_only),
        regions=tuple(_Region.of(metadata) for metadata in regions),
    )


def _regular(
    country_code: int, codes: tuple[str, ...], main: PhoneMetadata, regions: list[PhoneMetadata]
) -> bool:
    """Whether the plan gives phonenumbers' answers for ``country_code``: every region has
    metadata of this code, the main one possible lengths in order, and nothing depends on
    the region a caller parses from."""
    assert main.general_desc is not None  # plan checks
    lengths = list(main.general_desc.possible_length)
    if not lengths or lengths != sorted(lengths):
        return False
    prefix = main.national_prefix_for_parsing
    # A transform takes the prefix pattern's last group: without one, parse raises.
    if prefix and main.national_prefix_transform_rule and re.compile(prefix).groups == 0:
        return False
    if codes == (phonenumbers.REGION_CODE_FOR_NON_GEO_ENTITY,):
        # parse reads no metadata for a caller's region "001": it would strip no prefix.
        return not prefix
    return all(metadata.country_code == country_code for metadata in regions)
