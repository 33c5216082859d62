"""``masking logs``: filters, rendering, masking and ``--follow`` on a growing file."""

from __future__ import annotations

import io
import itertools
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.tools import logtail
from tests.conftest import wait_until

ROOT = Path(__file__).resolve().parents[1]
PHONE = "+14155552671"
TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/app/workers/sessions.py", line 42, in create\n'
    "    raise VtsRejected(reason)\n"
    f"service.errors.VtsRejected: invalid number {PHONE}"
)


def _line(event: str, level: str = "info", **fields: Any) -> str:
    record = {"event": event, "level": level, "timestamp": "2025-11-27T22:30:01.123456Z"}
    return json.dumps(record | fields)


SAMPLE = [
    _line("request_received", logger="service.web.api", request_id="req-a", session_id="ses_a"),
    _line("session_requested", request_id="req-a", session_id="ses_a", first_party="***2671"),
    _line("request_received", logger="service.web.api", request_id="req-b", session_id="ses_b"),
    _line("message_processed", "debug", actor="create_session", session_id="ses_a"),
    "INFO:     Started server process [7]",
    _line("vts_unavailable", "warning", actor="create_session", session_id="ses_b", status=503),
    _line(
        "session_created",
        actor="create_session",
        request_id="req-a",
        session_id="ses_a",
        vts_session_uuid="0f8e5c7a-1111-4c2b-9d3e-123456789abc",
        message_id="msg-1",
    ),
    _line(
        "session_failed", "error", actor="create_session", session_id="ses_b", exception=TRACEBACK
    ),
    _line("vts_callback_received", session_id="ses_a", payload=f"From={PHONE}"),
    f"raw crash line: could not dial {PHONE}",
]


def _run(*argv: str, lines: list[str] = SAMPLE) -> list[str]:
    out = io.StringIO()
    status = logtail.main(
        [*argv, "--no-color"], stdin=io.StringIO("\n".join(lines) + "\n"), stdout=out
    )
    assert status == 0
    return out.getvalue().splitlines()


def _events(output: list[str]) -> list[str]:
    """The event name of each pretty line (the third word), skipping other lines."""
    return [line.split()[2] for line in output if line[:4].isdigit()]


def test_without_filters_every_line_is_printed() -> None:
    """With no filter every JSON line is rendered and every other line passes through."""
    output = _run()
    assert len(_events(output)) == 8
    assert "INFO:     Started server process [7]" in output


def test_session_filter_keeps_that_session_only() -> None:
    """--session keeps the lines of one session (and the non-JSON lines)."""
    output = _run("--session", "ses_a", "--json-only")
    assert _events(output) == [
        "request_received",
        "session_requested",
        "message_processed",
        "session_created",
        "vts_callback_received",
    ]


def test_session_filter_accepts_the_vts_session_uuid() -> None:
    """--session also matches VTS's SessionUUID."""
    output = _run("--session", "0f8e5c7a-1111-4c2b-9d3e-123456789abc", "--json-only")
    assert _events(output) == ["session_created"]


def test_request_filter_keeps_that_request_only() -> None:
    """--request keeps the lines that carry that request id, from web and worker alike."""
    output = _run("--request", "req-a", "--json-only")
    assert _events(output) == ["request_received", "session_requested", "session_created"]


def test_level_filter_is_a_minimum() -> None:
    """--level warning keeps warnings and errors, in any case spelling."""
    output = _run("--level", "WARNING", "--json-only")
    assert _events(output) == ["vts_unavailable", "session_failed"]


def test_event_filter_takes_names_and_globs() -> None:
    """--event is repeatable and matches exact names or globs."""
    output = _run("--event", "session_*", "--event", "message_processed", "--json-only")
    assert _events(output) == [
        "session_requested",
        "message_processed",
        "session_created",
        "session_failed",
    ]


def test_actor_filter_keeps_that_actor_only() -> None:
    """--actor keeps the lines logged while that actor ran."""
    output = _run("--actor", "create_session", "--level", "info", "--json-only")
    assert _events(output) == ["vts_unavailable", "session_created", "session_failed"]


def test_filters_combine() -> None:
    """Several filters must all hold."""
    output = _run("--session", "ses_b", "--level", "error", "--json-only")
    assert _events(output) == ["session_failed"]


def test_correlation_ids_come_first() -> None:
    """The pretty line is timestamp, level, event, then the correlation ids in a fixed order."""
    (line,) = _run("--event", "session_created", "--json-only")
    assert line.split() == [
        "2025-11-27T22:30:01.123456Z",
        "INFO",
        "session_created",
        "request_id=req-a",
        "session_id=ses_a",
        "vts_session_uuid=0f8e5c7a-1111-4c2b-9d3e-123456789abc",
        "message_id=msg-1",
        "actor=create_session",
    ]


def test_traceback_is_printed_indented_below_its_line() -> None:
    """An exception field is printed as indented lines below the event."""
    output = _run("--event", "session_failed", "--json-only")
    assert output[0].split()[:3] == ["2025-11-27T22:30:01.123456Z", "ERROR", "session_failed"]
    assert output[1] == "    Traceback (most recent call last):"
    assert output[-1] == "    service.errors.VtsRejected: invalid number ***2671"


def test_no_full_phone_number_is_ever_printed() -> None:
    """Numbers are masked in fields, tracebacks, raw output and non-JSON lines."""
    for mode in ((), ("--raw",)):
        output = "\n".join(_run(*mode))
        assert PHONE not in output
        assert PHONE[1:] not in output
        assert "raw crash line: could not dial ***2671" in output


def test_raw_prints_matching_json_lines_as_they_were() -> None:
    """--raw prints the matching lines unchanged, so they can be piped on."""
    output = _run("--raw", "--session", "ses_b", "--json-only")
    assert output == [SAMPLE[2], SAMPLE[5], SAMPLE[7].replace(PHONE, "***2671")]
    assert all(json.loads(line)["session_id"] == "ses_b" for line in output)


def test_json_only_drops_other_lines() -> None:
    """--json-only drops the lines that are not JSON objects."""
    output = _run("--json-only")
    assert len(output) == len(_events(output)) + TRACEBACK.count("\n") + 1


def test_color_is_used_when_asked() -> None:
    """--color paints the level; --no-color (and a non-TTY) prints no escape codes."""
    out = io.StringIO()
    logtail.main(["--color"], stdin=io.StringIO(SAMPLE[0] + "\n"), stdout=out)
    assert "\x1b[32mINFO" in out.getvalue()
    assert "\x1b[" not in "\n".join(_run())


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_no_color_turns_colours_off_on_a_terminal() -> None:
    """On a terminal colours are on, unless NO_COLOR is set; --color still forces them."""

    def painted(*argv: str, environ: dict[str, str]) -> bool:
        out = _Terminal()
        logtail.main([*argv], stdin=io.StringIO(SAMPLE[0] + "\n"), stdout=out, environ=environ)
        return "\x1b[" in out.getvalue()

    assert painted(environ={})
    assert not painted(environ={"NO_COLOR": "1"})
    assert painted("--color", environ={"NO_COLOR": "1"})


def test_console_format_input_is_pointed_out(capsys: pytest.CaptureFixture[str]) -> None:
    """Filtering lines that hold no JSON (LOG_FORMAT=console) says why nothing is filtered;
    JSON input that merely matches nothing says nothing."""
    console = ["2025-11-27 22:30:01 [info     ] session_created session_id=ses_a"]
    _run("--session", "ses_a", lines=console)
    assert "LOG_FORMAT=json" in capsys.readouterr().err
    assert len(_run("--session", "ses_zzz")) == sum(not line.startswith("{") for line in SAMPLE)
    assert capsys.readouterr().err == ""


def test_a_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    """A file that does not exist stops the command with status 2 and its name."""
    with pytest.raises(SystemExit) as exit_info:
        logtail.main([str(tmp_path / "nope.log")], stdout=io.StringIO())
    assert exit_info.value.code == 2


def test_file_argument_is_read(tmp_path: Path) -> None:
    """A FILE argument is read instead of standard input."""
    path = tmp_path / "service.log"
    path.write_text("\n".join(SAMPLE) + "\n")
    out = io.StringIO()
    assert logtail.main([str(path), "--no-color", "--level", "error"], stdout=out) == 0
    assert _events(out.getvalue().splitlines()) == ["session_failed"]


def test_follow_starts_at_the_end_of_the_file(tmp_path: Path) -> None:
    """-f prints nothing of what the file held, then every line appended to it."""
    path = tmp_path / "service.log"
    path.write_text("\n".join(SAMPLE) + "\n")
    lines = logtail.follow(path, poll=0)
    assert next(lines) is None
    with path.open("a") as log:
        log.write(SAMPLE[1] + "\n")
    assert next(lines) == SAMPLE[1]
    assert next(lines) is None


def test_follow_first_gives_the_last_lines_asked_for(tmp_path: Path) -> None:
    """-f -n N starts with the file's last N lines, however far back they begin."""
    path = tmp_path / "service.log"
    many = [_line("request_received", request_id=f"req-{i}") for i in range(3000)]
    path.write_text("\n".join(many) + "\n")
    for count in (1, 2, 2999, 3000, 5000):
        lines = logtail.follow(path, last=count, poll=0)
        shown = list(itertools.takewhile(lambda line: line is not None, lines))
        assert shown == many[-count:]


class _Output:
    """Collects a child process's stdout lines on a thread, so the test can poll them."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert process.stdout is not None
        self._thread = threading.Thread(target=self._collect, args=(process.stdout,), daemon=True)
        self._thread.start()

    def _collect(self, stream: io.TextIOBase) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))

    def join(self) -> None:
        self._thread.join(10)

    def events(self) -> list[str]:
        return _events(list(self.lines))


@pytest.fixture
def follower(tmp_path: Path) -> Iterator[tuple[Path, _Output]]:
    path = tmp_path / "service.log"
    path.write_text(SAMPLE[0] + "\n")
    command = [sys.executable, "-m", "service", "logs", "-f", "-n", "1", str(path), "--no-color"]
    with subprocess.Popen(
        [*command, "--session", "ses_a"], cwd=ROOT, stdout=subprocess.PIPE, text=True
    ) as process:
        output = _Output(process)
        try:
            yield path, output
        finally:
            process.terminate()
            process.wait(10)
            output.join()


def test_follow_prints_lines_appended_to_the_file(follower: tuple[Path, _Output]) -> None:
    """-f -n 1 prints the file's last line, then the lines appended to it, filters applied."""
    path, output = follower
    wait_until(lambda: output.events() == ["request_received"])
    with path.open("a") as log:
        log.write("\n".join(SAMPLE[1:4]) + "\n")
    wait_until(
        lambda: output.events() == ["request_received", "session_requested", "message_processed"]
    )


def test_follow_waits_for_the_end_of_a_partial_line(follower: tuple[Path, _Output]) -> None:
    """-f holds a half-written line back until its newline arrives, then prints it whole."""
    path, output = follower
    wait_until(lambda: output.events() == ["request_received"])
    half = len(SAMPLE[6]) // 2
    with path.open("a") as log:
        log.write(SAMPLE[6][:half])
        log.flush()
        log.write(SAMPLE[6][half:] + "\n")
        log.write(SAMPLE[8] + "\n")
    wait_until(lambda: output.events()[-1:] == ["vts_callback_received"])
    assert output.events() == ["request_received", "session_created", "vts_callback_received"]
    assert PHONE not in "\n".join(output.lines)


def test_follow_starts_over_when_the_file_is_truncated(follower: tuple[Path, _Output]) -> None:
    """-f reads a truncated file again from its start, as copytruncate rotation needs."""
    path, output = follower
    wait_until(lambda: output.events() == ["request_received"])
    shorter = _line("session_expired", session_id="ses_a")
    assert len(shorter) < len(SAMPLE[0])
    path.write_text(shorter + "\n")
    wait_until(lambda: output.events() == ["request_received", "session_expired"])
