"""The garbage collector's settings for long-running processes."""

from __future__ import annotations

import json
import subprocess
import sys


def test_settle_freezes_the_start_up_heap_and_raises_the_young_threshold() -> None:
    """After ``settle``, what start-up left is frozen (never walked again) and the youngest
    generation waits for 10,000 objects, not CPython's 700. (In a process of its own: a
    collection here would also collect what other tests left behind.)"""
    program = (
        "import gc, json; import service.web.app; from service import memory; "
        "before = gc.get_threshold(); "
        "memory.settle(); "
        "print(json.dumps([gc.get_freeze_count(), before, gc.get_threshold()]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True
    )
    frozen, before, after = json.loads(done.stdout)
    assert frozen > 10_000
    assert after == [10_000, before[1], before[2]]
