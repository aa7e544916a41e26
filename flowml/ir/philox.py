"""Philox-4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011; the
generator of Random123, cuRAND and JAX's `threefry` sibling): a counter-based generator, so the
n-th number of a stream is computed directly from (key, counter), on any backend, in any order.

flowml's streams: key = the model's seed (64 bits); counter = (element index: 64 bits, the
random op's site id, the call counter). Each call of a function draws fresh numbers (the call
counter is part of the model's state) and each random op in a model its own (its site id).

Conversion to floats is the same everywhere: float32 uniform = (w0 >> 8) · 2⁻²⁴ and float64
uniform = (w0 · 2²¹ + (w1 >> 11)) · 2⁻⁵³, both in [0, 1); normal = Box-Muller from words 2, 3.
"""

from __future__ import annotations

import numpy as np

M0, M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
W0, W1 = np.uint32(0x9E3779B9), np.uint32(0xBB67AE85)
_MASK = np.uint64(0xFFFFFFFF)
# The hidden param holding a model's stream key: i64[2] = (seed, calls so far).
RNG_PARAM = "__rng__"
_32 = np.uint64(32)


def _mulhilo(a: np.uint64, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = a * b.astype(np.uint64)
    return (p >> _32).astype(np.uint32), (p & _MASK).astype(np.uint32)


def philox4x32(counter: tuple, key: tuple, rounds: int = 10) -> tuple:
    """The four output words for counters (c0, c1, c2, c3) (uint32 arrays or scalars, broadcast
    together) and key (k0, k1) (uint32 scalars)."""
    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint32) for c in np.broadcast_arrays(*counter))
    k0, k1 = np.uint32(key[0]), np.uint32(key[1])
    with np.errstate(over="ignore"):
        for r in range(rounds):
            hi0, lo0 = _mulhilo(M0, c0)
            hi1, lo1 = _mulhilo(M1, c2)
            c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
            if r < rounds - 1:
                k0, k1 = np.uint32(k0 + W0), np.uint32(k1 + W1)
    return c0, c1, c2, c3


def words(size: int, seed: int, site: int, call: int) -> tuple:
    """Four uint32 words for each of `size` elements of a random op."""
    i = np.arange(size, dtype=np.uint64)
    lo = (i & _MASK).astype(np.uint32)
    hi = (i >> _32).astype(np.uint32)
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    key = (seed & 0xFFFFFFFF, seed >> 32)
    return philox4x32((lo, hi, np.uint32(site & 0xFFFFFFFF), np.uint32(int(call) & 0xFFFFFFFF)), key)


def uniform(w0: np.ndarray, w1: np.ndarray, dtype) -> np.ndarray:
    """Uniform in [0, 1) from words (the same rule on every backend)."""
    if np.dtype(dtype) == np.float32:
        return ((w0 >> np.uint32(8)).astype(np.float32) * np.float32(2.0 ** -24))
    hi = (w0.astype(np.uint64) << np.uint64(21)) | (w1 >> np.uint32(11)).astype(np.uint64)
    return hi.astype(np.float64) * (2.0 ** -53)


def normal(w2: np.ndarray, w3: np.ndarray, dtype) -> np.ndarray:
    """Standard normal by Box-Muller: u1 in (0, 1], u2 in [0, 1), computed in float64."""
    u1 = (w2.astype(np.float64) + 1.0) * 2.0 ** -32
    u2 = w3.astype(np.float64) * 2.0 ** -32
    z = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
    return z.astype(dtype)


def fold(seed: int, step: int) -> int:
    """The key (seed) of step `step` of a loop whose body draws with key `seed`: two words of
    Philox(seed) at a counter no element of a random op uses (site and call word all ones), so
    every step of a loop, and every step of a loop nested in it, draws its own numbers. Returned
    as a signed 64-bit int (the `__rng__` param is i64)."""
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    step = int(step) & 0xFFFFFFFFFFFFFFFF
    w0, w1, _, _ = philox4x32((step & 0xFFFFFFFF, step >> 32, 0xFFFFFFFF, 0xFFFFFFFF),
                              (seed & 0xFFFFFFFF, seed >> 32))
    v = int(w0) | (int(w1) << 32)
    return v - (1 << 64) if v >= (1 << 63) else v
