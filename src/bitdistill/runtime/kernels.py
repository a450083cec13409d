"""Single-kernel entry points (numpy in, numpy out): used by tests and kernel micro-benchmarks.

The engine never goes through these; they exist so each kernel can be checked on its own against the
numerics reference and PyTorch's BitLinear.
"""

from __future__ import annotations

import ctypes as C

import numpy as np

from ..quant.bit_layout import BLOCK, ROWS, packed_2bit_shape
from .dense_dtypes import DENSE
from .native import SCALE_CHANNEL, SCALE_GROUP, SCALE_TENSOR, Linear, fptr, lib, ptr


def quantize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-token absmax int8 of x [T, k]: (xq int8 [T, kp] zero padded, s float32 [T], sum(xq) int32 [T])."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    t, k = x.shape
    kp = packed_2bit_shape(1, k)[1]
    xq = np.zeros((t, kp), np.int8)
    s = np.zeros(t, np.float32)
    sums = np.zeros(t, np.int32)
    lib().bd_quantize(ptr(x), t, k, kp, ptr(xq), ptr(s), ptr(sums))
    return xq, s, sums


def ternary_acc(packed: np.ndarray, n: int, xq: np.ndarray, gemm: bool = False) -> np.ndarray:
    """Exact int32 sums W_q @ xq.T for a 2-bit packed [n, k] weight and int8 xq [T, kp] -> [T, n]."""
    packed = np.ascontiguousarray(packed, dtype=np.uint8)
    xq = np.ascontiguousarray(xq, dtype=np.int8)
    assert packed.shape[0] * ROWS >= n and packed.shape[1] == xq.shape[1] and xq.shape[1] % BLOCK == 0
    out = np.zeros((xq.shape[0], n), np.int32)
    lib().bd_ternary_acc(ptr(packed), n, packed.shape[1], ptr(xq), xq.shape[0], ptr(out), int(gemm))
    return out


def make_linear(
    packed: np.ndarray,
    n: int,
    k: int,
    scale: np.ndarray,
    bias: np.ndarray | None = None,
    group_size: int = 0,
) -> Linear:
    """A bd_linear over numpy arrays (the caller keeps them alive). scale: [], [n] or [n, k / group]."""
    g, kp = packed_2bit_shape(n, k)
    assert packed.shape == (g, kp) and packed.dtype == np.uint8
    kind = {0: SCALE_TENSOR, 1: SCALE_CHANNEL, 2: SCALE_GROUP}[scale.ndim]
    return Linear(
        w=packed.ctypes.data_as(C.POINTER(C.c_uint8)),
        n=n, k=k, np=g * ROWS, kp=kp,
        scale_kind=kind, group_blocks=group_size // BLOCK if kind == SCALE_GROUP else 0,
        scale=fptr(scale), bias=fptr(bias), sub_norm=None,
    )  # fmt: skip


def linear_forward(
    packed: np.ndarray,
    n: int,
    x: np.ndarray,
    scale: np.ndarray,
    bias: np.ndarray | None = None,
    group_size: int = 0,
    threads: int = 1,
    gemm: bool = False,
) -> np.ndarray:
    """BitLinear eval forward in native code: x float32 [T, k] -> y float32 [T, n]."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    scale = np.array(scale, dtype=np.float32, order="C")  # keeps a 0-d (per-tensor) scale 0-d
    bias = None if bias is None else np.ascontiguousarray(bias, dtype=np.float32)
    lin = make_linear(packed, n, x.shape[1], scale, bias, group_size)
    y = np.zeros((x.shape[0], n), np.float32)
    if lib().bd_linear_forward(C.byref(lin), ptr(x), x.shape[0], ptr(y), threads, int(gemm)):
        raise MemoryError("bd_linear_forward: out of memory")
    return y


def dense_forward(
    w: np.ndarray,
    dtype: str,
    x: np.ndarray,
    rscale: np.ndarray | None = None,
    threads: int = 1,
    k: int | None = None,
) -> np.ndarray:
    """LM-head matmul: x float32 [T, k] @ w.T for w in fp32/fp16/bf16 (uint16 bits), int8 (+ row scale
    rscale [n]) or q4 (codes [n, ceil(k/64)*32] + group scales rscale [n, ceil(k/64)])."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    w = np.ascontiguousarray(w)
    n, k = w.shape[0], x.shape[1]
    if dtype == "q4":
        assert w.shape[1] == -(-k // 64) * 32 and rscale is not None and rscale.shape == (n, -(-k // 64))
    else:
        assert w.shape[1] == k
    y = np.zeros((x.shape[0], n), np.float32)
    rs = None if rscale is None else np.ascontiguousarray(rscale, dtype=np.float32)
    if lib().bd_dense_forward(ptr(w), DENSE[dtype].code, ptr(rs), n, k, ptr(x), x.shape[0], ptr(y), threads):
        raise MemoryError("bd_dense_forward: out of memory")
    return y


def silu_mul(g: np.ndarray, u: np.ndarray) -> np.ndarray:
    """The FFN gate in native code: silu(g) * u for float32 vectors."""
    out = np.array(g, dtype=np.float32, order="C")
    u = np.ascontiguousarray(u, dtype=np.float32)
    assert out.shape == u.shape and out.ndim == 1
    lib().bd_silu_mul(ptr(out), ptr(u), out.size)
    return out
