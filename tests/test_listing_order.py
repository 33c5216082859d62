"""Listing order: newest first, even for sessions created within one millisecond."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import redis.asyncio

from service import messages
from service.models import Session, Status
from service.store import AsyncSessions


def _session(session_id: str, created_at: datetime) -> Session:
    return Session(
        id=session_id,
        status=Status.PENDING,
        first_party="+14155552671",
        second_party="+14155552672",
        created_at=created_at,
        updated_at=created_at,
        options={},
        metadata={},
        app="rides",
    )


def test_sessions_created_in_one_millisecond_list_newest_first(redis_url: str) -> None:
    """Three creates 200 µs apart, the oldest with the largest id: listed newest first,
    not in the order of their ids (one web process answers creates that fast)."""
    start = datetime(2026, 12, 1, 10, 0, 0, 100_000, tzinfo=UTC)
    ids = ["ses_" + "f" * 32, "ses_" + "8" * 32, "ses_" + "0" * 32]

    async def go() -> list[str]:
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            store = AsyncSessions(client)
            for index, session_id in enumerate(ids):
                session = _session(session_id, start + timedelta(microseconds=200 * index))
                message = messages.CREATE_SESSION.message(messages.SessionRef(session_id))
                outcome = await store.create_session(
                    session, message, idempotency=None, idempotency_ttl=60
                )
                assert outcome.result == "created"
            first = await store.list_sessions("rides", status=None, limit=2, cursor=None)
            assert first.next_cursor is not None
            rest = await store.list_sessions(
                "rides", status=None, limit=2, cursor=first.next_cursor
            )
            return [s.id for s in first.sessions + rest.sessions]
        finally:
            await client.aclose()

    assert asyncio.run(go()) == list(reversed(ids))
