"""engine.memory: freed heap memory goes back to the operating system (glibc's malloc_trim)."""

from __future__ import annotations

import numpy as np
import pytest

from cartocell_bmz.engine.memory import _malloc_trim, release_free_memory


def _anon_kib() -> int:
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("RssAnon"))


@pytest.mark.skipif(_malloc_trim() is None, reason="needs glibc's malloc_trim (Linux); elsewhere a no-op")
def test_a_fragmented_heap_is_given_back():
    # 3000 arrays of 48 KiB (under glibc's mmap threshold: they come from the heap); all but the
    # last one freed, so the heap cannot shrink from its top, only malloc_trim releases the middle
    arrays = [np.ones(48 * 1024 // 8) for _ in range(3000)]
    last = arrays[-1]
    del arrays
    before = _anon_kib()
    assert release_free_memory() is True
    after = _anon_kib()
    assert before - after > 60 * 1024, (before, after)  # of about 140 MiB freed
    assert last[0] == 1.0
    assert release_free_memory() in (True, False)  # nothing left to give back is not an error
