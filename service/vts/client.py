"""The VTS Number Masking API client: one method per action, typed results, our errors.

Outcomes: a 2xx is parsed into :mod:`service.vts.models`; 429, 5xx, network failures and
unreadable 2xx bodies raise :class:`~service.errors.VtsUnavailable` (retry), and
:class:`~service.errors.VtsOutcomeUnknown` when the request may have been applied;
404 raises :class:`~service.errors.VtsNotFound`, a 400 saying no virtual number is free
:class:`~service.errors.VtsNoNumberAvailable` (a VtsUnavailable: retry), other 4xx
:class:`~service.errors.VtsRejected` (don't retry). The client never retries by itself:
retry policy belongs to the actors.

No message or log line holds a phone number or the credentials. List requests carry
numbers in their URL, so their transport errors are raised ``from None``; the others
chain the httpx error, whose text never holds the URL.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime
from decimal import Decimal
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Self
from urllib.parse import quote

import httpx2
import structlog

from service.errors import (
    VtsNoNumberAvailable,
    VtsNotFound,
    VtsOutcomeUnknown,
    VtsRejected,
    VtsUnavailable,
)
from service.phones import mask_text
from service.vts.dialects import (
    MalformedResponse,
    SessionPage,
    parse_session,
    parse_session_page,
)
from service.vts.models import VtsSession
from service.vts.ratelimit import RateLimiter

log = structlog.get_logger(__name__)

PAGE_SIZE = 20  # VTS's maximum
MAX_PAGES = 5
UNREADABLE = "VTS sent a response we cannot read"
_NOT_SENT = (
    httpx2.ConnectError,
    httpx2.ConnectTimeout,
    httpx2.PoolTimeout,
    httpx2.ProxyError,
    httpx2.UnsupportedProtocol,
)
_MAX_REASON = 300
# How VTS says that every virtual number is held: a 400 that is temporary, unlike others.
_NO_NUMBER = "no virtual number available"


class VtsClient:
    """Synchronous VTS client; one instance per process, safe to share between threads."""

    def __init__(
        self,
        *,
        base_url: str,
        auth_id: str,
        auth_token: str,
        limiter: RateLimiter | None = None,
        timeout: float = 10.0,
        connect_timeout: float = 3.0,
        transport: httpx2.BaseTransport | None = None,
        observe: Callable[[str, str, float], None] | None = None,
    ) -> None:
        # (action, outcome, seconds) after every call, for metrics.
        self._observe = observe
        self._limiter = limiter
        self._sessions_path = f"/v1/Account/{quote(auth_id, safe='')}/Masking/Session/"
        self._http = httpx2.Client(
            base_url=base_url,
            auth=httpx2.BasicAuth(auth_id, auth_token),
            timeout=httpx2.Timeout(timeout, connect=connect_timeout),
            transport=transport,
            headers={"Accept": "application/json"},
        )

    def create_session(self, params: Mapping[str, object]) -> VtsSession:
        """Create a masking session. An unreadable 2xx raises VtsOutcomeUnknown: it exists."""
        response = self._request("POST", "create_session", self._sessions_path, body=params)
        try:
            return parse_session(_json(response))
        except MalformedResponse:
            raise VtsOutcomeUnknown(UNREADABLE, status=response.status_code) from None

    def get_session(self, session_uuid: str) -> VtsSession:
        response = self._request(
            "GET", "get_session", self._session_path(session_uuid), session_uuid=session_uuid
        )
        try:
            return parse_session(_json(response))
        except MalformedResponse:
            raise VtsUnavailable(UNREADABLE, status=response.status_code) from None

    def list_sessions(
        self,
        *,
        first_party: str | None = None,
        second_party: str | None = None,
        virtual_number: str | None = None,
        status: str = "all",
        created_since: datetime | None = None,
        limit: int = 20,
        offset: int = 0,
    ) -> list[VtsSession]:
        """Up to ``limit`` (1..100) sessions, newest first, fetched 20 per request.

        ``created_since`` is sent to the second in UTC (naive means UTC). A session seen on
        two pages (the list shifted under us) is returned once.
        """
        if not 1 <= limit <= PAGE_SIZE * MAX_PAGES or offset < 0:
            raise ValueError(f"limit must be 1..{PAGE_SIZE * MAX_PAGES}, offset at least 0")
        query: dict[str, str | int] = {"status": status}
        filters = {
            "first_party": first_party,
            "second_party": second_party,
            "virtual_number": virtual_number,
        }
        query.update({name: value for name, value in filters.items() if value is not None})
        if created_since is not None:
            query["created_time__gte"] = _vts_time(created_since)
        sessions: dict[str, VtsSession] = {}
        size = min(limit, PAGE_SIZE)
        for _ in range(MAX_PAGES):
            page = self._list_page({**query, "limit": size, "offset": offset})
            for session in page.sessions:
                sessions.setdefault(session.session_uuid, session)
            offset += len(page.sessions)
            if len(sessions) >= limit or len(page.sessions) < size or page.has_next is False:
                break
        return list(sessions.values())[:limit]

    def update_session(self, session_uuid: str, params: Mapping[str, object]) -> VtsSession | None:
        """Update a session; ``None`` when VTS said yes (2xx) in a body we cannot read."""
        response = self._request(
            "POST",
            "update_session",
            self._session_path(session_uuid),
            body=params,
            session_uuid=session_uuid,
        )
        try:
            return parse_session(_json(response))
        except MalformedResponse:
            log.warning("vts_update_unreadable", vts_session_uuid=session_uuid)
            return None

    def expire_session(self, session_uuid: str) -> None:
        """End a session now. Any 2xx is success, whatever its body."""
        self._request(
            "DELETE", "expire_session", self._session_path(session_uuid), session_uuid=session_uuid
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _session_path(self, session_uuid: str) -> str:
        return f"{self._sessions_path}{quote(session_uuid, safe='')}/"

    def _list_page(self, query: Mapping[str, str | int]) -> SessionPage:
        response = self._request(
            "GET", "list_sessions", self._sessions_path, params=query, url_has_numbers=True
        )
        try:
            return parse_session_page(_json(response))
        except MalformedResponse:
            raise VtsUnavailable(UNREADABLE, status=response.status_code) from None

    def _request(
        self,
        method: str,
        action: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        body: Mapping[str, object] | None = None,
        session_uuid: str | None = None,
        url_has_numbers: bool = False,
    ) -> httpx2.Response:
        """Send one request through the rate limiter; return it if 2xx, else raise."""
        ids = {"vts_session_uuid": session_uuid} if session_uuid else {}
        started = time.perf_counter()
        with self._slot():
            try:
                response = self._http.request(
                    method, path, params=params, json=dict(body) if body is not None else None
                )
            except httpx2.RequestError as exc:
                self._observed(action, "error", started)
                log.warning(
                    "vts_request",
                    method=method,
                    action=action,
                    status=None,
                    error=type(exc).__name__,
                    duration_ms=_since(started),
                    **ids,
                )
                error = _transport_error(exc)
                if url_has_numbers:
                    raise error from None
                raise error from exc
        self._observed(action, _outcome(response.status_code), started)
        emit = log.info if response.is_success else log.warning
        emit(
            "vts_request",
            method=method,
            action=action,
            status=response.status_code,
            duration_ms=_since(started),
            **ids,
        )
        if not response.is_success:
            raise _status_error(response)
        return response

    def _observed(self, action: str, outcome: str, started: float) -> None:
        if self._observe is not None:
            self._observe(action, outcome, time.perf_counter() - started)

    def _slot(self) -> AbstractContextManager[None]:
        return self._limiter.slot() if self._limiter is not None else nullcontext()


def _outcome(status: int) -> str:
    return "429" if status == 429 else f"{status // 100}xx"


def _transport_error(exc: httpx2.RequestError) -> VtsUnavailable:
    name = type(exc).__name__
    if isinstance(exc, _NOT_SENT):
        return VtsUnavailable(f"VTS could not be reached ({name}); nothing was sent")
    return VtsOutcomeUnknown(
        f"no answer from VTS ({name}); the request may or may not have been applied"
    )


def _status_error(response: httpx2.Response) -> VtsUnavailable | VtsRejected:
    status = response.status_code
    if status == 429:
        retry_after = _retry_after(response.headers.get("Retry-After"))
        return VtsUnavailable("VTS rate limit reached (429)", status=429, retry_after=retry_after)
    if status >= 500:
        retry_after = _retry_after(response.headers.get("Retry-After"))
        return VtsUnavailable(f"VTS failed ({status})", status=status, retry_after=retry_after)
    detail = _error_detail(response)
    if status == 400 and _NO_NUMBER in detail.lower():
        return VtsNoNumberAvailable(f"VTS has no virtual number free (400){detail}", status=400)
    if status == 404:
        return VtsNotFound(f"VTS does not know this session (404){detail}", status=status)
    if status == 401:
        return VtsRejected(
            f"VTS refused our credentials (401){detail}; check VTS_AUTH_ID and VTS_AUTH_TOKEN",
            status=status,
        )
    return VtsRejected(f"VTS rejected the request ({status}){detail}", status=status)


def _error_detail(response: httpx2.Response) -> str:
    """``": <VTS's error>"``, masked and shortened, or ``""`` when it gave none."""
    try:
        body = _json(response)
    except MalformedResponse:
        return ""
    error = body.get("error") if isinstance(body, Mapping) else None
    text = _flatten(error).strip() if error is not None else ""
    if not text:
        return ""
    if len(text) > _MAX_REASON:
        text = text[:_MAX_REASON] + "…"
    return ": " + mask_text(text)


def _flatten(error: object) -> str:
    if isinstance(error, Mapping):
        return "; ".join(f"{key}: {_flatten(value)}" for key, value in error.items())
    if isinstance(error, list | tuple):
        return ", ".join(_flatten(item) for item in error)
    return str(error)


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds: delay-seconds or an HTTP-date; ``None`` if unreadable."""
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _json(response: httpx2.Response) -> object:
    try:
        return json.loads(response.content, parse_float=Decimal)
    except ValueError as exc:
        raise MalformedResponse("not JSON") from exc


def _vts_time(moment: datetime) -> str:
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _since(started: float) -> int:
    return round((time.perf_counter() - started) * 1000)
