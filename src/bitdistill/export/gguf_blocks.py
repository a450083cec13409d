"""Encode ternary matrices into GGML block formats, exactly, with the model's own scale Δ in every block.

GGML's ternary types hold 256 weights and one fp16 scale `d` per block (TQ2_0: 2 bits/weight, 66 bytes;
TQ1_0: base-3, 1.69 bits/weight, 54 bytes) and dequantize to `trit · d`. We store W_q (exactly, the
trits from `bitdistill.quant.numerics.ternarize`) and set `d = fp16(Δ)` for the block, so the file
dequantizes to `W_q · fp16(Δ)` bit for bit. The only loss is rounding Δ to fp16: a relative error of at
most 2^-11 (≈4.9e-4) for Δ in fp16's normal range, checked at export.

When a row is not a multiple of 256 (SmolLM2's hidden size 576) or the scale changes inside a 256-block
(group granularity below 256), Q4_0 (32 weights, fp16 `d`, 4-bit codes q - 8) holds the same trits exactly
with `d = fp16(Δ)` at 4.5 bits/weight — the fallback llama.cpp's own quantizer uses for such rows — and
F16 holds `W_q · fp16(Δ)` exactly for any shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import quantize

F16_MIN_NORMAL = float(np.finfo(np.float16).tiny)
F16_MAX = float(np.finfo(np.float16).max)
F16_REL_TOL = 2.0**-11  # worst relative error of round-to-nearest fp16 in its normal range

TERNARY_TYPES = {
    "tq2_0": GGMLQuantizationType.TQ2_0,
    "tq1_0": GGMLQuantizationType.TQ1_0,
    # not ternary-packed: W_q · fp16(Δ) as F16, the exact reference container for diagnostics (API only)
    "f16": GGMLQuantizationType.F16,
}
HEAD_TYPES = {
    "q8_0": GGMLQuantizationType.Q8_0,
    "q4_0": GGMLQuantizationType.Q4_0,
    "f16": GGMLQuantizationType.F16,
}


@dataclass
class TernaryMatrix:
    """W ≈ q · scale: q int8 [out, in] in {-1, 0, 1}; scale float32 [1 | out, 1 | groups].

    A scale of shape [1, 1] is per tensor, [out, 1] per output channel, [out, g] per group of in // g
    consecutive columns — the shapes `ternarize` returns for each granularity, flattened to 2-D.
    """

    q: np.ndarray
    scale: np.ndarray

    @classmethod
    def from_ternarize(cls, q, delta) -> TernaryMatrix:
        """From the (W_q, Δ) torch pair of `ternarize` / `BitLinear.ternary_weight` (any granularity)."""
        qn = q.detach().cpu().numpy().astype(np.int8)
        d = delta.detach().cpu().float().numpy()
        if d.ndim == 0:
            d = d.reshape(1, 1)
        elif d.ndim == 3:  # group: [out, groups, 1]
            d = d[..., 0]
        return cls(qn, np.ascontiguousarray(d, dtype=np.float32))

    def element_scale(self) -> np.ndarray:
        """The scale of every element, float32 [out, in] (broadcast, not materialized when uniform)."""
        out_f, in_f = self.q.shape
        s = self.scale
        if s.shape[1] > 1:
            s = np.repeat(s, in_f // s.shape[1], axis=1)
        return np.broadcast_to(s, (out_f, in_f))

    def permute_rows(self, order: np.ndarray) -> TernaryMatrix:
        """Reorder output rows; Δ is a mean over the whole tensor (or follows its row), so it stays exact."""
        scale = self.scale if self.scale.shape[0] == 1 else self.scale[order]
        return TernaryMatrix(np.ascontiguousarray(self.q[order]), np.ascontiguousarray(scale))

    def dequantize(self) -> np.ndarray:
        """W_q · fp16(Δ) in float32: exactly what a GGUF reader must get back."""
        s16 = self.element_scale().astype(np.float16).astype(np.float32)
        return self.q.astype(np.float32) * s16


def block_scales(m: TernaryMatrix, block: int) -> np.ndarray | None:
    """The one scale of each `block`-wide run of a row, float32 [out, in // block], or None when a run's
    elements do not share one scale (or the row is not a whole number of blocks)."""
    out_f, in_f = m.q.shape
    if in_f % block:
        return None
    s = m.scale
    if s.shape[1] == 1:
        return np.broadcast_to(s, (out_f, in_f // block)).astype(np.float32)
    per = m.element_scale().reshape(out_f, in_f // block, block)
    first = per[..., 0]
    if not np.array_equal(per, np.broadcast_to(first[..., None], per.shape)):
        return None
    return np.ascontiguousarray(first, dtype=np.float32)


def check_fp16_scale(m: TernaryMatrix, name: str) -> None:
    """Raise ValueError when fp16 cannot hold a used Δ within F16_REL_TOL (outside fp16's normal range)."""
    s = m.element_scale()
    used = s[m.q != 0] if s.size else s
    if used.size == 0:
        return
    lo, hi = float(used.min()), float(used.max())
    if lo < F16_MIN_NORMAL or hi > F16_MAX:
        raise ValueError(
            f"{name}: weight scale Δ in [{lo:.3g}, {hi:.3g}] is outside fp16's normal range "
            f"[{F16_MIN_NORMAL:.3g}, {F16_MAX:.3g}], so GGML blocks cannot hold it within 2^-11"
        )


def _patch_d(raw: np.ndarray, d: np.ndarray, type_size: int, offset: int) -> np.ndarray:
    """Overwrite the fp16 `d` field (at byte `offset` of each block) of a [rows, nb * type_size] array."""
    rows = raw.shape[0]
    view = raw.reshape(rows, -1, type_size)
    view[..., offset : offset + 2] = d.astype(np.float16).reshape(rows, -1, 1).view(np.uint8)
    return raw


def encode_ternary(m: TernaryMatrix, qtype: GGMLQuantizationType) -> np.ndarray:
    """Bytes uint8 [out, in // block * type_size] of `m` in TQ2_0, TQ1_0 or Q4_0; F16 gives float16 [out, in].

    Raises ValueError when the type cannot hold `m` exactly (use `pick_type` first).
    """
    if qtype == GGMLQuantizationType.F16:
        return m.dequantize().astype(np.float16)
    block, type_size = GGML_QUANT_SIZES[qtype]
    d = block_scales(m, block)
    if d is None:
        raise ValueError(f"{qtype.name} needs rows of whole {block}-blocks with one scale per block")
    if qtype == GGMLQuantizationType.Q4_0:
        # [d fp16][16 bytes: element j in the low nibble of byte j, element j + 16 in the high nibble]
        codes = (m.q.astype(np.int16) + 8).astype(np.uint8).reshape(m.q.shape[0], -1, 2, 16)
        qs = codes[:, :, 0, :] | (codes[:, :, 1, :] << 4)
        dd = d.astype(np.float16).reshape(m.q.shape[0], -1, 1).view(np.uint8)
        return np.concatenate([dd, qs], axis=-1).reshape(m.q.shape[0], -1)
    if qtype in (GGMLQuantizationType.TQ2_0, GGMLQuantizationType.TQ1_0):
        # gguf's encoder stores the trits of a {-1, 0, 1} input exactly (its block max is 1 or 0);
        # the scale field, the last 2 bytes of a block, then gets Δ.
        raw = quantize(m.q.astype(np.float32), qtype)
        return _patch_d(raw, d, type_size, type_size - 2)
    raise ValueError(f"{qtype.name} is not a ternary container; use TQ2_0, TQ1_0, Q4_0 or F16")


def pick_type(m: TernaryMatrix, wanted: GGMLQuantizationType, allow_fallback: bool) -> tuple:
    """(type to write, reason or None): `wanted` when it holds `m` exactly, else Q4_0, else F16.

    A row width that is not a multiple of the block always falls back (llama.cpp does the same); a scale
    that varies inside a block falls back only with `allow_fallback`, otherwise ValueError.
    """
    if wanted == GGMLQuantizationType.F16:
        return wanted, None
    block, _ = GGML_QUANT_SIZES[wanted]
    in_f = m.q.shape[1]
    if block_scales(m, block) is not None:
        return wanted, None
    if in_f % block == 0 and not allow_fallback:
        raise ValueError(
            f"the weight scale changes inside {wanted.name}'s {block}-weight blocks (one fp16 scale per "
            "block)"
        )
    reason = f"row width {in_f} is not a multiple of {block}" if in_f % block else "scale varies in a block"
    if block_scales(m, 32) is not None:
        return GGMLQuantizationType.Q4_0, reason
    return GGMLQuantizationType.F16, reason


def encode_float(w: np.ndarray, qtype: GGMLQuantizationType) -> tuple[np.ndarray, GGMLQuantizationType]:
    """A full-precision matrix (embeddings, LM head) in Q8_0/Q4_0/F16, or F16 when its rows do not fit."""
    w = np.ascontiguousarray(w, dtype=np.float32)
    if qtype != GGMLQuantizationType.F16 and w.shape[-1] % GGML_QUANT_SIZES[qtype][0]:
        qtype = GGMLQuantizationType.F16
    if qtype == GGMLQuantizationType.F16:
        return w.astype(np.float16), qtype
    return quantize(w, qtype), qtype
