"""VTS's V3 callback signatures: the sandbox signs with them, the service verifies them.

VTS copies Plivo's V3 scheme (``reference/vts-api.md``): the key is the account's Auth
Token, the message is a canonical form of the callback URL and its parameters followed
by ``.`` and a nonce, and the signature is the base64 of its HMAC-SHA256.

The canonical URL starts from ``scheme://host/path`` of the exact URL VTS was given. For
``GET`` the URL's query parameters and the callback's parameters are merged (the URL's
win a clash), sorted by key and joined as ``k=v&k=v``. For ``POST`` the URL's sorted
query comes first as ``k=v&k=v``, then ``.`` if there are parameters too, then every
parameter sorted by key as ``key`` + ``value`` with no separator. Sorting is by code
point, which is UTF-8 byte order. Values are used decoded, as received.

V3 carries no timestamp: remembering nonces against replay is the receiver's job.
"""

from __future__ import annotations

import base64
import hmac
import secrets
from collections.abc import Mapping
from functools import lru_cache
from urllib.parse import parse_qsl, urlsplit

SIGNATURE_HEADERS = ("X-VTS-Signature-V3", "X-Plivo-Signature-V3")
NONCE_HEADERS = ("X-VTS-Signature-V3-Nonce", "X-Plivo-Signature-V3-Nonce")
NONCE_DIGITS = 20


def _split(url: str) -> tuple[str, dict[str, str]]:
    """``scheme://host/path`` and the URL's query parameters."""
    base, query = _split_cached(url)
    return base, dict(query)


# A receiver checks every callback against the same few URLs: split each once.
@lru_cache(maxsize=64)
def _split_cached(url: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    parts = urlsplit(url)
    base = f"{parts.scheme}://{parts.netloc}{parts.path}"
    return base, tuple(parse_qsl(parts.query, keep_blank_values=True))


def _joined(params: Mapping[str, str]) -> str:
    return "&".join(f"{key}={params[key]}" for key in sorted(params))


def signed_url(url: str, params: Mapping[str, str], method: str) -> str:
    """The canonical URL that V3 signs for a callback of ``method`` to ``url``."""
    base, query = _split(url)
    if method.upper() == "GET":
        merged = {**params, **query}
        return f"{base}?{_joined(merged)}" if merged else base
    if not (query or params):
        return base
    dot = "." if query and params else ""
    concatenated = "".join(f"{key}{params[key]}" for key in sorted(params))
    return f"{base}?{_joined(query)}{dot}{concatenated}"


def v3_signature(
    url: str, params: Mapping[str, str], nonce: str, auth_token: str, method: str
) -> str:
    """The base64 HMAC-SHA256 signature VTS sends for this callback."""
    message = f"{signed_url(url, params, method)}.{nonce}".encode()
    digest = hmac.digest(auth_token.encode(), message, "sha256")
    return base64.b64encode(digest).decode()


def verify_v3(  # noqa: PLR0917  (the shared contract takes them positionally)
    url: str,
    params: Mapping[str, str],
    nonce: str,
    header_signatures: str,
    auth_token: str,
    method: str,
) -> bool:
    """Whether any of the comma-separated ``header_signatures`` is right, compared in
    constant time. An empty header or nonce never verifies."""
    if not nonce:
        return False
    expected = v3_signature(url, params, nonce, auth_token, method).encode()
    candidates = [part.strip() for part in header_signatures.split(",")]
    # Compare with every candidate, not just until a match, so timing tells nothing.
    matches = [hmac.compare_digest(expected, given.encode()) for given in candidates if given]
    return any(matches)


def new_nonce() -> str:
    """A fresh nonce of 20 random digits, as VTS sends."""
    return "".join(secrets.choice("0123456789") for _ in range(NONCE_DIGITS))
