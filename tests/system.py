"""The whole system as real processes for end-to-end tests: the Procfile's web and worker,
started with the test Redis and a sandbox, their output kept in files."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2

from tests import contract
from tests.conftest import API_KEY, AUTH_ID, AUTH_TOKEN, http_client, wait_until
from tests.servers import free_port, free_ports

ROOT = Path(__file__).resolve().parent.parent


def procfile() -> dict[str, list[str]]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    entries = (line.partition(": ") for line in lines)
    return {name: shlex.split(command) for name, _, command in entries}


@dataclass
class System:
    """Start with ``start()``; ``api`` and ``sandbox`` are clients for both sides."""

    redis_url: str
    sandbox_url: str
    directory: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    # The worker's metrics take the first free port of ten from METRICS_PORT.
    metrics_port: int = field(default_factory=lambda: free_ports(10))
    admin_port: int = field(default_factory=free_port)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: list[Path] = field(default_factory=list)
    numbers: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.api = http_client(
            f"http://127.0.0.1:{self.port}",
            headers={"Authorization": f"Bearer {API_KEY}"},
            timeout=40,
            event_hooks={"response": [contract.check]},
        )
        self.sandbox = http_client(self.sandbox_url, auth=(AUTH_ID, AUTH_TOKEN), timeout=70)

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "REDIS_URL": self.redis_url,
            "VTS_BASE_URL": self.sandbox_url,
            "VTS_AUTH_ID": AUTH_ID,
            "VTS_AUTH_TOKEN": AUTH_TOKEN,
            "PUBLIC_BASE_URL": f"http://127.0.0.1:{self.port}",
            "API_KEYS": API_KEY,
            "PORT": str(self.port),
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "INFO",
            "METRICS_PORT": str(self.metrics_port),
            "ADMIN_PORT": str(self.admin_port),
            **self.extra_env,
        }

    def start(self, *names: str) -> System:
        for name in names or ("web", "worker"):
            self._launch(name)
        wait_until(self._ready, timeout=30, interval=0.1)
        return self

    def _launch(self, name: str) -> None:
        command = procfile()[name]
        log = self.directory / f"{name}-{len(self.logs)}.log"
        self.logs.append(log)
        executable = Path(sys.executable).parent / command[0]
        with log.open("wb") as out:
            self.processes[name] = subprocess.Popen(
                [str(executable), *command[1:]],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group, so a kill reaches its children
            )

    def _ready(self) -> bool:
        try:
            return self.api.get("/readyz").status_code == 200
        except httpx2.TransportError:
            return False

    def kill(self, name: str) -> None:
        """SIGKILL the process and all its children, as an OOM killer would."""
        process = self.processes.pop(name)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)

    def restart(self, name: str) -> None:
        self._launch(name)

    def stop(self) -> None:
        for process in self.processes.values():
            process.terminate()
        for process in self.processes.values():
            process.wait(40)
        self.processes.clear()
        self.api.close()
        self.sandbox.close()

    def output(self) -> str:
        return "".join(path.read_text(errors="replace") for path in self.logs)

    def create(self, first: str, second: str, **extra: Any) -> httpx2.Response:
        self.numbers += [first, second]
        return self.api.post(
            "/v1/sessions", json={"first_party": first, "second_party": second, **extra}
        )
