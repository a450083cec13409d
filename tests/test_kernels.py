"""Native kernels == scalar path == numpy integer reference == PyTorch BitLinear (eval mode)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bitdistill.quant import BitLinear
from bitdistill.quant.bit_layout import pack_2bit, quantize_rows_int8
from bitdistill.quant.numerics import quantize_activation, ternarize
from bitdistill.runtime import kernels
from bitdistill.runtime.dense_dtypes import dequantize_dense, quantize_rows_q4
from bitdistill.runtime.native import SIMD_AVX2, SIMD_SCALAR, SIMD_VNNI, lib, ptr, set_simd, simd_level

# (n, k, T) for the prefill GEMM's panels: n from 1 row group to several 16-row panels with 1-3 groups left
# over (n=33: 9 groups, n=21: 6, n=9: 3), k=1500 spans many of its 128-column int16 chunks and k=129/300 end
# inside one (it visits the columns up to k only), T=9 its 5-token tiles plus a tail, T=300 several 128-token
# blocks
SHAPES = [(1, 1, 1), (5, 7, 3), (13, 129, 2), (64, 256, 5), (33, 300, 1), (100, 640, 4), (21, 1500, 9), (9, 100, 300)]


LEVELS = {"vnni": SIMD_VNNI, "avx2": SIMD_AVX2, "scalar": SIMD_SCALAR}


@pytest.fixture(params=list(LEVELS))
def simd(request):
    """Run a test on each kernel path: AVX-512 VNNI, AVX2 and portable scalar (skipping paths this CPU lacks),
    so a CI machine without AVX-512 still checks the AVX2 and scalar twins and this one checks all three."""
    level = LEVELS[request.param]
    set_simd(level)
    if simd_level() != level:
        set_simd(True)
        pytest.skip(f"this CPU has no {request.param} path")
    yield request.param
    set_simd(True)


def _x(t: int, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(t, k)).astype(np.float32) * rng.uniform(0.1, 10, size=(t, 1)).astype(np.float32)
    return x


def test_quantize_matches_numerics(simd) -> None:
    x = _x(6, 301, 0)
    x[2] = 0.0  # all-zero token: eps guard
    x[3, :] = 0.5  # ties at .5 after scaling exercise round-half-even
    x[3, 0] = 127.0
    xq, s, sums = kernels.quantize(x)
    ref_q, ref_s = quantize_activation(torch.from_numpy(x))
    np.testing.assert_array_equal(xq[:, :301], ref_q.numpy())
    assert (xq[:, 301:] == 0).all()
    np.testing.assert_array_equal(s, ref_s.numpy()[:, 0])
    np.testing.assert_array_equal(sums, ref_q.numpy().astype(np.int64).sum(axis=1))


@pytest.mark.parametrize("n,k,t", SHAPES)
@pytest.mark.parametrize("gemm", [False, True])
def test_ternary_integer_sums_exact(simd, n: int, k: int, t: int, gemm: bool) -> None:
    rng = np.random.default_rng(n * k + t)
    q = rng.integers(-1, 2, size=(n, k)).astype(np.int8)
    xq = np.zeros((t, (k + 127) // 128 * 128), np.int8)
    xq[:, :k] = rng.integers(-128, 128, size=(t, k))
    acc = kernels.ternary_acc(pack_2bit(q), n, xq, gemm=gemm)
    ref = xq[:, :k].astype(np.int64) @ q.astype(np.int64).T  # naive exact integer reference
    np.testing.assert_array_equal(acc, ref)


def test_extreme_activations_do_not_saturate(simd) -> None:
    """All -128 activations against all +1 weights: the largest int16 partial sums the kernel can see."""
    n, k = 8, 128 * 40
    q = np.ones((n, k), np.int8)
    q[1::2] = -1
    xq = np.full((3, k), -128, np.int8)  # 3 tokens: one of the prefill GEMM's tiles
    for gemm in (False, True):
        acc = kernels.ternary_acc(pack_2bit(q), n, xq, gemm=gemm)
        np.testing.assert_array_equal(acc, np.tile(np.where(np.arange(n) % 2 == 0, -128 * k, 128 * k), (3, 1)))


def _bitlinear(n: int, k: int, granularity: str, bias: bool, seed: int, group_size: int = 128) -> BitLinear:
    torch.manual_seed(seed)
    lin = BitLinear(k, n, bias=bias, granularity=granularity, group_size=group_size)
    with torch.no_grad():
        lin.weight.normal_(0, 0.05)
        if bias:
            lin.bias.normal_(0, 0.1)
    return lin.eval()


@pytest.mark.parametrize("n,k,t", SHAPES)
@pytest.mark.parametrize("gemm", [False, True])
def test_linear_matches_bitlinear_tensor_scale(simd, n: int, k: int, t: int, gemm: bool) -> None:
    lin = _bitlinear(n, k, "tensor", bias=n % 2 == 1, seed=n + k)
    x = _x(t, k, seed=t)
    with torch.no_grad():
        ref = lin(torch.from_numpy(x)).numpy()
    q, delta = ternarize(lin.weight)
    bias = None if lin.bias is None else lin.bias.detach().numpy()
    y = kernels.linear_forward(pack_2bit(q.numpy()), n, x, delta.numpy(), bias, threads=2, gemm=gemm)
    # integer sums are exact (test above); the float epilogue acc * (delta / s) agrees to ~1 ulp
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("granularity", ["channel", "group"])
@pytest.mark.parametrize("gemm", [False, True])
def test_linear_matches_bitlinear_channel_and_group(simd, granularity: str, gemm: bool) -> None:
    n, k, t = 37, 512, 3
    lin = _bitlinear(n, k, granularity, bias=True, seed=7, group_size=256)
    x = _x(t, k, seed=1)
    with torch.no_grad():
        ref = lin(torch.from_numpy(x)).numpy()
    q, delta = ternarize(lin.weight, granularity, 256)
    scale = delta.numpy().reshape(n, -1) if granularity == "group" else delta.numpy().reshape(n)
    y = kernels.linear_forward(
        pack_2bit(q.numpy()), n, x, scale, lin.bias.detach().numpy(), group_size=256, threads=2, gemm=gemm
    )
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("n,k", [(37, 64), (9, 13), (128, 200)])
def test_dense_float_head(simd, dtype: str, n: int, k: int) -> None:
    rng = np.random.default_rng(n + k)
    w32 = rng.normal(size=(n, k)).astype(np.float32)
    x = _x(3, k, seed=2)
    tw = torch.from_numpy(w32).to(
        {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    )
    bits = tw.numpy() if dtype != "bf16" else tw.view(torch.int16).numpy().view(np.uint16)
    y = kernels.dense_forward(bits, dtype, x, threads=2)
    ref = x.astype(np.float64) @ tw.float().numpy().astype(np.float64).T
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("n,k", [(37, 64), (8, 13), (12, 200)])
def test_dense_float_head_batch_equals_token_by_token(simd, dtype: str, n: int, k: int) -> None:
    """9 tokens (two 4-token blocks and one left over, k = 13 / 200 ending inside 8- and 16-column steps): each
    token's logits have the same bits as that token alone (the batch runs the same FMA chains side by side)."""
    rng = np.random.default_rng(n * k)
    w32 = rng.normal(size=(n, k)).astype(np.float32)
    tw = torch.from_numpy(w32).to({"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype])
    bits = tw.numpy() if dtype != "bf16" else tw.view(torch.int16).numpy().view(np.uint16)
    x = _x(9, k, seed=5)
    y = kernels.dense_forward(bits, dtype, x, threads=2)
    alone = np.concatenate([kernels.dense_forward(bits, dtype, x[t : t + 1], threads=1) for t in range(9)])
    np.testing.assert_array_equal(y, alone)
    ref = x.astype(np.float64) @ tw.float().numpy().astype(np.float64).T
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("n,k", [(37, 64), (10, 45), (256, 1000), (45, 576)])
def test_dense_int8_head(simd, n: int, k: int) -> None:
    rng = np.random.default_rng(k)
    w = rng.normal(size=(n, k)).astype(np.float32)
    x = _x(2, k, seed=3)
    q, rs = quantize_rows_int8(w)
    y = kernels.dense_forward(q, "int8", x, rscale=rs, threads=2)
    # reference written out: symmetric per-token int8 x, exact integer sums, acc * (row_scale / s)
    s = (127.0 / np.maximum(np.abs(x).max(axis=1), 1e-5)).astype(np.float32)
    xq = np.clip(np.rint(x * s[:, None]), -127, 127)
    acc = xq.astype(np.int64) @ q.astype(np.int64).T
    ref = acc.astype(np.float32) * (rs[None, :] / s[:, None])
    np.testing.assert_allclose(y, ref, rtol=1e-6)
    # and it approximates the float product closely
    np.testing.assert_allclose(y, x @ w.T, atol=0.05 * np.abs(x @ w.T).max())


def test_dense_int8_head_extremes_do_not_overflow(simd) -> None:
    """x and w at +-127 everywhere: every int16 pair sum is 2 * 127 * 127, the largest the kernels see; the
    sums must come out exact (k * 127 * 127 with the row's sign) on every path."""
    n, k = 19, 640
    q = np.full((n, k), 127, np.int8)
    q[1::3] = -127
    x = np.ones((2, k), np.float32)
    x[1] = -1.0
    y = kernels.dense_forward(q, "int8", x, rscale=np.ones(n, np.float32), threads=2)
    sign = np.where(np.arange(n) % 3 == 1, -1.0, 1.0)
    # acc * (1 / s) with s = 127 / max|x| = 127
    ref = np.stack([sign, -sign]) * np.float32(k * 127 * 127) * np.float32(1.0 / np.float32(127.0))
    np.testing.assert_allclose(y, ref, rtol=1e-6)


def _q4_reference(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_0 with 64-column groups written out element by element: (codes [n, kpad] int, d [n, groups])."""
    n, k = w.shape
    ng = -(-k // 64)
    codes = np.full((n, ng * 64), 8, np.int64)
    d = np.zeros((n, ng), np.float32)
    for r in range(n):
        for g in range(ng):
            grp = w[r, g * 64 : min(k, g * 64 + 64)]
            m = grp[np.argmax(np.abs(grp))]
            d[r, g] = np.float32(m) / np.float32(-8.0)
            for j, v in enumerate(grp):
                q = 0.0 if d[r, g] == 0 else np.rint(np.float32(v) * (np.float32(1.0) / d[r, g]))
                codes[r, g * 64 + j] = min(15, max(0, int(q) + 8))
    return codes, d


@pytest.mark.parametrize("n,k", [(37, 64), (10, 45), (9, 200), (256, 1000), (24, 576), (19, 1100)])
def test_dense_q4_head(simd, n: int, k: int) -> None:
    """The q4 head against integer sums per 64-column group scaled in float64. The 8-row kernel reads its rows'
    group scales 8 groups at a time through a transpose and the last ng % 8 by gather: k = 576 has 9 groups
    (one of each), 1100 has 18."""
    rng = np.random.default_rng(k + n)
    w = rng.normal(size=(n, k)).astype(np.float32)
    w[0, :] = 0.0  # all-zero groups: d = 0, codes 8
    x = _x(3, k, seed=4)
    packed, d = quantize_rows_q4(w)
    codes, d_ref = _q4_reference(w)
    np.testing.assert_array_equal(d, d_ref)
    unpacked = np.concatenate([packed.reshape(n, -1, 32) & 15, packed.reshape(n, -1, 32) >> 4], axis=2)
    np.testing.assert_array_equal(unpacked.reshape(n, -1), codes)
    y = kernels.dense_forward(packed, "q4", x, rscale=d, threads=2)
    # reference: symmetric per-token int8 x, exact integer sums per 64-column group, sum_g d_g * acc_g / s
    s = (127.0 / np.maximum(np.abs(x).max(axis=1), 1e-5)).astype(np.float32)
    xq = np.zeros((3, codes.shape[1]), np.int64)
    xq[:, :k] = np.clip(np.rint(x * s[:, None]), -127, 127)
    acc = np.einsum("tgj,ngj->tng", xq.reshape(3, -1, 64), (codes - 8).reshape(n, -1, 64))
    ref = (acc * d[None].astype(np.float64)).sum(axis=2) / s[:, None]
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    # and it approximates the float product (4-bit weights: ~10% relative error overall)
    assert np.linalg.norm(y - x @ w.T) < 0.15 * np.linalg.norm(x @ w.T)
    # dequantize_dense (export / embedding lookups) gives exactly d * (c - 8)
    deq = dequantize_dense({"h": packed, "h.gscale": d}, "h", "q4", k)
    np.testing.assert_array_equal(deq, ((codes - 8) * np.repeat(d, 64, axis=1))[:, :k].astype(np.float32))


def test_f16_conversion_rounds_like_numpy(simd) -> None:
    """The fp16 KV cache's float -> half: round to nearest even, subnormals, overflow, inf/nan, signed zero."""
    rng = np.random.default_rng(5)
    x = np.concatenate([
        rng.normal(size=4000).astype(np.float32) * np.float32(10.0) ** rng.integers(-9, 6, 4000),
        np.array([0.0, -0.0, 65504.0, 65519.0, 65520.0, 1e9, -1e9, np.inf, -np.inf, 2.0**-24, 2.0**-25,
                  3 * 2.0**-26, 2.0**-14, 2.0**-14 - 2.0**-25, 1.0 + 2.0**-11, 1.0 + 3 * 2.0**-11, 5.96e-8],
                 np.float32),
    ])  # fmt: skip
    x = np.concatenate(
        [x, (np.arange(1 << 16, dtype=np.uint32) << 13).view(np.float32)]
    )  # every half pattern
    x = np.ascontiguousarray(x[~np.isnan(x)], dtype=np.float32)  # NaN payloads aside
    h = np.zeros(x.size, np.uint16)
    lib().bd_to_f16(ptr(x), ptr(h), x.size)
    with np.errstate(over="ignore"):  # values past 65504 become inf on purpose
        ref = x.astype(np.float16).view(np.uint16)
    np.testing.assert_array_equal(h, ref)


@pytest.mark.parametrize("kv16", [False, True])
@pytest.mark.parametrize("n,hd", [(1, 16), (37, 128), (9, 80), (5, 256), (203, 64), (16, 96), (300, 64)])
@pytest.mark.parametrize("nq", [1, 3])
def test_attention_helpers(simd, kv16: bool, n: int, hd: int, nq: int) -> None:
    """softmax(q.k * scale) v over a cache in float or half for the nq query heads of one kv head: the kernels
    against numpy in float64, and each head equal bit for bit to the same head computed alone (the heads share
    each key and value read, and the values in chunks, without changing any head's order of additions)."""
    rng = np.random.default_rng(n + hd)
    q = rng.normal(size=(nq, hd)).astype(np.float32)
    k = rng.normal(size=(n, hd)).astype(np.float32)
    v = rng.normal(size=(n, hd)).astype(np.float32)
    kc, vc = (k.astype(np.float16), v.astype(np.float16)) if kv16 else (k, v)

    def attend(qs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        qs = np.ascontiguousarray(qs)
        sc = np.zeros((len(qs), n), np.float32)
        o = np.zeros((len(qs), hd), np.float32)
        lib().bd_attend_test(ptr(qs), len(qs), ptr(kc), ptr(vc), n, hd, 0.125, int(kv16), ptr(sc), ptr(o))
        return sc, o

    sc, o = attend(q)
    s = (q.astype(np.float64) @ kc.astype(np.float64).T) * 0.125
    p = np.exp(s - s.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(sc, p, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(o, p @ vc.astype(np.float64), rtol=1e-5, atol=1e-6)
    for h in range(nq):
        alone_sc, alone_o = attend(q[h : h + 1])
        np.testing.assert_array_equal(sc[h], alone_sc[0])
        np.testing.assert_array_equal(o[h], alone_o[0])


@pytest.mark.parametrize("kv16", [False, True])
@pytest.mark.parametrize("hd", [16, 64, 80, 128, 256])
@pytest.mark.parametrize("nq", [1, 3, 5])
def test_weighted_value_sums_vnni_equal_avx2_bit_for_bit(kv16: bool, hd: int, nq: int) -> None:
    """bd_wsum at the VNNI level (all query heads of a kv head per value row, 16-lane vectors) adds each lane's
    keys in the same order with the same FMAs as the AVX2 level (one head at a time, in L1 chunks): equal
    floats, so a machine's SIMD level does not change the attention output. 300 keys span several chunks;
    nq = 5 takes a group of 4 heads and a lone one. Decode's prefetch of the values (cold = 1) changes no bit."""
    set_simd(SIMD_VNNI)
    if simd_level() != SIMD_VNNI:
        set_simd(True)
        pytest.skip("this CPU has no vnni path")
    rng = np.random.default_rng(hd * 10 + nq)
    n = 300
    p = rng.uniform(size=(nq, n)).astype(np.float32)
    v = rng.normal(size=(n, hd)).astype(np.float16 if kv16 else np.float32)
    out = {}
    try:
        for level in (SIMD_VNNI, SIMD_AVX2):
            for cold in (0, 1):
                set_simd(level)
                o = np.zeros((nq, hd), np.float32)
                lib().bd_wsum(ptr(o), nq, ptr(p), n, ptr(v), int(kv16), n, hd, cold)
                out[level, cold] = o
    finally:
        set_simd(True)
    for key in out:
        np.testing.assert_array_equal(out[SIMD_VNNI, 0], out[key])
    np.testing.assert_allclose(out[SIMD_VNNI, 0], p.astype(np.float64) @ v.astype(np.float64), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("n", [1, 13, 64, 576, 1539])
def test_rmsnorm_and_the_max_it_hands_to_the_quantization(simd, n: int) -> None:
    """bd_rmsnorm: y = w * (x * inv) with inv = 1 / sqrt(float(sum(x^2) in double / n) + eps), the formula
    written out in numpy float32 (the products rounded in the same order: the same bits at every level, and in
    place too); the max |y| it returns is the quantization's absmax of y."""
    rng = np.random.default_rng(n)
    x = (rng.normal(size=n) * 3).astype(np.float32)
    w = rng.normal(size=n).astype(np.float32)
    ss = float((x.astype(np.float64) ** 2).sum())
    inv = np.float32(1.0) / np.sqrt(np.float32(np.float32(ss / n) + np.float32(1e-6)))
    ref = w * (x * inv)
    y = np.zeros(n, np.float32)
    amax = lib().bd_rmsnorm(ptr(x), ptr(w), n, 1e-6, ptr(y))
    np.testing.assert_allclose(y, ref, rtol=2e-7)  # the double sum may round its last bit apart from numpy's
    assert amax == np.abs(y).max()
    same = x.copy()
    lib().bd_rmsnorm(ptr(same), ptr(w), n, 1e-6, ptr(same))  # in place (the q/k norms)
    np.testing.assert_array_equal(same, y)


def test_silu_gate_twins_agree_and_match_torch(simd) -> None:
    """silu(g) * u: the SIMD path equals the scalar one bit for bit (same operations lane by lane), and both
    are within a few ulp of torch's, also at the clamped extremes of exp."""
    rng = np.random.default_rng(0)
    g = np.concatenate([rng.normal(size=1000) * 4, [0.0, -0.0, 1e-30, -1e-30, 87.0, -87.0, 88.5, -88.5, 100.0,
                                                   -100.0, 1e4, -1e4, 0.5, -0.5, 20.0, -20.0]]).astype(np.float32)
    u = rng.normal(size=g.size).astype(np.float32)
    got = kernels.silu_mul(g, u)
    set_simd(SIMD_SCALAR)
    try:
        scalar = kernels.silu_mul(g, u)
    finally:
        set_simd(LEVELS[simd])
    np.testing.assert_array_equal(got, scalar)
    ref = (torch.nn.functional.silu(torch.from_numpy(g).double()) * torch.from_numpy(u).double()).numpy()
    np.testing.assert_allclose(got, ref, rtol=4e-7, atol=1e-37)
    assert got[np.argmax(g == -100.0)] == 0.0  # exp overflows to inf, as in float32 torch


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_gemv_and_gemm_epilogues_agree_bit_for_bit(simd, granularity: str) -> None:
    """Decode finishes 8 rows as one vector (gemv8_finish, at each SIMD level), the GEMM per panel
    (scale_panel, or at the VNNI level the tile's own epilogue) and the ragged tail row by row (finish): the same
    float operations in the same order, so equal outputs — what lets a prompt scored alone equal the same
    prompt in a batch. n = 37: 4 vectors of 8 and a tail, two full 16-row panels and one of 5 rows; t = 21:
    a 16-token tile and a 5-token one."""
    n, k, t = 37, 576, 21
    lin = _bitlinear(n, k, granularity, bias=True, seed=3)
    x = _x(t, k, seed=2)
    q, delta = ternarize(lin.weight, granularity)
    scale = delta.numpy().reshape(-1)
    args = (pack_2bit(q.numpy()), n, x, scale, lin.bias.detach().numpy())
    gemv = kernels.linear_forward(*args, threads=1, gemm=False)
    gemm = kernels.linear_forward(*args, threads=1, gemm=True)
    np.testing.assert_array_equal(gemv, gemm)
