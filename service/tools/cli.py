"""The ``masking`` command. The processes: ``web`` and ``worker``; for development: ``dev``
(everything on one machine) and ``sandbox`` (a stand-in for VTS); for operators: ``logs``
(filter JSON log lines), and ``dlq``, ``replay-webhooks`` and ``apps``, which need only
``REDIS_URL``.

One parser serves every subcommand, with shared conventions: ``--host``/``--port`` wherever
something listens (the web's port defaults to ``PORT``), times in ISO 8601 with a zone,
and an error is one line on standard error with exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import socket
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from types import ModuleType
from typing import TYPE_CHECKING, Any, NoReturn

import redis

from service.errors import ConfigurationError, ServiceError
from service.settings import Settings, redis_url_from_env
from service.tools.logtail import LEVELS
from service.tools.terminal import printable

if TYPE_CHECKING:
    from service.store import DeadLetters


class UsageError(ServiceError):
    """A command cannot do what it was asked; the message says why and what to do."""


class Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (and exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see: {self.prog} -h)\n")


# --- conventions shared by the subcommands -------------------------------------------------


def iso_time(text: str) -> datetime:
    """An ISO 8601 time with its zone (``Z`` or an offset): a time without one is refused
    rather than read as this machine's local time."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an ISO 8601 time: {text!r} (e.g. 2026-11-27T10:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} has no time zone: add Z or an offset such as +01:00"
        )
    return moment


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"not a port number (1 to 65535): {text!r}")
    return int(text)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a whole number of at least 1: {text!r}")
    return int(text)


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"not a count of lines: {text!r}")
    return int(text)


def _listening(
    p: argparse.ArgumentParser, *, host: str | None, port: int | None, what: str
) -> None:
    """The ``--host``/``--port`` pair of a command that listens (``host`` None: no --host)."""
    if host is not None:
        p.add_argument("--host", default=host, help=f"the address to listen on (default {host})")
    p.add_argument("--port", type=_port, default=port, help=what)


# --- the commands ----------------------------------------------------------------------------


def _settings() -> Settings:
    return Settings.from_env()


def web(args: argparse.Namespace) -> None:
    settings = _settings()
    named = "--port" if args.port is not None else "PORT"
    port = settings.port if args.port is None else args.port
    if port == settings.admin_port:
        raise ConfigurationError("ADMIN_PORT", f"must differ from {named} (both are {port})")
    listener = _listen(args.host, port, named)
    admin_listener = _listen(args.host, settings.admin_port, "ADMIN_PORT")

    from service import logs, memory
    from service.web.app import create_admin_app, create_app

    logs.configure(fmt=settings.log_format, level=settings.log_level)
    from service.web import limits

    limits.check_descriptors(settings.web_max_connections)
    app = create_app(settings)
    admin = create_admin_app(settings)
    memory.settle()
    public_server, admin_server = _server(app, settings), _server(admin, settings)
    # The loop uvicorn's own run() would pick (uvloop where it is installed).
    with asyncio.Runner(loop_factory=public_server.config.get_loop_factory()) as runner:
        runner.run(_serve_both(public_server, listener, admin_server, admin_listener))


def _server(app: Any, settings: Settings) -> Any:
    """A uvicorn server of ``app`` with the web's limits (see service/web/limits.py)."""
    import uvicorn

    from service.web import limits

    config = uvicorn.Config(
        app,
        http=limits.protocol(
            max_header_bytes=settings.web_max_header_bytes,
            header_timeout=settings.web_header_timeout,
            public_base_url=settings.public_base_url,
        ),
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=20,
        server_header=False,
        # uvicorn answers 503 once its connections (counting the asking one) reach the
        # limit: one more makes WEB_MAX_CONNECTIONS the number of connections served.
        limit_concurrency=settings.web_max_connections + 1,
        timeout_keep_alive=settings.web_keepalive_timeout,  # type: ignore[arg-type]
    )
    return uvicorn.Server(config)


async def _serve_both(
    public: Any, listener: socket.socket, admin: Any, admin_listener: socket.socket
) -> None:
    """Both servers in one event loop, stopping together: each installs uvicorn's signal
    handlers, and the one that stops first (a signal, a failed start-up) stops the other."""

    async def serve(server: Any, sock: socket.socket, other: Any) -> None:
        try:
            await server.serve(sockets=[sock])
        finally:
            other.should_exit = True

    await asyncio.gather(serve(public, listener, admin), serve(admin, admin_listener, public))


def _listen(host: str, port: int, named: str) -> socket.socket:
    """The web's socket, bound before anything starts, so a taken port stops us at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        raise ConfigurationError(named, f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return listener


def worker(args: argparse.Namespace) -> None:
    settings = _settings()
    # The core never imports the workers: the command reaches them by name.
    supervisor = importlib.import_module("workers.supervisor")
    raise SystemExit(supervisor.run(settings, processes=args.processes, threads=args.threads))


def _development(name: str) -> ModuleType:
    """A module of ``devkit``, which only a source checkout has (not the production image)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != "devkit":
            raise
        raise UsageError(
            "this is a development command; run it from a source checkout (pip install -e '.[dev]')"
        ) from None


def dev(args: argparse.Namespace) -> None:
    devserver = _development("devkit.devserver")
    from devkit.embedded_redis import RedisServerMissing

    try:
        raise SystemExit(devserver.run(port=args.port, sandbox_port=args.sandbox_port))
    except RedisServerMissing as exc:
        raise UsageError(str(exc)) from None


def sandbox(args: argparse.Namespace) -> None:
    vts_sandbox = _development("devkit.sandbox.server")

    try:
        config = vts_sandbox.SandboxConfig(
            auth_id=args.auth_id,
            auth_token=args.auth_token,
            dialect=args.dialect,
            number_pool=vts_sandbox.number_range(args.pool_size),
            rate_limit=args.rate_limit,
            rate_window=args.rate_window,
            event_family=args.event_family,
            billing_increment=args.billing_increment,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    # uvicorn would report a taken port in several lines and exit 1 or 3.
    _listen(args.host, args.port, "--port").close()
    vts_sandbox.serve(config, host=args.host, port=args.port)


def logs(args: argparse.Namespace) -> None:
    from service.tools import logtail

    try:
        status = logtail.run_command(args, stdin=sys.stdin, stdout=sys.stdout, environ=os.environ)
    except FileNotFoundError as exc:
        raise UsageError(f"no such file: {exc.filename}") from None
    except (IsADirectoryError, PermissionError) as exc:
        raise UsageError(f"cannot read {exc.filename}: {exc.strerror}") from None
    raise SystemExit(status)


def _operator_redis() -> redis.Redis:
    """Redis for an operator command: only ``REDIS_URL`` is read (no VTS credentials)."""
    from service import redis_clients

    return redis_clients.connect(redis_url_from_env())


def _operator_dead_letters() -> DeadLetters:
    from service.store import DeadLetters

    return DeadLetters(_operator_redis())


def apps(args: argparse.Namespace) -> None:
    from service.store.apps import AppStore
    from service.tools import appadmin

    raise SystemExit(appadmin.run(AppStore(_operator_redis()), args, sys.stdout, sys.stderr))


def dlq(args: argparse.Namespace) -> None:
    from service.tools import deadletters

    store = _operator_dead_letters()
    if args.action == "list":
        lines = [letter.summary() + "\n" for letter in deadletters.dead_letters(store)]
        sys.stdout.write("".join(lines) or "no dead letters\n")
        return
    if args.all == (args.id is not None):
        raise UsageError(f"dlq {args.action} takes an ID or --all (see: masking dlq list)")
    letters = (
        list(deadletters.dead_letters(store))
        if args.all
        else [d for d in [deadletters.find(store, args.id)] if d is not None]
    )
    if not letters and args.all:
        sys.stdout.write("no dead letters\n")
        return
    if not letters:
        raise UsageError("no such dead letter (see: masking dlq list)")
    for letter in letters:
        if args.action == "show":
            sys.stdout.write(letter.details() + "\n")
        elif args.action == "discard":
            if deadletters.discard(store, letter):
                sys.stdout.write(f"discarded {letter.redis_id} ({letter.message['actor_name']})\n")
        elif deadletters.replay(store, letter):
            replayed = f"replayed {letter.redis_id} ({letter.message['actor_name']})"
            sys.stdout.write(printable(replayed) + "\n")


def notifications(args: argparse.Namespace) -> None:
    from service.store.notifications import NotificationStore
    from service.tools import notificationadmin

    store = NotificationStore(_operator_redis())
    raise SystemExit(notificationadmin.run(store, args, sys.stdout, sys.stderr))


def replay_webhooks(args: argparse.Namespace) -> None:
    from service.store import Queue, StoredEvents
    from service.tools import deadletters

    if args.until is not None and args.since is None:
        raise UsageError("--until goes with --since")
    client = _operator_redis()
    events = StoredEvents(client)
    if args.id:
        ids = list(args.id)
    else:
        until = int(args.until.timestamp() * 1000) if args.until else "+inf"
        ids = events.webhooks_between(int(args.since.timestamp() * 1000), until)
    count = deadletters.replay_webhooks(events, Queue(client), ids)
    sys.stdout.write(f"queued {count} stored callbacks again\n")


# --- the parser ------------------------------------------------------------------------------


def _command(
    commands: argparse._SubParsersAction[Parser],
    name: str,
    run: Callable[[argparse.Namespace], None],
    summary: str,
) -> Parser:
    p = commands.add_parser(name, help=summary, description=summary)
    p.set_defaults(run=run)
    return p


def build_parser() -> Parser:
    parser = Parser(
        prog="masking",
        description="The masking service: its processes, development tools and operator commands.",
        epilog="Every subcommand: --host/--port where something listens, ISO 8601 times with "
        "their zone, errors on one line with exit status 2. See: masking COMMAND -h.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _command(commands, "web", web, "the HTTP front (uvicorn)")
    _listening(
        p, host="0.0.0.0", port=None, what="the port to listen on (default: PORT, else 8000)"
    )

    p = _command(commands, "worker", worker, "the dramatiq worker processes")
    p.add_argument("--processes", type=_positive, default=2, help="worker processes (default 2)")
    p.add_argument("--threads", type=_positive, default=8, help="threads in each (default 8)")

    p = _command(commands, "dev", dev, "everything, for development: Redis, sandbox, web, worker")
    _listening(p, host=None, port=None, what="the web's port (default: PORT, else 8000)")
    p.add_argument("--sandbox-port", type=_port, default=8025, help="the sandbox's (default 8025)")

    _sandbox_command(commands)
    _logs_command(commands)
    _dlq_command(commands)

    p = _command(commands, "replay-webhooks", replay_webhooks, "queue stored VTS callbacks again")
    chosen = p.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--id", action="append", help="a callback id (repeatable)")
    chosen.add_argument(
        "--since",
        type=iso_time,
        metavar="TIME",
        help="callbacks received since then (ISO 8601 with a zone)",
    )
    p.add_argument(
        "--until",
        type=iso_time,
        metavar="TIME",
        help="... and until then (ISO 8601 with a zone; default: now)",
    )

    _apps_command(commands)
    _notifications_command(commands)
    return parser


def _sandbox_command(commands: argparse._SubParsersAction[Parser]) -> None:
    p = _command(commands, "sandbox", sandbox, "the VTS sandbox (development, tests, demos)")
    _listening(p, host="127.0.0.1", port=8025, what="the port to listen on (default 8025)")
    p.add_argument("--auth-id", required=True, help="the Auth ID clients must use")
    p.add_argument("--auth-token", required=True, help="the Auth Token clients must use")
    p.add_argument(
        "--dialect",
        choices=["envelope", "bare"],
        default="envelope",
        help="how answers are shaped (default envelope)",
    )
    p.add_argument("--pool-size", type=int, default=50, help="virtual numbers, 1 to 10000")
    p.add_argument("--rate-limit", type=int, default=300, help="requests per window")
    p.add_argument("--rate-window", type=float, default=5.0, help="seconds")
    p.add_argument(
        "--event-family",
        choices=["hangup", "complete"],
        default="hangup",
        help="which session events a call sends (default hangup)",
    )
    p.add_argument("--billing-increment", type=int, default=60, help="seconds a leg is billed by")


def _logs_command(commands: argparse._SubParsersAction[Parser]) -> None:
    p = _command(commands, "logs", logs, "filter and pretty-print JSON log lines")
    p.add_argument("file", nargs="?", help="a log file (default: standard input)")
    p.add_argument(
        "-f", "--follow", action="store_true", help="print lines as they are added to FILE"
    )
    p.add_argument(
        "-n",
        "--lines",
        type=_count,
        default=0,
        metavar="N",
        help="with -f: first print the last N lines of FILE (default 0: only new ones)",
    )
    p.add_argument("--session", help="our session id or VTS's SessionUUID")
    p.add_argument("--request", help="a request id")
    p.add_argument(
        "--level", type=str.lower, choices=list(LEVELS), default="debug", help="minimum level"
    )
    p.add_argument("--event", action="append", default=[], help="name or glob; repeatable")
    p.add_argument("--actor", help="a dramatiq actor name")
    p.add_argument(
        "--color",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="default: on a terminal, unless NO_COLOR is set",
    )
    p.add_argument("--json-only", action="store_true", help="drop non-JSON lines")
    p.add_argument("--raw", action="store_true", help="print matching lines as JSON")


def _dlq_command(commands: argparse._SubParsersAction[Parser]) -> None:
    p = _command(
        commands, "dlq", dlq,
        "dead letters: list, show ID|--all, replay ID|--all, discard ID|--all",
    )  # fmt: skip
    p.add_argument("action", choices=["list", "show", "replay", "discard"])
    p.add_argument("id", nargs="?", help="a dead letter's id (from: masking dlq list)")
    p.add_argument("--all", action="store_true", help="every dead letter (show, replay, discard)")


def _apps_command(commands: argparse._SubParsersAction[Parser]) -> None:
    p = _command(commands, "apps", apps, "apps and their keys and notification secrets")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("list", help="every app, its key ids and number of secrets")
    a = actions.add_parser("create", help="a new key for an app (the app is created if new)")
    a.add_argument("name")
    a = actions.add_parser("revoke", help="revoke a managed key by id, or every key of an app")
    # A key id and an app name may look alike: which one is meant is said, never guessed.
    target = a.add_mutually_exclusive_group(required=True)
    target.add_argument("key_id", nargs="?", metavar="KEY_ID", help="a key id (apps list)")
    target.add_argument("--app", metavar="NAME", help="revoke every managed key of NAME")
    a = actions.add_parser(
        "enable", help="enable an app's notification endpoints disabled for failing or 410"
    )
    a.add_argument("name")
    a = actions.add_parser("secret", help="show an app's notification secrets; rotate them")
    a.add_argument("name")
    change = a.add_mutually_exclusive_group()
    change.add_argument("--rotate", action="store_true", help="a new secret, the old one kept")
    change.add_argument("--drop-previous", action="store_true", help="forget the old one")


def _notifications_command(commands: argparse._SubParsersAction[Parser]) -> None:
    p = _command(
        commands, "notifications", notifications,
        "notifications to apps: list, show ID, redeliver ID, recover --app A --since T",
    )  # fmt: skip
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = actions.add_parser("list", help="notifications, oldest first, with their state")
    a.add_argument("--app", help="only this app's")
    a.add_argument("--session", help="only this session's")
    a.add_argument("--state", choices=["pending", "delivered", "failed", "discarded"])
    a = actions.add_parser("show", help="one notification and every attempt")
    a.add_argument("id")
    a = actions.add_parser("redeliver", help="an attempt now, with the same webhook-id")
    a.add_argument("id")
    a = actions.add_parser("recover", help="an attempt now for each not delivered since T")
    a.add_argument("--app", required=True)
    a.add_argument(
        "--since", type=iso_time, required=True, metavar="TIME",
        help="created since then (ISO 8601 with a zone)",
    )  # fmt: skip


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def fail(command: str, message: str) -> NoReturn:
    """End ``masking COMMAND`` with ``message`` on one line and exit status 2."""
    sys.stderr.write(printable(f"masking {command}: {message}") + "\n")
    raise SystemExit(2)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse(argv)
    try:
        args.run(args)
    except ConfigurationError as exc:
        fail(args.command, f"configuration error: {exc}")
    except ServiceError as exc:
        fail(args.command, str(exc))
    except redis.RedisError as exc:
        fail(args.command, f"Redis: {type(exc).__name__}: {exc} (is REDIS_URL right?)")
