"""Prints each installed distribution whose version differs from a lock file's pin."""

import re
import sys
from importlib import metadata
from pathlib import Path

PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)", re.MULTILINE)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main(lock: str) -> None:
    pinned = {canonical(name): version for name, version in PIN.findall(Path(lock).read_text())}
    installed = {canonical(d.metadata["Name"]): d.version for d in metadata.distributions()}
    moved = sorted(
        (name, pinned[name], installed[name])
        for name in pinned.keys() & installed.keys()
        if pinned[name] != installed[name]
    )
    if not moved:
        print(f"latest: every pinned release is the newest in range ({lock})")
    for name, old, new in moved:
        print(f"latest: {name} {old} (locked) -> {new}")


if __name__ == "__main__":
    main(sys.argv[1])
