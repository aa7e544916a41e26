"""avg_pool2d, conv1d and top_k: compositions of conv2d and argsort, against numpy on the
reference and LLVM backends (native, no host step), with derivatives against finite
differences."""

from __future__ import annotations

import numpy as np
import pytest

import flowml
from flowml.ir import lib as L
from autodiff_helpers import Case, check_grad, check_jvp

BACKENDS = ["reference", "llvm"]


def np_avg_pool(x, window, stride):
    (kh, kw), (sh, sw) = window, stride
    oh, ow = (x.shape[-2] - kh) // sh + 1, (x.shape[-1] - kw) // sw + 1
    out = np.empty(x.shape[:-2] + (oh, ow))
    for i in range(oh):
        for j in range(ow):
            out[..., i, j] = x[..., i * sh:i * sh + kh, j * sw:j * sw + kw].mean(axis=(-2, -1))
    return out


def np_conv1d(x, w, stride, pads):
    x = np.pad(x, ((0, 0), (0, 0), pads))
    k = w.shape[-1]
    ol = (x.shape[-1] - k) // stride + 1
    return np.stack([np.einsum("ncl,fcl->nf", x[:, :, j * stride:j * stride + k], w) for j in range(ol)], axis=-1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_avg_pool2d_conv1d_and_top_k_match_numpy(backend):
    flowml.reset_default_graph()
    x = flowml.tensor("x", "f64[N, 3, 7, 6]")
    s, w = flowml.tensor("s", "f64[N, 2, 9]"), flowml.tensor("w", "f64[4, 2, 3]")
    v = flowml.tensor("v", "f64[N, 5]")
    values, indices = flowml.top_k(v, 3)
    outs = [flowml.avg_pool2d(x, 2), flowml.avg_pool2d(x, (3, 2), (2, 1)), flowml.conv1d(s, w),
            flowml.conv1d(s, w, stride=2, padding=1), flowml.conv1d(s, w, padding=(2, 0)),
            flowml.conv1d(s, w, padding="same"), values, indices]
    f = flowml.function([x, s, w, v], outs, backend=backend)
    rng = np.random.default_rng(0)
    X, S, W, V = rng.normal(size=(2, 3, 7, 6)), rng.normal(size=(2, 2, 9)), rng.normal(size=(2 * 2, 2, 3)), \
        rng.normal(size=(2, 5))
    V[0, 1] = V[0, 3]  # a tie: the lower index first
    got = f(X, S, W, V)
    top = np.argsort(-V, axis=-1, kind="stable")[:, :3]
    want = [np_avg_pool(X, (2, 2), (2, 2)), np_avg_pool(X, (3, 2), (2, 1)), np_conv1d(S, W, 1, (0, 0)),
            np_conv1d(S, W, 2, (1, 1)), np_conv1d(S, W, 1, (2, 0)), np_conv1d(S, W, 1, (1, 1)),
            np.take_along_axis(V, top, -1), top]
    for i, (g, e) in enumerate(zip(got, want)):
        np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-12, err_msg=f"output {i}")
    assert got[-1].dtype == np.int64
    if backend == "llvm":
        assert f._executable.summary() == "1 native call, nothing on the host"


def test_from_flow_and_on_integers():
    model = flowml.loads("input x : i64[N, 4, 4]\ninput v : i64[N, 6]\n"
                         "fn f(x, v) -> avg_pool2d(x, 2), vals, idx {\n  vals, idx = top_k(v, 2)\n}\n")
    x, v = np.arange(32).reshape(2, 4, 4), np.array([[3, 1, 4, 1, 5, 9], [2, 6, 5, 3, 5, 8]])
    pooled, vals, idx = model.f(x, v)
    assert pooled.dtype == np.float64 and vals.dtype == np.int64
    np.testing.assert_allclose(pooled, np_avg_pool(x.astype(float), (2, 2), (2, 2)))
    assert vals.tolist() == [[9, 5], [8, 6]] and idx.tolist() == [[5, 4], [5, 1]]


def test_bad_arguments_are_located_errors():
    with pytest.raises(flowml.FlowError, match="top_k's k must be between 0 and 3"):
        flowml.loads("input v : f64[3]\nfn f(v) -> top_k(v, 4)[0]\n")
    with pytest.raises(flowml.FlowError, match="conv1d takes signals"):
        flowml.loads("input x : f64[2, 9]\ninput w : f64[1, 1, 3]\nfn f(x, w) -> conv1d(x, w)\n")


@pytest.mark.parametrize("case", [
    Case(lambda x: L.avg_pool2d(x, (2, 3), (1, 2)), [np.random.default_rng(1).normal(size=(2, 5, 7))], label="avg"),
    Case(lambda x, w: L.conv1d(x, w, stride=2, padding="same"),
         [np.random.default_rng(2).normal(size=(2, 3, 8)), np.random.default_rng(3).normal(size=(2, 3, 3))],
         label="conv1d"),
    Case(lambda v: L.top_k(v, 2)[0], [np.random.default_rng(4).permutation(12).reshape(3, 4) * 0.5], label="top_k"),
], ids=lambda c: c.label)
def test_derivatives_match_finite_differences(case):
    check_grad(case)
    check_jvp(case)


def test_ellipsis_and_none_in_subscripts():
    """`...` in .flow and Python subscripts stands for the axes the other indices leave."""
    x = np.arange(24.0).reshape(2, 3, 4)
    model = flowml.loads("input x : f64[A, B, C]\nfn f(x) -> x[..., 0], x[0, ...], x[..., none, 1:3], x[...]\n",
                         backend="llvm")
    for got, want in zip(model.f(x), [x[..., 0], x[0, ...], x[..., None, 1:3], x[...]]):
        np.testing.assert_array_equal(got, want)
    flowml.reset_default_graph()
    v = flowml.tensor("v", "f64[A, B, C]")
    np.testing.assert_array_equal(flowml.function([v], v[..., 1, :])(x), x[..., 1, :])
    with pytest.raises(flowml.FlowError, match=r"<string>:2:12: an index can only have a single ellipsis"):
        flowml.loads("input x : f64[A, B]\nfn f(x) -> x[..., ...]\n")
