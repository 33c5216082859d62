"""What a session costs in Redis while it lives, once it has ended, and after retention.

    .venv/bin/python -m tests.benchmarks.bench_lifecycle [--sessions 1000] [--calls 2]

Runs the real web app, a real dramatiq worker (threads of this process) and the VTS
sandbox on loopback, with a private redis-server. Each session gets ``--calls`` bridged
calls, the first one recorded, so it has its callbacks, applied events, timeline,
recording and file. Memory is Redis's ``used_memory`` against the empty baseline taken
with everything running, and the ``MEMORY USAGE`` of the keys, split into keys with a
TTL (they expire on their own) and keys without.

Retention is made to pass without waiting for it: once every session has ended, the
purge timers are moved to now (what the scheduler sees when ``SESSION_RETENTION`` has
passed), and the worker purges. Stored callbacks and their nonces expire after 7 days
on their own, long before a 30-day retention; a purge removes the session's callbacks,
so what stays with a TTL after it is nonces only: the last line lets them expire too.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dramatiq
import httpx2
import redis

from devkit.embedded_redis import EmbeddedRedis
from devkit.sandbox.server import SandboxConfig, create_sandbox_app, number_range
from service.settings import AppKey, Secret, Settings
from service.store.keys import Keys
from tests.servers import free_port, serve

AUTH_ID, AUTH_TOKEN = "MABENCHMARK0000001", "bench-token"
API_KEY = "bench-key-" + "0" * 16


def _wait(condition: Callable[[], Any], what: str, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up waiting for {what}")
        time.sleep(0.5)


def _memory(client: redis.Redis) -> tuple[int, int, int, int]:
    """(used_memory, keys, bytes of keys with a TTL, bytes of keys without)."""
    with_ttl = without = keys = 0
    for key in client.scan_iter(count=1000):
        usage = client.memory_usage(key) or 0
        keys += 1
        if client.ttl(key) >= 0:
            with_ttl += usage
        else:
            without += usage
    return int(client.info("memory")["used_memory"]), keys, with_ttl, without


def _drained(client: redis.Redis) -> bool:
    queues = ("sessions", "events", "recordings", "notifications")
    # A message waiting to be retried is in the queue's delay queue.
    return not any(client.llen(Keys.queue(q)) + client.zcard(Keys.queue(q + ".DQ")) for q in queues)


@contextmanager
def _system(directory: Path, sessions: int) -> Iterator[tuple[redis.Redis, str, str]]:
    server = EmbeddedRedis(directory / "redis").start()
    client = redis.Redis.from_url(server.url)
    pool = number_range(min(10_000, sessions + 50))
    # A loaded machine may answer a callback slowly: give it time rather than lose events.
    sandbox_app = create_sandbox_app(
        SandboxConfig(AUTH_ID, AUTH_TOKEN, number_pool=pool, callback_timeout=60.0)
    )
    web_port = free_port()
    settings = Settings(
        redis_url=server.url,
        vts_auth_id=AUTH_ID,
        vts_auth_token=Secret(AUTH_TOKEN),
        public_base_url=f"http://127.0.0.1:{web_port}",
        api_keys=(AppKey("bench", Secret(API_KEY)),),
        recordings_dir=directory / "recordings",
        egress_allow_http=True,
        egress_allow_private=True,
        log_level="WARNING",
    )
    from service import logs

    logs.configure(fmt="json", level="WARNING")
    try:
        with serve(sandbox_app) as sandbox_url:
            settings = Settings(**{**vars(settings), "vts_base_url": sandbox_url})
            from service.web.app import create_app
            from workers import boot
            from workers.broker import create_broker

            broker = create_broker(client, boot.build(settings, client))
            dramatiq.set_broker(broker)
            import workers.actors  # noqa: F401  (declares the actors on this broker)

            worker = dramatiq.Worker(broker, worker_threads=16, worker_timeout=100)
            worker.start()
            try:
                with serve(create_app(settings), port=web_port) as web_url:
                    yield client, web_url, sandbox_url
            finally:
                worker.stop()  # closes the broker's dependencies
    finally:
        client.close()
        server.stop()


def _create(api: httpx2.Client, n: int) -> dict[str, Any]:
    body = {"first_party": f"+1415{2000000 + n:07d}", "second_party": f"+1415{3000000 + n:07d}",
            "record": True}  # fmt: skip
    session: dict[str, Any] = api.post(
        "/v1/sessions", json=body, headers={"Prefer": "wait=30"}
    ).json()
    if session.get("status") != "active":
        raise SystemExit(f"a session did not become active: {session}")
    return session


def _call(sandbox: httpx2.Client, uuid: str, recorded: bool) -> None:
    placed = sandbox.post(
        f"/_sandbox/sessions/{uuid}/calls",
        json={"caller": "first", "duration": 30, "recorded": recorded},
    )
    placed.raise_for_status()


def _settled(client: redis.Redis, sandbox: httpx2.Client, ids: list[str], status: str) -> bool:
    """Every session in ``status``, every callback sent, every queue empty."""
    with client.pipeline(transaction=False) as pipe:
        for session_id in ids:
            pipe.hget(Keys.session(session_id), "status")
        statuses = pipe.execute()
    sent = sandbox.get("/_sandbox/stats").json()["callbacks"]
    finished = sent.get("delivered", 0) + sent.get("failed", 0) == sent.get("attempts", 0)
    recordings = sum(1 for _ in client.scan_iter(match="masking:recording:*", count=1000))
    everything = finished and recordings == len(ids) and _drained(client)
    return everything and all(s == status.encode() for s in statuses)


def _report(client: redis.Redis, sandbox: httpx2.Client, ids: list[str]) -> None:
    with client.pipeline(transaction=False) as pipe:
        for session_id in ids:
            pipe.hget(Keys.session(session_id), "interaction_count")
        counted = sum(int(c or 0) for c in pipe.execute())
    stored = sum(1 for _ in client.scan_iter(match="masking:recording:*", count=1000))
    sent = sandbox.get("/_sandbox/stats").json()["callbacks"]
    print(f"  interactions counted {counted:,}, recordings {stored:,}, callbacks "
          f"{sent.get('attempts', 0):,} sent, {sent.get('failed', 0):,} not delivered")  # fmt: skip


def _line(label: str, figures: tuple[int, int, int, int], base: tuple[int, int, int, int],
          per: int) -> None:  # fmt: skip
    used, keys, with_ttl, without = figures
    delta = used - base[0]
    print(f"{label:<28} used_memory {used:>12,} (+{delta:>11,}; {delta / per:>8,.0f} B/session)"
          f"  keys {keys:>7,}  MEMORY USAGE with TTL {with_ttl:>11,}  without {without:>11,}"
          f" ({(without - base[3]) / per:,.0f} B/session)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--calls", type=int, default=2, help="bridged calls per session")
    args = parser.parse_args()
    n = args.sessions
    with tempfile.TemporaryDirectory() as tmp, _system(Path(tmp), n) as (client, web, vts):
        api = httpx2.Client(base_url=web, headers={"Authorization": f"Bearer {API_KEY}"},
                            timeout=60)  # fmt: skip
        sandbox = httpx2.Client(base_url=vts, auth=(AUTH_ID, AUTH_TOKEN), timeout=60)
        _wait(lambda: client.exists(Keys.scheduler_leader()), "the scheduler")
        baseline = _memory(client)
        _line("empty baseline", baseline, baseline, 1)
        with ThreadPoolExecutor(16) as pool:
            sessions = list(pool.map(lambda i: _create(api, i), range(n)))
            for call in range(args.calls):
                uuids = [s["vts_session_uuid"] for s in sessions]
                list(pool.map(_call, [sandbox] * n, uuids, [call == 0] * n))
        ids = [s["id"] for s in sessions]
        _wait(lambda: _settled(client, sandbox, ids, "active"), "calls and recordings")
        _report(client, sandbox, ids)
        _line(f"{n} live sessions", _memory(client), baseline, n)
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda s: api.delete(f"/v1/sessions/{s}").raise_for_status(), ids))
        _wait(lambda: _settled(client, sandbox, ids, "expired"), "the sessions to end")
        _line(f"{n} ended, before retention", _memory(client), baseline, n)
        purges = {f"purge:{s}": 0 for s in ids}
        client.zadd(Keys.schedule(), purges, xx=True)
        _wait(lambda: client.zcard(Keys.index()) == 0 and _drained(client), "the purges")
        files = list((Path(tmp) / "recordings").iterdir())
        _line(f"{n} after retention", _memory(client), baseline, n)
        print(f"recording files left: {len(files)}")
        left = {k.decode().split(":")[1] for k in client.scan_iter(count=1000)}
        print(f"kinds of keys left: {sorted(left)}")
        # Nonces live 7 days, a quarter of the default retention: let them expire too.
        for key in client.scan_iter(match=Keys.nonce("*"), count=1000):
            client.delete(key)
        _line("and once nonces expired", _memory(client), baseline, n)


if __name__ == "__main__":
    main()
