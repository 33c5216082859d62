"""The OpenAPI document as an app team uses it: a client generated from it by
openapi-python-client drives a live system (real web on loopback, a real dramatiq worker,
the VTS sandbox), and the notifications apps receive match the document's ``webhooks``."""

from __future__ import annotations

import hashlib
import importlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import dramatiq
import httpx2
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.settings import Settings
from tests import contract
from tests.conftest import API_KEY, loopback_settings, new_numbers, wait_until
from tests.contract import document
from tests.servers import serve

# The document alone, as an app team gets it: no overrides of its media types.
_CONFIG = """\
post_hooks: []
"""


@pytest.fixture
def settings(redis_url: str, sandbox_url: str, web_port: int, recordings_dir: Path) -> Settings:
    return loopback_settings(redis_url, sandbox_url, web_port, recordings_dir=recordings_dir)


@pytest.fixture
def generated(tmp_path: Path) -> Iterator[ModuleType]:
    """The client package openapi-python-client generates from /openapi.json, imported."""
    (tmp_path / "openapi.json").write_text(json.dumps(document()))
    (tmp_path / "config.yaml").write_text(_CONFIG)
    name = f"masking_client_{tmp_path.name.replace('-', '_')}"
    generator = Path(sys.executable).parent / "openapi-python-client"
    done = subprocess.run(
        [str(generator), "generate", "--path", str(tmp_path / "openapi.json"),
         "--output-path", str(tmp_path / name), "--meta", "none",
         "--config", str(tmp_path / "config.yaml")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    # Every operation made it into the client: none skipped as unparseable.
    assert "Warning" not in done.stdout, done.stdout
    sys.path.insert(0, str(tmp_path))
    try:
        yield importlib.import_module(name)
    finally:
        sys.path.remove(str(tmp_path))
        for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            del sys.modules[module]


def _operation(package: ModuleType, name: str) -> Any:
    return importlib.import_module(f"{package.__name__}.api.default.{name}")


def _model(package: ModuleType, name: str) -> Any:
    return getattr(importlib.import_module(f"{package.__name__}.models"), name)


@pytest.mark.slow
def test_generated_client_creates_reads_lists_and_downloads(
    generated: ModuleType,
    web_url: str,
    sandbox: httpx2.Client,
    worker: dramatiq.Worker,
) -> None:
    """A generated client creates, reads, changes (PATCH) and lists sessions and downloads
    a recording."""
    with generated.AuthenticatedClient(base_url=web_url, token=API_KEY, timeout=40.0) as client:
        _drive(generated, client, sandbox)


def _drive(generated: ModuleType, client: Any, sandbox: httpx2.Client) -> None:
    first, second = new_numbers()
    body = _model(generated, "CreateSession")(
        first_party=first, second_party=second, record=True,
        record_file_format=_model(generated, "CreateSessionRecordFileFormatType0")("wav"),
    )  # fmt: skip
    created = _operation(generated, "create_session").sync_detailed(
        client=client, body=body, prefer="wait=10", idempotency_key="client-1"
    )
    assert created.status_code == 201, created.content
    assert created.headers["preference-applied"] == "wait=10"
    session = created.parsed
    assert session.status.value == "active"
    assert session.virtual_number

    read = _operation(generated, "get_session").sync(session_id=session.id, client=client)
    assert (read.id, read.first_party, read.record) == (session.id, first, True)
    _change(generated, client, session.id)
    page = _operation(generated, "list_sessions").sync(client=client, limit=10)
    assert [s.id for s in page.data] == [session.id]

    placed = sandbox.post(
        f"/_sandbox/sessions/{session.vts_session_uuid}/calls",
        json={"caller": "first", "duration": 12},
    )
    assert placed.status_code == 202, placed.text
    get_session = _operation(generated, "get_session")

    def stored() -> Any:
        found = get_session.sync(session_id=session.id, client=client).recordings
        return found[0] if found and found[0].status.value == "stored" else None

    recording = wait_until(stored, timeout=60, interval=0.2)
    audio = _operation(generated, "get_recording").sync(recording_id=recording.id, client=client)
    truth = sandbox.get(f"/_sandbox/recordings/{placed.json()['recording_uuid']}").json()
    assert hashlib.sha256(audio.payload.read()).hexdigest() == truth["sha256"] == recording.sha256

    listed = _operation(generated, "list_sessions").sync(client=client).data
    assert [r.id for r in listed[0].recordings] == [recording.id]
    replayed = _operation(generated, "create_session").sync_detailed(
        client=client, body=body, idempotency_key="client-1"
    )
    assert replayed.headers["idempotent-replayed"] == "true"
    assert [r.id for r in replayed.parsed.recordings] == [recording.id]
    timeline = _operation(generated, "list_session_events").sync(
        session_id=session.id, client=client
    )
    durations = [e.duration for e in timeline.data if isinstance(e.duration, int | str)]
    assert durations, timeline.data
    assert all(isinstance(d, int) for d in durations), durations


def _change(generated: ModuleType, client: Any, session_id: str) -> None:
    """The generated PATCH: a merge patch of one option, applied by the worker."""
    patch = _model(generated, "UpdateSession")(call_time_limit=600)
    changed = _operation(generated, "update_session").sync_detailed(
        session_id=session_id, client=client, body=patch
    )
    assert changed.status_code == 202, changed.content
    assert changed.parsed.id == session_id
    get_session = _operation(generated, "get_session")

    def applied() -> bool:
        return bool(get_session.sync(session_id=session_id, client=client).call_time_limit == 600)

    wait_until(applied, timeout=30, interval=0.2)


class Receiver:
    """An app's endpoint that keeps every notification body."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    async def handle(self, request: Request) -> Response:
        self.bodies.append(json.loads(await request.body()))
        return Response(status_code=204)


@pytest.fixture
def receiver() -> Iterator[tuple[str, Receiver]]:
    kept = Receiver()
    with serve(Starlette(routes=[Route("/hook", kept.handle, methods=["POST"])])) as url:
        yield url + "/hook", kept


@pytest.mark.slow
def test_notifications_match_the_webhooks_and_show_recordings(
    api: httpx2.Client,
    sandbox: httpx2.Client,
    worker: dramatiq.Worker,
    receiver: tuple[str, Receiver],
) -> None:
    """Each notification matches the documented schema; recording_stored lists the file."""
    url, kept = receiver
    first, second = new_numbers()
    session = api.post(
        "/v1/sessions",
        json={"first_party": first, "second_party": second, "record": True, "callback_url": url},
        headers={"Prefer": "wait=10"},
    ).json()
    assert session["status"] == "active", session
    placed = sandbox.post(
        f"/_sandbox/sessions/{session['vts_session_uuid']}/calls",
        json={"caller": "first", "duration": 8},
    )
    assert placed.status_code == 202, placed.text

    def stored_notice() -> dict[str, Any] | None:
        notices = [b for b in kept.bodies if b["type"] == "session.recording_stored"]
        return notices[0] if notices else None

    notice = wait_until(stored_notice, timeout=60, interval=0.2)
    assert [r["status"] for r in notice["data"]["recordings"]] == ["stored"]
    schema = document()["webhooks"]["sessionNotification"]["post"]["requestBody"]
    for body in kept.bodies:
        contract.validate(body, schema["content"]["application/json"]["schema"], body["type"])
        assert first[1:] not in json.dumps(body)
