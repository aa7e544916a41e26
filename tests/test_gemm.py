"""The fuse phase's gemm (flowml/passes/gemm.py): an SGD update `W - lr * (x.T @ g + c * W)`
becomes one BLAS call accumulating into W in place, on every backend, with the values of the
unoptimized graph; a product that is also used elsewhere, or an update that reads its param as
a factor of the product, is left as it was or not done in place."""

from __future__ import annotations

import numpy as np
import pytest

import flowml

SGD = """
input x : f64[N, 5]
input y : f64[N]
param W : f64[5, 3] = normal(0, 0.5)
param v : f64[3] = normal(0, 0.5)
param w : f64[5] = normal(0, 0.5)
h = tanh(x @ W)
cost = mean((h @ v - y) ** 2) + 0.01 * sum(W ** 2) + 0.1 * sum(w ** 2) + mean(x @ w)
gW, gv, gw = grad(cost, W, v, w)
fn train(x, y) -> cost {
    W <- W - 0.1 * gW
    v <- v - 0.1 * gv
    w <- 0.9 * w - gw
}
fn keep(x, y) -> gW {
    W <- W - 0.1 * gW
}
"""

SQUARE = """
input g : f64[4, 4]
param W : f64[4, 4] = normal(0, 1)
fn step(g) -> sum(W) {
    W <- W - 0.5 * (W.T @ g) + 0.25 * W
}
"""


def _data(n=7, seed=0):
    rng = np.random.RandomState(seed)
    return rng.standard_normal((n, 5)), rng.standard_normal(n)


def _gemms(model, fn):
    g = getattr(model, fn).compiled.graph
    return [n for n in g.nodes() if g.op(n).name == "gemm"]


def test_sgd_updates_become_gemm_in_place():
    m = flowml.loads(SGD, backend="reference")
    gemms = set(_gemms(m, "train"))
    plan = m.train.compiled.plan
    # W's (a matrix product), v's and w's (matrix-vector products); and the residual h @ v - y
    assert {plan.inplace[p] for p in ("W", "v", "w")} <= gemms and len(gemms) == 4
    assert m.train.stats()["fuse: products with their updates as one gemm"] == 4


def test_a_product_used_elsewhere_is_computed_once():
    """`keep` returns gW = x.T @ gh + 0.02 * W and updates W <- W - 0.1 * gW: gW is the gemm (its
    product is used by nothing else) and the update an elementwise kernel reading it; the update
    is not a second gemm computing the product again."""
    m = flowml.loads(SGD, backend="reference")
    c = m.keep.compiled
    g = c.graph
    (returned,) = c.outputs
    (update,) = [n for name, n in c.updates if name == "W"]
    assert g.op(returned).name == "gemm" and g.op(update).name == "fused" and returned in g.operands(update)
    products_by_x = [n for n in g.nodes() if g.op(n).name in ("gemm", "matmul")
                     and g.op(g.operands(n)[0]).name == "transpose"]
    assert products_by_x == [returned]


@pytest.mark.parametrize("backend", ["reference", "llvm", "opencl"])
def test_gemm_updates_give_the_unoptimized_values(backend):
    x, y = _data()
    want = flowml.loads(SGD, backend="reference", opt_level=0, seed=1)
    got = flowml.loads(SGD, backend=backend, seed=1)
    for _ in range(3):
        np.testing.assert_allclose(got.train(x, y), want.train(x, y), rtol=1e-12)
        np.testing.assert_allclose(got.keep(x[:3], y[:3]), want.keep(x[:3], y[:3]), rtol=1e-12)
        for name in ("W", "v", "w"):
            np.testing.assert_allclose(got.params[name], want.params[name], rtol=1e-12, atol=1e-14)
    if backend == "llvm":
        ex = got.train._executable
        assert ex.host_steps() == {}
        assert sum("adding beta * c" in s.detail for s in ex.program.steps) == 4


@pytest.mark.parametrize("backend", ["reference", "llvm"])
def test_a_param_that_is_a_factor_of_its_product_is_not_overwritten_while_read(backend):
    g = np.random.RandomState(3).standard_normal((4, 4))
    want = flowml.loads(SQUARE, backend="reference", opt_level=0)
    got = flowml.loads(SQUARE, backend=backend)
    assert len(_gemms(got, "step")) == 1
    assert "W" not in got.step.compiled.plan.inplace  # W.T is gemm's a: it cannot be written while read
    for _ in range(2):
        got.step(g), want.step(g)
        np.testing.assert_allclose(got.params["W"], want.params["W"], rtol=1e-12)
