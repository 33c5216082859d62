"""``masking dev``: the whole system on one machine, with nothing installed beforehand.

Starts an embedded Redis when ``REDIS_URL`` is unset and the VTS sandbox when no VTS
credentials are set, then the ``web`` (on loopback) and ``worker`` processes as the
Procfile does, and prints how to call the API. Ctrl-C stops everything.
"""

from __future__ import annotations

import contextlib
import json
import os
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
# The pid of the dev running on STATE_DIR, so that another can tell its Redis from one
# left running.
OWNER_FILE = STATE_DIR / "dev.pid"
# Ctrl-C, a stop from a process manager, and the terminal closing (SIGHUP: the embedded
# Redis ignores it, and would outlive dev) all stop everything.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Unavailable(Exception):
    """A port dev needs is taken, or a process it started did not come up."""


class Stopped(Exception):
    """One of STOP_SIGNALS arrived."""


def _on_stop_signal(signum: int, frame: FrameType | None) -> None:
    _ignore_stop_signals()
    raise Stopped(signal.Signals(signum).name)


def _ignore_stop_signals() -> None:
    # While stopping: a second signal must not cut the stopping short.
    for stop_signal in STOP_SIGNALS:
        signal.signal(stop_signal, signal.SIG_IGN)


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


# The Procfile's web and worker; the web on loopback only, its keys being development ones.
WEB_ARGS = ("web", "--host", "127.0.0.1")
WORKER_ARGS = ("worker", "--processes", "2", "--threads", "8")
# Valid numbers (a US fixed-line-or-mobile range) that the sandbox connects.
EXAMPLE_PARTIES = ("+14155552671", "+14155552672")
OTHER_PARTIES = ("+14155552673", "+14155552674")


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
    for stop_signal in STOP_SIGNALS:
        signal.signal(stop_signal, _on_stop_signal)
    try:
        _check_free("PORT", int(env["PORT"]))
        _check_free("METRICS_PORT", int(env["METRICS_PORT"]))
        _check_free("ADMIN_PORT", int(env["ADMIN_PORT"]))
        if not env.get("REDIS_URL"):
            redis_server = _start_redis()
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
        processes.append(subprocess.Popen(_masking(*WEB_ARGS), env=env))
        processes.append(subprocess.Popen(_masking(*WORKER_ARGS), env=env))
        _wait_http(f"http://127.0.0.1:{env['PORT']}/readyz", processes)
        confirm_own_web(env)
        _wait_http(f"http://127.0.0.1:{env['METRICS_PORT']}/metrics", processes)
        example = example_session(env) if sandboxed else None
        _check_alive(processes)
        sys.stdout.write(_banner(env, example))
        sys.stdout.flush()
        return _supervise(processes)
    except Unavailable as exc:
        sys.stderr.write(f"masking dev: {exc}\n")
        return 2
    except Stopped:
        return 0
    finally:
        _ignore_stop_signals()
        _stop(processes)
        if redis_server is not None:
            redis_server.stop()
            _release_state_dir()


def _start_redis() -> EmbeddedRedis:
    """The embedded Redis on STATE_DIR, after shutting down one left running there by a
    dev that was killed outright (its data is kept: the shutdown syncs the AOF). A Redis
    of a dev still running there is left alone: then this dev stops, saying so."""
    server = EmbeddedRedis(STATE_DIR / "redis", persist=True)
    leftover = server.running_pid()
    if leftover is not None:
        owner = _owner()
        if owner is not None:
            raise Unavailable(
                f"another masking dev (pid {owner}) runs on {STATE_DIR}/: stop it first, "
                "or start this one in another directory"
            )
        server.shut_down_running()
        sys.stderr.write(
            f"masking dev: shut down the Redis left running (pid {leftover}) on "
            f"{server.directory} by an earlier run; its data is kept\n"
        )
    server.start()
    OWNER_FILE.write_text(f"{os.getpid()}\n")
    return server


def _owner() -> int | None:
    """The pid of another dev running on STATE_DIR, if one is."""
    try:
        pid = int(OWNER_FILE.read_text())
    except (OSError, ValueError):
        return None
    if pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, someone else's
    return pid


def _release_state_dir() -> None:
    with contextlib.suppress(OSError, ValueError):
        if int(OWNER_FILE.read_text()) == os.getpid():
            OWNER_FILE.unlink()


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


def example_session(env: dict[str, str]) -> dict[str, str]:
    """A session between EXAMPLE_PARTIES, made through the API once everything runs (so
    the banner's lines name a real one; it also proves the web, worker and sandbox work
    together): its ``id`` and ``vts_session_uuid``."""
    try:
        answer = httpx2.post(
            f"http://127.0.0.1:{env['PORT']}/v1/sessions",
            json=_parties(EXAMPLE_PARTIES),
            headers={"Authorization": f"Bearer {api_key(env)}", "Prefer": "wait=20"},
            timeout=30,
        )
    except httpx2.HTTPError as exc:
        raise Unavailable(f"the example session was not created ({type(exc).__name__})") from None
    session = answer.json()
    if answer.status_code != 201:
        status = session.get("status") or session.get("title")
        raise Unavailable(f"the example session was not created ({answer.status_code}: {status})")
    return {"id": session["id"], "vts_session_uuid": session["vts_session_uuid"]}


def _parties(numbers: tuple[str, str]) -> dict[str, str]:
    return {"first_party": numbers[0], "second_party": numbers[1]}


def _banner(env: dict[str, str], example: dict[str, str] | None) -> str:
    """Where everything listens, and commands to paste: with the sandbox, a call on the
    example session and its counters; a create in every case."""
    api = f"http://127.0.0.1:{env['PORT']}"
    key = api_key(env)
    bearer = f"Authorization: Bearer {key}"
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
    if example is not None:
        lines += _sandbox_lines(env, example, bearer, api)
    create = json.dumps(_parties(OTHER_PARTIES))
    lines += [
        "Create a session (answers once VTS has made it):",
        "  " + _curl(f"{api}/v1/sessions", "-H", bearer, "-H", "Prefer: wait=10", body=create),
        "List the newest sessions:",
        "  " + _curl(f"{api}/v1/sessions?limit=5", "-H", bearer),
        "",
        "Ctrl-C stops everything.",
        "",
    ]
    return "\n".join(lines) + "\n"


def _sandbox_lines(
    env: dict[str, str], example: dict[str, str], bearer: str, api: str
) -> list[str]:
    sandbox = env["VTS_BASE_URL"]
    account = f"{env['VTS_AUTH_ID']}:{env['VTS_AUTH_TOKEN']}"
    calls = f"{sandbox}/_sandbox/sessions/{example['vts_session_uuid']}/calls"
    return [
        f"  VTS sandbox:     {sandbox}   (auth id {env['VTS_AUTH_ID']},"
        f" token {env['VTS_AUTH_TOKEN']})",
        "",
        f"An example session is made: {example['id']}, between {' and '.join(EXAMPLE_PARTIES)}.",
        "Simulate a call between its parties (the sandbox sends VTS's callbacks):",
        "  "
        + _curl(calls, "-u", account, "-X", "POST", body='{"caller": "first", "duration": 42}'),
        "See its counters (call_count, interaction_count) and its timeline:",
        "  " + _curl(f"{api}/v1/sessions/{example['id']}", "-H", bearer),
        "  " + _curl(f"{api}/v1/sessions/{example['id']}/events", "-H", bearer),
    ]


def _supervise(processes: list[subprocess.Popen[bytes]]) -> int:
    """Wait until a process exits (1) or a stop signal arrives (raises Stopped)."""
    while True:
        for process in processes:
            if process.poll() is not None:
                sys.stderr.write(f"a process exited (code {process.returncode}); stopping\n")
                return 1
        time.sleep(0.2)
