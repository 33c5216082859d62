"""Rules of the codebase's shape: the message contract, the import rule, no import-time work."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import dramatiq

from service import messages

ROOT = Path(__file__).resolve().parent.parent
# Modules that make up the HTTP front; the workers must not import them.
WEB_MODULES = {
    "service.web.app",
    "service.web.api",
    "service.web.middleware",
    "service.web.watcher",
    "service.web.validation",
    "service.web.problems",
    "service.web.openapi",
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_web_and_core_never_import_the_workers() -> None:
    """Nothing under service/ imports workers/."""
    for path in _modules("service"):
        offenders = {name for name in _imports(path) if name.split(".")[0] == "workers"}
        assert not offenders, f"{path.relative_to(ROOT)} imports {offenders}"


def test_workers_never_import_the_web() -> None:
    """Nothing under workers/ imports the HTTP front."""
    for path in _modules("workers"):
        offenders = _imports(path) & WEB_MODULES
        assert not offenders, f"{path.relative_to(ROOT)} imports {offenders}"


def test_every_route_of_the_contract_has_an_actor(broker: dramatiq.Broker) -> None:
    """Each actor the web enqueues for exists in the workers, on the same queue."""
    for route in messages.ROUTES:
        actor = broker.get_actor(route.actor_name)
        assert actor.queue_name == route.queue_name


def test_every_scheduler_task_has_an_actor(broker: dramatiq.Broker) -> None:
    """Each kind of timer the scheduler fires has its actor."""
    from workers.scheduler import TASK_ACTORS

    for actor_name in TASK_ACTORS.values():
        broker.get_actor(actor_name)


def test_every_actor_is_in_the_contract_or_internal(broker: dramatiq.Broker) -> None:
    """The workers declare no actor the contract does not know, besides their own helpers."""
    internal = {
        "create_session_exhausted",
        "reconcile_session",
        "expire_if_due",
        "purge_session",
        "recording_download_exhausted",
        "update_session_exhausted",
    }
    declared = set(broker.get_declared_actors())
    assert declared - internal == {route.actor_name for route in messages.ROUTES}


def test_importing_modules_does_no_work() -> None:
    """Importing every module with an empty environment reads nothing and configures nothing."""
    names = [
        ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for package in ("service", "workers")
        for path in _modules(package)
        if path.name not in {"__main__.py", "actors.py"}  # actors bind after setup, by design
    ]
    script = (
        "import importlib, structlog, dramatiq.broker\n"
        f"for name in {names!r}: importlib.import_module(name)\n"
        "assert not structlog.is_configured(), 'structlog configured at import'\n"
        "assert dramatiq.broker.global_broker is None, 'broker set at import'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env={},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_built_messages_are_dramatiq_messages() -> None:
    """``messages.build`` writes dramatiq's wire format: the bytes decode as the message
    dramatiq would have encoded, ids and options included."""
    import time

    before = int(time.time() * 1000)
    built = messages.build(
        messages.CREATE_SESSION, "ses_1", 2, request_id="r-1", app="rides", changes={"a": 1}
    )
    decoded = dramatiq.Message.decode(built.payload)
    assert decoded.encode() == built.payload
    assert (decoded.queue_name, decoded.actor_name) == ("sessions", "create_session")
    assert (decoded.args, decoded.kwargs) == (("ses_1", 2), {"changes": {"a": 1}})
    assert decoded.options == {
        "redis_message_id": built.message_id,
        "request_id": "r-1",
        "app": "rides",
    }
    assert decoded.message_id == built.message_id == built.redis_message_id
    assert before <= decoded.message_timestamp <= int(time.time() * 1000)
