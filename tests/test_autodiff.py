"""Automatic differentiation beyond `grad`: forward mode (`rop`), reverse mode with cotangents
(`lop`), `jacobian`, `hessian`, `hessian_vector`, `stop_gradient`, the disconnected policy,
`verify_grad` and `flowml gradcheck`.

Every differentiable op's JVP is checked against 5-point central differences in float64, and
its JVP and VJP against each other with the dot-product test ⟨u, J·v⟩ = ⟨Jᵀ·u, v⟩, on
hypothesis-chosen shapes (broadcasting, size-1 dims); random expression graphs get the same
checks plus grad and Hessian-vector products; higher derivatives are compared with closed
forms in every mode combination; and the size of derivative graphs is bounded.

Graphs are built in private `Graph`s and evaluated with the reference backend (see
tests/autodiff_helpers.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import scipy.special
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import flowml
from flowml.errors import FlowGradError
from flowml.ir import lib as L
from flowml.ir import ops as P
from flowml.ir.graph import Graph
from flowml.ir.types import Sym, TensorType
from flowml.passes import rop as rop_module
from flowml.passes.grad import grad
from flowml.passes.rop import hessian, hessian_vector, jacobian, lop, rop
from autodiff_helpers import (Case, add_input, assert_close, build, check_dot_product, check_grad, check_hvp,
                              check_jvp, check_lop, fd_jvp, node_count, values)

SETTINGS = settings(max_examples=15, deadline=None)
GRAPH_SETTINGS = settings(max_examples=20, deadline=None)

small_shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=3)
nonempty_shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=3)
two_shapes = hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, min_side=1, max_side=3)
three_shapes = hnp.mutually_broadcastable_shapes(num_shapes=3, min_dims=0, max_dims=3, min_side=1, max_side=3)


def floats(shape, lo=-2.0, hi=2.0, min_abs=0.0, dtype=np.float64):
    """Arrays with values in [lo, hi] and |v| >= min_abs (away from a kink at 0)."""
    if min_abs:
        el = st.one_of(st.floats(min_abs, hi), st.floats(lo, -min_abs))
    else:
        el = st.floats(lo, hi)
    return hnp.arrays(dtype, shape, elements=el)


def grid(shape, offset=0.0, lo=-10, hi=10, step=0.2):
    """offset + step * k: arrays on two grids with different offsets never tie, so maximum,
    minimum and clip stay away from their kinks."""
    return hnp.arrays(np.int64, shape, elements=st.integers(lo, hi)).map(lambda k: offset + step * k)


def distinct(shape):
    """Distinct values at least 0.2 apart (unique maxima and minima)."""
    size = int(np.prod(shape))
    return st.permutations(range(-size, size, 2)).map(
        lambda p: np.asarray(p[:size], dtype=np.float64).reshape(shape) * 0.1 + 0.03)


@st.composite
def axis_args(draw, ndim):
    kind = draw(st.sampled_from(["none", "int", "tuple"] if ndim else ["none", "tuple"]))
    if kind == "none":
        return None
    if kind == "int":
        return draw(st.integers(-ndim, ndim - 1))
    return draw(hnp.valid_tuple_axes(ndim))


@st.composite
def matmul_shapes(draw, max_batch_dims=2, max_side=3):
    """Operand shapes for matmul: 1-D, 2-D or batched (batch dims broadcasting)."""
    n, k, m = (draw(st.integers(1, max_side)) for _ in range(3))
    batch = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=max_batch_dims,
                                                   min_side=1, max_side=3))
    a_vec, b_vec = draw(st.booleans()), draw(st.booleans())
    a = (k,) if a_vec else batch.input_shapes[0] + (n, k)
    b = (k,) if b_vec else batch.input_shapes[1] + (k, m)
    return a, b


# ----------------------------------------------------------------- op cases
#
# Each entry draws a `Case`: a function of Vars and the arrays to call it on, with its inputs
# kept away from the op's non-differentiable points (by more than the 5-point stencil's reach,
# 2h·|v| = 2e-3).


def unary_case(fn, lo, hi, min_abs=0.0):
    @st.composite
    def draw_case(draw):
        shape = draw(small_shapes)
        return Case(fn, [draw(floats(shape, lo, hi, min_abs))])
    return draw_case()


def binary_case(fn, ra, rb, check=None):
    @st.composite
    def draw_case(draw):
        shapes = draw(two_shapes)
        a = draw(floats(shapes.input_shapes[0], *ra))
        b = draw(floats(shapes.input_shapes[1], *rb))
        if check is not None:
            assume(check(a, b))
        return Case(fn, [a, b])
    return draw_case()


def grid_pair_case(fn):
    @st.composite
    def draw_case(draw):
        shapes = draw(two_shapes)
        a = draw(grid(shapes.input_shapes[0], 0.0))
        b = draw(grid(shapes.input_shapes[1], 0.1))
        return Case(fn, [a, b])
    return draw_case()


def _mod_away_from_jumps(a, b):
    q = a / b
    return bool(np.all(np.abs(q - np.round(q)) > 0.05))


@st.composite
def where_case(draw):
    shapes = draw(three_shapes)
    c = draw(hnp.arrays(np.bool_, shapes.input_shapes[0]))
    a = draw(floats(shapes.input_shapes[1]))
    b = draw(floats(shapes.input_shapes[2]))
    return Case(lambda cv, av, bv: L.where(cv, av * av, L.sin(bv)), [c, a, b])


@st.composite
def ifelse_case(draw):
    shapes = draw(two_shapes)
    c = np.array(draw(st.booleans()))
    a = draw(floats(shapes.input_shapes[0]))
    b = draw(floats(shapes.input_shapes[1]))
    return Case(lambda cv, av, bv: L.ifelse(cv, av * bv, L.tanh(bv)), [c, a, b])


@st.composite
def cast_case(draw):
    """f32 -> f64 cast next to an f64 value (the f32 input is not perturbed: a finite
    difference in f32 is too coarse; `test_cast_f32_to_f64_tangent_is_exact` covers it)."""
    shapes = draw(two_shapes)
    a = draw(floats(shapes.input_shapes[0], dtype=np.float32))
    b = draw(floats(shapes.input_shapes[1]))
    return Case(lambda av, bv: L.cast(av, "f64") * L.tanh(bv) + L.cast(L.cast(bv, "f64"), "f64"), [a, b], wrt=[1])


def reduction_case(fn, values_strategy=None):
    @st.composite
    def draw_case(draw):
        shape = draw(small_shapes)
        x = draw(values_strategy(shape) if values_strategy else floats(shape))
        axis = draw(axis_args(len(shape)))
        keepdims = draw(st.booleans())
        return Case(lambda v: fn(v, axis=axis, keepdims=keepdims), [x], label=f"axis={axis}, keepdims={keepdims}")
    return draw_case()


def with_zeros(shape):
    """Values in [-2, 2], often exactly 0 (prod's derivative has a special case for zeros)."""
    return hnp.arrays(np.float64, shape, elements=st.one_of(st.just(0.0), st.floats(-2, 2)))


def softmax_case(fn):
    @st.composite
    def draw_case(draw):
        shape = draw(nonempty_shapes)
        axis = draw(st.integers(-len(shape), len(shape) - 1))
        return Case(lambda v: fn(v, axis=axis), [draw(floats(shape, -3, 3))])
    return draw_case()


@st.composite
def matmul_case(draw):
    sa, sb = draw(matmul_shapes())
    return Case(L.matmul, [draw(floats(sa)), draw(floats(sb))], label=f"{sa} @ {sb}")


@st.composite
def transpose_case(draw):
    shape = draw(small_shapes)
    axes = draw(st.permutations(range(len(shape))))
    return Case(lambda v: L.transpose(v, axes) * 1.0, [draw(floats(shape))])


@st.composite
def reshape_case(draw):
    shape = draw(small_shapes)
    size = int(np.prod(shape))
    target = draw(st.sampled_from([(-1,), (1, -1, 1), tuple(reversed(shape)) or (1,), (size, 1)]))
    return Case(lambda v: L.reshape(v, target) * 1.0, [draw(floats(shape))], label=f"{shape} -> {target}")


@st.composite
def broadcast_to_case(draw):
    shape = draw(small_shapes)
    s = draw(hnp.mutually_broadcastable_shapes(num_shapes=1, base_shape=shape, min_side=1, max_side=3))
    lead = draw(st.sampled_from([(), (2,)]))
    return Case(lambda v: L.broadcast_to(v, lead + s.result_shape), [draw(floats(shape))])


@st.composite
def concatenate_case(draw):
    shape = draw(nonempty_shapes)
    n = draw(st.integers(1, 3))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    xs = []
    for _ in range(n):
        s = list(shape)
        s[axis] = draw(st.integers(1, 3))
        xs.append(draw(floats(tuple(s))))
    return Case(lambda *vs: L.concatenate([vs[0]] + [v * v for v in vs[1:]] + [vs[0]], axis=axis), xs)


@st.composite
def stack_case(draw):
    shape = draw(small_shapes)
    n = draw(st.integers(1, 3))
    axis = draw(st.integers(-len(shape) - 1, len(shape)))
    return Case(lambda *vs: L.stack(vs, axis=axis), [draw(floats(shape)) for _ in range(n)])


@st.composite
def slicing_case(draw):
    shape = draw(nonempty_shapes)
    index = draw(hnp.basic_indices(shape, allow_newaxis=True, allow_ellipsis=False))
    return Case(lambda v: v[index] * 1.0, [draw(floats(shape))], label=f"x[{index}]")


@st.composite
def gather_case(draw):
    shape = draw(hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=3))
    ishape = draw(hnp.array_shapes(min_dims=0, max_dims=2, min_side=1, max_side=4))
    x = draw(floats(shape))
    d0, d1 = shape[0], shape[1]
    i = draw(hnp.arrays(np.int64, ishape, elements=st.integers(-d0, d0 - 1)))
    j = draw(hnp.arrays(np.int64, ishape, elements=st.integers(-d1, d1 - 1)))
    form = draw(st.sampled_from(["x[i]", "x[i, j]", "x[:, j]", "take"]))
    fn = {"x[i]": lambda v, iv, jv: v[iv],
          "x[i, j]": lambda v, iv, jv: v[iv, jv],
          "x[:, j]": lambda v, iv, jv: v[:, jv] * 2.0,
          "take": lambda v, iv, jv: L.take(v, iv, axis=0)}[form]
    return Case(fn, [x, i, j], label=form)


@st.composite
def index_add_case(draw):
    """The scatter-add index_add, made as the VJP (lop) of a gather: linear in the cotangent
    g; the indexed array x only gives the shape (its derivative is zero)."""
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=3))
    ishape = draw(hnp.array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=4))
    d0 = shape[0]
    i = draw(hnp.arrays(np.int64, ishape, elements=st.integers(-d0, d0 - 1)))  # repeats accumulate
    x = draw(floats(shape))
    g = draw(floats(x[i].shape))

    def fn(gv, xv, iv):
        out = lop(xv[iv], xv, gv)
        assert out.op is P.index_add
        return out
    return Case(fn, [g, x, i])


@st.composite
def clip_case(draw):
    shapes = draw(three_shapes)
    x = draw(grid(shapes.input_shapes[0], 0.0))
    lo = draw(grid(shapes.input_shapes[1], 0.05, -10, 0))
    hi = draw(grid(shapes.input_shapes[2], 0.15, 0, 10))
    return Case(L.clip, [x, lo, hi])


OP_CASES = {
    # elementwise, one operand
    "neg": unary_case(L.negative, -2, 2),
    "exp": unary_case(L.exp, -2, 2),
    "log": unary_case(L.log, 0.2, 3),
    "log1p": unary_case(L.log1p, -0.8, 3),
    "expm1": unary_case(L.expm1, -2, 2),
    "sqrt": unary_case(L.sqrt, 0.2, 3),
    "abs": unary_case(L.abs, -2, 2, 0.1),
    "sin": unary_case(L.sin, -3, 3),
    "cos": unary_case(L.cos, -3, 3),
    "tanh": unary_case(L.tanh, -3, 3),
    "erf": unary_case(L.erf, -2, 2),
    "sigmoid": unary_case(L.sigmoid, -5, 5),
    "softplus": unary_case(L.softplus, -5, 5),
    "relu": unary_case(L.relu, -2, 2, 0.1),
    "sign": unary_case(L.sign, -2, 2, 0.1),  # zero derivative
    "pow_int_literal": unary_case(lambda v: v ** 3, -2, 2),
    "literal_pow": unary_case(lambda v: 2.0 ** v, -2, 2),
    # elementwise, two or three operands, broadcasting
    "add": binary_case(L.add, (-2, 2), (-2, 2)),
    "sub": binary_case(L.subtract, (-2, 2), (-2, 2)),
    "mul": binary_case(L.multiply, (-2, 2), (-2, 2)),
    "div": binary_case(L.divide, (-2, 2), (-2, 2, 0.5)),
    "mod": binary_case(L.mod, (-3, 3), (-2, 2, 0.5), _mod_away_from_jumps),
    "floordiv": binary_case(L.floor_div, (-3, 3), (-2, 2, 0.5), _mod_away_from_jumps),  # zero derivative
    "pow": binary_case(L.power, (0.3, 2), (-2, 2)),
    "maximum": grid_pair_case(L.maximum),
    "minimum": grid_pair_case(L.minimum),
    "where": where_case(),
    "cast_f32_f64": cast_case(),
    "ifelse": ifelse_case(),
    "clip": clip_case(),
    # reductions
    "sum": reduction_case(L.sum),
    "mean": reduction_case(L.mean),
    "prod": reduction_case(L.prod, with_zeros),
    "max": reduction_case(L.max, distinct),
    "min": reduction_case(L.min, distinct),
    "logsumexp": reduction_case(L.logsumexp),
    "softmax": softmax_case(L.softmax),
    "log_softmax": softmax_case(L.log_softmax),
    # linear algebra and shapes
    "matmul": matmul_case(),
    "transpose": transpose_case(),
    "reshape": reshape_case(),
    "broadcast_to": broadcast_to_case(),
    "concatenate": concatenate_case(),
    "stack": stack_case(),
    "slicing": slicing_case(),
    "integer_array_indexing": gather_case(),
    "index_add": index_add_case(),
}


def test_op_cases_cover_every_differentiable_primitive():
    """Every primitive with a derivative is exercised by some case above (by building each case
    once and collecting the ops it uses), so a new op can't slip through untested."""
    seen = set()
    for name, strategy in OP_CASES.items():
        @settings(max_examples=3, deadline=None, database=None)
        @given(strategy)
        def collect(case):
            graph, _, _, _ = build(case)
            seen.update(graph.op(n).name for n in graph.nodes())
        collect()
    differentiable = {name for name, op in P.OPS.items() if op.has_vjp or getattr(op, "stops_gradient", False)}
    # concat_part (the VJP of concatenate) is checked by the dot-product test of concatenate;
    # zeros_like has a zero derivative; stop_gradient has its own tests below.
    missing = differentiable - seen - {"concat_part", "zeros_like", "stop_gradient"}
    assert not missing, f"ops without a JVP test: {sorted(missing)}"


@pytest.mark.parametrize("name", list(OP_CASES))
@SETTINGS
@given(data=st.data())
def test_op_jvp_matches_finite_differences(name, data):
    check_jvp(data.draw(OP_CASES[name]))


@pytest.mark.parametrize("name", list(OP_CASES))
@SETTINGS
@given(data=st.data())
def test_op_dot_product(name, data):
    """⟨u, J·v⟩ = ⟨Jᵀ·u, v⟩: each op's JVP (rop) and VJP (lop) are transposes of each other."""
    check_dot_product(data.draw(OP_CASES[name]))


def test_cast_f32_to_f64_tangent_is_exact():
    """The tangent of cast(x32, f64) is the f32 tangent converted (exactly), typed f64, and the
    cotangent of an f64 value cast from f32 comes back as f32."""
    g = Graph()
    x = L.input(g, "x", TensorType(np.dtype(np.float32), (2, 3)))
    v = L.input(g, "v", TensorType(np.dtype(np.float32), (2, 3)))
    u = L.input(g, "u", TensorType(np.dtype(np.float64), (2, 3)))
    w = np.linspace(-1, 1, 6).reshape(2, 3)
    y = L.cast(x, "f64") * w
    jv = rop(y, x, v)
    jtu = lop(y, x, u)
    assert jv.dtype == np.float64 and jtu.dtype == np.float32
    rng = np.random.default_rng(0)
    xv, vv = rng.standard_normal((2, 3)).astype(np.float32), rng.standard_normal((2, 3)).astype(np.float32)
    uv = rng.standard_normal((2, 3))
    got_jv, got_jtu = values(g, [jv, jtu], {"x": xv, "v": vv, "u": uv})
    np.testing.assert_array_equal(got_jv, vv.astype(np.float64) * w)
    assert got_jtu.dtype == np.float32
    np.testing.assert_array_equal(got_jtu, (uv * w).astype(np.float32))
    # and a finite difference in f32 agrees to f32 accuracy
    want = fd_jvp(lambda fd: values(g, y, fd), {"x": xv}, {"x": vv}, h=1e-2)
    np.testing.assert_allclose(got_jv, want, rtol=1e-3, atol=1e-4)


# ----------------------------------------------------------------- random expression graphs
#
# A program is a list of (op, i, j, k): op applied to pool values i and j (mod the pool size),
# k choosing an axis or a constant. Every value's shape broadcasts to the inputs' common shape
# R, so any two values combine; the output is the sum of the values nobody used (so it depends
# on every input), broadcast to R. The ops are smooth (no kinks or jumps near the random points)
# and bounded enough that finite differences stay accurate.


def _axis(a, k):
    return k % a.ndim if a.ndim else None


def _const(graph, shape, k, lo=-1.0, hi=1.0):
    return L.constant(np.random.default_rng(k).uniform(lo, hi, size=shape), graph)


def _common(a, b):
    shape = np.broadcast_shapes(a.type.shape, b.type.shape)
    return L.broadcast_to(a, shape), L.broadcast_to(b, shape)


def _concat_shift(a, b, k):
    a, b = _common(a, b)
    if a.ndim == 0:
        return a * b
    axis = k % a.ndim
    n = a.type.shape[axis]
    both = L.concatenate([a, L.sin(b)], axis=axis)
    index = (slice(None),) * axis + (slice(k % (n + 1), k % (n + 1) + n),)
    return both[index]  # a's tail and sin(b)'s head


def _gather(a, k):
    if a.ndim == 0:
        return a * 1.5
    n = a.type.shape[0]
    idx = np.random.default_rng(k).integers(-n, n, size=n)  # with repeats
    return a[L.constant(idx, a.graph)]


def _roundtrip_transpose(a, k):
    if a.ndim < 2:
        return L.tanh(a)
    perm = tuple(np.random.default_rng(k).permutation(a.ndim))
    inv = tuple(int(i) for i in np.argsort(perm))
    return L.transpose(L.tanh(L.transpose(a, perm)), inv)


def _roundtrip_reshape(a, k):
    flat = L.reshape(a, (-1,))
    return L.reshape(flat * _const(a.graph, flat.type.shape, k), a.type.shape)


POOL = {
    "tanh": lambda a, b, k: L.tanh(a),
    "sin": lambda a, b, k: L.sin(a),
    "cos": lambda a, b, k: L.cos(a),
    "sigmoid": lambda a, b, k: L.sigmoid(a),
    "erf": lambda a, b, k: L.erf(a),
    "softplus": lambda a, b, k: L.softplus(a),
    "exp_tanh": lambda a, b, k: L.exp(L.tanh(a)),
    "log1p_sq": lambda a, b, k: L.log1p(a * a),
    "log_sqrt": lambda a, b, k: L.log(L.sqrt(1 + a * a)),
    "expm1_sin": lambda a, b, k: L.expm1(L.sin(a)),
    "square": lambda a, b, k: a ** 2,
    "neg": lambda a, b, k: -a,
    "add": lambda a, b, k: a + b,
    "sub": lambda a, b, k: a - b,
    "mul": lambda a, b, k: a * b,
    "div": lambda a, b, k: a / (1 + b * b),
    "pow": lambda a, b, k: (L.sigmoid(a) + 0.5) ** L.tanh(b),
    "sum": lambda a, b, k: L.sum(a, axis=_axis(a, k), keepdims=True),
    "mean": lambda a, b, k: L.mean(a, axis=_axis(a, k), keepdims=True) * b,
    "prod": lambda a, b, k: L.prod(a, axis=_axis(a, k), keepdims=True),
    "logsumexp": lambda a, b, k: L.logsumexp(a, axis=_axis(a, k), keepdims=True),
    "softmax": lambda a, b, k: L.softmax(a, axis=_axis(a, k)) if a.ndim else a,
    "log_softmax": lambda a, b, k: L.log_softmax(a, axis=_axis(a, k)) if a.ndim else a,
    "matmul": lambda a, b, k: (a @ _const(a.graph, (a.type.shape[-1],) * 2, k)) if a.ndim else a * 0.7,
    "matvec": lambda a, b, k: L.expand_dims(a @ _const(a.graph, a.type.shape[-1:], k), -1) if a.ndim else a,
    "where": lambda a, b, k: L.where(L.constant(np.random.default_rng(k).random(a.type.shape) < 0.5, a.graph),
                                     a, L.tanh(b)),
    "ifelse": lambda a, b, k: L.ifelse(L.constant(bool(k % 2), a.graph), a * b, L.cos(b)),
    "concat_shift": lambda a, b, k: _concat_shift(a, b, k),
    "stack_sum": lambda a, b, k: L.sum(L.stack(list(_common(a, L.sin(b))), axis=0), axis=0),
    "gather": lambda a, b, k: _gather(a, k),
    "transpose": lambda a, b, k: _roundtrip_transpose(a, k),
    "reshape": lambda a, b, k: _roundtrip_reshape(a, k),
}


@st.composite
def random_graphs(draw, max_ops=8):
    n_inputs = draw(st.integers(1, 3))
    shapes = draw(hnp.mutually_broadcastable_shapes(num_shapes=n_inputs, min_dims=0, max_dims=3,
                                                    min_side=1, max_side=3))
    arrays = [draw(floats(s, -1.5, 1.5)) for s in shapes.input_shapes]
    program = draw(st.lists(st.tuples(st.sampled_from(sorted(POOL)), st.integers(0, 99), st.integers(0, 99),
                                      st.integers(0, 99)), min_size=1, max_size=max_ops))
    result_shape = shapes.result_shape

    def fn(*xs):
        pool, used = list(xs), set()
        for op, i, j, k in program:
            i, j = i % len(pool), j % len(pool)
            used.update((i, j))
            pool.append(POOL[op](pool[i], pool[j], k))
        out = None
        for n, v in enumerate(pool):
            if n not in used:
                out = v if out is None else out + v
        return L.broadcast_to(out, result_shape)
    return Case(fn, arrays, label=" -> ".join(op for op, *_ in program))


@GRAPH_SETTINGS
@given(case=random_graphs())
def test_random_graph_rop(case):
    check_jvp(case, rtol=1e-6, atol=1e-8)


@GRAPH_SETTINGS
@given(case=random_graphs())
def test_random_graph_lop(case):
    check_lop(case, rtol=1e-6, atol=1e-8)


@GRAPH_SETTINGS
@given(case=random_graphs())
def test_random_graph_grad(case):
    check_grad(case, rtol=1e-6, atol=1e-8)


@GRAPH_SETTINGS
@given(case=random_graphs(max_ops=6))
def test_random_graph_hessian_vector(case):
    check_hvp(case, rtol=1e-6, atol=1e-8)


@GRAPH_SETTINGS
@given(case=random_graphs())
def test_random_graph_dot_product(case):
    check_dot_product(case)
