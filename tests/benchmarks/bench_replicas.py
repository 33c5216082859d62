"""What waiting for a replica (REDIS_MIN_REPLICAS_ACKED=1) costs the store's writes.

    .venv/bin/python -m tests.benchmarks.bench_replicas [--duration 4] [--rounds 3]
                                                        [--writers 32]

A private redis-server primary with one replica on loopback. ``--writers`` tasks share
the web's group commit (``service.store.batching``), each writing a 200-byte hash field
through a script as fast as it is answered, for ``--duration`` seconds, with and without
the batch's WAIT, rounds alternating; then the round trip a worker adds per message
(``wait_for_replicas``: PUBLISH + WAIT) beside a PING's. This measures the store alone:
behind HTTP the web's own work per request is several times a round trip.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from tempfile import TemporaryDirectory

import redis
import redis.asyncio

from devkit.embedded_redis import redis_server_binary
from service.redis_clients import Durability, wait_for_replicas
from service.store.batching import GroupCommit
from tests.servers import free_port


@contextmanager
def primary_and_replica(directory: Path) -> Iterator[int]:
    """A primary and its replica, caught up; yields the primary's port."""
    primary, replica = free_port(), free_port()
    base = [redis_server_binary(), "--bind", "127.0.0.1", "--save", "", "--dir", str(directory)]
    processes = [
        subprocess.Popen([*base, "--port", str(primary)], stdout=subprocess.DEVNULL),
        subprocess.Popen(
            [*base, "--port", str(replica), "--replicaof", "127.0.0.1", str(primary)],
            stdout=subprocess.DEVNULL,
        ),
    ]
    try:
        deadline = time.monotonic() + 30
        while not _linked(replica):
            if time.monotonic() > deadline:
                raise RuntimeError("the replica did not catch up")
            time.sleep(0.05)
        yield primary
    finally:
        for process in processes:
            process.terminate()
            process.wait(10)


def _linked(port: int) -> bool:
    try:
        info = redis.Redis(port=port, socket_timeout=1).info("replication")
    except redis.RedisError:
        return False
    return info.get("master_link_status") == "up"


async def group_commit(port: int, durability: Durability, writers: int, seconds: float) -> float:
    """Writes per second through one GroupCommit."""
    client = redis.asyncio.Redis(port=port, socket_timeout=5)
    script = client.register_script("redis.call('HSET', KEYS[1], 'v', ARGV[1]) return 1")
    await script(keys=["bench:0"], args=["x"])
    group = GroupCommit(client, durability=durability)
    done = 0
    stop = time.monotonic() + seconds

    async def writer(number: int) -> None:
        nonlocal done
        while time.monotonic() < stop:
            await group.call(script, [f"bench:{number}"], ["x" * 200])
            done += 1

    await asyncio.gather(*(writer(n) for n in range(writers)))
    await client.aclose()
    return done / seconds


def round_trip_us(call: Callable[[], object], count: int = 3000) -> float:
    started = time.perf_counter()
    for _ in range(count):
        call()
    return (time.perf_counter() - started) / count * 1e6


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--writers", type=int, default=32, help="concurrent writers")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with TemporaryDirectory() as directory, primary_and_replica(Path(directory)) as port:
        rates: dict[int, list[float]] = {0: [], 1: []}
        for _ in range(args.rounds):
            for replicas, runs in rates.items():
                run = group_commit(port, Durability(replicas), args.writers, args.duration)
                runs.append(asyncio.run(run))
        for replicas, runs in rates.items():
            figures = ", ".join(f"{rate:.0f}" for rate in runs)
            median = statistics.median(runs)
            print(f"group commit, {args.writers} writers, WAIT for {replicas}: "
                  f"{median:.0f} writes/s (median of {figures})")  # fmt: skip
        client = redis.Redis(port=port, socket_timeout=5)
        ping = round_trip_us(client.ping)
        wait = round_trip_us(lambda: wait_for_replicas(client, Durability(1)))
        print(f"a worker's message: PUBLISH + WAIT {wait:.0f} µs, beside a PING {ping:.0f} µs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
