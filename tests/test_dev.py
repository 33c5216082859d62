"""``masking dev`` stops everything it started however it is asked to, Redis included,
and never runs a second Redis on the files of one left running."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from contextlib import ExitStack
from pathlib import Path

import pytest
import redis

from devkit import devserver
from devkit.embedded_redis import EmbeddedRedis
from tests.conftest import wait_until
from tests.system import procfile
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


def test_dev_runs_the_procfile_worker() -> None:
    """dev's worker is the Procfile's, flag for flag; its web the Procfile's, on loopback."""
    assert ["masking", *devserver.WORKER_ARGS] == procfile()["worker"]
    assert ["masking", *devserver.WEB_ARGS] == [*procfile()["web"], "--host", "127.0.0.1"]


def _shell(line: str) -> str:
    """Run ``line`` as pasted into a shell; its output."""
    done = subprocess.run(
        ["bash", "-c", line], capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout


def test_the_banner_lines_work_as_printed(tmp_path: Path) -> None:
    """Every curl line of the banner runs as pasted, with no placeholder to fill in: the
    call it simulates is counted in the session its next line shows, and its create
    makes an active session."""
    with ExitStack() as closing:
        _, _, _, banner = _dev_with_banner(tmp_path, closing)
        lines = [line.strip() for line in banner.splitlines() if line.strip().startswith("curl")]
        # A placeholder is a path segment such as SESSION_ID or VTS_SESSION_UUID.
        assert not [line for line in lines if re.search(r"/[A-Z][A-Z_]+(?=[/'\s]|$)", line)]
        call, show, timeline, create, listing = lines
        assert "_sandbox" in call
        _shell(call)
        wait_until(lambda: json.loads(_shell(show))["interaction_count"] == 1, timeout=60)
        assert json.loads(_shell(timeline))["data"]
        assert json.loads(_shell(create))["status"] == "active"
        assert len(json.loads(_shell(listing))["data"]) == 2
