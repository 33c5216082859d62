"""``masking worker`` as a process tree that behaves like one process, and ``masking web``
and ``masking dev`` failing fast on a taken port."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx2
import pytest
import redis

from devkit.embedded_redis import EmbeddedRedis
from service import messages
from service.models import Status
from service.store import Queue, Sessions
from service.store.keys import Keys
from tests.conftest import stored_session, wait_until
from tests.servers import free_port, free_ports
from tests.system import System

pytestmark = pytest.mark.slow

SHUTDOWN_TIMEOUT = 8
# The shutdown timeout, the kill grace and a margin for a loaded machine.
STOP_DEADLINE = SHUTDOWN_TIMEOUT + 2 + 10
MASKING = str(Path(sys.executable).parent / "masking")


class Tree:
    """One ``masking worker`` started with ``System``'s environment."""

    def __init__(self, system: System, tmp: Path, **popen: object) -> None:
        self.env = {
            **system.env,
            "TMPDIR": str(tmp),
            "WORKER_SHUTDOWN_TIMEOUT": str(SHUTDOWN_TIMEOUT),
        }
        self.process = subprocess.Popen(
            [MASKING, "worker", "--processes", "2", "--threads", "2"],
            env=self.env,
            start_new_session=True,
            **popen,  # type: ignore[call-overload]
        )
        self.children: list[int] = []

    def wait_running(self) -> list[int]:
        """Wait until both worker processes are up; return their pids."""
        self.children = wait_until(lambda: _children(self.process.pid) if len(
            _children(self.process.pid)) == 2 else None, timeout=30)  # fmt: skip
        return self.children

    def gone(self) -> bool:
        return self.process.poll() is not None and not any(map(_alive, self.children))

    def kill(self) -> None:
        for pid in [self.process.pid, *self.children]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(10)
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.fixture
def system(redis_url: str, sandbox_url: str, tmp_path: Path) -> Iterator[System]:
    """An environment for workers; the tests start their processes themselves."""
    system = System(redis_url, sandbox_url, tmp_path)
    yield system
    system.stop()


@contextmanager
def _tree(system: System, tmp: Path, **popen: object) -> Iterator[Tree]:
    tree = Tree(system, tmp, **popen)
    try:
        yield tree
    finally:
        tree.kill()


def _metrics(port: int) -> int:
    try:
        return httpx2.get(f"http://127.0.0.1:{port}/metrics", timeout=5).status_code
    except httpx2.TransportError:
        return 0


def _creates_a_session(redis_url: str, name: str) -> None:
    session = stored_session(redis_url, name)
    sessions = Sessions(redis.Redis.from_url(redis_url))

    def active() -> bool:
        found = sessions.get_session(session.id)
        return found is not None and found.status == Status.ACTIVE

    wait_until(active, timeout=30)


def test_sigterm_stops_every_process_of_a_busy_tree(
    system: System, redis_url: str, tmp_path: Path
) -> None:
    """SIGTERM to the main process while the workers are busy: every process of the tree
    is gone within the shutdown timeout, the main one last, and no metrics directory is
    left behind."""
    system.sandbox.put("/_sandbox/faults", json={"latency_ms": 500})
    with _tree(system, tmp_path) as tree:
        children = tree.wait_running()
        for index in range(8):
            stored_session(redis_url, f"ses_busy{index}")
        wait_until(lambda: system.sandbox.get("/_sandbox/stats").json()["received"], timeout=30)
        tree.process.terminate()
        assert tree.process.wait(STOP_DEADLINE) == 0
        assert not any(map(_alive, children))
    assert not list(tmp_path.glob("masking-metrics-*"))


def test_sigterm_stops_the_tree_while_redis_is_down(system: System, tmp_path: Path) -> None:
    """With its Redis gone, the tree still stops on SIGTERM within the shutdown timeout."""
    server = EmbeddedRedis(tmp_path / "redis").start()
    system.redis_url = server.url
    try:
        with _tree(system, tmp_path) as tree:
            children = tree.wait_running()
            wait_until(lambda: _metrics(system.metrics_port) == 200, timeout=30)
            server.stop()
            tree.process.terminate()
            tree.process.wait(STOP_DEADLINE)
            assert not any(map(_alive, children))
    finally:
        server.stop()


def test_workers_stop_when_their_main_process_is_killed(system: System, tmp_path: Path) -> None:
    """A worker process whose main process died stops by itself, promptly."""
    with _tree(system, tmp_path) as tree:
        children = tree.wait_running()
        os.kill(tree.process.pid, signal.SIGKILL)
        tree.process.wait(10)
        wait_until(lambda: not any(map(_alive, children)), timeout=STOP_DEADLINE)


def test_a_full_log_pipe_cannot_keep_the_tree_alive(
    system: System, redis_url: str, tmp_path: Path
) -> None:
    """Workers blocked writing logs into a pipe nobody reads still exit after SIGTERM."""
    client = redis.Redis.from_url(redis_url)
    queue = Queue(client)
    with _tree(system, tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as tree:
        children = tree.wait_running()
        # Each of these logs two lines: far more than the pipe's 64 KiB.
        for index in range(2000):
            queue.enqueue(messages.APPLY_EVENT.message(messages.EventRef(f"evt_missing{index}")))
        wait_until(lambda: client.llen(Keys.queue("events")) < 1900, timeout=30)
        tree.process.terminate()
        tree.process.wait(STOP_DEADLINE)
        assert not any(map(_alive, children))


def test_a_worker_started_right_after_another_stopped_runs(
    system: System, redis_url: str, tmp_path: Path
) -> None:
    """Stop one tree, start the next at once: it serves metrics and does work."""
    with _tree(system, tmp_path) as first:
        first.wait_running()
        wait_until(lambda: _metrics(system.metrics_port) == 200, timeout=30)
        first.process.terminate()
        assert first.process.wait(STOP_DEADLINE) == 0
    with _tree(system, tmp_path) as second:
        second.wait_running()
        wait_until(lambda: _metrics(system.metrics_port) == 200, timeout=30)
        _creates_a_session(redis_url, "ses_aftera")
        assert second.process.poll() is None


def test_two_workers_on_one_host_both_run(system: System, tmp_path: Path) -> None:
    """Two trees with the same environment both run, each serving its metrics on the
    first free port from METRICS_PORT on."""
    with ExitStack() as stack:
        trees = [stack.enter_context(_tree(system, tmp_path)) for _ in range(2)]
        for tree in trees:
            tree.wait_running()
        ports = (system.metrics_port, system.metrics_port + 1)
        wait_until(lambda: all(_metrics(port) == 200 for port in ports), timeout=30)
        assert all(tree.process.poll() is None for tree in trees)


def test_a_metrics_port_that_cannot_be_had_is_named(system: System, tmp_path: Path) -> None:
    """With every port of its span taken, the worker exits 2 naming METRICS_PORT."""
    with ExitStack() as stack:
        for offset in range(10):
            sock = stack.enter_context(socket.socket())
            sock.bind(("0.0.0.0", system.metrics_port + offset))
            sock.listen()
        with _tree(system, tmp_path, stderr=subprocess.PIPE) as tree:
            _, err = tree.process.communicate(timeout=30)
    assert tree.process.returncode == 2
    assert b"METRICS_PORT" in err
    assert b"Traceback" not in err


@contextmanager
def _taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_web_on_a_taken_port_exits_at_once_naming_port(system: System) -> None:
    """``masking web`` on a port in use exits 2 with a message naming PORT."""
    with _taken_port() as port:
        started = time.monotonic()
        done = subprocess.run(
            [MASKING, "web", "--host", "127.0.0.1"],
            env={**system.env, "PORT": str(port)},
            capture_output=True,
            timeout=30,
            check=False,
        )
        seconds = time.monotonic() - started
    assert done.returncode == 2, done.stderr
    assert b"PORT" in done.stderr
    assert b"Traceback" not in done.stderr
    print(f"masking web on a taken port exited in {seconds:.2f} s")


def test_dev_on_a_taken_port_exits_without_a_banner(tmp_path: Path) -> None:
    """``masking dev`` refuses a taken PORT before starting anything, and says so."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VTS_", "REDIS_"))}
    with _taken_port() as port:
        done = subprocess.run(
            [MASKING, "dev"],
            env={**env, "PORT": str(port)},
            cwd=tmp_path,
            capture_output=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 2
    assert b"PORT" in done.stderr
    assert b"is running" not in done.stdout


def test_dev_starts_everything_and_its_banner_works(tmp_path: Path) -> None:
    """``masking dev`` prints its banner only once every process answers, and the banner's
    commands create a session and simulate a call that the session counts."""
    with ExitStack() as closing:
        env, sandbox_port, _, banner = _dev_with_banner(tmp_path, closing)
        key = re.search(r"API key: +(\S+)", banner)
        token = re.search(r"token (\S+)\)", banner)
        assert key, banner
        assert token, banner
        assert f"http://127.0.0.1:{env['METRICS_PORT']}/metrics" in banner
        api = httpx2.Client(
            base_url=f"http://127.0.0.1:{env['PORT']}",
            headers={"Authorization": f"Bearer {key[1]}"},
            timeout=30,
        )
        closing.callback(api.close)
        body = {"first_party": "+14155552671", "second_party": "+14155552672"}
        session = api.post("/v1/sessions", json=body, headers={"Prefer": "wait=20"}).json()
        assert session["status"] == "active"
        calls = f"http://127.0.0.1:{sandbox_port}/_sandbox/sessions/{session['vts_session_uuid']}"
        auth = ("MADEVSANDBOX0000001", token[1])
        answer = httpx2.post(calls + "/calls", json={"caller": "first"}, auth=auth, timeout=30)
        assert answer.status_code < 300, answer.text
        url = f"/v1/sessions/{session['id']}"
        wait_until(lambda: api.get(url).json()["interaction_count"] == 1, timeout=60)


def _interrupt(dev: subprocess.Popen[bytes]) -> None:
    """Ctrl-C, as a terminal sends it to the whole foreground group (if any is left)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(dev.pid, signal.SIGINT)
    dev.wait(60)
    assert dev.stdout is not None
    dev.stdout.close()


def _dev_with_banner(
    tmp_path: Path, closing: ExitStack
) -> tuple[dict[str, str], int, subprocess.Popen[bytes], str]:
    """``masking dev`` started on free ports, and its banner. Ports are free when chosen
    but the other test processes start servers too: when one of ours was taken before dev
    could check it (dev then refuses, naming it), it starts again on others."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("VTS_", "REDIS_"))}
    for attempt in range(3):
        env = base | {"PORT": str(free_port()), "METRICS_PORT": str(free_ports(10))}
        sandbox_port = free_port()
        errors = tmp_path / f"dev-{attempt}.err"
        with errors.open("wb") as sink:
            dev = subprocess.Popen(
                [MASKING, "dev", "--sandbox-port", str(sandbox_port)],
                env=env,
                cwd=tmp_path,
                stdout=subprocess.PIPE,
                stderr=sink,
                start_new_session=True,
            )
        closing.callback(_interrupt, dev)
        banner = _read_banner(dev)
        if banner is not None:
            return env, sandbox_port, dev, banner
        said = errors.read_text()
        if "is not free" not in said:
            raise AssertionError(f"masking dev exited before its banner: {said[-2000:]}")
    raise AssertionError("masking dev found a port taken three times")


def _read_banner(dev: subprocess.Popen[bytes]) -> str | None:
    """The banner, or None when dev exits before printing it."""
    assert dev.stdout is not None
    lines = []
    for line in iter(dev.stdout.readline, b""):
        lines.append(line.decode())
        if line.startswith(b"Ctrl-C"):
            # Keep reading, so that the processes never block on a full pipe.
            threading.Thread(target=dev.stdout.read, daemon=True).start()
            return "".join(lines)
    return None
