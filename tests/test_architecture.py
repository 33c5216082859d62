"""Rules of the codebase's shape: the message contract, the import rule, no import-time work."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import dramatiq

from service import messages
from service.store.keys import Keys, RecordingKeys

ROOT = Path(__file__).resolve().parent.parent
# The parts of the tree, and what each may import besides itself (and other packages):
# the web and the workers build on the core and never on each other; the operator tools
# start the web (the workers only by name, through importlib); development code sees all
# but the workers. Nothing installed in production imports ``devkit`` at module level.
ALLOWED = {
    "core": set(),
    "web": {"core"},
    "workers": {"core"},
    "tools": {"core", "web", "devkit"},
    "devkit": {"core", "web", "tools"},
}
PRODUCTION = ("service", "workers")


def _part(module: str) -> str | None:
    """The part of the tree a dotted module name belongs to; None outside the project."""
    top, _, rest = module.partition(".")
    if top in ("workers", "devkit"):
        return top
    if top != "service":
        return None
    sub = rest.partition(".")[0]
    if sub == "__main__":  # ``python -m service`` is the command line
        return "tools"
    return sub if sub in ("web", "tools") else "core"


def _imported(nodes: list[ast.stmt] | ast.AST) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(nodes) if isinstance(nodes, ast.AST) else nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def _imports(path: Path) -> set[str]:
    return _imported(ast.parse(path.read_text()))


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_each_part_imports_only_what_the_import_rule_allows() -> None:
    """Every module of every part imports only its own part and the parts it may use."""
    for package in (*PRODUCTION, "devkit"):
        for path in _modules(package):
            own = _part(_module_name(path))
            assert own is not None
            allowed = ALLOWED[own] | {own}
            offenders = {m for m in _imports(path) if _part(m) not in (None, *allowed)}
            assert not offenders, f"{path.relative_to(ROOT)} ({own}) imports {offenders}"


def test_production_code_never_imports_development_code_at_load() -> None:
    """``devkit`` is not in the production image: what is imports it only inside the
    functions of development commands."""
    for package in PRODUCTION:
        for path in _modules(package):
            top_level = _imported(ast.parse(path.read_text()).body)
            offenders = {m for m in top_level if _part(m) == "devkit"}
            assert not offenders, f"{path.relative_to(ROOT)} imports {offenders}"


def test_the_import_rule_knows_every_part_of_the_tree() -> None:
    """A new subpackage of ``service`` is either core or one of the named parts."""
    packages = {p.parent.name for p in (ROOT / "service").glob("*/__init__.py")}
    assert packages == {"web", "tools", "store", "storage", "vts"}


# The classes that name Redis keys: private to the store, whose methods are the only way
# the rest of the product reaches Redis.
KEY_CLASSES = {cls.__name__ for cls in (*Keys.__mro__, RecordingKeys) if cls is not object}


def _key_name_imports(path: Path) -> set[str]:
    """What ``path`` imports of the store's key names: the ``keys`` module, or any class
    that names keys, wherever in the store it is imported from."""
    found = set()
    for module in _imports(path):
        parent, _, name = module.rpartition(".")
        if (
            module == "service.store.keys"
            or parent == "service.store.keys"
            or (parent.startswith("service.store") and name in KEY_CLASSES)
        ):
            found.add(module)
    return found


def test_key_names_are_private_to_the_store() -> None:
    """No product module outside ``service.store`` knows a Redis key name."""
    for package in PRODUCTION:
        for path in _modules(package):
            if _module_name(path).startswith("service.store"):
                continue
            offenders = _key_name_imports(path)
            assert not offenders, f"{path.relative_to(ROOT)} imports {offenders}"


def test_the_key_classes_gathered_for_tests_are_all_there_are() -> None:
    """Each class of the store that names keys (a ``...Keys`` class of its own, not an
    error) is gathered by ``service.store.keys`` (``Keys`` or ``RecordingKeys``), so the
    rules above know it."""
    declared = {
        node.name
        for path in _modules("service/store")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ClassDef) and node.name.endswith("Keys") and not node.bases
    }
    assert declared == KEY_CLASSES - {"Keys"}


def test_within_the_store_each_concept_module_names_its_own_keys() -> None:
    """``service.store.keys`` only gathers the names for tests: the store's own modules
    take each key class from the concept module that owns it."""
    for path in _modules("service/store"):
        if path.name == "keys.py":
            continue
        offenders = {m for m in _key_name_imports(path) if m.startswith("service.store.keys")}
        assert not offenders, f"{path.relative_to(ROOT)} imports {offenders}"


def test_key_name_imports_are_found(tmp_path: Path) -> None:
    module = tmp_path / "sample.py"
    module.write_text(
        "from service.store import Keys\n"
        "from service.store.recordings import RecordingKeys\n"
        "import service.store.keys\n"
        "from service.store.apps import AppStore, TooManyKeys\n"
    )
    assert _key_name_imports(module) == {
        "service.store.Keys",
        "service.store.recordings.RecordingKeys",
        "service.store.keys",
    }
    assert {"Keys", "SessionKeys", "EventKeys", "QueueKeys", "AppKeys"} <= KEY_CLASSES


def _store_classes() -> set[str]:
    return {
        node.name
        for path in _modules("service/store")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ClassDef)
    }


def _inherited_store_classes(source: str, store_classes: set[str]) -> set[tuple[str, str]]:
    """The (class, base) pairs of ``source`` whose base is one of ``store_classes``."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef):
            for base in node.bases:
                name = base.attr if isinstance(base, ast.Attribute) else getattr(base, "id", "")
                if name in store_classes:
                    found.add((node.name, name))
    return found


def test_no_store_class_inherits_from_another() -> None:
    """The store's classes are composed, never mixed in: none inherits from another class
    of the store (``keys.Keys`` alone gathers the key classes, for tests)."""
    store_classes = _store_classes()
    for path in _modules("service/store"):
        inherited = _inherited_store_classes(path.read_text(), store_classes)
        if path.name == "keys.py":
            inherited = {(name, base) for name, base in inherited if name != "Keys"}
        assert not inherited, f"{path.relative_to(ROOT)}: {inherited}"


def test_inherited_store_classes_are_found() -> None:
    source = (
        "from service.store import sessions\n"
        "from service.store.events import StoredEvents\n"
        "class Store(sessions.Sessions, StoredEvents): ...\n"
        "class Outcome(StrEnum): ...\n"
    )
    assert _inherited_store_classes(source, _store_classes()) == {
        ("Store", "Sessions"),
        ("Store", "StoredEvents"),
    }


def test_every_job_of_the_contract_has_its_actor(broker: dramatiq.Broker) -> None:
    """Each job's actor exists, on the job's queue, with the job's retry policy."""
    for job in messages.JOBS:
        actor = broker.get_actor(job.name)
        assert actor.queue_name == job.queue, job.name
        options = actor.options
        assert options["max_retries"] == job.retry.max_retries, job.name
        assert options["min_backoff"] == job.retry.min_backoff_ms, job.name
        assert options["max_backoff"] == job.retry.max_backoff_ms, job.name
        exhausted = job.on_exhausted.name if job.on_exhausted else None
        assert options.get("on_retry_exhausted") == exhausted, job.name
        assert options.get("time_limit") == job.time_limit_ms, job.name


def test_every_actor_is_a_job_of_the_contract(broker: dramatiq.Broker) -> None:
    """The workers declare no actor the contract does not know, internal ones included."""
    assert set(broker.get_declared_actors()) == {job.name for job in messages.JOBS}


def test_every_timer_runs_a_job_of_the_contract() -> None:
    """Each kind of timer the scheduler fires names a job that takes a session id."""
    for task, job in messages.TIMERS.items():
        assert job in messages.JOBS, task
        outgoing = job.message(job.payload("ses_" + "a" * 32))
        assert outgoing.queue_name == job.queue


def test_no_global_retry_policy(broker: dramatiq.Broker) -> None:
    """The broker's Retries middleware retries nothing by itself; each actor brings its own."""
    from dramatiq.middleware import Retries

    (retries,) = [m for m in broker.middleware if isinstance(m, Retries)]
    assert retries.max_retries == 0
    assert retries.retry_when is None
    for name in broker.get_declared_actors():
        assert callable(broker.get_actor(name).options["retry_when"]), name


def _string_literals(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }


# The same words, meaning something else: the VTS client labels its calls (metrics, logs)
# with VTS's own actions.
_NOT_ACTOR_NAMES = {"vts/client.py": {"create_session", "update_session", "expire_session"}}


def test_actor_names_are_written_only_in_the_contract() -> None:
    """No module but the contract spells an actor's name: they all refer to its jobs."""
    names = {job.name for job in messages.JOBS}
    contract = ROOT / "service" / "messages.py"
    for path in [*_modules("service"), *_modules("workers")]:
        if path == contract:
            continue
        where = str(path.relative_to(ROOT))
        allowed = next((v for k, v in _NOT_ACTOR_NAMES.items() if where.endswith(k)), set())
        spelled = _string_literals(path) & names - allowed
        assert not spelled, f"{where} spells {spelled}"


def test_actor_name_literals_are_found(tmp_path: Path) -> None:
    """The check above sees a name written as a string, in any expression."""
    module = tmp_path / "module.py"
    module.write_text('broker.get_actor(f"{x}", "notify_app")\n')
    assert "notify_app" in _string_literals(module)


def test_importing_modules_does_no_work() -> None:
    """Importing every module with an empty environment reads nothing and configures nothing."""
    names = [
        ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for package in (*PRODUCTION, "devkit")
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


def test_encoded_messages_are_dramatiq_messages() -> None:
    """``messages.encode`` writes dramatiq's wire format: the bytes decode as the message
    dramatiq would have encoded, ids and options included."""
    import time

    before = int(time.time() * 1000)
    built = messages.encode(
        "sessions",
        "create_session",
        ["ses_1", 2],
        {"changes": {"a": 1}},
        {"request_id": "r-1", "app": "rides"},
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


def test_no_lua_inside_python_modules() -> None:
    """Every Lua script of the service is a ``.lua`` file of its own, never a string in a
    Python module."""
    offenders = [
        str(path.relative_to(ROOT))
        for package in ("service", "workers")
        for path in (ROOT / package).rglob("*.py")
        if "redis.call(" in path.read_text()
    ]
    assert offenders == []


def test_scripts_read_their_arguments_by_name() -> None:
    """A Lua script reads at most three positional ARGV (each documented); more arguments
    are one JSON object read by name, never a run of ARGV slots or ARGV unpacked."""
    positional = re.compile(r"ARGV\[(?:[4-9]|\d\d+)\]|unpack\(ARGV|#ARGV")
    offenders = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "service").rglob("*.lua")
        if positional.search(path.read_text())
    ]
    assert offenders == []
