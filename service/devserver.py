"""``masking dev``: the whole system on one machine, with nothing installed beforehand.

Starts an embedded Redis when ``REDIS_URL`` is unset and the VTS sandbox when no VTS
credentials are set, then the ``web`` and ``worker`` processes exactly as the Procfile
does, and prints how to call the API. Ctrl-C stops everything.
"""

from __future__ import annotations

import contextlib
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

import httpx2

from service.embedded_redis import EmbeddedRedis
from service.settings import environment

STATE_DIR = Path(".dev")


def _wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx2.HTTPError):
            if httpx2.get(url, timeout=1.0).status_code < 500:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _masking(*args: str) -> list[str]:
    return [sys.executable, "-m", "service", *args]


def run(*, port: int, sandbox_port: int) -> int:
    env = environment()
    processes: list[subprocess.Popen[bytes]] = []
    redis_server: EmbeddedRedis | None = None
    try:
        if not env.get("REDIS_URL"):
            redis_server = EmbeddedRedis(STATE_DIR / "redis", persist=True).start()
            env["REDIS_URL"] = redis_server.url
        if not env.get("VTS_AUTH_ID"):
            env |= _sandbox_env(sandbox_port)
            processes.append(subprocess.Popen(_masking(
                "sandbox", "--port", str(sandbox_port),
                "--auth-id", env["VTS_AUTH_ID"], "--auth-token", env["VTS_AUTH_TOKEN"],
            ), env=env))  # fmt: skip
            _wait_http(env["VTS_BASE_URL"] + "/")
        env.setdefault("API_KEYS", "dev_" + secrets.token_urlsafe(24))
        env.setdefault("PUBLIC_BASE_URL", f"http://127.0.0.1:{port}")
        env.setdefault("LOG_FORMAT", "console")
        env.setdefault("RECORDINGS_DIR", str(STATE_DIR / "recordings"))
        env.setdefault("METRICS_PORT", str(_free_port()))
        env["PORT"] = str(port)
        processes.append(subprocess.Popen(_masking("web", "--host", "127.0.0.1"), env=env))
        processes.append(subprocess.Popen(_masking("worker", "--processes", "1"), env=env))
        _wait_http(f"http://127.0.0.1:{port}/healthz")
        _banner(port, env["API_KEYS"].split(",")[0])
        return _supervise(processes)
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        if redis_server is not None:
            redis_server.stop()


def _sandbox_env(port: int) -> dict[str, str]:
    return {
        "VTS_BASE_URL": f"http://127.0.0.1:{port}",
        "VTS_AUTH_ID": "MADEVSANDBOX0000001",
        "VTS_AUTH_TOKEN": secrets.token_urlsafe(24),
        # The sandbox serves recordings from loopback over plain http.
        "RECORDING_ALLOW_HTTP": "true",
        "RECORDING_ALLOW_PRIVATE": "true",
    }


def _banner(port: int, api_key: str) -> None:
    body = '{"first_party": "+14155552671", "second_party": "+14155552672"}'
    curl = " ".join([
        "curl -s", shlex.quote(f"http://127.0.0.1:{port}/v1/sessions"),
        "-H", shlex.quote(f"Authorization: Bearer {api_key}"),
        "-H", shlex.quote("Content-Type: application/json"),
        "-H", shlex.quote("Prefer: wait=10"),
        "-d", shlex.quote(body),
    ])  # fmt: skip
    sys.stdout.write(
        "\nThe masking service is running.\n"
        f"  API:     http://127.0.0.1:{port}   (OpenAPI at /openapi.json)\n"
        f"  API key: {api_key}\n\n"
        f"Create a session:\n  {curl}\n\nCtrl-C stops everything.\n\n"
    )
    sys.stdout.flush()


def _supervise(processes: list[subprocess.Popen[bytes]]) -> int:
    stop = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not stop:
        for process in processes:
            if process.poll() is not None:
                sys.stderr.write(f"a process exited (code {process.returncode}); stopping\n")
                return 1
        time.sleep(0.2)
    return 0
