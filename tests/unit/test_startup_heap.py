"""Once the worker is built, its startup objects leave the collector's sight and young
collections run every `YOUNG_COLLECTION_THRESHOLD` tracked allocations, not 700."""

from __future__ import annotations

import gc

from stream.worker.process import YOUNG_COLLECTION_THRESHOLD, freeze_startup_heap


def test_freeze_startup_heap_freezes_and_raises_the_young_threshold() -> None:
    saved = gc.get_threshold()
    try:
        freeze_startup_heap()
        assert gc.get_freeze_count() > 0  # the test session's own objects, at least
        assert gc.get_threshold() == (YOUNG_COLLECTION_THRESHOLD, saved[1], saved[2])
        assert saved[0] < YOUNG_COLLECTION_THRESHOLD
    finally:
        gc.unfreeze()
        gc.set_threshold(*saved)
