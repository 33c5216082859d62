"""``masking worker``: several dramatiq worker processes that start, stop and die as one.

dramatiq's own command line relays its children's output through pipes that only its
main process reads, and that process can exit before its children: a child then blocks
for good on a full pipe, deaf to SIGTERM, holding its messages and whatever sockets it
inherited. Here instead:

- children write their log lines straight to the stdout and stderr they inherit;
- the main process exits only after every child has; a child that overstays the
  shutdown timeout is killed, and so is one that cannot stop on its own (a blocked write);
- a child whose main process is gone stops by itself;
- the metrics listener is bound before forking but closed in every child at once, and
  the metrics directory the main process made is removed when it exits.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import Any

import structlog

from service import logs, memory
from service.settings import Settings

log = structlog.get_logger(__name__)

# Past the shutdown timeout (WORKER_SHUTDOWN_TIMEOUT), how long a child gets before it is
# killed (or kills itself).
KILL_GRACE_SECONDS = 2.0
# How often a child checks that its main process is still there.
PARENT_CHECK_SECONDS = 0.5
# How long the main process may take to say it has stopped, and exit.
FINAL_LINE_SECONDS = 5.0
# Several workers on one host: each takes the first free port from METRICS_PORT on.
METRICS_PORT_SPAN = 10
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# The exit code of a child that had to kill itself, or of a main process that lost a child.
EXIT_FAILED = 1
EXIT_USAGE = 2


class PortUnavailable(Exception):
    """No port of the metrics span could be bound."""


@dataclass(frozen=True)
class Options:
    processes: int
    threads: int
    # From the settings, whose defaults are the only ones.
    metrics_host: str
    metrics_port: int
    shutdown_timeout: float


def run(settings: Settings, *, processes: int, threads: int) -> int:
    """Run the workers until a stop signal or a child's death; the process's exit code."""
    options = Options(
        processes,
        threads,
        metrics_host=settings.metrics_host,
        metrics_port=settings.metrics_port,
        shutdown_timeout=settings.worker_shutdown_timeout,
    )
    directory, made_here = _metrics_directory()
    try:
        logs.configure(fmt=settings.log_format, level=settings.log_level)
        code = _run(options)
    finally:
        if made_here:
            shutil.rmtree(directory, ignore_errors=True)
    # A last line into a pipe nobody reads must not keep the process alive.
    _exit_after(FINAL_LINE_SECONDS)
    log.info("worker_stopped", exit_code=code)
    return code


def _run(options: Options) -> int:
    try:
        listener = _bind_metrics(options.metrics_host, options.metrics_port)
    except PortUnavailable as exc:
        sys.stderr.write(f"configuration error: {exc}\n")
        return EXIT_USAGE
    requested = threading.Event()
    with _signals_blocked():
        children = [_fork(options, listener) for _ in range(options.processes)]
        _on_stop_signals(requested.set)
    port = listener.server_port
    threading.Thread(target=listener.serve_forever, name="metrics", daemon=True).start()
    log.info("worker_started", processes=options.processes, metrics_port=port)
    try:
        return _supervise(children, requested, options.shutdown_timeout)
    finally:
        listener.server_close()


def _supervise(children: list[BaseProcess], requested: threading.Event, timeout: float) -> int:
    """Wait for every child; on a stop request or a child's death, stop them all."""
    code = 0
    deadline: float | None = None
    while alive := [c for c in children if c.exitcode is None]:
        multiprocessing.connection.wait([c.sentinel for c in alive], timeout=0.2)
        died = [c for c in children if c.exitcode is not None and c.exitcode != 0]
        if died and deadline is None:
            log.error("worker_process_died", pid=died[0].pid, exit_code=died[0].exitcode)
            code = EXIT_FAILED
            requested.set()
        if requested.is_set() and deadline is None:
            deadline = time.monotonic() + timeout + KILL_GRACE_SECONDS
            _signal_all(alive, signal.SIGTERM)
        elif deadline is not None and time.monotonic() > deadline:
            log.error("worker_process_killed", pids=[c.pid for c in alive])
            _signal_all(alive, signal.SIGKILL)
            code = EXIT_FAILED
    return code


def _signal_all(children: list[BaseProcess], signum: signal.Signals) -> None:
    for child in children:
        if child.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signum)


def _fork(options: Options, listener: Any) -> BaseProcess:
    context = multiprocessing.get_context("fork")
    child = context.Process(
        target=_child, args=(options, listener, os.getpid()), name="dramatiq-worker"
    )
    child.start()
    return child


def _child(options: Options, listener: Any, parent: int) -> None:
    """A worker process: dramatiq's Worker until told to stop or orphaned, then exit."""
    listener.socket.close()
    requested = threading.Event()
    _on_stop_signals(requested.set)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    import dramatiq

    from workers import boot

    broker = boot.setup()
    broker.emit_after("process_boot")
    importlib.import_module("workers.actors")
    memory.settle()
    worker = dramatiq.Worker(broker, worker_threads=options.threads)
    worker.start()
    while not requested.wait(PARENT_CHECK_SECONDS) and os.getppid() == parent:
        pass
    # From here on nothing may block for good, not even a log line into a full pipe.
    _exit_after(options.shutdown_timeout + KILL_GRACE_SECONDS / 2)
    worker.stop(timeout=int(options.shutdown_timeout * 1000))
    broker.close()
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(0)


def _exit_after(seconds: float) -> None:
    timer = threading.Timer(seconds, os._exit, args=(EXIT_FAILED,))
    timer.daemon = True
    timer.start()


def _on_stop_signals(handler: Callable[[], None]) -> None:
    def on_signal(signum: int, frame: FrameType | None) -> None:
        handler()

    for signum in STOP_SIGNALS:
        signal.signal(signum, on_signal)


@contextlib.contextmanager
def _signals_blocked() -> Any:
    """Stop signals held back while forking, so none lands before its handler is set."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def _bind_metrics(host: str, first_port: int) -> Any:
    """The metrics server, bound to the first free port of the span (not yet serving)."""
    from prometheus_client import CollectorRegistry, multiprocess

    from service.metrics import metrics_server

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    last = first_port + METRICS_PORT_SPAN - 1 if first_port else 0
    for port in range(first_port, last + 1):
        try:
            return metrics_server(registry, host, port)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                reason = f"METRICS_PORT: cannot listen on {host}:{port}: {exc.strerror}"
                raise PortUnavailable(reason) from exc
    raise PortUnavailable(
        f"METRICS_PORT: ports {first_port}-{last} on {host} are all in use "
        "(each worker on a host takes the first free one)"
    )


def _metrics_directory() -> tuple[Path, bool]:
    """prometheus-client's multi-process directory for this tree; True if made here.

    Must be set before prometheus-client is first imported: it picks its mode then.
    """
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    directory = Path(given or tempfile.mkdtemp(prefix="masking-metrics-"))
    for stale in directory.glob("*.db"):
        stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    return directory, not given
