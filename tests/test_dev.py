"""``masking dev`` stops everything it started however it is asked to, Redis included,
and never runs a second Redis on the files of one left running."""

from __future__ import annotations

import os
import signal
from contextlib import ExitStack
from pathlib import Path

import pytest
import redis

from devkit.embedded_redis import EmbeddedRedis
from tests.conftest import wait_until
from tests.test_worker_tree import _alive, _children, _dev_with_banner

pytestmark = pytest.mark.slow

DEV_REDIS = Path(".dev") / "redis"


def _redis_pid(directory: Path) -> int:
    """The pid of the Redis serving the socket in ``directory``."""
    client = redis.Redis(unix_socket_path=str(directory / "redis.sock"))
    try:
        return int(client.info("server")["process_id"])
    finally:
        client.close()


def _descendants(pid: int) -> list[int]:
    found = _children(pid)
    return [*found, *(grandchild for child in found for grandchild in _descendants(child))]


def test_closing_the_terminal_stops_everything(tmp_path: Path) -> None:
    """SIGHUP to dev's process group (the terminal closed) stops every process dev
    started, its embedded Redis included, as Ctrl-C does."""
    with ExitStack() as closing:
        _, _, dev, _ = _dev_with_banner(tmp_path, closing)
        redis_pid = _redis_pid(tmp_path / DEV_REDIS)
        started = _descendants(dev.pid)
        assert redis_pid in started
        os.killpg(dev.pid, signal.SIGHUP)
        dev.wait(60)
        wait_until(lambda: not any(map(_alive, started)), timeout=60)


def test_a_redis_left_running_is_stopped_and_its_data_kept(tmp_path: Path) -> None:
    """A Redis left running on dev's files (by a dev killed outright) is shut down (its
    data saved) before dev starts its own on them, and dev says so."""
    leftover = EmbeddedRedis(tmp_path / DEV_REDIS, persist=True).start()
    try:
        client = redis.Redis(unix_socket_path=str(leftover.socket))
        client.set("kept", "yes")
        client.close()
        with ExitStack() as closing:
            _dev_with_banner(tmp_path, closing)
            assert leftover.pid is not None
            wait_until(lambda: not _alive(leftover.pid or 0), timeout=30)
            said = "".join(path.read_text() for path in tmp_path.glob("dev-*.err"))
            assert f"left running (pid {leftover.pid})" in said, said
            current = redis.Redis(unix_socket_path=str(tmp_path / DEV_REDIS / "redis.sock"))
            assert current.get("kept") == b"yes"
            current.close()
    finally:
        leftover.stop()
