"""The garbage collector, tuned for long-running processes whose heap is mostly static.

After start-up nearly every object (modules, phonenumbers' metadata, compiled patterns,
the app and its routes) lives as long as the process, yet CPython's collector walks them
all again at every full collection. ``settle`` moves them out of its sight
(``gc.freeze``) and raises the youngest generation's threshold from 700 to 10,000 objects:
the web keeps a few dozen requests in flight, whose objects alone passed 700 and set off a
collection every few requests although nearly all of them were freed soon after. Measured
on the create path: the collector's share went from ~56 µs to under 1 µs per request (see
tests/benchmarks/README.md).
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000


def settle() -> None:
    """Call once start-up is over: collect, freeze what survived, raise the threshold."""
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, oldest)
