"""Tests of the LLVM backend's infrastructure: JIT, object cache, vector math, BLAS, threads.

Accuracy references: float32 results are compared with numpy/scipy evaluated in float64 and
rounded to float32; float64 results with numpy evaluated in long double (x87 80-bit, i.e.
glibc's expl/log1pl/...) and, for erf/erfc, glibc's erfl/erfcl called from JIT code -- plain
float64 numpy is itself up to ~3 ulp off (numpy's SIMD kernels, glibc's erfc), which would
swamp a 2-ulp bar.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import re
import time

import numpy as np
import pytest
import scipy.special as sp

import llvmlite.binding as llvm

from flowml.backends.llvm import blas, cache, parallel, vecmath
from flowml.backends.llvm.jit import JitModule, host_cpu, optimize, target_machine
from flowml.errors import FlowInternalError

HAS_LIBMVEC = vecmath.libmvec_available()
needs_libmvec = pytest.mark.skipif(not HAS_LIBMVEC, reason="libmvec.so.1 or AVX2+FMA missing: "
                                   "calls fall back to scalar libm, nothing to check about vectorization")


@pytest.fixture(scope="module", autouse=True)
def _private_cache_dir(tmp_path_factory):
    # vecmath compiles its run-time wrappers through the object cache: keep tests out of ~/.cache
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLOWML_CACHE_DIR", str(tmp_path_factory.mktemp("flowml-cache")))
        mp.delenv("FLOWML_CACHE", raising=False)
        yield


# ---------------------------------------------------------------------------------------------
# helpers

VOID_P, I64 = ctypes.c_void_p, ctypes.c_int64
IR_T = {np.float32: "float", np.float64: "double"}
DT = {"f32": np.float32, "f64": np.float64}


def ptr(a: np.ndarray) -> int:
    return a.ctypes.data


def map_kernel_ir(lib: vecmath.MathLib, d: str, body) -> str:
    """`void k(ptr x, ptr out, i64 n)`: out[i] = body(x[i]) -- body(v) returns (lines, result)."""
    t = IR_T[DT[d]]
    lines, res = body("%v")
    return f"""
define void @k(ptr noalias %x, ptr noalias %out, i64 %n) {{
entry:
  %c = icmp sgt i64 %n, 0
  br i1 %c, label %loop, label %exit
loop:
  %i = phi i64 [0, %entry], [%i1, %loop]
  %px = getelementptr inbounds {t}, ptr %x, i64 %i
  %v = load {t}, ptr %px, align 4
{lines}
  %po = getelementptr inbounds {t}, ptr %out, i64 %i
  store {t} {res}, ptr %po, align 4
  %i1 = add nuw nsw i64 %i, 1
  %d = icmp eq i64 %i1, %n
  br i1 %d, label %exit, label %loop
exit:
  ret void
}}
""" + lib.declarations()


def compile_map(lib, d, body):
    jm = JitModule(map_kernel_ir(lib, d, body))
    f = jm.cfunc("k", None, VOID_P, VOID_P, I64)

    def run(x):
        out = np.empty_like(x)
        f(ptr(x), ptr(out), x.size)
        return out
    return jm, run


def samples(dtype, n_random=60_000, seed=0) -> np.ndarray:
    """The whole float range: signed zeros, denormals, tiny, +-1e-12, +-1, large, +-80 (f32) /
    +-800 (f64), max finite, +-inf, NaN, plus log-uniform magnitudes, uniform values and random
    bit patterns."""
    f = np.finfo(dtype)
    it = np.int32 if dtype == np.float32 else np.int64
    big = 80.0 if dtype == np.float32 else 800.0
    special = [0.0, -0.0, float(f.smallest_subnormal), -float(f.smallest_subnormal), float(f.tiny) / 3,
               float(f.tiny), -float(f.tiny), 1e-30, 1e-12, -1e-12, 1e-7, 1.0, -1.0, 0.5, -0.5, 2.0, np.pi,
               big, -big, 88.7, 89.0, -87.3, -103.0, 709.7, 710.0, -708.0, -745.0, 26.5, 27.0, 1e10, -1e10,
               1e30, float(f.max), -float(f.max), np.inf, -np.inf, np.nan]
    rng = np.random.default_rng(seed)
    mag = 10.0 ** rng.uniform(np.log10(float(f.smallest_subnormal)), np.log10(float(f.max)), n_random)
    with np.errstate(all="ignore"):
        parts = [np.array(special, dtype=np.float64).astype(dtype), mag.astype(dtype), -mag.astype(dtype),
                 rng.uniform(-big, big, n_random).astype(dtype), rng.uniform(-4, 4, n_random).astype(dtype),
                 rng.integers(np.iinfo(it).min, np.iinfo(it).max, n_random, dtype=it).view(dtype)]
    return np.concatenate(parts)


def ulp_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Number of representable values between a and b (finite or inf; +0 == -0)."""
    it = np.int32 if a.dtype == np.float32 else np.int64

    def ordered(x):
        i = x.view(it).astype(np.int64)
        return np.where(i < 0, -(i & np.int64(np.iinfo(it).max)), i)
    return np.abs(ordered(a) - ordered(b))


def max_ulp(out: np.ndarray, ref: np.ndarray, x: np.ndarray) -> int:
    """Max ulp error, after checking NaNs and infinities agree exactly."""
    nan_o, nan_r = np.isnan(out), np.isnan(ref)
    bad = nan_o != nan_r
    assert not bad.any(), f"NaN mismatch at x={x[bad][:5]}: got {out[bad][:5]}, ref {ref[bad][:5]}"
    o, r, xs = out[~nan_r], ref[~nan_r], x[~nan_r]
    inf_bad = np.isinf(o) != np.isinf(r)
    assert not inf_bad.any(), f"inf mismatch at x={xs[inf_bad][:5]}: got {o[inf_bad][:5]}, ref {r[inf_bad][:5]}"
    assert np.array_equal(o[np.isinf(o)], r[np.isinf(r)]), "infinities of different sign"
    u = ulp_distance(o, r)
    return int(u.max()) if u.size else 0


_long_double_refs = {}


def long_double_ref(name: str, x: np.ndarray) -> np.ndarray:
    """glibc's `<name>l` (x86 long double) applied to float64 x, rounded to float64, via the JIT."""
    if name not in _long_double_refs:
        jm = JitModule(f"""
declare x86_fp80 @{name}l(x86_fp80)
define void @k(ptr noalias %x, ptr noalias %out, i64 %n) {{
entry:
  br label %loop
loop:
  %i = phi i64 [0, %entry], [%i1, %loop]
  %px = getelementptr inbounds double, ptr %x, i64 %i
  %v = load double, ptr %px
  %w = fpext double %v to x86_fp80
  %r = call x86_fp80 @{name}l(x86_fp80 %w)
  %rr = fptrunc x86_fp80 %r to double
  %po = getelementptr inbounds double, ptr %out, i64 %i
  store double %rr, ptr %po
  %i1 = add i64 %i, 1
  %d = icmp eq i64 %i1, %n
  br i1 %d, label %exit, label %loop
exit:
  ret void
}}""")
        _long_double_refs[name] = jm.cfunc("k", None, VOID_P, VOID_P, I64)
    out = np.empty_like(x)
    _long_double_refs[name](ptr(x), ptr(out), x.size)
    return out


NP_FUNCS = {"exp": np.exp, "log": np.log, "log1p": np.log1p, "expm1": np.expm1, "tanh": np.tanh,
            "sin": np.sin, "cos": np.cos, "erf": sp.erf, "erfc": sp.erfc}


def reference(fn: str, x: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        if x.dtype == np.float32:
            return NP_FUNCS[fn](x.astype(np.float64)).astype(np.float32)
        if fn in ("erf", "erfc"):  # scipy.special has no long double loops
            return long_double_ref(fn, x)
        return NP_FUNCS[fn](x.astype(np.longdouble)).astype(np.float64)


BAR = {"f32": 4, "f64": 2}


# ---------------------------------------------------------------------------------------------
# jit.py

AXPY = """
define void @axpy(ptr noalias %x, ptr noalias %y, ptr noalias %out, float %a, i64 %n) {
entry:
  br label %loop
loop:
  %i = phi i64 [0, %entry], [%i1, %loop]
  %px = getelementptr inbounds float, ptr %x, i64 %i
  %py = getelementptr inbounds float, ptr %y, i64 %i
  %vx = load float, ptr %px, align 4
  %vy = load float, ptr %py, align 4
  %m = fmul contract float %vx, %a
  %s = fadd contract float %m, %vy
  %po = getelementptr inbounds float, ptr %out, i64 %i
  store float %s, ptr %po, align 4
  %i1 = add nuw nsw i64 %i, 1
  %d = icmp eq i64 %i1, %n
  br i1 %d, label %exit, label %loop
exit:
  ret void
}
"""


def test_jit_compiles_vectorizes_and_runs():
    jm = JitModule(AXPY)
    f = jm.cfunc("axpy", None, VOID_P, VOID_P, VOID_P, ctypes.c_float, I64)
    x = np.arange(1001, dtype=np.float32)
    y = np.ones(1001, np.float32)
    out = np.empty_like(x)
    f(ptr(x[1:]), ptr(y[1:]), ptr(out[1:]), 2.0, 1000)  # unaligned pointers: needs `align 4` loads
    np.testing.assert_array_equal(out[1:], 2 * x[1:] + 1)
    assert re.search(r"load <(8|16) x float>", jm.optimized_ir())  # host CPU width, not SSE's 4
    asm = jm.assembly()
    assert "axpy:" in asm and ("ymm" in asm or "zmm" in asm)
    assert jm.object_code and jm.object_code[:4] == b"\x7fELF"
    assert not jm.from_cache


def test_target_machine_is_host_and_cached():
    cpu, features = host_cpu()
    assert cpu and cpu != "generic" and "+" in features
    assert target_machine() is target_machine()
    mod = llvm.parse_assembly(AXPY)
    optimize(mod)  # usable directly on a module too
    assert "<" in str(mod)


def test_unresolved_external_is_a_clear_error_not_a_segfault():
    ir = "declare double @flowml_no_such_symbol(double)\n" \
         "define double @f(double %x) {\n  %y = call double @flowml_no_such_symbol(double %x)\n  ret double %y\n}\n"
    with pytest.raises(FlowInternalError, match="flowml_no_such_symbol"):
        JitModule(ir)


def test_codegen_helpers_resolve_and_object_symbols_are_checked():
    # llvm.powi becomes a call to libgcc's __powidf2 during code generation (not visible in IR)
    jm = JitModule("define double @f(double %x, i32 %n) {\n"
                   "  %y = call double @llvm.powi.f64.i32(double %x, i32 %n)\n  ret double %y\n}\n")
    assert jm.cfunc("f", ctypes.c_double, ctypes.c_double, ctypes.c_int32)(2.0, 10) == 1024.0
    # an object needing a symbol nobody defines is refused even when its IR looks harmless
    mod = llvm.parse_assembly("declare void @flowml_never_defined()\n"
                              "define void @g() {\n  call void @flowml_never_defined()\n  ret void\n}\n")
    obj = target_machine().emit_object(mod)
    with pytest.raises(FlowInternalError, match="flowml_never_defined"):
        JitModule("declare void @g()\n", cached_object=obj)


def test_process_symbols_resolve():
    JitModule("define void @nothing() {\n  ret void\n}\n")
    for name in ("memset", "memcpy", "expf", "pthread_create", "pthread_join"):
        assert llvm.address_of_symbol(name), name


def test_invalid_ir_is_an_internal_error():
    with pytest.raises(FlowInternalError, match="invalid"):
        JitModule("define i32 @f( {")
    with pytest.raises(FlowInternalError, match="no function"):
        JitModule(AXPY).address("nope")


def test_object_cache_hook_loads_the_cached_object():
    src = "define i64 @f(i64 %x) {\n  %y = mul i64 %x, 7\n  ret i64 %y\n}\n"
    first = JitModule(src)
    assert first.cfunc("f", I64, I64)(6) == 42
    # Load that object for *different* IR: getting 42 proves the object, not the IR, was used.
    other = JitModule(src.replace("mul i64 %x, 7", "mul i64 %x, 9"), cached_object=first.object_code)
    assert other.from_cache and other.object_code == first.object_code
    assert other.cfunc("f", I64, I64)(6) == 42
    assert "define" in other.optimized_ir()  # recomputed from the IR text on demand


def test_cfunc_keeps_the_code_alive():
    f = JitModule("define i64 @f(i64 %x) {\n  %y = add i64 %x, 1\n  ret i64 %y\n}\n").cfunc("f", I64, I64)
    import gc
    gc.collect()
    assert f(41) == 42


# ---------------------------------------------------------------------------------------------
# cache.py

def test_cache_key_covers_parts_and_environment(monkeypatch):
    k = cache.cache_key("ir", {"a": 1, "b": 2})
    assert re.fullmatch(r"[0-9a-f]{64}", k)
    assert k == cache.cache_key("ir", {"b": 2, "a": 1})  # option order does not matter
    assert k != cache.cache_key("ir", {"a": 1, "b": 3})
    assert cache.cache_key("ab", "c") != cache.cache_key("a", "bc")
    monkeypatch.setattr(llvm, "llvm_version_info", (99, 0, 0))
    assert k != cache.cache_key("ir", {"a": 1, "b": 2})


def test_cache_roundtrip_and_corruption(tmp_path):
    c = cache.CompileCache(tmp_path)
    key = cache.cache_key("some ir")
    assert c.get(key) is None
    data = os.urandom(10_000)
    assert c.put(key, data)
    assert c.get(key) == data
    path = tmp_path / f"{key}.o"
    blob = path.read_bytes()
    for bad in (blob[:-1], blob[:20], blob[:-5] + b"xxxxx", b"NOTMAGIC" + blob[8:], b""):
        path.write_bytes(bad)
        assert c.get(key) is None  # detected, a miss
    assert c.put(key, data) and c.get(key) == data  # overwritten
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]  # no temp files left


def test_cache_default_dir_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWML_CACHE_DIR", str(tmp_path / "here"))
    key = cache.cache_key("x")
    assert cache.put(key, b"payload") and cache.get(key) == b"payload"
    assert (tmp_path / "here" / "llvm" / f"{key}.o").exists()
    monkeypatch.setenv("FLOWML_CACHE", "0")
    assert cache.get(key) is None and cache.put(key, b"p") is False


def test_cache_fails_soft(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_bytes(b"not a directory")
    c = cache.CompileCache(blocker / "llvm")  # mkdir fails: a file is in the way
    key = cache.cache_key("x")
    assert c.put(key, b"data") is False
    assert c.get(key) is None


def _hammer(args):
    """Worker: write the same key many times (own payload), reading in between."""
    directory, key, me, rounds = args
    c = cache.CompileCache(directory)
    payloads = [bytes([i]) * 300_000 + bytes([i, 1, 2, 3]) for i in range(4)]
    ok = torn = 0
    for _ in range(rounds):
        ok += c.put(key, payloads[me])
        got = c.get(key)
        if got is not None and got not in payloads:
            torn += 1
    return ok, torn


def test_cache_concurrent_writers(tmp_path):
    key = cache.cache_key("shared")
    try:
        ctx = multiprocessing.get_context("fork")  # the children only do file I/O
    except ValueError:
        ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        results = pool.map(_hammer, [(str(tmp_path), key, i, 40) for i in range(4)])
    assert all(ok == 40 for ok, _ in results), results  # every put succeeded
    assert all(torn == 0 for _, torn in results), results  # no reader saw a mix
    assert cache.CompileCache(tmp_path).get(key) is not None
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_compile_cached_hits_on_second_use(tmp_path):
    c = cache.CompileCache(tmp_path)
    a = cache.compile_cached(AXPY, {"opt": 3}, cache=c)
    b = cache.compile_cached(AXPY, {"opt": 3}, cache=c)
    assert not a.from_cache and b.from_cache and a.object_code == b.object_code
    x = np.arange(64, dtype=np.float32)
    out = np.empty_like(x)
    b.cfunc("axpy", None, VOID_P, VOID_P, VOID_P, ctypes.c_float, I64)(ptr(x), ptr(x), ptr(out), 3.0, 64)
    np.testing.assert_array_equal(out, 4 * x)


# ---------------------------------------------------------------------------------------------
# vecmath.py

FUNCS = ("exp", "log", "log1p", "expm1", "tanh", "sin", "cos", "erf", "erfc")


@pytest.mark.parametrize("d", ["f32", "f64"])
@pytest.mark.parametrize("fn", FUNCS)
def test_vecmath_accuracy(fn, d):
    lib = vecmath.MathLib()
    jm, run = compile_map(lib, d, lambda v: (f"  %r = {lib.call(fn, d, v)}", "%r"))
    x = samples(DT[d])
    worst = max_ulp(run(x), reference(fn, x), x)
    assert worst <= BAR[d], f"{fn} {d}: {worst} ulp (mode {lib.mode(fn, d)})"
    if HAS_LIBMVEC:
        ir = jm.optimized_ir()
        mode = lib.mode(fn, d)
        if mode == "libmvec":
            assert f"@{vecmath.vector_callee(fn, d)}(" in ir, "loop not vectorized through libmvec"
            width = vecmath._LANES[d]
            assert f"<{width} x {IR_T[DT[d]]}>" in ir
        elif mode == "inline":
            assert re.search(rf"<\d+ x {IR_T[DT[d]]}>", ir), "inline function not vectorized"


@pytest.mark.parametrize("d", ["f32", "f64"])
def test_vecmath_pow_accuracy(d):
    dt = DT[d]
    lib = vecmath.MathLib()
    t = IR_T[dt]
    jm = JitModule(f"""
define void @k(ptr noalias %x, ptr noalias %y, ptr noalias %out, i64 %n) {{
entry:
  br label %loop
loop:
  %i = phi i64 [0, %entry], [%i1, %loop]
  %px = getelementptr inbounds {t}, ptr %x, i64 %i
  %a = load {t}, ptr %px, align 4
  %py = getelementptr inbounds {t}, ptr %y, i64 %i
  %b = load {t}, ptr %py, align 4
  %r = {lib.call('pow', d, '%a', '%b')}
  %po = getelementptr inbounds {t}, ptr %out, i64 %i
  store {t} %r, ptr %po, align 4
  %i1 = add nuw nsw i64 %i, 1
  %d = icmp eq i64 %i1, %n
  br i1 %d, label %exit, label %loop
exit:
  ret void
}}
""" + lib.declarations())
    x = samples(dt, n_random=30_000)
    rng = np.random.default_rng(1)
    xs = np.concatenate([np.abs(x), x])
    ys = np.concatenate([rng.uniform(-50, 50, x.size),
                         rng.choice([0, 1, -1, 2, 3, 0.5, -0.5, 1e10, np.inf, -np.inf, np.nan], x.size)]).astype(dt)
    ys[::7] = samples(dt, n_random=30_000, seed=2)[: ys[::7].size]
    # Random bit patterns include signalling NaNs, and glibc's pow(sNaN, 0) is NaN while numpy
    # (which converts to float64 first, quieting it) gives 1: use quiet NaNs.
    xs[np.isnan(xs)] = np.nan
    ys[np.isnan(ys)] = np.nan
    out = np.empty_like(xs)
    jm.cfunc("k", None, VOID_P, VOID_P, VOID_P, I64)(ptr(xs), ptr(ys), ptr(out), xs.size)
    with np.errstate(all="ignore"):
        wide = np.float64 if d == "f32" else np.longdouble
        ref = np.power(xs.astype(wide), ys.astype(wide)).astype(dt)
    assert max_ulp(out, ref, xs) <= BAR[d]
    if HAS_LIBMVEC:
        assert f"@{vecmath.vector_name('pow', d)}(" in jm.optimized_ir()


def _sigmoid_ref(x):
    with np.errstate(all="ignore"):
        if x.dtype == np.float32:
            return sp.expit(x.astype(np.float64)).astype(np.float32)
        w = x.astype(np.longdouble)
        return (1 / (1 + np.exp(-w))).astype(np.float64)


def _softplus_ref(x):
    with np.errstate(all="ignore"):
        w = x.astype(np.float64 if x.dtype == np.float32 else np.longdouble)
        return (np.maximum(w, 0) + np.log1p(np.exp(-np.abs(w)))).astype(x.dtype)


@pytest.mark.parametrize("d", ["f32", "f64"])
@pytest.mark.parametrize("name", ["sigmoid", "softplus"])
def test_sigmoid_softplus(name, d):
    """The LLVM backend's kernels for sigmoid and softplus (their formulas are the shared ones in
    flowml/backends/scalar.py, on top of vecmath's exp and log1p)."""
    import flowml
    model = flowml.loads(f"input x : {d}[N]\nfn f(x) -> {name}(x)\n", backend="llvm")

    def run(v):
        return model.f(np.ascontiguousarray(v))
    x = samples(DT[d])
    out = run(x)
    ref = (_sigmoid_ref if name == "sigmoid" else _softplus_ref)(x)
    assert max_ulp(out, ref, x) <= BAR[d]
    big = 80.0 if d == "f32" else 800.0
    edge = np.array([big, -big, np.inf, -np.inf, 0.0, -0.0], DT[d])
    got = run(edge)
    if name == "sigmoid":
        np.testing.assert_array_equal(got[[0, 2, 3, 4, 5]], [1, 1, 0, 0.5, 0.5])
        # sigmoid(-80) = 1.8e-35 in f32, not flushed to 0; sigmoid(-800) = 0 in f64 (underflow)
        assert (got[1] > 0) == (d == "f32") and max_ulp(got[1:2], _sigmoid_ref(edge[1:2]), edge[1:2]) <= BAR[d]
    else:
        np.testing.assert_array_equal(got[[0, 2, 3]], [big, np.inf, 0])  # exact at +800 / +80
        assert max_ulp(got[1:2], _softplus_ref(edge[1:2]), edge[1:2]) <= BAR[d]
        np.testing.assert_allclose(got[4:], np.log(2), rtol=1e-6)


@needs_libmvec
@pytest.mark.parametrize("d", ["f32", "f64"])
def test_vector_body_and_remainder_agree_bitwise(d):
    # The scalar remainder calls lane 0 of the same vector function, so where an element falls
    # (vector body, vector epilogue, scalar remainder) does not change its bits.
    lib = vecmath.MathLib()
    _, run = compile_map(lib, d, lambda v: (
        f"  %a = {lib.call('tanh', d, v)}\n  %b = {lib.call('log1p', d, '%a')}\n  %r = fadd {IR_T[DT[d]]} %a, %b",
        "%r"))
    x = np.random.default_rng(4).uniform(-3, 3, 4099).astype(DT[d])
    whole = run(x)
    for start in range(0, 64, 7):  # every alignment and remainder length
        part = x[start:start + 37].copy()
        np.testing.assert_array_equal(run(part).view(np.uint8), whole[start:start + 37].view(np.uint8))
        one = x[start:start + 1].copy()
        assert run(one).tobytes() == whole[start:start + 1].tobytes()


@needs_libmvec
def test_sinf_cosf_stay_in_range():
    # libmvec's sinf/cosf return +-1.0000001 at these (found by an exhaustive float32 scan)
    lib = vecmath.MathLib()
    x = np.array([1.570681, 4.7122736, 7.8540945, 518.3628, -1391.7256] * 9, np.float32)
    for fn in ("sin", "cos"):
        _, run = compile_map(lib, "f32", lambda v: (f"  %r = {lib.call(fn, 'f32', v)}", "%r"))
        out = run(x)
        assert np.all(np.abs(out) <= 1), out
        np.testing.assert_allclose(out, getattr(np, fn)(x.astype(np.float64)), atol=2e-7)


def test_scalar_fallback():
    lib = vecmath.MathLib(vectorize=False)
    for d in ("f32", "f64"):
        jm, run = compile_map(lib, d, lambda v: (f"  %r = {lib.call('exp', d, v)}", "%r"))
        x = samples(DT[d], n_random=5000)
        assert max_ulp(run(x), reference("exp", x), x) <= 1
        assert "_ZGV" not in jm.optimized_ir()
    assert lib.mode("exp", "f32") == "scalar"


def test_mathlib_declarations_and_errors():
    lib = vecmath.MathLib(attr_base=77)
    assert lib.call("exp", "f32", "%x").startswith("call float @flowml_")
    lib.call("pow", "float64", "%a", "%b")
    text = lib.declarations()
    if HAS_LIBMVEC:
        assert "#77" in lib.call("exp", "f32", "%x") and "attributes #77" in text
        assert "@llvm.compiler.used" in text and vecmath.vector_name("exp", "f32") in text
        assert "@llvm.compiler.used" not in lib.declarations(compiler_used=False)
        assert lib.vector_symbols() == [vecmath.vector_name("exp", "f32"), vecmath.vector_name("pow", "f64")]
    with pytest.raises(FlowInternalError):
        lib.call("exp", "f32", "%a", "%b")
    with pytest.raises(FlowInternalError):
        lib.call("gamma", "f32", "%a")
    with pytest.raises(FlowInternalError):
        lib.call("exp", "i32", "%a")


# ---------------------------------------------------------------------------------------------
# blas.py

GEMM_IR = """
define void @gemm_{p}(i8 %ta, i8 %tb, i32 %m, i32 %n, i32 %k, {t} %alpha, ptr %a, i32 %lda,
                    ptr %b, i32 %ldb, {t} %beta, ptr %c, i32 %ldc) {{
  ; Fortran BLAS takes every argument by pointer: spill the scalars to the stack
  %pta = alloca i8
  store i8 %ta, ptr %pta
  %ptb = alloca i8
  store i8 %tb, ptr %ptb
  %pm = alloca i32
  store i32 %m, ptr %pm
  %pn = alloca i32
  store i32 %n, ptr %pn
  %pk = alloca i32
  store i32 %k, ptr %pk
  %palpha = alloca {t}
  store {t} %alpha, ptr %palpha
  %plda = alloca i32
  store i32 %lda, ptr %plda
  %pldb = alloca i32
  store i32 %ldb, ptr %pldb
  %pbeta = alloca {t}
  store {t} %beta, ptr %pbeta
  %pldc = alloca i32
  store i32 %ldc, ptr %pldc
  call void @flowml_{p}gemm(ptr %pta, ptr %ptb, ptr %pm, ptr %pn, ptr %pk, ptr %palpha, ptr %a, ptr %plda,
                            ptr %b, ptr %pldb, ptr %pbeta, ptr %c, ptr %pldc)
  ret void
}}
"""

VEC_IR = """
define {t} @dot_{p}(i32 %n, ptr %x, ptr %y) {{
  %pn = alloca i32
  store i32 %n, ptr %pn
  %one = alloca i32
  store i32 1, ptr %one
  %r = call {t} @flowml_{p}dot(ptr %pn, ptr %x, ptr %one, ptr %y, ptr %one)
  ret {t} %r
}}
define void @axpy_{p}(i32 %n, {t} %alpha, ptr %x, ptr %y) {{
  %pn = alloca i32
  store i32 %n, ptr %pn
  %pa = alloca {t}
  store {t} %alpha, ptr %pa
  %one = alloca i32
  store i32 1, ptr %one
  call void @flowml_{p}axpy(ptr %pn, ptr %pa, ptr %x, ptr %one, ptr %y, ptr %one)
  ret void
}}
define void @gemv_{p}(i8 %tr, i32 %m, i32 %n, ptr %a, i32 %lda, ptr %x, ptr %y) {{
  %ptr = alloca i8
  store i8 %tr, ptr %ptr
  %pm = alloca i32
  store i32 %m, ptr %pm
  %pn = alloca i32
  store i32 %n, ptr %pn
  %pa = alloca {t}
  store {t} 1.0, ptr %pa
  %pb = alloca {t}
  store {t} 0.0, ptr %pb
  %plda = alloca i32
  store i32 %lda, ptr %plda
  %one = alloca i32
  store i32 1, ptr %one
  call void @flowml_{p}gemv(ptr %ptr, ptr %pm, ptr %pn, ptr %pa, ptr %a, ptr %plda, ptr %x, ptr %one,
                            ptr %pb, ptr %y, ptr %one)
  ret void
}}
"""


@pytest.fixture(scope="module")
def blas_module():
    blas.ensure_symbols()
    text = "".join(GEMM_IR.format(p=p, t=t) + VEC_IR.format(p=p, t=t) for p, t in (("s", "float"), ("d", "double")))
    text += blas.declarations(blas.SIGNATURES)
    return JitModule(text)


@pytest.mark.parametrize("p,dt", [("s", np.float32), ("d", np.float64)])
@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, False), (False, True), (True, True)])
def test_blas_gemm_row_major(blas_module, p, dt, trans_a, trans_b):
    ct = ctypes.c_float if p == "s" else ctypes.c_double
    c_i8, c_i32 = ctypes.c_int8, ctypes.c_int32
    gemm = blas_module.cfunc(f"gemm_{p}", None, c_i8, c_i8, c_i32, c_i32, c_i32, ct, VOID_P, c_i32,
                             VOID_P, c_i32, ct, VOID_P, c_i32)
    rng = np.random.default_rng(0)
    M, N, K = 7, 5, 3
    A = rng.standard_normal((K, M) if trans_a else (M, K)).astype(dt)  # stored as given, row-major
    B = rng.standard_normal((N, K) if trans_b else (K, N)).astype(dt)
    C = np.full((M, N), 99, dt)
    t1, t2, m, n, k, ld1, ld2, ldc = blas.gemm_args(M, N, K, trans_a, trans_b)
    gemm(ord(t1), ord(t2), m, n, k, 1.0, ptr(B), ld1, ptr(A), ld2, 0.0, ptr(C), ldc)
    expect = (A.T if trans_a else A) @ (B.T if trans_b else B)
    np.testing.assert_allclose(C, expect, rtol=1e-5 if p == "s" else 1e-12)


@pytest.mark.parametrize("p,dt", [("s", np.float32), ("d", np.float64)])
def test_blas_dot_axpy_gemv(blas_module, p, dt):
    ct = ctypes.c_float if p == "s" else ctypes.c_double
    c_i32 = ctypes.c_int32
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal(100).astype(dt), rng.standard_normal(100).astype(dt)
    dot = blas_module.cfunc(f"dot_{p}", ct, c_i32, VOID_P, VOID_P)
    np.testing.assert_allclose(dot(100, ptr(x), ptr(y)), x @ y, rtol=1e-5)
    y2 = y.copy()
    blas_module.cfunc(f"axpy_{p}", None, c_i32, ct, VOID_P, VOID_P)(100, 2.5, ptr(x), ptr(y2))
    np.testing.assert_allclose(y2, 2.5 * x + y, rtol=1e-5)
    A = rng.standard_normal((6, 4)).astype(dt)  # row-major 6x4 = column-major 4x6 (A^T)
    v, out = rng.standard_normal(4).astype(dt), np.zeros(6, dt)
    # A @ v = (A^T)^T v: 'T' on the column-major 4x6 matrix, lda = row length 4
    blas_module.cfunc(f"gemv_{p}", None, ctypes.c_int8, c_i32, c_i32, VOID_P, c_i32, VOID_P, VOID_P)(
        ord("T"), 4, 6, ptr(A), 4, ptr(v), ptr(out))
    np.testing.assert_allclose(out, A @ v, rtol=1e-5)


def test_blas_addresses():
    for name in blas.SIGNATURES:
        assert blas.address(name)
    assert blas.declaration("dgemm") == "declare void @flowml_dgemm(" + ", ".join(["ptr"] * 13) + ")"
    with pytest.raises(FlowInternalError):
        blas.address("zgemm")


# ---------------------------------------------------------------------------------------------
# parallel.py

def test_thread_count_policy(monkeypatch):
    monkeypatch.delenv("FLOWML_NUM_THREADS", raising=False)
    assert parallel.num_threads() == parallel.cpu_count() == len(os.sched_getaffinity(0))
    monkeypatch.setenv("FLOWML_NUM_THREADS", "3")
    assert parallel.num_threads() == 3
    monkeypatch.setenv("FLOWML_NUM_THREADS", "zero")
    assert parallel.num_threads() == parallel.cpu_count()
    monkeypatch.setenv("FLOWML_NUM_THREADS", "8")
    assert parallel.threads_for(10) == 1 and parallel.threads_for(8 << 16) == 8


COUNT_KERNEL = """
define void @count(ptr %ctx, i64 %start, i64 %end) {
entry:
  %c = icmp slt i64 %start, %end
  br i1 %c, label %loop, label %exit
loop:
  %i = phi i64 [%start, %entry], [%i1, %loop]
  %p = getelementptr inbounds i32, ptr %ctx, i64 %i
  %v = load i32, ptr %p
  %v1 = add i32 %v, 1
  store i32 %v1, ptr %p
  %i1 = add nsw i64 %i, 1
  %d = icmp eq i64 %i1, %end
  br i1 %d, label %exit, label %loop
exit:
  ret void
}
"""


def test_parallel_for_covers_each_index_once():
    jm = JitModule(COUNT_KERNEL)
    fn = jm.address("count")
    for n in (0, 1, 5, 1000, 100_003):
        for t in (1, 2, 3, 8, 300, 0, -1):
            seen = np.zeros(max(n, 1), np.int32)
            parallel.parallel_for(fn, ptr(seen), n, t)
            assert np.all(seen[:n] == 1), (n, t)


def test_parallel_for_kernel_1_vs_2_threads():
    parallel.ensure_symbols()
    lib = vecmath.MathLib()
    ir = f"""
define void @k(ptr %ctx, i64 %start, i64 %end) {{
entry:
  %x = load ptr, ptr %ctx, align 8
  %po = getelementptr inbounds ptr, ptr %ctx, i64 1
  %out = load ptr, ptr %po, align 8
  %c = icmp slt i64 %start, %end
  br i1 %c, label %loop, label %exit
loop:
  %i = phi i64 [%start, %entry], [%i1, %loop]
  %px = getelementptr inbounds float, ptr %x, i64 %i
  %v = load float, ptr %px, align 4
  %e = {lib.call('exp', 'f32', '%v')}
  %s = {lib.call('sin', 'f32', '%e')}
  %r = {lib.call('erf', 'f32', '%s')}
  %pr = getelementptr inbounds float, ptr %out, i64 %i
  store float %r, ptr %pr, align 4
  %i1 = add nsw i64 %i, 1
  %d = icmp eq i64 %i1, %end
  br i1 %d, label %exit, label %loop
exit:
  ret void
}}
{parallel.DECLARATION}
define void @run(ptr %ctx, i64 %n, i64 %t) {{
  call void @flowml_parallel_for(ptr @k, ptr %ctx, i64 %n, i64 %t)
  ret void
}}
""" + lib.declarations()
    run = JitModule(ir).cfunc("run", None, VOID_P, I64, I64)
    n = (1 << 21) + 13  # 2 M floats: chunks for both threads, and an odd tail
    x = np.random.default_rng(0).uniform(-3, 3, n).astype(np.float32)
    outs, best = {}, {}
    for t in (1, 2):
        out = np.zeros(n, np.float32)
        ctx = (ctypes.c_void_p * 2)(ptr(x), ptr(out))
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            run(ctypes.addressof(ctx), n, t)
            times.append(time.perf_counter() - t0)
        outs[t], best[t] = out, min(times)
    assert outs[1].tobytes() == outs[2].tobytes()  # bit-identical, NaNs included
    sub = slice(None, None, 97)
    f32 = lambda f, v: f(v.astype(np.float64)).astype(np.float32)  # noqa: E731  (round each step)
    ref = f32(sp.erf, f32(np.sin, f32(np.exp, x[sub])))
    np.testing.assert_allclose(outs[1][sub], ref, atol=1e-5)  # exp is 1-3 ulp off near 20, sin amplifies
    print(f"\nparallel_for 2^21 floats: 1 thread {best[1] * 1e3:.1f} ms, 2 threads {best[2] * 1e3:.1f} ms, "
          f"speedup {best[1] / best[2]:.2f}x")


def test_small_products_run_blas_on_one_thread_and_restore_its_count():
    """A product below blas.SMALL_GEMM flops sets OpenBLAS (scipy's, not numpy's) to one thread
    around its call and restores the count after it; a big one leaves it alone."""
    import flowml
    lib = ctypes.CDLL(blas.cython_module("cython_blas").__file__)
    count = getattr(lib, "scipy_openblas_get_num_threads", None)
    if count is None:  # another BLAS: the setter is libc's abs, which changes nothing
        assert blas.threads_address() == ctypes.cast(ctypes.CDLL(None).abs, ctypes.c_void_p).value
        return
    before = count()
    model = flowml.loads("input a : f64[N, K]\ninput b : f64[K, M]\nfn f(a, b) -> a @ b\n", backend="llvm")
    assert "call i32 @flowml_blas_threads_local(i32 1)" in model.f._executable.llvm_ir()
    rng = np.random.default_rng(0)
    for shape in ((30, 40, 50), (300, 300, 300)):  # below and above 2**24 flops
        a, b = rng.normal(size=shape[:2]), rng.normal(size=shape[1:])
        np.testing.assert_allclose(model.f(a, b), a @ b, rtol=1e-12)
        assert count() == before
