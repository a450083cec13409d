"""The benchmark workers' peak-RSS reading: it sees a large allocation, and a reset forgets it."""

from __future__ import annotations

import numpy as np
import pytest

from bitdistill._peak_rss import peak_rss_mib, reset_peak_rss


def test_peak_covers_an_allocation_and_a_reset_starts_it_over():
    if not reset_peak_rss():
        pytest.skip("this kernel does not allow resetting VmHWM (/proc/self/clear_refs)")
    start = peak_rss_mib()  # right after a reset: the current RSS
    block = np.ones(128 * 2**20 // 8)  # 128 MiB, every page written
    assert peak_rss_mib() >= start + 120
    del block  # numpy returns a block this large to the kernel at once
    assert peak_rss_mib() >= start + 120  # a peak outlives the memory
    assert reset_peak_rss() and peak_rss_mib() < start + 64
