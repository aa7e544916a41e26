"""The LLVM backend's CPython entry (flowml/backends/llvm/pyentry.py): argument checks and
unboxing in native code.

Every call is compared with the reference backend (same program, same arguments): values,
dtypes, shapes, the errors' messages. `fn.python_calls` counts the calls that took the Python
path, so the tests also say which calls the native entry took itself.
"""

from __future__ import annotations

import gc
import re
import sys
import threading
import tracemalloc
import weakref

import numpy as np
import pytest

import flowml
from flowml.backends.llvm import pyentry

SCALARS = """
input a : f64
input b : f64
input c : f32
input i : i64
input j : i32
input q : bool
input x : f64[n]
input y : f64[n]
input m : f32[n, 3]
input e : f64[n, k]
fn add(a, b) -> a + b
fn mixed(a, c, i, j, q) -> (a * 2, c + 1, i + 1, j * 3, q)
fn vec(x, y) -> (x * y + 1, sum(x))
fn mat(m) -> m * 2
fn same(x) -> x
fn emax(e) -> max(e, axis=1)
"""

STEP = """
input x : f64[n]
param w : f64[3] = zeros
param calls : f64 = zeros
fn step(x) -> sum(x) * 2 {
    w <- w * 0.5 + sum(x)
    calls <- calls + 1
}
fn peek(x) -> w + sum(x)
"""


@pytest.fixture(scope="module")
def models():
    return flowml.loads(SCALARS, backend="llvm"), flowml.loads(SCALARS, backend="reference")



@pytest.fixture(autouse=True)
def native_from_the_second_call(monkeypatch):
    """These tests check the native entry itself: build it after one Python-path call (the
    default waits for two, see test_the_native_entry_is_built_once_a_fn_is_called_in_a_loop)."""
    import flowml.program
    monkeypatch.setattr(flowml.program, "NATIVE_AFTER", 1)


def _same(got, want, exact=True):
    if isinstance(want, tuple):
        assert isinstance(got, tuple) and len(got) == len(want)
        for g, w in zip(got, want):
            _same(g, w, exact)
        return
    assert type(got) is np.ndarray and got.dtype == want.dtype and got.shape == want.shape
    if exact or want.dtype.kind != "f":
        np.testing.assert_array_equal(got, want)
    else:  # (the reference's sums add in another order)
        np.testing.assert_allclose(got, want, rtol=1e-6 if want.dtype == np.float32 else 1e-13)


def _call(fn, ref, *args, **kwargs):
    """fn's call equals its Python path's bit for bit, and the reference backend's."""
    got = fn(*args, **kwargs)
    counted = fn.python_calls
    _same(got, flowml.Function.__call__(fn, *args, **kwargs))
    fn.python_calls = counted
    _same(got, ref(*args, **kwargs), exact=False)


def _error(fn, *args, **kwargs):
    with pytest.raises(flowml.FlowError) as info:
        fn(*args, **kwargs)
    return type(info.value), str(info.value)


def test_every_fn_here_has_a_native_entry(models):
    llvm, _ = models
    for fn in llvm.functions.values():
        assert pyentry.unavailable(fn._executable) is None, fn.name
        assert fn._native is not None


def test_scalars_take_the_native_entry(models):
    llvm, ref = models
    f, r = llvm.add, ref.add
    _call(f, r, 1.5, 2.5)  # the first call binds the dims on the Python path
    assert isinstance(type(f).__dict__["__call__"], type(len))  # a builtin: the native entry
    before = f.python_calls
    for args in [(1.5, 2.5), (np.float64(1.5), np.float64(-2.25)), (np.array(1.5), np.array(2.5)),
                 (3, 4), (2 ** 53, -(2 ** 53)), (np.array(7.0), 1.0), (float("nan"), float("inf"))]:
        _call(f, r, *args)
    assert f.python_calls == before
    assert isinstance(f, flowml.Function) and "fn add" in repr(f)


def test_every_dtype_from_python_and_numpy_scalars(models):
    llvm, ref = models
    f, r = llvm.mixed, ref.mixed
    _call(f, r, 1.5, 2.5, 3, 4, True)
    before = f.python_calls
    native = [(1.5, 2.5, 3, 4, True), (np.float64(1.5), np.float32(2.5), np.int64(-3), np.int32(7), np.bool_(False)),
              (np.array(0.1), np.array(0.1, np.float32), np.array(5), np.array(6, np.int32), np.array(True)),
              (0.1, 0.1, 2 ** 62, -(2 ** 31), False), (2, 3, 0, 2 ** 31 - 1, np.True_),
              (1.0, 3.4e38, 1, 1, True), (1.0, 2 ** 24, 1, 1, True), (1.0, float("-inf"), 1, 1, True)]
    for args in native:
        _call(f, r, *args)
    assert f.python_calls == before
    # converted by the Python path (exactly as it converts them): other scalar types, lists
    others = [(np.float32(1.5), np.float16(2.5), np.int32(3), np.int8(4), True),
              (1.5, 2 ** 24 + 2, 2 ** 62, 4, True),  # (an int f32 holds exactly, beyond 2**24)
              (1.5, 1e300, 1, 1, True),  # (a float that overflows f32: numpy's inf, with its warning)
              ([1.5], 2.5, 3, 4, True)]
    with np.errstate(over="ignore"):
        for args in others:
            if isinstance(args[0], list):
                assert _error(f, *args) == _error(r, *args)
            else:
                _call(f, r, *args)
    assert f.python_calls == before + len(others)


def test_wrong_types_and_shapes_raise_the_python_paths_errors(models):
    llvm, ref = models
    llvm.add(1.0, 2.0)
    llvm.vec(np.ones(3), np.ones(3))
    llvm.mixed(1.0, 1.0, 1, 1, True)
    bad = [("add", ("x", 1.0)), ("add", (1.0,)), ("add", (1.0, 2.0, 3.0)), ("add", (np.ones(2), 1.0)),
           ("add", (np.float32(1.5), 2 ** 53 + 1)), ("add", (np.int64(2 ** 60 + 1), 1.0)),
           ("mixed", (1.0, np.float64(1.0), 1, 1, True)),  # f64 to f32: a downcast
           ("mixed", (1.0, 1.0, 1.5, 1, True)), ("mixed", (1.0, 1.0, 1, 2 ** 31, True)),
           ("mixed", (1.0, 1.0, 1, 1, 1)), ("mixed", (1.0, 1.0, 2 ** 63, 1, True)),
           ("vec", (np.ones(3), np.ones(4))), ("vec", (np.ones((3, 1)), np.ones(3))),
           ("vec", (np.ones(3, np.complex128), np.ones(3))), ("mat", (np.ones((2, 3)),)),
           ("vec", (np.ones(3), [1.0, 2.0])),
           ("mat", (np.ones((2, 4), np.float32),))]
    for name, args in bad:
        got = _error(getattr(llvm, name), *args)
        assert got == _error(getattr(ref, name), *args), (name, args)
        assert got[0] is flowml.FlowCallError
    kind, message = _error(llvm.vec, np.ones(3), np.ones(4))
    assert "input 'y'" in message and "declared at" in message


def test_keywords_and_arrays(models):
    llvm, ref = models
    _call(llvm.add, ref.add, a=1.5, b=2.5)
    _call(llvm.add, ref.add, 1.5, b=2.5)
    assert _error(llvm.add, 1.5, c=2.5) == _error(ref.add, 1.5, c=2.5)
    rng = np.random.default_rng(0)
    for n in (5, 5, 0, 1, 1000, 5, 1000):  # new dims: one call on the Python path, then native
        x, y = rng.standard_normal(n), rng.standard_normal(n)
        before = llvm.vec.python_calls
        _call(llvm.vec, ref.vec, x, y)
        _call(llvm.vec, ref.vec, x, y)
        assert llvm.vec.python_calls <= before + 1
        m = rng.standard_normal((n, 3)).astype(np.float32)
        _call(llvm.mat, ref.mat, m)
    x = rng.standard_normal(10)
    _call(llvm.vec, ref.vec, x[::2], x[1::2])  # not contiguous: the Python path copies
    _call(llvm.vec, ref.vec, x.astype(">f8"), x)  # another byte order
    ro = x.copy()
    ro.flags.writeable = False
    _call(llvm.vec, ref.vec, ro, ro)


def test_outputs_are_fresh_arrays(models):
    llvm, _ = models
    x = np.arange(4.0)
    llvm.same(x)
    first, second = llvm.same(x), llvm.same(x)
    assert first is not second and not np.shares_memory(first, x) and not np.shares_memory(first, second)
    assert first.flags.owndata and first.flags.writeable and first.flags.c_contiguous
    first[:] = -1
    np.testing.assert_array_equal(llvm.same(x), x)
    out, total = llvm.vec(x, x)
    out2, _ = llvm.vec(x, x)
    assert not np.shares_memory(out, out2)
    s = llvm.add(1.0, 2.0)
    assert s.shape == () and s.flags.owndata
    r = weakref.ref(llvm.add(1.0, 2.0))
    assert r() is None  # (nothing else holds the result)


def test_no_leaks(models):
    llvm, _ = models
    add, vec = llvm.add, llvm.vec
    a, b = 1.25, np.float64(2.5)
    x = np.ones(7)
    add(a, b), vec(x, x), add(np.array(a), b)
    counts = [sys.getrefcount(o) for o in (a, b, x, add, vec)]
    for _ in range(1000):
        add(a, b), add(3, 4), vec(x, x), add(np.array(a), b)
    assert [sys.getrefcount(o) for o in (a, b, x, add, vec)] == counts
    gc.collect()
    tracemalloc.start()
    try:
        for _ in range(1000):
            add(a, b), vec(x, x)
        start = tracemalloc.get_traced_memory()[0]
        for _ in range(100_000):
            add(a, b)
        for _ in range(10_000):
            vec(x, x), add(2, x[0])
        grown = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    assert grown < 20_000, grown


def test_errors_of_native_code_are_the_same_located_errors(models):
    llvm, ref = models
    e = np.zeros((2, 0))
    want = _error(llvm.emax, e)  # (on the Python path, from the same native code)
    assert want[0] is flowml.FlowRuntimeError and "<string>:17:15" in want[1] and "max(e, axis=1)" in want[1]
    assert _error(ref.emax, e)[0] is flowml.FlowRuntimeError
    before = llvm.emax.python_calls
    assert _error(llvm.emax, e) == want  # now raised from the native entry's error code
    assert llvm.emax.python_calls == before
    _call(llvm.emax, ref.emax, np.ones((2, 3)))


def _threads(work, n=4):
    results, errors = [None] * n, []

    def run(t):
        try:
            results[t] = work(t)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
    threads = [threading.Thread(target=run, args=(t,)) for t in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


@pytest.mark.parametrize("n", [7, 50_000])  # the GIL held, and released around the native call
def test_threads_get_the_serial_results(models, n):
    llvm, _ = models
    vec, add = llvm.vec, llvm.add

    def work(t):  # distinct inputs per thread and call
        return [(vec(np.full(n, t + k / 7), np.full(n, k / 3)), add(t + 0.5, k * 0.25)) for k in range(200)]
    work(0)
    cfg = type(vec).__dict__["__call__"].__self__
    assert cfg[cfg.words.at["release_gil"]] == (n > pyentry.RELEASE_GIL_WORK)
    serial = [work(t) for t in range(4)]
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        got = _threads(work)
    finally:
        sys.setswitchinterval(old)
    for t in range(4):
        for ((o, s), a), ((wo, ws), wa) in zip(got[t], serial[t]):
            np.testing.assert_array_equal(o, wo)
            np.testing.assert_array_equal(s, ws)
            assert a == wa


def test_in_place_updates():
    llvm, ref = flowml.loads(STEP, backend="llvm"), flowml.loads(STEP, backend="reference")
    assert pyentry.unavailable(llvm.step._executable) is None
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal(5) for _ in range(30)]
    for k, x in enumerate(xs):  # (each call updates: one call per backend)
        _same(llvm.step(x), ref.step(x), exact=False)
        _same(llvm.peek(x), ref.peek(x), exact=False)
        if k == 10:  # a new array for a param: the native entry reads the current one
            llvm.params["w"] = ref.params["w"] = np.array([1.0, -2.0, 3.0])
    assert llvm.step.python_calls <= 2
    for name in ("w", "calls"):
        np.testing.assert_array_equal(llvm.params[name], ref.params[name])
    calls = float(llvm.params["calls"])
    _threads(lambda t: [llvm.step(np.ones(5) * t) for _ in range(50)])
    assert float(llvm.params["calls"]) == calls + 200  # one call at a time


def test_the_entry_is_a_module_of_its_own_calling_only_the_c_api(models):
    llvm, _ = models
    llvm.vec(np.ones(2), np.ones(2))
    fc = llvm.vec._native
    text = pyentry.module_text(fc)
    declared = set(re.findall(r"^declare [^@]*@([\w.$]+)\(", text, re.M))
    assert declared and all(d.startswith(("Py", "llvm.")) for d in declared), declared
    assert "Py" not in llvm.vec._executable.program.text  # (the entry points call no Python)


def test_where_calls_stay_on_the_python_path():
    model = flowml.loads("input x : f64[n]\nparam w : f64[3] = zeros\n"
                         "fn g(x) -> if sum(x) > 0 then x else -x\n"
                         "fn h(x) -> sum(w) { w <- w + sum(x) }\n", backend="llvm")  # (reads the old w)
    fn = model.h
    assert fn._native is None and pyentry.unavailable(fn._executable).startswith("an update that is not done in place")
    fn(np.ones(3))
    assert type(fn) is flowml.Function
    # a lazy `if` is a branch in the native code: its fn has the native entry
    assert model.g._native is not None and pyentry.unavailable(model.g._executable) is None
    np.testing.assert_array_equal(model.g(np.array([1.0, -3.0])), [-1.0, 3.0])
    np.testing.assert_array_equal(model.g(np.array([3.0, -1.0])), [3.0, -1.0])
    checked = flowml.loads("input a : f64\nfn f(a) -> a + 1\n", backend="llvm", check=True)
    assert checked.f._native is None


def test_a_fn_with_hundreds_of_params_gets_its_native_entry():
    """Labels of the entry's per-param blocks never meet a register's name (the IR was invalid
    once a fn had more params than the entry had registers of one kind before them)."""
    k = 200
    src = "input x : f64\n" + "".join(f"param p{i} : f64 = {i}\n" for i in range(k))
    src += "fn f(x) -> x + " + " + ".join(f"p{i}" for i in range(k)) + "\n"
    model = flowml.loads(src, backend="llvm")
    assert model.f(1.0) == 1 + k * (k - 1) / 2
    calls = model.f.python_calls
    assert model.f(2.0) == 2 + k * (k - 1) / 2 and model.f.python_calls == calls  # the native entry ran


def test_the_native_entry_is_built_once_a_fn_is_called_in_a_loop(monkeypatch):
    import flowml.program
    monkeypatch.setattr(flowml.program, "NATIVE_AFTER", 2)
    model = flowml.loads("input a : f64\ninput b : f64\nfn f(a, b) -> a + b\n", backend="llvm")
    for k in range(1, 6):
        assert model.f(1.5, float(k)) == 1.5 + k
    assert model.f.python_calls == 2  # calls 1 and 2 on the Python path, then native
