"""Recordings that arrive while their storage is away, and how soon they are stored after.

    .venv/bin/python -m tests.benchmarks.bench_storage_outage [--backend local|s3]
        [--recordings 20] [--outage 60]

Runs the real web app, a real dramatiq worker (threads of this process) and the VTS
sandbox on loopback, with a private redis-server. ``local``: recordings on a tmpfs of
their own, remounted read-only for the outage (needs root). ``s3``: moto's S3 server
behind a TCP switch that refuses connections for the outage (production's boto3 client,
with its own retries). ``--recordings`` recorded calls are placed as the outage starts;
when it ends, every recording is waited for and checked through the API (stored, size and
sha256 equal to the sandbox's), with the time from storage's return to each recording's
being seen stored (polled through the API every 0.2 s or so), the storage failures counted and the
dead letters.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import dramatiq
import httpx2
import redis
from prometheus_client import REGISTRY

from devkit.embedded_redis import EmbeddedRedis
from devkit.sandbox.server import SandboxConfig, create_sandbox_app, number_range
from service.messages import QUEUES
from service.settings import AppKey, S3Location, Secret, Settings
from service.storage import s3_client
from service.store import DeadLetters
from tests.servers import free_port, serve

AUTH_ID, AUTH_TOKEN = "MABENCHMARK0000001", "bench-token"
API_KEY = "bench-key-" + "0" * 16


def _wait(condition: Callable[[], Any], what: str, timeout: float = 900) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up waiting for {what}")
        time.sleep(0.2)
    return value


@contextmanager
def _tmpfs(path: Path) -> Iterator[tuple[Callable[[], None], Callable[[], None]]]:
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(path)], check=True)

    def remount(mode: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True)

    try:
        yield (lambda: remount("ro")), (lambda: remount("rw"))
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


@contextmanager
def _s3(directory: Path) -> Iterator[tuple[S3Location, Callable[[], None], Callable[[], None]]]:
    from tests.test_s3_outages import Switch

    port = free_port()
    moto = Path(sys.executable).parent / "moto_server"
    with (directory / "moto.log").open("wb") as out:
        server = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=out,
                                  stderr=subprocess.STDOUT)  # fmt: skip
    try:
        _wait(lambda: _answers(f"http://127.0.0.1:{port}"), "moto", timeout=30)
        switch = Switch(("127.0.0.1", port))
        where = S3Location(bucket="recordings", prefix="rec",
                           endpoint_url=f"http://127.0.0.1:{switch.port}", region="us-east-1",
                           access_key_id="bench", secret_access_key=Secret("bench"))  # fmt: skip
        s3_client(where).create_bucket(Bucket=where.bucket)
        yield where, switch.off, switch.on
        switch.off()
    finally:
        server.terminate()
        server.wait(10)


def _answers(url: str) -> bool:
    try:
        httpx2.get(url + "/moto-api/", timeout=2)
    except httpx2.TransportError:
        return False
    return True


@contextmanager
def _system(directory: Path, recordings: int, s3: S3Location | None) -> Iterator[tuple[str, str]]:
    server = EmbeddedRedis(directory / "redis").start()
    client = redis.Redis.from_url(server.url)
    pool = number_range(min(10_000, recordings + 50))
    sandbox_app = create_sandbox_app(SandboxConfig(AUTH_ID, AUTH_TOKEN, number_pool=pool))
    web_port = free_port()
    from service import logs

    logs.configure(fmt="json", level="ERROR")
    try:
        with serve(sandbox_app) as sandbox_url:
            settings = Settings(
                redis_url=server.url,
                vts_base_url=sandbox_url,
                vts_auth_id=AUTH_ID,
                vts_auth_token=Secret(AUTH_TOKEN),
                public_base_url=f"http://127.0.0.1:{web_port}",
                api_keys=(AppKey("bench", Secret(API_KEY)),),
                recordings_dir=directory / "tmpfs" / "recordings",
                recordings_s3=s3,
                egress_allow_http=True,
                egress_allow_private=True,
                log_level="ERROR",
            )
            from service.web.app import create_app
            from workers import boot
            from workers.broker import create_broker

            broker = create_broker(client, boot.build(settings, client))
            dramatiq.set_broker(broker)
            import workers.actors  # noqa: F401  (declares the actors on this broker)

            worker = dramatiq.Worker(broker, worker_threads=8, worker_timeout=100)
            worker.start()
            try:
                with serve(create_app(settings), port=web_port) as web_url:
                    yield web_url, sandbox_url
            finally:
                worker.stop()
                print(f"dead letters: {_dead_letters(client)}")
    finally:
        client.close()
        server.stop()


def _dead_letters(client: redis.Redis) -> int:
    return sum(len(DeadLetters(client).dead_letters(queue)) for queue in QUEUES)


def _recorded_call(api: httpx2.Client, sandbox: httpx2.Client, n: int) -> tuple[str, str]:
    body = {"first_party": f"+1415{2000000 + n:07d}", "second_party": f"+1415{3000000 + n:07d}",
            "record": True, "record_file_format": "wav"}  # fmt: skip
    session = api.post("/v1/sessions", json=body, headers={"Prefer": "wait=30"}).json()
    placed = sandbox.post(f"/_sandbox/sessions/{session['vts_session_uuid']}/calls",
                          json={"caller": "first", "duration": 20})  # fmt: skip
    placed.raise_for_status()
    return session["id"], placed.json()["recording_uuid"]


def _failures() -> float:
    return sum(
        sample.value
        for family in REGISTRY.collect()
        if family.name == "masking_storage_failures"
        for sample in family.samples
        if sample.name.endswith("_total")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("local", "s3"), default="local")
    parser.add_argument("--recordings", type=int, default=20)
    parser.add_argument("--outage", type=float, default=60.0, help="seconds")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        directory = Path(tmp)
        s3 = None
        if args.backend == "s3":
            s3, down, up = stack.enter_context(_s3(directory))
        else:
            down, up = stack.enter_context(_tmpfs(directory / "tmpfs"))
        web, vts = stack.enter_context(_system(directory, args.recordings, s3))
        api = httpx2.Client(base_url=web, headers={"Authorization": f"Bearer {API_KEY}"},
                            timeout=60)  # fmt: skip
        sandbox = httpx2.Client(base_url=vts, auth=(AUTH_ID, AUTH_TOKEN), timeout=60)
        down()
        started = time.monotonic()
        with ThreadPoolExecutor(8) as threads:
            calls = list(threads.map(lambda n: _recorded_call(api, sandbox, n),
                                     range(args.recordings)))  # fmt: skip
        placed = time.monotonic() - started
        time.sleep(max(0.0, args.outage - placed))  # the outage: nothing to wait on
        pending = {status for s, _ in calls for status in _status(api, s)}
        up()
        back = time.monotonic()
        print(f"{args.backend}: {args.recordings} recorded calls placed in {placed:.1f} s of a "
              f"{time.monotonic() - started:.1f} s outage; then {sorted(pending)}; "
              f"storage failures counted {_failures():.0f}")  # fmt: skip
        seen: dict[str, float] = {}

        def stored() -> bool:
            for session_id, _ in calls:
                if session_id not in seen and _status(api, session_id) == ["stored"]:
                    seen[session_id] = time.monotonic() - back
            return len(seen) == len(calls)

        _wait(stored, "the recordings")
        delays, intact = list(seen.values()), 0
        for session_id, uuid in calls:
            recording = api.get(f"/v1/sessions/{session_id}").json()["recordings"][0]
            truth = sandbox.get(f"/_sandbox/recordings/{uuid}").json()
            intact += (recording["sha256"], recording["size"]) == (truth["sha256"], truth["size"])
        print(f"stored {len(delays)}/{args.recordings}, intact (size+sha256) {intact}; from "
              f"storage's return to stored: min {min(delays):.1f} s, median "
              f"{statistics.median(delays):.1f} s, max {max(delays):.1f} s")  # fmt: skip


def _status(api: httpx2.Client, session_id: str) -> list[str]:
    recordings = api.get(f"/v1/sessions/{session_id}").json()["recordings"]
    return [r["status"] for r in recordings] or ["none yet"]


if __name__ == "__main__":
    main()
