"""One web path on two trees, their runs interleaved: what a change costs, measured under
the same machine conditions.

    python -m tests.benchmarks.interleaved --before /tmp/old-tree --path callbacks [--rounds 6]

The web of ``--before`` (a checkout of another commit) and this tree's run side by side,
each on its own Redis, with this interpreter (the same libraries) and ``LOG_LEVEL``
(INFO by default). wrk loads one, then the other, ``--rounds`` times, each run on a
flushed Redis, so a drift in the machine's speed (a shared host) falls on both alike;
``before_after`` runs each tree's benchmarks minutes apart. Prints each run's requests a
second and the web's CPU time a request, their medians, and after/before.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from tempfile import TemporaryDirectory

import redis

from devkit.embedded_redis import EmbeddedRedis
from tests.benchmarks import bench_create, bench_webhooks
from tests.benchmarks.bench_create import SERVER_PIDS, Run, run_wrk
from tests.benchmarks.common import (
    CALLBACK_PATH,
    ROOT,
    load,
    running,
    service_env,
    uvicorn_command,
    wait_for,
)
from tests.servers import free_port


def callbacks_script(directory: Path) -> tuple[Path, str]:
    """The wrk script of signed callbacks (``bench_webhooks``'s), and the path it loads."""
    data = directory / "signed.txt"
    with data.open("w") as lines:
        for row in bench_webhooks.signed_requests(400_000, 2_000):
            lines.write(" ".join(row) + "\n")
    script = directory / "callbacks.lua"
    script.write_text(bench_webhooks.wrk_script(data, 1))
    return script, CALLBACK_PATH


def creates_script(directory: Path) -> tuple[Path, str]:
    """The wrk script of creates (``bench_create``'s), and the path it loads."""
    script = directory / "creates.lua"
    script.write_text(bench_create.wrk_script(bench_create.request_body()))
    return script, "/v1/sessions"


def environment(redis_url: str, log_level: str) -> dict[str, str]:
    """What both paths need: signed callbacks as VTS signs them, and creates that are
    never throttled (no worker runs, so no session ends)."""
    return service_env(redis_url, bench_webhooks.PUBLIC_BASE_URL, log_level) | {
        "API_KEYS": bench_create.API_KEY,
        "VTS_APP_BUDGET": str(10**9),
        "APP_MAX_LIVE_SESSIONS": str(10**9),
    }


@contextmanager
def web(tree: Path, redis_url: str, log_level: str, log: Path) -> Iterator[tuple[str, int]]:
    """``tree``'s web until the block ends: its base URL and process id."""
    port = free_port()
    command = uvicorn_command("service.web.app:from_env", port)
    with running(command, environment(redis_url, log_level), log, cwd=tree) as process:
        url = f"http://127.0.0.1:{port}"
        wait_for(
            lambda: _answers(url + "/healthz"),
            what=f"the web of {tree}",
            timeout=30,
            process=process,
            log_path=log,
        )
        yield url, process.pid


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--before", type=Path, required=True, help="the other tree")
    parser.add_argument("--after", type=Path, default=ROOT, help="this tree, or another")
    parser.add_argument("--path", choices=["callbacks", "creates"], default="callbacks")
    parser.add_argument("--rounds", type=int, default=6, help="runs of each tree")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--log-level", default="INFO", help="the webs' LOG_LEVEL")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk is not installed (Debian: apt-get install wrk)")
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    with TemporaryDirectory(prefix="interleaved-") as tmp, ExitStack() as stack:
        directory = Path(tmp)
        script, path = (callbacks_script if args.path == "callbacks" else creates_script)(directory)
        targets: dict[str, tuple[str, redis.Redis]] = {}
        for label, tree in trees.items():
            server = stack.enter_context(EmbeddedRedis(directory / f"redis-{label}"))
            client = stack.enter_context(redis.Redis.from_url(server.url))
            url, pid = stack.enter_context(
                web(tree, server.url, args.log_level, directory / f"{label}.log")
            )
            SERVER_PIDS[url + path] = pid
            targets[label] = (url + path, client)
        print(
            f"{args.path} at {args.log_level}, {args.rounds} rounds x {args.duration:g} s, {load()}"
        )
        runs: dict[str, list[Run]] = {label: [] for label in trees}
        for url, client in targets.values():
            client.flushdb()
            run_wrk(wrk, script, url, args, args.warmup)
        for round_number in range(1, args.rounds + 1):
            for label, (url, client) in targets.items():
                client.flushdb()
                run = run_wrk(wrk, script, url, args, args.duration)
                runs[label].append(run)
                failures = run.non_2xx + run.socket_errors
                print(
                    f"round {round_number}  {label:6}  {run.requests_per_second:7.0f} req/s"
                    f"  {run.cpu_us:5.0f} µs CPU/req"
                    + (f"  ({failures} failed)" if failures else ""),
                    flush=True,
                )
        rate = {
            label: statistics.median(r.requests_per_second for r in rs)
            for label, rs in runs.items()
        }
        cpu = {label: statistics.median(r.cpu_us for r in rs) for label, rs in runs.items()}
        print(
            f"medians   before {rate['before']:7.0f} req/s {cpu['before']:5.0f} µs"
            f"   after {rate['after']:7.0f} req/s {cpu['after']:5.0f} µs"
        )
        print(
            f"after/before: req/s {rate['after'] / rate['before']:.3f},"
            f" CPU a request {cpu['after'] / cpu['before']:.3f}; at the end: {load()}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
