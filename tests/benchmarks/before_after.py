"""The hot paths' benchmarks on two trees in one run, and their ratios side by side.

    python -m tests.benchmarks.before_after --before /tmp/old-tree [--rounds 3]

``--before`` is a checkout of another commit (``git worktree add --detach /tmp/old-tree
<commit>``); this tree is "after". Each benchmark runs on one tree and then the other,
with this interpreter (so both use the same installed libraries) and each tree's own
scripts and code: ``bench_webhooks`` (signed callbacks ingested), ``bench_create``
(``POST /v1/sessions``) and ``bench_events --part throughput`` (events applied), at
``LOG_LEVEL=INFO``. Every line the benchmarks print is kept under ``--output``; the
summary gives each path's ratio to its bare ceiling, measured in the same run as the
path, on both trees.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.benchmarks.common import ROOT, load


@dataclass(frozen=True)
class Benchmark:
    name: str
    module: str
    arguments: tuple[str, ...]
    # The summary lines that carry the figures compared (a regex with a group per figure).
    ratio: str


BENCHMARKS = (
    Benchmark(
        "signed callbacks ingested (req/s, CPU; vs bare enqueue)",
        "tests.benchmarks.bench_webhooks",
        (),
        r"against bare, dramatiq enqueue:\n\s+ratio at INFO\s+([\d.]+)\s+CPU ratio\s+([\d.]+)",
    ),
    Benchmark(
        "POST /v1/sessions (req/s, CPU; vs bare enqueue)",
        "tests.benchmarks.bench_create",
        (),
        r"against bare, dramatiq enqueue:\n\s+ratio at INFO\s+([\d.]+)\s+CPU ratio\s+([\d.]+)",
    ),
    Benchmark(
        "events applied (ev/s; vs bare actor)",
        "tests.benchmarks.bench_events",
        ("--part", "throughput"),
        r"ratio \(ev/s\)\s+([\d.]+)",
    ),
)


def run(tree: Path, benchmark: Benchmark, rounds: int, output: Path) -> str:
    """One benchmark on ``tree``; its whole output, also written to ``output``."""
    command = [sys.executable, "-m", benchmark.module, *benchmark.arguments]
    command += ["--rounds", str(rounds)]
    print(f"$ (cd {tree} && python {' '.join(command[1:])})", flush=True)
    result = subprocess.run(
        command, cwd=tree, capture_output=True, text=True, check=False, timeout=1800
    )
    text = result.stdout + result.stderr
    output.write_text(text)
    if result.returncode != 0:
        raise SystemExit(f"{benchmark.module} failed on {tree}; see {output}")
    return text


def figures(benchmark: Benchmark, text: str) -> tuple[str, ...]:
    found = re.search(benchmark.ratio, text)
    return found.groups() if found else ("?",)


def medians(text: str) -> list[str]:
    """The benchmark's own summary: the lines from its "medians" heading on."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if "medians of" in line), len(lines))
    return lines[start:]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--before", type=Path, required=True, help="the other tree")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each benchmark")
    parser.add_argument("--only", help="comma-separated: webhooks, create, events")
    parser.add_argument("--output", type=Path, default=Path("/tmp/before-after"))
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    before = args.before.resolve()
    if not (before / "tests" / "benchmarks" / "bench_create.py").exists():
        raise SystemExit(f"{before} holds no benchmarks: a checkout of the project?")
    args.output.mkdir(parents=True, exist_ok=True)
    chosen = [
        benchmark
        for benchmark in BENCHMARKS
        if not args.only or benchmark.module.rsplit("_", 1)[-1] in args.only.split(",")
    ]
    print(f"before: {before}\nafter: {ROOT}\nat the start: {load()}", flush=True)
    rows = []
    for benchmark in chosen:
        results = {}
        for label, tree in (("before", before), ("after", ROOT)):
            log = args.output / f"{benchmark.module.rsplit('.', 1)[-1]}-{label}.txt"
            text = run(tree, benchmark, args.rounds, log)
            results[label] = figures(benchmark, text)
            print(f"{label}:", *medians(text), sep="\n", flush=True)
        rows.append((benchmark.name, results["before"], results["after"]))
    print(f"\nat INFO, medians of {args.rounds} rounds; at the end: {load()}")
    print(f"{'path':58} {'before':>14} {'after':>14}")
    for name, old, new in rows:
        print(f"{name:58} {' / '.join(old):>14} {' / '.join(new):>14}")


if __name__ == "__main__":
    main()
