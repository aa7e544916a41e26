"""Symbolic reverse-mode differentiation: every op's VJP against central finite differences
(through the scalar cost sum(out * r) for a fixed random r), second and third derivatives,
the size of gradient graphs, grad's errors, gradients of params / inputs / intermediate values,
and simultaneous updates."""

from __future__ import annotations

import operator
import time

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import scipy.special
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import flowml
from flowml.errors import FlowGradError
from flowml.ir import ops as P
from helpers import axis_args, build, check_grad, matmul_shapes, node_count, numeric_grad, projection

SETTINGS = settings(max_examples=25, deadline=None)

small_shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=3)
nonempty_shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=3)
two_shapes = hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, min_side=1, max_side=3)
three_shapes = hnp.mutually_broadcastable_shapes(num_shapes=3, min_dims=0, max_dims=3, min_side=1, max_side=3)


def floats(shape, lo=-2.0, hi=2.0, min_abs=0.0, subnormal=True):
    """f64 arrays with values in [lo, hi] and |v| >= min_abs (away from kinks at 0)."""
    if min_abs:
        el = st.one_of(st.floats(min_abs, hi), st.floats(lo, -min_abs))
    else:
        el = st.floats(lo, hi, **({} if subnormal else {"allow_subnormal": False}))
    return hnp.arrays(np.float64, shape, elements=el)


def grid(shape, offset=0.0, lo=-10, hi=10, step=0.2):
    """f64 arrays on the grid offset + step * k: values of two grids with different offsets
    never coincide, which keeps max/min/clip away from their kinks."""
    return hnp.arrays(np.int64, shape, elements=st.integers(lo, hi)).map(lambda k: offset + step * k)


def distinct(shape):
    """f64 arrays of distinct values at least 0.1 apart (unique maxima and minima)."""
    size = int(np.prod(shape))
    return st.permutations(range(-size, size, 2)).map(
        lambda p: np.asarray(p[:size], dtype=np.float64).reshape(shape) * 0.1 + 0.03)


# ----------------------------------------------------------------- elementwise VJPs


UNARY = {
    # name: (function, (lo, hi, min_abs) of a domain where it is smooth)
    "neg": (operator.neg, (-2, 2, 0)),
    "pos": (operator.pos, (-2, 2, 0)),
    "exp": (flowml.exp, (-2, 2, 0)),
    "log": (flowml.log, (0.2, 3, 0)),
    "log1p": (flowml.log1p, (-0.8, 3, 0)),
    "expm1": (flowml.expm1, (-2, 2, 0)),
    "sqrt": (flowml.sqrt, (0.2, 3, 0)),
    "abs": (flowml.abs, (-2, 2, 0.1)),
    "sign": (flowml.sign, (-2, 2, 0.1)),
    "sin": (flowml.sin, (-3, 3, 0)),
    "cos": (flowml.cos, (-3, 3, 0)),
    "tanh": (flowml.tanh, (-3, 3, 0)),
    "erf": (flowml.erf, (-2, 2, 0)),
    "sigmoid": (flowml.sigmoid, (-5, 5, 0)),
    "softplus": (flowml.softplus, (-5, 5, 0)),
    "relu": (flowml.relu, (-2, 2, 0.1)),
    "square": (lambda x: x * x, (-2, 2, 0)),
    "cube": (lambda x: x ** 3, (-2, 2, 0)),
    "pow_int_literal": (lambda x: x ** 2, (-2, 2, 0)),
    "pow_float_literal": (lambda x: x ** 2.5, (0.2, 2, 0)),
    "pow_negative_literal": (lambda x: x ** -1.5, (0.3, 2, 0)),
    "literal_pow": (lambda x: 2.0 ** x, (-2, 2, 0)),
    "literal_div": (lambda x: 1 / x, (-2, 2, 0.3)),
    "div_literal": (lambda x: x / 3, (-2, 2, 0)),
    "literal_sub": (lambda x: 1 - x, (-2, 2, 0)),
    "mod_literal": (lambda x: x % 1.5, (-2, 2, 0)),
    "clip": (lambda x: flowml.clip(x, -0.55, 0.75), (-2, 2, 0)),
    "cast_f64": (lambda x: flowml.cast(x, "f64"), (-2, 2, 0)),
    "ones_like_times": (lambda x: flowml.ones_like(x) * x, (-2, 2, 0)),
}


@pytest.mark.parametrize("name", list(UNARY))
@SETTINGS
@given(data=st.data(), shape=small_shapes)
def test_unary_vjps(name, data, shape):
    fn, (lo, hi, min_abs) = UNARY[name]
    x = data.draw(floats(shape, lo, hi, min_abs))
    if name == "mod_literal":
        assume(np.all(np.abs(x / 1.5 - np.round(x / 1.5)) > 1e-3))
    if name == "clip":
        assume(np.all(np.abs(x + 0.55) > 1e-3) and np.all(np.abs(x - 0.75) > 1e-3))
    check_grad(fn, x)


@pytest.mark.parametrize("name,fn", [("exp", flowml.exp), ("sin", flowml.sin), ("tanh", flowml.tanh),
                                     ("sigmoid", flowml.sigmoid), ("sqrt", flowml.sqrt)])
def test_unary_vjps_closed_forms(name, fn):
    x = np.linspace(0.1, 2.0, 7)
    (g,) = check_grad(fn, x)
    r = projection(x.shape)
    s = scipy.special.expit(x)
    closed = {"exp": np.exp(x), "sin": np.cos(x), "tanh": 1 - np.tanh(x) ** 2, "sigmoid": s * (1 - s),
              "sqrt": 0.5 / np.sqrt(x)}[name]
    np.testing.assert_allclose(g, r * closed, rtol=1e-12)


BINARY = {
    "add": (operator.add, (-2, 2, 0), (-2, 2, 0)),
    "sub": (operator.sub, (-2, 2, 0), (-2, 2, 0)),
    "mul": (operator.mul, (-2, 2, 0), (-2, 2, 0)),
    "div": (operator.truediv, (-2, 2, 0), (-2, 2, 0.5)),
    "pow": (operator.pow, (0.3, 2, 0), (-2, 2, 0)),
    "mod": (operator.mod, (-3, 3, 0), (-2, 2, 0.5)),
    "floordiv": (operator.floordiv, (-3, 3, 0), (-2, 2, 0.5)),
    "mixed": (lambda a, b: flowml.tanh(a) * b + flowml.exp(b) / (1 + a * a), (-2, 2, 0), (-1, 1, 0)),
}


@pytest.mark.parametrize("name", list(BINARY))
@SETTINGS
@given(data=st.data(), shapes=two_shapes)
def test_binary_vjps_with_broadcasting(name, data, shapes):
    fn, ra, rb = BINARY[name]
    a = data.draw(floats(shapes.input_shapes[0], *ra))
    b = data.draw(floats(shapes.input_shapes[1], *rb))
    if name in ("mod", "floordiv"):
        q = a / b
        assume(np.all(np.abs(q - np.round(q)) > 1e-3))  # away from the jumps
    grads = check_grad(fn, a, b)
    if name == "floordiv":
        assert all(np.all(g == 0) for g in grads)


@pytest.mark.parametrize("fn", [flowml.maximum, flowml.minimum], ids=["maximum", "minimum"])
@SETTINGS
@given(data=st.data(), shapes=two_shapes)
def test_maximum_minimum_vjps(fn, data, shapes):
    a = data.draw(grid(shapes.input_shapes[0], 0.0))
    b = data.draw(grid(shapes.input_shapes[1], 0.1))  # a != b everywhere
    check_grad(fn, a, b)
    check_grad(lambda x: fn(x, 0.05), a)
    check_grad(lambda x: fn(0.05, x), a)


def test_maximum_minimum_split_ties():
    a = np.array([1.0, 2.0, 3.0])
    b = np.array([1.0, 1.0, 4.0])
    r = projection(a.shape)
    for fn, wa, wb in [(flowml.maximum, [0.5, 1, 0], [0.5, 0, 1]), (flowml.minimum, [0.5, 0, 1], [0.5, 1, 0])]:
        xs, out = build(fn, [a, b])
        grads = flowml.grad(flowml.sum(out * r), xs)
        ga, gb = flowml.function(xs, grads)(a, b)
        np.testing.assert_allclose(ga, r * wa)
        np.testing.assert_allclose(gb, r * wb)


@SETTINGS
@given(data=st.data(), shapes=three_shapes)
def test_clip_vjp_with_array_bounds(data, shapes):
    x = data.draw(grid(shapes.input_shapes[0], 0.0))
    lo = data.draw(grid(shapes.input_shapes[1], 0.05, -10, 0))
    hi = data.draw(grid(shapes.input_shapes[2], 0.15, 0, 10))
    check_grad(flowml.clip, x, lo, hi)


@SETTINGS
@given(data=st.data(), shapes=three_shapes)
def test_where_vjp(data, shapes):
    c = data.draw(hnp.arrays(np.bool_, shapes.input_shapes[0]))
    a = data.draw(floats(shapes.input_shapes[1]))
    b = data.draw(floats(shapes.input_shapes[2]))
    check_grad(flowml.where, c, a, b)
    check_grad(lambda cv, av: flowml.where(cv, av * av, 0.5), c, a)
    a2 = data.draw(grid(shapes.input_shapes[1], 0.0))
    b2 = data.draw(grid(shapes.input_shapes[2], 0.1))  # a2 != b2: away from the switch
    check_grad(lambda av, bv: flowml.where(av > bv, av, bv * 2), a2, b2)


@pytest.mark.parametrize("cond", [True, False])
def test_ifelse_vjp(cond):
    a = np.array([0.5, -1.0, 2.0])
    b = np.array(1.5)
    c = np.array(cond)
    (ga, gb) = check_grad(lambda cv, av, bv: flowml.ifelse(cv, av * bv, bv * bv), c, a, b, wrt=[1, 2])
    r = projection(a.shape)
    if cond:
        np.testing.assert_allclose(ga, r * b)
    else:
        np.testing.assert_array_equal(ga, 0)
        np.testing.assert_allclose(gb, np.sum(r) * 2 * b)


def test_cast_vjp_dtypes():
    """The gradient of an f32 value is f32, even through a cast to f64 and back."""
    x = np.array([0.5, -1.25, 3.0], dtype=np.float32)
    r = projection(x.shape)
    xs, out = build(lambda v: flowml.cast(v, "f64") * r, [x])
    (g,) = flowml.grad(flowml.sum(out), xs)
    assert g.dtype == np.float32
    got = flowml.function(xs, g)(x)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, r.astype(np.float32))

    x64 = x.astype(np.float64)
    xs, out = build(lambda v: flowml.cast(flowml.cast(v, "f32"), "f64") * r, [x64])
    (g,) = flowml.grad(flowml.sum(out), xs)
    got = flowml.function(xs, g)(x64)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, r.astype(np.float32).astype(np.float64))

    # f32 arithmetic with weak literals: the gradient stays f32
    xs, out = build(lambda v: flowml.sum(flowml.tanh(v * 0.5) * 2 + v ** 2), [x])
    (g,) = flowml.grad(out, xs)
    got = flowml.function(xs, g)(x)
    assert g.dtype == np.float32 and got.dtype == np.float32
    np.testing.assert_allclose(got, (1 - np.tanh(x * 0.5) ** 2) + 2 * x, rtol=1e-6)


# ----------------------------------------------------------------- reductions


REDUCTIONS = {"sum": flowml.sum, "mean": flowml.mean, "max": flowml.max, "min": flowml.min,
              "prod": flowml.prod, "logsumexp": flowml.logsumexp}


@pytest.mark.parametrize("name", list(REDUCTIONS))
@SETTINGS
@given(data=st.data(), shape=small_shapes, keepdims=st.booleans())
def test_reduction_vjps(name, data, shape, keepdims):
    fn = REDUCTIONS[name]
    # prod's derivative divides the product by each entry (exact for normal floats, see
    # _prod_others); a subnormal entry has too few bits for that: a known limitation.
    x = data.draw(distinct(shape) if name in ("max", "min") else floats(shape, subnormal=name != "prod"))
    axis = data.draw(axis_args(len(shape)))
    check_grad(lambda v: fn(v, axis=axis, keepdims=keepdims), x)
    check_grad(lambda v: fn(v * v, axis=axis, keepdims=keepdims) * 2, x)


def test_max_vjp_splits_ties():
    x = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]])
    xs, out = build(lambda v: flowml.sum(flowml.max(v, axis=1) * np.array([1.0, 6.0])), [x])
    (g,) = flowml.grad(out, xs)
    np.testing.assert_allclose(flowml.function(xs, g)(x), [[0, 0.5, 0.5], [2, 2, 2]])


@pytest.mark.parametrize("x", [[2.0, 0.0, 3.0, -1.0], [0.0, 0.0, 3.0, 1.5], [0.0, 0.0, 0.0, 0.0],
                               [1.5, -2.0, 0.5, 4.0]])
def test_prod_vjp_with_zeros(x):
    x = np.array(x)
    (g,) = check_grad(flowml.prod, x)
    r = projection(())
    others = np.array([np.prod(np.delete(x, i)) for i in range(x.size)])
    np.testing.assert_allclose(g, r * others)
    check_grad(lambda v: flowml.prod(v.reshape((2, 2)), axis=0), x)


@SETTINGS
@given(data=st.data(), shape=nonempty_shapes)
def test_softmax_vjps(data, shape):
    x = data.draw(floats(shape, -3, 3))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    check_grad(lambda v: flowml.softmax(v, axis=axis), x)
    check_grad(lambda v: flowml.log_softmax(v, axis=axis), x)
    check_grad(flowml.softmax, x)
    check_grad(flowml.log_softmax, x)


# ----------------------------------------------------------------- linear algebra


@SETTINGS
@given(data=st.data(), ab=matmul_shapes(max_side=3))
def test_matmul_vjp(data, ab):
    """1-D, 2-D and batched operands, the batch dims broadcasting."""
    a = data.draw(floats(ab[0]))
    b = data.draw(floats(ab[1]))
    check_grad(operator.matmul, a, b)


@pytest.mark.parametrize("sa,sb", [((3,), (2, 3, 4)), ((3,), (2, 1, 3, 4)), ((2, 4, 3), (3,)), ((3,), (3,)),
                                   ((3,), (3, 4)), ((4, 3), (3,)), ((1, 2, 3), (4, 3, 2)), ((2, 3), (5, 3, 2))])
def test_matmul_vjp_vector_and_batched_operands(sa, sb):
    rng = np.random.default_rng(3)
    check_grad(operator.matmul, rng.standard_normal(sa), rng.standard_normal(sb))


@SETTINGS
@given(data=st.data(), ab=matmul_shapes(max_batch_dims=0, max_side=3))
def test_dot_and_outer_vjps(data, ab):
    a = data.draw(floats(ab[0]))
    b = data.draw(floats(ab[1]))
    check_grad(flowml.dot, a, b)
    check_grad(flowml.outer, a, b)


def test_matmul_vjp_with_integer_operand():
    a = np.array([[1, 2, 3], [0, -1, 2]], dtype=np.int64)
    b = np.random.default_rng(0).standard_normal((3, 2))
    (gb,) = check_grad(operator.matmul, a, b, wrt=[1])
    np.testing.assert_allclose(gb, a.T @ projection((2, 2)))


# ----------------------------------------------------------------- shape ops


@SETTINGS
@given(data=st.data(), shape=small_shapes)
def test_transpose_vjps(data, shape):
    x = data.draw(floats(shape))
    axes = data.draw(st.permutations(range(len(shape))))
    check_grad(lambda v: flowml.transpose(v, axes) * 1.0, x)
    check_grad(lambda v: v.T * 1.0, x)


@SETTINGS
@given(data=st.data(), shape=small_shapes)
def test_reshape_vjp(data, shape):
    x = data.draw(floats(shape))
    size = int(np.prod(shape))
    check_grad(lambda v: flowml.reshape(v, (-1,)) * np.arange(size), x)
    check_grad(lambda v: flowml.reshape(v, (1, -1, 1)) ** 2, x)


@SETTINGS
@given(data=st.data(), shape=small_shapes)
def test_broadcast_to_vjp(data, shape):
    x = data.draw(floats(shape))
    s = data.draw(hnp.mutually_broadcastable_shapes(num_shapes=1, base_shape=shape, min_side=1, max_side=3))
    check_grad(lambda v: flowml.broadcast_to(v, s.result_shape), x)
    check_grad(lambda v: flowml.broadcast_to(v, (2,) + s.result_shape), x)


@SETTINGS
@given(data=st.data(), shape=nonempty_shapes, n=st.integers(1, 3))
def test_concatenate_and_stack_vjps(data, shape, n):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    xs = []
    for _ in range(n):
        s = list(shape)
        s[axis] = data.draw(st.integers(1, 3))
        xs.append(data.draw(floats(tuple(s))))
    check_grad(lambda *vs: flowml.concatenate([v * v for v in vs], axis=axis), *xs)
    same = [data.draw(floats(shape)) for _ in range(n)]
    stack_axis = data.draw(st.integers(-len(shape) - 1, len(shape)))
    check_grad(lambda *vs: flowml.stack(vs, axis=stack_axis), *same)
    # one operand used twice
    check_grad(lambda v: flowml.concatenate([v, flowml.tanh(v), v], axis=axis), xs[0])


@SETTINGS
@given(data=st.data(), shape=nonempty_shapes)
def test_basic_indexing_vjp(data, shape):
    x = data.draw(floats(shape))
    index = data.draw(hnp.basic_indices(shape, allow_newaxis=True, allow_ellipsis=False))
    check_grad(lambda v: v[index] * 1.0, x)
    check_grad(lambda v: flowml.sum(v[index] ** 2) + v[index], x)


@SETTINGS
@given(data=st.data(), shape=hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=3),
       ishape=hnp.array_shapes(min_dims=0, max_dims=2, min_side=1, max_side=4))
def test_integer_array_indexing_vjp(data, shape, ishape):
    """A gather's VJP is a scatter-add: repeated indices accumulate."""
    x = data.draw(floats(shape))
    d0, d1 = shape[0], shape[1]
    i = data.draw(hnp.arrays(np.int64, ishape, elements=st.integers(-d0, d0 - 1)))
    j = data.draw(hnp.arrays(np.int64, ishape, elements=st.integers(-d1, d1 - 1)))
    check_grad(lambda v, iv: v[iv], x, i)
    check_grad(lambda v, iv, jv: v[iv, jv], x, i, j)
    check_grad(lambda v, jv: v[:, jv] * 2, x, j)
    check_grad(lambda v, iv: flowml.take(v, iv, axis=0), x, i)
    check_grad(lambda v: v[[0, 0, -1]], x)


def test_scatter_add_accumulates_repeats():
    x = np.array([1.0, 2.0, 3.0])
    idx = np.array([0, 2, 0, 0])
    xs, out = build(lambda v, i: flowml.sum(v[i]), [x, idx])
    (g,) = flowml.grad(out, xs[:1])
    np.testing.assert_array_equal(flowml.function(xs, g)(x, idx), [3.0, 0.0, 1.0])


@SETTINGS
@given(data=st.data(), n=st.integers(1, 4), k=st.integers(2, 4))
def test_cross_entropy_vjp(data, n, k):
    """The classifier idiom: -mean(log_softmax(z)[arange(n), y]) and its onehot twin."""
    z = data.draw(floats((n, k), -3, 3))
    y = data.draw(hnp.arrays(np.int64, (n,), elements=st.integers(0, k - 1)))
    (g1,) = check_grad(lambda zv, yv: -flowml.mean(flowml.log_softmax(zv)[flowml.arange(n), yv]), z, y)
    (g2,) = check_grad(lambda zv, yv: -flowml.mean(flowml.sum(flowml.log_softmax(zv) * flowml.onehot(yv, k), axis=1)),
                       z, y)
    np.testing.assert_allclose(g1, g2, rtol=1e-10, atol=1e-12)
    sm = np.exp(z - scipy.special.logsumexp(z, axis=1, keepdims=True))
    closed = (sm - np.eye(k)[y]) / n * projection(())
    np.testing.assert_allclose(g1, closed, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------- higher derivatives


def test_tanh_second_and_third_derivatives_closed_form():
    x = np.linspace(-2.5, 2.5, 11)
    xs, out = build(lambda v: flowml.sum(flowml.tanh(v)), [x])
    (v,) = xs
    g1 = flowml.grad(out, v)
    g2 = flowml.grad(flowml.sum(g1), v)
    g3 = flowml.grad(flowml.sum(g2), v)
    d1, d2, d3 = flowml.function(xs, [g1, g2, g3])(x)
    t = np.tanh(x)
    np.testing.assert_allclose(d1, 1 - t ** 2, rtol=1e-12)
    np.testing.assert_allclose(d2, -2 * t * (1 - t ** 2), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(d3, (1 - t ** 2) * (6 * t ** 2 - 2), rtol=1e-11, atol=1e-15)
    # and against finite differences of the lower derivative
    f2 = flowml.function(xs, flowml.sum(g2 * projection(x.shape)))
    np.testing.assert_allclose(d3 * projection(x.shape), numeric_grad(f2, [x], 0), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name,fn,d1,d2", [
    ("exp*sin", lambda v: flowml.exp(v) * flowml.sin(v),
     lambda x: np.exp(x) * (np.sin(x) + np.cos(x)), lambda x: 2 * np.exp(x) * np.cos(x)),
    ("x**3", lambda v: v ** 3, lambda x: 3 * x ** 2, lambda x: 6 * x),
    ("sigmoid", flowml.sigmoid,
     lambda x: scipy.special.expit(x) * (1 - scipy.special.expit(x)),
     lambda x: (lambda s: s * (1 - s) * (1 - 2 * s))(scipy.special.expit(x))),
])
def test_second_derivatives_closed_form(name, fn, d1, d2):
    x = np.linspace(-2.0, 2.0, 9)
    xs, out = build(lambda v: flowml.sum(fn(v)), [x])
    (v,) = xs
    g1 = flowml.grad(out, v)
    g2 = flowml.grad(flowml.sum(g1), v)
    got1, got2 = flowml.function(xs, [g1, g2])(x)
    np.testing.assert_allclose(got1, d1(x), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(got2, d2(x), rtol=1e-11, atol=1e-13)


def test_third_derivative_of_cube_is_constant():
    x = np.array([-1.5, 0.0, 2.0])
    xs, out = build(lambda v: flowml.sum(v ** 3), [x])
    (v,) = xs
    g3 = flowml.grad(flowml.sum(flowml.grad(flowml.sum(flowml.grad(out, v)), v)), v)
    np.testing.assert_allclose(flowml.function(xs, g3)(x), [6.0, 6.0, 6.0])


def check_hvp(fn, *arrays, eps=1e-5, rtol=1e-5, atol=1e-6):
    """The gradient of <grad(sum(fn * r)), v> (a Hessian-vector product, built by
    differentiating the gradient graph) matches central differences of the gradient along v."""
    arrays = [np.asarray(a, dtype=np.float64) for a in arrays]
    xs, out = build(fn, arrays)
    cost = flowml.sum(out * projection(out.shape))
    grads = flowml.grad(cost, xs)
    vs = [projection(a.shape, seed=10 + i) for i, a in enumerate(arrays)]
    inner = flowml.sum(grads[0] * vs[0])
    for g, v in zip(grads[1:], vs[1:]):
        inner = inner + flowml.sum(g * v)
    hvp = flowml.grad(inner, xs, disconnected="zero")
    f_grads = flowml.function(xs, grads)
    got = flowml.function(xs, hvp)(*arrays)
    plus = f_grads(*[a + eps * v for a, v in zip(arrays, vs)])
    minus = f_grads(*[a - eps * v for a, v in zip(arrays, vs)])
    scale = max(1.0, max(float(np.max(np.abs(g))) for g in got))
    for h, p, m in zip(got, plus, minus):
        np.testing.assert_allclose(h, (p - m) / (2 * eps), rtol=rtol, atol=atol * scale)


HVP_CASES = {
    "tanh": (flowml.tanh, [(3, 2)], (-2, 2)),
    "exp*sin": (lambda v: flowml.exp(v) * flowml.sin(v), [(4,)], (-2, 2)),
    "x**3": (lambda v: v ** 3, [(2, 3)], (-2, 2)),
    "sigmoid": (flowml.sigmoid, [(5,)], (-3, 3)),
    "softplus": (flowml.softplus, [(5,)], (-3, 3)),
    "log_sqrt": (lambda v: flowml.log(v) * flowml.sqrt(v), [(4,)], (0.5, 2)),
    "erf": (flowml.erf, [(4,)], (-2, 2)),
    "div": (lambda a, b: a / b, [(2, 3), (3,)], (0.5, 2)),
    "pow": (lambda a, b: a ** b, [(2, 3), (2, 1)], (0.5, 2)),
    "softmax": (lambda v: flowml.softmax(v, axis=0), [(3, 2)], (-2, 2)),
    "log_softmax": (flowml.log_softmax, [(2, 4)], (-2, 2)),
    "logsumexp": (lambda v: flowml.logsumexp(v, axis=1) ** 2, [(2, 3)], (-2, 2)),
    "prod": (lambda v: flowml.prod(v, axis=0), [(3, 2)], (0.5, 2)),
    "max": (lambda v: flowml.max(v * v, axis=1), [(2, 3)], (0.5, 2)),
    "mean_var": (lambda v: flowml.mean((v - flowml.mean(v, axis=0)) ** 2, axis=0), [(4, 2)], (-2, 2)),
    "matmul_mlp": (lambda x, w1, w2: flowml.tanh(x @ w1) @ w2, [(4, 3), (3, 5), (5, 2)], (-1, 1)),
    "batched_matmul": (lambda a, b: flowml.sigmoid(a @ b), [(2, 2, 3), (3,)], (-1, 1)),
    "index": (lambda v: flowml.exp(v[np.array([0, 2, 0])]) * v[1:, ::-1].sum(), [(3, 2)], (-1, 1)),
    "concatenate": (lambda a, b: flowml.concatenate([a * b, flowml.sin(a)], axis=0) ** 2, [(2, 2), (1, 2)],
                    (-1, 1)),
    "where_maximum": (lambda a, b: flowml.where(a > 0, a * b, flowml.maximum(a, b) ** 2), [(3,), (3,)],
                      (-2, 2)),
}


@pytest.mark.parametrize("name", list(HVP_CASES))
def test_hessian_vector_products(name):
    fn, shape_list, (lo, hi) = HVP_CASES[name]
    rng = np.random.default_rng(7)
    arrays = [rng.uniform(lo, hi, size=s) for s in shape_list]
    if name == "where_maximum":
        arrays = [np.array([0.7, -0.4, 1.3]), np.array([0.2, 0.3, -1.1])]
    check_hvp(fn, *arrays)


def test_second_derivative_of_matmul_function_closed_form():
    """A matmul-based function: the Hessian of 0.5 * ||X w - y||^2 is X^T X."""
    rng = np.random.default_rng(1)
    X = rng.standard_normal((5, 3))
    y = rng.standard_normal(5)
    w = rng.standard_normal(3)
    xs, out = build(lambda wv: 0.5 * flowml.sum((X @ wv - y) ** 2), [w])
    (wv,) = xs
    g = flowml.grad(out, wv)
    H = np.stack([flowml.function(xs, flowml.grad(g[i], wv))(w) for i in range(3)])
    np.testing.assert_allclose(H, X.T @ X, rtol=1e-12)


# ----------------------------------------------------------------- scale


def test_gradient_of_a_long_chain_is_linear():
    """x -> tanh -> *1.01 -> tanh ... (400 ops): the gradient graph has O(400) nodes and the
    right value."""
    flowml.reset_default_graph()
    x = flowml.tensor("x", "f64[3]")
    h = x
    for _ in range(200):
        h = flowml.tanh(h) * 1.01
    cost = flowml.sum(h)
    forward = node_count(cost)
    start = time.perf_counter()
    (g,) = flowml.grad(cost, [x])
    elapsed = time.perf_counter() - start
    assert node_count(cost) <= 10 * forward, (forward, node_count(cost))
    assert elapsed < 10
    xv = np.array([0.3, -0.8, 1.5])
    got = flowml.function([x], g)(xv)
    want = np.ones(3)
    hv = xv.copy()
    for _ in range(200):
        t = np.tanh(hv)
        want = want * (1 - t ** 2) * 1.01
        hv = t * 1.01
    np.testing.assert_allclose(got, want, rtol=1e-9)


def test_gradient_of_a_graph_with_heavy_sharing_is_linear(monkeypatch):
    """x_{k+1} = sin(x_k) * cos(x_k) + x_k / 2 (each x_k used three times: 2^100 paths): each node
    is differentiated once, the gradient graph is O(n) and its value is right."""
    calls: dict[int, int] = {}
    original = P.Op.vjp

    def counting_vjp(self, g, out, *operands, **attrs):
        calls[out.id] = calls.get(out.id, 0) + 1
        return original(self, g, out, *operands, **attrs)

    monkeypatch.setattr(P.Op, "vjp", counting_vjp)
    flowml.reset_default_graph()
    x = flowml.tensor("x", "f64[2]")
    h = x
    for _ in range(100):
        h = flowml.sin(h) * flowml.cos(h) + h / 2
    cost = flowml.sum(h * h)
    forward = node_count(cost)
    (g,) = flowml.grad(cost, [x])
    assert calls and max(calls.values()) == 1
    assert len(calls) <= forward
    assert node_count(cost) <= 10 * forward, (forward, node_count(cost))
    xv = np.array([0.4, -1.1])
    got = flowml.function([x], g)(xv)
    d = np.ones(2)
    hv = xv.copy()
    for _ in range(100):
        d = d * (np.cos(2 * hv) + 0.5)
        hv = np.sin(hv) * np.cos(hv) + hv / 2
    np.testing.assert_allclose(got, 2 * hv * d, rtol=1e-8, atol=1e-300)


def test_gradient_of_a_wide_sum_of_shared_terms_is_linear():
    """Many uses of one value (fan-out 150) and of each other: cotangents accumulate, one
    VJP per node."""
    flowml.reset_default_graph()
    x = flowml.tensor("x", "f64[]")
    terms = [x]
    for k in range(1, 150):
        terms.append(terms[k - 1] * 0.99 + x * (k % 3))
    cost = terms[-1] + flowml.sum(flowml.stack(terms[::7]))
    forward = node_count(cost)
    (g,) = flowml.grad(cost, [x])
    assert node_count(cost) <= 10 * forward
    f = flowml.function([x], cost)
    got = flowml.function([x], g)(np.array(0.7))
    np.testing.assert_allclose(got, numeric_grad(f, [np.array(0.7)], 0), rtol=1e-6)


def test_grad_of_grad_of_a_chain_stays_linear():
    flowml.reset_default_graph()
    x = flowml.tensor("x", "f64[]")
    h = x
    for _ in range(100):
        h = flowml.sin(h) * 1.1
    forward = node_count(h)
    g1 = flowml.grad(h, x)
    g2 = flowml.grad(g1, x)
    assert node_count(g2) <= 60 * forward
    f1 = flowml.function([x], g1)
    got = flowml.function([x], g2)(np.array(0.3))
    np.testing.assert_allclose(got, numeric_grad(f1, [np.array(0.3)], 0, eps=1e-5), rtol=1e-5)


# ----------------------------------------------------------------- grad errors


def test_non_scalar_cost_is_an_error():
    flowml.reset_default_graph()
    x = flowml.tensor("x", "f64[3]")
    with pytest.raises(FlowGradError, match="scalar"):
        flowml.grad(x * 2, x)


def test_integer_cost_is_an_error():
    flowml.reset_default_graph()
    x = flowml.tensor("x", "i64[3]")
    with pytest.raises(FlowGradError, match="float"):
        flowml.grad(flowml.sum(x), x)


def test_integer_wrt_is_an_error():
    flowml.reset_default_graph()
    x = flowml.tensor("x", "f64[3]")
    i = flowml.tensor("i", "i64[3]")
    cost = flowml.sum(x * i)
    with pytest.raises(FlowGradError, match="'i'.*only float values have gradients"):
        flowml.grad(cost, i)
    with pytest.raises(FlowGradError, match="'i'"):
        flowml.grad(cost, [x, i])
    b = flowml.tensor("b", "bool[3]")
    with pytest.raises(FlowGradError, match="'b'"):
        flowml.grad(flowml.sum(flowml.where(b, x, 0)), b)


def test_disconnected_wrt_is_an_error_or_zero():
    flowml.reset_default_graph()
    x = flowml.tensor("x", "f64[3]")
    w = flowml.param("w", np.ones((2, 2), dtype=np.float32))
    cost = flowml.sum(x ** 2)
    with pytest.raises(FlowGradError, match="does not depend on param 'w'"):
        flowml.grad(cost, w)
    with pytest.raises(FlowGradError, match="does not depend"):
        flowml.grad(cost, [x, w])
    gx, gw = flowml.grad(cost, [x, w], disconnected="zero")
    assert gw.type.shape == (2, 2) and gw.dtype == np.float32
    xv = np.array([1.0, -2.0, 0.5])
    got_x, got_w = flowml.function([x], [gx, gw])(xv)
    np.testing.assert_allclose(got_x, 2 * xv)
    np.testing.assert_array_equal(got_w, np.zeros((2, 2), np.float32))
    assert got_w.dtype == np.float32
    with pytest.raises(FlowGradError, match="disconnected must be"):
        flowml.grad(cost, x, disconnected="ignore")


def test_grad_needs_something_to_differentiate_by():
    flowml.reset_default_graph()
    x = flowml.tensor("x", "f64[3]")
    with pytest.raises(FlowGradError):
        flowml.grad(flowml.sum(x), [])


@pytest.mark.parametrize("opname,build_cost", [
    ("argmax", lambda x: flowml.sum(flowml.cast(flowml.argmax(x, axis=1), "f64"))),
    ("argmin", lambda x: flowml.sum(flowml.cast(flowml.argmin(x), "f64"))),
    ("gt", lambda x: flowml.sum(flowml.where(x > 0, 1.0, -1.0))),
    ("eq", lambda x: flowml.sum(flowml.cast(x == 1.0, "f64"))),
    ("le", lambda x: flowml.mean(flowml.cast(x <= 2.0, "f64") * 3.0)),
    ("floordiv", None),
])
def test_dependence_only_through_non_differentiable_op_is_an_error(opname, build_cost):
    flowml.reset_default_graph()
    x = flowml.tensor("x", "f64[2, 3]")
    if build_cost is None:
        # floor division has a (zero) derivative: that is not an error
        cost = flowml.sum(x // 2)
        g = flowml.grad(cost, x)
        np.testing.assert_array_equal(flowml.function([x], g)(np.ones((2, 3))), 0)
        return
    cost = build_cost(x)
    with pytest.raises(FlowGradError, match=rf"only through {opname}\b") as info:
        flowml.grad(cost, x)
    assert "input 'x'" in str(info.value)
    g = flowml.grad(cost, x, disconnected="zero")
    np.testing.assert_array_equal(flowml.function([x], g)(np.ones((2, 3))), np.zeros((2, 3)))


def test_non_differentiable_branch_next_to_a_differentiable_one_is_fine():
    """A path through argmax next to a differentiable path: the gradient is the latter's."""
    flowml.reset_default_graph()
    x = flowml.tensor("x", "f64[2, 3]")
    cost = flowml.sum(x * flowml.onehot(flowml.argmax(x, axis=1), 3))  # picks each row's max
    g = flowml.grad(cost, x)
    xv = np.array([[1.0, 5.0, 2.0], [3.0, -1.0, 0.0]])
    np.testing.assert_array_equal(flowml.function([x], g)(xv), [[0, 1, 0], [1, 0, 0]])


# ----------------------------------------------------------------- what to differentiate by


def test_gradients_with_respect_to_params():
    flowml.reset_default_graph()
    rng = np.random.default_rng(0)
    X = rng.standard_normal((6, 3))
    y = rng.standard_normal(6)
    x = flowml.tensor("x", "f64[N, 3]")
    t = flowml.tensor("t", "f64[N]")
    w = flowml.param("w", np.array([0.1, -0.2, 0.3]))
    b = flowml.param("b", np.array(0.5))
    cost = flowml.mean((x @ w + b - t) ** 2)
    gw, gb = flowml.grad(cost, [w, b])
    f = flowml.function([x, t], [cost, gw, gb], updates={w: w - 0.1 * gw, b: b - 0.1 * gb})
    wv, bv = np.array([0.1, -0.2, 0.3]), 0.5
    c0, got_w, got_b = f(X, y)
    resid = X @ wv + bv - y
    np.testing.assert_allclose(got_w, 2 / 6 * X.T @ resid, rtol=1e-12)
    np.testing.assert_allclose(got_b, 2 / 6 * resid.sum(), rtol=1e-12)
    np.testing.assert_allclose(flowml.get_value(w), wv - 0.1 * got_w, rtol=1e-12)
    c1, _, _ = f(X, y)
    assert c1 < c0  # the update was a descent step


def test_gradients_with_respect_to_inputs_and_params_together():
    flowml.reset_default_graph()
    x = flowml.tensor("x", "f64[2, 3]")
    w = flowml.param("w", np.array([[1.0, -1.0], [0.5, 2.0], [0.0, 1.0]]))
    cost = flowml.sum(flowml.tanh(x @ w) * np.array([[1.0, 2.0], [3.0, 4.0]]))
    gx, gw = flowml.grad(cost, [x, w])
    f_cost = flowml.function([x], cost)
    xv = np.array([[0.1, 0.2, -0.3], [0.5, -0.4, 0.2]])
    got_x, got_w = flowml.function([x], [gx, gw])(xv)
    np.testing.assert_allclose(got_x, numeric_grad(f_cost, [xv], 0), rtol=1e-6, atol=1e-9)
    wv = flowml.get_value(w)

    def cost_of_w(wvalue):
        flowml.set_value(w, wvalue)
        return f_cost(xv)

    np.testing.assert_allclose(got_w, numeric_grad(cost_of_w, [wv], 0), rtol=1e-6, atol=1e-9)


def test_gradients_with_respect_to_intermediate_values():
    flowml.reset_default_graph()
    x = flowml.tensor("x", "f64[3]")
    h = flowml.tanh(x)  # an intermediate value
    cost = flowml.sum(h * h * x)  # h used twice, x used directly and through h
    gh, = flowml.grad(cost, [h])
    gh2, gx = flowml.grad(cost, [h, x])
    gx_only = flowml.grad(cost, x)
    xv = np.array([0.3, -1.2, 0.8])
    t = np.tanh(xv)
    got_h, got_h2, got_x, got_x_only = flowml.function([x], [gh, gh2, gx, gx_only])(xv)
    np.testing.assert_allclose(got_h, 2 * t * xv, rtol=1e-12)  # partial: x held fixed
    np.testing.assert_allclose(got_h2, got_h, rtol=1e-12)
    total = t * t + 2 * t * xv * (1 - t * t)  # the total derivative, through h and directly
    np.testing.assert_allclose(got_x, total, rtol=1e-12)
    np.testing.assert_allclose(got_x_only, total, rtol=1e-12)


def test_gradient_of_the_cost_with_respect_to_itself():
    flowml.reset_default_graph()
    x = flowml.tensor("x", "f64[3]")
    cost = flowml.sum(x * 2)
    assert float(flowml.function([x], flowml.grad(cost, cost))(np.ones(3))) == 1.0
    s = flowml.tensor("s", "f32[]")
    (g,) = flowml.grad(s, [s])
    out = flowml.function([s], g)(np.float32(3))
    assert out.dtype == np.float32 and out == 1


def test_gradient_of_an_intermediate_cost():
    """grad of a value that is not a function output: only its ancestors matter."""
    flowml.reset_default_graph()
    x = flowml.tensor("x", "f64[2]")
    inner = flowml.sum(flowml.exp(x))
    flowml.sum(flowml.sin(x)) * inner  # a user of inner that is not part of the cost
    g = flowml.grad(inner, x)
    xv = np.array([0.2, -0.7])
    np.testing.assert_allclose(flowml.function([x], g)(xv), np.exp(xv))


# ----------------------------------------------------------------- updates


def test_simultaneous_updates_swap_params():
    flowml.reset_default_graph()
    a = flowml.param("a", np.array([1.0, 2.0]))
    b = flowml.param("b", np.array([3.0, 4.0]))
    swap = flowml.function([], updates={a: b, b: a})
    swap()
    np.testing.assert_array_equal(flowml.get_value(a), [3.0, 4.0])
    np.testing.assert_array_equal(flowml.get_value(b), [1.0, 2.0])
    swap()
    np.testing.assert_array_equal(flowml.get_value(a), [1.0, 2.0])
    np.testing.assert_array_equal(flowml.get_value(b), [3.0, 4.0])


def test_simultaneous_updates_read_old_values():
    flowml.reset_default_graph()
    a = flowml.param("a", np.array(2.0))
    b = flowml.param("b", np.array(5.0))
    step = flowml.function([], [a, b], updates={a: a + b, b: a - b})
    old_a, old_b = step()
    assert (old_a, old_b) == (2.0, 5.0)  # outputs are computed before the updates
    assert float(flowml.get_value(a)) == 7.0
    assert float(flowml.get_value(b)) == -3.0  # the old a, not the new one
    step()
    assert float(flowml.get_value(a)) == 4.0
    assert float(flowml.get_value(b)) == 10.0


def test_simultaneous_updates_with_a_gradient():
    """Both params step with gradients of the old values (not a Gauss-Seidel sweep)."""
    flowml.reset_default_graph()
    a = flowml.param("a", np.array(1.0))
    b = flowml.param("b", np.array(2.0))
    cost = (a * b - 1) ** 2
    ga, gb = flowml.grad(cost, [a, b])
    step = flowml.function([], cost, updates=[(a, a - 0.1 * ga), (b, b - 0.1 * gb)])
    step()
    ga0, gb0 = 2 * (1 * 2 - 1) * 2, 2 * (1 * 2 - 1) * 1
    np.testing.assert_allclose(flowml.get_value(a), 1 - 0.1 * ga0)
    np.testing.assert_allclose(flowml.get_value(b), 2 - 0.1 * gb0)


def test_rules_build_nothing_for_operands_not_differentiated():
    """A VJP rule only builds the cotangents that are needed: differentiating x ** 3 by x adds
    no log (the exponent's derivative), and x * c adds nothing for the constant c."""
    flowml.reset_default_graph()
    x = flowml.tensor("x", "f64[3]")
    cost = flowml.sum(x ** 3 * np.array([1.0, 2.0, 3.0]))
    before = set(x.graph.nodes())
    flowml.grad(cost, x)
    added = [x.graph.op(n).name for n in sorted(set(x.graph.nodes()) - before)]
    assert "log" not in added, added
    assert len(added) <= 12, added


def test_gradients_with_symbolic_dims():
    """Broadcasting, reductions, means and gathers over a batch dim N known only at run time."""
    flowml.reset_default_graph()
    x = flowml.tensor("x", "f64[N, 3]")
    y = flowml.tensor("y", "i64[N]")
    w = flowml.param("w", np.array([[0.5, -1.0], [0.25, 0.75], [-0.5, 0.1]]))
    b = flowml.param("b", np.array([[0.1, -0.2]]))
    z = flowml.tanh(x @ w + b)  # f64[N, 2]; b broadcasts over N
    logp = flowml.log_softmax(z)
    n = x.shape[0]
    cost = -flowml.mean(logp[flowml.arange(n), y]) + flowml.mean(flowml.max(z, axis=0) ** 2) + flowml.mean(x * x)
    gx, gw, gb = flowml.grad(cost, [x, w, b])
    assert gx.type == x.type and gw.type == w.type and gb.type == b.type
    f_cost = flowml.function([x, y], cost)
    f_grad = flowml.function([x, y], [gx, gw, gb])
    rng = np.random.default_rng(5)
    for size in (1, 4):
        xv = rng.standard_normal((size, 3))
        yv = rng.integers(0, 2, size=size)
        got_x, got_w, got_b = f_grad(xv, yv)
        np.testing.assert_allclose(got_x, numeric_grad(f_cost, [xv, yv], 0), rtol=1e-5, atol=1e-8)
        w0, b0 = flowml.get_value(w), flowml.get_value(b)

        def cost_of(param, value):
            flowml.set_value(param, value)
            try:
                return f_cost(xv, yv)
            finally:
                flowml.set_value(w, w0)
                flowml.set_value(b, b0)

        np.testing.assert_allclose(got_w, numeric_grad(lambda v: cost_of(w, v), [w0], 0), rtol=1e-5, atol=1e-8)
        np.testing.assert_allclose(got_b, numeric_grad(lambda v: cost_of(b, v), [b0], 0), rtol=1e-5, atol=1e-8)
