"""Validation of app requests: clear per-field errors, values normalised (numbers to E.164).

A body is first decoded with the API's typed models (:mod:`service.schemas`, which also
give the OpenAPI document its schemas); one that does not fit them is read again strictly
(:mod:`service.strictjson`) and checked field by field, so that the problem names every
bad field at once, in words. Either way the same checks follow: bounds (see
:mod:`service.schemas`), URLs of printable ASCII, metadata up to 2 KiB of JSON (UTF-8),
numbers valid for the deployment, and a ``callback_url`` that passes the egress policy's
checks that need no DNS (https, no credentials, no loopback or private address literal).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Any
from urllib.parse import urlsplit

import msgspec

from service import schemas, strictjson
from service.egress import EgressPolicy
from service.models import CREATE_OPTIONS, UPDATE_OPTIONS
from service.phones import DEFAULT_NUMBER_TYPES, InvalidNumber, party
from service.schemas import INT_BOUNDS, MAX_URL
from service.settings import Settings
from service.web.problems import FieldError, Problem

__all__ = ["INT_BOUNDS", "MAX_URL", "Rules", "decode_create", "decode_update", "fingerprint"]

MAX_METADATA = 2048
# Fields of a session that a change request cannot touch.
FIXED = ("first_party", "second_party", "initiate_call_to_first_party", "callback_url", "metadata")

Checker = Callable[[Any], Any]


class _Invalid(ValueError):
    pass


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Invalid("must be true or false")
    return value


def _int_in(name: str) -> Checker:
    low, high = INT_BOUNDS[name]

    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid("must be a whole number of seconds")
        if not low <= value <= high:
            raise _Invalid(f"must be between {low} and {high} seconds")
        return value

    return check


def _format(value: Any) -> str:
    if value not in ("mp3", "wav"):
        raise _Invalid("must be mp3 or wav")
    return str(value)


def _url(value: Any) -> str:
    if not isinstance(value, str) or len(value) > MAX_URL:
        raise _Invalid(f"must be an http(s) URL of at most {MAX_URL} characters")
    problem = _url_problem(value)
    if problem is not None:
        raise _Invalid(problem)
    return value


# A pure function of the text, and an app sends the same few URLs with every session.
@lru_cache(maxsize=1024)
def _url_problem(value: str) -> str | None:
    # Printable ASCII only: a CR or LF would be refused by every HTTP client later on.
    if not (value.isascii() and value.isprintable()) or " " in value:
        return "must be printable ASCII, without spaces or control characters"
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an absolute http:// or https:// URL"
    return None


def _callback_url(policy: EgressPolicy) -> Checker:
    """The app's own receiver: a URL our egress policy lets us post to."""

    def check(value: Any) -> str:
        url = _url(value)
        reason = policy.refusal(url)  # cached per URL by the policy
        if reason is not None:
            raise _Invalid(reason)
        return url

    return check


def _metadata(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Invalid("must be a JSON object")
    # Counted as stored (see Session.to_fields): UTF-8, not with every non-ASCII
    # character escaped.
    if len(msgspec.json.encode(value)) > MAX_METADATA:
        raise _Invalid(f"must be at most {MAX_METADATA} bytes of JSON (UTF-8)")
    return value


OPTION_CHECKERS: dict[str, Checker] = {
    "record": _bool,
    "record_file_format": _format,
    "session_expiry": _int_in("session_expiry"),
    "call_time_limit": _int_in("call_time_limit"),
    "ring_timeout": _int_in("ring_timeout"),
    "initiate_call_to_first_party": _bool,
    "first_party_play_url": _url,
    "second_party_play_url": _url,
}
assert set(OPTION_CHECKERS) == set(CREATE_OPTIONS)


def _object(body: Any) -> Mapping[str, Any]:
    if not isinstance(body, dict):
        raise Problem(422, "the request body must be a JSON object")
    return body


def _check(
    body: Mapping[str, Any], checkers: Mapping[str, Checker], errors: list[FieldError]
) -> dict[str, Any]:
    clean: dict[str, Any] = {}
    for name, value in body.items():
        checker = checkers.get(name)
        if checker is None:
            known = name in FIXED
            message = "cannot be changed; create a new session instead" if known else None
            errors.append(FieldError(name, message or "unknown field"))
            continue
        if value is None:
            continue
        try:
            clean[name] = checker(value)
        except _Invalid as exc:
            errors.append(FieldError(name, str(exc)))
    return clean


def _as_is(value: Any) -> Any:
    return value


# What a request decoded with the schema (``schemas.CreateSession``) still needs checked:
# its types, bounds and choices are checked already.
_BEYOND_SCHEMA = frozenset(
    {"first_party_play_url", "second_party_play_url", "callback_url", "metadata"}
)


@dataclass(frozen=True)
class Rules:
    """What the deployment accepts in a create request (from the settings)."""

    default_region: str | None = None
    number_types: frozenset[str] = DEFAULT_NUMBER_TYPES
    egress: EgressPolicy = field(default_factory=EgressPolicy)

    @classmethod
    def from_settings(cls, settings: Settings) -> Rules:
        return cls(
            settings.phone_default_region,
            settings.allowed_number_types,
            EgressPolicy.from_settings(settings),
        )

    @cached_property
    def create_checkers(self) -> dict[str, Checker]:
        """The checks of a create request's fields besides the parties."""
        return {
            **OPTION_CHECKERS,
            "callback_url": _callback_url(self.egress),
            "metadata": _metadata,
        }

    @cached_property
    def schema_checked(self) -> dict[str, Checker]:
        """The same for a request decoded with the schema, which checked the rest."""
        return {
            name: check if name in _BEYOND_SCHEMA else _as_is
            for name, check in self.create_checkers.items()
        }


def _party(name: str, value: Any, rules: Rules, errors: list[FieldError]) -> str | None:
    if value is None:
        errors.append(FieldError(name, "is required"))
        return None
    if not isinstance(value, str) or len(value) > 32:
        errors.append(FieldError(name, "must be a phone number string in E.164 form"))
        return None
    try:
        return party(value, rules.default_region, rules.number_types)
    except InvalidNumber as exc:
        errors.append(FieldError(name, str(exc)))
        return None


def parse_create(body: Any, rules: Rules = Rules(), *, typed: bool = False) -> dict[str, Any]:
    """Validate a create request; return its normalised fields or raise Problem(422).
    ``typed``: the body was decoded with the schema, so only what it cannot check is."""
    body = _object(body)
    errors: list[FieldError] = []
    others = {k: v for k, v in body.items() if k not in ("first_party", "second_party")}
    clean = _check(others, rules.schema_checked if typed else rules.create_checkers, errors)
    first = _party("first_party", body.get("first_party"), rules, errors)
    second = _party("second_party", body.get("second_party"), rules, errors)
    if first is not None and first == second:
        errors.append(FieldError("second_party", "must differ from first_party"))
    if errors:
        raise Problem(422, "the request has invalid fields", errors=errors)
    return {"first_party": first, "second_party": second, **clean}


def parse_update(body: Any) -> dict[str, Any]:
    """Validate a change request (a non-empty subset of the changeable options)."""
    body = _object(body)
    errors: list[FieldError] = []
    clean = _check(body, {k: OPTION_CHECKERS[k] for k in UPDATE_OPTIONS}, errors)
    if errors:
        raise Problem(422, "the request has invalid fields", errors=errors)
    if not clean:
        raise Problem(422, f"give at least one of: {', '.join(UPDATE_OPTIONS)}")
    return clean


def _loads(raw: bytes) -> Any:
    try:
        return strictjson.loads(raw)
    except strictjson.InvalidJson as exc:
        raise Problem(400, f"the body is not valid JSON: {exc}", slug="malformed-json") from exc


_CREATE = msgspec.json.Decoder(schemas.CreateSession)
_UPDATE = msgspec.json.Decoder(schemas.UpdateSession)
# As strictjson bounds them: deeper metadata, or numbers it may refuse, take the slow path.
_METADATA_DEPTH = strictjson.MAX_DEPTH - 1
_LARGE = 10 ** (strictjson.MAX_DIGITS - 1)


def _given(request: msgspec.Struct) -> dict[str, Any]:
    return {
        name: value
        for name in request.__struct_fields__
        if (value := getattr(request, name)) is not None
    }


def _plain(value: Any) -> bool:
    """Whether decoded metadata is within strictjson's bounds for sure: not too deep, no
    float (its text may have been too long), no integer near the digit limit."""
    pending = [(value, 1)]
    while pending:
        item, level = pending.pop()
        if isinstance(item, dict | list):
            if level > _METADATA_DEPTH:
                return False
            children = item.values() if isinstance(item, dict) else item
            pending.extend((child, level + 1) for child in children)
        elif isinstance(item, float) or (isinstance(item, int) and abs(item) >= _LARGE):
            return False
    return True


def decode_create(raw: bytes, rules: Rules = Rules()) -> dict[str, Any]:
    """The normalised fields of a create request's JSON body; Problem(400) for a body
    that is not JSON within bounds, Problem(422) naming every invalid field."""
    try:
        request = _CREATE.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        return parse_create(_loads(raw), rules)
    if request.metadata and not _plain(request.metadata):
        return parse_create(_loads(raw), rules)
    return parse_create(_given(request), rules, typed=True)


def decode_update(raw: bytes) -> dict[str, Any]:
    """The changes a change request's JSON body asks for; Problem(400) or (422) as
    :func:`decode_create`."""
    try:
        request = _UPDATE.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        return parse_update(_loads(raw))
    return parse_update(_given(request))


def fingerprint(request: Mapping[str, Any]) -> str:
    """A digest of a normalised request, to tell a retry from a different request."""
    canonical = json.dumps(request, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
