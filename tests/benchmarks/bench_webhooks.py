"""Throughput of signed VTS session callbacks on one uvicorn worker, beside a bare ceiling.

    .venv/bin/python -m tests.benchmarks.bench_webhooks [--duration 8] [--rounds 3]
                                                        [--connections 32] [--requests 200000]

Every request is a distinct event: ``--requests`` form bodies (12 fields, as the sandbox
sends a leg end) are signed in advance, each with its own SessionUUID/SequenceNumber, a
fresh nonce and its V3 signature, and wrk's Lua script takes the next one per request
(threads take every n-th). They are signed for ``PUBLIC_BASE_URL`` + the path, the URL
VTS was given; the service never signs with the Host header, so the same bodies serve
every port. Four ``uvicorn --factory ... --workers 1`` processes (httptools, uvloop):
``service.web.app:from_env`` with ``WEBHOOK_SIGNATURE=enforce`` at LOG_LEVEL=WARNING,
the same at LOG_LEVEL=INFO (stderr to /dev/null), and ``bare_app`` twice: parse the form
and LPUSH it, or parse it and enqueue it as a dramatiq message with one script call (the
ceiling the target is held to, see ``bare_app``); both answer 200. Redis as in
``bench_create``, flushed before every run (nonces included, so the bodies can be sent
again); no worker runs. Rounds alternate between the apps. Exit status 2 when ``wrk`` is
missing, 1 when any response was not 2xx.
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from tempfile import TemporaryDirectory
from urllib.parse import urlencode

from service.vts.signatures import NONCE_HEADERS, SIGNATURE_HEADERS
from tests.benchmarks.bench_create import (
    BARE,
    BARE_ENQUEUE,
    SERVER_PIDS,
    Run,
    bench_redis,
    measure,
    median,
    ratios,
)
from tests.benchmarks.common import (
    CALLBACK_PATH,
    callback,
    find_wrk,
    load,
    running,
    service_env,
    signature_headers,
    uvicorn_command,
    wait_for,
    wrk_arguments,
)
from tests.servers import free_port

# The URL VTS was given (as behind a TLS proxy); what the signatures cover.
PUBLIC_BASE_URL = "https://masking.bench.example"
SIGNED_URL = PUBLIC_BASE_URL + CALLBACK_PATH
EVENT = "SessionFirstPartyHangup"
WEBHOOKS = "POST /webhooks/vts/session"
WEBHOOKS_INFO = "  same, LOG_LEVEL=INFO"
# Stand-ins in the body template for the two fields that vary; letters survive urlencode.
_UUID_MARK, _SEQUENCE_MARK = "UUIDMARK", "SEQUENCEMARK"


def signed_requests(count: int, sessions: int) -> Iterator[tuple[str, str, str, str]]:
    """(SessionUUID, SequenceNumber, nonce, signature) of ``count`` distinct callbacks,
    round-robin over ``sessions`` VTS sessions."""
    uuids = [str(uuid.uuid4()) for _ in range(sessions)]
    for index in range(count):
        session_uuid, sequence = uuids[index % sessions], index // sessions + 1
        headers = signature_headers(SIGNED_URL, callback(EVENT, session_uuid, sequence))
        yield session_uuid, str(sequence), headers[NONCE_HEADERS[0]], headers[SIGNATURE_HEADERS[0]]


def wrk_script(data: Path, threads: int) -> str:
    """A wrk Lua script that POSTs the signed callbacks listed in ``data``, each once (then
    it wraps around: the replayed nonces answer 401 and the run fails)."""
    body = urlencode(callback(EVENT, _UUID_MARK, 0) | {"SequenceNumber": _SEQUENCE_MARK})
    head, rest = body.split(_UUID_MARK)
    middle, tail = rest.split(_SEQUENCE_MARK)
    return "\n".join(
        [
            'wrk.method = "POST"',
            f"local head, middle, tail = {head!r}, {middle!r}, {tail!r}",
            "local headers = {['Content-Type'] = 'application/x-www-form-urlencoded'}",
            "local uuids, sequences, nonces, signatures = {}, {}, {}, {}",
            "local count, position = 0, 0",
            "local threads = 0",
            "function setup(thread)",
            "  thread:set('offset', threads)",
            "  threads = threads + 1",
            "end",
            "function init(args)",
            f"  for line in io.lines({str(data)!r}) do",
            "    count = count + 1",
            "    uuids[count], sequences[count], nonces[count], signatures[count] =",
            "      line:match('^(%S+) (%S+) (%S+) (%S+)$')",
            "  end",
            "  position = offset",
            "end",
            "function request()",
            "  local i = position % count + 1",
            f"  position = position + {threads}",
            f"  headers[{SIGNATURE_HEADERS[0]!r}] = signatures[i]",
            f"  headers[{NONCE_HEADERS[0]!r}] = nonces[i]",
            "  local body = head .. uuids[i] .. middle .. sequences[i] .. tail",
            "  return wrk.format(nil, nil, headers, body)",
            "end",
            "",
        ]
    )


@contextmanager
def serving(
    label: str, factory: str, env: dict[str, str], log_path: Path | None
) -> Iterator[tuple[str, str]]:
    """Run one app until the block ends; yield (label, the URL to load) once it has
    answered a signed callback with 200."""
    port = free_port()
    with running(uvicorn_command(factory, port), env, log_path) as process:
        url = f"http://127.0.0.1:{port}{CALLBACK_PATH}"
        SERVER_PIDS[url] = process.pid
        wait_for(
            lambda: _accepted(url),
            what=f"{label} answering at {url}",
            timeout=30,
            process=process,
            log_path=log_path,
            interval=0.05,
        )
        yield label, url


def _accepted(url: str) -> bool:
    """Whether ``url`` answers one fresh signed callback with 200; False while nothing
    listens. Any other answer stops the benchmark."""
    params = callback(EVENT, str(uuid.uuid4()), 1)
    headers = signature_headers(SIGNED_URL, params)
    headers["content-type"] = "application/x-www-form-urlencoded"
    request = urllib.request.Request(url, urlencode(params).encode(), headers)
    try:
        with urllib.request.urlopen(request) as response:
            return bool(response.status == 200)
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"{url} answered {exc.code}: {exc.read()!r}") from exc
    except (ConnectionError, urllib.error.URLError):
        return False


def summary(runs: dict[str, list[Run]], rounds: int) -> str:
    medians = {label: median(label_runs) for label, label_runs in runs.items()}
    lines = [
        f"\nmedians of {rounds} rounds",
        f"{'':26}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'CPU µs':>9}",
    ]
    for label, run in medians.items():
        failures = run.non_2xx + run.socket_errors
        lines.append(
            f"{label:26}{run.requests_per_second:8.0f}{run.p50_ms:9.1f}{run.p99_ms:9.1f}"
            + (f"{run.cpu_us:9.0f}" if run.cpu_us else "")
            + (f"  ({run.non_2xx} non-2xx, {run.socket_errors} socket errors)" if failures else "")
        )
    lines += ratios(medians, WEBHOOKS_INFO, WEBHOOKS)
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = wrk_arguments(__doc__, duration=8.0)
    parser.add_argument(
        "--requests", type=int, default=200_000, help="distinct signed callbacks per run"
    )
    parser.add_argument("--sessions", type=int, default=2_000, help="VTS sessions they are for")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    wrk = find_wrk()
    if wrk is None:
        return 2
    with TemporaryDirectory(prefix="bench-webhooks-") as tmp, ExitStack() as stack:
        directory = Path(tmp)
        started = time.monotonic()
        data = directory / "callbacks.txt"
        with data.open("w") as out:
            out.writelines(
                " ".join(r) + "\n" for r in signed_requests(args.requests, args.sessions)
            )
        print(f"signed {args.requests} callbacks in {time.monotonic() - started:.1f} s", flush=True)
        script = directory / "post.lua"
        script.write_text(wrk_script(data, args.threads))
        redis_url = stack.enter_context(bench_redis(directory))
        env = service_env(redis_url, PUBLIC_BASE_URL, "WARNING")
        apps = [
            (WEBHOOKS, "service.web.app:from_env", env, directory / "web.log"),
            (WEBHOOKS_INFO, "service.web.app:from_env", env | {"LOG_LEVEL": "INFO"}, None),
            (BARE, "tests.benchmarks.bare_app:from_env", {"REDIS_URL": redis_url}, None),
            (
                BARE_ENQUEUE,
                "tests.benchmarks.bare_app:from_env",
                {"REDIS_URL": redis_url, "BARE_WRITE": "enqueue"},
                None,
            ),
        ]
        urls = dict(stack.enter_context(serving(*app)) for app in apps)
        print(
            f"wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s, "
            f"{args.rounds} rounds, signed form callbacks for {args.sessions} sessions, {load()}",
            flush=True,
        )
        runs = measure(wrk, script, urls, redis_url, args)
    print(summary(runs, args.rounds))
    print(f"at the end: {load()}")
    sent = max(r.requests_per_second for rs in runs.values() for r in rs) * args.duration
    if sent > args.requests:
        print(f"about {sent:.0f} requests per run: raise --requests above that", file=sys.stderr)
    failed = any(run.non_2xx or run.socket_errors for rs in runs.values() for run in rs)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
