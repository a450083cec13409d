"""The dtypes a packed embedding / LM head is stored in: one table, and what each dtype's bytes mean.

The validator (packed.py), the writer (pack_writer.py), the engine, the single-kernel entry points and the
GGUF exporter all look a dtype up here, so a dtype's storage, its native kernel code and its precision
rank cannot drift apart between them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .native import BF16, F16, F32, I8, Q4

Q4_GROUP = 64  # columns per q4 scale


@dataclass(frozen=True)
class DenseDtype:
    storage: str  # numpy dtype of the stored matrix: bf16 as its uint16 bits, q4 as two codes per byte
    code: int  # the native kernels' enum value (bd.h), which bd_dense_forward dispatches on
    rank: int  # precision order: of a tied matrix stored twice, the higher rank is the finer copy


DENSE = {
    "fp32": DenseDtype("float32", F32, 4),
    "fp16": DenseDtype("float16", F16, 3),
    "bf16": DenseDtype("uint16", BF16, 3),
    "int8": DenseDtype("int8", I8, 2),  # + a float32 scale per row
    "q4": DenseDtype("uint8", Q4, 1),  # + a float32 scale per row and group of Q4_GROUP columns
}
DENSE_DTYPES = tuple(DENSE)


def dense_scale_name(name: str, dtype: str) -> str:
    """The tensor holding an int8 matrix's row scales (`.scale`) or a q4 one's group scales (`.gscale`)."""
    return f"{name}.gscale" if dtype == "q4" else f"{name}.scale"


def quantize_rows_q4(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """4-bit grouped quantization (llama.cpp's Q4_0 scheme, 64 columns per scale) of w [n, k].

    Per group of 64 columns: m = the element of largest magnitude, d = m / -8, code c = clamp(round(w / d)
    + 8, 0, 15) (round half to even), so w ≈ d · (c - 8) with all 16 levels in use; columns past k are
    padded with zeros. Returns (codes uint8 [n, ceil(k/64)·32], d float32 [n, ceil(k/64)]): byte j of a
    group's 32 bytes holds the code of column j in bits 0-3 and of column j + 32 in bits 4-7.
    """
    w = np.asarray(w, dtype=np.float32)
    n, k = w.shape
    ng = -(-k // Q4_GROUP)
    wp = np.zeros((n, ng * Q4_GROUP), np.float32)
    wp[:, :k] = w
    g = wp.reshape(n, ng, Q4_GROUP)
    idx = np.abs(g).argmax(axis=2)
    d = (np.take_along_axis(g, idx[..., None], axis=2)[..., 0] / np.float32(-8.0)).astype(np.float32)
    inv = np.divide(np.float32(1.0), d, out=np.zeros_like(d), where=d != 0)
    c = np.clip(np.rint(g * inv[..., None]) + 8, 0, 15).astype(np.uint8)
    packed = (c[..., :32] | (c[..., 32:] << 4)).reshape(n, ng * 32)
    return packed, d


def dequantize_dense(t: dict[str, np.ndarray], name: str, dtype: str, k: int) -> np.ndarray:
    """A packed embedding / head tensor back to float32 [n, k] (every dense dtype, q4 included)."""
    w = t[name]
    if dtype == "bf16":
        return (w.astype(np.uint32) << 16).view(np.float32)
    if dtype == "int8":
        return w.astype(np.float32) * t[dense_scale_name(name, dtype)][:, None]
    if dtype == "q4":
        n = w.shape[0]
        c = np.concatenate([w.reshape(n, -1, 32) & 15, w.reshape(n, -1, 32) >> 4], axis=2).astype(np.float32)
        return ((c - 8) * t[dense_scale_name(name, dtype)][..., None]).reshape(n, -1)[:, :k]
    return w.astype(np.float32)
