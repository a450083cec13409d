"""One block of memory for all of a model's weights, in 2 MiB pages where the OS allows it.

Decode streams every weight once per token. In 4 KiB pages that is ~10,000 TLB misses per token for a 40 MB
model, and the per-layer tensors (a few hundred KiB each) are too small for numpy's own huge-page advice
(only arrays of 4 MiB and more get it). Carving every tensor out of one 2 MiB-aligned block advised
MADV_HUGEPAGE made SmolLM2 decode ~9 % faster at one thread on a Zen 3 VM whose THP mode is `madvise`
(18 % with the engine's KV cache and buffers advised too; docs/runtime.md, "Memory layout" and "Weights in
huge pages and stream order"). Where madvise is missing (macOS, Windows) the block is plain anonymous
memory and nothing else changes.
"""

from __future__ import annotations

import mmap

import numpy as np

from ..errors import BitDistillError

HUGE_PAGE = 2 << 20
ALIGN = 64  # every tensor starts on a cache line (and so is aligned for any dtype)


def padded(nbytes: int) -> int:
    return (nbytes + ALIGN - 1) // ALIGN * ALIGN


def arena(nbytes: int, huge_pages: bool = True) -> np.ndarray:
    """A zero-filled uint8 array of `nbytes` starting on a 2 MiB boundary, advised MADV_HUGEPAGE where the
    OS has it (unless `huge_pages` is False: BITDISTILL_HUGEPAGES=0). Pages are only committed when touched."""
    try:
        if hasattr(mmap, "MAP_PRIVATE") and hasattr(mmap, "MAP_ANONYMOUS"):  # private: Linux gives shared
            # anonymous memory (shmem) no transparent huge pages by default
            buf = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        else:
            buf = mmap.mmap(-1, nbytes + HUGE_PAGE)
    except (OSError, ValueError, OverflowError) as err:
        raise BitDistillError(
            f"cannot reserve {nbytes / 2**20:.0f} MiB for the model's weights ({err}); free memory or raise "
            "the process's memory limit (ulimit -v)"
        ) from None
    if huge_pages and hasattr(buf, "madvise") and hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            buf.madvise(mmap.MADV_HUGEPAGE)
        except OSError:  # a kernel built without transparent huge pages: plain pages
            pass
    raw = np.frombuffer(buf, np.uint8)
    start = -raw.ctypes.data % HUGE_PAGE
    return raw[start : start + nbytes]


def gather(tensors: dict[str, np.ndarray], huge_pages: bool = True) -> dict[str, np.ndarray]:
    """Copies of `tensors` side by side in one arena (each on a cache line), in the same order."""
    block = arena(sum(padded(t.nbytes) for t in tensors.values()), huge_pages)
    out, at = {}, 0
    for name, t in tensors.items():
        view = block[at : at + t.nbytes].view(t.dtype).reshape(t.shape)
        view[...] = t
        out[name] = view
        at += padded(t.nbytes)
    return out
