"""The ``masking`` command: ``web``, ``worker``, ``sandbox``, ``dev``, and the operator
commands ``logs``, ``dlq``, ``replay-webhooks`` and ``apps`` (which need only ``REDIS_URL``)."""

from __future__ import annotations

import argparse
import importlib
import socket
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from service.errors import ConfigurationError
from service.settings import Settings, redis_url_from_env

if TYPE_CHECKING:
    import redis

    from service.store import Store


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigurationError as exc:
        sys.stderr.write(f"configuration error: {exc}\n")
        raise SystemExit(2) from None


def web(args: argparse.Namespace) -> None:
    settings = _settings()
    listener = _listen(args.host, settings.port if args.port is None else args.port)
    import uvicorn

    from service import logs
    from service.web.app import create_app

    logs.configure(fmt=settings.log_format, level=settings.log_level)
    config = uvicorn.Config(
        create_app(settings),
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=20,
        server_header=False,
    )
    uvicorn.Server(config).run(sockets=[listener])


def _listen(host: str, port: int) -> socket.socket:
    """The web's socket, bound before anything starts, so a taken port stops us at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        sys.stderr.write(
            f"configuration error: PORT: cannot listen on {host}:{port}: {exc.strerror}\n"
        )
        raise SystemExit(2) from None
    return listener


def worker(args: argparse.Namespace) -> None:
    settings = _settings()
    # The core never imports the workers: the command reaches them by name.
    supervisor = importlib.import_module("workers.supervisor")
    raise SystemExit(supervisor.run(settings, processes=args.processes, threads=args.threads))


def sandbox(args: argparse.Namespace) -> None:
    from devkit.sandbox import server as vts_sandbox

    vts_sandbox.main(args.rest)


def dev(args: argparse.Namespace) -> None:
    from devkit import devserver
    from devkit.embedded_redis import RedisServerMissing

    try:
        raise SystemExit(devserver.run(port=args.port, sandbox_port=args.sandbox_port))
    except RedisServerMissing as exc:
        sys.stderr.write(f"masking dev: {exc}\n")
        raise SystemExit(2) from None


def logs(args: argparse.Namespace) -> None:
    from service.tools import logtail

    raise SystemExit(logtail.main(args.rest))


def _operator_redis() -> redis.Redis:
    """Redis for an operator command: only ``REDIS_URL`` is read (no VTS credentials)."""
    from service import redis_clients

    try:
        return redis_clients.connect(redis_url_from_env())
    except ConfigurationError as exc:
        sys.stderr.write(f"configuration error: {exc}\n")
        raise SystemExit(2) from None


def _operator_store() -> Store:
    from service.store import Store

    return Store(_operator_redis())


def apps(args: argparse.Namespace) -> None:
    from service.store.apps import AppStore
    from service.tools import appadmin

    raise SystemExit(appadmin.run(AppStore(_operator_redis()), args, sys.stdout, sys.stderr))


def dlq(args: argparse.Namespace) -> None:
    from service.tools import deadletters

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

    from service.tools import deadletters

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
    p.add_argument("--port", type=int, help="the port to listen on (default: PORT, else 8000)")
    p.set_defaults(run=web)

    p = commands.add_parser("worker", help="the dramatiq workers")
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--threads", type=int, default=8)
    p.set_defaults(run=worker)

    p = commands.add_parser("dev", help="everything, for development: Redis, sandbox, web, worker")
    p.add_argument("--port", type=int, help="the web's port (default: PORT, else 8000)")
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

    p = commands.add_parser("apps", help="apps and their keys and notification secrets")
    actions = p.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="every app, its key ids and number of secrets")
    a = actions.add_parser("create", help="a new key for an app (the app is created if new)")
    a.add_argument("name")
    a = actions.add_parser("revoke", help="revoke a managed key by id, or every one of an app")
    a.add_argument("target", metavar="KEY_ID|NAME")
    a = actions.add_parser("secret", help="show an app's notification secrets; rotate them")
    a.add_argument("name")
    change = a.add_mutually_exclusive_group()
    change.add_argument("--rotate", action="store_true", help="a new secret, the old one kept")
    change.add_argument("--drop-previous", action="store_true", help="forget the old one")
    p.set_defaults(run=apps)

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
