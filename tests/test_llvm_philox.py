"""Philox draws in LLVM IR (flowml/backends/llvm/philox.py) against the numpy reference
(flowml/ir/philox.py), bit for bit: uniform and normal in f32 and f64, every size, seeds,
sites and calls (negative seeds, calls past 2^31), element indices past 2^32 (the counter's
high word), a draw split across threads by `flowml_parallel_for`, millions of normals, the
Random123 known-answer vectors through the native kernel, and the loop-step keys (`fold`).
"""

from __future__ import annotations

import ctypes
import re

import numpy as np
import pytest

from flowml.backends.llvm import parallel
from flowml.backends.llvm import philox as native
from flowml.backends.llvm.jit import JitModule
from flowml.ir import philox as ref
from test_random import KNOWN_ANSWER_IDS, KNOWN_ANSWERS

KERNEL = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64)
FOLD = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_int64, ctypes.c_int64)
DTYPE = {"f32": np.float32, "f64": np.float64}
UINT = {np.dtype(np.float32): np.uint32, np.dtype(np.float64): np.uint64}
KINDS = [(d, t) for d in native.DISTS for t in DTYPE]


@pytest.fixture(scope="module")
def module():
    """All kernels in one module, as a backend would put them (one sqrt declaration)."""
    kernels = [native.random_kernel_ir(f"draw_{d}_{t}", d, t, declarations=False) for d, t in KINDS]
    text = "\n".join([native.SQRT, *kernels, native.words_kernel_ir("words"), native.fold_ir("fold")])
    return JitModule(text, name="philox_test")


def _args(out_address: int, seed: int, site: int, call: int):
    return (ctypes.c_int64 * 4)(out_address, seed, site, call)


def draw(module, dist, dtype, size, seed, site, call, start=0, nthreads=None):
    """Elements [start, start + size) of a native draw. The output address passed is that of
    element 0 (outside the buffer when start > 0), as the kernel's contract says."""
    out = np.empty(size, DTYPE[dtype])
    base = (out.ctypes.data - start * out.itemsize) % (1 << 64)
    args = _args(base - (1 << 64) if base >= 1 << 63 else base, seed, site, call)
    name = f"draw_{dist}_{dtype}"
    if nthreads is None:
        KERNEL(module.address(name))(args, start, start + size)
    else:
        assert start == 0
        parallel.parallel_for(module.address(name), ctypes.addressof(args), size, nthreads)
    return out


def reference(dist, dtype, size, seed, site, call, start=0):
    w0, w1, w2, w3 = ref.words(size, seed, site, call, start=start)
    return ref.uniform(w0, w1, DTYPE[dtype]) if dist == "uniform" else ref.normal(w2, w3, DTYPE[dtype])


def assert_bits_equal(got, want):
    assert got.dtype == want.dtype and got.shape == want.shape
    bad = np.flatnonzero(got.view(UINT[got.dtype]) != want.view(UINT[want.dtype]))
    assert bad.size == 0, f"{bad.size} of {got.size} differ, first at {bad[0]}: {got[bad[0]]!r} != {want[bad[0]]!r}"


@pytest.mark.parametrize("dist, dtype", KINDS)
@pytest.mark.parametrize("size, seed, site, call", [
    (0, 0, 0, 0), (1, 0, 0, 0), (2, 1, 2, 3), (17, -1, 5, 1), (1001, -(1 << 63), 7, (1 << 31) + 7),
    (65539, (1 << 63) - 1, (1 << 32) - 1, 123456789), (4099, 20240601, 1, -1),
])
def test_draws_are_bit_identical_with_the_reference(module, dist, dtype, size, seed, site, call):
    assert_bits_equal(draw(module, dist, dtype, size, seed, site, call),
                      reference(dist, dtype, size, seed, site, call))


@pytest.mark.parametrize("dist, dtype", KINDS)
@pytest.mark.parametrize("start", [(1 << 32) - 5, 3 * (1 << 32) + 11, (1 << 62) + 1])
def test_element_indices_past_2_to_the_32(module, dist, dtype, start):
    """The counter's second word is the index's high half: a range across 2^32 (and far past
    it) is the reference's elements at those indices."""
    got = draw(module, dist, dtype, 13, 99, 4, 2, start=start)
    assert_bits_equal(got, reference(dist, dtype, 13, 99, 4, 2, start=start))
    assert not np.array_equal(got, draw(module, dist, dtype, 13, 99, 4, 2, start=start - (1 << 32)))


@pytest.mark.parametrize("dist, dtype", KINDS)
def test_a_draw_split_across_threads_is_the_same_draw(module, dist, dtype):
    n = 300_007
    want = reference(dist, dtype, n, -42, 3, 9)
    for nthreads in (1, 2, 3):
        assert_bits_equal(draw(module, dist, dtype, n, -42, 3, 9, nthreads=nthreads), want)


@pytest.mark.parametrize("dtype", DTYPE)
def test_millions_of_normals(module, dtype):
    """Box-Muller's log and cos (ref.log_unit, ref.cos_turn) over 2^21 draws: every element's
    rounding matches, whatever lands in the vector loop or its remainder."""
    n = 1 << 21
    assert_bits_equal(draw(module, "normal", dtype, n, 7, 0, 0, nthreads=2), reference("normal", dtype, n, 7, 0, 0))


@pytest.mark.parametrize("counter, key, expected", KNOWN_ANSWERS, ids=KNOWN_ANSWER_IDS)
def test_known_answers_through_the_native_kernel(module, counter, key, expected):
    """Random123's vectors: counter (c0, c1) is the element index, c2 the site, c3 the call,
    key the seed's low and high words."""
    index = counter[0] | counter[1] << 32
    start = index - (1 << 64) if index >= 1 << 63 else index
    seed = key[0] | key[1] << 32
    out = np.empty(4, np.uint32)
    args = _args(out.ctypes.data - start * 16, seed - (1 << 64) if seed >= 1 << 63 else seed, counter[2], counter[3])
    KERNEL(module.address("words"))(args, start, start + 1)
    assert " ".join(f"{int(w):08x}" for w in out) == expected


def test_fold_gives_the_reference_loop_keys(module):
    fold = FOLD(module.address("fold"))
    for seed in (0, 1, -1, 20240601, -(1 << 63), (1 << 63) - 1):
        for step in (0, 1, 2, 1 << 32, (1 << 40) + 3, -1):
            assert fold(seed, step) == ref.fold(seed, step), (seed, step)


def test_kernels_vectorize_and_never_fuse_multiply_adds(module):
    """Each kernel's loop becomes vector code (the rounds' multiplies are 64-bit vector
    multiplies); no FMA anywhere, since one would round differently from numpy."""
    ir = module.optimized_ir()
    for d, t in KINDS:
        fn = ir[ir.index(f"@draw_{d}_{t}("):]
        fn = fn[:fn.index("\n}\n")]
        assert re.search(r"mul (nuw )?(nsw )?<\d+ x i64>", fn), f"draw_{d}_{t} did not vectorize"
    assert not re.search(r"fma|fmuladd|contract|fast", ir)
    assert not re.search(r"\bv?fn?m(add|sub)\d", module.assembly())


def test_unknown_kinds_are_refused():
    with pytest.raises(ValueError):
        native.random_kernel_ir("k", "poisson", "f64")
    with pytest.raises(ValueError):
        native.random_kernel_ir("k", "normal", "i32")
