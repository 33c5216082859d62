"""Real HTTP servers on loopback for tests: an ASGI app served by uvicorn in a thread."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from typing import Any

import uvicorn


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive ports that are free now on every address (a
    worker's metrics take the first free one of a span: the tests expect the first)."""
    while True:
        first = free_port()
        if first + count > 65536:
            continue
        with ExitStack() as stack:
            try:
                for port in range(first, first + count):
                    stack.enter_context(socket.socket()).bind(("0.0.0.0", port))
            except OSError:
                continue
            return first


class _Server(uvicorn.Server):
    """uvicorn's server, but one that stops as soon as it is told to. uvicorn looks at
    ``should_exit`` every 0.1 s and then sleeps 0.1 s more before it shuts down: a fifth
    of a second for every server of every test, minutes over the suite."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        await super().startup(sockets)

    def stop(self) -> None:
        """Thread-safe: ask the server to shut down now."""
        self.should_exit = True
        self._loop.call_soon_threadsafe(self._stopping.set)

    async def main_loop(self) -> None:
        counter = 0
        while not await self.on_tick(counter):  # on_tick keeps the Date header current
            counter += 1
            with suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=0.1)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """As uvicorn's: stop listening, let requests in flight finish, close every
        connection, then the app's lifespan; without uvicorn's fixed sleeps."""
        for server in self.servers:
            server.close()
        while self.server_state.connections or self.server_state.tasks:
            for connection in list(self.server_state.connections):
                connection.shutdown()  # closes it when idle, else after its response
            await asyncio.sleep(0.005)
        for server in self.servers:
            await server.wait_closed()
        await self.lifespan.shutdown()


@contextmanager
def serve(app: Any, *, port: int | None = None, timeout: float = 10.0) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 until the block ends; yield its base URL."""
    port = port or free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="on"
    )
    server = _Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"server on port {port} did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        thread.join(timeout)
