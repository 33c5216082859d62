"""Address literals in every spelling, and IPv6 addresses that carry a private IPv4 one
(6to4, NAT64, IPv4-mapped), are refused: at create (422) and at connect time."""

from __future__ import annotations

import httpx2
import pytest

from service.egress import EgressPolicy, EgressRefused, is_public
from tests.conftest import new_numbers

LITERALS = [
    "https://127.1/hook",
    "https://0x7f000001/hook",
    "https://2130706433/hook",
    "https://10.1/hook",
    "https://localhost./hook",
    "https://LocalHost./hook",
    "https://app.localhost/hook",
    "https://[2002:7f00:1::]/hook",
    "https://[2002:a00:1::1]/hook",
    "https://[64:ff9b::7f00:1]/hook",
    "https://[64:ff9b::a00:1]/hook",
    "https://[::ffff:7f00:1]/hook",
]
CARRIERS = ["2002:7f00:1::", "2002:c0a8:101::1", "64:ff9b::a9fe:a9fe", "::ffff:10.0.0.1"]


@pytest.mark.parametrize("url", LITERALS)
def test_callback_url_address_literals_are_422(api: httpx2.Client, url: str) -> None:
    """A callback_url naming loopback or a private address in any spelling is 422."""
    first, second = new_numbers()
    body = {"first_party": first, "second_party": second, "callback_url": url}
    answer = api.post("/v1/sessions", json=body)
    assert answer.status_code == 422, answer.text
    assert [e["field"] for e in answer.json()["errors"]] == ["callback_url"]


@pytest.mark.parametrize("address", CARRIERS)
def test_ipv6_carrying_a_private_ipv4_is_refused_at_connect(address: str) -> None:
    """A name resolving to 6to4, NAT64 or IPv4-mapped of a private address is refused."""
    assert not is_public(address)
    policy = EgressPolicy(resolver=lambda host, port: [address])
    with pytest.raises(EgressRefused):
        policy.addresses("hooks.example.com", 443)


def test_public_addresses_and_names_are_still_allowed() -> None:
    """6to4 of a public address, public literals and ordinary names pass."""
    assert is_public("2002:5db8:d822::1")
    policy = EgressPolicy()
    for url in ["https://93.184.216.34/h", "https://hooks.example.com/h", "https://1e100.net/"]:
        assert policy.refusal(url) is None, url
