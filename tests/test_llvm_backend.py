"""The LLVM backend against the reference backend: the correctness bar.

Every model here is compiled twice, `backend="llvm"` and `backend="reference"` (both run the same
optimized graph), and called on the same arrays. Compiling costs tenths of a second, so each test
batches many ops into one program with many outputs and calls it on many arrays.

Accuracy bar: elementwise results within 4 ulp (float32) / 2 ulp (float64) of the reference, NaN
at the same positions, signed zeros and infinities as the reference; integers and bools exact.
The reference is numpy/scipy, which is itself a few ulp off in places (numpy's float32 log ~3 ulp,
scipy's float64 erf 3 ulp and erfc up to ~500 ulp, and no denormal results from erfc), so an
element beyond the bar is then judged against a more precise oracle instead: float32 against the
reference evaluated in float64, float64 against mpmath. Reductions in another order are compared
with tolerances (and a float32 sum of 2**22 terms against the float64 sum).
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flowml
from flowml.backends import scalar as S
from flowml.backends.reference import evaluate
from flowml.backends.llvm import vecmath
from helpers import run_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
ULPS = {np.dtype(np.float32): 4, np.dtype(np.float64): 2}
NP = {"f32": np.float32, "f64": np.float64, "i32": np.int32, "i64": np.int64, "bool": np.bool_}
SIZES = (0, 1, 7, 8, 9, 1023)


@pytest.fixture(scope="module", autouse=True)
def _private_cache_dir(tmp_path_factory):
    """A fresh compile cache: every kernel is really compiled, and ~/.cache stays untouched."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLOWML_CACHE_DIR", str(tmp_path_factory.mktemp("flowml-cache")))
        mp.delenv("FLOWML_CACHE", raising=False)
        mp.delenv("FLOWML_NUM_THREADS", raising=False)
        yield


def both(src: str, file: str = "test.flow"):
    return flowml.loads(src, backend="llvm", file=file), flowml.loads(src, backend="reference", file=file)


def outputs(result) -> list[np.ndarray]:
    return [np.asarray(r) for r in (result if isinstance(result, tuple) else (result,))]


# ---------------------------------------------------------------- comparisons


def ulp_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Units in the last place between a and b (same float dtype), as float64; +0 and -0 are 0
    apart, inf is one ulp above the largest finite number."""
    itype = np.int32 if np.asarray(a).dtype == np.float32 else np.int64
    def ordered(x):  # the bit patterns as integers in the order of the values
        i = np.ascontiguousarray(x).view(itype).astype(np.int64)
        mag = i & np.iinfo(itype).max
        return np.where(i < 0, -mag, mag)
    oa, ob = ordered(a), ordered(b)
    same_side = (oa >= 0) == (ob >= 0)  # no int64 overflow in oa - ob
    near = np.abs(np.where(same_side, oa - ob, 0)).astype(np.float64)
    return np.where(same_side, near, np.abs(oa.astype(np.float64)) + np.abs(ob.astype(np.float64)))


def assert_same(got, want, what: str = "") -> None:
    """Exactly equal: dtype, shape, values (NaN equal to NaN, zeros of the same sign)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype}, reference {want.dtype}"
    assert got.shape == want.shape, f"{what}: shape {got.shape}, reference {want.shape}"
    if got.dtype.kind == "f":
        same = (got == want) & (np.signbit(got) == np.signbit(want)) | (np.isnan(got) & np.isnan(want))
    else:
        same = got == want
    if not same.all():
        bad = np.argwhere(~same)[0]
        pytest.fail(f"{what}: {int((~same).sum())} of {got.size} differ, first at {tuple(bad)}: "
                    f"llvm {got[tuple(bad)]!r}, reference {want[tuple(bad)]!r}")


def assert_ulps(got, want, what: str = "", oracle=None, bar: int | None = None) -> None:
    """Within the ulp bar of the reference; where not, within the bar of `oracle(mask)` (the exact
    values of the masked elements). NaN positions, infinities and the sign of zeros must match."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype}, reference {want.dtype}"
    assert got.shape == want.shape, f"{what}: shape {got.shape}, reference {want.shape}"
    bar = ULPS[got.dtype] if bar is None else bar
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan), \
        f"{what}: NaN where the reference has none (or none where it has): llvm {got[np.isnan(got) != nan][:5]}, " \
        f"reference {want[np.isnan(got) != nan][:5]}"
    zero = (want == 0) & (got == 0)
    assert np.array_equal(np.signbit(got[zero]), np.signbit(want[zero])), f"{what}: sign of zero differs"
    far = ~nan & (ulp_distance(got, want) > bar)
    if far.any() and oracle is not None:
        exact = oracle(far)
        still = ulp_distance(got[far], exact) > bar
        if still.any():
            i = np.flatnonzero(far)[np.flatnonzero(still)[0]]
            pytest.fail(f"{what}: {int(still.sum())} element(s) beyond {bar} ulp of both the reference and the "
                        f"exact value, e.g. element {i}: llvm {got.flat[i]!r}, reference {want.flat[i]!r}, "
                        f"exact {exact[np.flatnonzero(still)[0]]!r}")
        return
    if far.any():
        i = np.flatnonzero(far)[0]
        pytest.fail(f"{what}: {int(far.sum())} element(s) beyond {bar} ulp, e.g. element {i}: llvm {got.flat[i]!r}, "
                    f"reference {want.flat[i]!r} ({ulp_distance(got, want).flat[i]:.0f} ulp)")


def assert_close(got, want, what: str = "", rtol: float | None = None, atol: float | None = None) -> None:
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype}, reference {want.dtype}"
    assert got.shape == want.shape, f"{what}: shape {got.shape}, reference {want.shape}"
    if got.dtype.kind != "f":
        return assert_same(got, want, what)
    f32 = got.dtype == np.float32
    rtol = (2e-5 if f32 else 1e-12) if rtol is None else rtol
    atol = (1e-5 if f32 else 1e-12) if atol is None else atol
    ok = np.isclose(got, want, rtol=rtol, atol=atol, equal_nan=True)
    if not ok.all():
        i = np.argwhere(~ok)[0]
        pytest.fail(f"{what}: {int((~ok).sum())} of {got.size} differ beyond rtol={rtol}, atol={atol}, first at "
                    f"{tuple(i)}: llvm {got[tuple(i)]!r}, reference {want[tuple(i)]!r}")


# ---------------------------------------------------------------- elementwise: unary

UNARY = ("exp", "log", "log1p", "expm1", "sqrt", "tanh", "sin", "cos", "erf", "erfc", "sigmoid", "softplus",
         "abs", "sign", "relu")


def _mp_functions():
    mpmath = pytest.importorskip("mpmath")
    return mpmath, {
        "exp": mpmath.exp, "log": mpmath.log, "log1p": mpmath.log1p, "expm1": mpmath.expm1,
        "sqrt": mpmath.sqrt, "tanh": mpmath.tanh, "sin": mpmath.sin, "cos": mpmath.cos, "erf": mpmath.erf,
        "erfc": mpmath.erfc, "sigmoid": lambda x: 1 / (1 + mpmath.exp(-x)),
        "softplus": lambda x: mpmath.log1p(mpmath.exp(x)), }


def special_values(dt) -> np.ndarray:
    """±0, ±inf, NaN, denormals, the extremes, overflow/underflow edges of exp, and random values
    over many magnitudes."""
    fi = np.finfo(dt)
    v = [0.0, -0.0, np.inf, -np.inf, np.nan, fi.tiny, -fi.tiny, fi.tiny / 4, -fi.tiny / 4,
         fi.smallest_subnormal, -fi.smallest_subnormal, fi.max, -fi.max, fi.eps, -fi.eps, 1.0, -1.0, 0.5, -0.5,
         2.0, 1e-8, -1e-8, 20.0, -20.0, 88.72, -88.72, 89.0, -87.3, -103.9, -104.0, 709.78, -708.4, -745.1,
         710.0, -746.0, 1e5, -1e5, 1e30, -1e30, np.pi, -np.pi, 1e-30, 26.5, 27.3, 5.9, 9.2, -9.2, 36.7, -36.7]
    rng = np.random.RandomState(0)
    v += list(rng.randn(300) * 4)
    v += list(np.exp(rng.uniform(-60, 60, 300)) * np.sign(rng.randn(300)))
    v += list(rng.uniform(-1e3, 1e3, 100))
    with np.errstate(over="ignore"):
        return np.array(v, dtype=dt)


@pytest.fixture(scope="module")
def unary_models():
    """{dtype: (llvm, reference)} models computing every unary op of one input."""
    out = {}
    for d in ("f32", "f64"):
        src = f"input x : {d}[N]\nfn f(x) -> " + ", ".join(f"{op}(x)" for op in UNARY) + ", -x\n"
        out[d] = both(src)
    return out


@pytest.mark.parametrize("d", ["f32", "f64"])
def test_unary_ops_special_values(d, unary_models):
    llvm, ref = unary_models[d]
    x = special_values(NP[d])
    got, want = outputs(llvm.f(x)), outputs(ref.f(x))
    if d == "f32":  # the oracle: the reference in float64, rounded once to float32
        with np.errstate(over="ignore"):
            exact_all = [o.astype(np.float32) for o in outputs(unary_models["f64"][1].f(x.astype(np.float64)))]
    else:
        mpmath, fns = _mp_functions()
        mpmath.mp.dps = 40
    for k, op in enumerate(UNARY + ("neg",)):
        if d == "f32":
            oracle = lambda mask, k=k: exact_all[k][mask]  # noqa: E731
        else:
            def oracle(mask, op=op):
                return np.array([float(fns[op](mpmath.mpf(float(v)))) for v in x[mask]])
        assert_ulps(got[k], want[k], f"{op} {d}", oracle=oracle)


@pytest.mark.parametrize("d", ["f32", "f64"])
def test_unary_ops_odd_sizes_and_values_in_range(d, unary_models):
    """Vector bodies and scalar remainders: every size from 0 to 1023 in steps that cross the
    vector width, on values where the reference is accurate."""
    llvm, ref = unary_models[d]
    rng = np.random.RandomState(1)
    base = (rng.randn(1023) * 3).astype(NP[d])
    for n in SIZES + (2, 3, 4, 5, 15, 16, 17, 31, 33, 100):
        x = base[:n]
        got, want = outputs(llvm.f(x)), outputs(ref.f(x))
        for k, op in enumerate(UNARY + ("neg",)):
            bar = 64 if op == "erfc" and d == "f64" else None  # scipy's erfc: up to ~60 ulp here
            assert got[k].shape == (n,)
            assert_ulps(got[k], want[k], f"{op} {d} n={n}", bar=bar)


@pytest.mark.parametrize("d", ["i32", "i64", "bool"])
def test_unary_ops_on_integers_and_bools(d):
    """Float functions of integers and bools compute in float64 (as numpy); abs, sign, relu and
    negation keep the dtype (bools have no sign or negation)."""
    ops = [op for op in UNARY if not (d == "bool" and op == "sign")]
    extra = ["stop_gradient(x) * 2"] + ([] if d == "bool" else ["-x"])
    llvm, ref = both(f"input x : {d}[N]\nfn f(x) -> " + ", ".join(f"{op}(x)" for op in ops) + ", "
                     + ", ".join(extra) + "\n")
    if d == "bool":
        x = np.array([True, False, True, True, False, False, True, False, True])
    else:
        ii = np.iinfo(NP[d])
        x = np.concatenate([np.arange(-40, 41), [ii.max, ii.min, 1000, -1000, 12345]]).astype(NP[d])
    mpmath, fns = _mp_functions()
    mpmath.mp.dps = 40
    with np.errstate(all="ignore"):
        got, want = outputs(llvm.f(x)), outputs(ref.f(x))
    for op, g, w in zip(ops + extra, got, want):
        if g.dtype.kind == "f":
            assert_ulps(g, w, f"{op} ({d})", oracle=lambda mask, op=op: np.array(
                [float(fns[op](mpmath.mpf(int(v)))) for v in x[mask]]))
        else:
            assert_same(g, w, f"{op} ({d})")


# ---------------------------------------------------------------- elementwise: binary

BINARY = ("x + y", "x - y", "x * y", "x / y", "x // y", "x % y", "maximum(x, y)", "minimum(x, y)",
          "x == y", "x != y", "x < y", "x <= y", "x > y", "x >= y", "x and y", "x or y", "not x",
          "where(x > y, x, y)", "where(x, y, x)", "clip(x, -2, 3)")


def _pair_values(d):
    if d in ("f32", "f64"):
        v = [0.0, -0.0, 1.0, -1.0, 2.5, -2.5, 3.0, -3.0, 0.1, 7.0, -7.5, 1e-310, 1e30, -1e30, 1e300,
             np.inf, -np.inf, np.nan]
    elif d == "bool":
        v = [False, True]
    else:
        ii = np.iinfo(NP[d])
        v = [0, 1, -1, 2, -2, 3, -3, 7, -7, 100, -100, ii.max, ii.min, ii.max - 1, ii.min + 1]
    with np.errstate(over="ignore"):
        v = np.array(v, dtype=NP[d])
    x, y = np.meshgrid(v, v)
    return x.ravel().copy(), y.ravel().copy()


@pytest.mark.parametrize("d", ["f32", "f64", "i32", "i64", "bool"])
def test_binary_ops_all_pairs_of_special_values(d):
    """Arithmetic, floor division and modulo (numpy's sign rules, division by zero, INT_MIN // -1), comparisons with NaN, logic, where, clip: exactly the reference's results (pow: within the
    ulp bar)."""
    ops = [op for op in BINARY if not (d == "bool" and op in ("x - y", "clip(x, -2, 3)"))]
    pow_ = "x ** y" if d != "bool" else "x and y"
    src = (f"input x : {d}[N]\ninput y : {d}[N]\nfn f(x, y) -> " + ", ".join(ops) + "\n"
           f"fn p(x, y) -> {pow_}\n")
    llvm, ref = both(src)
    x, y = _pair_values(d)
    for n in (len(x),) + SIZES[:-1]:
        got, want = outputs(llvm.f(x[:n], y[:n])), outputs(ref.f(x[:n], y[:n]))
        for op, g, w in zip(ops, got, want):
            assert_same(g, w, f"{op} ({d})")
    if d.startswith("i"):  # numpy refuses negative integer powers
        x, y = x[y >= 0], y[y >= 0]
        y = np.where(y > 100, y % 70, y).astype(y.dtype)
    g, w = llvm.p(x, y), ref.p(x, y)
    if d.startswith("f"):
        assert_ulps(g, w, f"pow ({d})")
    else:
        assert_same(g, w, f"pow ({d})")


def test_integer_division_edge_cases_do_not_trap():
    """INT_MIN // -1 and INT_MIN % -1 overflow; x86's idiv traps on them (SIGFPE would kill the
    process). numpy wraps: INT_MIN // -1 == INT_MIN, INT_MIN % -1 == 0; x // 0 == x % 0 == 0."""
    src = "input x : i64[N]\ninput y : i64[N]\ninput i : i32[N]\ninput j : i32[N]\n" \
          "fn f(x, y, i, j) -> x // y, x % y, i // j, i % j, x // -1, i % -1\n"
    code = ("import numpy as np, flowml\n"
            f"m = flowml.loads({src!r}, backend='llvm')\n"
            "x = np.array([np.iinfo(np.int64).min, 5, -5, 0], np.int64); y = np.array([-1, 0, -1, 0], np.int64)\n"
            "i = np.array([np.iinfo(np.int32).min, 5, -5, 0], np.int32); j = np.array([-1, 0, -1, 0], np.int32)\n"
            "print([r.tolist() for r in m.f(x, y, i, j)])\n")
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, f"the process died (exit {proc.returncode}): {proc.stderr[-2000:]}"
    lo64, lo32 = np.iinfo(np.int64).min, np.iinfo(np.int32).min
    assert proc.stdout.strip() == str([[lo64, 0, 5, 0], [0, 0, 0, 0], [lo32, 0, 5, 0], [0, 0, 0, 0],
                                       [lo64, -5, 5, 0], [0, 0, 0, 0]])


def test_casts_and_mixed_dtypes():
    """Every cast (float to int of NaN, inf and out-of-range values as numpy on this machine, x != 0 to bool), and ops on mixed dtypes (promotion, bool arithmetic, int math in float64)."""
    src = """
input x : f64[N]
input z : f32[N]
input i : i32[N]
input j : i64[N]
input b : bool[N]
fn f(x, z, i, j, b) -> cast(x, i32), cast(x, i64), cast(x, bool), cast(x, f32), cast(z, f64), cast(z, i32), cast(z, i64), cast(z, bool), cast(i, f32), cast(j, f32), cast(j, f64), cast(j, i32), cast(i, i64), cast(b, f64), cast(b, i32), cast(i, bool), cast(j, bool), i + z, j + x, i * j, b + i, x and i, not z, where(i, x, z), where(x, j, i), abs(i), sign(j), relu(i), -j, maximum(i, j), i / j, z + x, b * b, b + b, abs(b), maximum(b, b), minimum(b, not b), z * 2, j * 2.5, i // 2, j % 3, abs(j), sign(i), where(b, 1, 2.5), b == (i > 0)
"""
    llvm, ref = both(src)
    x = np.array([0.0, -0.0, 1.5, -1.5, 2.9, -2.9, np.inf, -np.inf, np.nan, 3e9, -3e9, 1e19, -1e19, 2.0 ** 31,
                  0.5, 7.0])
    z = x.astype(np.float32)
    i = np.array([0, 1, -1, 2 ** 31 - 1, -2 ** 31, 5, -5, 3, 4, 100, -100, 0, 7, 8, 9, 10], np.int32)
    j = np.array([0, 1, -1, 2 ** 63 - 1, -2 ** 63, 5, -5, 3, 2 ** 40, 100, -100, 0, 7, 8, 9, 10], np.int64)
    b = np.array([True, False] * 8)
    with np.errstate(all="ignore"):
        for n in (16, 1, 0):
            got, want = outputs(llvm.f(x[:n], z[:n], i[:n], j[:n], b[:n])), outputs(ref.f(x[:n], z[:n], i[:n], j[:n], b[:n]))
            for k, (g, w) in enumerate(zip(got, want)):
                assert_same(g, w, f"output {k} (n={n})")


def test_broadcasting():
    """(3,1) with (1,4), scalars with arrays, trailing and leading broadcasts, a size-1 dim
    bound at call time, reductions over broadcast iteration spaces."""
    src = """
input a : f64[3, 1]
input b : f64[1, 4]
input s : f64
input v : f32[M]
input m : f64[N, M]
input c : f64[N, 1]
input k : i32[M]
fn f(a, b, s, v, m, c, k) -> a + b, a * b - s, exp(a) * b, s * v, v + m, m - c, c * v * s, sum(a * b, axis=0), sum(a + b, axis=1, keepdims=true), max(m * c, axis=1), sum(v * m), where(m > c, m, s), k * v, m + k, maximum(c, v), s + 1, sum(a + s), c + b
"""
    llvm, ref = both(src)
    rng = np.random.RandomState(2)
    for n, mm in ((5, 7), (1, 1), (9, 8), (3, 1), (1, 1023), (0, 4)):
        args = (rng.randn(3, 1), rng.randn(1, 4), np.float64(rng.randn()), rng.randn(mm).astype(np.float32),
                rng.randn(n, mm), rng.randn(n, 1), rng.randint(-5, 5, mm).astype(np.int32))
        got, want = outputs(llvm.f(*args)), outputs(ref.f(*args))
        for k, (g, w) in enumerate(zip(got, want)):
            assert_close(g, w, f"output {k} (N={n}, M={mm})")


# ---------------------------------------------------------------- reductions


def _reduction_exprs(d):
    exprs = []
    for f in ("sum", "prod", "max", "min", "mean"):
        for ax in ("", ", axis=0", ", axis=1", ", axis=2", ", axis=(0, 2)", ", axis=(1, 2)", ", axis=-1"):
            for kd in ("", ", keepdims=true"):
                if ax or not kd:
                    exprs.append(f"{f}(x{ax}{kd})")
    if d != "bool":
        exprs += ["argmax(x, axis=1)", "argmin(x, axis=2)", "argmax(x)", "argmin(x, axis=0, keepdims=true)",
                  "sum(x * x, axis=2)", "max(abs(x), axis=(0, 1))", "sum(x, axis=1) + 1", "prod(x * 0 + 1)"]
    if d.startswith("f"):
        exprs += ["softmax(x)", "softmax(x, axis=0)", "log_softmax(x)", "log_softmax(x, axis=1)",
                  "logsumexp(x, axis=2)", "logsumexp(x)", "logsumexp(x, axis=(0, 1), keepdims=true)",
                  "sum(exp(x) * 2, axis=1)", "mean(sigmoid(x), axis=(0, 2))", "max(x - 1, axis=2)",
                  "sum(x > 0, axis=1)", "prod(x, axis=(0, 1, 2))"]
    return exprs


@pytest.mark.parametrize("d", ["f32", "f64", "i32", "i64", "bool"])
def test_reductions(d):
    """sum/prod/max/min/mean over every axis combination (keepdims or not), argmax/argmin, softmax, log_softmax, logsumexp and fused reductions, on shapes with sizes 1, 7, 8, 9, 1023."""
    exprs = _reduction_exprs(d)
    llvm, ref = both(f"input x : {d}[A, B, C]\nfn f(x) -> " + ", ".join(exprs) + "\n")
    rng = np.random.RandomState(3)
    for shape in ((2, 3, 4), (1, 1, 1), (3, 7, 9), (1, 8, 1023), (5, 1, 7), (4, 9, 8), (1023, 1, 2)):
        if d.startswith("f"):
            x = rng.randn(*shape).astype(NP[d])
        elif d == "bool":
            x = rng.rand(*shape) > 0.3
        else:
            x = rng.randint(-3, 4, shape).astype(NP[d])
        got, want = outputs(llvm.f(x)), outputs(ref.f(x))
        for e, g, w in zip(exprs, got, want):
            if e.startswith("prod(x") and d.startswith("f"):
                assert_close(g, w, f"{e} {shape}", rtol=1e-4 if d == "f32" else 1e-11, atol=0)
            else:
                assert_close(g, w, f"{e} {shape}")


@pytest.mark.parametrize("d", ["f32", "f64", "i64", "bool"])
def test_reductions_of_empty_arrays(d):
    """Zero-size axes: sums and products are their identities, means NaN, and max/min over a
    non-empty axis of an empty array are empty; max over a zero-size axis is an error at the same
    place as on the reference."""
    exprs = ["sum(x)", "sum(x, axis=0)", "sum(x, axis=1)", "sum(x, axis=2, keepdims=true)", "prod(x)",
             "prod(x, axis=1)", "mean(x, axis=0)", "mean(x)", "max(x, axis=2)", "min(x, axis=-1, keepdims=true)"]
    if d != "bool":
        exprs += ["argmax(x, axis=2)", "x + x"]
    if d.startswith("f"):
        exprs += ["softmax(x, axis=2)", "logsumexp(x, axis=2)", "exp(x)", "log_softmax(x, axis=-1)"]
    src = f"input x : {d}[A, B, C]\nfn f(x) -> " + ", ".join(exprs) + "\nfn g(x) -> max(x, axis=1)\n"
    llvm, ref = both(src)
    for shape in ((2, 0, 3), (0, 3, 2), (0, 0, 1)):
        x = np.ones(shape, NP[d])
        with np.errstate(all="ignore"):
            got, want = outputs(llvm.f(x)), outputs(ref.f(x))
        for e, g, w in zip(exprs, got, want):
            assert_same(g, w, f"{e} {shape}")
    x = np.ones((2, 0, 3), NP[d])
    with pytest.raises(flowml.FlowRuntimeError) as want:
        ref.g(x)
    with pytest.raises(flowml.FlowRuntimeError) as got:
        llvm.g(x)
    assert got.value.loc == want.value.loc
    assert "zero-size array" in str(got.value)


def test_float32_sum_of_4m_values_is_accurate(monkeypatch):
    """A float32 sum of 2**22 values within 1e-6 (relative) of the float64 sum, one thread or two
    (blocks of float32 accumulated into a float64 total)."""
    src = "input x : f32[N]\ninput y : f32[R, C]\nfn f(x, y) -> sum(x), mean(x), sum(x * 2), sum(y, axis=0), sum(y)\n"
    rng = np.random.RandomState(4)
    x = rng.rand(1 << 22).astype(np.float32)
    y = (rng.rand(1 << 20, 4) + 1).astype(np.float32)
    exact = x.astype(np.float64).sum()
    results = []
    for threads in ("1", "2"):
        monkeypatch.setenv("FLOWML_NUM_THREADS", threads)
        llvm = flowml.loads(src, backend="llvm")
        s, m, s2, cols, total = llvm.f(x, y)
        assert s.dtype == np.float32
        assert abs(float(s) - exact) <= 1e-6 * exact, (threads, float(s), exact)
        assert abs(float(m) - exact / x.size) <= 1e-6 * exact / x.size
        assert abs(float(s2) - 2 * exact) <= 1e-6 * 2 * exact
        # a column sum adds row after row into the float32 output, as numpy does (and as
        # inaccurately: ~1e-5 here): the same as the reference, not as the float64 sum
        np.testing.assert_allclose(cols, y.sum(axis=0), rtol=1e-6)
        assert abs(float(total) - y.astype(np.float64).sum()) <= 1e-6 * y.astype(np.float64).sum()
        results.append((s, m, s2, cols, total))
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=2e-7)


def _launched_threads(model, fn: str) -> int:
    """The most threads any kernel of `fn` was launched with (0 if the backend does not say)."""
    ex = model.functions[fn]._executable
    best = 0
    for binding in getattr(ex, "_bindings", {}).values():
        for launch in getattr(binding, "launch", {}).values():
            best = max(best, launch[1])
    return best


def test_two_threads_give_the_results_of_one(monkeypatch):
    """Kernels split across threads (FLOWML_NUM_THREADS=2, well above 2**16 elements per thread)
    give bit-identical elementwise results and row/column reductions, and full sums within an ulp
    or two (the partial sums are added in another order)."""
    src = """
input x : f32[N]
input y : f64[N, M]
input z : f64[N]
fn f(x, y, z) -> exp(x) * sigmoid(x) + log1p(abs(x)) + tanh(x) + erf(x), sum(y, axis=1), max(y, axis=0), softplus(z) + tanh(z) + erf(z) + sin(z) + expm1(z) + log(abs(z)), sum(y * y, axis=0), min(z, axis=0), argmax(y, axis=1), cast(x > 0, i32) * 3 + 1, sum(exp(y), axis=1, keepdims=true), sum(x), sum(y), mean(z)
"""
    rng = np.random.RandomState(5)
    n = (1 << 18) + 7
    x, y, z = rng.randn(n).astype(np.float32), rng.randn(n, 3), rng.randn(n) * 3
    runs = {}
    for threads in ("1", "2"):
        monkeypatch.setenv("FLOWML_NUM_THREADS", threads)
        llvm = flowml.loads(src, backend="llvm")  # threads are chosen at the first call for these dims
        runs[threads] = outputs(llvm.f(x, y, z))
        used = _launched_threads(llvm, "f")
        if used:
            assert used == int(threads), f"FLOWML_NUM_THREADS={threads}, kernels launched on {used}"
    for k, (a, b) in enumerate(zip(runs["1"], runs["2"])):
        if k >= 9:  # full reductions: partial sums in another order
            assert_close(a, b, f"output {k}", rtol=1e-6 if a.dtype == np.float32 else 1e-14, atol=0)
        else:
            assert_same(a, b, f"output {k}")
    ref = flowml.loads(src, backend="reference")
    for k, (a, w) in enumerate(zip(runs["2"], outputs(ref.f(x, y, z)))):
        assert_close(a, w, f"output {k} vs reference", rtol=1e-5 if a.dtype == np.float32 else 1e-11)


# ---------------------------------------------------------------- other ops, input layouts


def test_matmul_indexing_and_numpy_steps():
    """Ops that are not fused kernels (matmul, gathers, slices, softmax...) around kernels that
    read their results, in float32 and float64."""
    for d in ("f32", "f64"):
        src = f"""
input a : {d}[N, K]
input b : {d}[K, M]
input v : {d}[K]
input y : i64[N]
input t : {d}[B, N, K]
fn f(a, b, v, y, t) -> a @ b, a @ v, v @ v, exp(a @ b) + 1, sum(a @ b, axis=1), t @ b, dot(v, v), outer(v, v), a[1:, ::2], a[y, 0], a[0], a[-1, -1] * v, transpose(a) * 2, reshape(a, (K, N)), expand_dims(v, 0) + a, take(a, y, axis=0), onehot(y, 5), concatenate((a, a), axis=1), stack(a, a), categorical_crossentropy(a, y), -mean(log_softmax(a)[arange(N), y]), log_softmax(a @ b) * 2, softmax(a, axis=0), clip(a, -0.5, 0.5), broadcast_to(v, (3, K)) + 1, sum(cast(argmax(a, axis=1) == y, f64))
"""
        llvm, ref = both(src, file=f"ops_{d}.flow")
        rng = np.random.RandomState(6)
        for n, k, m in ((4, 5, 3), (1, 1, 1), (9, 8, 7), (3, 1023, 2)):
            args = (rng.randn(n, k).astype(NP[d]), rng.randn(k, m).astype(NP[d]), rng.randn(k).astype(NP[d]),
                    rng.randint(0, min(n, k, 5), n).astype(np.int64), rng.randn(2, n, k).astype(NP[d]))
            got, want = outputs(llvm.f(*args)), outputs(ref.f(*args))
            for i, (g, w) in enumerate(zip(got, want)):
                assert_close(g, w, f"output {i} ({d}, N={n}, K={k}, M={m})", rtol=1e-4 if d == "f32" else 1e-11,
                             atol=1e-4 if d == "f32" else 1e-11)


def test_non_contiguous_and_misaligned_inputs():
    """Strided views (x[:, ::2]), transposed arrays and float arrays at an odd offset in a byte
    buffer give exactly the results of the same values in fresh contiguous arrays."""
    src = """
input x : f64[N]
input y : f64[N, M]
input z : f32[N]
input i : i32[N]
fn f(x, y, z, i) -> exp(x) + 1, sum(y, axis=1), y * x[0], z * 2, sum(z), log_softmax(y), y[:, ::2] + 1, sum(y * y), cast(i, f64) + x, sigmoid(z) * i
"""
    llvm, ref = both(src)
    rng = np.random.RandomState(7)
    n = 1023
    def misaligned(values, offset):
        raw = np.zeros(values.nbytes + offset, np.uint8)
        raw[offset:] = np.frombuffer(values.tobytes(), np.uint8)
        out = np.frombuffer(raw, dtype=values.dtype, offset=offset)
        assert not out.flags.aligned or offset % values.itemsize == 0
        return out
    x = misaligned(rng.randn(n), 4)
    y_strided = rng.randn(n, 10)[:, ::2]
    y_transposed = np.asfortranarray(rng.randn(n, 5))
    y_t2 = rng.randn(5, n).T
    z = misaligned(rng.randn(n).astype(np.float32), 2)
    i = misaligned(rng.randint(-9, 9, n).astype(np.int32), 1)
    assert not x.flags.aligned and not y_strided.flags.c_contiguous and not y_t2.flags.c_contiguous
    for y in (y_strided, y_transposed, y_t2):
        fresh = [np.array(a, order="C") for a in (x, y, z, i)]
        got = outputs(llvm.f(x, y, z, i))
        for k, (g, c, w) in enumerate(zip(got, outputs(llvm.f(*fresh)), outputs(ref.f(*fresh)))):
            assert_same(g, c, f"output {k}: odd layout vs contiguous")
            assert_close(g, w, f"output {k} vs reference", rtol=1e-6, atol=1e-6)


PARAMS = """
param a : f64[5] = normal(0, 1)
param b : f64[5] = normal(0, 1)
param c : f32[3, 4] = normal(0, 1)
param s : f64 = 2
input x : f64[5]
fn swap() {
    a <- b
    b <- a
}
fn mix(x) -> sum(a) {
    a <- a * 2 + b
    b <- a - x
    s <- s + sum(a)
}
fn inplace(x) -> a, reshape(c, (4, 3)), s {
    a <- exp(a) + x
    c <- c * 0.5 + sum(c)
    s <- s * 2
}
fn chain(x) -> a * 2, softmax(b) {
    a <- a + 1
    b <- b * a
}
fn reads_after(x) -> softmax(a) + x, a[::-1] {
    a <- a * 3
}
"""


def test_param_updates_are_simultaneous_and_outputs_keep_old_values():
    """Updates see the old values of every param (swaps), updates written in place into a param's
    array, and outputs that are the old value of an updated param (or a view of one): as on the
    reference, call after call. (The LLVM backend used to return the *new* value for `fn f() -> a
    { a <- ... }`: the output was the param's array, which the update then overwrote.)"""
    llvm, ref = both(PARAMS)
    assert any(f.compiled.plan.inplace for f in llvm.functions.values()), \
        "no update is planned in place: this test lost its point"
    x = np.arange(5.0)
    for _ in range(3):
        for fn in ("swap", "mix", "inplace", "chain", "reads_after"):
            args = () if fn == "swap" else (x,)
            got, want = getattr(llvm, fn)(*args), getattr(ref, fn)(*args)
            if got is not None:
                for g, w in zip(outputs(got), outputs(want)):
                    assert_close(g, w, fn)
            for p in ("a", "b", "c", "s"):
                assert_close(llvm.params[p], ref.params[p], f"param {p} after {fn}", rtol=1e-6)
    checked = flowml.loads(PARAMS, backend="llvm", check=True)
    for fn in ("swap", "mix", "inplace", "chain", "reads_after"):
        getattr(checked, fn)(*(() if fn == "swap" else (x,)))


def test_many_shapes_in_turn():
    """Calls with ever new dims (buffers and launch sizes are set up per binding of the dims, and
    the oldest are dropped): each result as the reference's."""
    src = "input x : f64[N, M]\nfn f(x) -> sum(exp(x), axis=1), x * 2 + 1, max(x), softmax(x)\n"
    llvm, ref = both(src)
    rng = np.random.RandomState(8)
    shapes = [(n, m) for n in (1, 3, 8) for m in (1, 5, 9, 64)] + [(3, 5), (1, 1), (40, 3)]
    for shape in shapes:
        x = rng.randn(*shape)
        for g, w in zip(outputs(llvm.f(x)), outputs(ref.f(x))):
            assert_close(g, w, f"shape {shape}")
    first = outputs(llvm.f(np.ones((3, 5))))
    again = outputs(llvm.f(np.ones((3, 5))))
    for a, b in zip(first, again):
        assert_same(a, b, "same call twice")


# ---------------------------------------------------------------- random elementwise graphs

_UN = ("exp", "log", "sqrt", "tanh", "sin", "cos", "sigmoid", "softplus", "abs", "relu", "-", "log1p",
       "expm1", "erf", "sign")
_BIN = ("+", "-", "*", "/", "maximum", "minimum", "where>")


@st.composite
def elementwise_graphs(draw):
    """(source, input arrays): 1-3 inputs of random broadcastable shapes and dtypes f32/f64, and a
    few random expression trees over them."""
    nin = draw(st.integers(1, 3))
    rank = draw(st.integers(0, 3))
    full = [draw(st.sampled_from([1, 2, 3, 7, 8, 9, 17, 33])) for _ in range(rank)]
    names, decls, arrays = [], [], []
    seed = draw(st.integers(0, 2 ** 31 - 1))
    rng = np.random.RandomState(seed)
    for k in range(nin):
        r = draw(st.integers(0, rank))
        shape = [d if draw(st.booleans()) else 1 for d in full[rank - r:]]
        d = draw(st.sampled_from(["f32", "f64"]))
        names.append(f"x{k}")
        decls.append(f"input x{k} : {d}[{', '.join(map(str, shape))}]")
        arrays.append(np.asarray(rng.randn(*shape) * draw(st.sampled_from([0.5, 2.0, 10.0, 100.0]))).astype(NP[d]))

    def tree(depth):
        if depth == 0 or draw(st.integers(0, 4)) == 0:
            if draw(st.integers(0, 5)) == 0:
                return repr(draw(st.sampled_from([0.5, 2.0, -1.0, 3.0])))
            return draw(st.sampled_from(names))
        if draw(st.booleans()):
            f = draw(st.sampled_from(_UN))
            a = tree(depth - 1)
            return f"-({a})" if f == "-" else f"{f}({a})"
        f = draw(st.sampled_from(_BIN))
        a, b = tree(depth - 1), tree(depth - 1)
        if f in ("maximum", "minimum"):
            return f"{f}({a}, {b})"
        if f == "where>":
            return f"where({a} > {b}, {a}, {b})"
        return f"({a} {f} {b})"

    exprs = [tree(draw(st.integers(1, 4))) for _ in range(draw(st.integers(1, 4)))]
    src = "\n".join(decls) + f"\nfn f({', '.join(names)}) -> " + ", ".join(exprs) + "\n"
    return src, arrays


def _rounding_spread(src: str, arrays, trials: int = 4) -> list[np.ndarray]:
    """How far apart two correct evaluations of `src`'s fn f may be: the graph as built (one node
    per op, no fusion) run on the reference with every float value it computes moved by up to
    the ulp bar, at random; per output, the largest distance from the unmoved result."""
    model = flowml.Model(flowml.parse_program(src), backend="reference", opt_level=0)
    opt = model.f.compiled
    graph = opt.graph
    nodes = sorted(graph.ancestors(opt.outputs))
    inputs = {name: a for name, a in zip(model.f.input_names, arrays)}
    rng = np.random.RandomState(0)
    runs = []
    for trial in range(trials + 1):
        values: dict[int, np.ndarray] = {}
        for n in nodes:
            values = evaluate(graph, [n], inputs, {}, {}, order=[n], overrides=values)
            v = np.asarray(values[n])
            if trial and v.dtype.kind == "f" and graph.op(n).name not in ("input", "const"):
                bar = ULPS[v.dtype] * np.finfo(v.dtype).eps
                values[n] = (v.astype(np.float64) * (1 + np.asarray(rng.uniform(-bar, bar, v.shape)))).astype(v.dtype)
        runs.append([np.asarray(values[o]) for o in opt.outputs])
    return runs


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(elementwise_graphs())
def test_random_elementwise_graphs(case):
    """Random elementwise graphs give the reference's results, up to their conditioning: the
    graph evaluated with every intermediate value moved by up to the ulp bar says how far apart
    two correct evaluations (whose roundings differ by an ulp here and there) may be. NaN and
    infinities at the same places, except where such moves change them too."""
    src, arrays = case
    llvm, ref = both(src)
    with np.errstate(all="ignore"):
        got, want = outputs(llvm.f(*arrays)), outputs(ref.f(*arrays))
        exact, *moved = _rounding_spread(src, arrays)
    for k, (g, w) in enumerate(zip(got, want)):
        assert g.dtype == w.dtype and g.shape == w.shape, src
        others = [m[k] for m in moved]
        with np.errstate(all="ignore"):
            spread = np.max([np.abs(m - exact[k]) for m in others], axis=0)
            unstable = np.any([(np.isnan(m) != np.isnan(exact[k])) | (np.isinf(m) != np.isinf(exact[k]))
                               for m in others], axis=0) | np.isnan(spread)
            rtol = 1e-5 if g.dtype == np.float32 else 1e-13
            ok = np.isclose(g, w, rtol=rtol, atol=rtol, equal_nan=True) | (np.abs(g - w) <= 4 * spread) | unstable
        assert ok.all(), (f"output {k} differs at {np.argwhere(~ok)[:1]}: llvm {g[~ok][:3]}, reference {w[~ok][:3]}, "
                          f"spread {spread[~ok][:3]}\n{src}")


# ---------------------------------------------------------------- examples


def _digits(n):
    data = np.load(os.path.join(EXAMPLES, "data", "digits.npz"))
    return data["X"][:n].astype(np.float64), data["y"][:n].astype(np.int64)


def test_softmax_example_trains_as_on_the_reference():
    """A few training steps of examples/softmax.flow (llvm in check mode, so every intermediate
    value is compared too): the same outputs and params as on the reference."""
    X, y = _digits(300)
    path = os.path.join(EXAMPLES, "softmax.flow")
    llvm = flowml.load(path, backend="llvm", check=True)
    ref = flowml.load(path, backend="reference")
    for _ in range(4):
        for g, w in zip(outputs(llvm.train(X, y)), outputs(ref.train(X, y))):
            assert_close(g, w, "train", rtol=1e-12)
    for k in ("W", "b"):
        assert_close(llvm.params[k], ref.params[k], k, rtol=1e-11, atol=1e-13)
    for g, w in zip(outputs(llvm.evaluate(X, y)), outputs(ref.evaluate(X, y))):
        assert_close(g, w, "evaluate", rtol=1e-12)
    assert_same(llvm.predict(X), ref.predict(X), "predict")


def test_logreg_example_trains_as_on_the_reference():
    rng = np.random.RandomState(0)
    x, y = rng.randn(400, 784), rng.randint(0, 2, 400).astype(np.float64)
    path = os.path.join(EXAMPLES, "logreg.flow")
    llvm = flowml.load(path, backend="llvm", check=True)
    ref = flowml.load(path, backend="reference")
    for _ in range(4):
        (gp, gx), (wp, wx) = llvm.train(x, y), ref.train(x, y)
        assert_same(gp, wp, "prediction")
        assert_close(gx, wx, "xent", rtol=1e-10, atol=1e-12)
    for k in ("w", "b"):
        assert_close(llvm.params[k], ref.params[k], k, rtol=1e-10, atol=1e-12)
    assert_same(llvm.predict(x), ref.predict(x), "predict")


def test_hvp_example_as_on_the_reference():
    X, y = _digits(120)
    path = os.path.join(EXAMPLES, "hvp.flow")
    llvm = flowml.load(path, backend="llvm", check=True)
    ref = flowml.load(path, backend="reference")
    for g, w in zip(outputs(llvm.curvature(X, y)), outputs(ref.curvature(X, y))):
        assert_close(g, w, "curvature", rtol=1e-10)


def _synthesized_inputs(model, fn, rng):
    """Inputs of the declared types, every symbolic dim 5: floats in [0, 4), integers in {0, 1}
    (valid labels and indices for every example)."""
    args = []
    for name in fn.input_names:
        t = model.program.inputs[name].var.type
        shape = [d if isinstance(d, int) else 5 for d in t.shape]
        if t.dtype.kind == "f":
            args.append((rng.rand(*shape) * 4).astype(t.dtype))
        else:
            args.append(rng.randint(0, 2, shape).astype(t.dtype))
    return args


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(EXAMPLES, "*.flow"))), ids=os.path.basename)
def test_every_example_runs_as_on_the_reference(path):
    """Every fn of every example, called twice on synthesized inputs (params updated in between,
    random streams advanced): llvm in check mode gives the reference's outputs and params."""
    llvm = flowml.load(path, backend="llvm", check=True)
    ref = flowml.load(path, backend="reference")
    for name, fn in llvm.functions.items():
        args = _synthesized_inputs(llvm, fn, np.random.RandomState(0))
        for call in range(2):
            got, want = fn(*args), ref.functions[name](*args)
            if got is None:
                continue
            for g, w in zip(outputs(got), outputs(want)):
                assert_close(g, w, f"{os.path.basename(path)}: fn {name}, call {call}", rtol=1e-9, atol=1e-12)
        for p in llvm.params:
            assert_close(llvm.params[p], ref.params[p], f"{os.path.basename(path)}: param {p} after fn {name}",
                         rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------- check mode

BROKEN = """input x : f32[N]
param w : f32[N0] = 1
input k : f32[N0]
y = x * 2
z = exp(y)
fn f(x) -> y, z, sum(z)
fn step(k) -> sum(w) {
    w <- w + exp(k)
}
"""


def test_check_mode_reports_a_broken_kernel_at_its_node_and_line(monkeypatch):
    """A kernel that computes log where exp was asked is caught at the first wrong node (z, line 5), with its IR line; the params keep their values from before the failed call."""
    good = flowml.loads(BROKEN.replace("N0", "3"), backend="llvm", check=True, file="broken.flow")
    x = np.linspace(0.5, 3, 9).astype(np.float32)
    good.f(x)  # a correct kernel passes
    good.step(np.ones(3, np.float32))
    monkeypatch.setitem(S.FORMULAS, "exp", S.FORMULAS["log"])
    bad = flowml.loads(BROKEN.replace("N0", "3"), backend="llvm", check=True, file="broken.flow")
    monkeypatch.undo()
    with pytest.raises(flowml.FlowRuntimeError) as info:
        bad.f(x)
    err = info.value
    assert err.loc is not None and (err.loc.file, err.loc.line) == ("broken.flow", 5)
    text = str(err)
    assert "check mode: fn f: %" in text and "differs from the reference" in text
    assert "exp(" in text and "broken.flow:5:" in text, text  # the node's IR line, as a note
    ir = bad.f.ir()
    node = text.split("fn f: ")[1].split(" ")[0]
    assert f"{node} = fused[exp(" in ir
    # an update computed by the broken kernel: reported, and w is left as it was
    before = bad.params["w"]
    with pytest.raises(flowml.FlowRuntimeError) as info:
        bad.step(np.ones(3, np.float32))
    assert info.value.loc.line == 8  # w <- w + exp(k)
    np.testing.assert_array_equal(bad.params["w"], before)
    # without check mode the broken kernel runs silently (which is what check mode is for)
    monkeypatch.setitem(S.FORMULAS, "exp", S.FORMULAS["log"])
    silent = flowml.loads(BROKEN.replace("N0", "3"), backend="llvm", file="broken.flow")
    monkeypatch.undo()
    y, z, _ = silent.f(x)
    np.testing.assert_allclose(z, np.log(y), rtol=1e-6)


def test_check_mode_on_lazy_graphs_and_the_reference_backend():
    src = "input x : f64[N]\ninput c : f64\nfn f(x, c) -> if c > 0 then exp(x) else -x, x * 2\n"
    x = np.arange(5.0)
    for backend in ("llvm", "reference"):
        m = flowml.loads(src, backend=backend, check=True)
        a, b = m.f(x, 1.0)
        np.testing.assert_allclose(a, np.exp(x))
        np.testing.assert_array_equal(b, x * 2)


def test_check_mode_in_the_python_builder():
    flowml.reset_default_graph()
    try:
        x = flowml.tensor("x", "f64[N]")
        w = flowml.param("w", np.ones(3))
        f = flowml.function([x], flowml.sum(flowml.exp(x)) + flowml.sum(w), updates={w: w * 2},
                            backend="llvm", check=True)
        np.testing.assert_allclose(f(np.zeros(4)), 7.0)
        np.testing.assert_allclose(flowml.get_value(w), 2 * np.ones(3))
    finally:
        flowml.reset_default_graph()


# ---------------------------------------------------------------- CLI

W1 = "input x : f32[N]\nfn w1(x) -> log(1 + exp(x)) * (1 / (1 + exp(-x))) + x * x\n"


def cli(*args, env_backend=None):
    return run_cli(*args, env={"FLOWML_BACKEND": env_backend} if env_backend else None)


@pytest.mark.skipif(not vecmath.libmvec_available(), reason="the host lacks AVX2+FMA (or glibc's libmvec): "
                    "kernels are not vectorized with ymm registers")
def test_emit_asm_shows_vectorized_kernels(tmp_path):
    (tmp_path / "w1.flow").write_text(W1)
    r = cli("compile", tmp_path / "w1.flow", "--backend", "llvm", "--emit", "asm")
    assert r.returncode == 0, r.stderr
    asm = r.stdout
    assert ("%ymm" in asm or "%zmm" in asm) and "vmovups" in asm
    assert vecmath.vector_name("exp", "f32") in asm  # libmvec's 8-wide AVX2 / 16-wide AVX-512 exp
    r = cli("compile", tmp_path / "w1.flow", "--emit", "llvm")  # llvm is the default for --emit llvm
    assert r.returncode == 0, r.stderr
    assert "define void @k" in r.stdout and "vector-function-abi-variant" in r.stdout
    assert vecmath.vector_name("exp", "f32") in r.stdout


def _calls_of(ir: str, suffix: str) -> list[tuple[str, str]]:
    """(result register, argument) of every call in `ir` to a function whose name ends in
    `suffix`: libmvec's vector variant and flowml's scalar names ('_ZGVeN16v_expf',
    'flowml_mvec_expf', 'flowml_expf' for '_expf')."""
    return re.findall(rf"(%[\w.]+) = (?:tail )?call [^@]*@\w*{suffix}\([^%]*(%[\w.]+)\)", ir)


def test_w1_computes_exp_of_minus_abs_x_once_per_element():
    """W1 is softplus(x) * sigmoid(x) + x*x after the stabilize pass, and both formulas
    (flowml/backends/scalar.py) compute exp(-|x|): the generated IR calls exp twice per element.
    The calls are declared `memory(none) nounwind willreturn` (vecmath.MathLib), so LLVM's
    EarlyCSE/GVN merge them: in the optimized kernel every loop (vector body, vector epilogue,
    scalar remainder) has as many exp call sites as log1p ones, and each log1p takes an exp's
    result -- one exp per element (two would be twice as many exp calls). Values stay within the
    float32 ulp bar of the reference."""
    model, ref = both(W1)
    ir = model.w1._executable.optimized_llvm_ir()
    exps, log1ps = _calls_of(ir, "_expf"), _calls_of(ir, "_log1pf")
    assert exps and len(exps) == len(log1ps), f"{len(exps)} exp calls for {len(log1ps)} log1p calls:\n{ir}"
    assert {arg for _, arg in log1ps} == {reg for reg, _ in exps}, "a log1p call that does not take an exp's result"
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(1500) * 3, rng.uniform(-100, 100, 500),
                        [0, -0.0, 1e-30, -1e-30, 88, -88, 104, -104, np.inf, -np.inf, np.nan]]).astype(np.float32)
    assert_ulps(model.w1(x), ref.w1(x), "W1")


def test_a_short_inner_loop_calling_vector_math_is_vectorized():
    """tanh(a + c) over [N, 20, 3, 3] with a per-channel c (LeNet's layer): the 9-pixel inner
    loop carries a vectorize hint (kernels.KernelWriter), so it calls libmvec's vector tanh
    instead of being unrolled into nine scalar calls; its results are the bits of a flat tanh
    of the same sums (the remainder's scalar calls give the vector lanes' bits)."""
    src = ("input a : f64[N, 20, 3, 3]\ninput c : f64[20, 1, 1]\ninput s : f64[M]\n"
           "fn f(a, c) -> tanh(a + c)\nfn flat(s) -> tanh(s)\n")
    model = flowml.loads(src, backend="llvm")
    ir = model.f._executable.optimized_llvm_ir()
    assert "llvm.loop.vectorize.enable" in model.f._executable.program.text
    if vecmath.MathLib().is_vectorized("tanh", "f64"):
        assert re.search(r"call [^@]*@_ZGV\w*_tanh\(", ir), ir
    rng = np.random.default_rng(0)
    for n in (1, 3, 20):
        a, c = rng.standard_normal((n, 20, 3, 3)) * 3, rng.standard_normal((20, 1, 1))
        assert model.f(a, c).tobytes() == model.flat((a + c).reshape(-1)).tobytes()


def test_emit_llvm_and_asm_from_python_and_cli_errors(tmp_path):
    model = flowml.load(os.path.join(EXAMPLES, "logreg.flow"), backend="llvm")
    ex = model.train._executable
    assert ex.llvm_ir().count("define void @k") == len(ex.kernels) > 0
    asm = ex.assembly()
    labels = re.findall(r"^(k\d+):", asm, flags=re.M)
    assert sorted(labels) == sorted(f"k{n}" for n in ex.kernels)  # one function per kernel, named as in the IR
    assert all(f".globl\t{k}" in asm for k in labels) and asm.count("retq") >= len(labels)
    if vecmath.host_has_features("avx2"):  # the loops are vectorized: packed double math on vector registers
        assert "%ymm" in asm or "%zmm" in asm
        assert {"vmulpd", "vaddpd"} <= set(re.findall(r"\b(v[a-z0-9]+pd)\b", asm)), "no packed f64 arithmetic"
    r = cli("compile", "examples/logreg.flow", "--emit", "llvm", "--fn", "predict")
    assert r.returncode == 0 and r.stdout.startswith("; fn predict: "), r.stderr
    r = cli("compile", "examples/logreg.flow", "--emit", "asm", "--backend", "reference")
    assert r.returncode == 2 and "--backend llvm" in r.stderr
    r = cli("compile", "examples/logreg.flow", "--emit", "llvm", "-o", tmp_path / "out.ll")
    assert r.returncode == 0 and "define void @k" in (tmp_path / "out.ll").read_text()


def test_cli_run_on_llvm_with_check_and_the_backend_variable(tmp_path):
    r = cli("run", "examples/softmax.flow", "train", "--data", "examples/data/digits.npz", "--steps", "3",
            "--backend", "llvm", "--check")
    assert r.returncode == 0, r.stderr
    # the table shows the third step's outputs (printed to 8 digits): the reference backend's
    data = np.load(os.path.join(EXAMPLES, "data", "digits.npz"))
    ref = flowml.load(os.path.join(EXAMPLES, "softmax.flow"), backend="reference")
    for _ in range(3):
        want = ref.train(data["X"], data["y"])
    for name, value in zip(("cost", "error"), want):
        row = re.search(rf"^\W*{name}\W+f64\W+([-+0-9.e]+)", r.stdout, flags=re.M)
        assert row, f"no {name} row in:\n{r.stdout}"
        assert float(row.group(1)) == pytest.approx(float(value), rel=1e-7), name
    r = cli("run", "examples/logreg.flow", "predict", "--random", "N=5", "--check", env_backend="reference")
    assert r.returncode == 0, r.stderr
    r = cli("run", "examples/logreg.flow", "predict", "--random", "N=5", env_backend="nope")
    assert r.returncode == 1 and "unknown backend 'nope'" in r.stderr


def test_default_backend_is_llvm_and_the_variable_picks(monkeypatch):
    monkeypatch.delenv("FLOWML_BACKEND", raising=False)
    assert flowml.loads(W1).backend.name == "llvm"
    monkeypatch.setenv("FLOWML_BACKEND", "reference")
    assert flowml.loads(W1).backend.name == "reference"
    assert flowml.loads(W1, backend="llvm").backend.name == "llvm"
