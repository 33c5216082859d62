"""Throughput of ``POST /v1/sessions`` on one uvicorn worker, beside a bare ceiling.

    .venv/bin/python -m tests.benchmarks.bench_create [--duration 10] [--rounds 3]
                                                      [--connections 32] [--threads 1]

Each app runs as its own ``uvicorn --factory ... --workers 1`` process (httptools,
uvloop): the sessions app at LOG_LEVEL=WARNING, the same at LOG_LEVEL=INFO with stderr
to /dev/null (the cost of the per-request log line), and ``bare_app`` twice: parse the
JSON body and LPUSH it, or parse it and enqueue it as a dramatiq message with one script
call (the ceiling the target is held to, see ``bare_app``). Every request carries two
numbers drawn at random from 100k per party, so a cache keyed on the number cannot
flatter the figures. All share one Redis: database 15 of ``REDIS_URL`` when set, else a
private redis-server; it is flushed before every run. ``wrk`` drives them in alternating
rounds and the summary shows the medians. No dramatiq worker runs: the queue just fills,
since this measures the web. Exit status 2 when ``wrk`` is missing, 1 when any response
was not 2xx.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from tempfile import TemporaryDirectory
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis

from devkit.embedded_redis import EmbeddedRedis
from service.settings import environment
from tests.benchmarks.common import find_wrk, load, wrk_arguments
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "bench-key-" + "0" * 16
TARGET_RATIO = 0.80
SESSIONS = "POST /v1/sessions"
SESSIONS_INFO = "  same, LOG_LEVEL=INFO"
BARE = "bare Starlette+Redis"
BARE_ENQUEUE = "bare, dramatiq enqueue"


@dataclass(frozen=True)
class Target:
    label: str
    factory: str
    env: dict[str, str]
    # Where the server's stderr goes; None for /dev/null.
    log_name: str | None


@dataclass(frozen=True)
class Run:
    """One wrk run, or the medians of several (failures summed)."""

    requests_per_second: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int
    # CPU time (user + system) the server process spent per request during the run, in
    # µs; 0 when unknown. Less sensitive to other load on the machine than req/s.
    cpu_us: float = 0.0


def request_body(size: int = 1024) -> bytes:
    """A valid create request of about ``size`` bytes: two numbers, options, metadata."""
    metadata = {"order_id": "ord_8f3a2c1e", "tenant": "acme", "notes": ""}
    body = {
        "first_party": FIRST_PARTY,
        "second_party": SECOND_PARTY,
        "record": True,
        "record_file_format": "mp3",
        "session_expiry": 3600,
        "call_time_limit": 1800,
        "ring_timeout": 30,
        "initiate_call_to_first_party": False,
        "first_party_play_url": "https://media.example.com/prompts/first-party.mp3",
        "second_party_play_url": "https://media.example.com/prompts/second-party.mp3",
        "callback_url": "https://app.example.com/hooks/masking?tenant=acme",
        "metadata": metadata,
    }
    metadata["notes"] = "n" * max(size - len(json.dumps(body, separators=(",", ":"))), 0)
    return json.dumps(body, separators=(",", ":")).encode()


# Each request draws its two numbers from these ranges (100k each, all valid NANP
# numbers), so a cache keyed on the number hits about as rarely as in production.
FIRST_PARTY, SECOND_PARTY = "+14152000001", "+14153000002"
DISTINCT_NUMBERS = 100_000


def wrk_script(body: bytes) -> str:
    """A wrk Lua script that POSTs ``body`` as JSON with our API key, each request with
    its two numbers drawn at random from ``DISTINCT_NUMBERS`` per party."""
    text = body.decode()
    level = next(n for n in range(1, 100) if f"]{'=' * n}]" not in text)
    head, rest = text.split(FIRST_PARTY)
    middle, tail = rest.split(SECOND_PARTY)
    parts = [f"[{'=' * level}[{part}]{'=' * level}]" for part in (head, middle, tail)]
    return "\n".join(
        [
            'wrk.method = "POST"',
            'wrk.headers["Content-Type"] = "application/json"',
            f'wrk.headers["Authorization"] = "Bearer {API_KEY}"',
            f"local head, middle, tail = {', '.join(parts)}",
            "request = function()",
            f"  local first = {FIRST_PARTY[:7]!r} .. string.format('%05d', "
            f"math.random(0, {DISTINCT_NUMBERS - 1}))",
            f"  local second = {SECOND_PARTY[:7]!r} .. string.format('%05d', "
            f"math.random(0, {DISTINCT_NUMBERS - 1}))",
            "  return wrk.format(nil, nil, nil, head .. first .. middle .. second .. tail)",
            "end",
            "",
        ]
    )


def targets(redis_url: str) -> list[Target]:
    sessions_env = {
        "REDIS_URL": redis_url,
        "VTS_AUTH_ID": "MABENCHMARK0000001",
        "VTS_AUTH_TOKEN": "bench-token",
        # Never called by the web, but never let a benchmark reach the real VTS.
        "VTS_BASE_URL": "http://127.0.0.1:9",
        "PUBLIC_BASE_URL": "http://127.0.0.1:9",
        "API_KEYS": API_KEY,
        # No worker runs and nothing reaches VTS: an app's share of the VTS budget would
        # turn all but the first few hundred requests into 429s.
        "VTS_APP_BUDGET": str(10**9),
        # Nor does any session end: the live-session cap is counted, never reached.
        "APP_MAX_LIVE_SESSIONS": str(10**9),
        "LOG_FORMAT": "json",
    }
    return [
        Target(
            SESSIONS, "service.web.app:from_env", sessions_env | {"LOG_LEVEL": "WARNING"}, "web"
        ),
        Target(
            SESSIONS_INFO, "service.web.app:from_env", sessions_env | {"LOG_LEVEL": "INFO"}, None
        ),
        Target(BARE, "tests.benchmarks.bare_app:from_env", {"REDIS_URL": redis_url}, "bare"),
        Target(
            BARE_ENQUEUE,
            "tests.benchmarks.bare_app:from_env",
            {"REDIS_URL": redis_url, "BARE_WRITE": "enqueue"},
            None,
        ),
    ]


@contextmanager
def bench_redis(directory: Path) -> Iterator[str]:
    """Database 15 of ``REDIS_URL`` (as the tests use it), else a private redis-server."""
    given = os.environ.get("REDIS_URL")
    if given:
        yield database_15(given)
        return
    with EmbeddedRedis(directory / "redis") as server:
        yield server.url


def database_15(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        query = [(k, v) for k, v in parse_qsl(parts.query) if k != "db"] + [("db", "15")]
        return urlunsplit(parts._replace(query=urlencode(query)))
    return urlunsplit(parts._replace(path="/15"))


@contextmanager
def serving(target: Target, directory: Path, body: bytes) -> Iterator[str]:
    """Run ``target`` under uvicorn until the block ends; yield the URL to load."""
    port = free_port()
    command = [
        sys.executable, "-m", "uvicorn", "--factory", target.factory,
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--http", "httptools", "--loop", "uvloop",
        "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    log_path = directory / f"{target.log_name}.log" if target.log_name else None
    with ExitStack() as stack:
        stderr = stack.enter_context(log_path.open("wb")) if log_path else subprocess.DEVNULL
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=environment() | target.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        try:
            url = f"http://127.0.0.1:{port}/v1/sessions"
            _wait_until_serving(process, url, body, log_path)
            SERVER_PIDS[url] = process.pid
            yield url
        finally:
            process.terminate()
            process.wait(10)


def _wait_until_serving(
    process: subprocess.Popen[bytes], url: str, body: bytes, log_path: Path | None
) -> None:
    """Send one request once the server listens; fail unless it is accepted (202)."""
    deadline = time.monotonic() + 30
    headers = {"content-type": "application/json", "authorization": f"Bearer {API_KEY}"}
    while True:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, body, headers)) as response:
                if response.status != 202:
                    raise RuntimeError(f"{url} answered {response.status}, not 202")
                return
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"{url} answered {exc.code}: {exc.read()!r}") from exc
        except (ConnectionError, urllib.error.URLError) as exc:
            where = f"; see {log_path}" if log_path else ""
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server for {url} did not start{where}") from exc
            time.sleep(0.05)


# The server process behind each URL measured, for its CPU time.
SERVER_PIDS: dict[str, int] = {}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux), or 0 if unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk(wrk: str, script: Path, url: str, args: argparse.Namespace, duration: float) -> Run:
    pid = SERVER_PIDS.get(url)
    before = cpu_seconds(pid) if pid else 0.0
    command = [
        wrk, "--latency", "-s", str(script), "-t", str(args.threads),
        "-c", str(args.connections), "-d", f"{duration:g}s", url,
    ]  # fmt: skip
    done = subprocess.run(
        command, capture_output=True, text=True, check=True, timeout=duration + 60
    )
    run = parse_wrk(done.stdout)
    used = cpu_seconds(pid) - before if pid else 0.0
    sent = re.search(r"^\s*(\d+) requests in", done.stdout, re.MULTILINE)
    if used > 0 and sent and int(sent.group(1)):
        run = replace(run, cpu_us=used / int(sent.group(1)) * 1e6)
    return run


_TIME_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def parse_wrk(output: str) -> Run:
    """Read wrk's ``--latency`` report."""
    rate = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.MULTILINE)
    if rate is None:
        raise ValueError(f"no Requests/sec in wrk's output:\n{output}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    return Run(
        requests_per_second=float(rate.group(1)),
        p50_ms=_percentile_ms(output, 50),
        p99_ms=_percentile_ms(output, 99),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(map(int, errors.groups())) if errors else 0,
    )


def _percentile_ms(output: str, percent: int) -> float:
    found = re.search(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s|m|h)\s*$", output, re.MULTILINE)
    if found is None:
        raise ValueError(f"no {percent}% latency in wrk's output (was --latency given?)")
    return float(found.group(1)) * _TIME_UNITS_MS[found.group(2)]


def measure(
    wrk: str, script: Path, urls: dict[str, str], redis_url: str, args: argparse.Namespace
) -> dict[str, list[Run]]:
    """Warm every app up, then run them in turn, ``args.rounds`` times, on a flushed Redis."""
    client = redis.Redis.from_url(redis_url)
    runs: dict[str, list[Run]] = {label: [] for label in urls}
    try:
        for url in urls.values():
            client.flushdb()
            run_wrk(wrk, script, url, args, args.warmup)
        for round_number in range(1, args.rounds + 1):
            for label, url in urls.items():
                client.flushdb()
                run = run_wrk(wrk, script, url, args, args.duration)
                runs[label].append(run)
                print(f"round {round_number}  {_line(label, run)}", flush=True)
    finally:
        client.close()
    return runs


def _line(label: str, run: Run) -> str:
    line = (
        f"{label.ljust(24)}{run.requests_per_second:8.0f} req/s"
        f"  p50 {run.p50_ms:6.1f} ms  p99 {run.p99_ms:6.1f} ms"
        + (f"  CPU {run.cpu_us:5.0f} µs/req" if run.cpu_us else "")
    )
    problems = [f"{run.non_2xx} non-2xx"] if run.non_2xx else []
    problems += [f"{run.socket_errors} socket errors"] if run.socket_errors else []
    return line + (f"  ({', '.join(problems)})" if problems else "")


def median(runs: Sequence[Run]) -> Run:
    """The median of each figure on its own, and the sums of the failures."""
    return Run(
        requests_per_second=statistics.median(r.requests_per_second for r in runs),
        p50_ms=statistics.median(r.p50_ms for r in runs),
        p99_ms=statistics.median(r.p99_ms for r in runs),
        non_2xx=sum(r.non_2xx for r in runs),
        socket_errors=sum(r.socket_errors for r in runs),
        cpu_us=statistics.median(r.cpu_us for r in runs),
    )


def summary(runs: dict[str, list[Run]], rounds: int) -> str:
    medians = {label: median(label_runs) for label, label_runs in runs.items()}
    lines = [
        f"\nmedians of {rounds} rounds",
        *(_line(label, run) for label, run in medians.items()),
    ]
    return "\n".join(lines + ratios(medians, SESSIONS_INFO, SESSIONS))


def ratios(medians: dict[str, Run], info: str, warning: str) -> list[str]:
    """Each app's throughput and CPU over each ceiling's. The target holds at INFO (as
    production logs) against the enqueue ceiling, the one that does what the path must:
    hand a worker a message in one atomic script call."""
    lines = []
    for ceiling in (BARE_ENQUEUE, BARE):
        bare = medians[ceiling]
        lines.append(f"against {ceiling}:")
        for level, label in (("INFO", info), ("WARNING", warning)):
            ratio = medians[label].requests_per_second / bare.requests_per_second
            cpu = (
                bare.cpu_us / medians[label].cpu_us if bare.cpu_us and medians[label].cpu_us else 0
            )
            verdict = ""
            if ceiling == BARE_ENQUEUE and level == "INFO":
                met = "ok" if ratio >= TARGET_RATIO else "BELOW TARGET"
                verdict = f"  (target >= {TARGET_RATIO:.2f}: {met})"
            lines.append(f"  ratio at {level:8}{ratio:8.2f}   CPU ratio {cpu:5.2f}{verdict}")
    return lines


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return wrk_arguments(__doc__, duration=10.0).parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    wrk = find_wrk()
    if wrk is None:
        return 2
    body = request_body()
    with TemporaryDirectory(prefix="bench-create-") as tmp, ExitStack() as stack:
        directory = Path(tmp)
        script = directory / "post.lua"
        script.write_text(wrk_script(body))
        redis_url = stack.enter_context(bench_redis(directory))
        urls = {
            t.label: stack.enter_context(serving(t, directory, body)) for t in targets(redis_url)
        }
        where = (
            "REDIS_URL, database 15" if os.environ.get("REDIS_URL") else "a private redis-server"
        )
        print(
            f"wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s, "
            f"{len(body)}-byte body, {args.rounds} rounds, Redis: {where}, {load()}",
            flush=True,
        )
        runs = measure(wrk, script, urls, redis_url, args)
    print(summary(runs, args.rounds))
    print(f"at the end: {load()}")
    failed = any(run.non_2xx for label_runs in runs.values() for run in label_runs)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
