"""The LLVM backend's row kernels (flowml/backends/llvm/lowering/reduce.py): softmax,
log_softmax, logsumexp, categorical_crossentropy, argmax and argmin against the reference
backend, on every axis (negative ones too), f32 and f64 (and integer / bool operands where the
op takes them), keepdims, size-1 and size-0 dims, NaN / inf / ties, rows split across threads,
the reference's errors, and the examples that train with them.

Accuracy: a result is within ULPS units in the last place of the *terms it is computed from*
(`scale`): softmax of its own value; log_softmax of max(|x - max|, log(sum), 1), logsumexp
and the cross-entropy of max(|result|, |max|, |x[i, y]|, log(sum), 1). They add terms that the
reference rounds the same way, so an ulp of difference in a term is an ulp of that term, not of a
result that cancels to near 0; and the sum (at least 1: it holds exp(0)) is rounded to the dtype
before its log, which moves the log by up to an ulp of 1 (numpy's own float32 log_softmax([2, 0,
0]) is 5 ulp from the exact value). NaN and infinities exactly where the reference has
them; argmax / argmin exact (numpy's first-occurrence and first-NaN rules).
"""

from __future__ import annotations

import os

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flowml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
ULPS = 4
OPS = {"softmax", "log_softmax", "logsumexp", "categorical_crossentropy", "argmax", "argmin"}
NP = {"f32": np.float32, "f64": np.float64}


@pytest.fixture(scope="module", autouse=True)
def _private_cache_dir(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLOWML_CACHE_DIR", str(tmp_path_factory.mktemp("flowml-cache")))
        mp.delenv("FLOWML_CACHE", raising=False)
        mp.delenv("FLOWML_NUM_THREADS", raising=False)
        yield


def both(src):
    llvm, ref = flowml.loads(src, backend="llvm"), flowml.loads(src, backend="reference")
    for name, fn in llvm.functions.items():
        hosted = {fn._executable.graph.op(n).name for n in fn._executable.host_steps()}
        assert not hosted & OPS, f"fn {name}: {sorted(hosted & OPS)} still run on the host"
    return llvm, ref


def outputs(result):
    return [np.asarray(r) for r in (result if isinstance(result, tuple) else (result,))]


# ---------------------------------------------------------------- comparisons


def _wide(dtype):
    """The precision of the oracle: float64 for float32, long double (80-bit on x86) for float64."""
    return np.float64 if np.dtype(dtype) == np.float32 else np.longdouble


def _rowwise(x, axes, wide=np.float64):
    """The row max where finite (else 0, as the reference shifts) and log(sum(exp(x - it))), in
    `wide`, kept as size-1 axes."""
    x = np.asarray(x).astype(wide)
    with np.errstate(all="ignore"):
        kept = tuple(1 if a in axes else d for a, d in enumerate(x.shape))
        m = np.max(x, axis=axes, keepdims=True) if x.size else np.zeros(kept, wide)
        m = np.where(np.isfinite(m), m, 0).astype(wide)
        log_sum = np.log(np.sum(np.exp(x - m), axis=axes, keepdims=True))
    return m, log_sum


def scale_of(op, x, axes, want, keepdims=True):
    """The magnitude of the terms `op`'s result is computed from (see the module docstring)."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(all="ignore"):
        if op == "softmax":
            return np.abs(want.astype(np.float64))
        m, log_sum = _rowwise(x, axes)
        if op == "log_softmax":
            return np.maximum(np.maximum(np.abs(x - m), np.abs(log_sum)), 1)
        s = np.maximum(np.maximum(np.abs(m), np.abs(log_sum)), 1)
        s = s if keepdims else np.squeeze(s, axis=axes)
        return np.maximum(s.reshape(want.shape), np.abs(want.astype(np.float64)))


def exact_of(op, x, axes, want, keepdims=True):
    """The reference's formula with x - max rounded to the dtype (as both backends compute it),
    the rest in wider precision, rounded once: the oracle for elements where the reference itself
    is a few ulp off (numpy's float64 sum of 1 + 7 exp(-5) is)."""
    wide = _wide(want.dtype)
    x = np.asarray(x).astype(want.dtype)
    with np.errstate(all="ignore"):
        m, _ = _rowwise(x, axes, want.dtype)
        y = (x - m).astype(wide)
        total = np.sum(np.exp(y), axis=axes, keepdims=True)
        if op == "softmax":
            out = np.exp(y) / total
        elif op == "log_softmax":
            out = y - np.log(total)
        else:
            out = np.log(total) + m.astype(wide)
            out = out if keepdims else np.squeeze(out, axis=axes)
    return out.reshape(want.shape).astype(want.dtype)


def assert_near(got, want, scale, what, exact=None):
    """Within ULPS ulp of `scale` of the reference, or else of `exact`; NaN and infinities
    exactly where the reference has them."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype}, reference {want.dtype}"
    assert got.shape == want.shape, f"{what}: shape {got.shape}, reference {want.shape}"
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan), f"{what}: NaN positions differ: llvm {got}, reference {want}"
    finite = np.isfinite(want)
    assert np.array_equal(got[~finite & ~nan], want[~finite & ~nan]), f"{what}: infinities differ"
    assert np.isfinite(got[finite]).all(), f"{what}: inf where the reference is finite"
    bar = ULPS * np.spacing(np.broadcast_to(np.asarray(scale, dtype=want.dtype), want.shape)[finite])
    g = got[finite].astype(np.float64)
    far = np.abs(g - want[finite].astype(np.float64)) > bar
    if far.any() and exact is not None:
        far &= np.abs(g - np.asarray(exact)[finite].astype(np.float64)) > bar
    if far.any():
        i = np.flatnonzero(far)[0]
        pytest.fail(f"{what}: {int(far.sum())} of {got.size} beyond {ULPS} ulp of their terms, e.g. "
                    f"llvm {got[finite][i]!r}, reference {want[finite][i]!r}"
                    + (f", exact {np.asarray(exact)[finite][i]!r}" if exact is not None else "")
                    + f" (bar {bar[i]!r})")


def check_op(op, got, want, x, axes, keepdims, what):
    if op.startswith("arg"):
        assert_same(got, want, what)
    else:
        assert_near(got, want, scale_of(op, x, axes, want, keepdims), what, exact_of(op, x, axes, want, keepdims))


def assert_same(got, want, what):
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape, \
        f"{what}: {got.dtype}{got.shape}, reference {want.dtype}{want.shape}"
    same = np.array_equal(got, want, equal_nan=got.dtype.kind == "f")
    assert same and np.array_equal(np.signbit(got), np.signbit(want)), f"{what}: llvm {got}, reference {want}"


# ---------------------------------------------------------------- every op, every axis (rank 3)

# (op, axis as written, the axes it reduces, keepdims)
RANK3 = [("softmax", a, (a % 3,), True) for a in (0, 1, 2, -1)] + \
        [("log_softmax", a, (a % 3,), True) for a in (0, 1, 2, -2)] + \
        [("logsumexp", None, (0, 1, 2), False), ("logsumexp", 0, (0,), False), ("logsumexp", 1, (1,), True),
         ("logsumexp", -1, (2,), False), ("logsumexp", (0, 2), (0, 2), False), ("logsumexp", (-2, -1), (1, 2), True)] + \
        [("argmax", None, (0, 1, 2), False), ("argmax", 0, (0,), False), ("argmax", -1, (2,), True),
         ("argmin", 1, (1,), False), ("argmin", None, (0, 1, 2), True), ("argmin", -3, (0,), True)]


def _call(op, axis, keepdims):
    args = ["x"]
    if axis is not None:
        args.append(f"axis={axis}")
    if keepdims and op in ("logsumexp", "argmax", "argmin"):
        args.append("keepdims=true")
    return f"{op}({', '.join(args)})"


@pytest.fixture(scope="module")
def rank3_models():
    return {d: both(f"input x : {d}[A, B, C]\nfn f(x) -> " + ", ".join(_call(o, a, k) for o, a, _, k in RANK3) + "\n")
            for d in ("f32", "f64")}


def check_rank3(models, d, x):
    llvm, ref = models[d]
    got, want = outputs(llvm.f(x)), outputs(ref.f(x))
    for (op, axis, axes, keepdims), g, w in zip(RANK3, got, want):
        check_op(op, g, w, x, axes, keepdims, f"{_call(op, axis, keepdims)} {d}{x.shape}")


SIDES = st.sampled_from([1, 1, 2, 3, 5, 8, 9, 17])


@st.composite
def rank3_arrays(draw, dtype):
    shape = draw(st.tuples(SIDES, SIDES, SIDES))
    width = 32 if dtype == np.float32 else 64
    finite = st.floats(-40, 40, width=width)
    special = st.sampled_from([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -3.0])
    return draw(hnp.arrays(dtype, shape, elements=finite | finite | finite | special))


@pytest.mark.parametrize("d", ["f32", "f64"])
def test_every_axis_random_shapes_and_values(d, rank3_models):
    """Random shapes (size-1 dims included) and values with NaN, ±inf, signed zeros and ties."""
    @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
    @given(rank3_arrays(NP[d]))
    def run(x):
        check_rank3(rank3_models, d, x)
    run()


@pytest.mark.parametrize("d", ["f32", "f64"])
def test_long_rows_and_columns(d, rank3_models):
    """Rows long enough for the vector bodies and their remainders, along the contiguous axis
    and across strided ones."""
    rng = np.random.RandomState(1)
    for shape in ((2, 3, 1023), (1, 1, 4097), (3, 1025, 2), (257, 3, 1), (7, 9, 33)):
        x = (rng.randn(*shape) * 6).astype(NP[d])
        check_rank3(rank3_models, d, x)
        x[0, 0, :] = 5.0  # ties and a constant row
        check_rank3(rank3_models, d, x)


@pytest.mark.parametrize("d", ["f32", "f64"])
def test_zero_size_dims(d):
    """Empty arrays: reductions over non-empty axes give empty results; logsumexp over an empty
    axis is -inf, as scipy's; over several axes the same as one axis at a time."""
    exprs = ["softmax(x, axis=2)", "log_softmax(x, axis=-1)", "logsumexp(x, axis=1)", "logsumexp(x, axis=-1)",
             "argmax(x, axis=2)", "argmin(x, axis=-1, keepdims=true)"]
    src = (f"input x : {d}[A, B, C]\nfn f(x) -> " + ", ".join(exprs) + "\n"
           "fn g(x) -> logsumexp(x), logsumexp(x, axis=(0, 1), keepdims=true)\n"
           "fn g1(x) -> logsumexp(logsumexp(logsumexp(x, axis=2), axis=1), axis=0), "
           "logsumexp(logsumexp(x, axis=1, keepdims=true), axis=0, keepdims=true)\n")
    llvm, ref = both(src)
    for shape in ((2, 0, 3), (0, 3, 2), (0, 0, 1), (4, 0, 1)):
        x = np.ones(shape, NP[d])
        got, want = outputs(llvm.f(x)), outputs(ref.f(x))
        for e, g, w in zip(exprs, got, want):
            assert_same(g, w, f"{e} {shape}")
        for k, (g, w, w1) in enumerate(zip(outputs(llvm.g(x)), outputs(ref.g(x)), outputs(ref.g1(x)))):
            assert_same(g, w, f"g output {k} {shape}")
            assert_same(w, w1, f"reference g output {k} {shape}")


def test_integer_and_bool_operands():
    """argmax / argmin of ints and bools are exact (ties: the first); softmax and logsumexp of
    ints compute in f64, as the reference."""
    src = """input i : i32[A, B]
input l : i64[A, B]
input b : bool[A, B]
fn f(i, l, b) -> argmax(i, axis=0), argmin(i, axis=1, keepdims=true), argmax(l), argmin(l, axis=-2), argmax(b, axis=1), argmin(b), softmax(i, axis=0), log_softmax(l), logsumexp(b, axis=1), logsumexp(i)
"""
    llvm, ref = both(src)
    rng = np.random.RandomState(2)
    for shape in ((3, 4), (1, 9), (17, 1), (5, 33)):
        args = (rng.randint(-3, 3, shape).astype(np.int32), rng.randint(-2**62, 2**62, shape) // (2**60),
                rng.rand(*shape) > 0.5)
        got, want = outputs(llvm.f(*args)), outputs(ref.f(*args))
        for k, (g, w) in enumerate(zip(got, want)):
            if g.dtype.kind == "f":
                np.testing.assert_allclose(g, w, rtol=1e-14, err_msg=f"output {k} {shape}")
                assert g.dtype == w.dtype
            else:
                assert_same(g, w, f"output {k} {shape}")


def test_vectors_and_scalars():
    src = """input v : f32[N]
input s : f64[]
fn f(v, s) -> softmax(v), log_softmax(v, axis=0), logsumexp(v), logsumexp(v, axis=0, keepdims=true), argmax(v), argmin(v, keepdims=true), argmax(s), logsumexp(s)
"""
    llvm, ref = both(src)
    rng = np.random.RandomState(3)
    specs = [("softmax", v) for v in ((0,),)] + [("log_softmax", (0,)), ("logsumexp", (0,)), ("logsumexp", (0,))]
    for n in (1, 2, 15, 16, 17, 1000):
        for s in (0.5, -0.0, np.inf, -np.inf, np.nan):
            v = (rng.randn(n) * 10).astype(np.float32)
            got, want = outputs(llvm.f(v, np.float64(s))), outputs(ref.f(v, np.float64(s)))
            for k, ((op, axes), g, w) in enumerate(zip(specs, got, want)):
                check_op(op, g, w, v, axes, k == 3, f"output {k} n={n}")
            for k in (4, 5, 6, 7):
                assert_same(got[k], want[k], f"output {k} n={n} s={s}")


def test_nan_and_infinity_rules():
    """argmax / argmin return the first NaN (numpy); a row with a NaN is NaN in softmax and
    logsumexp, an infinite max gives the reference's inf / NaN."""
    llvm, ref = both("input x : f64[A, B]\nfn f(x) -> argmax(x, axis=1), argmin(x, axis=1), softmax(x), "
                     "log_softmax(x), logsumexp(x, axis=1), argmax(x, axis=0)\n")
    nan, inf = np.nan, np.inf
    x = np.array([[1, nan, 3, nan], [2, 2, 1, 1], [inf, 1, inf, 0], [-inf, -inf, -inf, -inf],
                  [nan, nan, nan, nan], [-inf, 5, 5, -inf], [inf, nan, -inf, 0], [-0.0, 0.0, -0.0, 0.0]])
    with np.errstate(all="ignore"):
        want = outputs(ref.f(x))
    got = outputs(llvm.f(x))
    for k, (g, w) in enumerate(zip(got, want)):
        if g.dtype.kind == "f":
            assert_near(g, w, np.abs(w) + 4, f"output {k}")
        else:
            assert_same(g, w, f"output {k}")


def test_rows_split_across_threads_give_the_same_bits(monkeypatch):
    """Rows large enough to be split over two threads: the same bits as one thread (a row is
    one thread's, computed in a fixed order)."""
    src = ("input x : f64[N, K]\ninput y : f32[N, K]\ninput t : i64[N]\n"
           "fn f(x, y, t) -> softmax(x), log_softmax(y, axis=0), logsumexp(x, axis=1), argmax(y, axis=1), "
           "categorical_crossentropy(y, t)\n")
    rng = np.random.RandomState(4)
    x = rng.randn(4099, 40)
    y = x.astype(np.float32)
    t = rng.randint(-40, 40, 4099)
    runs = []
    for threads in ("1", "2"):
        monkeypatch.setenv("FLOWML_NUM_THREADS", threads)
        llvm, ref = both(src)
        runs.append(outputs(llvm.f(x, y, t)))
    for a, b in zip(*runs):
        assert a.tobytes() == b.tobytes()
    want = outputs(ref.f(x, y, t))
    check_op("softmax", runs[1][0], want[0], x, (1,), True, "softmax")
    check_op("log_softmax", runs[1][1], want[1], y, (0,), True, "log_softmax")
    check_op("logsumexp", runs[1][2], want[2], x, (1,), False, "logsumexp")
    assert_same(runs[1][3], want[3], "argmax")


# ---------------------------------------------------------------- categorical_crossentropy


@pytest.fixture(scope="module")
def xent_models():
    return both("input x : f32[N, K]\ninput z : f64[N, K]\ninput y : i64[N]\ninput y32 : i32[N]\n"
                "fn f(x, z, y, y32) -> categorical_crossentropy(x, y), categorical_crossentropy(z, y32), "
                "categorical_crossentropy(z, y)\n"
                "fn g(x, y) -> categorical_crossentropy(x, y)\n"
                "fn grad_x(z, y) -> grad(sum(categorical_crossentropy(z, y)), z)\n")


def _xent_scale(x, y, want):
    m, log_sum = _rowwise(x, (1,))
    picked = np.abs(x[np.arange(len(y)), y]) if len(y) else np.zeros(0)
    return np.maximum.reduce([np.abs(m[:, 0]), np.abs(log_sum[:, 0]), picked, np.abs(want.astype(np.float64)),
                              np.ones_like(picked)])


def test_crossentropy_random_shapes_and_negative_labels(xent_models):
    """Labels in [-K, K): negative ones count from the end, as the reference's."""
    llvm, ref = xent_models

    @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.integers(0, 9), st.sampled_from([1, 2, 3, 10, 17, 64]), st.integers(0, 2**31 - 1))
    def run(n, k, seed):
        rng = np.random.RandomState(seed)
        z = rng.randn(n, k) * 8
        x = z.astype(np.float32)
        y = rng.randint(-k, k, n)
        args = (x, z, y, y.astype(np.int32))
        got, want = outputs(llvm.f(*args)), outputs(ref.f(*args))
        for i, (g, w, v) in enumerate(zip(got, want, (x, z, z))):
            assert_near(g, w, _xent_scale(v, y, w), f"output {i} ({n}, {k})")
        assert_near(llvm.grad_x(z, y), ref.grad_x(z, y), 1.0, "gradient")
    run()


def test_crossentropy_label_out_of_range(xent_models):
    """An out-of-range label is the reference's located error, naming the first bad position
    (checked before the kernel runs); K = 0 classes make every label bad."""
    llvm, ref = xent_models
    x = np.zeros((5, 3), np.float32)
    cases = [np.array([0, 1, 3, 2, -4]), np.array([0, -4, 2, 7, 1]), np.array([-3, 2, 1, 0, 2**40])]
    for y in cases:
        with pytest.raises(flowml.FlowRuntimeError) as want:
            ref.g(x, y)
        with pytest.raises(flowml.FlowRuntimeError) as got:
            llvm.g(x, y)
        assert str(got.value) == str(want.value)
        assert got.value.loc == want.value.loc
    assert "label y[2] = 3 is out of range for 3 classes" in _message(llvm.g, x, cases[0])
    assert "label y[4] = 1099511627776" in _message(llvm.g, x, cases[2])
    empty = np.zeros((2, 0), np.float32)
    assert _message(llvm.g, empty, np.array([0, 0])) == _message(ref.g, empty, np.array([0, 0]))
    assert outputs(llvm.g(np.zeros((0, 0), np.float32), np.zeros(0, np.int64)))[0].shape == (0,)


def _message(fn, *args):
    with pytest.raises(flowml.FlowRuntimeError) as e:
        fn(*args)
    return str(e.value)


# ---------------------------------------------------------------- empty axes


def test_empty_axis_errors_as_the_reference():
    """numpy refuses the max of an empty axis (softmax, log_softmax) and the argmax / argmin of
    one, even when there are no rows: the same located error, before anything is computed."""
    src = ("input x : f64[A, B]\nfn a(x) -> argmax(x, axis=1)\nfn b(x) -> softmax(x, axis=1)\n"
           "fn c(x) -> log_softmax(x, axis=0)\nfn d(x) -> argmin(x)\nfn e(x) -> x * 2, argmin(x, axis=0)\n")
    llvm, ref = both(src)
    for name, shape in (("a", (3, 0)), ("a", (0, 0)), ("b", (2, 0)), ("c", (0, 4)), ("d", (0, 3)), ("e", (0, 2))):
        x = np.zeros(shape)
        want = _message(getattr(ref, name), x)
        assert _message(getattr(llvm, name), x) == want
        assert "empty sequence" in want or "zero-size array" in want
    assert outputs(llvm.a(np.zeros((0, 3))))[0].shape == (0,)  # an empty result of a non-empty axis


# ---------------------------------------------------------------- the examples


def _digits(n):
    data = np.load(os.path.join(EXAMPLES, "data", "digits.npz"))
    return data["X"][:n].astype(np.float64), data["y"][:n].astype(np.int64)


@pytest.mark.parametrize("example, fns", [("mlp.flow", ("train", "error")),
                                          ("softmax.flow", ("train", "evaluate", "predict"))])
def test_examples_train_as_on_the_reference_with_native_rows(example, fns):
    """A few training steps in check mode (every intermediate compared with the reference), the
    softmax / cross-entropy / argmax steps native."""
    X, y = _digits(200)
    path = os.path.join(EXAMPLES, example)
    llvm = flowml.load(path, backend="llvm", check=True)
    ref = flowml.load(path, backend="reference")
    for name in fns:
        ex = llvm.functions[name]._executable
        hosted = {ex.graph.op(n).name for n in ex.host_steps()}
        assert not hosted & OPS, f"{example} fn {name}: {sorted(hosted & OPS)} on the host"
    for _ in range(3):
        for g, w in zip(outputs(llvm.train(X, y)), outputs(ref.train(X, y))):
            np.testing.assert_allclose(g, w, rtol=1e-12)
    for k in ref.params:
        np.testing.assert_allclose(llvm.params[k], ref.params[k], rtol=1e-11, atol=1e-13, err_msg=k)
    for name in fns[1:]:
        args = (X,) if name == "predict" else (X, y)
        for g, w in zip(outputs(getattr(llvm, name)(*args)), outputs(getattr(ref, name)(*args))):
            np.testing.assert_allclose(g, w, rtol=1e-12)
