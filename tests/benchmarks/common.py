"""What the benchmarks share besides ``bench_create``'s wrk runner and Redis set-up:
processes started and stopped around a block, the service's environment, VTS session
callbacks signed as VTS signs them, and percentiles."""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

from service.settings import environment
from service.vts.callbacks import LEG_ENDS, PARTIES_HANGUP
from service.vts.signatures import NONCE_DIGITS, NONCE_HEADERS, SIGNATURE_HEADERS, v3_signature
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
AUTH_ID = "MABENCHMARK0000001"
AUTH_TOKEN = "bench-token"
API_KEY = "bench-key-" + "0" * 16
CALLBACK_PATH = "/webhooks/vts/session"
FIRST_PARTY, SECOND_PARTY, VIRTUAL_NUMBER = "+14152000001", "+14153000002", "+14154000003"


def service_env(redis_url: str, public_base_url: str, log_level: str) -> dict[str, str]:
    """The settings of the web and the worker, for ``uvicorn --factory
    service.web.app:from_env`` and ``python -m service worker``."""
    return {
        "REDIS_URL": redis_url,
        "VTS_AUTH_ID": AUTH_ID,
        "VTS_AUTH_TOKEN": AUTH_TOKEN,
        # Never let a benchmark reach the real VTS: nothing listens on the discard port.
        "VTS_BASE_URL": "http://127.0.0.1:9",
        "PUBLIC_BASE_URL": public_base_url,
        "API_KEYS": API_KEY,
        "WEBHOOK_SIGNATURE": "enforce",
        "LOG_FORMAT": "json",
        "LOG_LEVEL": log_level,
        # The worker serves metrics; a port of its own, so a test run beside it can't clash.
        "METRICS_PORT": str(free_port()),
    }


def uvicorn_command(factory: str, port: int) -> list[str]:
    """One uvicorn worker on httptools and uvloop, as bench_create runs its apps."""
    return [
        sys.executable, "-m", "uvicorn", "--factory", factory,
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--http", "httptools", "--loop", "uvloop",
        "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip


def worker_command(threads: int) -> list[str]:
    """The service's dramatiq worker, one process, as the Procfile starts it."""
    return [
        sys.executable, "-m", "service", "worker",
        "--processes", "1", "--threads", str(threads),
    ]  # fmt: skip


@contextmanager
def running(
    command: Sequence[str], env: Mapping[str, str], log_path: Path | None, cwd: Path = ROOT
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` from ``cwd`` (the project root) until the block ends (SIGTERM, then
    SIGKILL after 30 s). Its stderr goes to ``log_path``, or /dev/null when None."""
    with ExitStack() as stack:
        stderr = stack.enter_context(log_path.open("wb")) if log_path else subprocess.DEVNULL
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=environment() | dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        try:
            yield process
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def wait_for(
    condition: Callable[[], bool],
    *,
    what: str,
    timeout: float,
    process: subprocess.Popen[bytes] | None = None,
    log_path: Path | None = None,
    interval: float = 0.02,
) -> None:
    """Poll ``condition`` until it holds; raise RuntimeError naming ``what`` after
    ``timeout`` seconds, or at once if ``process`` has exited."""
    deadline = time.monotonic() + timeout
    while not condition():
        where = f"; see {log_path}" if log_path else ""
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {process.returncode}{where}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout:g} s{where}")
        time.sleep(interval)


_LEG_END = {
    "Duration": "42",
    "BilledDuration": "60",
    "Amount": "0.01700",
    "HangupCause": "NORMAL_CLEARING",
    "HangupCauseCode": "4000",
}


def callback(name: str, session_uuid: str, sequence: int) -> dict[str, str]:
    """A session callback as the sandbox sends it (12 fields for a leg end)."""
    params = {
        "EventName": name,
        "EventTimestamp": "2025-11-27 22:40:00",
        "SessionUUID": session_uuid,
        "FirstParty": FIRST_PARTY.removeprefix("+"),
        "SecondParty": SECOND_PARTY.removeprefix("+"),
        "VirtualNumber": VIRTUAL_NUMBER.removeprefix("+"),
        "SequenceNumber": str(sequence),
    }
    if name in LEG_ENDS:
        return params | _LEG_END
    if name == PARTIES_HANGUP:
        return params | {"Duration": "42", "HangupCause": "NORMAL_CLEARING"}
    return params


def nonce() -> str:
    """The same 20 random digits as ``new_nonce()``, in 1 µs rather than its 27 µs: the
    benchmarks sign a few hundred thousand callbacks before they start."""
    return str(secrets.randbelow(10**NONCE_DIGITS)).zfill(NONCE_DIGITS)


def signature_headers(url: str, params: Mapping[str, str]) -> dict[str, str]:
    """A fresh nonce and the V3 signature VTS would send for a POST of ``params``."""
    fresh = nonce()
    return {
        SIGNATURE_HEADERS[0]: v3_signature(url, params, fresh, AUTH_TOKEN, "POST"),
        NONCE_HEADERS[0]: fresh,
    }


def percentiles(values: Sequence[float], *points: int) -> list[float]:
    """The given percentiles (1 to 99) of ``values``, interpolated between samples."""
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return [cuts[point - 1] for point in points]


def load() -> str:
    """The machine's load averages: other work on it skews every figure."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def wrk_arguments(doc: str | None, duration: float) -> argparse.ArgumentParser:
    """The flags every wrk benchmark takes; a script adds its own."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0] if doc else None)
    parser.add_argument("--duration", type=float, default=duration, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each app")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per app")
    return parser


def find_wrk() -> str | None:
    """wrk's path, or None after telling the user how to install it."""
    wrk = shutil.which("wrk")
    if wrk is None:
        print("wrk is not installed: install it with `apt-get install wrk`.", file=sys.stderr)
    return wrk
