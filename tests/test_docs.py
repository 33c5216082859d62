"""README.md and the guides point only at files that exist, and never outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DOCUMENTS.append(ROOT / "tests" / "benchmarks" / "README.md")
TOP_LEVEL = ("service", "workers", "tests", "deploy", "docs", "scripts", ".ci")
# `service/storage/`, `deploy/k8s/config.env`, `README.md`: a folder of ours, or a file at the top.
REPOSITORY_PATH = re.compile(
    rf"^(?:(?:{'|'.join(map(re.escape, TOP_LEVEL))})(?:/[\w.*-]+)*/?|[\w-]+\.(?:md|toml|lock))$"
)


def _mentioned(document: Path) -> set[str]:
    text = document.read_text()
    quoted = set(re.findall(r"`([^`\s]+)`", text))
    linked = {target for target in re.findall(r"\]\(([^)#\s]+)\)", text) if "://" not in target}
    return {token for token in quoted | linked if REPOSITORY_PATH.match(token)}


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_every_path_mentioned_exists(document: Path) -> None:
    """Each repository path a document quotes or links to is in the repository."""
    mentioned = _mentioned(document)
    missing = {path for path in mentioned if not list(ROOT.glob(path.rstrip("/")))}
    assert not missing, missing


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_nothing_points_outside_the_repository(document: Path) -> None:
    """No document sends its reader to a folder beside the repository or on one machine."""
    text = document.read_text()
    assert "../" not in text
    assert "/work/" not in text
