"""Loops (flowml/ir/scan.py; the language's `scan` and `iterate`, flowml/lang/build.py) and the
lazy conditional.

- values against plain numpy loops: an RNN, cumulative sums, several carries and sequences,
  emitted values, a Gibbs-like `iterate`, a scan nested in an iterate body, length-0 loops;
- derivatives through loops against central finite differences: grad (backprop through time),
  rop/lop (and the dot-product test <u, J v> == <J^T u, v>), hessian_vector, `flowml.gradcheck`;
- the same values on the reference, LLVM and OpenCL backends;
- errors located at the body's line;
- `if c then a else b` does not compute the untaken branch, on every backend, and is
  differentiable; the gradient through `where` with an inf/NaN on the untaken side;
- examples/rnn.flow trains (its loss falls) and passes `flowml gradcheck`.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import flowml
from flowml.gradcheck import check_model
from flowml.ir import ops as P
from helpers import BACKENDS, run_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))




def sigmoid(x):
    return 1 / (1 + np.exp(-x))


# ----------------------------------------------------------------- values vs numpy

RNN = """
input xs : f64[T, 3]
param Wx : f64[3, 4] = normal(0, 0.5)
param Wh : f64[4, 4] = normal(0, 0.5)
param Wy : f64[4, 2] = normal(0, 0.5)
param h0 : f64[4] = normal(0, 0.5)
def step(h, x) {
    h1 = tanh(x @ Wx + h @ Wh)
    return h1, h1 @ Wy
}
hs, ys = scan(step, h0, xs)
cost = sum(ys ** 2) + 0.5 * sum(hs)
gWx, gWh, gWy, gh0, gxs = grad(cost, Wx, Wh, Wy, h0, xs)
fn forward(xs) -> hs, ys, cost
fn grads(xs) -> cost, gWx, gWh, gWy, gh0, gxs
"""


def rnn_numpy(p, xs):
    h, hs, ys = p["h0"], [], []
    for x in xs:
        h = np.tanh(x @ p["Wx"] + h @ p["Wh"])
        hs.append(h)
        ys.append(h @ p["Wy"])
    hs, ys = np.array(hs).reshape(len(xs), 4), np.array(ys).reshape(len(xs), 2)
    return hs, ys, np.sum(ys ** 2) + 0.5 * np.sum(hs)


def test_rnn_forward_matches_numpy():
    m = flowml.loads(RNN)
    xs = np.random.RandomState(0).randn(7, 3)
    hs, ys, cost = m.forward(xs)
    want = rnn_numpy(m.params, xs)
    assert hs.shape == (7, 4) and ys.shape == (7, 2)
    for g, w in zip((hs, ys, cost), want):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-14)


SUMS = """
input xs : f64[T, 3]
input ys : f64[T]
input ks : i64[T]
param z : f64[3] = zeros
def add(c, x) = c + x
def two(s, c, x, y, k) = (s + x, c + y * x, s * 2, cast(k, f64) * y)
cums = scan(add, z, xs)
S, C, E, F = scan(two, (z, z), xs, ys, ks)
fn f(xs, ys, ks) -> cums, S, C, E, F
"""


def test_cumulative_sums_several_carries_and_sequences_and_emitted_values():
    m = flowml.loads(SUMS)
    r = np.random.RandomState(1)
    xs, ys, ks = r.randn(6, 3), r.randn(6), r.randint(-5, 5, 6)
    cums, S, C, E, F = m.f(xs, ys, ks)
    np.testing.assert_allclose(cums, np.cumsum(xs, axis=0), rtol=1e-13)
    s, c, want_s, want_c, want_e = np.zeros(3), np.zeros(3), [], [], []
    for x, y in zip(xs, ys):
        want_e.append(s * 2)  # an emitted value sees the carries before the step
        s, c = s + x, c + y * x
        want_s.append(s)
        want_c.append(c)
    np.testing.assert_allclose(S, want_s, rtol=1e-13)
    np.testing.assert_allclose(C, want_c, rtol=1e-13)
    np.testing.assert_allclose(E, want_e, rtol=1e-13)
    np.testing.assert_allclose(F, ks * ys, rtol=1e-13)
    assert S.shape == C.shape == E.shape == (6, 3) and F.shape == (6,)


GIBBS = """
input v0 : f64[B, 5]
param W : f64[5, 3] = normal(0, 1)
param b : f64[5] = normal(0, 1)
param c : f64[3] = normal(0, 1)
# mean-field updates of an RBM, a fixed number of sweeps; two carries
def sweep(v, h) {
    h1 = sigmoid(v @ W + c)
    v1 = sigmoid(h1 @ W.T + b)
    return v1, h1
}
vk, hk = iterate(sweep, (v0, zeros((B, 3))), 6)
# a Gibbs chain: sampled units
def gibbs(v) {
    h = bernoulli(sigmoid(v @ W + c))
    return bernoulli(sigmoid(h @ W.T + b))
}
vs = iterate(gibbs, v0, 3)
fn mean_field(v0) -> vk, hk
fn sample(v0) -> vs
"""


def test_gibbs_like_iterate_matches_numpy():
    m = flowml.loads(GIBBS)
    v0 = np.random.RandomState(2).rand(4, 5)
    vk, hk = m.mean_field(v0)
    W, b, c = m.params["W"], m.params["b"], m.params["c"]
    v, h = v0, np.zeros((4, 3))
    for _ in range(6):
        h = sigmoid(v @ W + c)
        v = sigmoid(h @ W.T + b)
    np.testing.assert_allclose(vk, v, rtol=1e-12)
    np.testing.assert_allclose(hk, h, rtol=1e-12)


def test_a_gibbs_chain_samples_its_stationary_distribution():
    """With W = 0 the visible units are independent: after any step v ~ bernoulli(sigmoid(b))."""
    m = flowml.loads(GIBBS)
    m.params["W"] = np.zeros((5, 3))
    vs = m.sample(np.zeros((20000, 5)))
    assert set(np.unique(vs)) <= {0.0, 1.0}
    p = sigmoid(m.params["b"])
    assert np.all(np.abs(vs.mean(axis=0) - p) < 6 * np.sqrt(p * (1 - p) / 20000))


NESTED = """
input xs : f64[T, 2]
param W : f64[2, 2] = normal(0, 0.5)
def inner(a, x) = tanh(a @ W + x)
def outer_step(h) {
    hs = scan(inner, h, xs)
    return hs[-1] * 0.5 + h
}
out = iterate(outer_step, ones((2,)), 3)
cost = sum(out ** 2)
gW = grad(cost, W)
fn f(xs) -> out, cost, gW
"""


def test_a_scan_nested_in_an_iterate_body_matches_numpy():
    m = flowml.loads(NESTED)
    xs = np.random.RandomState(3).randn(4, 2)
    out, cost, gW = m.f(xs)
    W = m.params["W"]

    def run(W):
        h = np.ones(2)
        for _ in range(3):
            a = h
            for x in xs:
                a = np.tanh(a @ W + x)
            h = a * 0.5 + h
        return h
    np.testing.assert_allclose(out, run(W), rtol=1e-12)
    eps, num = 1e-6, np.zeros((2, 2))
    for idx in np.ndindex(2, 2):
        d = np.zeros((2, 2))
        d[idx] = eps
        num[idx] = (np.sum(run(W + d) ** 2) - np.sum(run(W - d) ** 2)) / (2 * eps)
    np.testing.assert_allclose(gW, num, rtol=1e-6, atol=1e-8)


def test_length_zero_loops():
    m = flowml.loads(SUMS)
    cums, S, C, E, F = m.f(np.zeros((0, 3)), np.zeros(0), np.zeros(0, dtype=np.int64))
    assert cums.shape == S.shape == C.shape == E.shape == (0, 3) and F.shape == (0,)
    r = flowml.loads(RNN)
    hs, ys, cost = r.forward(np.zeros((0, 3)))
    assert hs.shape == (0, 4) and ys.shape == (0, 2)
    m0 = flowml.loads("""
param h0 : f64[3] = ones
input xs : f64[T, 3]
def double(h) = h * 2
def add(h, x) = h + x
fin = iterate(double, h0, 0)
last = scan(add, h0, xs)
g = grad(sum(last) + sum(fin), h0)
fn f(xs) -> fin, last, g
""")
    fin, last, g = m0.f(np.zeros((0, 3)))
    assert list(fin) == [1, 1, 1] and last.shape == (0, 3) and list(g) == [1, 1, 1]


def test_iterate_a_symbolic_number_of_steps():
    m = flowml.loads("""
input x : f64[N]
def grow(s, k) = (s * 2, k + 1)
s, k = iterate(grow, (1.0, 0), N)
fn f(x) -> s, k
""")
    for n in (0, 1, 5):
        s, k = m.f(np.zeros(n))
        assert s == 2.0 ** n and k == n and k.dtype == np.int64


# ----------------------------------------------------------------- derivatives


def test_grad_through_scan_matches_finite_differences():
    """Backprop through time, for the weights, the initial state and the input sequence."""
    m = flowml.loads(RNN)
    xs = np.random.RandomState(4).randn(5, 3)
    cost, gWx, gWh, gWy, gh0, gxs = m.grads(xs)
    eps = 1e-6
    p = {k: m.params[k] for k in ("Wx", "Wh", "Wy", "h0")}

    def cost_at(p, xs):
        return rnn_numpy(p, xs)[2]
    for name, g in (("Wx", gWx), ("Wh", gWh), ("Wy", gWy), ("h0", gh0)):
        num = np.zeros_like(p[name])
        for idx in np.ndindex(p[name].shape):
            plus, minus = dict(p), dict(p)
            plus[name], minus[name] = p[name].copy(), p[name].copy()
            plus[name][idx] += eps
            minus[name][idx] -= eps
            num[idx] = (cost_at(plus, xs) - cost_at(minus, xs)) / (2 * eps)
        np.testing.assert_allclose(g, num, rtol=1e-6, atol=1e-8, err_msg=name)
    num = np.zeros_like(xs)
    for idx in np.ndindex(xs.shape):
        d = np.zeros_like(xs)
        d[idx] = eps
        num[idx] = (cost_at(p, xs + d) - cost_at(p, xs - d)) / (2 * eps)
    np.testing.assert_allclose(gxs, num, rtol=1e-6, atol=1e-8, err_msg="xs")


DERIVS = """
input xs : f64[T, 2]
input v : f64[2, 2]
input u : f64[T, 2]
param W : f64[2, 2] = normal(0, 0.7)
param h0 : f64[2] = normal(0, 0.5)
def step(h, x) = tanh(x + h @ W)
hs = scan(step, h0, xs)
cost = sum(hs ** 2)
Hv = hessian_vector(cost, W, v)
jv = rop(hs, W, v)
uj = lop(hs, W, u)
def relax(h) = tanh(h @ W + 0.5)
fixed = iterate(relax, h0, 4)
c2 = sum(fixed ** 3)
g2 = grad(c2, W)
jv2 = rop(fixed, (W, h0), (v, v[0]))
fn f(xs, v, u) -> hs, cost, grad(cost, W), Hv, jv, uj, c2, g2, jv2
"""


@pytest.fixture(scope="module")
def derivs():
    m = flowml.loads(DERIVS)
    r = np.random.RandomState(5)
    return m, r.randn(4, 2), r.randn(2, 2), r.randn(4, 2)


def _at(m, args, **params):
    old = {k: m.params[k] for k in params}
    m.params.update(params)
    try:
        return m.f(*args)
    finally:
        m.params.update(old)


def test_rop_and_lop_through_a_loop(derivs):
    m, xs, v, u = derivs
    hs, _, _, _, jv, uj, _, _, _ = m.f(xs, v, u)
    W, eps = m.params["W"], 1e-6
    plus, minus = _at(m, (xs, v, u), W=W + eps * v)[0], _at(m, (xs, v, u), W=W - eps * v)[0]
    np.testing.assert_allclose(jv, (plus - minus) / (2 * eps), rtol=1e-6, atol=1e-8)
    # the dot-product test: <u, J v> == <J^T u, v>
    assert np.sum(u * jv) == pytest.approx(np.sum(uj * v), rel=1e-12)


def test_grad_and_rop_through_iterate(derivs):
    m, xs, v, u = derivs
    _, _, _, _, _, _, c2, g2, jv2 = m.f(xs, v, u)
    W, h0, eps = m.params["W"], m.params["h0"], 1e-6
    num = np.zeros((2, 2))
    for idx in np.ndindex(2, 2):
        d = np.zeros((2, 2))
        d[idx] = eps
        num[idx] = (_at(m, (xs, v, u), W=W + d)[6] - _at(m, (xs, v, u), W=W - d)[6]) / (2 * eps)
    np.testing.assert_allclose(g2, num, rtol=1e-6, atol=1e-8)

    def fixed(W, h0):  # the iterate, in numpy
        h = h0
        for _ in range(4):
            h = np.tanh(h @ W + 0.5)
        return h
    num = (fixed(W + eps * v, h0 + eps * v[0]) - fixed(W - eps * v, h0 - eps * v[0])) / (2 * eps)
    np.testing.assert_allclose(jv2, num, rtol=1e-6, atol=1e-8)


def test_forward_mode_through_a_loop_with_an_integer_carry():
    """An integer carry (a step counter) has no tangent: forward mode carries a zero for it."""
    m = flowml.loads("""
input a : f64
def grow(s, k) = (s * a + cast(k, f64), k + 1)
s, k = iterate(grow, (1.0, 0), 3)
fn f(a) -> s, k, rop(s, a, 1.0), grad(s, a), hessian_vector(s, a, 1.0)
""")
    s, k, jv, g, hv = m.f(2.0)
    # s = ((a + 0) a + 1) a + 2 = a^3 + a + 2
    assert (s, k) == (12.0, 3) and jv == g == 13.0 and hv == 12.0


def test_hessian_vector_through_a_loop(derivs):
    """Forward over reverse through BPTT: H v against finite differences of the gradient."""
    m, xs, v, u = derivs
    _, _, g, Hv, _, _, _, _, _ = m.f(xs, v, u)
    W, eps = m.params["W"], 1e-5
    g_plus = _at(m, (xs, v, u), W=W + eps * v)[2]
    g_minus = _at(m, (xs, v, u), W=W - eps * v)[2]
    np.testing.assert_allclose(Hv, (g_plus - g_minus) / (2 * eps), rtol=1e-6, atol=1e-8)


def test_gradcheck_checks_every_derivative_through_loops():
    for src in (RNN, DERIVS, NESTED):
        report = check_model(flowml.parse_program(src))
        assert report.rows and report.passed, str(report)


# ----------------------------------------------------------------- backends

BACKEND_MODEL = RNN + """
def relax(h) = tanh(h @ Wh + 0.5)
fixed = iterate(relax, h0, 5)
gfix = grad(sum(fixed), Wh)
fn more() -> fixed, gfix
"""


@pytest.mark.parametrize("backend", BACKENDS[1:])
def test_loops_give_the_same_values_on_every_backend(backend):
    xs = np.random.RandomState(6).randn(6, 3)
    ref = flowml.loads(BACKEND_MODEL, backend="reference")
    other = flowml.loads(BACKEND_MODEL, backend=backend)
    for fn in ("forward", "grads"):
        for g, w in zip(getattr(other, fn)(xs), getattr(ref, fn)(xs)):
            np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-13, err_msg=f"{backend} {fn}")
    for g, w in zip(other.more(), ref.more()):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-13)
    for g, w in zip(other.forward(np.zeros((0, 3))), ref.forward(np.zeros((0, 3)))):
        assert g.shape == w.shape


# ----------------------------------------------------------------- errors


def _error(src: str) -> flowml.FlowError:
    with pytest.raises(flowml.FlowError) as info:
        flowml.loads(src, file="model.flow")
    return info.value


def test_error_a_carried_state_changes_type():
    e = _error("""input xs : f64[T, 3]
param h0 : f64[3] = zeros
def step(h, x) {
    s = sum(h * x)
    return s
}
hs = scan(step, h0, xs)
fn f(xs) -> hs
""")
    assert isinstance(e, flowml.FlowTypeError)
    assert "carried state 0 has type f64[3] before a step and f64 after it" in e.message
    assert (e.loc.line, e.loc.col) == (4, 9)  # the body's line
    e = _error("input xs : f64[T, 3]\nparam h0 : f64[3] = zeros\ndef step(h, x) = h > x\n"
               "hs = scan(step, h0, xs)\nfn f(xs) -> hs\n")
    assert "before a step and bool[3] after it" in e.message and e.loc.line == 3


def test_error_sequences_of_different_lengths():
    e = _error("input xs : f64[4, 3]\ninput ys : f64[5]\nparam h0 : f64[3] = zeros\n"
               "def step(h, x, y) = h + x * y\nhs = scan(step, h0, xs, ys)\nfn f(xs, ys) -> hs\n")
    assert "scan's sequences have lengths 4 and 5: they must be equal" in e.message
    assert e.loc.line == 5
    e = _error("input xs : f64[T, 3]\ninput ys : f64[U]\nparam h0 : f64[3] = zeros\n"
               "def step(h, x, y) = h + x * y\nhs = scan(step, h0, xs, ys)\nfn f(xs, ys) -> hs\n")
    assert "lengths T and U" in e.message


def test_error_the_body_is_not_a_def():
    for body in ("tanh", "h0", "(h0 + 1)"):
        e = _error(f"input xs : f64[T, 3]\nparam h0 : f64[3] = zeros\nhs = scan({body}, h0, xs)\nfn f(xs) -> hs\n")
        assert "the first argument must be the name of a def" in e.message
        assert e.loc.line == 3 and e.loc.col in (11, 12)


def test_error_the_body_returns_fewer_values_than_carries():
    e = _error("""input xs : f64[T, 3]
param h0 : f64[3] = zeros
def step(h, c, x) {
    a = h + x
    return a
}
hs, cs = scan(step, (h0, h0), xs)
fn f(xs) -> hs
""")
    assert e.message.startswith("the loop body step returns 1 value but scan carries 2 states")
    assert (e.loc.line, e.loc.col) == (5, 12)  # the body's return
    assert any("model.flow:7:" in n for n in e.notes)
    e = _error("param h0 : f64[3] = zeros\ndef step(h, c) = h + c\nhs, cs = iterate(step, (h0, h0), 3)\n"
               "fn f() -> hs\n")
    assert "returns 1 value but iterate carries 2 states" in e.message and e.loc.line == 2


def test_error_iterate_needs_an_integer_number_of_steps():
    e = _error("param h0 : f64[3] = zeros\ninput k : f64\ndef step(h) = h + 1\n"
               "hs = iterate(step, h0, k)\nfn f(k) -> hs\n")
    assert "the number of steps n must be an integer or a dim" in e.message
    assert (e.loc.line, e.loc.col) == (4, 24)


def test_error_wrong_arity_of_the_body():
    e = _error("input xs : f64[T, 3]\nparam h0 : f64[3] = zeros\ndef step(h) = h + 1\n"
               "hs = scan(step, h0, xs)\nfn f(xs) -> hs\n")
    assert "step(h) takes 1 argument, got 2" in e.message


def test_error_a_sequence_of_the_wrong_length_at_call_time():
    m = flowml.loads("input xs : f64[T, 3]\ninput ys : f64[T]\ndef step(h, x, y) = h + x * y\n"
                     "hs = scan(step, zeros((3,)), xs, ys)\nfn f(xs, ys) -> hs\n")
    with pytest.raises(flowml.FlowCallError, match="axis 0 is T, which is 4"):
        m.f(np.zeros((4, 3)), np.zeros(5))


# ----------------------------------------------------------------- the lazy conditional

LAZY = """
input t : f64
input v : f64[3]
input i : i64
y = if t > 0 then log(t) * 2 else t * 3
gy = grad(y, t)
fn safe_log(t) -> y, gy
fn pick(v, i) -> if i < 3 then v[i] * (0 * log(-1.0 + 0 * v[0])) else -1.0
def damp(h) = if sum(h) > 10 then h else h * 2
fn grow(v) -> iterate(damp, v, 4)
"""


def test_the_untaken_branch_is_not_computed_on_the_reference_backend(monkeypatch):
    m = flowml.loads(LAZY)
    calls = []
    impl = P.log.impl
    monkeypatch.setattr(P.log, "impl", lambda *a, **k: calls.append(a) or impl(*a, **k))
    y, gy = m.safe_log(-1.0)
    assert y == -3.0 and gy == 3.0 and calls == []
    y, gy = m.safe_log(np.e)
    assert y == pytest.approx(2.0) and gy == pytest.approx(2 / np.e) and calls


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_untaken_branch_is_not_computed_on_any_backend(backend):
    """v[7] would fail (index out of range) and log(-1) would give NaN: neither is computed."""
    m = flowml.loads(LAZY, backend=backend)
    assert m.pick(np.array([1.0, 2.0, 3.0]), 7) == -1.0
    y, gy = m.safe_log(-1.0)
    assert np.isfinite(y) and np.isfinite(gy) and (y, gy) == (-3.0, 3.0)
    y, gy = m.safe_log(np.e)
    assert y == pytest.approx(2.0) and gy == pytest.approx(2 / np.e)
    np.testing.assert_allclose(m.grow(np.array([1.0, 1.0, 1.0])), [4.0, 4.0, 4.0])  # 3 -> 6 -> 12: stop


def test_the_lazy_conditional_is_differentiable():
    m = flowml.loads(LAZY)
    for t in (-2.0, 0.5, 3.0):
        eps = 1e-6
        num = (m.safe_log(t + eps)[0] - m.safe_log(t - eps)[0]) / (2 * eps)
        assert m.safe_log(t)[1] == pytest.approx(num, rel=1e-6)


@pytest.mark.parametrize("backend", ["reference", "llvm"])
def test_grad_through_where_ignores_the_untaken_sides_inf_and_nan(backend):
    m = flowml.loads("input x : f64[N]\nfn f(x) -> grad(sum(where(x > 0, log(x), 0)), x)\n", backend=backend)
    g = m.f(np.array([0.0, -1.0, 2.0, 0.5]))
    assert np.all(np.isfinite(g)), g
    np.testing.assert_allclose(g, [0.0, 0.0, 0.5, 2.0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_grad_through_where_at_negative_values_is_finite(backend):
    """log(-1) = NaN on the untaken side: its derivative g / x = 0 / -1 stays finite (0)."""
    m = flowml.loads("input x : f64[N]\nfn f(x) -> grad(sum(where(x > 0, log(x), 0)), x)\n", backend=backend)
    g = m.f(np.array([-1.0, -3.0, 2.0, 0.5]))
    np.testing.assert_allclose(g, [0.0, 0.0, 0.5, 2.0])


# ----------------------------------------------------------------- examples/rnn.flow

RNN_EXAMPLE = os.path.join(ROOT, "examples", "rnn.flow")


def test_the_rnn_example_learns():
    """A few hundred BPTT steps on fresh batches of noisy sine waves: the loss falls by 5x."""
    m = flowml.load(RNN_EXAMPLE)
    losses = [float(m.train()) for _ in range(250)]
    assert all(np.isfinite(losses))
    assert np.mean(losses[-20:]) < 0.2 * np.mean(losses[:5])
    assert np.mean(losses[-20:]) < 0.05
    # the trained RNN predicts the next value of a sine it has not seen
    t = np.arange(41.0)
    wave = np.sin(0.45 * t + 1.0).reshape(41, 1, 1)
    err = m.evaluate(wave[:-1], wave[1:])
    assert err < 0.05
    assert m.predict(wave[:-1]).shape == (40, 1, 1)


def test_the_rnn_example_passes_gradcheck():
    proc = run_cli("gradcheck", RNN_EXAMPLE, env={"COLUMNS": "200"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "FAIL" not in proc.stdout and proc.stdout.count("pass") == 5


TRUNCATED = """
input xs : f64[T, 3]
param Wx : f64[3, 4] = normal(0, 0.5)
param Wh : f64[4, 4] = normal(0, 0.5)
param h0 : f64[4] = zeros
def step(h, x) = tanh(x @ Wx + h @ Wh)
hs = scan(step, h0, xs, truncate=K)
cost = sum(hs[-1] ** 2) + 0.1 * sum(hs)
gx = grad(cost, Wx)
fn f(xs) -> gx
"""


@pytest.mark.parametrize("backend", ["reference", "llvm"])
def test_truncated_backprop_through_time(backend):
    """scan(..., truncate=k) differentiates only the last k steps (Theano's truncate_gradient):
    k = 1 is the gradient of the last step's outputs with the carry into it held constant, and
    k >= T is the full gradient."""
    xs = np.random.RandomState(0).randn(6, 3)
    ref = flowml.loads(TRUNCATED.replace("truncate=K", "truncate=1"), backend=backend)
    Wx, Wh, h0 = ref.params["Wx"], ref.params["Wh"], ref.params["h0"]
    h = h0
    for x in xs[:-1]:
        h = np.tanh(x @ Wx + h @ Wh)

    def last_step_cost(W):
        hT = np.tanh(xs[-1] @ W + h @ Wh)  # h (the carry into the last step) held constant
        return np.sum(hT ** 2) + 0.1 * np.sum(hT)
    eps, want = 1e-6, np.zeros_like(Wx)
    for i in np.ndindex(Wx.shape):
        d = np.zeros_like(Wx)
        d[i] = eps
        want[i] = (last_step_cost(Wx + d) - last_step_cost(Wx - d)) / (2 * eps)
    np.testing.assert_allclose(ref.f(xs), want, rtol=1e-6, atol=1e-9)
    full = flowml.loads(TRUNCATED.replace(", truncate=K", ""), backend=backend)
    long = flowml.loads(TRUNCATED.replace("truncate=K", "truncate=6"), backend=backend)
    np.testing.assert_allclose(long.f(xs), full.f(xs), rtol=1e-12)
    assert not np.allclose(ref.f(xs), full.f(xs))


def test_truncate_must_be_a_positive_integer():
    with pytest.raises(flowml.FlowTypeError, match="truncate must be a positive integer"):
        flowml.loads(TRUNCATED.replace("truncate=K", "truncate=0"))
