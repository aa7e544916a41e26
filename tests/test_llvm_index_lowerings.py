"""The LLVM backend's native indexing and shape lowerings (issue 12) against the reference
backend: gathers over random numpy index specs (slices with negative steps, ints, broadcast
index arrays, new axes), their scatter-add gradients (bit for bit: duplicates add up in element
order), located errors for bad indices, onehot, concatenate and its gradient along every axis,
and the constructors with symbolic dims — none of them a host step."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flowml
from flowml.errors import FlowRuntimeError
from flowml.ir import lib as L

NP = {"f32": np.float32, "f64": np.float64, "i64": np.int64, "i32": np.int32, "bool": np.bool_}


def _type(dt, shape):
    return f"{dt}[{', '.join(map(str, shape))}]"


def _values(rng, dt, shape):
    if dt == "bool":
        return np.asarray(rng.rand(*shape) < 0.5)
    if dt in ("i64", "i32"):
        return np.asarray(rng.randint(-50, 50, shape)).astype(NP[dt])
    return np.asarray(rng.randn(*shape)).astype(NP[dt])


def _native(fn):
    """fn's executable runs every node natively (no host step at all)."""
    steps = fn._executable.host_steps()
    assert not steps, f"host steps: {steps}"


def _same(got, want, what):
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape, (what, got.dtype, got.shape, want.dtype, want.shape)
    np.testing.assert_array_equal(got, want, err_msg=what)


def _both(inputs, outputs):
    return (flowml.function(inputs, outputs, backend="llvm"), flowml.function(inputs, outputs, backend="reference"))


# ---------------------------------------------------------------- random index specs

@st.composite
def index_cases(draw):
    """(x shape, value dtype, index items: ('slice', start, stop, step) | ('int', i) |
    ('arr', shape, values, dtype) | ('new',))."""
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.integers(1, 5)) for _ in range(ndim))
    dt = draw(st.sampled_from(["f32", "f64", "i64", "bool"]))
    used = draw(st.integers(1, ndim))
    bshape = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=2)))
    items = []
    for axis in range(used):
        d = shape[axis]
        kind = draw(st.sampled_from(["slice", "slice", "int", "arr"]))
        if kind == "slice":
            bound = st.one_of(st.none(), st.integers(-d - 2, d + 2))
            items.append(("slice", draw(bound), draw(bound), draw(st.sampled_from([None, 1, 2, 3, -1, -2]))))
        elif kind == "int":
            items.append(("int", draw(st.integers(-d, d - 1))))
        else:
            ashape = tuple(b if draw(st.booleans()) else 1 for b in bshape)[draw(st.integers(0, len(bshape) - 1)):]
            values = draw(st.lists(st.integers(-d, d - 1), min_size=int(np.prod(ashape)),
                                   max_size=int(np.prod(ashape))))
            items.append(("arr", ashape, np.array(values).reshape(ashape), draw(st.sampled_from(["i64", "i32"]))))
    if not any(it[0] == "arr" for it in items):
        for _ in range(draw(st.integers(0, 2))):
            items.insert(draw(st.integers(0, len(items))), ("new",))
    return shape, dt, items


def _build(shape, dt, items):
    """x[items] (and, for floats, the gradient of sum(x[items] * w)) as llvm and reference fns."""
    flowml.reset_default_graph()
    x = flowml.tensor("x", _type(dt, shape))
    arrays, index, args = [], [], []
    for it in items:
        if it[0] == "slice":
            index.append(slice(*it[1:]))
        elif it[0] == "int":
            index.append(it[1])
        elif it[0] == "new":
            index.append(None)
        else:
            a = flowml.tensor(f"i{len(arrays)}", _type(it[3], it[1]))
            arrays.append(a)
            index.append(a)
            args.append(it[2].astype(NP[it[3]]))
    y = x[tuple(index)]
    inputs, outputs = [x, *arrays], [y]
    if dt in ("f32", "f64"):
        w = flowml.tensor("w", _type(dt, y.type.shape))
        inputs.append(w)
        outputs.append(flowml.grad(flowml.sum(y * w), x))
    return _both(inputs, outputs), index, args, y.type.shape


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(index_cases(), st.integers(0, 2**31 - 1))
def test_random_index_specs_and_their_gradients(case, seed):
    shape, dt, items = case
    (llvm, ref), index, args, out_shape = _build(shape, dt, items)
    rng = np.random.RandomState(seed)
    x = _values(rng, dt, shape)
    call = [x, *args]
    if dt in ("f32", "f64"):
        call.append(_values(rng, dt, out_shape))
    got, want = llvm(*call), ref(*call)
    np_index = tuple(args.pop(0) if isinstance(i, flowml.Var) else i for i in index) if args else \
        tuple(i for i in index)
    _same(got[0], want[0], f"x{index} on {shape}")
    assert got[0].shape == x[np_index].shape
    if dt in ("f32", "f64"):
        _same(got[1], want[1], f"the gradient through x{index} on {shape}")
    _native(llvm)
    flowml.reset_default_graph()


# ---------------------------------------------------------------- scatter-add, errors

SRC = """\
input x : f64[N, K]
input v : f32[N, K, M]
input i : i64[P]
input j : i32[Q, R]
input b : bool[N, K]
fn gather(x, v, i, j, b) -> x[i], x[:, i], x[j], x[i, -1], v[i, 1:, ::-1], v[j, :, j], v[-1, j], b[i], x[::-1, i]
fn scatter(x, v, i, j) -> grad(sum(x[i] * x[i]), x), grad(sum(x[j, ::-1]), x), grad(sum(v[-1, j] * v[-1, j]), v), grad(sum(v[:, j, j[::-1]] * 3), v), grad(sum(x[j, -1] * x[j, -1]), x)
fn last(x) -> x[-3, 1:], x[2]
fn hot(i, j) -> onehot(i, 4), onehot(j, 3, f32), onehot(i, 4, i64), onehot(j, 3, bool), onehot(i, 4, i32)
"""


@pytest.fixture(scope="module")
def models():
    return flowml.loads(SRC, backend="llvm", file="idx.flow"), flowml.loads(SRC, backend="reference", file="idx.flow")


def _args(rng, n, k, m, p, q, r, lo=None):
    top = min(n, k, m)  # (every index array indexes axes of each size)
    lo = -top if lo is None else lo
    return dict(x=rng.randn(n, k), v=rng.randn(n, k, m).astype(np.float32),
                i=rng.randint(lo, top, p).astype(np.int64),
                j=rng.randint(lo, top, (q, r)).astype(np.int32), b=rng.rand(n, k) < 0.5)


@pytest.mark.parametrize("dims", [(4, 3, 2, 7, 2, 3), (1, 1, 1, 5, 1, 1), (9, 6, 5, 40, 3, 4), (3, 3, 1, 0, 0, 2)])
def test_gathers_and_scatter_adds_with_duplicates(models, dims):
    llvm, ref = models
    rng = np.random.RandomState(sum(dims))
    a = _args(rng, *dims)
    for name, keys in (("gather", "xvijb"), ("scatter", "xvij")):
        fn = getattr(llvm, name)
        args = [a[k] for k in keys]
        for o, (g, w) in enumerate(zip(fn(*args), getattr(ref, name)(*args))):
            _same(g, w, f"{name} output {o}, dims {dims}")
        _native(fn)
    # numpy's own scatter-add: repeated indices add up
    want = np.zeros_like(a["x"])
    np.add.at(want, a["i"], 2 * a["x"][a["i"]])
    np.testing.assert_allclose(llvm.scatter(a["x"], a["v"], a["i"], a["j"])[0], want, rtol=1e-15)


def test_scatter_add_duplicates_accumulate_in_element_order(models):
    """Many repeats of one row: the sum is numpy's add.at order to the bit, on every call."""
    llvm, ref = models
    rng = np.random.RandomState(3)
    a = _args(rng, 3, 3, 2, 1000, 10, 10)
    a["i"][:] = rng.choice([0, -3, 2], 1000)
    args = (a["x"] * 1e3 ** rng.randn(3, 3), a["v"], a["i"], a["j"])
    first = llvm.scatter(*args)
    for g, w in zip(first, ref.scatter(*args)):
        _same(g, w, "scatter-add of repeated indices")
    for g, h in zip(first, llvm.scatter(*args)):
        _same(g, h, "a second call")


def _message(call):
    with pytest.raises(FlowRuntimeError) as e:
        call()
    return str(e.value)


def test_out_of_range_indices_are_located_errors_like_the_reference(models):
    llvm, ref = models
    rng = np.random.RandomState(0)
    a = _args(rng, 4, 3, 2, 5, 2, 3)
    cases = []
    for name, value, where in (("i", 3, 2), ("i", -4, 4), ("j", 7, (1, 0)), ("j", -5, (0, 2))):
        bad = {k: v.copy() for k, v in a.items()}
        bad[name][where] = value
        bad[name].flat[-1] = 99  # a later bad entry: the first one is named
        cases.append(bad)
    for bad in cases:
        for fname, keys in (("gather", "xvijb"), ("scatter", "xvij"), ("hot", "ij")):
            args = [bad[k] for k in keys]
            got = _message(lambda: getattr(llvm, fname)(*args))
            want = _message(lambda: getattr(ref, fname)(*args))
            assert got == want and "out of range" in got and "idx.flow:" in got, (got, want)
    # an int index on an axis of symbolic size is checked when the size is known
    for n in (2, 1):
        x = rng.randn(n, 3)
        got, want = _message(lambda: llvm.last(x)), _message(lambda: ref.last(x))
        assert got == want and "index -3 is out of range for axis 0" in got, (got, want)
    x = rng.randn(3, 3)
    for g, w in zip(llvm.last(x), ref.last(x)):
        _same(g, w, "x[-3, 1:], x[2]")
    # the function still works after an error
    args = [a[k] for k in "xvijb"]
    for g, w in zip(llvm.gather(*args), ref.gather(*args)):
        _same(g, w, "gather after errors")


def test_negative_indices_wrap_once(models):
    llvm, ref = models
    x = np.arange(12.0).reshape(4, 3)
    i = np.array([-1, -3, 0, 2, -2], dtype=np.int64)
    j = np.array([[-3, -1], [2, 0]], dtype=np.int32)
    v = np.zeros((4, 3, 3), np.float32)
    out = llvm.gather(x, v, i, j, x > 5)
    np.testing.assert_array_equal(out[0], x[i])
    np.testing.assert_array_equal(out[1], x[:, i])
    np.testing.assert_array_equal(out[3], x[i, -1])
    for g, w in zip(llvm.hot(i, j), ref.hot(i, j)):
        _same(g, w, "onehot of negative labels")
    np.testing.assert_array_equal(llvm.hot(i, j)[0], np.eye(4)[i])
    _native(llvm.hot)
    _native(llvm.last)


def test_onehot_with_a_symbolic_class_count_in_a_gradient():
    """categorical_crossentropy's VJP makes onehot(y, K) with K a dim bound at call time."""
    src = ("input z : f64[N, K]\ninput y : i64[N]\n"
           "fn g(z, y) -> grad(sum(categorical_crossentropy(z, y)), z)\n")
    llvm, ref = flowml.loads(src, backend="llvm"), flowml.loads(src, backend="reference")
    rng = np.random.RandomState(1)
    for n, k in ((4, 3), (1, 7), (5, 1)):
        z, y = rng.randn(n, k), rng.randint(-k, k, n)
        np.testing.assert_allclose(llvm.g(z, y), ref.g(z, y), rtol=1e-12, atol=1e-15)
        y[-1] = k
        assert _message(lambda: llvm.g(z, y)) == _message(lambda: ref.g(z, y))
    ex = llvm.g._executable
    assert not [n for n in ex.host_steps() if ex.graph.op(n).name == "onehot"]


# ---------------------------------------------------------------- concatenate, constructors

CAT = """\
input a : f64[N, K, 2]
input b : f32[N, M, 2]
input c : f64[N, K, 3]
input d : f64[P, K, 2]
input e : bool[N, K, 2]
input i : i64[N, K, 2]
cost = sum(concatenate((a, a * a, d), axis=0) ** 2) + sum(concatenate((a, b, a), axis=-2) * 3) + sum(concatenate((c, a), axis=2) ** 3)
fn cat(a, b, c, d, e, i) -> concatenate((a, d), axis=0), concatenate((a, b), axis=1), concatenate((a, b, a), axis=-2), concatenate((c, a, c), axis=-1), concatenate((a, d, a), axis=-3), concatenate((e, i), axis=2), concatenate((e, e), axis=0), concatenate((i, a), axis=1)
fn dcat(a, b, c, d) -> grad(cost, a), grad(cost, b), grad(cost, c), grad(cost, d)
fn make(a) -> arange(N), arange(7), arange(2, 9, 3), arange(10, 0, -3), arange(-2, 3), full((N, K), 2.5), full((N,), -0.0), zeros((N, K), i64), ones((K, 2), bool), full((2, N), 7, i32), full((3,), 1.5, f32), zeros((N, K), f32), full((N,), true)
"""


def _static(src, **dims):
    """src with its symbolic dims replaced by numbers."""
    for name, value in dims.items():
        src = re.sub(rf"\b{name}\b", str(value), src)
    return src


@pytest.fixture(scope="module")
def cat_models():
    return flowml.loads(CAT, backend="llvm", file="cat.flow"), flowml.loads(CAT, backend="reference", file="cat.flow")


@pytest.mark.parametrize("dims", [(3, 4, 2, 5), (1, 1, 1, 1), (2, 0, 3, 0), (0, 3, 0, 2), (5, 33, 17, 9)])
def test_concatenate_along_every_axis_and_its_gradient(cat_models, dims):
    llvm, ref = cat_models
    n, k, m, p = dims
    rng = np.random.RandomState(n + k)
    args = (rng.randn(n, k, 2), rng.randn(n, m, 2).astype(np.float32), rng.randn(n, k, 3), rng.randn(p, k, 2),
            rng.rand(n, k, 2) < 0.5, rng.randint(-9, 9, (n, k, 2)))
    for o, (g, w) in enumerate(zip(llvm.cat(*args), ref.cat(*args))):
        _same(g, w, f"concatenate {o}, dims {dims}")
    # (the reference evaluator cannot size the gradient's K+M+K before it computes one: it runs
    # the gradient with the dims written out)
    static = flowml.loads(_static(CAT, N=n, K=k, M=m, P=p), backend="reference")
    for o, (g, w) in enumerate(zip(llvm.dcat(*args[:4]), static.dcat(*args[:4]))):
        np.testing.assert_allclose(g, w, rtol=1e-6, err_msg=f"gradient {o}, dims {dims}")
        assert g.dtype == w.dtype
    _native(llvm.cat)
    _native(llvm.dcat)


@pytest.mark.parametrize("dims", [(4, 3), (0, 2), (1, 0), (37, 5)])
def test_constructors_with_symbolic_dims(cat_models, dims):
    llvm, ref = cat_models
    n, k = dims
    a = np.zeros((n, k, 2))
    made = llvm.make(a)
    for o, (g, w) in enumerate(zip(made, ref.make(a))):
        _same(g, w, f"constructor {o}, dims {dims}")
    assert np.signbit(made[6]).all()  # full(-0.0) keeps the sign bit
    _native(llvm.make)


def test_zeros_like_and_constructors_from_the_builder():
    flowml.reset_default_graph()
    try:
        a = flowml.tensor("a", "f64[N, K]")
        outs = [L.zeros_like(a, dtype="i64"), L.zeros_like(a, dtype="bool"), L.zeros_like(a, dtype="f32"),
                flowml.full(("K", "N"), -1.5), flowml.arange("K")]
        llvm, ref = _both([a], outs)
        for n, k in ((3, 4), (0, 2), (5, 1)):
            x = np.ones((n, k))
            for o, (g, w) in enumerate(zip(llvm(x), ref(x))):
                _same(g, w, f"constructor {o}")
        _native(llvm)
    finally:
        flowml.reset_default_graph()


def test_second_derivatives_through_concatenate_use_zeros_like():
    src = ("input x : f64[N]\ninput y : f64[N]\n"
           "c = sum(concatenate((x * x * x, y), axis=0) ** 2)\n"
           "fn h(x, y) -> grad(sum(grad(c, x) * y), x)\n")
    llvm, ref = flowml.loads(src, backend="llvm"), flowml.loads(src, backend="reference")
    rng = np.random.RandomState(2)
    for n in (3, 1, 0):
        x, y = rng.randn(n), rng.randn(n)
        np.testing.assert_allclose(llvm.h(x, y), ref.h(x, y), rtol=1e-12)
    ops = {llvm.h._executable.graph.op(s.node).name for s in llvm.h._executable.program.steps if s.kind == "native"}
    assert {"concat_part"} <= ops
    _native(llvm.h)


def test_big_copies_split_over_threads_give_the_same_bits():
    """Copies big enough to split over threads (transposes, slices, concatenations, gathers)."""
    src = ("input x : f64[N, K]\ninput i : i64[P]\n"
           "fn f(x, i) -> transpose(x) * 1, x[::-1, 1::3] * 1, concatenate((x, x[:, :5]), axis=1), x[i], x[:, i]\n")
    llvm, ref = flowml.loads(src, backend="llvm"), flowml.loads(src, backend="reference")
    rng = np.random.RandomState(4)
    x, i = rng.randn(700, 301), rng.randint(-301, 301, 900)
    for o, (g, w) in enumerate(zip(llvm.f(x, i), ref.f(x, i))):
        _same(g, w, f"output {o}")
    _native(llvm.f)
