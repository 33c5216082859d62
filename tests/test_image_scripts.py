"""scripts/image-base and scripts/image-smoke check what they need before doing anything,
and say in one line what to install."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bare_path(tmp_path: Path) -> str:
    """A PATH holding bash and the few coreutils the scripts start with, nothing else: no
    podman, runc, debootstrap, curl or redis-server."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for tool in ("bash", "dirname", "env"):
        found = shutil.which(tool)
        assert found is not None, tool
        (folder / tool).symlink_to(found)
    return str(folder)


@pytest.mark.parametrize(
    ("script", "tools"),
    [
        ("image-base", ["podman", "debootstrap"]),
        ("image-smoke", ["podman", "runc", "curl"]),
    ],
)
def test_missing_tools_are_named_in_one_line(tmp_path: Path, script: str, tools: list[str]) -> None:
    """Without its tools, the script exits 2 with one line naming each and how to install
    them, before running anything (no `command not found`)."""
    done = subprocess.run(
        [str(ROOT / "scripts" / script)],
        env={"PATH": _bare_path(tmp_path), "HOME": str(tmp_path)},
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.splitlines()
    assert "command not found" not in line
    assert line.startswith(f"scripts/{script}: ")
    for tool in tools:
        assert tool in line, line
    assert "apt-get install" in line, line
