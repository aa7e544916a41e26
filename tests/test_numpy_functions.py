"""numpy's everyday functions (issue 15): each against numpy on random inputs, on the reference,
LLVM and OpenCL backends, and each derivative against finite differences.

COVERAGE lists every function this file checks; a test pins that each is a .flow built-in, a
`flowml` function and documented in docs/language.md. The elementwise functions: one model per
(backend, dtype) holds all of them (and, on LLVM, their derivatives, compared with the
reference's), so a backend compiles twice. Tolerances: exact for rounding, the float tests,
cumsum/cumprod and sorting (numpy's order of operations); 1e-12 relative (f64) and 2e-6 (f32)
for the math functions (libm / libmvec, within 2 and 4 ulp); derivatives 1e-7 against the
5-point stencil (tests/autodiff_helpers.py). The array functions (flowml/ir/arrays.py) are
compositions of primitives: checked against numpy through the Python API (fixed cases and
hypothesis), their derivatives by finite differences, and on LLVM with no host step.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flowml
from autodiff_helpers import Case, check_hvp, check_jvp, check_lop
from flowml.ir import lib as L
from helpers import BACKENDS, axis_args, check, typed

# ----------------------------------------------------------------- the functions

# name -> (the .flow expression of inputs x (any real), u (in (-1, 1)), w (>= 1), p (> 0),
# y (any real)), numpy's value of it, the input its derivative is checked for (None: none))
UNARY = {
    "floor": ("floor(x)", lambda v: np.floor(v["x"]), None),
    "ceil": ("ceil(x)", lambda v: np.ceil(v["x"]), None),
    "trunc": ("trunc(x)", lambda v: np.trunc(v["x"]), None),
    "round": ("round(x)", lambda v: np.round(v["x"]), None),
    "rint": ("rint(x)", lambda v: np.rint(v["x"]), None),
    "isnan": ("isnan(x)", lambda v: np.isnan(v["x"]), None),
    "isinf": ("isinf(x)", lambda v: np.isinf(v["x"]), None),
    "isfinite": ("isfinite(x)", lambda v: np.isfinite(v["x"]), None),
    "square": ("square(x)", lambda v: np.square(v["x"]), "x"),
    "log2": ("log2(p)", lambda v: np.log2(v["p"]), "p"),
    "log10": ("log10(p)", lambda v: np.log10(v["p"]), "p"),
    "tan": ("tan(u)", lambda v: np.tan(v["u"]), "u"),
    "arcsin": ("arcsin(u)", lambda v: np.arcsin(v["u"]), "u"),
    "arccos": ("arccos(u)", lambda v: np.arccos(v["u"]), "u"),
    "arctan": ("arctan(x)", lambda v: np.arctan(v["x"]), "x"),
    "sinh": ("sinh(x)", lambda v: np.sinh(v["x"]), "x"),
    "cosh": ("cosh(x)", lambda v: np.cosh(v["x"]), "x"),
    "arcsinh": ("arcsinh(x)", lambda v: np.arcsinh(v["x"]), "x"),
    "arccosh": ("arccosh(w)", lambda v: np.arccosh(v["w"]), "w"),
    "arctanh": ("arctanh(u)", lambda v: np.arctanh(v["u"]), "u"),
}
BINARY = {
    "arctan2": ("arctan2(x, y)", lambda v: np.arctan2(v["x"], v["y"]), "y"),
    "hypot": ("hypot(x, y)", lambda v: np.hypot(v["x"], v["y"]), "x"),
    "logaddexp": ("logaddexp(x, y)", lambda v: np.logaddexp(v["x"], v["y"]), "y"),
    "power": ("power(p, y)", lambda v: np.power(v["p"], v["y"]), "p"),
}
ELEMENTWISE = {**UNARY, **BINARY}
EXACT = {"floor", "ceil", "trunc", "round", "rint", "isnan", "isinf", "isfinite", "square"}
REDUCTIONS = ["var", "std", "any", "all", "cumsum", "cumprod", "sort", "argsort"]
SHAPES = ["squeeze", "expand_dims", "swapaxes", "moveaxis", "flip", "roll", "repeat", "tile", "pad", "diagonal",
          "trace", "diag", "eye", "tril", "triu", "linspace", "take_along_axis", "tensordot", "einsum"]
COVERAGE = sorted(ELEMENTWISE) + REDUCTIONS + SHAPES

SPECIAL = [np.nan, np.inf, -np.inf, 0.0, -0.0, 0.5, 1.5, 2.5, -0.5, -2.5, 3.5, 1e-300, -7.0]


def _inputs(dtype, n=61, seed=0, special=True):
    """Random inputs in each function's domain; x and y also hold the special values."""
    rng = np.random.default_rng(seed)
    v = {"x": rng.uniform(-4, 4, n), "y": rng.uniform(-4, 4, n), "u": rng.uniform(-0.99, 0.99, n),
         "w": rng.uniform(1.0, 6.0, n), "p": rng.uniform(0.05, 6.0, n)}
    if special:
        k = len(SPECIAL)
        v["x"][:k] = SPECIAL
        v["y"][:k] = SPECIAL[::-1]
        v["y"][k:2 * k] = SPECIAL
    return {k: a.astype({"f64": np.float64, "f32": np.float32}.get(dtype, dtype)) for k, a in v.items()}


def _model_source(dtype, derivatives=True):
    exprs = [e for e, _, _ in ELEMENTWISE.values()]
    grads = [f"grad(sum({e}), {d})" for e, _, d in ELEMENTWISE.values() if d and derivatives]
    decls = "\n".join(f"input {k} : {dtype}[N]" for k in "xyuwp")
    return f"{decls}\nfn f(x, y, u, w, p) -> {', '.join(exprs + grads)}\n"


def _tol(dtype):
    return dict(rtol=2e-6, atol=1e-7) if dtype == "f32" else dict(rtol=1e-12, atol=1e-14)


_REFERENCE_OUTPUTS = {}


def _run(backend, dtype):
    v = _inputs(dtype)
    # (on OpenCL the values only: PoCL builds the derivatives' kernels slowly, and they are the
    # same graphs LLVM runs)
    model = flowml.loads(_model_source(dtype, derivatives=backend != "opencl"), backend=backend)
    with np.errstate(all="ignore"):
        return v, model.f(v["x"], v["y"], v["u"], v["w"], v["p"])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["f64", "f32"])
def test_each_function_is_numpys_on_every_backend(backend, dtype):
    v, outs = _run(backend, dtype)
    with np.errstate(all="ignore"):
        for (name, (expr, np_fn, _)), got in zip(ELEMENTWISE.items(), outs):
            want = np_fn(v)
            assert got.dtype == want.dtype, (name, got.dtype, want.dtype)
            if name in EXACT:
                np.testing.assert_array_equal(got, want, err_msg=f"{name} on {backend}")
            else:
                np.testing.assert_allclose(got, want, equal_nan=True, err_msg=f"{name} on {backend}", **_tol(dtype))
    # the derivatives: the same graphs as the reference's, compiled natively
    if backend == "llvm":
        if (dtype,) not in _REFERENCE_OUTPUTS:
            _REFERENCE_OUTPUTS[(dtype,)] = _run("reference", dtype)[1]
        want_all = _REFERENCE_OUTPUTS[(dtype,)]
        n = len(ELEMENTWISE)
        names = [name for name, (_, _, d) in ELEMENTWISE.items() if d]
        for name, got, want in zip(names, outs[n:], want_all[n:]):
            np.testing.assert_allclose(got, want, equal_nan=True, err_msg=f"d {name} on {backend}",
                                       rtol=1e-5 if dtype == "f32" else 1e-11, atol=1e-6 if dtype == "f32" else 1e-13)


@pytest.mark.parametrize("name", [n for n, (_, _, d) in ELEMENTWISE.items() if d])
def test_each_derivative_matches_finite_differences(name):
    expr, _, _ = ELEMENTWISE[name]
    args = expr[expr.index("(") + 1:-1].split(", ")
    v = _inputs("f64", n=7, seed=1, special=False)
    fn = getattr(L, name)
    case = Case(fn, [v[a] for a in args], label=name)
    check_jvp(case)
    check_lop(case)


def test_rounding_is_half_to_even_and_keeps_integers():
    x = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.125, -0.0])
    check(flowml.round, np.round, x)
    check(lambda a: flowml.round(a, 2), lambda a: np.round(a, 2), np.array([1.005, 2.675, -0.125, 1234.5678]))
    check(lambda a: flowml.round(a, -2), lambda a: np.round(a, -2), np.array([1250.0, 1350.0, -49.0, 151.0]))
    check(flowml.rint, np.rint, np.array([3, -4, 0]))  # (numpy's rint makes floats of them, its round not)
    check(flowml.rint, lambda a: np.rint(a.astype(np.float64)), np.array([True, False]))
    for fn in (flowml.floor, flowml.ceil, flowml.trunc, flowml.round):
        check(fn, getattr(np, fn.__name__), np.array([3, -4, 0]))
        # numpy rounds bools to float16 (no bool loop), but floors them to bools: flowml keeps bools
        check(fn, lambda a: getattr(np, fn.__name__)(a).astype(bool), np.array([True, False]))
    check(flowml.isnan, np.isnan, np.array([1, 2]))
    check(flowml.isfinite, np.isfinite, np.array([True, False]))
    check(flowml.square, lambda a: np.square(a).astype(np.int64), np.array([True, False]))  # numpy: int8


@pytest.mark.parametrize("backend", BACKENDS)
def test_stable_where_the_naive_formula_overflows(backend):
    src = """input a : f64[N]
input b : f64[N]
fn f(a, b) -> hypot(a, b), logaddexp(a, b), grad(sum(hypot(a, b)), a), grad(sum(logaddexp(a, b)), a), grad(sum(logaddexp(a, b)), b)
"""
    model = flowml.loads(src, backend=backend)
    a = np.array([1e200, 3e-200, 1000.0, 1000.0, -np.inf, np.inf, 0.0])
    b = np.array([1e200, 4e-200, 1000.0, 999.0, -np.inf, -np.inf, 0.0])
    h, lae, gh, ga, gb = model.f(a, b)
    np.testing.assert_allclose(h, np.hypot(a, b), rtol=1e-15)
    np.testing.assert_allclose(lae, np.logaddexp(a, b), rtol=1e-15)
    np.testing.assert_allclose(gh[:3], [2 ** -0.5, 0.6, 2 ** -0.5], rtol=1e-15)
    assert gh[-1] == 0.0  # hypot at (0, 0): the subgradient 0, not NaN
    np.testing.assert_allclose(ga[:4], [0.5, 0.5, 0.5, 1 / (1 + np.exp(-1))], rtol=1e-15)
    np.testing.assert_allclose(ga[:4] + gb[:4], 1.0, rtol=1e-15)


def test_the_optimizer_rewrites_the_naive_spellings_into_hypot_and_logaddexp():
    src = """input a : f64[N]
input b : f64[N]
fn f(a, b) -> sqrt(a ** 2 + b ** 2), log(exp(a) + exp(b)), grad(sum(sqrt(a * a + b * b)), a)
"""
    h, lae, gh = flowml.loads(src).f(np.array([1e200, 3.0, 1000.0]), np.array([1e200, 4.0, 999.0]))
    np.testing.assert_allclose(h, [2 ** 0.5 * 1e200, 5.0, np.hypot(1000, 999)], rtol=1e-15)
    np.testing.assert_allclose(lae, [1e200 + np.log(2), np.logaddexp(3, 4), np.logaddexp(1000, 999)], rtol=1e-15)
    np.testing.assert_allclose(gh, [2 ** -0.5, 0.6, 1000 / np.hypot(1000, 999)], rtol=1e-15)


# ----------------------------------------------------------------- broadcasting and dtypes

_DTYPES = st.sampled_from([np.float64, np.float32, np.int64, np.bool_])


@st.composite
def _broadcast_pair(draw):
    shape = draw(st.lists(st.integers(1, 3), min_size=0, max_size=3))
    other = [d if draw(st.booleans()) else 1 for d in shape][draw(st.integers(0, len(shape))):]
    return tuple(shape), tuple(other)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shapes=_broadcast_pair(), dts=st.tuples(_DTYPES, _DTYPES), name=st.sampled_from(sorted(BINARY)),
       seed=st.integers(0, 2 ** 16))
def test_binary_functions_broadcast_and_promote_as_numpy(shapes, dts, name, seed):
    rng = np.random.default_rng(seed)
    a, b = (rng.uniform(0.1, 3, s).astype(dt) if dt is not np.bool_ else rng.uniform(size=s) > 0.5
            for s, dt in zip(shapes, dts))
    if name == "power":  # numpy refuses integers to negative powers, and powers of two bools are int8
        if np.dtype(dts[0]).kind in "bi" and np.dtype(dts[1]).kind in "bi":
            return
    np_fn = getattr(np, name)
    if dts == (np.bool_, np.bool_):  # numpy computes float functions of bools in float16, flowml in f64
        np_fn = lambda a, b, f=np_fn: f(a.astype(np.float64), b.astype(np.float64))  # noqa: E731
    check(getattr(flowml, name), np_fn, a, b, **({"rtol": 2e-6, "atol": 1e-6} if np.float32 in dts
                                                            else {"rtol": 1e-12, "atol": 1e-12}))


# ----------------------------------------------------------------- statistics


@st.composite
def _array_and_axis(draw):
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))
    axis = draw(axis_args(len(shape)))
    return shape, axis


@pytest.mark.filterwarnings("ignore:Degrees of freedom <= 0")
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=_array_and_axis(), ddof=st.integers(0, 1), keepdims=st.booleans(), seed=st.integers(0, 2 ** 16),
       dtype=st.sampled_from([np.float64, np.float32, np.int64]))
def test_var_std_any_all_are_numpys(case, ddof, keepdims, seed, dtype):
    shape, axis = case
    x = (np.random.default_rng(seed).normal(size=shape) * 3).astype(dtype)
    tol = {"rtol": 2e-5, "atol": 1e-5} if dtype == np.float32 else {"rtol": 1e-10, "atol": 1e-12}
    for name in ("var", "std"):
        check(lambda a: getattr(flowml, name)(a, axis=axis, ddof=ddof, keepdims=keepdims),
              lambda a: getattr(np, name)(a, axis=axis, ddof=ddof, keepdims=keepdims), x, **tol)
    for name in ("any", "all"):
        check(lambda a: getattr(flowml, name)(a > 0, axis=axis, keepdims=keepdims),
              lambda a: getattr(np, name)(a > 0, axis=axis, keepdims=keepdims), x)
        check(lambda a: getattr(flowml, name)(a, axis=axis, keepdims=keepdims),
              lambda a: getattr(np, name)(a, axis=axis, keepdims=keepdims), x)


@pytest.mark.filterwarnings("ignore:Degrees of freedom <= 0")
@pytest.mark.parametrize("backend", BACKENDS)
def test_statistics_on_every_backend(backend):
    src = """input x : f64[N, 3]
input m : bool[N, 3]
fn f(x, m) -> var(x), var(x, axis=0, ddof=1), std(x, axis=-1, keepdims=true), any(m, axis=1), all(m, axis=0), any(m), all(x), std(x, axis=(0, 1), ddof=1)
fn g(x) -> grad(sum(std(x, axis=1)) + var(x, ddof=1), x)
"""
    model = flowml.loads(src, backend=backend)
    rng = np.random.default_rng(3)
    for n in (1, 5, 64):
        x = rng.normal(size=(n, 3)) + 100.0  # an offset that E[x^2] - E[x]^2 would cancel
        m = rng.uniform(size=(n, 3)) > 0.7
        got = model.f(x, m)
        with np.errstate(all="ignore"):  # (one row: var with ddof=1 is 0 / 0)
            want = [x.var(), x.var(0, ddof=1), x.std(-1, keepdims=True), m.any(1), m.all(0), m.any(), x.all(),
                    x.std(ddof=1)]
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-9, equal_nan=True)
            assert np.asarray(g).dtype == np.asarray(w).dtype
    if backend == "opencl":  # (the derivative's kernels are LLVM's and the reference's to check: PoCL builds slowly)
        return
    x = rng.normal(size=(4, 3))
    gx = model.g(x)
    d = x - x.mean(1, keepdims=True)
    want = d / (3 * x.std(1, keepdims=True)) + 2 * (x - x.mean()) / (x.size - 1)
    np.testing.assert_allclose(gx, want, rtol=1e-10)


@pytest.mark.parametrize("fn", ["var", "std"])
def test_statistics_derivatives_match_finite_differences(fn):
    x = np.random.default_rng(4).normal(size=(3, 4))
    for kwargs in ({}, {"axis": 1, "ddof": 1}, {"axis": 0, "keepdims": True}):
        case = Case(lambda a: getattr(L, fn)(a, **kwargs), [x], label=f"{fn}{kwargs}")
        check_jvp(case)
        check_lop(case)


# ----------------------------------------------------------------- running sums and products


@pytest.mark.parametrize("backend", BACKENDS)
def test_cumsum_cumprod_are_numpys_to_the_bit(backend):
    src = """input x : f64[N, M]
input b : bool[N, M]
input i : i32[N, M]
input f : f32[P, Q]
fn f(x, b, i, f) -> cumsum(x, axis=0), cumsum(x, axis=-1), cumsum(x), cumprod(x, axis=1), cumsum(b, axis=1), cumprod(i, axis=0), cumsum(f, axis=0), cumprod(f)
fn g(x) -> grad(sum(cumsum(x, axis=1) * x), x), grad(sum(cumprod(x, axis=0) * x), x)
"""
    model = flowml.loads(src, backend=backend)
    rng = np.random.default_rng(5)
    for shape in ((5, 4), (1, 7), (3, 1), (0, 3)):
        x = rng.normal(size=shape)
        x[rng.uniform(size=shape) < 0.2] = 0.0
        b, i, f = x > 0, rng.integers(-3, 4, shape).astype(np.int32), x.astype(np.float32)
        got = model.f(x, b, i, f)
        want = [np.cumsum(x, 0), np.cumsum(x, -1), np.cumsum(x), np.cumprod(x, 1), np.cumsum(b, 1), np.cumprod(i, 0),
                np.cumsum(f, 0), np.cumprod(f)]
        for k, (g, w) in enumerate(zip(got, want)):
            assert g.dtype == w.dtype and np.array_equal(g, w), (k, shape, g, w)
    x = rng.normal(size=(4, 3))
    x[1, 1] = x[2, 1] = x[0, 2] = 0.0
    gs, gp = model.g(x)
    rev = lambda a, axis: np.flip(np.cumsum(np.flip(a, axis), axis), axis)  # noqa: E731
    np.testing.assert_allclose(gs, rev(x, 1) + np.cumsum(x, 1), rtol=1e-12)
    ref_gs, ref_gp = flowml.loads(src, backend="reference").g(x)
    np.testing.assert_allclose(gp, ref_gp, rtol=1e-12)


def test_cumsum_along_a_leading_axis_in_blocks_of_rows_on_llvm():
    """Along a leading axis the LLVM kernel steps blocks of 4096 neighbouring rows together: more
    rows than a block (a partial last block), and reversed (the derivative), are numpy's too."""
    src = """input x : f64[N, M, K]
input f : f32[P, Q]
fn f(x, f) -> cumsum(x, axis=1), cumprod(f, axis=0), grad(sum(cumsum(x, axis=0) * x), x)
"""
    rng = np.random.default_rng(9)
    x, f = rng.normal(size=(3, 4, 1100)), rng.uniform(0.9, 1.1, size=(5, 4100)).astype(np.float32)
    cs, cp, g = flowml.loads(src, backend="llvm").f(x, f)
    assert np.array_equal(cs, np.cumsum(x, 1)) and np.array_equal(cp, np.cumprod(f, 0))
    assert np.array_equal(g, np.flip(np.cumsum(np.flip(x, 0), 0), 0) + np.cumsum(x, 0))


@pytest.mark.parametrize("fn", ["cumsum", "cumprod"])
def test_cumulative_derivatives_match_finite_differences_even_at_zeros(fn):
    rng = np.random.default_rng(6)
    x = rng.uniform(0.5, 1.5, size=(3, 6)) * rng.choice([-1, 1], size=(3, 6))
    x[0, 2] = 0.0               # one zero in a row
    x[1, 1] = x[1, 4] = 0.0     # two
    x[2, 0] = x[2, 1] = 0.0     # two, side by side
    x[0, 5] = 1e-311            # a denormal: 1 / x overflows (so it counts as a zero)
    x[1, 0] = 3e-200
    for axis in (1, 0, None):
        case = Case(lambda a: getattr(L, fn)(a, axis=axis), [x], label=f"{fn}(axis={axis})")
        check_jvp(case)
        check_lop(case)
    # second derivatives (Hessian-vector products: the derivatives of the derivatives)
    check_hvp(Case(lambda a: L.sum(getattr(L, fn)(a, axis=1) ** 2), [x], label=f"{fn} squared"))


def test_onnx_export_of_the_rounding_trigonometric_and_float_test_functions():
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    src = """input x : {dt}[N]
input u : {dt}[N]
fn f(x, u) -> floor(x), ceil(x), round(x), tan(u), arcsin(u), arccos(u), arctan(x), sinh(x), cosh(x), arcsinh(x), arccosh(abs(x) + 1), arctanh(u), isnan(x), isinf(x)
"""
    x = np.array([0.5, 1.5, -2.5, np.inf, np.nan, 3.2], np.float32)
    u = np.array([0.1, -0.5, 0.9, 0.0, 0.3, -0.99], np.float32)
    onnx.checker.check_model(flowml.loads(src.format(dt="f64")).f.to_onnx())  # (onnxruntime has no f64 Tan)
    model = flowml.loads(src.format(dt="f32"))
    session = ort.InferenceSession(model.f.to_onnx().SerializeToString(), providers=["CPUExecutionProvider"])
    for got, want in zip(session.run(None, {"x": x, "u": u}), model.f(x, u)):
        assert got.dtype == want.dtype
        np.testing.assert_allclose(got, want, rtol=1e-6, equal_nan=True)


# ----------------------------------------------------------------- sorting


@pytest.mark.parametrize("backend", BACKENDS)
def test_sort_argsort_are_numpys_stable_order_with_nans_last(backend):
    src = """input x : f64[N, M]
input i : i32[N, M]
input b : bool[N, M]
input f : f32[N, M]
fn f(x, i, b, f) -> argsort(x), argsort(x, axis=0), sort(x, axis=0), argsort(i), argsort(b, axis=0), sort(f), grad(sum(sort(x) * arange(M)), x)
"""
    model = flowml.loads(src, backend=backend)
    rng = np.random.default_rng(10)
    for shape in ((5, 7), (1, 1), (3, 40), (0, 3)):
        x = rng.integers(-3, 3, shape).astype(np.float64)  # many ties
        x[rng.uniform(size=shape) < 0.15] = np.nan
        x[rng.uniform(size=shape) < 0.1] = -0.0
        i = rng.integers(-2, 2, shape).astype(np.int32)
        b, f = i > 0, rng.normal(size=shape).astype(np.float32)
        got = model.f(x, i, b, f)
        want = [np.argsort(x, kind="stable"), np.argsort(x, 0, kind="stable"), np.sort(x, 0),
                np.argsort(i, kind="stable"), np.argsort(b, 0, kind="stable"), np.sort(f)]
        for k, (g, w) in enumerate(zip(got, want)):
            assert g.dtype == w.dtype and np.array_equal(g, w, equal_nan=True), (shape, k, g, w)
        # the derivative goes back to where each sorted element came from
        scatter = np.zeros(shape)
        np.put_along_axis(scatter, np.argsort(x, kind="stable"), np.broadcast_to(np.arange(shape[1], dtype=float), shape), 1)
        assert np.array_equal(got[-1], scatter)
    if backend == "llvm":
        assert model.functions["f"]._executable.host_steps() == {}


def test_sort_derivative_matches_finite_differences():
    x = np.random.default_rng(11).permutation(24).reshape(4, 6) / 7.0  # distinct: sort is smooth there
    for axis in (-1, 0, None):
        case = Case(lambda a: L.sort(a, axis=axis) * np.arange(1.0, 1 + (24 if axis is None else x.shape[axis]))
                    .reshape((-1,) if axis is None else ((1, -1) if axis == -1 else (-1, 1))), [x], label=f"sort({axis})")
        check_jvp(case)
        check_lop(case)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=3), seed=st.integers(0, 2 ** 16), data=st.data())
def test_argsort_with_random_shapes_and_axes_is_numpys(shape, seed, data):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1) | st.none())
    x = np.random.default_rng(seed).integers(-2, 3, size=shape).astype(np.float64)
    check(lambda a: flowml.argsort(a, axis=axis), lambda a: np.argsort(a, axis=axis, kind="stable"), x)
    check(lambda a: flowml.sort(a, axis=axis), lambda a: np.sort(a, axis=axis), x)


# ----------------------------------------------------------------- shapes

_R = np.random.default_rng(7)
A = _R.normal(size=(2, 1, 3, 4))   # most cases take this
M = _R.normal(size=(4, 5))
V = _R.normal(size=5)
I = _R.integers(-3, 3, size=(2, 1, 3, 4))
IDX = _R.integers(0, 4, size=(2, 1, 3, 2))
B = _R.normal(size=(4, 3, 2))
C = _R.normal(size=(2, 4, 6))

# (label, flowml's function of the arrays, numpy's, the arrays); every float array is differentiated
SHAPE_CASES = [
    ("squeeze", lambda a: flowml.squeeze(a), np.squeeze, [A]),
    ("squeeze axis", lambda a: flowml.squeeze(a, axis=-3), lambda a: np.squeeze(a, axis=-3), [A]),
    ("expand_dims", lambda a: flowml.expand_dims(a, (0, -1)), lambda a: np.expand_dims(a, (0, -1)), [A]),
    ("swapaxes", lambda a: flowml.swapaxes(a, 0, -1), lambda a: np.swapaxes(a, 0, -1), [A]),
    ("moveaxis", lambda a: flowml.moveaxis(a, (0, 1), (-1, 0)), lambda a: np.moveaxis(a, (0, 1), (-1, 0)), [A]),
    ("flip", lambda a: flowml.flip(a, axis=(0, -1)), lambda a: np.flip(a, axis=(0, -1)), [A]),
    ("flip all", flowml.flip, np.flip, [A]),
    ("roll", lambda a: flowml.roll(a, 5, axis=-1), lambda a: np.roll(a, 5, axis=-1), [A]),
    ("roll two axes", lambda a: flowml.roll(a, (1, -2), axis=(0, 2)), lambda a: np.roll(a, (1, -2), axis=(0, 2)), [A]),
    ("roll flat", lambda a: flowml.roll(a, -7), lambda a: np.roll(a, -7), [A]),
    ("repeat", lambda a: flowml.repeat(a, 3, axis=-2), lambda a: np.repeat(a, 3, axis=-2), [A]),
    ("repeat each", lambda a: flowml.repeat(a, (1, 0, 2), axis=2), lambda a: np.repeat(a, (1, 0, 2), axis=2), [A]),
    ("repeat flat", lambda a: flowml.repeat(a, 2), lambda a: np.repeat(a, 2), [A]),
    ("tile", lambda a: flowml.tile(a, (2, 1, 3)), lambda a: np.tile(a, (2, 1, 3)), [A]),
    ("tile longer", lambda v: flowml.tile(v, (2, 2)), lambda v: np.tile(v, (2, 2)), [V]),
    ("pad", lambda a: flowml.pad(a, ((0, 1), (2, 0), (1, 1), (0, 0)), constant_values=-1.5),
     lambda a: np.pad(a, ((0, 1), (2, 0), (1, 1), (0, 0)), constant_values=-1.5), [A]),
    ("pad all", lambda m: flowml.pad(m, 2), lambda m: np.pad(m, 2), [M]),
    ("diagonal", lambda m: flowml.diagonal(m, 1), lambda m: np.diagonal(m, 1), [M]),
    ("diagonal axes", lambda a: flowml.diagonal(a, -1, 2, 3), lambda a: np.diagonal(a, -1, 2, 3), [A]),
    ("trace", flowml.trace, np.trace, [M]),
    ("trace offset", lambda a: flowml.trace(a, 1, -1, -2), lambda a: np.trace(a, 1, -1, -2), [A]),
    ("diag of a vector", lambda v: flowml.diag(v, -2), lambda v: np.diag(v, -2), [V]),
    ("diag above", lambda v: flowml.diag(v, 1), lambda v: np.diag(v, 1), [V]),
    ("diag of a matrix", lambda m: flowml.diag(m, -1), lambda m: np.diag(m, -1), [M]),
    ("tril", lambda a: flowml.tril(a, -1), lambda a: np.tril(a, -1), [A]),
    ("triu", lambda m: flowml.triu(m, 2), lambda m: np.triu(m, 2), [M]),
    ("tril ints", flowml.tril, np.tril, [I]),
    ("take_along_axis", lambda a, i: flowml.take_along_axis(a, i, -1), lambda a, i: np.take_along_axis(a, i, -1),
     [A, IDX]),
    ("take_along_axis argsort-like", lambda m: flowml.take_along_axis(m, np.argsort(M, 0), 0),
     lambda m: np.take_along_axis(m, np.argsort(M, 0), 0), [M]),
    ("tensordot", lambda m, b: flowml.tensordot(m, b, 1), lambda m, b: np.tensordot(m, b, 1), [M.T, B]),
    ("tensordot pairs", lambda b, c: flowml.tensordot(b, c, ((0, 2), (1, 0))),
     lambda b, c: np.tensordot(b, c, ((0, 2), (1, 0))), [B, C]),
    ("tensordot full", lambda m: flowml.tensordot(m, m, 2), lambda m: np.tensordot(m, m, 2), [M]),
    ("einsum matmul", lambda m, v: flowml.einsum("ij,j->i", m, v), lambda m, v: np.einsum("ij,j->i", m, v), [M, V]),
    ("einsum batched", lambda b, c: flowml.einsum("kib,bkj->bij", b, c), lambda b, c: np.einsum("kib,bkj->bij", b, c),
     [B, C]),
    ("einsum implicit", lambda m: flowml.einsum("ij,kj", m, m), lambda m: np.einsum("ij,kj", m, m), [M]),
    ("einsum outer and sum", lambda v, m: flowml.einsum("i,jk->ij", v, m), lambda v, m: np.einsum("i,jk->ij", v, m),
     [V, M]),
    ("einsum one", lambda a: flowml.einsum("abcd->db", a), lambda a: np.einsum("abcd->db", a), [A]),
    ("einsum trace", lambda m: flowml.einsum("ii", m), lambda m: np.einsum("ii", m), [M[:, :4]]),
    ("einsum diagonal", lambda b: flowml.einsum("iji->ji", b), lambda b: np.einsum("iji->ji", b), [B[:2, :, :]]),
    ("einsum diagonal product", lambda c, m: flowml.einsum("bii,ij->bj", c, m),
     lambda c, m: np.einsum("bii,ij->bj", c, m), [C[:, :, :4], M]),
    ("einsum three", lambda m, v, b: flowml.einsum("ij,j,ikl->kl", m, v, b), lambda m, v, b: np.einsum("ij,j,ikl->kl", m, v, b),
     [M, V, B]),
]


@pytest.mark.parametrize("label", [c[0] for c in SHAPE_CASES])
def test_shape_functions_are_numpys_and_differentiable(label):
    _, fn, np_fn, arrays = next(c for c in SHAPE_CASES if c[0] == label)
    check(fn, np_fn, *arrays)
    case = Case(fn, arrays, label=label)
    if case.wrt:
        check_lop(case)
        check_jvp(case)


# what OpenCL runs as kernels (the rest are gathers and copies on the host there; PoCL takes
# ~0.4 s per kernel to build, so the OpenCL test keeps to these)
OPENCL_CASES = {"repeat", "tile", "tril", "triu", "diag of a vector", "trace", "einsum one", "pad all"}


@st.composite
def _shape_call(draw):
    """A random array and a call of a shape function on it with random (valid) arguments."""
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))
    nd = len(shape)
    ax = st.integers(-nd, nd - 1)
    name = draw(st.sampled_from(["flip", "roll", "repeat", "tile", "pad", "moveaxis", "swapaxes", "tril", "triu",
                                 "squeeze", "cumsum", "cumprod"]))
    if name == "flip":
        kw = {"axis": draw(st.none() | ax)}
    elif name == "roll":
        kw = {"shift": draw(st.integers(-6, 6)), "axis": draw(st.none() | ax)}
    elif name == "repeat":
        kw = {"repeats": draw(st.integers(0, 3)), "axis": draw(st.none() | ax)}
    elif name == "tile":
        kw = {"reps": tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=3)))}
    elif name == "pad":
        kw = {"pad_width": tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in shape),
              "constant_values": draw(st.floats(-2, 2))}
    elif name == "moveaxis":
        kw = {"source": draw(ax), "destination": draw(ax)}
    elif name == "swapaxes":
        kw = {"axis1": draw(ax), "axis2": draw(ax)}
    elif name in ("tril", "triu"):
        shape = shape if nd >= 2 else shape + (3,)
        kw = {"k": draw(st.integers(-3, 3))}
    elif name == "squeeze":
        kw = {}
    else:
        kw = {"axis": draw(st.none() | ax)}
    return name, shape, kw


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(call=_shape_call(), seed=st.integers(0, 2 ** 16))
def test_shape_functions_with_random_arguments_are_numpys(call, seed):
    name, shape, kw = call
    x = np.random.default_rng(seed).normal(size=shape)
    check(lambda a: getattr(flowml, name)(a, **kw), lambda a: getattr(np, name)(a, **kw), x)


@pytest.mark.parametrize("backend", BACKENDS[1:])
def test_shape_functions_on_the_native_backends(backend):
    flowml.reset_default_graph()
    ins, outs, wants = [], [], []
    cases = [c for c in SHAPE_CASES if backend == "llvm" or c[0] in OPENCL_CASES]
    for k, (label, fn, np_fn, arrays) in enumerate(cases):
        xs = [flowml.tensor(f"c{k}_{i}", typed(a)) for i, a in enumerate(arrays)]
        out = fn(*xs)
        ins += xs
        outs.append(out)
        if out.dtype.kind == "f" and backend == "llvm":  # (OpenCL: their kernels take PoCL ~20 s to build)
            outs.append(flowml.grad(flowml.sum(out * out), xs[0]))
        wants.append((label, np_fn(*arrays)))
    fn = flowml.function(ins, outs, backend=backend)
    got = fn(*[a for c in cases for a in c[3]])
    ref = flowml.function(ins, outs, backend="reference")(*[a for c in cases for a in c[3]])
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=1e-12, atol=1e-12)
    if backend == "llvm":  # compositions of natively lowered ops: nothing runs on the host
        assert fn._executable.host_steps() == {}


@pytest.mark.parametrize("backend", ["reference", "llvm"])
def test_shape_functions_with_symbolic_dims(backend):
    src = """input x : f64[N, M]
input v : f64[N]
input k : i64[N, 2]
fn f(x, v, k) -> squeeze(expand_dims(v, 0)), swapaxes(x, 0, 1), flip(x, axis=0), roll(v, 1), roll(x, -1, axis=1), repeat(v, 3), tile(v, (2, 1)), pad(x, ((1, 0), (0, 2)), constant_values=7), tril(x), triu(x, -1), eye(N), diag(v), trace(outer(v, v)), einsum("ii->i", outer(v, v)), take_along_axis(x, k, 1), tensordot(x, x, ((0,), (0,))), einsum("nm,n->m", x, v), cumsum(v), var(x, axis=0)
fn g(x, v) -> grad(sum(roll(x, 1, axis=0) * tril(x)) + sum(pad(x, 1) ** 2) / 2 + trace(outer(v, v)) + sum(repeat(v, 2) ** 2), x), grad(sum(einsum("nm,n->m", x, v) ** 2) + sum(diag(v) * eye(N)), v)
"""
    model = flowml.loads(src, backend=backend)
    rng = np.random.default_rng(8)
    for n, m in ((3, 4), (5, 2), (1, 3)):
        x, v, k = rng.normal(size=(n, m)), rng.normal(size=n), rng.integers(0, m, size=(n, 2))
        want = [v, x.T, x[::-1], np.roll(v, 1), np.roll(x, -1, 1), np.repeat(v, 3), np.tile(v, (2, 1)),
                np.pad(x, ((1, 0), (0, 2)), constant_values=7), np.tril(x), np.triu(x, -1), np.eye(n), np.diag(v),
                np.trace(np.outer(v, v)), np.diag(np.outer(v, v)), np.take_along_axis(x, k, 1), x.T @ x, v @ x,
                np.cumsum(v), x.var(0)]
        for i, (got, w) in enumerate(zip(model.f(x, v, k), want)):
            np.testing.assert_allclose(got, w, rtol=1e-13, atol=1e-14, err_msg=f"output {i} at {(n, m)}")
        gx, gv = model.g(x, v)
        mask = np.tril(np.ones((n, m)))
        np.testing.assert_allclose(gx, np.roll(x * mask, -1, 0) + np.roll(x, 1, 0) * mask + x, rtol=1e-13)
        np.testing.assert_allclose(gv, 2 * x @ (v @ x) + 1, rtol=1e-13)
    if backend == "llvm":
        assert model.functions["f"]._executable.host_steps() == {}
        assert model.functions["g"]._executable.host_steps() == {}


@pytest.mark.parametrize("backend", BACKENDS)
def test_constructors_eye_linspace(backend):
    src = """input x : f64[N]
fn f(x) -> eye(3), eye(2, 4, k=1, dtype=i64), eye(N, k=-1), linspace(0, 1, 5), linspace(-1.0, 2.0, 4, endpoint=false), linspace(0, 10, 4, dtype=i64), linspace(x[0], x[1], 3), grad(sum(linspace(x[0], x[1], 3) ** 2), x)
"""
    model = flowml.loads(src, backend=backend)
    x = np.array([1.5, -2.0, 0.0])
    got = model.f(x)
    want = [np.eye(3), np.eye(2, 4, k=1, dtype=np.int64), np.eye(3, k=-1), np.linspace(0, 1, 5),
            np.linspace(-1.0, 2.0, 4, endpoint=False), np.linspace(0, 10, 4, dtype=np.int64),
            np.linspace(x[0], x[1], 3)]
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-15)
    ys = np.linspace(x[0], x[1], 3)
    np.testing.assert_allclose(got[-1], [2 * (ys[0] + 0.5 * ys[1]), 2 * (0.5 * ys[1] + ys[2]), 0], rtol=1e-14)


def test_shape_function_errors_are_located_and_clear():
    for src, msg in [
        ("fn f(x) -> squeeze(x, axis=0)", "cannot squeeze axis 0 of f64[3, 1]: its length is 3, not 1"),
        ("fn f(x) -> pad(x, 1, mode=\"edge\")", 'pad: only mode "constant" is supported, not "edge"'),
        ("fn f(x) -> einsum(\"ii->i\", x)", "einsum: index 'i' has lengths 3 and 1"),
        ("fn f(x) -> einsum(\"i->i\", x)", "einsum: \"i\" names 1 axes of f64[3, 1]"),
        ("fn f(x) -> einsum(\"ij,jk->ik\", x, x)", "einsum: index 'j' has lengths 1 and 3"),
        ("fn f(x) -> tensordot(x, x, 3)", "tensordot: cannot sum over 3 axes"),
        ("fn f(x) -> repeat(x, (1, 2), axis=0)", "repeat: 2 repeats for an axis of length 3"),
    ]:
        err = _load_error("input x : f64[3, 1]\n" + src + "\n")
        assert msg in err and ":2:" in err.splitlines()[0], (msg, err)


def test_var_methods_are_numpys_ndarray_methods():
    x = np.random.default_rng(12).normal(size=(3, 1, 4))
    for method, args, kw in [("prod", (0,), {}), ("max", (-1,), {"keepdims": True}), ("min", (), {}),
                             ("var", (None,), {"ddof": 1}), ("std", (2,), {"keepdims": True}), ("any", (0,), {}),
                             ("all", (), {}), ("argmax", (2,), {}), ("argmin", (), {}), ("cumsum", (0,), {}),
                             ("cumprod", (), {}), ("round", (1,), {}), ("clip", (-0.5, 0.5), {}), ("flatten", (), {}),
                             ("squeeze", (), {}), ("swapaxes", (0, 2), {}), ("transpose", (), {}),
                             ("transpose", (1, 2, 0), {}), ("transpose", ((2, 0, 1),), {}), ("repeat", (2, 1), {}),
                             ("diagonal", (0, 0, 2), {}), ("trace", (1, 0, 2), {})]:
        check(lambda a: getattr(a, method)(*args, **kw), lambda a: getattr(a, method)(*args, **kw), x)
    check(lambda a: a.argsort(0), lambda a: a.argsort(0, kind="stable"), x)


# ----------------------------------------------------------------- names, docs


def _load_error(src):
    with pytest.raises(flowml.FlowError) as e:
        flowml.loads(src)
    return str(e.value)


@pytest.mark.parametrize("typo,meant", [("isnul", "isnan"), ("arctn", "arctan"), ("sqaure", "square"),
                                        ("flor", "floor"), ("logaddexp2", "logaddexp"), ("atan2", "arctan2"),
                                        ("asin", "arcsin"), ("amax", "max"), ("pow", "power"), ("stdev", "std")])
def test_an_unknown_name_suggests_a_real_neighbour(typo, meant):
    msg = _load_error(f"input x : f64[3]\nfn f(x) -> {typo}(x)\n")
    assert f"unknown function '{typo}'; did you mean '{meant}'?" in msg
    msg = _load_error(f"input x : f64[3]\nfn f(x) -> x + {typo}\n")
    assert f"unknown name '{typo}'; did you mean '{meant}'?" in msg


def test_a_name_with_no_neighbour_gets_no_suggestion():
    assert "did you mean" not in _load_error("input x : f64[3]\nfn f(x) -> qwzx(x)\n")


def test_coverage_every_function_is_a_builtin_a_flowml_function_and_documented():
    from pathlib import Path

    from flowml.lang.builtins import BUILTINS
    docs = (Path(__file__).parent.parent / "docs" / "language.md").read_text()
    for name in COVERAGE:
        assert name in BUILTINS, name
        assert callable(getattr(flowml, name)), name
        assert f"`{name}(" in docs, f"{name} is not in docs/language.md"
