"""Bit layouts of ternary weights (2-bit kernel layout, base-3 storage); int8 per-row quantization of heads.

Two ternary encodings, both lossless for W_q ∈ {-1, 0, +1} (code c = W_q + 1 ∈ {0, 1, 2}):

2-bit (the native kernel layout, 4 trits per byte). Rows are padded to a multiple of ROWS (4) and columns to
a multiple of BLOCK (128). Rows are interleaved in groups of 4 so that a kernel computing 4 outputs at once
reads the weights strictly sequentially: the packed matrix is uint8 [Np / 4, Kp] laid out as
[row group][k block of 128][row in group (4)][32 bytes], and byte j of a (row, block) holds the codes of
columns block*128 + j + 32*i in bits 2i..2i+1 (i = 0..3). One 32-byte AVX2 load therefore yields 128
weights, split into four 32-lane vectors with a shift and a mask. Padding codes are 1 (weight 0).

Base-3 (the 1.58-bit storage format, 5 trits per byte, 1.6 bits/weight). Each row is padded to a multiple
of 5 columns and byte b of a row holds columns 5b..5b+4 as Σ c_i·3^i (values 0..242). The runtime expands it
to the 2-bit layout once at load time, so the file is ~20% smaller and decoding runs the same kernel.
"""

from __future__ import annotations

import numpy as np

from ..errors import BitDistillError

BLOCK = 128  # columns per 32-byte block in the 2-bit layout
ROWS = 4  # rows interleaved per group in the 2-bit layout
TRITS_PER_BYTE = 5


def _ceil_to(n: int, m: int) -> int:
    return (n + m - 1) // m * m


def packed_2bit_shape(n: int, k: int) -> tuple[int, int]:
    """Shape of the uint8 array `pack_2bit` returns for an [n, k] matrix."""
    return _ceil_to(n, ROWS) // ROWS, _ceil_to(k, BLOCK)


def packed_base3_shape(n: int, k: int) -> tuple[int, int]:
    """Shape of the uint8 array `pack_base3` returns for an [n, k] matrix."""
    return n, (k + TRITS_PER_BYTE - 1) // TRITS_PER_BYTE


def _codes(q: np.ndarray) -> np.ndarray:
    q = np.asarray(q)
    if q.ndim != 2:
        raise ValueError(f"expected a 2-D ternary matrix, got shape {q.shape}")
    if q.size and (q.min() < -1 or q.max() > 1):
        raise ValueError("ternary matrix holds values outside {-1, 0, 1}")
    return (q.astype(np.int16) + 1).astype(np.uint8)


def pack_2bit(q: np.ndarray) -> np.ndarray:
    """Pack an int [n, k] matrix with values in {-1, 0, 1} into the interleaved 2-bit kernel layout."""
    c = _codes(q)
    n, k = c.shape
    g, kp = packed_2bit_shape(n, k)
    padded = np.ones((g * ROWS, kp), dtype=np.uint8)
    padded[:n, :k] = c
    # [group, row, block, i, j] -> [group, block, row, j, i]
    t = padded.reshape(g, ROWS, kp // BLOCK, 4, 32).transpose(0, 2, 1, 4, 3)
    out = t[..., 0] | (t[..., 1] << 2) | (t[..., 2] << 4) | (t[..., 3] << 6)
    return np.ascontiguousarray(out.reshape(g, kp))


def unpack_2bit(packed: np.ndarray, n: int, k: int) -> np.ndarray:
    """Inverse of `pack_2bit`: the int8 [n, k] ternary matrix. Raises on a shape mismatch or code 3."""
    g, kp = packed_2bit_shape(n, k)
    if packed.dtype != np.uint8 or packed.shape != (g, kp):
        raise BitDistillError(
            f"2-bit packed weight has dtype {packed.dtype} shape {packed.shape}; expected uint8 {(g, kp)} "
            f"for a [{n}, {k}] matrix — the file is corrupt or from another version; re-run bitdistill pack"
        )
    b = packed.reshape(g, kp // BLOCK, ROWS, 32)
    c = np.stack([(b >> (2 * i)) & 3 for i in range(4)], axis=-1)  # [group, block, row, j, i]
    if (c == 3).any():
        raise BitDistillError("2-bit packed weight holds the invalid code 3: the file is corrupt; re-pack it")
    c = c.transpose(0, 2, 1, 4, 3).reshape(g * ROWS, kp)
    return (c[:n, :k].astype(np.int8) - 1).astype(np.int8)


def has_invalid_2bit_code(packed: np.ndarray) -> bool:
    """True when any 2-bit field equals 3 (never written by `pack_2bit`): a cheap corruption check."""
    b = packed.reshape(-1)
    return bool(np.any(b & (b >> 1) & 0x55))


_POW3 = np.array([1, 3, 9, 27, 81], dtype=np.uint8)
_BASE3_LUT = np.array([[(v // 3**i) % 3 for i in range(5)] for v in range(256)], dtype=np.uint8)


def pack_base3(q: np.ndarray) -> np.ndarray:
    """Pack an int [n, k] ternary matrix 5 trits per byte (uint8 [n, ceil(k/5)], values 0..242)."""
    c = _codes(q)
    n, k = c.shape
    _, kb = packed_base3_shape(n, k)
    padded = np.ones((n, kb * TRITS_PER_BYTE), dtype=np.uint8)
    padded[:, :k] = c
    t = padded.reshape(n, kb, TRITS_PER_BYTE).astype(np.uint16)
    return (t * _POW3).sum(axis=-1).astype(np.uint8)


def unpack_base3(packed: np.ndarray, n: int, k: int) -> np.ndarray:
    """Inverse of `pack_base3`: the int8 [n, k] ternary matrix. Raises on a shape mismatch or byte > 242."""
    shape = packed_base3_shape(n, k)
    if packed.dtype != np.uint8 or packed.shape != shape:
        raise BitDistillError(
            f"1.58-bit packed weight has dtype {packed.dtype} shape {packed.shape}; expected uint8 {shape} "
            f"for a [{n}, {k}] matrix — the file is corrupt or from another version; re-run bitdistill pack"
        )
    if packed.size and packed.max() > 242:
        raise BitDistillError("1.58-bit packed weight holds a byte > 242: the file is corrupt; re-pack it")
    c = _BASE3_LUT[packed].reshape(n, -1)[:, :k]
    return (c.astype(np.int8) - 1).astype(np.int8)


def base3_to_2bit(packed: np.ndarray, n: int, k: int) -> np.ndarray:
    """Expand a base-3 packed matrix into the 2-bit kernel layout (done once when a model loads)."""
    return pack_2bit(unpack_base3(packed, n, k))


def quantize_rows_int8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per row: (q int8 [n, k], scale float32 [n]) with w ≈ q · scale[:, None].

    scale = max|w_row| / 127 (1 for an all-zero row), q = clamp(round(w / scale), -127, 127).
    """
    w = np.asarray(w, dtype=np.float32)
    amax = np.abs(w).max(axis=1)
    scale = np.where(amax > 0, amax / np.float32(127.0), np.float32(1.0)).astype(np.float32)
    q = np.clip(np.rint(w / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale
