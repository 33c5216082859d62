"""Callback ingestion: signatures, durability before 200, duplicates, hostile input."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import httpx2
import hypothesis
import pytest
import redis
from hypothesis import strategies as st

from service.errors import ConfigurationError
from service.settings import Secret, Settings
from service.store.events import webhook_totals
from service.store.keys import Keys
from service.vts.callbacks import Kind
from service.vts.signatures import new_nonce, v3_signature
from tests.conftest import AUTH_TOKEN, http_client, make_settings
from tests.servers import free_port, serve

SESSION = "/webhooks/vts/session"
RECORDING = "/webhooks/vts/recording"


def _event(**extra: str) -> dict[str, str]:
    return {
        "EventName": "SessionFirstPartyHangup",
        "EventTimestamp": "2026-11-27 10:00:00",
        "SessionUUID": "0b0e7a4e-5c1d-4d5e-9f1a-2b3c4d5e6f70",
        "FirstParty": "14155552671",
        "SecondParty": "14155552672",
        "VirtualNumber": "14152000000",
        "Duration": "42",
        "BilledDuration": "60",
        "Amount": "0.00850",
        "SequenceNumber": "4",
        **extra,
    }


class Caller:
    """Calls our webhook routes the way VTS does, signed or not."""

    def __init__(self, base_url: str, public_base_url: str) -> None:
        self.client = http_client(base_url)
        self.public = public_base_url

    def post(
        self, path: str, params: dict[str, str], *, token: str = AUTH_TOKEN, **kw: Any
    ) -> httpx2.Response:
        nonce = kw.pop("nonce", None) or new_nonce()
        query = kw.pop("query", "")
        url = self.public + path + (f"?{query}" if query else "")
        headers = {
            kw.pop("signature_header", "X-VTS-Signature-V3"): v3_signature(
                url, params, nonce, token, "POST"
            ),
            kw.pop("nonce_header", "X-VTS-Signature-V3-Nonce"): nonce,
            **kw.pop("headers", {}),
        }
        target = path + (f"?{query}" if query else "")
        if kw.pop("as_json", False):
            return self.client.post(target, json=params, headers=headers)
        return self.client.post(target, data=params, headers=headers)

    def get(self, path: str, params: dict[str, str]) -> httpx2.Response:
        nonce = new_nonce()
        signature = v3_signature(self.public + path, params, nonce, AUTH_TOKEN, "GET")
        headers = {"X-VTS-Signature-V3": signature, "X-VTS-Signature-V3-Nonce": nonce}
        return self.client.get(f"{path}?{urlencode(params)}", headers=headers)


@pytest.fixture
def caller(web_url: str, settings: Settings) -> Iterator[Caller]:
    caller = Caller(web_url, settings.public_base_url)
    yield caller
    caller.client.close()


def _stored(client: redis.Redis) -> int:
    return int(client.zcard(Keys.webhooks()))


def _queued(client: redis.Redis, queue: str = "events") -> int:
    return int(client.llen(Keys.queue(queue)))


def test_signed_form_post_is_stored_and_queued(caller: Caller, redis_client: redis.Redis) -> None:
    """A signed form POST is made durable and queued, then answered 200."""
    response = caller.post(SESSION, _event())
    assert response.status_code == 200, response.text
    assert (_stored(redis_client), _queued(redis_client)) == (1, 1)


def test_json_body_and_get_query_are_accepted(caller: Caller, redis_client: redis.Redis) -> None:
    """JSON bodies and GET query strings carry events too."""
    assert caller.post(SESSION, _event(SequenceNumber="5"), as_json=True).status_code == 200
    assert caller.get(SESSION, _event(SequenceNumber="6")).status_code == 200
    assert _queued(redis_client) == 2


def test_recording_events_go_to_their_own_queue(caller: Caller, redis_client: redis.Redis) -> None:
    """Recording callbacks are queued on the recordings queue."""
    params = {
        "EventName": "SessionRecordingCompleted",
        "SessionUUID": "abc-1",
        "RecordingUUID": "r1",
    }
    assert caller.post(RECORDING, params).status_code == 200
    assert (_queued(redis_client, "recordings"), _queued(redis_client)) == (1, 0)


def test_plivo_header_spelling_and_url_query_are_verified(caller: Caller) -> None:
    """X-Plivo- headers work, and a query on our URL is part of what is signed."""
    response = caller.post(
        SESSION,
        _event(),
        query="tenant=a",
        signature_header="X-Plivo-Signature-V3",
        nonce_header="X-Plivo-Signature-V3-Nonce",
    )
    assert response.status_code == 200


def test_duplicate_delivery_is_200_and_changes_nothing(
    caller: Caller, redis_client: redis.Redis
) -> None:
    """The same event delivered twice (new nonce) is stored and queued once."""
    assert caller.post(SESSION, _event()).status_code == 200
    assert caller.post(SESSION, _event()).status_code == 200
    assert (_stored(redis_client), _queued(redis_client)) == (1, 1)
    assert redis_client.hget(Keys.webhook_stats(), "duplicate") == b"1"


def test_replayed_nonce_with_another_event_is_401(
    caller: Caller, redis_client: redis.Redis
) -> None:
    """A nonce already used for another callback is refused."""
    assert caller.post(SESSION, _event(), nonce="11112222333344445555").status_code == 200
    response = caller.post(SESSION, _event(SequenceNumber="9"), nonce="11112222333344445555")
    assert response.status_code == 401
    assert _queued(redis_client) == 1


@pytest.mark.parametrize(
    "tamper",
    ["token", "value", "added", "url", "missing"],
)
def test_bad_or_missing_signature_is_401_and_stores_nothing(
    caller: Caller, redis_client: redis.Redis, tamper: str
) -> None:
    """Any change to what was signed, or no signature, is 401; nothing is kept."""
    params = _event()
    if tamper == "token":
        response = caller.post(SESSION, params, token="another-token")
    elif tamper in ("value", "added", "url"):
        nonce = new_nonce()
        url = caller.public + SESSION + "?x=1"
        signature = v3_signature(url, params, nonce, AUTH_TOKEN, "POST")
        sent = {**params, "Amount": "9.99"} if tamper == "value" else dict(params)
        if tamper == "added":
            sent["X"] = "1"
        response = caller.client.post(
            SESSION + ("?x=2" if tamper == "url" else "?x=1"),
            data=sent,
            headers={"X-VTS-Signature-V3": signature, "X-VTS-Signature-V3-Nonce": nonce},
        )
    else:
        response = caller.client.post(SESSION, data=params)
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/problem+json")
    assert (_stored(redis_client), _queued(redis_client)) == (0, 0)


@pytest.mark.parametrize(
    "params",
    [
        {"SessionUUID": "abc"},
        {"EventName": "SessionFirstPartyHangup"},
        {"EventName": "", "SessionUUID": "abc"},
        _event(SessionUUID="' OR 1=1 --"),
        _event(EventName="<script>alert(1)</script>"),
        _event(EventName="redis.call('FLUSHALL')"),
        _event(SessionUUID="../../etc/passwd"),
        _event(SequenceNumber="-1"),
        _event(SequenceNumber="1e9"),
        _event(BilledDuration="sixty"),
        _event(Amount="NaN"),
        _event(Amount="1; DROP TABLE"),
        _event(Duration="9" * 40),
        _event(HangupCause="x" * 5000),
        _event(**{"Bad Field": "1"}),
        _event(**{f"F{i}": "1" for i in range(80)}),
        _event(SessionUUID="a\x00b"),
        _event(Amount="9999999999"),
        _event(Amount="-1"),
        _event(Amount="-0.5"),
        _event(Amount="0.000001"),
        _event(Amount="1000.5"),
        _event(Duration="86401"),
        _event(BilledDuration="100000"),
        _event(RecordingDuration="86401"),
    ],
)
def test_hostile_or_incomplete_events_are_400_and_store_nothing(
    caller: Caller, redis_client: redis.Redis, params: dict[str, str]
) -> None:
    """Signed but malformed events are refused with 400; nothing is stored or queued."""
    response = caller.post(SESSION, params)
    assert response.status_code == 400, response.text
    assert (_stored(redis_client), _queued(redis_client)) == (0, 0)
    assert "4155552671" not in response.text


@pytest.mark.parametrize(
    ("content", "content_type", "status"),
    [
        (b"\xff\xfe\x00garbage", "application/x-www-form-urlencoded", 400),
        (b"{not json", "application/json", 400),
        (b"[1,2]", "application/json", 400),
        (b'{"EventName": {"a": 1}, "SessionUUID": "x"}', "application/json", 400),
        (b"\x89PNG\r\n\x1a\n", "image/png", 415),
    ],
)
def test_garbage_bodies_are_refused(
    caller: Caller, redis_client: redis.Redis, content: bytes, content_type: str, status: int
) -> None:
    """Binary garbage, broken JSON and other media types never reach Redis."""
    response = caller.client.post(SESSION, content=content, headers={"content-type": content_type})
    assert response.status_code in (status, 401)
    assert (_stored(redis_client), _queued(redis_client)) == (0, 0)


def test_huge_body_is_413(caller: Caller, redis_client: redis.Redis) -> None:
    """A body over 64 KiB is refused before it is read."""
    response = caller.client.post(
        SESSION,
        content=b"a=" + b"x" * 70_000,
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 413
    assert _stored(redis_client) == 0


def test_unknown_event_names_are_kept(caller: Caller, redis_client: redis.Redis) -> None:
    """A well-formed event with a name we do not know is stored and queued (and counted)."""
    assert caller.post(SESSION, _event(EventName="SessionSomethingNew")).status_code == 200
    assert _queued(redis_client) == 1


def test_signature_off_accepts_unsigned(redis_url: str, redis_client: redis.Redis) -> None:
    """With signatures off (development beside the sandbox) an unsigned callback is taken."""
    from service.web.app import create_app

    settings = make_settings(redis_url, "http://127.0.0.1:1", webhook_signature="off")
    with serve(create_app(settings)) as url:
        response = httpx2.post(url + SESSION, data=_event())
    assert response.status_code == 200
    assert _queued(redis_client) == 1


_ENV = {
    "REDIS_URL": "redis://127.0.0.1:1/0",
    "VTS_AUTH_ID": "MAXXXXXXXXXXXXXXXXXX",
    "VTS_AUTH_TOKEN": "very-secret-token",
    "PUBLIC_BASE_URL": "https://masking.example.com",
    "API_KEYS": "first-key-0123456789",
}


@pytest.mark.parametrize(
    "env",
    [{"WEBHOOK_SIGNATURE": "log"},
     {"WEBHOOK_SIGNATURE": "off"},
     {"WEBHOOK_SIGNATURE": "off", "VTS_BASE_URL": "https://api.vtscom.net"}],
)  # fmt: skip
def test_no_mode_takes_unsigned_callbacks_beside_the_real_vts(env: dict[str, str]) -> None:
    """log is gone, and off is refused at start-up unless VTS is on loopback (the sandbox)."""
    with pytest.raises(ConfigurationError, match="WEBHOOK_SIGNATURE"):
        Settings.from_env(_ENV | env)
    sandbox = _ENV | {"WEBHOOK_SIGNATURE": "off", "VTS_BASE_URL": "http://127.0.0.1:8025"}
    assert Settings.from_env(sandbox).webhook_signature == "off"


def test_previous_token_is_accepted_during_rotation(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """With VTS_AUTH_TOKEN_PREVIOUS set, callbacks signed with either token are taken."""
    from service.web.app import create_app

    settings = make_settings(
        redis_url, "http://127.0.0.1:1", vts_auth_token_previous=Secret("the-previous-token")
    )
    with serve(create_app(settings), port=int(settings.public_base_url.rsplit(":", 1)[1])) as url:
        caller = Caller(url, settings.public_base_url)
        assert caller.post(SESSION, _event(), token="the-previous-token").status_code == 200
        assert caller.post(SESSION, _event(Duration="1"), token=AUTH_TOKEN).status_code == 200
        assert caller.post(SESSION, _event(Duration="2"), token="a-third-token").status_code == 401
        caller.client.close()
    assert _queued(redis_client) == 2
    assert Settings.from_env(_ENV | {"VTS_AUTH_TOKEN_PREVIOUS": "old"}).vts_auth_token_previous


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"&".join([b"a=1"] * 11_000), "application/x-www-form-urlencoded"),
        (b"[" * 20_000, "application/json"),
        (b'{"EventName": ' + b"7" * 5000 + b"}", "application/json"),
        (b'{"EventName": NaN}', "application/json"),
        (b'{"a": {"b": "c"}}', "application/json"),
    ],
)
def test_costly_bodies_are_400_before_the_signature(
    caller: Caller, redis_client: redis.Redis, content: bytes, content_type: str
) -> None:
    """Too many fields, deep or huge JSON: 400 before any signature work, nothing stored."""
    response = caller.client.post(SESSION, content=content, headers={"content-type": content_type})
    assert response.status_code == 400, response.text
    assert (_stored(redis_client), _queued(redis_client)) == (0, 0)


def test_too_many_query_fields_are_400(caller: Caller) -> None:
    """A GET callback with more fields than an event has is 400 before it is split."""
    query = "&".join(f"f{i}=1" for i in range(5_000))
    assert caller.client.get(f"{SESSION}?{query}").status_code == 400


def test_redis_unavailable_is_503(redis_client: redis.Redis) -> None:
    """When Redis cannot take the event the answer is 503, so VTS retries."""
    from service.web.app import create_app

    settings = make_settings("redis://127.0.0.1:1/0", "http://127.0.0.1:1", webhook_signature="off")
    with serve(create_app(settings)) as url:
        response = httpx2.post(url + SESSION, data=_event(), timeout=10)
        assert response.status_code == 503
        assert httpx2.get(url + "/readyz").status_code == 503
    assert json.loads(response.text)["status"] == 503


# Forms as VTS or anyone else might send them: names and values with the characters
# that matter to the format (separators, "+", "%" escapes, broken escapes, non-ASCII).
_FORM_PIECES = [
    "a",
    "Z9",
    "=",
    "&",
    "+",
    "%20",
    "%2B",
    "%26",
    "%3D",
    "%e2%82%ac",
    "%ff",
    "%",
    "%4",
    "é",
    " ",
    ";",
]


@hypothesis.settings(max_examples=400, deadline=None)
@hypothesis.given(
    text=st.lists(st.sampled_from(_FORM_PIECES), max_size=24).map("".join),
    strict=st.booleans(),
)
def test_forms_are_read_as_parse_qsl_reads_them(text: str, strict: bool) -> None:
    """The callback form reader gives what ``parse_qsl`` (blank values kept, at most
    MAX_FIELDS) gives, field for field, and refuses what it refuses."""
    from urllib.parse import parse_qsl

    from service.vts.callbacks import MAX_FIELDS
    from service.web.problems import Problem
    from service.web.webhooks import _form_params

    try:
        expected = dict(
            parse_qsl(
                text,
                keep_blank_values=True,
                strict_parsing=strict and bool(text),
                max_num_fields=MAX_FIELDS,
            )
        )
    except ValueError:
        with pytest.raises(Problem) as refused:
            _form_params(text, strict=strict)
        assert refused.value.status == 400
        return
    assert _form_params(text, strict=strict) == expected


def test_a_form_past_the_field_limit_is_refused_before_it_is_split() -> None:
    """MAX_FIELDS fields are read; one more is a 400."""
    from service.vts.callbacks import MAX_FIELDS
    from service.web.problems import Problem
    from service.web.webhooks import _form_params

    assert len(_form_params("&".join(f"f{i}=v" for i in range(MAX_FIELDS)), strict=True)) == 64
    with pytest.raises(Problem):
        _form_params("&".join(f"f{i}=v" for i in range(MAX_FIELDS + 1)), strict=True)


@hypothesis.settings(max_examples=400, deadline=None)
@hypothesis.given(
    params=st.dictionaries(
        st.text(max_size=12),
        st.one_of(st.text(max_size=24), st.sampled_from(["\x7f", "é", "\u2028", '"\\', "\x00"])),
        max_size=8,
    ),
    kind=st.sampled_from(["session", "recording"]),
)
def test_event_ids_are_keyed_digests_of_the_json_they_always_were(
    params: dict[str, str], kind: Kind
) -> None:
    """An event's id is the HMAC-SHA256, under the key derived from the VTS token, of
    ``json.dumps`` of the kind and sorted fields, whichever encoder wrote it."""
    import hashlib
    import hmac
    import json

    from service.vts.callbacks import Event, EventIds, id_key

    canonical = json.dumps([kind, sorted(params.items())], separators=(",", ":"))
    keyed = hmac.new(id_key(AUTH_TOKEN), canonical.encode(), hashlib.sha256)
    assert EventIds(AUTH_TOKEN).of(Event(kind, params)) == keyed.hexdigest()[:32]


def test_stored_callback_ids_need_the_secret_and_survive_a_token_rotation(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """A stored callback's id is not the plain digest of its fields (which a brute force
    over phone numbers could match); two webs with one token give one id, and during a
    token rotation a retry of a callback stored under the old token is a duplicate."""
    import hashlib

    from service.web.app import create_app

    params = _event()
    canonical = json.dumps(["session", sorted(params.items())], separators=(",", ":"))
    plain = hashlib.sha256(canonical.encode()).hexdigest()[:32]
    webs = [("old-token", None), ("old-token", None), (AUTH_TOKEN, "old-token")]
    for token, previous in webs:
        port = free_port()
        settings = make_settings(
            redis_url, "http://127.0.0.1:1", public_base_url=f"http://127.0.0.1:{port}",
            vts_auth_token=Secret(token),
            vts_auth_token_previous=Secret(previous) if previous else None,
        )  # fmt: skip
        with serve(create_app(settings), port=port) as url:
            caller = Caller(url, settings.public_base_url)
            assert caller.post(SESSION, params, token=token).status_code == 200
            caller.client.close()
    assert (_stored(redis_client), _queued(redis_client)) == (1, 1)
    assert webhook_totals(redis_client)["duplicate"] == 2
    stored: list[bytes] = redis_client.zrange(Keys.webhooks(), 0, -1)  # type: ignore[assignment]
    assert plain.encode() not in stored
    assert not redis_client.exists(Keys.webhook(plain))
