"""V3 callback signatures: the reference vectors, and what must not verify."""

from __future__ import annotations

import pytest

from service.vts.signatures import new_nonce, signed_url, v3_signature, verify_v3

TOKEN = "Y2Q2ZDgxZmY5YWRiOTI5YmQ1Njg0MTAxZWIyOTc4"
NONCE = "31627761595286130198"
PARAMS = {
    "Direction": "outbound",
    "From": "19792014278",
    "ALegUUID": "3e82ae9d-2c78-4d85-b1a4-6eae7dbafb36",
    "CallStatus": "in-progress",
    "BillRate": "0.002",
    "ParentAuthID": "MANWVLYTK4ZWU1YTY4QA",
    "To": "sip:PlivoSignature382029104058171078704104@phone-qa.voice.plivodev.com",
    "ALegRequestUUID": "3e82ae9d-2c78-4d85-b1a4-6eae7dbafb36",
    "CallUUID": "3e82ae9d-2c78-4d85-b1a4-6eae7dbafb36",
    "RequestUUID": "3e82ae9d-2c78-4d85-b1a4-6eae7dbafb36",
    "SIP-H-To": "<sip:PlivoSignature382029104058171078704104@52.9.11.55;transport=udp>;tag=1",
    "SessionStart": "2020-04-08 11:34:33.238707",
    "Event": "StartApp",
}
BIN = "https://plivobin.non-prod.plivops.com/api/v1/validate_signature03.xml"
POST_URL = BIN + "/?a=b&c=d"
POST_SIGNATURE = "k7Pusd4OxCIjR5IfA9iedDNu/h/gbdYqdzG/MiYtd1c="
GET_SIGNATURE = "i/MQsaQSAd6fiKhOh2qeeeLHZ9faldADSb3/7+Akfbc="


def test_post_reference_vector() -> None:
    """The POST vector (query and trailing slash) signs exactly as the reference says."""
    assert v3_signature(POST_URL, PARAMS, NONCE, TOKEN, "POST") == POST_SIGNATURE
    assert verify_v3(POST_URL, PARAMS, NONCE, POST_SIGNATURE, TOKEN, "POST")


def test_get_reference_vector() -> None:
    """The GET vector signs exactly as the reference says."""
    assert v3_signature(BIN, PARAMS, NONCE, TOKEN, "GET") == GET_SIGNATURE
    assert verify_v3(BIN, PARAMS, NONCE, GET_SIGNATURE, TOKEN, "GET")


@pytest.mark.parametrize(
    ("url", "params", "nonce", "token"),
    [
        (BIN + "?a=b&c=d", PARAMS, NONCE, TOKEN),  # trailing slash dropped
        (POST_URL.replace("c=d", "c=e"), PARAMS, NONCE, TOKEN),
        (POST_URL.replace("https", "http"), PARAMS, NONCE, TOKEN),
        (POST_URL, PARAMS | {"CallStatus": "completed"}, NONCE, TOKEN),
        (POST_URL, PARAMS | {"Extra": "1"}, NONCE, TOKEN),
        (POST_URL, {k: v for k, v in PARAMS.items() if k != "From"}, NONCE, TOKEN),
        (POST_URL, PARAMS, NONCE[:-1] + "9", TOKEN),
        (POST_URL, PARAMS, NONCE, TOKEN + "x"),
    ],
    ids=["url-slash", "url-query", "url-scheme", "value", "added", "removed", "nonce", "token"],
)
def test_tampering_is_rejected(url: str, params: dict[str, str], nonce: str, token: str) -> None:
    """Any change to the URL, a parameter, the nonce or the token breaks the signature."""
    assert not verify_v3(url, params, nonce, POST_SIGNATURE, token, "POST")


def test_method_matters() -> None:
    """A POST signature does not verify as GET, nor the reverse."""
    assert not verify_v3(POST_URL, PARAMS, NONCE, POST_SIGNATURE, TOKEN, "GET")
    assert not verify_v3(BIN, PARAMS, NONCE, GET_SIGNATURE, TOKEN, "POST")


@pytest.mark.parametrize("header", ["", " ", ",", "not-base64"])
def test_empty_or_junk_header_is_rejected(header: str) -> None:
    """An empty header, empty entries or junk never verify."""
    assert not verify_v3(POST_URL, PARAMS, NONCE, header, TOKEN, "POST")


def test_empty_nonce_is_rejected() -> None:
    """Without a nonce nothing verifies, even a signature made with an empty nonce."""
    signature = v3_signature(POST_URL, PARAMS, "", TOKEN, "POST")
    assert not verify_v3(POST_URL, PARAMS, "", signature, TOKEN, "POST")


def test_one_valid_among_several_is_accepted() -> None:
    """A header holding several comma-separated signatures verifies if any one is right."""
    header = f"{GET_SIGNATURE}, {POST_SIGNATURE},bogus"
    assert verify_v3(POST_URL, PARAMS, NONCE, header, TOKEN, "POST")


def test_get_merges_query_and_params_sorted() -> None:
    """GET signs the URL's query and the parameters merged and sorted by key."""
    url = "https://example.com/hook/?z=1&b=2"
    assert (
        signed_url(url, {"c": "3", "a": "4"}, "GET") == "https://example.com/hook/?a=4&b=2&c=3&z=1"
    )
    together = v3_signature("https://example.com/hook/?a=4&b=2&c=3&z=1", {}, NONCE, TOKEN, "GET")
    assert v3_signature(url, {"c": "3", "a": "4"}, NONCE, TOKEN, "GET") == together


def test_post_forms() -> None:
    """POST writes the sorted query, a dot, then key+value pairs; bare base when empty."""
    assert signed_url("https://e.com/h", {}, "POST") == "https://e.com/h"
    assert signed_url("https://e.com/h?b=1&a=2", {}, "POST") == "https://e.com/h?a=2&b=1"
    assert signed_url("https://e.com/h", {"B": "1", "A": "2"}, "POST") == "https://e.com/h?A2B1"
    assert signed_url("https://e.com/h?q=1", {"A": "2"}, "POST") == "https://e.com/h?q=1.A2"


def test_nonce_is_twenty_random_digits() -> None:
    """Nonces are 20 digits and do not repeat."""
    nonces = {new_nonce() for _ in range(100)}
    assert len(nonces) == 100
    assert all(len(n) == 20 and n.isdigit() for n in nonces)
