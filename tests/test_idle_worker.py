"""An idle ``masking worker`` leaves Redis alone: a few writes a second (heartbeats, the
scheduler's lead), not one per queue per poll, which every replica and the AOF pay for."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
import redis

from devkit.embedded_redis import EmbeddedRedis
from service.store import DRAMATIQ_NAMESPACE
from tests.conftest import API_KEY, AUTH_ID, AUTH_TOKEN, wait_until
from tests.servers import free_ports
from tests.system import procfile

pytestmark = pytest.mark.slow

# Before: ~210 write commands/s per process (a heartbeat ZADD and an LPOP per poll of each
# queue); after: under 1 a second. The bound sits more than 10x from both.
MAX_WRITES_PER_SECOND_PER_PROCESS = 10
PROCESSES = 2
# Long enough for several heartbeats and lead renewals of each process.
WINDOW_SECONDS = 6


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[redis.Redis]:
    """A Redis of this test alone: INFO commandstats counts every client of the server."""
    with EmbeddedRedis(tmp_path / "redis") as server:
        client = redis.Redis.from_url(server.url)
        yield client
        client.close()


def _flagged_writes(client: redis.Redis) -> set[str]:
    """The names of the commands Redis flags as writes."""
    commands: dict[str, dict[str, list[str]]] = client.command()
    return {name.lower() for name, info in commands.items() if "write" in info["flags"]}


def _writes(client: redis.Redis, writes: set[str]) -> int:
    stats = client.info("commandstats")
    return sum(
        int(value["calls"])
        for key, value in stats.items()
        if key.removeprefix("cmdstat_").split("|")[0] in writes
    )


def _heartbeats(client: redis.Redis) -> list[float]:
    """The time (ms) of each worker process's last heartbeat."""
    key = f"{DRAMATIQ_NAMESPACE}:__heartbeats__"
    beats = cast(list[tuple[bytes, float]], client.zrange(key, 0, -1, withscores=True))
    return [score for _, score in beats]


def test_an_idle_worker_writes_little(private_redis: redis.Redis, tmp_path: Path) -> None:
    """An idle ``masking worker`` (the Procfile's) keeps its write commands to Redis under
    a few per second per process, while still heartbeating."""
    url = private_redis.get_connection_kwargs()["path"]
    env = {
        **os.environ,
        "REDIS_URL": f"unix://{url}",
        "VTS_BASE_URL": "http://127.0.0.1:9",
        "VTS_AUTH_ID": AUTH_ID,
        "VTS_AUTH_TOKEN": AUTH_TOKEN,
        "PUBLIC_BASE_URL": "http://127.0.0.1:9",
        "API_KEYS": API_KEY,
        "METRICS_PORT": str(free_ports(10)),
        "LOG_FORMAT": "json",
        "TMPDIR": str(tmp_path),
    }
    command = procfile()["worker"]
    executable = Path(sys.executable).parent / command[0]
    with (tmp_path / "worker.log").open("wb") as log:
        worker = subprocess.Popen(
            [str(executable), *command[1:]],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until(lambda: len(_heartbeats(private_redis)) == PROCESSES, timeout=60)
        writes = _flagged_writes(private_redis)
        private_redis.config_resetstat()
        started = time.time()
        # Every process has heartbeaten again well inside the window: it is alive, not mute.
        wait_until(
            lambda: all(
                score / 1000 > started + WINDOW_SECONDS for score in _heartbeats(private_redis)
            ),
            timeout=60,
        )
        seconds = time.time() - started
        count = _writes(private_redis, writes)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(60)
    rate = count / seconds / PROCESSES
    print(f"idle worker: {count} writes in {seconds:.1f} s, {rate:.2f}/s per process")
    assert rate < MAX_WRITES_PER_SECOND_PER_PROCESS, (count, seconds)
