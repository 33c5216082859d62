"""The events worker: how many VTS events one worker process applies per second, beside a
bare ceiling, and how long a callback takes to show in a session's counters.

    .venv/bin/python -m tests.benchmarks.bench_events [--part both|throughput|latency]
        [--events 20000] [--sessions 2000] [--threads 8] [--rounds 3]
        [--rate 500] [--duration 20] [--warmup 2] [--latency-sessions 200]
        [--latency-rounds 3]

**Throughput.** ``--sessions`` active sessions, each tied to a VTS session, and
``--events`` stored, queued callbacks for them (hangup-family calls, SequenceNumber from 1
per session), made with the store's own calls (``create_session``, ``claim_vts_session``,
``transition``, ``ingest_webhook``). Each session's events are queued in sequence order,
sessions interleaved, so none waits for its predecessor. Then one ``python -m service
worker --processes 1 --threads N`` starts; timed from its start until
``masking:stats:events`` counts every event applied. Beside it, as many messages for
``bare_actor`` (three Redis commands in a pipeline) on one ``dramatiq`` process with as
many threads. The summary shows events/s from the first applied event (start-up apart)
and from the process start, and the ratio (target: at least 0.80).

**Latency.** The Procfile's web and worker (``tests/system.py``), ``--latency-sessions``
active sessions, and signed leg-end callbacks (alternately first and second party, each
session's SequenceNumber rising) posted at a steady ``--rate`` for ``--duration``
seconds, open loop, after ``--warmup`` seconds of the same traffic that are not counted
(while the client opens its connections and the worker, idle until then, polls more
often). Each event's latency runs from its request being sent until the session's
``call_count`` shows it, read when the store publishes the session's change. The sender
and the watcher share one process, so its garbage collector is held off while it
measures: a full collection of its heap took 38-75 ms and stalled the watcher, which
counted that as the service's latency. ``--latency-rounds`` rounds, each with a fresh
system; the summary gives each round and the medians. Target: p99 at most 50 ms at 500
callbacks/s.

Redis as in ``bench_create``, flushed before each part. The benchmark holds the worker
scheduler's lead, so the reconciliations due 15 s after each call (which would call VTS)
do not run: this measures applying events.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, fields
from pathlib import Path
from tempfile import TemporaryDirectory
from urllib.parse import urlencode

import httpx2
import redis
import redis.asyncio

from service import messages
from service.models import Session, Status, now
from service.store import CHANNEL, AsyncSessions, AsyncStoredEvents, Queue, Schedule, Sessions
from service.store.keys import Keys
from service.vts.callbacks import Event, check
from tests.benchmarks import bare_actor
from tests.benchmarks.bench_create import bench_redis
from tests.benchmarks.common import (
    AUTH_TOKEN,
    CALLBACK_PATH,
    FIRST_PARTY,
    SECOND_PARTY,
    callback,
    load,
    nonce,
    percentiles,
    running,
    service_env,
    signature_headers,
    wait_for,
    worker_command,
)
from tests.conftest import event_id
from tests.servers import free_port
from tests.system import System

TARGET_RATIO = 0.80
TARGET_P99_MS = 50.0
# One bridged call of the hangup family, as the sandbox sends it.
CALL = (
    "SessionFirstPartyAnswer",
    "SessionSecondPartyRing",
    "SessionSecondPartyAnswer",
    "SessionFirstPartyHangup",
    "SessionSecondPartyHangup",
    "SessionPartiesHangup",
)
# The leg ends the latency part sends, alternately.
HANGUPS = ("SessionFirstPartyHangup", "SessionSecondPartyHangup")
WORKER, BARE = "events worker (apply_event)", "bare actor, 3 Redis commands"
# Milliseconds: callback to counter, the HTTP answer, and how late the sender was.
LATENCY_HEADER = (
    f"{'':12}{'p50':>8}{'p95':>8}{'p99':>8}{'max':>8}{'HTTP p50':>10}{'p99':>8}{'lag max':>10}  ms"
)


@dataclass(frozen=True)
class Throughput:
    events: int
    startup_s: float
    total_s: float

    @property
    def steady_rate(self) -> float:
        """Events/s from the first applied event: the worker's start-up left out."""
        return self.events / (self.total_s - self.startup_s)

    @property
    def rate(self) -> float:
        return self.events / self.total_s


def active_sessions(client: redis.Redis, redis_url: str, count: int) -> list[tuple[str, str]]:
    """``count`` sessions made active and tied to a VTS session, as the create worker
    leaves them: (session id, VTS session uuid)."""
    moment = now()
    sessions = [
        Session(
            f"ses_{uuid.uuid4().hex}", Status.PENDING, FIRST_PARTY, SECOND_PARTY, moment, moment
        )
        for _ in range(count)
    ]
    asyncio.run(_create(redis_url, sessions))
    # No worker may create them at VTS: their create messages go.
    client.delete(*(f(messages.SESSIONS_QUEUE) for f in (Keys.queue, Keys.queue_messages)))
    store, pairs = Sessions(client), []
    for session in sessions:
        vts_uuid = str(uuid.uuid4())
        store.claim_vts_session(vts_uuid, session.id)
        store.transition(
            session.id,
            Status.ACTIVE,
            allowed=[Status.PENDING],
            fields={"vts_session_uuid": vts_uuid},
        )
        pairs.append((session.id, vts_uuid))
    return pairs


async def _create(redis_url: str, sessions: list[Session]) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        store = AsyncSessions(client)
        await asyncio.gather(
            *(
                store.create_session(
                    s,
                    messages.CREATE_SESSION.message(messages.SessionRef(s.id)),
                    idempotency=None,
                    idempotency_ttl=60,
                )
                for s in sessions
            )
        )
    finally:
        await client.aclose()


def hold_scheduler(client: redis.Redis) -> None:
    """Take the scheduler's lead for 10 minutes, so that no worker dispatches timers."""
    if not Schedule(client).lead("bench-events", 600_000):
        raise RuntimeError("another scheduler holds the lead")


def stored_events(sessions: list[tuple[str, str]], count: int) -> list[Event]:
    """``count`` events, each session's in sequence order, sessions interleaved."""
    per_session = -(-count // len(sessions))
    ordered = (
        check("session", callback(CALL[(sequence - 1) % len(CALL)], vts_uuid, sequence))
        for sequence in range(1, per_session + 1)
        for _, vts_uuid in sessions
    )
    return list(itertools.islice(ordered, count))


async def _ingest(redis_url: str, events: list[Event]) -> None:
    """Store and queue ``events`` in order (a chunk's calls share round trips, in order)."""
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        store = AsyncStoredEvents(client)
        for start in range(0, len(events), 1000):
            received_ms = int(time.time() * 1000)
            await asyncio.gather(
                *(
                    store.ingest_webhook(
                        event,
                        [event_id(event)],
                        messages.APPLY_EVENT.message(
                            messages.EventRef(event_id(event), event.session_uuid)
                        ),
                        nonce=nonce(),
                        received_ms=received_ms,
                    )
                    for event in events[start : start + 1000]
                )
            )
    finally:
        await client.aclose()


def timed(
    command: list[str], env: dict[str, str], log: Path, applied: Callable[[], int], events: int
) -> Throughput:
    """Start ``command``; time it until ``applied()`` reaches ``events``."""
    started = time.monotonic()
    with running(command, env, log) as process:
        wait_for(
            lambda: applied() > 0,
            what="a first event applied",
            timeout=60,
            process=process,
            log_path=log,
            interval=0.005,
        )
        first = time.monotonic()
        wait_for(
            lambda: applied() >= events,
            what=f"{events} events applied",
            timeout=max(120, events / 50),
            process=process,
            log_path=log,
            interval=0.005,
        )
        done = time.monotonic()
    return Throughput(events, first - started, done - started)


def measure_throughput(args: argparse.Namespace, redis_url: str, directory: Path) -> None:
    """Alternate the events worker and the bare actor, ``args.rounds`` times each."""
    client = redis.Redis.from_url(redis_url)
    runs: dict[str, list[Throughput]] = {WORKER: [], BARE: []}
    try:
        for round_number in range(1, args.rounds + 1):
            for label, run in ((WORKER, _worker_run), (BARE, _bare_run)):
                client.flushdb()
                runs[label].append(run(client, redis_url, args, directory))
                print(
                    f"round {round_number}  {_throughput_line(label, runs[label][-1])}", flush=True
                )
    finally:
        client.close()
    print(_throughput_summary(runs, args))


def _worker_run(
    client: redis.Redis, redis_url: str, args: argparse.Namespace, directory: Path
) -> Throughput:
    sessions = active_sessions(client, redis_url, args.sessions)
    asyncio.run(_ingest(redis_url, stored_events(sessions, args.events)))
    hold_scheduler(client)
    env = service_env(redis_url, "http://127.0.0.1:9", args.log_level)
    log = directory / "worker.log"
    applied = lambda: _count(client, Keys.event_stats())  # noqa: E731
    return timed(worker_command(args.threads), env, log, applied, args.events)


def _bare_run(
    client: redis.Redis, redis_url: str, args: argparse.Namespace, directory: Path
) -> Throughput:
    queue = Queue(client)
    for index in range(args.events):
        queue.enqueue(bare_actor.JOB.message(bare_actor.Item(f"item-{index}")))
    command = [
        sys.executable, "-m", "dramatiq", "tests.benchmarks.bare_actor:setup",
        "tests.benchmarks.bare_actor", "--processes", "1", "--threads", str(args.threads),
    ]  # fmt: skip
    log = directory / "bare.log"
    applied = lambda: _count(client, bare_actor.STATS_KEY)  # noqa: E731
    return timed(command, {"REDIS_URL": redis_url}, log, applied, args.events)


def _count(client: redis.Redis, stats_key: str) -> int:
    return int(client.hget(stats_key, "applied") or 0)


def _throughput_line(label: str, run: Throughput, steady_rate: float | None = None) -> str:
    steady = run.steady_rate if steady_rate is None else steady_rate
    return f"{label:30}{steady:8.0f}{run.rate:10.0f}{run.startup_s:10.2f}{run.total_s:9.2f}"


def _throughput_summary(runs: dict[str, list[Throughput]], args: argparse.Namespace) -> str:
    medians = {
        label: Throughput(
            args.events,
            statistics.median(r.startup_s for r in rs),
            statistics.median(r.total_s for r in rs),
        )
        for label, rs in runs.items()
    }
    steady = {label: statistics.median(r.steady_rate for r in rs) for label, rs in runs.items()}
    ratio = steady[WORKER] / steady[BARE]
    verdict = "ok" if ratio >= TARGET_RATIO else "BELOW TARGET"
    overall = medians[WORKER].rate / medians[BARE].rate
    return "\n".join(
        [
            f"\n{args.events} events, 1 process x {args.threads} threads, "
            f"worker LOG_LEVEL={args.log_level}, medians of {args.rounds} rounds, {load()}",
            f"{'':30}{'ev/s':>8}{'ev/s all':>10}{'start s':>10}{'total s':>9}",
            *(_throughput_line(label, run, steady[label]) for label, run in medians.items()),
            f"{'ratio (ev/s)':30}{ratio:8.2f}  (target >= {TARGET_RATIO:.2f}: {verdict})",
            f"{'ratio (ev/s all)':30}{overall:8.2f}",
        ]
    )


@dataclass
class Probe:
    """When each (session id, call_count) was sent and when the counters showed it; the
    warm-up's callbacks are in ``warmup``, and not counted."""

    sent: dict[tuple[str, int], float]
    answered: dict[tuple[str, int], float]
    shown: dict[tuple[str, int], float]
    warmup: set[tuple[str, int]]
    failures: int = 0
    lag_max: float = 0.0

    def latencies(self) -> list[float]:
        """Sent to shown, in ms, of every measured callback that showed."""
        return [
            (self.shown[k] - sent) * 1000
            for k, sent in self.sent.items()
            if k in self.shown and k not in self.warmup
        ]

    def answers(self) -> list[float]:
        """Sent to answered, in ms, of every measured callback answered."""
        return [
            (self.answered[k] - sent) * 1000
            for k, sent in self.sent.items()
            if k in self.answered and k not in self.warmup
        ]

    @property
    def missing(self) -> int:
        return len(self.sent) - len(self.shown)


async def probe(
    url: str, redis_url: str, sessions: list[tuple[str, str]], args: argparse.Namespace
) -> Probe:
    """Post the callbacks on schedule while watching the counters; wait up to 10 s for the
    last ones to show."""
    plan = _plan(url, sessions, args)
    warm = int(args.rate * args.warmup)
    result = Probe({}, {}, {}, {key for key, _, _ in plan[:warm]})
    client = redis.asyncio.Redis.from_url(redis_url)
    async with (
        client.pubsub() as pubsub,
        httpx2.AsyncClient(limits=httpx2.Limits(max_connections=200), timeout=30) as http,
    ):
        await pubsub.subscribe(CHANNEL)
        # What this process allocates while it measures is garbage at the end; a full
        # collection meanwhile would pause the watcher and be counted against the service.
        gc.collect()
        gc.freeze()
        gc.disable()
        stop = asyncio.Event()
        watcher = asyncio.create_task(_watch(pubsub, AsyncSessions(client), result, stop))
        loop = asyncio.get_running_loop()
        start = loop.time() + 0.1
        posts = []
        for index, (key, body, headers) in enumerate(plan):
            due = start + index / args.rate
            await asyncio.sleep(max(0.0, due - loop.time()))
            result.lag_max = max(result.lag_max, loop.time() - due)
            posts.append(asyncio.create_task(_post(http, url, key, body, headers, result)))
        await asyncio.gather(*posts)
        deadline = loop.time() + 10
        while len(result.shown) < len(plan) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        # Told to stop rather than cancelled: a cancellation that lands inside the
        # pubsub's read can be swallowed, and the benchmark then waits forever.
        stop.set()
        await watcher
        gc.enable()
        gc.unfreeze()
    await client.aclose()
    return result


def _plan(
    url: str, sessions: list[tuple[str, str]], args: argparse.Namespace
) -> list[tuple[tuple[str, int], bytes, dict[str, str]]]:
    """Every callback signed up front: ((session id, its call_count once applied), form
    body, headers). Round-robin over the sessions, each one's SequenceNumber rising; the
    warm-up's callbacks come first."""
    plan = []
    for index in range(int(args.rate * (args.warmup + args.duration))):
        session_id, vts_uuid = sessions[index % len(sessions)]
        sequence = index // len(sessions) + 1
        params = callback(HANGUPS[sequence % 2], vts_uuid, sequence)
        headers = signature_headers(url, params)
        headers["content-type"] = "application/x-www-form-urlencoded"
        plan.append(((session_id, sequence), urlencode(params).encode(), headers))
    return plan


async def _post(
    http: httpx2.AsyncClient,
    url: str,
    key: tuple[str, int],
    body: bytes,
    headers: dict[str, str],
    result: Probe,
) -> None:
    loop = asyncio.get_running_loop()
    result.sent[key] = loop.time()
    try:
        response = await http.post(url, content=body, headers=headers)
    except httpx2.HTTPError:
        result.failures += 1
        return
    result.answered[key] = loop.time()
    if response.status_code != 200:
        result.failures += 1


async def _watch(
    pubsub: redis.asyncio.client.PubSub, store: AsyncSessions, result: Probe, stop: asyncio.Event
) -> None:
    shown: dict[str, int] = {}
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if message is None or message["type"] != "message":
            continue
        session_id = message["data"].decode()
        session = await store.get_session(session_id)
        if session is None:
            continue
        moment = loop.time()
        for count in range(shown.get(session_id, 0) + 1, session.call_count + 1):
            result.shown[(session_id, count)] = moment
        shown[session_id] = max(shown.get(session_id, 0), session.call_count)


def measure_latency(args: argparse.Namespace, redis_url: str, directory: Path) -> bool:
    """Print the latency of each round and their medians; False if any callback failed
    or never showed."""
    results = []
    print(f"\ncallback -> counter (p50 to max), HTTP answer, sender lag\n{LATENCY_HEADER}")
    for round_number in range(1, args.latency_rounds + 1):
        result = _latency_round(args, redis_url, directory)
        results.append(result)
        print(_latency_line(f"round {round_number}", result), flush=True)
    print(_latency_summary(results, args))
    return not any(r.failures or r.missing for r in results)


def _latency_round(args: argparse.Namespace, redis_url: str, directory: Path) -> Probe:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    sessions = active_sessions(client, redis_url, args.latency_sessions)
    hold_scheduler(client)
    client.close()
    extra = {
        "VTS_AUTH_TOKEN": AUTH_TOKEN,
        "WEBHOOK_SIGNATURE": "enforce",
        "LOG_LEVEL": args.latency_log_level,
        "METRICS_PORT": str(free_port()),
    }
    system = System(redis_url, "http://127.0.0.1:9", directory, extra_env=extra).start()
    try:
        url = f"http://127.0.0.1:{system.port}{CALLBACK_PATH}"
        return asyncio.run(probe(url, redis_url, sessions, args))
    finally:
        system.stop()


@dataclass(frozen=True)
class LatencyFigures:
    p50: float
    p95: float
    p99: float
    max: float
    answer_p50: float
    answer_p99: float
    lag_max_ms: float

    @classmethod
    def of(cls, result: Probe) -> LatencyFigures:
        p50, p95, p99 = percentiles(result.latencies(), 50, 95, 99)
        a50, a99 = percentiles(result.answers(), 50, 99)
        return cls(p50, p95, p99, max(result.latencies()), a50, a99, result.lag_max * 1000)


def _figures_line(label: str, f: LatencyFigures) -> str:
    return (
        f"{label:12}{f.p50:8.1f}{f.p95:8.1f}{f.p99:8.1f}{f.max:8.1f}"
        f"{f.answer_p50:10.1f}{f.answer_p99:8.1f}{f.lag_max_ms:10.1f}"
    )


def _latency_line(label: str, result: Probe) -> str:
    line = _figures_line(label, LatencyFigures.of(result))
    if result.failures or result.missing:
        line += f"  non-200: {result.failures}, not shown within 10 s: {result.missing}"
    return line


def _latency_summary(results: list[Probe], args: argparse.Namespace) -> str:
    rounds = [LatencyFigures.of(r) for r in results]
    medians = LatencyFigures(
        *(
            statistics.median(getattr(f, field.name) for f in rounds)
            for field in fields(LatencyFigures)
        )
    )
    verdict = "ok" if medians.p99 <= TARGET_P99_MS else "ABOVE TARGET"
    measured = len(results[0].sent) - len(results[0].warmup)
    return "\n".join(
        [
            f"\n{measured} leg-end callbacks at {args.rate:g}/s for {args.duration:g} s "
            f"(after {args.warmup:g} s of warm-up) over {args.latency_sessions} sessions; "
            f"Procfile web + worker, LOG_LEVEL={args.latency_log_level}; medians of "
            f"{len(results)} rounds, {load()}",
            LATENCY_HEADER,
            _figures_line("median", medians),
            f"callback -> counter p99 {medians.p99:.1f} ms "
            f"(target p99 <= {TARGET_P99_MS:g}: {verdict})",
        ]
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--part", choices=["both", "throughput", "latency"], default="both")
    parser.add_argument("--events", type=int, default=20_000, help="events to apply per run")
    parser.add_argument("--sessions", type=int, default=2_000, help="sessions they are for")
    parser.add_argument("--threads", type=int, default=8, help="worker threads")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each worker")
    parser.add_argument("--log-level", default="INFO", help="the events worker's LOG_LEVEL")
    parser.add_argument("--rate", type=float, default=500.0, help="callbacks per second")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of callbacks")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds not counted")
    parser.add_argument("--latency-sessions", type=int, default=200)
    parser.add_argument("--latency-rounds", type=int, default=3, help="runs of the system")
    parser.add_argument("--latency-log-level", default="INFO", help="LOG_LEVEL of web and worker")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with TemporaryDirectory(prefix="bench-events-") as tmp, ExitStack() as stack:
        directory = Path(tmp)
        redis_url = stack.enter_context(bench_redis(directory))
        if args.part in ("both", "throughput"):
            measure_throughput(args, redis_url, directory)
        if args.part in ("both", "latency") and not measure_latency(args, redis_url, directory):
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
