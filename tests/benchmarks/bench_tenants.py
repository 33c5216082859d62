"""Two apps, one VTS budget: app A bursts PATCHes at one session while app B creates
sessions and waits for them; B's create latency, and what A's burst cost at VTS.

    .venv/bin/python -m tests.benchmarks.bench_tenants [--patches 1500] [--clients 15]
        [--create-every 0.1] [--threads 8]

Starts the sandbox (``masking sandbox``, VTS's 300 requests per 5 s), the web (one
uvicorn worker, as ``bench_create`` runs it) and one worker process (``masking worker
--processes 1 --threads N``), with ``API_KEYS=rides:...,food:...`` and every other
setting at its default. Redis as in ``bench_create``, flushed first.

A (``rides``) makes one session and waits for it to be active; B (``food``) makes 20
sessions alone, for comparison. Then, at once: A sends
``--patches`` PATCHes to that session from ``--clients`` concurrent clients (each sets
``ring_timeout`` or ``call_time_limit``), and B (``food``) creates sessions one after
another with ``Prefer: wait=10``, one every ``--create-every`` seconds, until A's burst
is over (at least 20). A's last PATCH sets both fields to known values; the run ends when
A's session shows them. Reported: B's create latency (request sent to ``201`` received)
p50/p99/max, the answers each app got, and the VTS updates the sandbox received for A's
burst (goals: p99 under 1 s, under 50 updates). Exits 1 when a goal is missed or B got
anything but ``201``.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory

import httpx2
import redis

from tests.benchmarks.bench_create import bench_redis
from tests.benchmarks.common import (
    AUTH_ID,
    AUTH_TOKEN,
    load,
    percentiles,
    running,
    service_env,
    uvicorn_command,
    wait_for,
    worker_command,
)
from tests.servers import free_port

RIDES_KEY = "rides-bench-" + "a" * 20
FOOD_KEY = "food-bench-" + "b" * 20
GOAL_P99_S = 1.0
GOAL_UPDATES = 50
FINAL = {"ring_timeout": 77, "call_time_limit": 777}


@dataclass
class Run:
    patch_answers: Counter[int] = field(default_factory=Counter)
    create_answers: Counter[int] = field(default_factory=Counter)
    create_seconds: list[float] = field(default_factory=list)
    alone_seconds: list[float] = field(default_factory=list)
    burst_seconds: float = 0.0
    settle_seconds: float = 0.0
    vts_updates: int = 0


def _numbers() -> dict[str, str]:
    a, b = secrets.randbelow(10**6), secrets.randbelow(10**6)
    return {"first_party": f"+1415{2000000 + a:07d}", "second_party": f"+1415{3000000 + b:07d}"}


def _client(base_url: str, key: str, connections: int) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(
        base_url=base_url,
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
        limits=httpx2.Limits(max_connections=connections),
    )


async def _burst(rides: httpx2.AsyncClient, path: str, args: argparse.Namespace, run: Run) -> None:
    async def client(index: int) -> None:
        for i in range(index, args.patches - 1, args.clients):
            change = {"ring_timeout": 5 + i % 100} if i % 2 else {"call_time_limit": 60 + i}
            run.patch_answers[(await rides.patch(path, json=change)).status_code] += 1

    started = time.monotonic()
    await asyncio.gather(*(client(index) for index in range(args.clients)))
    run.patch_answers[(await rides.patch(path, json=FINAL)).status_code] += 1
    run.burst_seconds = time.monotonic() - started


async def _create(food: httpx2.AsyncClient, every: float, run: Run, into: list[float]) -> None:
    started = time.monotonic()
    answer = await food.post("/v1/sessions", json=_numbers(), headers={"Prefer": "wait=10"})
    into.append(time.monotonic() - started)
    run.create_answers[answer.status_code] += 1
    await asyncio.sleep(max(0.0, every - (time.monotonic() - started)))


async def _creates(
    food: httpx2.AsyncClient, burst: asyncio.Task[None], every: float, run: Run
) -> None:
    while not burst.done() or len(run.create_seconds) < 20:
        await _create(food, every, run, run.create_seconds)


async def measure(web: str, sandbox: httpx2.Client, args: argparse.Namespace) -> Run:
    run = Run()
    async with _client(web, RIDES_KEY, args.clients) as rides, _client(web, FOOD_KEY, 4) as food:
        made = await rides.post("/v1/sessions", json=_numbers(), headers={"Prefer": "wait=20"})
        if made.status_code != 201:
            raise RuntimeError(f"A's session was not created: {made.status_code} {made.text}")
        path = f"/v1/sessions/{made.json()['id']}"
        for _ in range(20):
            await _create(food, args.create_every, run, run.alone_seconds)
        before = _updates(sandbox)
        burst = asyncio.create_task(_burst(rides, path, args, run))
        await _creates(food, burst, args.create_every, run)
        await burst
        started = time.monotonic()
        while {k: (await rides.get(path)).json()[k] for k in FINAL} != FINAL:
            if time.monotonic() - started > 60:
                raise RuntimeError("A's last PATCH did not reach its session within 60 s")
            await asyncio.sleep(0.05)
        run.settle_seconds = time.monotonic() - started
        run.vts_updates = _updates(sandbox) - before
    return run


def _updates(sandbox: httpx2.Client) -> int:
    return int(sandbox.get("/_sandbox/stats").json()["received"].get("update", 0))


def _ready(client: httpx2.Client, path: str) -> bool:
    try:
        return client.get(path).status_code == 200
    except httpx2.TransportError:
        return False


def report(run: Run, args: argparse.Namespace) -> bool:
    p50, p99 = percentiles(run.create_seconds, 50, 99)
    patches = sum(run.patch_answers.values())
    ok_latency, ok_updates = p99 < GOAL_P99_S, run.vts_updates < GOAL_UPDATES
    ok_answers = set(run.create_answers) == {201}
    print(f"{load()}; worker threads {args.threads}")
    print(
        f"A: {patches} PATCHes from {args.clients} clients in {run.burst_seconds:.2f} s "
        f"({patches / run.burst_seconds:.0f}/s), answers {dict(run.patch_answers)}; "
        f"last change at its session {run.settle_seconds:.2f} s after the burst"
    )
    print(f"A's burst cost {run.vts_updates} VTS updates (goal: under {GOAL_UPDATES})")
    print(
        f"B: {len(run.create_seconds)} creates with Prefer: wait during the burst "
        f"(answers to all of B's: {dict(run.create_answers)}); "
        f"latency p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
        f"max {max(run.create_seconds) * 1000:.0f} ms (goal: p99 under {GOAL_P99_S:g} s)"
    )
    a50, a99 = percentiles(run.alone_seconds, 50, 99)
    print(
        f"B alone before the burst: {len(run.alone_seconds)} creates, latency p50 "
        f"{a50 * 1000:.0f} ms, p99 {a99 * 1000:.0f} ms"
    )
    verdict = "met" if ok_latency and ok_updates and ok_answers else "MISSED"
    print(f"goals {verdict}")
    return ok_latency and ok_updates and ok_answers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--patches", type=int, default=1500, help="A's PATCHes, in all")
    parser.add_argument("--clients", type=int, default=15, help="A's concurrent clients")
    parser.add_argument("--create-every", type=float, default=0.1, help="seconds, B's pace")
    parser.add_argument("--threads", type=int, default=8, help="worker threads")
    args = parser.parse_args(argv)
    with TemporaryDirectory(prefix="bench-tenants-") as tmp, ExitStack() as stack:
        directory = Path(tmp)
        redis_url = stack.enter_context(bench_redis(directory))
        redis.Redis.from_url(redis_url).flushdb()
        sandbox_port, web_port = free_port(), free_port()
        sandbox_url, web_url = f"http://127.0.0.1:{sandbox_port}", f"http://127.0.0.1:{web_port}"
        sandbox_command = [
            sys.executable, "-m", "service", "sandbox", "--auth-id", AUTH_ID,
            "--auth-token", AUTH_TOKEN, "--port", str(sandbox_port), "--pool-size", "10000",
        ]  # fmt: skip
        env = service_env(redis_url, web_url, "INFO") | {
            "VTS_BASE_URL": sandbox_url,
            "API_KEYS": f"rides:{RIDES_KEY},food:{FOOD_KEY}",
        }
        logs = {name: directory / f"{name}.log" for name in ("sandbox", "web", "worker")}
        sandbox_process = stack.enter_context(running(sandbox_command, env, logs["sandbox"]))
        sandbox = stack.enter_context(
            httpx2.Client(base_url=sandbox_url, auth=(AUTH_ID, AUTH_TOKEN), timeout=30)
        )
        wait_for(lambda: _ready(sandbox, "/_sandbox/stats"), what="the sandbox", timeout=30,
                 process=sandbox_process, log_path=logs["sandbox"])  # fmt: skip
        web = stack.enter_context(
            running(uvicorn_command("service.web.app:from_env", web_port), env, logs["web"])
        )
        stack.enter_context(running(worker_command(args.threads), env, logs["worker"]))
        probe = stack.enter_context(httpx2.Client(base_url=web_url, timeout=5))
        wait_for(lambda: _ready(probe, "/readyz"), what="the web", timeout=30,
                 process=web, log_path=logs["web"])  # fmt: skip
        run = asyncio.run(measure(web_url, sandbox, args))
        errors = [line for line in logs["worker"].read_text().splitlines() if '"error"' in line]
        print(f"worker lines at level error: {len(errors)}")
        return 0 if report(run, args) else 1


if __name__ == "__main__":
    raise SystemExit(main())
