"""Every op against numpy: values, dtypes (numpy promotion with weak python literals) and shapes
(broadcasting, axes, keepdims), with hypothesis drawing shapes and values."""

from __future__ import annotations

import operator

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import scipy.special
from hypothesis import given, settings
from hypothesis import strategies as st

import flowml
from flowml.errors import FlowError, FlowTypeError
from flowml.ir import lib as L
from helpers import ALL_DTYPES, FLOAT_DTYPES, NUMERIC_DTYPES, assert_same, axis_args, check, matmul_shapes, run

SETTINGS = settings(max_examples=25, deadline=None)

F32_TOL = {"rtol": 1e-5, "atol": 1e-6}


def tol_for(dtype):
    return F32_TOL if np.dtype(dtype) == np.float32 else {"rtol": 1e-10, "atol": 1e-12}


def flow_dtype(dt) -> np.dtype:
    """The dtype flowml gives where numpy gives `dt`: flowml has no int8 or float16, so numpy's
    int8 results (arithmetic on bools) are i64 and float16 results (math on bools) are f64."""
    dt = np.dtype(dt)
    if dt == np.int8:
        return np.dtype(np.int64)
    if dt == np.float16:
        return np.dtype(np.float64)
    return dt


def numpy_ref(fn):
    """numpy's result of `fn` with int8/float16 results widened to flowml's dtype."""
    def ref(*arrays):
        with np.errstate(all="ignore"):
            out = np.asarray(fn(*arrays))
        return out.astype(flow_dtype(out.dtype))
    return ref


# ----------------------------------------------------------------- strategies


def elements(dtype, lo=-3.0, hi=3.0, min_abs=0.0):
    """Scalars of `dtype` in [lo, hi] with |v| >= min_abs."""
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return st.booleans() if min_abs == 0 else st.just(True)
    if dtype.kind in "iu":
        s = st.integers(int(np.ceil(lo)), int(np.floor(hi)))
        return s.filter(lambda v: abs(v) >= min_abs) if min_abs else s
    width = 32 if dtype == np.float32 else 64
    if width == 32:  # hypothesis wants bounds that are f32 values
        lo, hi, min_abs = (float(np.float32(v)) for v in (lo, hi, min_abs))
    if min_abs:
        parts = []
        if hi >= min_abs:
            parts.append(st.floats(max(lo, min_abs), hi, width=width))
        if lo <= -min_abs:
            parts.append(st.floats(lo, min(hi, -min_abs), width=width))
        return st.one_of(*parts)
    return st.floats(lo, hi, width=width)


def arrays(dtype, shape, lo=-3.0, hi=3.0, min_abs=0.0):
    return hnp.arrays(np.dtype(dtype), shape, elements=elements(dtype, lo, hi, min_abs))


shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=4)
nonempty_shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4)
two_shapes = hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, min_side=1, max_side=4)
three_shapes = hnp.mutually_broadcastable_shapes(num_shapes=3, min_dims=0, max_dims=3, min_side=1, max_side=3)
dtypes = st.sampled_from(ALL_DTYPES)
numeric_dtypes = st.sampled_from(NUMERIC_DTYPES)
float_dtypes = st.sampled_from(FLOAT_DTYPES)


def check_or_both_fail(fn, np_fn, *arrays):
    """Where numpy computes the op, flowml agrees; where numpy refuses it (e.g. subtracting
    bools), flowml refuses it too, with a FlowError (never an internal error or a crash)."""
    try:
        with np.errstate(all="ignore"):
            np_fn(*arrays)
    except TypeError:
        with pytest.raises(FlowError) as info:
            run(fn, *arrays)
        assert "Internal" not in type(info.value).__name__
        return
    tol = tol_for(np.result_type(*arrays)) if any(np.asarray(a).dtype == np.float32 for a in arrays) else {}
    check(fn, numpy_ref(np_fn), *arrays, **tol)


# ----------------------------------------------------------------- arithmetic


ARITH = {
    "add": operator.add,
    "sub": operator.sub,
    "mul": operator.mul,
    "truediv": operator.truediv,
    "floordiv": operator.floordiv,
    "mod": operator.mod,
    "pow": operator.pow,
}


def _operand_ranges(name, dtype, side):
    """(lo, hi, min_abs) for the values of one operand of `name`: no zero divisors, no negative
    integer powers, bases that keep powers real."""
    if name in ("truediv", "floordiv", "mod") and side == 1:
        return (-3, 3, 1) if np.dtype(dtype).kind in "iub" else (-3, 3, 0.5)
    if name == "pow":
        if side == 0:
            return (0, 3, 0) if np.dtype(dtype).kind in "iub" else (0.5, 3, 0)
        return (0, 3, 0) if np.dtype(dtype).kind in "iub" else (-2, 2, 0)
    return (-5, 5, 0)


@pytest.mark.parametrize("name", list(ARITH))
@SETTINGS
@given(data=st.data(), shapes=two_shapes, da=dtypes, db=dtypes)
def test_arithmetic_matches_numpy(name, data, shapes, da, db):
    a = data.draw(arrays(da, shapes.input_shapes[0], *_operand_ranges(name, da, 0)))
    b = data.draw(arrays(db, shapes.input_shapes[1], *_operand_ranges(name, db, 1)))
    op = ARITH[name]
    check_or_both_fail(op, op, a, b)


SCALARS = [2, 3, 0.5, 2.5, True]


@pytest.mark.parametrize("name", list(ARITH))
@pytest.mark.parametrize("scalar", SCALARS, ids=repr)
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
def test_arithmetic_with_python_scalars_is_weak(name, scalar, dtype):
    """A python scalar takes the dtype of the array it meets (NEP 50): f32 * 0.5 stays f32,
    i32 + 2 stays i32, i32 * 0.5 is f64; on either side of the operator."""
    op = ARITH[name]
    rng = np.random.default_rng(0)
    a = (rng.integers(1, 4, size=(2, 3))).astype(dtype)
    check_or_both_fail(lambda x: op(x, scalar), lambda x: op(x, scalar), a)
    check_or_both_fail(lambda x: op(scalar, x), lambda x: op(scalar, x), a)


def test_weak_literals_keep_float32():
    x = np.array([1.5, -2.0, 3.25], dtype=np.float32)
    got, out = run(lambda v: (v * 0.5 + 1) / 3 - 2.0 ** v, x)
    assert out.dtype == np.float32 and got.dtype == np.float32
    np.testing.assert_allclose(got, (x * 0.5 + 1) / 3 - 2.0 ** x, rtol=1e-6)


@pytest.mark.parametrize("da,db", [(np.int64, np.int64), (np.int32, np.int32), (np.int32, np.int64),
                                   (np.bool_, np.int32), (np.bool_, np.bool_)])
def test_int_true_division_is_f64(da, db):
    a = np.array([1, 2, 3, 7]).astype(da)
    b = np.array([2, 1, 3, 2]).astype(db)
    got, out = run(operator.truediv, a, b)
    assert out.dtype == np.float64 and got.dtype == np.float64
    np.testing.assert_array_equal(got, a / b)
    got, out = run(lambda x: x / 2, a)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, a / 2)


@SETTINGS
@given(data=st.data(), shape=shapes, dt=dtypes)
def test_negative_matches_numpy(data, shape, dt):
    x = data.draw(arrays(dt, shape, -5, 5))
    check_or_both_fail(operator.neg, operator.neg, x)
    check(lambda v: +v, lambda v: v, x)  # the identity (numpy refuses +bool; flowml allows it)


# ----------------------------------------------------------------- comparisons and logic


COMPARISONS = {"eq": operator.eq, "ne": operator.ne, "lt": operator.lt, "le": operator.le,
               "gt": operator.gt, "ge": operator.ge}


@pytest.mark.parametrize("name", list(COMPARISONS))
@SETTINGS
@given(data=st.data(), shapes=two_shapes, da=dtypes, db=dtypes)
def test_comparisons_match_numpy(name, data, shapes, da, db):
    # Small integer-valued ranges so that equal values (ties) are common.
    a = data.draw(arrays(da, shapes.input_shapes[0], -2, 2))
    b = data.draw(arrays(db, shapes.input_shapes[1], -2, 2))
    op = COMPARISONS[name]
    got = check(op, op, a, b)
    assert got.dtype == np.bool_


@pytest.mark.parametrize("name", list(COMPARISONS))
@pytest.mark.parametrize("scalar", [1, 0.5, 0.1, True], ids=repr)
def test_comparisons_with_scalars(name, scalar):
    """A float literal compared with f32 is an f32 (numpy's NEP 50): f32(0.1) == 0.1."""
    op = COMPARISONS[name]
    x = np.array([[0.0, 0.5, 1.0], [-1.0, 2.0, 0.1]], dtype=np.float32)
    check(lambda v: op(v, scalar), lambda v: op(v, scalar), x)
    check(lambda v: op(scalar, v), lambda v: op(scalar, v), x)


@SETTINGS
@given(data=st.data(), shapes=two_shapes, da=dtypes, db=dtypes)
def test_logical_ops_match_numpy(data, shapes, da, db):
    """`&`, `|` and `~` on flowml values are logical (the .flow `and`/`or`/`not`)."""
    a = data.draw(arrays(da, shapes.input_shapes[0], -2, 2))
    b = data.draw(arrays(db, shapes.input_shapes[1], -2, 2))
    check(operator.and_, np.logical_and, a, b)
    check(operator.or_, np.logical_or, a, b)
    check(L.logical_and, np.logical_and, a, b)
    check(L.logical_or, np.logical_or, a, b)
    check(operator.invert, np.logical_not, a)
    check(L.logical_not, np.logical_not, b)
    check(lambda x, y: ~((x > 0) & (y < 1)) | (x == y),
          lambda x, y: np.logical_or(np.logical_not(np.logical_and(x > 0, y < 1)), x == y), a, b)


# ----------------------------------------------------------------- where and cast


@SETTINGS
@given(data=st.data(), shapes=three_shapes, da=dtypes, db=dtypes)
def test_where_matches_numpy(data, shapes, da, db):
    c = data.draw(arrays(np.bool_, shapes.input_shapes[0]))
    a = data.draw(arrays(da, shapes.input_shapes[1]))
    b = data.draw(arrays(db, shapes.input_shapes[2]))
    check(flowml.where, np.where, c, a, b)


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("scalar", [0, 0.5, False], ids=repr)
def test_where_with_scalars_and_numeric_condition(dtype, scalar):
    x = np.array([[1, 0, 2], [0, 3, 1]]).astype(dtype)
    c = np.array([True, False, True])
    check(lambda cv, xv: flowml.where(cv, xv, scalar), lambda cv, xv: np.where(cv, xv, scalar), c, x)
    check(lambda cv, xv: flowml.where(cv, scalar, xv), lambda cv, xv: np.where(cv, scalar, xv), c, x)
    # A numeric condition means "nonzero", as in numpy.
    check(lambda xv: flowml.where(xv, 1.5, -1.5), lambda xv: np.where(xv, 1.5, -1.5), x)


@SETTINGS
@given(data=st.data(), shapes=two_shapes, da=dtypes, db=dtypes, cond=st.booleans())
def test_ifelse_matches_numpy(data, shapes, da, db, cond):
    """`ifelse` computes one branch, broadcast to the shape of both, in their promoted dtype."""
    a = data.draw(arrays(da, shapes.input_shapes[0]))
    b = data.draw(arrays(db, shapes.input_shapes[1]))

    def ref(c, x, y):
        out = np.where(c, x, y)
        return np.broadcast_to(x if c else y, out.shape).astype(out.dtype)

    check(flowml.ifelse, ref, np.array(cond), a, b)
    check(lambda c, x: flowml.ifelse(c, x, 0.5), lambda c, x: ref(c, x, 0.5), np.array(cond), a)


@SETTINGS
@given(data=st.data(), shape=shapes, src=dtypes, dst=dtypes)
def test_cast_matches_numpy(data, shape, src, dst):
    x = data.draw(arrays(src, shape, -100, 100))
    check(lambda v: flowml.cast(v, dst), lambda v: v.astype(dst), x)
    check(lambda v: v.astype(dst), lambda v: v.astype(dst), x)


@pytest.mark.parametrize("name", ["bool", "i32", "i64", "f32", "f64"])
def test_cast_by_flowml_dtype_name(name):
    x = np.array([-1.75, 0.0, 2.5])
    dt = {"bool": np.bool_, "i32": np.int32, "i64": np.int64, "f32": np.float32, "f64": np.float64}[name]
    check(lambda v: flowml.cast(v, name), lambda v: v.astype(dt), x)


def test_cast_of_weak_literal_becomes_strong():
    x = np.array([1.0, 2.0], dtype=np.float32)
    # a cast literal is no longer weak: f32 + f64(2) is f64
    got, out = run(lambda v: v + flowml.cast(L.constant(2, v.graph), "f64"), x)
    assert out.dtype == np.float64 and got.dtype == np.float64


# ----------------------------------------------------------------- elementwise math


def _softplus(x):
    return np.logaddexp(np.zeros((), dtype=x.dtype if x.dtype.kind == "f" else np.float64), x)


UNARY = {
    # name: (flowml fn, numpy reference, (lo, hi, min_abs) of the domain)
    "exp": (flowml.exp, np.exp, (-5, 5, 0)),
    "log": (flowml.log, np.log, (0.01, 10, 0)),
    "log1p": (flowml.log1p, np.log1p, (-0.99, 10, 0)),
    "expm1": (flowml.expm1, np.expm1, (-5, 5, 0)),
    "sqrt": (flowml.sqrt, np.sqrt, (0, 10, 0)),
    "abs": (flowml.abs, np.abs, (-5, 5, 0)),
    "sign": (flowml.sign, np.sign, (-5, 5, 0)),
    "sin": (flowml.sin, np.sin, (-5, 5, 0)),
    "cos": (flowml.cos, np.cos, (-5, 5, 0)),
    "tanh": (flowml.tanh, np.tanh, (-5, 5, 0)),
    "erf": (flowml.erf, scipy.special.erf, (-3, 3, 0)),
    "sigmoid": (flowml.sigmoid, lambda x: 1 / (1 + np.exp(-x)), (-10, 10, 0)),
    "softplus": (flowml.softplus, lambda x: np.log1p(np.exp(x)), (-10, 10, 0)),
    "relu": (flowml.relu, lambda x: np.maximum(x, 0 if x.dtype.kind != "b" else False), (-5, 5, 0)),
}
FLOAT_RESULT = {"exp", "log", "log1p", "expm1", "sqrt", "sin", "cos", "tanh", "erf", "sigmoid", "softplus"}


def _float_ref(np_fn):
    """numpy's function on ints and bools, evaluated in f64 (flowml's rule for float math)."""
    def ref(x):
        if x.dtype.kind in "biu":
            x = x.astype(np.float64)
        return np_fn(x)
    return ref


@pytest.mark.parametrize("name", list(UNARY))
@SETTINGS
@given(data=st.data(), shape=shapes, dt=dtypes)
def test_unary_math_matches_numpy(name, data, shape, dt):
    fn, np_fn, (lo, hi, min_abs) = UNARY[name]
    if dt.kind == "b" and name in ("log", "log1p", "sqrt"):
        lo = 0
    x = data.draw(arrays(dt, shape, lo, hi, min_abs))
    if name in FLOAT_RESULT:
        # ints and bools compute in f64, as numpy does for ints (its f16 for bools is f64 here)
        got = check(fn, _float_ref(np_fn), x, **tol_for(x.dtype if x.dtype.kind == "f" else np.float64))
        assert got.dtype == (x.dtype if x.dtype.kind == "f" else np.float64)
        if dt.kind in "iu":
            assert got.dtype == np_fn(x).dtype  # numpy itself gives f64 for ints
    else:
        check_or_both_fail(fn, np_fn, x) if dt.kind != "f" else check(fn, np_fn, x, **tol_for(dt))


def test_softplus_is_stable_for_large_inputs():
    x = np.array([-800.0, -40.0, 0.0, 40.0, 800.0])
    got, _ = run(flowml.softplus, x)
    np.testing.assert_allclose(got, np.logaddexp(0, x), rtol=1e-12)
    assert np.all(np.isfinite(got))
    got, _ = run(flowml.sigmoid, x)
    np.testing.assert_allclose(got, scipy.special.expit(x), rtol=1e-12)


@pytest.mark.parametrize("fn,np_fn", [(flowml.maximum, np.maximum), (flowml.minimum, np.minimum)])
@SETTINGS
@given(data=st.data(), shapes=two_shapes, da=dtypes, db=dtypes)
def test_maximum_minimum_match_numpy(fn, np_fn, data, shapes, da, db):
    a = data.draw(arrays(da, shapes.input_shapes[0]))
    b = data.draw(arrays(db, shapes.input_shapes[1]))
    check(fn, np_fn, a, b)
    check(lambda x: fn(x, 1), lambda x: np_fn(x, 1), a)
    check(lambda x: fn(0.5, x), lambda x: np_fn(0.5, x), a)


@SETTINGS
@given(data=st.data(), shapes=three_shapes, dt=numeric_dtypes)
def test_clip_matches_numpy(data, shapes, dt):
    x = data.draw(arrays(dt, shapes.input_shapes[0]))
    lo = data.draw(arrays(dt, shapes.input_shapes[1], -2, 0))
    hi = data.draw(arrays(dt, shapes.input_shapes[2], 0, 2))
    check(flowml.clip, np.clip, x, lo, hi)
    check(lambda v: flowml.clip(v, -1, 2), lambda v: np.clip(v, -1, 2), x)
    check(lambda v: flowml.clip(v, -0.5, 1.5), lambda v: np.clip(v, -0.5, 1.5), x)


# ----------------------------------------------------------------- reductions


def _logsumexp_ref(x, axis=None, keepdims=False):
    if x.dtype.kind != "f":
        x = x.astype(np.float64)
    m = np.max(x, axis=axis, keepdims=True)
    out = m + np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True))
    return out if keepdims else np.squeeze(out, axis=axis)


REDUCTIONS = {
    "sum": (flowml.sum, np.sum),
    "mean": (flowml.mean, np.mean),
    "max": (flowml.max, np.max),
    "min": (flowml.min, np.min),
    "prod": (flowml.prod, np.prod),
    "logsumexp": (flowml.logsumexp, _logsumexp_ref),
}


@pytest.mark.parametrize("name", list(REDUCTIONS))
@SETTINGS
@given(data=st.data(), shape=shapes, dt=dtypes, keepdims=st.booleans())
def test_reductions_match_numpy(name, data, shape, dt, keepdims):
    fn, np_fn = REDUCTIONS[name]
    x = data.draw(arrays(dt, shape, -2, 2))
    axis = data.draw(axis_args(len(shape)))
    tol = tol_for(np.float32) if dt == np.float32 else {}
    check(lambda v: fn(v, axis=axis, keepdims=keepdims),
          lambda v: np_fn(v, axis=axis, keepdims=keepdims), x, **tol)
    if axis is None and not keepdims:
        check(fn, np_fn, x, **tol)


@SETTINGS
@given(data=st.data(), shape=shapes, dt=numeric_dtypes, keepdims=st.booleans())
def test_reduction_methods(data, shape, dt, keepdims):
    x = data.draw(arrays(dt, shape, -2, 2))
    axis = data.draw(axis_args(len(shape)))
    tol = tol_for(np.float32) if dt == np.float32 else {}
    check(lambda v: v.sum(axis, keepdims), lambda v: v.sum(axis, keepdims=keepdims), x, **tol)
    check(lambda v: v.mean(axis, keepdims), lambda v: v.mean(axis, keepdims=keepdims), x, **tol)


@pytest.mark.parametrize("fn,np_fn", [(flowml.argmax, np.argmax), (flowml.argmin, np.argmin)])
@SETTINGS
@given(data=st.data(), shape=nonempty_shapes, dt=dtypes, keepdims=st.booleans())
def test_argmax_argmin_match_numpy(fn, np_fn, data, shape, dt, keepdims):
    x = data.draw(arrays(dt, shape, -2, 2))  # small ranges: ties (the first one wins)
    axis = data.draw(st.none() | st.integers(-len(shape), len(shape) - 1))
    got = check(lambda v: fn(v, axis=axis, keepdims=keepdims),
                lambda v: np_fn(v, axis=axis, keepdims=keepdims), x)
    assert got.dtype == np.int64


def test_reductions_of_scalars():
    x = np.array(2.5)
    for fn, np_fn in REDUCTIONS.values():
        check(fn, np_fn, x)
        check(lambda v: fn(v, axis=(), keepdims=True), lambda v: np_fn(v, axis=(), keepdims=True), x)
    check(flowml.argmax, np.argmax, x)


@pytest.mark.parametrize("axis", [3, -4, (0, 0), (1, -2)])
def test_bad_axes_are_type_errors(axis):
    x = np.zeros((2, 3, 4))
    with pytest.raises(FlowTypeError):
        run(lambda v: flowml.sum(v, axis=axis), x)


# ----------------------------------------------------------------- softmax


def _softmax_ref(x, axis=-1):
    x = x.astype(np.float64) if x.dtype.kind != "f" else x
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _log_softmax_ref(x, axis=-1):
    x = x.astype(np.float64) if x.dtype.kind != "f" else x
    return x - scipy.special.logsumexp(x, axis=axis, keepdims=True)


@SETTINGS
@given(data=st.data(), shape=nonempty_shapes, dt=numeric_dtypes)
def test_softmax_and_log_softmax_match_numpy(data, shape, dt):
    x = data.draw(arrays(dt, shape, -30, 30))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    tol = tol_for(np.float32) if dt == np.float32 else {}
    got = check(lambda v: flowml.softmax(v, axis=axis), lambda v: _softmax_ref(v, axis), x, **tol)
    np.testing.assert_allclose(got.sum(axis=axis), 1, rtol=1e-5)
    check(lambda v: flowml.log_softmax(v, axis=axis), lambda v: _log_softmax_ref(v, axis), x,
          **(tol or {"rtol": 1e-10, "atol": 1e-10}))
    if axis in (-1, len(shape) - 1):
        check(flowml.softmax, _softmax_ref, x, **tol)
        check(flowml.log_softmax, _log_softmax_ref, x, **(tol or {"rtol": 1e-10, "atol": 1e-10}))


def test_softmax_is_stable_for_large_inputs():
    x = np.array([[1000.0, 1001.0, 999.0], [-1000.0, -1000.0, -1001.0]])
    got, _ = run(flowml.softmax, x)
    np.testing.assert_allclose(got, _softmax_ref(x), rtol=1e-12)
    got, _ = run(flowml.log_softmax, x)
    np.testing.assert_allclose(got, _log_softmax_ref(x), rtol=1e-12)
    got, _ = run(flowml.logsumexp, x)
    np.testing.assert_allclose(got, scipy.special.logsumexp(x), rtol=1e-12)


# ----------------------------------------------------------------- linear algebra


@SETTINGS
@given(data=st.data(), ab=matmul_shapes(), da=numeric_dtypes, db=numeric_dtypes)
def test_matmul_matches_numpy(data, ab, da, db):
    a = data.draw(arrays(da, ab[0]))
    b = data.draw(arrays(db, ab[1]))
    tol = F32_TOL if np.result_type(a, b) == np.float32 else {"rtol": 1e-10, "atol": 1e-10}
    check(operator.matmul, np.matmul, a, b, **tol)
    check(flowml.matmul, np.matmul, a, b, **tol)


@SETTINGS
@given(data=st.data(), ab=matmul_shapes(max_batch_dims=0), dt=numeric_dtypes)
def test_dot_matches_numpy(data, ab, dt):
    a = data.draw(arrays(dt, ab[0]))
    b = data.draw(arrays(dt, ab[1]))
    check(flowml.dot, np.dot, a, b, **tol_for(dt))


def test_dot_with_scalar_multiplies():
    a = np.array(2.0)
    b = np.array([[1.0, 2.0], [3.0, 4.0]])
    check(flowml.dot, np.dot, a, b)
    check(flowml.dot, np.dot, b, a)


@SETTINGS
@given(data=st.data(), sa=shapes, sb=shapes, da=numeric_dtypes, db=numeric_dtypes)
def test_outer_matches_numpy(data, sa, sb, da, db):
    a = data.draw(arrays(da, sa))
    b = data.draw(arrays(db, sb))
    check(flowml.outer, np.outer, a, b, **(F32_TOL if np.result_type(a, b) == np.float32 else {}))


@pytest.mark.parametrize("a,b", [((3,), (4,)), ((2, 3), (4,)), ((2, 3), (2, 4)), ((3,), (2, 3, 4)),
                                 ((2, 2, 3), (3,)), ((0, 3), (3, 2))])
def test_matmul_bad_or_edge_shapes(a, b):
    x, y = np.ones(a), np.ones(b)
    try:
        want = np.matmul(x, y)
    except ValueError:
        with pytest.raises(FlowTypeError):
            run(operator.matmul, x, y)
    else:
        check(operator.matmul, lambda u, v: want, x, y)


def test_matmul_of_scalars_is_a_type_error():
    with pytest.raises(FlowTypeError):
        run(operator.matmul, np.array(2.0), np.ones(3))


# ----------------------------------------------------------------- shape ops


@SETTINGS
@given(data=st.data(), shape=shapes, dt=dtypes)
def test_transpose_matches_numpy(data, shape, dt):
    x = data.draw(arrays(dt, shape))
    axes = data.draw(st.permutations(range(len(shape))))
    check(lambda v: flowml.transpose(v, axes), lambda v: np.transpose(v, axes), x)
    neg = [a - len(shape) for a in axes]
    check(lambda v: flowml.transpose(v, neg), lambda v: np.transpose(v, axes), x)
    check(flowml.transpose, np.transpose, x)
    check(lambda v: v.T, lambda v: v.T, x)


@st.composite
def reshapes(draw):
    """(shape, new shape, new shape with one -1): two groupings of the same factors."""
    atoms = draw(st.lists(st.integers(1, 4), min_size=0, max_size=4))

    def group(atoms):
        out, i = [], 0
        while i < len(atoms):
            j = draw(st.integers(i + 1, len(atoms)))
            out.append(int(np.prod(atoms[i:j])))
            i = j
        extra = draw(st.integers(0, 1))  # sprinkle a unit dim
        if extra:
            out.insert(draw(st.integers(0, len(out))), 1)
        return tuple(out)

    shape, new = group(atoms), group(list(draw(st.permutations(atoms))))
    with_minus = new
    if new:
        i = draw(st.integers(0, len(new) - 1))
        with_minus = new[:i] + (-1,) + new[i + 1:]
    return shape, new, with_minus


@SETTINGS
@given(data=st.data(), shapes=reshapes(), dt=dtypes)
def test_reshape_matches_numpy(data, shapes, dt):
    shape, new, with_minus = shapes
    x = data.draw(arrays(dt, shape))
    check(lambda v: flowml.reshape(v, new), lambda v: np.reshape(v, new), x)
    check(lambda v: flowml.reshape(v, with_minus), lambda v: np.reshape(v, with_minus), x)
    check(lambda v: v.reshape(with_minus), lambda v: v.reshape(with_minus), x)
    if new:
        check(lambda v: v.reshape(*new), lambda v: v.reshape(*new), x)
    check(lambda v: flowml.reshape(v, -1), lambda v: np.reshape(v, -1), x)


@pytest.mark.parametrize("new", [(5,), (-1, 5), (-1, -1), (7, -1)])
def test_reshape_bad_shapes_are_type_errors(new):
    with pytest.raises(FlowTypeError):
        run(lambda v: flowml.reshape(v, new), np.zeros((2, 6)))


@st.composite
def broadcast_targets(draw):
    target = draw(shapes)
    s = draw(hnp.mutually_broadcastable_shapes(num_shapes=1, base_shape=target, min_side=1, max_side=4))
    return s.input_shapes[0], s.result_shape


@SETTINGS
@given(data=st.data(), st_=broadcast_targets(), dt=dtypes)
def test_broadcast_to_matches_numpy(data, st_, dt):
    shape, target = st_
    x = data.draw(arrays(dt, shape))
    check(lambda v: flowml.broadcast_to(v, target), lambda v: np.broadcast_to(v, target), x)


def test_broadcast_to_bad_shape_is_a_type_error():
    with pytest.raises(FlowTypeError):
        run(lambda v: flowml.broadcast_to(v, (3, 4)), np.zeros((2, 4)))
    with pytest.raises(FlowTypeError):
        run(lambda v: flowml.broadcast_to(v, (4,)), np.zeros((1, 4)))


@SETTINGS
@given(data=st.data(), shape=nonempty_shapes, n=st.integers(1, 4), dts=st.lists(dtypes, min_size=4, max_size=4))
def test_concatenate_matches_numpy(data, shape, n, dts):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    xs = []
    for i in range(n):
        s = list(shape)
        s[axis] = data.draw(st.integers(1, 3))
        xs.append(data.draw(arrays(dts[i], tuple(s))))
    check(lambda *vs: flowml.concatenate(list(vs), axis=axis),
          lambda *vs: np.concatenate(vs, axis=axis), *xs)
    if axis == 0:
        check(lambda *vs: flowml.concatenate(vs), lambda *vs: np.concatenate(vs), *xs)


@SETTINGS
@given(data=st.data(), shape=shapes, n=st.integers(1, 4), dts=st.lists(dtypes, min_size=4, max_size=4))
def test_stack_matches_numpy(data, shape, n, dts):
    axis = data.draw(st.integers(-len(shape) - 1, len(shape)))
    xs = [data.draw(arrays(dts[i], shape)) for i in range(n)]
    check(lambda *vs: flowml.stack(list(vs), axis=axis), lambda *vs: np.stack(vs, axis=axis), *xs)
    check(lambda *vs: flowml.stack(list(vs)), lambda *vs: np.stack(vs), *xs)


def test_concatenate_with_weak_scalar_parts_and_mismatch():
    x = np.ones((2, 3), dtype=np.float32)
    with pytest.raises(FlowTypeError):
        run(lambda v: flowml.concatenate([v, v.T]), x)


# ----------------------------------------------------------------- indexing


@SETTINGS
@given(data=st.data(), shape=nonempty_shapes, dt=dtypes)
def test_basic_indexing_matches_numpy(data, shape, dt):
    """ints (negative too), slices with steps (negative too) and new axes."""
    x = data.draw(arrays(dt, shape))
    index = data.draw(hnp.basic_indices(shape, allow_newaxis=True, allow_ellipsis=False))
    check(lambda v: v[index], lambda v: v[index], x)


@SETTINGS
@given(data=st.data(), shape=nonempty_shapes)
def test_slices_with_steps_match_numpy(data, shape):
    x = data.draw(arrays(np.float64, shape))
    index = tuple(
        slice(data.draw(st.none() | st.integers(-d - 2, d + 2)), data.draw(st.none() | st.integers(-d - 2, d + 2)),
              data.draw(st.sampled_from([None, 1, 2, 3, -1, -2])))
        for d in shape)
    check(lambda v: v[index], lambda v: v[index], x)


def test_index_out_of_bounds_is_a_type_error():
    with pytest.raises(FlowTypeError):
        run(lambda v: v[3], np.zeros((3, 2)))
    with pytest.raises(FlowTypeError):
        run(lambda v: v[:, -3], np.zeros((3, 2)))


@SETTINGS
@given(data=st.data(), n=st.integers(1, 5), k=st.integers(1, 5))
def test_integer_array_indexing_rows_and_labels(data, n, k):
    """The cross-entropy idiom `p[arange(n), y]`."""
    p = data.draw(arrays(np.float64, (n, k)))
    y = data.draw(hnp.arrays(np.int64, (n,), elements=st.integers(0, k - 1)))
    check(lambda pv, yv: pv[flowml.arange(n), yv], lambda pv, yv: pv[np.arange(n), yv], p, y)
    check(lambda pv, yv: pv[flowml.arange(n), yv - k], lambda pv, yv: pv[np.arange(n), yv - k], p, y)


@SETTINGS
@given(data=st.data(), shape=hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=4),
       ishape=hnp.array_shapes(min_dims=0, max_dims=2, min_side=1, max_side=3))
def test_integer_array_indexing_matches_numpy(data, shape, ishape):
    x = data.draw(arrays(np.float32, shape))
    d0, d1 = shape[0], shape[1]
    i = data.draw(hnp.arrays(np.int64, ishape, elements=st.integers(-d0, d0 - 1)))  # repeats, negatives
    j = data.draw(hnp.arrays(np.int32, ishape, elements=st.integers(-d1, d1 - 1)))
    check(lambda v, iv: v[iv], lambda v, iv: v[iv], x, i)
    check(lambda v, jv: v[:, jv], lambda v, jv: v[:, jv], x, j)
    check(lambda v, iv, jv: v[iv, jv], lambda v, iv, jv: v[iv, jv], x, i, j)
    check(lambda v, jv: v[1 % d0, jv], lambda v, jv: v[1 % d0, jv], x, j)
    check(lambda v, iv: flowml.take(v, iv, axis=1 % d0 if d1 > d0 else 0),
          lambda v, iv: np.take(v, iv, axis=1 % d0 if d1 > d0 else 0), x, i)
    if len(shape) == 3:
        d2 = shape[2]
        m = data.draw(hnp.arrays(np.int64, ishape, elements=st.integers(0, d2 - 1)))
        # non-adjacent advanced indices put the index dims first, as in numpy
        check(lambda v, iv, mv: v[iv, :, mv], lambda v, iv, mv: v[iv, :, mv], x, i, m)
        check(lambda v, mv: v[::-1, 1:, mv], lambda v, mv: v[::-1, 1:, mv], x, m)
    # a constant index array (a list or a numpy array)
    check(lambda v: v[[0, -1, 0]], lambda v: v[[0, -1, 0]], x)
    check(lambda v: v[np.array([[0], [d0 - 1]])], lambda v: v[np.array([[0], [d0 - 1]])], x)


def test_float_index_array_is_a_type_error():
    with pytest.raises(FlowTypeError):
        run(lambda v, i: v[i], np.zeros(3), np.zeros(2))


# ----------------------------------------------------------------- constructors


@SETTINGS
@given(n=st.integers(0, 6), k=st.integers(1, 5), dt=st.sampled_from(["f64", "f32", "i64", "i32", "bool"]))
def test_onehot_matches_numpy(n, k, dt):
    y = np.arange(n, dtype=np.int64) % k
    np_dt = {"f64": np.float64, "f32": np.float32, "i64": np.int64, "i32": np.int32, "bool": np.bool_}[dt]
    check(lambda v: flowml.onehot(v, k, dtype=dt), lambda v: np.eye(k, dtype=np_dt)[v], y)
    check(lambda v: flowml.onehot(v, k), lambda v: np.eye(k)[v], y)
    y2 = y.astype(np.int32).reshape(-1, 1)
    check(lambda v: flowml.onehot(v, k), lambda v: np.eye(k)[v], y2)


def test_onehot_needs_integer_labels():
    with pytest.raises(FlowTypeError):
        run(lambda v: flowml.onehot(v, 3), np.zeros(2))


def _constant_check(build, want):
    flowml.reset_default_graph()
    out = build()
    got = flowml.function([], out)()
    assert_same(got, want, out)


@pytest.mark.parametrize("args", [(5,), (0,), (2, 7), (7, 2), (1, 10, 3), (10, 1, -3), (-4, 4, 2), (3, -5, -1)])
def test_arange_matches_numpy(args):
    _constant_check(lambda: flowml.arange(*args), np.arange(*args, dtype=np.int64))
    assert np.arange(*args).dtype == np.int64  # numpy's default int


def test_arange_step_zero_is_a_type_error():
    flowml.reset_default_graph()
    with pytest.raises(FlowTypeError):
        flowml.arange(0, 5, 0)


@pytest.mark.parametrize("shape", [(), (3,), (2, 3), (2, 1, 4), 4, [2, 2]], ids=str)
def test_zeros_ones_full_match_numpy(shape):
    _constant_check(lambda: flowml.zeros(shape), np.zeros(shape))
    _constant_check(lambda: flowml.ones(shape), np.ones(shape))
    _constant_check(lambda: flowml.zeros(shape, "i32"), np.zeros(shape, np.int32))
    _constant_check(lambda: flowml.ones(shape, "f32"), np.ones(shape, np.float32))
    _constant_check(lambda: flowml.ones(shape, np.int64), np.ones(shape, np.int64))
    _constant_check(lambda: flowml.full(shape, 2.5), np.full(shape, 2.5))
    _constant_check(lambda: flowml.full(shape, 3), np.full(shape, 3))
    _constant_check(lambda: flowml.full(shape, True), np.full(shape, True))
    _constant_check(lambda: flowml.full(shape, 7, "f32"), np.full(shape, 7, np.float32))
    _constant_check(lambda: flowml.full(shape, 1.5, "f32") * 2, np.full(shape, 3, np.float32))


def test_zeros_like_ones_like():
    x = np.arange(6, dtype=np.int32).reshape(2, 3)
    check(flowml.zeros_like, np.zeros_like, x)
    check(flowml.ones_like, np.ones_like, x)
    check(lambda v: flowml.zeros_like(v, "f32"), lambda v: np.zeros_like(v, np.float32), x)
    check(lambda v: flowml.ones_like(v, "f64"), lambda v: np.ones_like(v, np.float64), x)


def test_shape_entries_can_be_symbolic():
    """zeros/arange sized by an input's symbolic dim get their size at run time."""
    flowml.reset_default_graph()
    x = flowml.tensor("x", "f64[N, 3]")
    out = [flowml.zeros((x.shape[0], 3)) + x, flowml.arange(x.shape[0]), flowml.mean(x, axis=0)]
    f = flowml.function([x], out)
    xv = np.arange(12.0).reshape(4, 3)
    z, a, m = f(xv)
    np.testing.assert_array_equal(z, xv)
    np.testing.assert_array_equal(a, np.arange(4))
    np.testing.assert_allclose(m, xv.mean(axis=0))


def test_full_of_a_computed_value_in_flow():
    """full's value may be an expression that is not folded (1.0 / 0.0) or a value of the graph:
    it is broadcast (it was taken for a missing constant and gave NaN)."""
    m = flowml.loads("input x : f64[N]\nfn f(x) -> full((2,), (1.0 / 0.0), f32), full((3,), x[0] * 2)\n",
                     backend="llvm")
    inf, doubled = m.f(np.array([2.0, 3.0]))
    assert inf.dtype == np.float32 and np.all(np.isposinf(inf))
    np.testing.assert_array_equal(doubled, [4.0, 4.0, 4.0])
    with pytest.raises(flowml.FlowError, match="full's value must be a scalar"):
        flowml.loads("input x : f64[N]\nfn f(x) -> full((2,), x)\n")
    flowml.reset_default_graph()  # (and from Python: the library function itself broadcasts it)
    x = flowml.tensor("x", "f64[N]")
    np.testing.assert_array_equal(flowml.function([x], flowml.full((3,), x[0] * 2))(np.array([2.0, 3.0])), [4.0] * 3)
