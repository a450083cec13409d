"""Packing of ternary weights: exact round trips, the documented byte layout, corruption detection."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bitdistill.errors import BitDistillError
from bitdistill.quant.bit_layout import (
    base3_to_2bit,
    has_invalid_2bit_code,
    pack_2bit,
    pack_base3,
    packed_2bit_shape,
    packed_base3_shape,
    quantize_rows_int8,
    unpack_2bit,
    unpack_base3,
)
from bitdistill.quant.numerics import ternarize

ODD_SHAPES = [(1, 1), (3, 7), (5, 129), (7, 255), (13, 300), (4, 128), (17, 5), (2, 641)]


def _random_ternary(n: int, k: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(-1, 2, size=(n, k)).astype(np.int8)


@pytest.mark.parametrize("n,k", ODD_SHAPES)
def test_2bit_round_trip_exact(n: int, k: int) -> None:
    q = _random_ternary(n, k, seed=n * 1000 + k)
    packed = pack_2bit(q)
    assert packed.shape == packed_2bit_shape(n, k)
    np.testing.assert_array_equal(unpack_2bit(packed, n, k), q)


@pytest.mark.parametrize("n,k", ODD_SHAPES)
def test_base3_round_trip_exact(n: int, k: int) -> None:
    q = _random_ternary(n, k, seed=n * 7 + k)
    packed = pack_base3(q)
    assert packed.shape == packed_base3_shape(n, k)
    assert packed.max() <= 242
    np.testing.assert_array_equal(unpack_base3(packed, n, k), q)
    # Expanding to the kernel layout gives the same bytes as packing 2-bit directly.
    np.testing.assert_array_equal(base3_to_2bit(packed, n, k), pack_2bit(q))


def test_round_trip_of_trained_weight_equals_ternarize() -> None:
    """Unpack(pack(ternarize(W))) is exactly the trained ternary weight, for a non-aligned latent W."""
    torch.manual_seed(0)
    w = torch.randn(37, 203) * 0.02
    q, _ = ternarize(w)
    qn = q.numpy()
    assert set(np.unique(qn)) <= {-1, 0, 1}
    np.testing.assert_array_equal(unpack_2bit(pack_2bit(qn), 37, 203), qn)
    np.testing.assert_array_equal(unpack_base3(pack_base3(qn), 37, 203), qn)


def test_2bit_layout_matches_documented_formula() -> None:
    """Check every weight's byte and bit position with a naive loop written from the module docstring."""
    n, k = 6, 260
    q = _random_ternary(n, k, seed=3)
    packed = pack_2bit(q)
    for r in range(n):
        for col in range(k):
            group, row = divmod(r, 4)
            block, within = divmod(col, 128)
            i, j = divmod(within, 32)
            byte = packed[group, block * 128 + row * 32 + j]
            assert (byte >> (2 * i)) & 3 == q[r, col] + 1
    # padding rows/columns hold code 1 (weight 0) everywhere
    g, kp = packed.shape
    codes = unpack_2bit(packed, g * 4, kp)
    assert (codes[n:, :] == 0).all() and (codes[:, k:] == 0).all()


def test_base3_layout_matches_formula() -> None:
    q = _random_ternary(2, 11, seed=4)
    packed = pack_base3(q)
    for r in range(2):
        for b in range(3):
            expect = sum((int(q[r, 5 * b + i]) + 1 if 5 * b + i < 11 else 1) * 3**i for i in range(5))
            assert packed[r, b] == expect


def test_size_ratios_vs_fp16() -> None:
    n, k = 1024, 3072
    fp16 = n * k * 2
    assert fp16 / np.prod(packed_2bit_shape(n, k)) == pytest.approx(8.0)
    assert fp16 / np.prod(packed_base3_shape(n, k)) >= 9.99


def test_corrupt_codes_are_detected() -> None:
    q = _random_ternary(4, 128)
    packed = pack_2bit(q)
    assert not has_invalid_2bit_code(packed)
    packed[0, 5] |= 0b11 << 4
    assert has_invalid_2bit_code(packed)
    with pytest.raises(BitDistillError, match="invalid code 3"):
        unpack_2bit(packed, 4, 128)
    b3 = pack_base3(q)
    b3[1, 2] = 250
    with pytest.raises(BitDistillError, match="> 242"):
        unpack_base3(b3, 4, 128)
    with pytest.raises(BitDistillError, match="expected uint8"):
        unpack_2bit(packed[:, :64], 4, 128)


def test_pack_rejects_non_ternary() -> None:
    with pytest.raises(ValueError):
        pack_2bit(np.array([[2, 0]], dtype=np.int8))


def test_int8_rows() -> None:
    rng = np.random.default_rng(1)
    w = rng.normal(size=(9, 33)).astype(np.float32)
    w[3] = 0
    q, s = quantize_rows_int8(w)
    expect_s = np.abs(w).max(axis=1) / 127
    expect_s[3] = 1
    np.testing.assert_allclose(s, expect_s, rtol=1e-7)
    assert np.abs(q).max() <= 127
    np.testing.assert_allclose(q * s[:, None], w, atol=(s[:, None] / 2 + 1e-7).max())
    assert (q[3] == 0).all()
