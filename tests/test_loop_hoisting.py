"""The fuse phase's loop pass (flowml/passes/loops.py): step-parallel work of a loop done once
for all steps, and a loop's accumulated products as one product after it. Each program here is
run with the pass and without it (`exclude=["hoist_loops"]`) and at -O0 on the reference
backend, and on LLVM: the values agree, and the pass fires where it should (and only there)."""

from __future__ import annotations

import numpy as np
import pytest

import flowml
from flowml.passes.loops import ACCUMULATE, HOIST

LSTM = """
input xs : f64[T, B, 3]
param Wx : f64[3, 8] = normal(0, 0.5)
param Wh : f64[2, 8] = normal(0, 0.5)
param b  : f64[8]    = normal(0, 0.1)
def cell(h, c, x) {
    z = x @ Wx + h @ Wh + b
    i = sigmoid(z[:, 0:2])
    f = sigmoid(z[:, 2:4])
    o = sigmoid(z[:, 4:6])
    g = tanh(z[:, 6:8])
    c1 = f * c + i * g
    h1 = o * tanh(c1)
    return h1, c1
}
h0 = zeros((B, 2))
hs, cs = scan(cell, (h0, h0), xs)
loss = sum(hs ** 2) + mean(cs[-1])
gWx, gWh, gb, gxs = grad(loss, Wx, Wh, b, xs)
fn grads(xs) -> loss, gWx, gWh, gb, gxs
"""

# a user's own accumulations: both histories are read (`acc[-1]` is the last row of the stack)
ACCUMULATE_SRC = """
input xs : f64[T, B, 3]
input ys : f64[T, B, 4]
input s0 : f64[3, 4]
def step(acc, run, x, y) = (acc + x.T @ y, run + sum(y, axis=0))
acc, runs = scan(step, (s0, zeros(4)), xs, ys)
fn total(xs, ys, s0) -> acc[-1], runs
"""

TRUNCATED = """
input xs : f64[T, 3]
param W : f64[3, 3] = normal(0, 0.5)
param U : f64[3, 3] = normal(0, 0.5)
def rnn(h, x) = tanh(x @ U + h @ W)
hs = scan(rnn, zeros(3), xs, truncate=2)
gW, gU = grad(sum(hs), W, U)
fn truncated(xs) -> hs, gW, gU
"""

DRAWS = """
input xs : f64[T, B, 3]
param W : f64[3, 3] = normal(0, 0.5)
def noisy(h, x) = tanh(x @ W + h * uniform(0, 1, (B, 3)))
hs = scan(noisy, zeros((B, 3)), xs)
gW = grad(sum(hs), W)
fn draws(xs) -> hs, gW
"""


def _runs(src, fn, args, backend):
    out = {}
    for label, kw in (("O0", {"opt_level": 0}), ("off", {"exclude": ["hoist_loops"]}), ("on", {})):
        model = flowml.loads(src, backend=backend if label != "O0" else "reference", seed=3, **kw)
        f = getattr(model, fn)
        out[label] = ([np.asarray(v) for v in (lambda r: r if isinstance(r, tuple) else (r,))(f(*args))],
                      f.stats())
    return out


def _agree(out, rtol=1e-10, atol=1e-12):
    want = out["O0"][0]
    for label in ("off", "on"):
        for got, ref in zip(out[label][0], want):
            np.testing.assert_allclose(got, ref, rtol=rtol, atol=atol, err_msg=label)


@pytest.mark.parametrize("backend", ["reference", "llvm"])
def test_an_lstm_gradient_hoists_its_products(backend):
    rng = np.random.default_rng(0)
    out = _runs(LSTM, "grads", [rng.standard_normal((5, 3, 3))], backend)
    _agree(out)
    stats = out["on"][1]
    assert stats[HOIST] >= 2  # x @ Wx in the forward loop, the reverse loop's recomputation
    # the gradients of Wx, Wh and b, in each reverse loop (one per scan output the loss reads)
    assert stats[ACCUMULATE] >= 3 and stats[ACCUMULATE] % 3 == 0
    assert HOIST not in out["off"][1]


@pytest.mark.parametrize("backend", ["reference", "llvm"])
def test_an_accumulation_starts_from_its_initial_value(backend):
    # a final carry without history (what grad builds; from Python, scan(..., history=False))
    from flowml.ir import scan as S
    flowml.reset_default_graph()
    xs, ys = flowml.tensor("xs", "f64[T, B, 3]"), flowml.tensor("ys", "f64[T, B, 4]")
    s0 = flowml.tensor("s0", "f64[3, 4]")
    acc, = S.scan(lambda a, x, y: a + x.T @ y, [s0], [xs, ys], history=False)
    rng = np.random.default_rng(1)
    args = [rng.standard_normal((4, 2, 3)), rng.standard_normal((4, 2, 4)), rng.standard_normal((3, 4))]
    want = args[2] + np.einsum("tbi,tbj->ij", args[0], args[1])
    on = flowml.function([xs, ys, s0], acc, backend=backend)
    off = flowml.function([xs, ys, s0], acc, backend=backend, exclude=["hoist_loops"])
    np.testing.assert_allclose(on(*args), want, rtol=1e-12)
    np.testing.assert_allclose(off(*args), want, rtol=1e-12)
    assert on.stats()[ACCUMULATE] == 1 and ACCUMULATE not in off.stats()
    empty = [np.zeros((0, 2, 3)), np.zeros((0, 2, 4)), args[2]]
    np.testing.assert_array_equal(on(*empty), args[2])


@pytest.mark.parametrize("backend", ["reference", "llvm"])
def test_an_accumulation_whose_history_is_read_is_kept(backend):
    rng = np.random.default_rng(1)
    args = [rng.standard_normal((4, 2, 3)), rng.standard_normal((4, 2, 4)), rng.standard_normal((3, 4))]
    out = _runs(ACCUMULATE_SRC, "total", args, backend)
    _agree(out)
    want = args[2] + np.einsum("tbi,tbj->ij", args[0], args[1])
    np.testing.assert_allclose(out["on"][0][0], want, rtol=1e-12)
    assert ACCUMULATE not in out["on"][1]  # `acc[-1]` reads the stacked history


@pytest.mark.parametrize("backend", ["reference", "llvm"])
def test_no_steps(backend):
    out = _runs(ACCUMULATE_SRC.replace("acc[-1]", "sum(acc, axis=0)"), "total",
                [np.zeros((0, 2, 3)), np.zeros((0, 2, 4)), np.ones((3, 4))], backend)
    _agree(out)


@pytest.mark.parametrize("backend", ["reference", "llvm"])
def test_truncated_backprop_and_draws_in_the_body(backend):
    rng = np.random.default_rng(2)
    _agree(_runs(TRUNCATED, "truncated", [rng.standard_normal((6, 3))], backend))
    out = _runs(DRAWS, "draws", [rng.standard_normal((4, 2, 3))], backend)
    _agree(out)
    assert out["on"][1][HOIST] >= 1  # x @ W (the draw depends on the step: it stays in the body)
