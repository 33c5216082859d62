"""The ``masking`` command line: one parser, shared conventions, errors on one line."""

from __future__ import annotations

import functools
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.tools import cli
from tests.servers import serve

MASKING = str(Path(sys.executable).parent / "masking")


def _refused(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run ``masking ARGV``, expect exit status 2, return its one line of error."""
    with pytest.raises(SystemExit) as stopped:
        cli.main(list(argv))
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err


def test_a_time_without_a_zone_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """--since without a zone is not read as this machine's local time: it is refused."""
    err = _refused(capsys, "replay-webhooks", "--since", "2026-11-27T10:00:00")
    assert err.startswith("masking replay-webhooks: argument --since:")
    assert "no time zone" in err


def test_a_time_that_is_not_iso_8601_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """A malformed --since is one line naming the flag and an example, no traceback."""
    err = _refused(capsys, "replay-webhooks", "--since", "yesterday")
    assert "not an ISO 8601 time" in err


def test_times_keep_their_zone() -> None:
    """Z and offsets are read as given."""
    args = cli.parse(["replay-webhooks", "--since", "2026-11-27T10:00:00Z"])
    assert args.since == datetime(2026, 11, 27, 10, tzinfo=UTC)
    args = cli.parse(
        ["replay-webhooks", "--since", "2026-11-27T10:00:00+01:00", "--until", "2026-11-28T00:00Z"]
    )
    assert args.since == datetime(2026, 11, 27, 10, tzinfo=timezone(timedelta(hours=1)))
    assert args.until == datetime(2026, 11, 28, tzinfo=UTC)


def test_until_needs_since(capsys: pytest.CaptureFixture[str]) -> None:
    """--until alone (with --id) is refused, not ignored."""
    err = _refused(capsys, "replay-webhooks", "--id", "evt_1", "--until", "2026-11-27T10:00:00Z")
    assert "--until goes with --since" in err


def test_web_takes_its_port_as_a_flag() -> None:
    """``masking web --port`` (PORT stays the default); a port out of range is refused."""
    assert cli.parse(["web", "--host", "127.0.0.1", "--port", "8081"]).port == 8081
    assert cli.parse(["web"]).port is None


@pytest.mark.parametrize(
    "argv",
    [
        ["web", "--port", "0"],
        ["web", "--port", "http"],
        ["worker", "--processes", "0"],
        ["nothing"],
        [],
        ["dlq", "list", "--bogus"],
    ],
)
def test_usage_errors_are_one_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    """Bad flags, values or commands: one line on stderr and exit status 2."""
    err = _refused(capsys, *argv)
    assert err.startswith("masking")


def test_every_subcommand_takes_help(capsys: pytest.CaptureFixture[str]) -> None:
    """One parser: -h works for each subcommand, the forwarding ones included."""
    for command in ("web", "worker", "dev", "sandbox", "logs", "dlq", "replay-webhooks", "apps"):
        with pytest.raises(SystemExit) as stopped:
            cli.main([command, "-h"])
        assert stopped.value.code == 0
        assert f"masking {command}" in capsys.readouterr().out


def test_sandbox_and_logs_flags_are_parsed_by_the_one_parser() -> None:
    """Options before a positional work as anywhere else (no forwarding of leftovers)."""
    args = cli.parse(["sandbox", "--port", "9000", "--auth-id", "a", "--auth-token", "t"])
    assert (args.host, args.port, args.auth_id) == ("127.0.0.1", 9000, "a")
    args = cli.parse(["logs", "--level", "WARNING", "-f", "service.log", "-n", "5"])
    assert (args.level, args.follow, args.file, args.lines) == ("warning", True, "service.log", 5)


def test_a_sandbox_value_out_of_range_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """The sandbox's own checks (a pool of 1 to 10000 numbers) end in one line too."""
    err = _refused(capsys, "sandbox", "--auth-id", "a", "--auth-token", "t", "--pool-size", "0")
    assert "1 to 10000" in err


def test_redis_out_of_reach_is_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator command whose Redis does not answer says so in one line, no traceback."""
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:9/0")
    err = _refused(capsys, "dlq", "list")
    assert err.startswith("masking dlq: Redis:")


def test_the_installed_command_refuses_the_same_way(tmp_path: Path) -> None:
    """The ``masking`` script itself: exit 2, one line, no traceback."""
    done = subprocess.run(
        [MASKING, "replay-webhooks", "--since", "2026-11-27 10:00"],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1
    assert "no time zone" in done.stderr


def test_dev_passes_the_sandbox_a_token_that_starts_with_a_dash() -> None:
    """``masking dev`` makes a random sandbox token, which may start with "-": the sandbox
    still gets it as its token (it once took it for an option and refused to start)."""
    from devkit import devserver

    command = devserver.sandbox_command(8025, "MADEVSANDBOX0000001", "-x_Y-token")
    assert command[:3] == [sys.executable, "-m", "service"]
    args = cli.parse(command[3:])
    assert (args.auth_id, args.auth_token, args.port) == ("MADEVSANDBOX0000001", "-x_Y-token", 8025)


def test_dev_refuses_a_port_another_server_took_after_the_check() -> None:
    """Another server may take PORT between dev's check that it is free and dev's web
    binding it, and answer the readiness probe in its place (dev once printed its banner
    then, and the banner's key got 401): dev asks the server on PORT to take its API key,
    and says the port is not free when it refuses."""
    from devkit import devserver

    async def only(status: int, request: Request) -> Response:
        return JSONResponse({"status": status}, status_code=status)

    for status, ours in ((401, False), (404, False), (200, True)):
        app = Starlette(routes=[Route("/{path:path}", functools.partial(only, status))])
        with serve(app) as url:
            env = {"PORT": url.rpartition(":")[2], "API_KEYS": "app:dev_key"}
            if ours:
                devserver.confirm_own_web(env)
            else:
                with pytest.raises(devserver.Unavailable, match="is not free"):
                    devserver.confirm_own_web(env)


@pytest.mark.parametrize(
    "argv",
    [
        ["apps", "create", "Not A Name"],
        ["apps", "revoke", "0123456789ab"],
        ["apps", "secret", "nobody"],
        ["apps", "secret", "nobody", "--rotate"],
    ],
)
def test_apps_refusals_are_one_line_with_status_2(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    redis_url: str,
    argv: list[str],
) -> None:
    """`masking apps` refusing a name, key or app: exit 2, one line naming the command."""
    monkeypatch.setenv("REDIS_URL", redis_url)
    err = _refused(capsys, *argv)
    assert err.startswith("masking apps: ")


def test_logs_of_a_file_it_cannot_read_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`masking logs` given a directory (or any file it cannot read): one line, exit 2."""
    err = _refused(capsys, "logs", str(tmp_path))
    assert err.startswith("masking logs: ")
    assert str(tmp_path) in err


def test_sandbox_on_a_taken_port_is_one_line(tmp_path: Path) -> None:
    """`masking sandbox` on a port in use: one line naming --port, exit 2, no traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [MASKING, "sandbox", "--auth-id", "MA1", "--auth-token", "t", "--port", str(port)],
            capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
        )  # fmt: skip
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("masking sandbox: ")
    assert "--port" in line
