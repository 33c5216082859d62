"""The garbage collector's settings for long-running processes."""

from __future__ import annotations

import gc

from service import memory


def test_settle_freezes_the_start_up_heap_and_raises_the_young_threshold() -> None:
    """After ``settle``, what start-up left is frozen (never walked again) and the youngest
    generation waits for 10,000 objects, not CPython's 700."""
    before = gc.get_threshold()
    try:
        memory.settle()
        assert gc.get_freeze_count() > 10_000
        assert gc.get_threshold() == (memory.YOUNG_THRESHOLD, before[1], before[2])
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
