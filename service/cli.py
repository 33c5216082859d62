"""The ``masking`` command: ``web``, ``worker``, ``sandbox``, ``dev`` and ``logs``."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from service.errors import ConfigurationError
from service.settings import Settings

if TYPE_CHECKING:
    from service.store import Store

# Shorter than the usual 30 s grace period of orchestrators, so that a worker finishes or
# requeues its messages before it is killed.
WORKER_SHUTDOWN_TIMEOUT_MS = 25_000


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigurationError as exc:
        sys.stderr.write(f"configuration error: {exc}\n")
        raise SystemExit(2) from None


def web(args: argparse.Namespace) -> None:
    import uvicorn

    from service import logs
    from service.app import create_app

    settings = _settings()
    logs.configure(fmt=settings.log_format, level=settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=20,
        server_header=False,
    )


def _multiprocess_metrics_dir() -> None:
    """Put prometheus-client in multi-process mode for this process and its children.

    Must run before prometheus_client is first imported: it picks its mode then.
    """
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(
        prefix="masking-metrics-"
    )
    for stale in Path(directory).glob("*.db"):
        stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory


def _serve_worker_metrics(host: str, port: int) -> None:
    from prometheus_client import CollectorRegistry, multiprocess

    from service import metrics

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    metrics.serve(registry, host, port)


def worker(args: argparse.Namespace) -> None:
    settings = _settings()
    _multiprocess_metrics_dir()

    from dramatiq import cli as dramatiq_cli

    from service import logs

    logs.configure(fmt=settings.log_format, level=settings.log_level)
    _serve_worker_metrics(settings.metrics_host, settings.metrics_port)
    argv = [
        "workers.boot:setup",
        "workers.actors",
        "--processes", str(args.processes),
        "--threads", str(args.threads),
        "--worker-shutdown-timeout", str(WORKER_SHUTDOWN_TIMEOUT_MS),
        "--skip-logging",
    ]  # fmt: skip
    parser = dramatiq_cli.make_argument_parser()  # type: ignore[no-untyped-call]
    raise SystemExit(dramatiq_cli.main(parser.parse_args(argv)))  # type: ignore[no-untyped-call]


def sandbox(args: argparse.Namespace) -> None:
    from service.vts import sandbox as vts_sandbox

    vts_sandbox.main(args.rest)


def dev(args: argparse.Namespace) -> None:
    from service import devserver

    raise SystemExit(devserver.run(port=args.port, sandbox_port=args.sandbox_port))


def logs(args: argparse.Namespace) -> None:
    from service import logtail

    raise SystemExit(logtail.main(args.rest))


def _operator_store() -> Store:
    import redis

    from service.store import Store

    return Store(redis.Redis.from_url(_settings().redis_url))


def dlq(args: argparse.Namespace) -> None:
    from service import deadletters

    store = _operator_store()
    if args.action == "list":
        for letter in deadletters.dead_letters(store):
            sys.stdout.write(letter.summary() + "\n")
        return
    letters = (
        list(deadletters.dead_letters(store))
        if args.all
        else [d for d in [deadletters.find(store, args.id or "")] if d is not None]
    )
    if not letters:
        raise SystemExit("no such dead letter (see: masking dlq list)")
    for letter in letters:
        if args.action == "show":
            sys.stdout.write(letter.details() + "\n")
        elif deadletters.replay(store, letter):
            sys.stdout.write(f"replayed {letter.redis_id} ({letter.message['actor_name']})\n")


def replay_webhooks(args: argparse.Namespace) -> None:
    from datetime import datetime

    from service import deadletters

    store = _operator_store()
    if args.id:
        ids = list(args.id)
    else:
        since = datetime.fromisoformat(args.since).timestamp() * 1000
        until = datetime.fromisoformat(args.until).timestamp() * 1000 if args.until else "+inf"
        ids = store.webhooks_between(int(since), until if isinstance(until, str) else int(until))
    count = deadletters.replay_webhooks(store, ids)
    sys.stdout.write(f"queued {count} stored callbacks again\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="masking", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("web", help="the HTTP front (uvicorn)")
    p.add_argument("--host", default="0.0.0.0")
    p.set_defaults(run=web)

    p = commands.add_parser("worker", help="the dramatiq workers")
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--threads", type=int, default=8)
    p.set_defaults(run=worker)

    p = commands.add_parser("dev", help="everything, for development: Redis, sandbox, web, worker")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--sandbox-port", type=int, default=8025)
    p.set_defaults(run=dev)

    p = commands.add_parser("dlq", help="dead letters: list, show ID, replay ID|--all")
    p.add_argument("action", choices=["list", "show", "replay"])
    p.add_argument("id", nargs="?")
    p.add_argument("--all", action="store_true", help="every dead letter (show, replay)")
    p.set_defaults(run=dlq)

    p = commands.add_parser("replay-webhooks", help="queue stored VTS callbacks again")
    chosen = p.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--id", action="append", help="a callback id (repeatable)")
    chosen.add_argument("--since", help="ISO time: callbacks received since then")
    p.add_argument("--until", help="ISO time: ... and until then (default: now)")
    p.set_defaults(run=replay_webhooks)

    # These two forward their arguments, --help included, to their own parsers.
    p = commands.add_parser("sandbox", add_help=False, help="the VTS sandbox (masking sandbox -h)")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(run=sandbox)

    p = commands.add_parser("logs", add_help=False, help="filter JSON log lines (masking logs -h)")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(run=logs)
    return parser


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv``; forwarding commands get every argument after their name in ``rest``."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if not hasattr(args, "rest"):
        if unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        return args
    # REMAINDER only starts at the first positional, so leading options come back as
    # unknown, in order, before it; a "--" separator is accepted for compatibility.
    rest = [*unknown, *args.rest]
    args.rest = rest[1:] if rest[:1] == ["--"] else rest
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse(argv)
    args.run(args)
