"""The merge's cast to float16 gives numpy's bits, including its slow case (subnormals)."""

from __future__ import annotations

import numpy as np
import pytest

from upp_grid.h5io import cast_field


def cast(src: np.ndarray, target: str = "<f2") -> np.ndarray:
    rows = np.zeros(src.shape, dtype=[("v", src.dtype), ("pad", "i1")])
    rows["v"] = src
    out = np.zeros(src.shape, dtype=[("w", "<f4"), ("v", target)])  # a strided field
    with np.errstate(over="ignore"):
        cast_field(out, rows, "v")
    return out["v"]


def random_tiny(n: int, seed: int) -> np.ndarray:
    """Random float32 bit patterns below 2**-14 in magnitude, both signs."""
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 0x38800000, n, dtype=np.uint32)  # 0x38800000 is 2**-14
    return bits.view(np.float32) * np.where(rng.uniform(size=n) < 0.5, -1, 1).astype(np.float32)


SPECIAL = [0.0, -0.0, 2**-14, -(2**-14), 2**-25, -(2**-25), 2**-24, 3 * 2**-26, 1e-45, -1e-45,
           65504.0, 65520.0, 7e4, -7e4, np.inf, -np.inf, np.nan, 1.0, 0.1, 1e-5]


@pytest.mark.parametrize("dtype", ["<f4", "<f8"])
def test_bits_equal_numpys_cast(dtype: str) -> None:
    ties = (np.arange(0, 1025, dtype=np.float64) + 0.5) * 2.0**-24  # halfway between subnormals
    normal = np.random.default_rng(2).normal(0, 1e-4, 200_000)
    for values in (random_tiny(1_000_000, 1), ties, -ties, np.array(SPECIAL), normal):
        src = values.astype(dtype)
        with np.errstate(over="ignore"):
            want = src.astype(np.float16)
        assert np.array_equal(cast(src).view(np.uint16), want.view(np.uint16))


def test_2d_track_fields_and_other_targets_take_numpys_cast() -> None:
    src = random_tiny(40_000, 3).reshape(1_000, 40)
    assert np.array_equal(cast(src).view(np.uint16), src.astype(np.float16).view(np.uint16))
    assert np.array_equal(cast(src, "<f4"), src)  # full precision: unchanged
    ints = np.arange(-5, 5, dtype=np.int32)
    assert np.array_equal(cast(ints, "i1"), ints.astype(np.int8))
