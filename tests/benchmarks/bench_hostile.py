"""What hostile requests cost the web's event loop: CPU time per request, in process.

Each request is handed to the real app (``create_app``) as ASGI, with logging on (JSON at
INFO, to a throw-away stream, so every line is built and masked) and the process CPU time
around the call is taken: that is the time the event loop is held. No Redis is needed:
every request here is refused before the app reads or writes anything.

    .venv/bin/python -m tests.benchmarks.bench_hostile [--runs 20]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import time
from collections.abc import Callable
from typing import Any

from service import logs
from service.web.app import create_app
from tests.conftest import make_settings

CRAFTED_PATH = ("/+1" + "1234567890123456789" + "x") * (64 * 1024 // 23)
FORM_11K_FIELDS = b"&".join([b"a=1"] * 11_000)
DEEP_JSON = b"[" * 20_000


def _scope(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "headers": headers, "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 8000), "state": {},
    }  # fmt: skip


def _request(method: str, path: str, body: bytes = b"", media: bytes = b"") -> Callable[..., Any]:
    headers = [(b"host", b"127.0.0.1"), (b"content-length", str(len(body)).encode())]
    if media:
        headers.append((b"content-type", media))

    async def call(app: Any) -> int:
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(_scope(method, path, headers), receive, send)
        return int(sent[0]["status"])

    return call


CASES = {
    "GET /healthz (baseline)": _request("GET", "/healthz"),
    "GET crafted 64 KB path": _request("GET", CRAFTED_PATH),
    "POST webhook, form of 11k fields": _request(
        "POST", "/webhooks/vts/session", FORM_11K_FIELDS, b"application/x-www-form-urlencoded"
    ),
    "POST webhook, 20k nested [": _request(
        "POST", "/webhooks/vts/session", DEEP_JSON, b"application/json"
    ),
}


async def _measure(app: Any, call: Callable[..., Any], runs: int) -> tuple[int, float]:
    status, times = 0, []
    for _ in range(runs):
        started = time.process_time()
        status = await call(app)
        times.append(time.process_time() - started)
    return status, statistics.median(times) * 1000


async def main(runs: int) -> None:
    logs.configure(fmt="json", level="INFO", stream=io.StringIO())
    settings = make_settings("redis://127.0.0.1:1/0", "http://127.0.0.1:1")
    app = create_app(settings)
    app.state.settings = settings  # what the lifespan would set; nothing else is needed
    for name, call in CASES.items():
        status, millis = await _measure(app, call, runs)
        print(f"{name:<36} {status}  median CPU {millis:8.2f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    asyncio.run(main(parser.parse_args().runs))
