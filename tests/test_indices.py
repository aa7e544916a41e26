"""numpy's rule for integer indices and class labels (issue 19): an index in [-n, n) wraps once
(-1 is the last), anything else is a located error naming the input and its first bad
position — for values and gradients alike, on every backend and at -O0 and -O1 (where the
stabilize phase rewrites -log(softmax(z))[arange(N), y] into categorical_crossentropy)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import hypothesis.extra.numpy as hnp

import flowml
from flowml.errors import FlowRuntimeError
from flowml.ir.indices import IndexOutOfRange, wrap

from helpers import BACKENDS, check

SRC = """\
input z : f64[N, 3]
input zk : f64[N, K]
input y : i64[N]
input v : f64[M]
input i : i64[P]
cce  = sum(categorical_crossentropy(z, y))
nll  = -sum(log(softmax(z))[arange(N), y])
cck  = sum(categorical_crossentropy(zk, y))
pick = sum(v[i] * v[i])
fn cost(z, zk, y) -> cce, nll, cck, onehot(y, 3)
fn grads(z, zk, y) -> grad(cce, z), grad(nll, z), grad(cck, zk)
fn gather(v, i) -> v[i]
fn scatter(v, i) -> grad(pick, v)
"""

Z = np.array([[0.5, -1.0, 2.0], [0.3, 0.1, -0.7]])
V = np.array([1.0, -2.0, 3.0, 0.5])

_MODELS: dict = {}


def model(backend, level):
    """One compiled model per backend and opt level, shared by the tests."""
    key = (backend, level)
    if key not in _MODELS:
        _MODELS[key] = flowml.loads(SRC, file="idx.flow", backend=backend, opt_level=level)
    return _MODELS[key]


def np_cce(z, y):
    """numpy's cross-entropy, with numpy's own (negative) indexing of the labels."""
    shifted = z - z.max(axis=1, keepdims=True)
    log_sm = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -log_sm[np.arange(len(z)), y].sum()


def finite_differences(f, x, eps=1e-6):
    g = np.zeros_like(x)
    for k in np.ndindex(x.shape):
        d = np.zeros_like(x)
        d[k] = eps
        g[k] = (f(x + d) - f(x - d)) / (2 * eps)
    return g


@pytest.mark.parametrize("level", [0, 1])
@pytest.mark.parametrize("backend", BACKENDS)
def test_negative_labels_values_and_gradients(backend, level):
    m = model(backend, level)
    y = np.array([-1, -3])  # the last class and the first
    want = np_cce(Z, y)
    cce, nll, cck, hot = m.cost(Z, Z, y)
    for got in (cce, nll, cck):
        np.testing.assert_allclose(got, want, rtol=1e-12)
    np.testing.assert_array_equal(hot, np.eye(3)[y])
    want_g = finite_differences(lambda z: np_cce(z, y), Z)
    for got in m.grads(Z, Z, y):
        np.testing.assert_allclose(got, want_g, rtol=1e-6, atol=1e-8)
    if level == 1:  # the path that had the bug: the rewritten form and its derivative
        assert any("categorical_crossentropy" in k for k in m.grads.stats())


@pytest.mark.parametrize("level", [0, 1])
@pytest.mark.parametrize("backend", BACKENDS)
def test_negative_indices_gather_and_scatter_add(backend, level):
    m = model(backend, level)
    i = np.array([-1, 0, -4, -1, 2])
    np.testing.assert_array_equal(m.gather(V, i), V[i])
    want = np.zeros_like(V)
    np.add.at(want, i, 2 * V[i])  # d sum(v[i]^2) / dv
    np.testing.assert_allclose(m.scatter(V, i), want, rtol=1e-12)


@pytest.mark.parametrize("level", [0, 1])
@pytest.mark.parametrize("backend", BACKENDS)
def test_out_of_range_labels_and_indices_are_located_errors(backend, level):
    """The value alone, the gradient alone (no forward node to fail), a gather and a
    scatter-add each name the input and its first bad position, located at the expression."""
    m = model(backend, level)
    for bad in ([0, 3], [2, -4]):
        for fn, line in ((m.cost, 6), (m.grads, 6)):
            with pytest.raises(FlowRuntimeError, match=rf"label y\[1\] = {bad[1]} is out of range for 3 classes") as e:
                fn(Z, Z, np.array(bad))
            assert e.value.loc.line in (line, line + 1, line + 2)  # cce, nll or cck (all fail)
    for fn, line in ((m.gather, 12), (m.scatter, 9)):
        with pytest.raises(FlowRuntimeError, match=r"index i\[2\] = -5 is out of range for axis 0 of size 4") as e:
            fn(V, np.array([3, -4, -5, 9]))
        assert (e.value.loc.file, e.value.loc.line) == ("idx.flow", line)


@pytest.mark.parametrize("backend", ["reference", "llvm"])
def test_a_constant_index_into_a_symbolic_dim_is_checked_by_numpys_rule(backend):
    """x[5] and x[-4] with x : f64[N] are checked when N is bound: the same words as an index
    array's (numpy's own 'index 5 is out of bounds' before), located at the subscript."""
    m = flowml.loads("input x : f64[N]\nfn f(x) -> x[5]\nfn g(x) -> x[-4]\n", backend=backend)
    x = np.arange(7.0)
    assert (float(m.f(x)), float(m.g(x))) == (5.0, 3.0)
    for fn, i, line in ((m.f, 5, 2), (m.g, -4, 3)):
        with pytest.raises(FlowRuntimeError, match=rf"index {i} is out of range for axis 0 of size 3 "
                           r"\(valid: -3 to 2") as e:
            fn(np.zeros(3))
        assert e.value.loc.line == line


def test_index_axes_and_unnamed_operands():
    """Each index array is checked against its own axis; an unnamed value is named by operand."""
    m = flowml.loads("input a : f64[2, 5]\ninput j : i64[3]\n"
                     "fn f(a, j) -> a[1:, j], a[0, j], a[j * 0, j]\n"
                     "fn g(a, j) -> categorical_crossentropy(a, j[:2] * 2)\n")
    a = np.arange(10.0).reshape(2, 5)
    j = np.array([-5, 4, -1])
    for got, want in zip(m.f(a, j), (a[1:, j], a[0, j], a[j * 0, j])):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(FlowRuntimeError, match=r"index j\[0\] = 5 is out of range for axis 1 of size 5"):
        m.f(a, np.array([5, 0, 0]))
    with pytest.raises(FlowRuntimeError, match=r"label\[1\] \(operand 2\) = 8 is out of range for 5 classes"):
        m.g(a, np.array([1, 4, 0]))


@settings(max_examples=60, deadline=None)
@given(size=st.integers(0, 6), idx=hnp.arrays(np.int64, hnp.array_shapes(min_dims=0, max_dims=3, max_side=4),
                                               elements=st.integers(-9, 9)))
def test_wrap_follows_numpy(size, idx):
    """wrap() is numpy's take(mode="raise"), and reports the first bad position in C order."""
    try:
        want = np.take(np.arange(size), idx)
    except IndexError:
        with pytest.raises(IndexOutOfRange) as e:
            wrap(idx, size, 0)
        bad = np.flatnonzero((idx.ravel() < -size) | (idx.ravel() >= size))[0]
        assert e.value.position == np.unravel_index(bad, idx.shape)
        assert e.value.value == idx.ravel()[bad]
        return
    np.testing.assert_array_equal(wrap(idx, size, 0), want)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(0, 6), k=st.integers(1, 5))
def test_onehot_of_negative_labels_matches_numpy(n, k):
    y = np.arange(n, dtype=np.int64) % (2 * k) - k  # every label in [-k, k)
    check(lambda v: flowml.onehot(v, k), lambda v: np.eye(k)[v], y)
