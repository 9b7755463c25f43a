"""The portable initial-noise generator shared by every runtime (Python, C++) and the torch
reference pipeline, so that the same seed gives the same image everywhere.

Specification (reproduce it exactly in another language):
1. A SplitMix64 stream: state = seed (as uint64); for each draw, state += 0x9E3779B97F4A7C15;
   z = state; z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9; z = (z ^ (z >> 27)) * 0x94D049BB133111EB;
   z ^= z >> 31 (all arithmetic modulo 2^64).
2. A uniform double per draw: u = (z >> 11) * 2^-53, in [0, 1).
3. Box-Muller on consecutive pairs (u1, u2): r = sqrt(-2 * log1p(-u1)), z0 = r cos(2 pi u2),
   z1 = r sin(2 pi u2), computed in double precision and rounded to float32.
4. Values fill the tensor in C (row-major) order: z0, z1 of the first pair, then the next pair;
   an odd count drops the last z1.
"""
from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def splitmix64(seed: int, count: int) -> np.ndarray:
    """The first `count` outputs of SplitMix64 seeded with `seed`, as uint64."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    with np.errstate(over="ignore"):
        state = np.uint64(seed % (1 << 64)) + _GOLDEN * np.arange(1, count + 1, dtype=np.uint64)
        z = (state ^ (state >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def portable_normal(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal float32 noise of `shape`, a pure function of `seed` (see the module doc)."""
    n = int(np.prod(shape))
    pairs = (n + 1) // 2
    u = (splitmix64(seed, 2 * pairs) >> np.uint64(11)).astype(np.float64) * (2.0 ** -53)
    u1, u2 = u[0::2], u[1::2]
    r = np.sqrt(-2.0 * np.log1p(-u1))
    theta = 2.0 * np.pi * u2
    z = np.empty(2 * pairs, dtype=np.float64)
    z[0::2] = r * np.cos(theta)
    z[1::2] = r * np.sin(theta)
    return z[:n].astype(np.float32).reshape(shape)
