"""Philox-4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011; the
generator of Random123, cuRAND and JAX's `threefry` sibling): a counter-based generator, so the
n-th number of a stream is computed directly from (key, counter), on any backend, in any order.

flowml's streams: key = the model's seed (64 bits); counter = (element index: 64 bits, the
random op's site id, the call counter). Each call of a function draws fresh numbers (the call
counter is part of the model's state) and each random op in a model its own (its site id).

Conversion to floats is the same everywhere: float32 uniform = (w0 >> 8) · 2⁻²⁴ and float64
uniform = (w0 · 2²¹ + (w1 >> 11)) · 2⁻⁵³, both in [0, 1); normal = Box-Muller from words 2, 3,
in float64, with its own log and cos (`log_unit`, `cos_turn`) written with IEEE basic
operations only, so that every backend can reproduce the normals bit for bit (see `normal`).
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


def words(size: int, seed: int, site: int, call: int, start: int = 0) -> tuple:
    """Four uint32 words for each of `size` elements of a random op (elements start, start+1, ...:
    element i's counter is (i mod 2^32, i >> 32, site, call), whatever the draw's size)."""
    i = np.arange(size, dtype=np.uint64) + np.uint64(start)
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


# Coefficients of fdlibm's (Sun Microsystems, 1993) e_log.c, k_sin.c and k_cos.c, as exact
# doubles (their hex bits are the intended values). Errors of the polynomials: below 2^-58.
LN2_HI, LN2_LO = 6.93147180369123816490e-01, 1.90821492927058770002e-10
LG = (6.666666666666735130e-01, 3.999999999940941908e-01, 2.857142874366239149e-01,
      2.222219843214978396e-01, 1.818357216161805012e-01, 1.531383769920937332e-01,
      1.479819860511658591e-01)
SIN = (-1.66666666666666324348e-01, 8.33333333332248946124e-03, -1.98412698298579493134e-04,
       2.75573137070700676789e-06, -2.50507602534068634195e-08, 1.58969099521155010221e-10)
COS = (4.16666666666666019037e-02, -1.38888888888741095749e-03, 2.48015872894767294178e-05,
       -2.75573143513906633035e-07, 2.08757232129817482790e-09, -1.13596475577881948265e-11)
_CHUNK = 1 << 14
TURN = 2.0 * np.pi * 2.0 ** -32  # radians per unit of a 32-bit fraction of a turn (exact scaling)


def log_unit(u: np.ndarray) -> np.ndarray:
    """log(u) for float64 u in [2^-32, 1] (Box-Muller's u1; no zeros, subnormals, infinities),
    fdlibm's method without its branches: u = 2^k (1 + f) with sqrt(2)/2 <= 1 + f < sqrt(2) (by
    integer operations on u's bits), s = f / (2 + f), log(1 + f) = f - hfsq + s (hfsq + R(s^2)).
    Below 1 ulp of the true value (tests/test_llvm_philox.py measures it)."""
    bits = u.view(np.uint64)
    hx = (bits >> 32) + (0x3FF00000 - 0x3FE6A09E)  # the high word, moved so k rounds to nearest
    k = (hx >> 20).astype(np.int64) - 0x3FF
    m = (((hx & 0xFFFFF) + 0x3FE6A09E) << 32 | (bits & 0xFFFFFFFF)).view(np.float64)
    f = m - 1.0
    hfsq = 0.5 * f * f
    s = f / (2.0 + f)
    z = s * s
    w = z * z
    t1 = w * (LG[1] + w * (LG[3] + w * LG[5]))
    t2 = z * (LG[0] + w * (LG[2] + w * (LG[4] + w * LG[6])))
    dk = k.astype(np.float64)
    return s * (hfsq + (t2 + t1)) + dk * LN2_LO - hfsq + f + dk * LN2_HI


def cos_turn(w: np.ndarray) -> np.ndarray:
    """cos(2 pi w / 2^32) for uint32 w. The argument is reduced exactly, in integers: the top two
    bits are the quadrant, the other 30 an angle in [0, pi/2), folded to x in [0, pi/4] by
    cos(pi/2 - x) = sin(x); then fdlibm's sin or cos kernel polynomial. About 1 ulp (x = m·TURN
    is rounded once); exact zeros at the quarter turns."""
    w = w.astype(np.int64)
    quadrant, r = w >> 30, w & 0x3FFFFFFF
    flip = r > (1 << 29)
    x = np.where(flip, (1 << 30) - r, r).astype(np.float64) * TURN
    z = x * x
    zz = z * z
    rs = SIN[1] + z * (SIN[2] + z * SIN[3]) + z * zz * (SIN[4] + z * SIN[5])
    sin = x + z * x * (SIN[0] + z * rs)
    rc = z * (COS[0] + z * (COS[1] + z * COS[2])) + zz * zz * (COS[3] + z * (COS[4] + z * COS[5]))
    hz = 0.5 * z
    one_hz = 1.0 - hz
    cos = one_hz + (((1.0 - one_hz) - hz) + z * rc)
    v = np.where(((quadrant & 1) == 1) ^ flip, sin, cos)
    return np.where((quadrant == 1) | (quadrant == 2), -v, v)


def normal(w2: np.ndarray, w3: np.ndarray, dtype) -> np.ndarray:
    """Standard normal by Box-Muller, in float64: sqrt(-2 log u1) cos(2 pi u2) with u1 =
    (w2 + 1) 2^-32 in (0, 1] and u2 = w3 2^-32 in [0, 1).

    log and cos are `log_unit` and `cos_turn`, not np.log/np.cos: numpy's are SIMD kernels that
    it picks by CPU (AVX-512 ones here, libm elsewhere), which differ from glibc's and libmvec's
    in the last bit (np.log: 0.35% of Box-Muller's u1) -- so no native backend could match
    them, and the reference itself would change from machine to machine. These use only + - * /,
    sqrt and integer bit operations, each rounded once (no fused multiply-add), which every
    backend evaluates identically."""
    w2, w3 = np.broadcast_arrays(w2, w3)
    out = np.empty(w2.shape, dtype)
    flat2, flat3, flat_out = w2.reshape(-1), w3.reshape(-1), out.reshape(-1)
    for a in range(0, flat_out.size, _CHUNK):  # ~40 temporaries: keep them in cache
        b = a + _CHUNK
        u1 = (flat2[a:b].astype(np.float64) + 1.0) * 2.0 ** -32
        flat_out[a:b] = np.sqrt(-2.0 * log_unit(u1)) * cos_turn(flat3[a:b])
    return out


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
