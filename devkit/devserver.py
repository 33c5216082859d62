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

from devkit.embedded_redis import EmbeddedRedis
from service.settings import environment

STATE_DIR = Path(".dev")


class Unavailable(Exception):
    """A port dev needs is taken, or a process it started did not come up."""


def _wait_http(url: str, processes: list[subprocess.Popen[bytes]], timeout: float = 60.0) -> None:
    """Wait until ``url`` answers, failing as soon as one of ``processes`` has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _check_alive(processes)
        with contextlib.suppress(httpx2.HTTPError):
            if httpx2.get(url, timeout=1.0).status_code < 500:
                return
        time.sleep(0.1)
    raise Unavailable(f"{url} did not answer within {timeout:.0f} s")


def _check_alive(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is not None:
            command = process.args[3]  # type: ignore[index]  # python -m service COMMAND
            raise Unavailable(f"masking {command!s} exited (code {process.returncode})")


def confirm_own_web(env: dict[str, str]) -> None:
    """Raise Unavailable unless the web on ``PORT`` is ours. Another server can take the
    port between the check that it is free and our web binding it (our web then exits),
    and answer the readiness probe in its place; only our web knows our API key."""
    port = env["PORT"]
    headers = {"authorization": f"Bearer {api_key(env)}"}
    try:
        answer = httpx2.get(f"http://127.0.0.1:{port}/v1/sessions?limit=1", headers=headers)
    except httpx2.HTTPError as exc:
        raise Unavailable(f"PORT: port {port} stopped answering ({type(exc).__name__})") from None
    if answer.status_code in (401, 403, 404):
        raise Unavailable(
            f"PORT: port {port} is not free (another server took it, and refused our API key "
            f"with {answer.status_code})"
        )


def api_key(env: dict[str, str]) -> str:
    """The first key of ``API_KEYS`` (``key`` or ``name:key``, comma separated)."""
    return env["API_KEYS"].split(",")[0].rpartition(":")[2]


def _check_free(variable: str, port: int) -> None:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise Unavailable(f"{variable}: port {port} is not free ({exc.strerror})") from None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _masking(*args: str) -> list[str]:
    return [sys.executable, "-m", "service", *args]


def sandbox_command(port: int, auth_id: str, auth_token: str) -> list[str]:
    """The sandbox's command line. Values go with "=": a random token may start with "-",
    which argparse would take for an option."""
    return _masking(
        "sandbox", "--port", str(port), f"--auth-id={auth_id}", f"--auth-token={auth_token}"
    )


def run(*, port: int | None, sandbox_port: int) -> int:
    """Start everything, print where it listens, supervise until Ctrl-C; the exit code."""
    env = environment()
    env["PORT"] = str(port or int(env.get("PORT") or 8000))
    env.setdefault("METRICS_PORT", str(_free_port()))
    env.setdefault("ADMIN_PORT", str(_free_port()))
    processes: list[subprocess.Popen[bytes]] = []
    redis_server: EmbeddedRedis | None = None
    try:
        _check_free("PORT", int(env["PORT"]))
        _check_free("METRICS_PORT", int(env["METRICS_PORT"]))
        _check_free("ADMIN_PORT", int(env["ADMIN_PORT"]))
        if not env.get("REDIS_URL"):
            redis_server = EmbeddedRedis(STATE_DIR / "redis", persist=True).start()
            env["REDIS_URL"] = redis_server.url
        sandboxed = not env.get("VTS_AUTH_ID")
        if sandboxed:
            _check_free("--sandbox-port", sandbox_port)
            env |= _sandbox_env(sandbox_port)
            command = sandbox_command(sandbox_port, env["VTS_AUTH_ID"], env["VTS_AUTH_TOKEN"])
            processes.append(subprocess.Popen(command, env=env))
            _wait_http(env["VTS_BASE_URL"] + "/", processes)
        env.setdefault("API_KEYS", "dev_" + secrets.token_urlsafe(24))
        env.setdefault("PUBLIC_BASE_URL", f"http://127.0.0.1:{env['PORT']}")
        env.setdefault("LOG_FORMAT", "console")
        env.setdefault("RECORDINGS_DIR", str(STATE_DIR / "recordings"))
        processes.append(subprocess.Popen(_masking("web", "--host", "127.0.0.1"), env=env))
        processes.append(subprocess.Popen(_masking("worker", "--processes", "1"), env=env))
        _wait_http(f"http://127.0.0.1:{env['PORT']}/readyz", processes)
        confirm_own_web(env)
        _wait_http(f"http://127.0.0.1:{env['METRICS_PORT']}/metrics", processes)
        _check_alive(processes)
        sys.stdout.write(_banner(env, sandboxed))
        sys.stdout.flush()
        return _supervise(processes)
    except Unavailable as exc:
        sys.stderr.write(f"masking dev: {exc}\n")
        return 2
    finally:
        _stop(processes)
        if redis_server is not None:
            redis_server.stop()


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(35)
        except subprocess.TimeoutExpired:
            process.kill()


def _sandbox_env(port: int) -> dict[str, str]:
    return {
        "VTS_BASE_URL": f"http://127.0.0.1:{port}",
        "VTS_AUTH_ID": "MADEVSANDBOX0000001",
        "VTS_AUTH_TOKEN": secrets.token_urlsafe(24),
        # The sandbox serves recordings from loopback over plain http.
        "EGRESS_ALLOW_HTTP": "true",
        "EGRESS_ALLOW_PRIVATE": "true",
    }


def _curl(url: str, *options: str, body: str | None = None) -> str:
    words = ["curl -s", *options]
    if body is not None:
        words += ["-H", "Content-Type: application/json", "-d", body]
    return " ".join([words[0], *(shlex.quote(w) for w in words[1:]), shlex.quote(url)])


def _banner(env: dict[str, str], sandboxed: bool) -> str:
    """Where everything listens, and how to create a session (and simulate a call)."""
    api = f"http://127.0.0.1:{env['PORT']}"
    key = api_key(env)
    bearer = f"Authorization: Bearer {key}"
    parties = '{"first_party": "+14155552671", "second_party": "+14155552672"}'
    lines = [
        "",
        "The masking service is running.",
        f"  API:             {api}   (OpenAPI: {api}/openapi.json)",
        f"  API key:         {key}",
        f"  Web metrics:     http://127.0.0.1:{env['ADMIN_PORT']}/metrics"
        f"   (and /metrics/cluster, /openapi-internal.json)",
        f"  Worker metrics:  http://127.0.0.1:{env['METRICS_PORT']}/metrics",
        f"  Redis:           {env['REDIS_URL']}",
    ]
    if sandboxed:
        sandbox = env["VTS_BASE_URL"]
        account = f"{env['VTS_AUTH_ID']}:{env['VTS_AUTH_TOKEN']}"
        lines += [
            f"  VTS sandbox:     {sandbox}   (auth id {env['VTS_AUTH_ID']},"
            f" token {env['VTS_AUTH_TOKEN']})",
        ]
    lines += [
        "",
        "Create a session (answers once VTS has made it; note its id and vts_session_uuid):",
        "  " + _curl(f"{api}/v1/sessions", "-H", bearer, "-H", "Prefer: wait=10", body=parties),
    ]
    if sandboxed:
        calls = f"{sandbox}/_sandbox/sessions/VTS_SESSION_UUID/calls"
        call = '{"caller": "first", "duration": 42}'
        lines += [
            "Simulate a call between the parties (the sandbox sends VTS's callbacks):",
            "  " + _curl(calls, "-u", account, "-X", "POST", body=call),
        ]
    lines += [
        "See the session's counters:",
        "  " + _curl(f"{api}/v1/sessions/SESSION_ID", "-H", bearer),
        "",
        "Ctrl-C stops everything.",
        "",
    ]
    return "\n".join(lines) + "\n"


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
