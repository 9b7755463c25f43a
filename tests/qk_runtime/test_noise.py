import numpy as np

from qk_runtime.noise import portable_normal, splitmix64

# Pinned: a change to the generator changes every image every runtime makes for a given seed.
GOLDEN_SEED0 = np.array([-1.8839083909988403, 0.8645068407058716, 0.22760793566703796, -0.04211268573999405], np.float32)


def test_first_values_are_pinned():
    got = portable_normal(0, (8,))
    assert got.dtype == np.float32
    assert np.array_equal(got[:4], GOLDEN_SEED0)


def test_splitmix64_reference_value():
    # SplitMix64 seeded with 0: its first output is the published 0xE220A8397B1DCDAF
    assert int(splitmix64(0, 1)[0]) == 0xE220A8397B1DCDAF


def test_shape_order_and_odd_counts():
    flat = portable_normal(7, (2 * 3 * 5,))
    assert np.array_equal(portable_normal(7, (2, 3, 5)).reshape(-1), flat)  # C order
    assert np.array_equal(portable_normal(7, (5,)), flat[:5])  # an odd count drops the last z1
    assert not np.array_equal(portable_normal(8, (5,)), flat[:5])
