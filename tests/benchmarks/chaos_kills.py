"""Black-box: creates while the worker is SIGKILLed again and again, over a slow Redis link.

The whole system runs as real processes (the Procfile's web and worker, the VTS sandbox,
a private Redis); the worker's and the web's Redis link goes through a TCP proxy that adds
latency to every chunk, so that a kill is likely to land between two of a transition's
writes. Sessions are created with a ``callback_url`` on a receiver in this process; the
worker's whole process tree is killed every 1-3 s and started again. At the end every
session must be active with its expiry and reconciliation timers, and the receiver must
have had each ``session.active`` notification (one ``webhook-id`` per session).

    .venv/bin/python -m tests.benchmarks.chaos_kills [--sessions 200] [--latency-ms 15] [--kills 16]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from devkit.embedded_redis import EmbeddedRedis
from service.store.codec import decode_str
from service.store.keys import Keys
from tests.benchmarks.common import running
from tests.conftest import AUTH_ID, AUTH_TOKEN, new_numbers
from tests.servers import free_port, serve
from tests.system import System


class LatencyProxy:
    """Forwards TCP connections on a loopback port to a Unix socket, each chunk held back
    ``latency`` seconds in each direction (in order: a queue per direction)."""

    def __init__(self, socket_path: str, latency: float) -> None:
        self.socket_path = socket_path
        self.latency = latency
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()

    def start(self) -> LatencyProxy:
        threading.Thread(target=self._run, daemon=True).start()
        self._ready.wait(10)
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", self.port)
        )
        self._ready.set()
        self._loop.run_until_complete(server.serve_forever())

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_unix_connection(self.socket_path)
        await asyncio.gather(
            self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer)
        )

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        chunks: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, chunk = await chunks.get()
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                if not chunk:
                    writer.close()
                    return
                writer.write(chunk)
                await writer.drain()

        sender = asyncio.create_task(deliver())
        try:
            while chunk := await reader.read(65536):
                chunks.put_nowait((time.monotonic() + self.latency, chunk))
        except ConnectionError:
            pass
        chunks.put_nowait((time.monotonic() + self.latency, b""))
        try:
            await sender
        except ConnectionError:
            writer.close()


class Receiver:
    """An app's endpoint: counts each webhook-id it is sent."""

    def __init__(self) -> None:
        self.ids: Counter[str] = Counter()

    async def handle(self, request: Request) -> Response:
        self.ids[request.headers["webhook-id"]] += 1
        return Response(status_code=204)


@contextmanager
def sandbox(directory: Path) -> Iterator[str]:
    port = free_port()
    command = [
        str(Path(__file__).resolve().parents[2] / ".venv/bin/masking"), "sandbox",
        "--auth-id", AUTH_ID, "--auth-token", AUTH_TOKEN, "--port", str(port),
        "--pool-size", "5000",
    ]  # fmt: skip
    with running(command, {}, directory / "sandbox.log"):
        yield f"http://127.0.0.1:{port}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--latency-ms", type=float, default=15.0)
    parser.add_argument("--kills", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run(Path(tmp), args.sessions, args.latency_ms / 1000, args.kills)


def run(directory: Path, sessions: int, latency: float, kills: int) -> None:
    receiver = Receiver()
    app = Starlette(routes=[Route("/hook", receiver.handle, methods=["POST"])])
    with (
        EmbeddedRedis(directory / "redis") as server,
        sandbox(directory) as sandbox_url,
        serve(app) as receiver_url,
    ):
        proxy = LatencyProxy(str(server.socket), latency).start()
        env = {"EGRESS_ALLOW_HTTP": "true", "EGRESS_ALLOW_PRIVATE": "true"}
        system = System(f"redis://127.0.0.1:{proxy.port}/0", sandbox_url, directory, env)
        system.start()
        try:
            report(system, server.url, receiver, sessions, kills, f"{receiver_url}/hook")
        finally:
            system.stop()


def report(
    system: System, redis_url: str, receiver: Receiver, sessions: int, kills: int, hook: str
) -> None:
    ids: list[str] = []

    def create() -> None:
        for _ in range(sessions):
            response = system.create(*new_numbers(), callback_url=hook)
            ids.append(response.json()["id"])

    creator = threading.Thread(target=create)
    creator.start()
    for _ in range(kills):
        time.sleep(random.uniform(1, 3))
        system.kill("worker")
        system.restart("worker")
    creator.join()
    client = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        statuses = Counter(decode_str(client.hget(Keys.session(i), "status") or b"") for i in ids)
        delivered = sum(1 for i in ids if receiver.ids[f"{i}.session.active"])
        if statuses["active"] == len(ids) and delivered == len(ids):
            break
        time.sleep(1)
    live = [i for i in ids if client.hget(Keys.session(i), "status") == b"active"]
    no_expiry = [i for i in live if client.zscore(Keys.schedule(), f"expire:{i}") is None]
    no_reconcile = [i for i in live if client.zscore(Keys.schedule(), f"reconcile:{i}") is None]
    missing = [i for i in ids if not receiver.ids[f"{i}.session.active"]]
    repeated = sum(count - 1 for count in receiver.ids.values())
    vts = len(system.sandbox.get("/_sandbox/sessions").json()["sessions"])
    print(f"sessions created: {len(ids)}, worker kills: {kills}")
    print(f"statuses: {dict(statuses)}")
    print(f"VTS sessions: {vts}")
    print(f"live sessions without an expiry timer: {len(no_expiry)}")
    print(f"live sessions without a reconciliation timer: {len(no_reconcile)}")
    print(f"session.active notifications never received: {len(missing)}")
    print(f"deliveries repeated (same webhook-id again): {repeated}")


if __name__ == "__main__":
    main()
