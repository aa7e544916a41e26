"""Native loops and branches on the LLVM backend (flowml/backends/llvm/lowering/control.py):
`scan` / `iterate` and their derivative loops (BPTT, forward tangents) as native loops, the lazy
`if` as a branch. Every fn here runs with zero host steps, and its values and derivatives match
the reference backend: an LSTM (f32 and f64) with its BPTT gradient, nested loops, random draws
in a body (bit for bit), `truncate`, `iterate`, an `if` whose untaken side would fail (also
inside a loop body), errors raised inside a body, and the examples with loops."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

import flowml
from flowml.errors import FlowRuntimeError

LSTM = """
input xs : {dt}[T, B, 3]
param Wx : {dt}[3, 16] = normal(0, 0.5)
param Wh : {dt}[4, 16] = normal(0, 0.5)
param b  : {dt}[16]    = normal(0, 0.1)
def cell(h, c, x) {{
    z = x @ Wx + h @ Wh + b
    i = sigmoid(z[:, 0:4])
    f = sigmoid(z[:, 4:8])
    o = sigmoid(z[:, 8:12])
    g = tanh(z[:, 12:16])
    c1 = f * c + i * g
    h1 = o * tanh(c1)
    return h1, c1
}}
h0 = cast(zeros((B, 4)), {dt})
hs, cs = scan(cell, (h0, h0), xs)
loss = sum(hs ** 2) + mean(cs[-1])
gWx, gWh, gb, gxs = grad(loss, Wx, Wh, b, xs)
fn forward(xs) -> hs, cs, loss
fn grads(xs) -> loss, gWx, gWh, gb, gxs
"""

LOOPS = """
input xs : f64[T, 3]
input v : f64[3]
input i : i64
param W : f64[3, 3] = normal(0, 0.5)

# truncated BPTT: only the last 2 steps are differentiated
def rnn(h, x) = tanh(x + h @ W)
hs = scan(rnn, zeros(3), xs, truncate=2)
gtrunc = grad(sum(hs), W)
fn truncated(xs) -> hs, gtrunc

# iterate, and a scan nested in an iterate body (and its gradient: nested reverse loops)
def inner(acc, x) = acc + tanh(x @ W)
def sweep(h) = scan(inner, h, xs)[-1] * 0.5
deep = iterate(sweep, v, 3)
gdeep = grad(sum(deep), W)
rdeep = rop(deep, W, W)
fn nested(xs, v) -> deep, gdeep, rdeep

# random draws inside a body: each step folds its index into the key
def noisy(h, x) {
    e = normal(shape=(3,))
    return h + e * x, e
}
walk, draws = scan(noisy, zeros(3), xs)
fn random(xs) -> walk, draws

# a lazy `if` whose untaken side would fail (v[i] out of range), at the top and inside a body
pick = if i < 3 then v[i] * 2 else -1.0
def hold(h, x) = if sum(h) > 2 then h else h + x[i]
clipped = scan(hold, v, xs)
fn choose(v, i) -> pick
fn looped(xs, v, i) -> clipped
"""


def _native(model, *names):
    for name in names:
        assert model.functions[name]._executable.host_steps() == {}, name


def _close(got, want, rtol):
    got, want = (got, want) if isinstance(got, (tuple, list)) else ((got,), (want,))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("dt", ["f32", "f64"])
def test_an_lstm_and_its_bptt_gradient_match_the_reference(dt):
    src = LSTM.format(dt=dt)
    ref, nat = flowml.loads(src, backend="reference"), flowml.loads(src, backend="llvm")
    _native(nat, "forward", "grads")
    xs = np.random.RandomState(0).randn(7, 5, 3).astype(np.float32 if dt == "f32" else np.float64)
    rtol = 2e-4 if dt == "f32" else 1e-10
    _close(nat.forward(xs), ref.forward(xs), rtol)
    _close(nat.grads(xs), ref.grads(xs), rtol)
    _close(nat.grads(xs[:1]), ref.grads(xs[:1]), rtol)


@pytest.fixture(scope="module")
def loops():
    return flowml.loads(LOOPS, backend="reference"), flowml.loads(LOOPS, backend="llvm")


def test_truncate_iterate_and_nested_loops_match_the_reference(loops):
    ref, nat = loops
    _native(nat, "truncated", "nested")
    xs, v = np.random.RandomState(1).randn(6, 3), np.array([0.3, -0.2, 0.5])
    _close(nat.truncated(xs), ref.truncated(xs), 1e-10)
    _close(nat.nested(xs, v), ref.nested(xs, v), 1e-10)


def test_random_draws_in_a_body_are_the_reference_numbers_bit_for_bit(loops):
    ref, nat = loops
    _native(nat, "random")
    xs = np.random.RandomState(2).randn(5, 3)
    for g, w in zip(nat.random(xs), ref.random(xs)):
        np.testing.assert_array_equal(g, w)
    for g, w in zip(nat.random(xs), ref.random(xs)):  # the next call's draws: the stream moved on
        np.testing.assert_array_equal(g, w)


def test_the_untaken_side_of_an_if_does_not_run(loops):
    ref, nat = loops
    _native(nat, "choose", "looped")
    v = np.array([1.0, 2.0, 3.0])
    assert nat.choose(v, 7) == ref.choose(v, 7) == -1.0  # v[7] would fail
    assert nat.choose(v, 1) == ref.choose(v, 1) == 4.0
    xs = np.random.RandomState(3).rand(4, 3)
    v = np.array([1.0, 1.0, 1.0])  # sum 3 > 2: xs[i] is never read
    np.testing.assert_array_equal(nat.looped(xs, v, 9), ref.looped(xs, v, 9))
    v = np.array([0.1, 0.2, 0.3])
    np.testing.assert_allclose(nat.looped(xs, v, 2), ref.looped(xs, v, 2), rtol=1e-12)
    with pytest.raises(FlowRuntimeError) as native_error:  # the taken side fails inside the body
        nat.looped(xs, v, 9)
    with pytest.raises(FlowRuntimeError) as reference_error:
        ref.looped(xs, v, 9)
    assert str(native_error.value) == str(reference_error.value)


def test_the_examples_with_loops_match_the_reference():
    for name, fns in (("rnn.flow", ("train", "predict")), ("rbm.flow", ("train_cd", "train_pcd", "evaluate"))):
        path = str(pathlib.Path("examples") / name)
        ref, nat = flowml.load(path, backend="reference"), flowml.load(path, backend="llvm")
        _native(nat, *fns)
        if name == "rnn.flow":
            for _ in range(2):
                _close([nat.train()], [ref.train()], 1e-9)
            xs = np.random.RandomState(4).randn(6, 2, 1)
            _close([nat.predict(xs)], [ref.predict(xs)], 1e-9)
        else:
            X = np.random.RandomState(5).randint(0, 17, (20, 64)).astype(np.float64)
            for fn in fns:
                _close(getattr(nat, fn)(X), getattr(ref, fn)(X), 1e-9)


def test_a_loop_whose_body_has_a_host_step_runs_as_one_and_so_does_an_if_around_one():
    src = """
input xs : f64[T, 3]
input t : f64
def step(h, x) = twice(h) * 0.5 + x
hs = scan(step, zeros(3), xs)
fn loop(xs) -> hs
fn pick(xs, t) -> if t > 0 then twice(xs) else xs
"""
    twice = flowml.op(lambda a: a * 2, lambda t: t, name="twice")
    ref = flowml.loads(src, backend="reference", ops={"twice": twice})
    nat = flowml.loads(src, backend="llvm", ops={"twice": twice})
    (why,) = nat.loop._executable.host_steps().values()  # the loop, run by the reference evaluator
    assert why.startswith("its body's twice has no native code")
    xs = np.random.RandomState(6).randn(4, 3)
    _close(nat.loop(xs), ref.loop(xs), 1e-12)
    _close(nat.pick(xs, 1.0), ref.pick(xs, 1.0), 1e-12)
    assert "reference evaluator" in nat.pick._executable.summary()
