"""The LLVM backend's convolutions and pooling (flowml/backends/llvm/lowering/conv.py): conv2d,
conv2d_backprop_input, conv2d_backprop_filter (im2col + BLAS gemm), max_pool2d and its
backprop / tangent (window kernels) against the reference backend.

Every function here is checked to run natively (no host step). Convolutions: shapes, strides,
paddings (rows and columns entirely in the padding, strides that skip pixels), batch 1 (no
regrouping) and more, f32 and f64, random geometries (hypothesis), symbolic batch and image
sizes, a convolution inside a loop's body; within a gemm's rounding of the reference. Pooling:
the same bits as the reference, ties and NaN included (the backprop and tangent add in the
reference's order). Large enough inputs to split over two threads give the same bits as one.
Derivatives of a small conv net on LLVM against finite differences, and its second derivatives
(forward over reverse) against the reference backend.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flowml
from flowml.ir import lib as L
from flowml.passes.rop import rop
from helpers import build, numeric_grad, projection

CONV_OPS = {"conv2d", "conv2d_backprop_input", "conv2d_backprop_filter"}
POOL_OPS = {"max_pool2d", "max_pool2d_backprop", "max_pool2d_tangent"}


@pytest.fixture(autouse=True)
def _one_thread_count(monkeypatch):
    monkeypatch.delenv("FLOWML_NUM_THREADS", raising=False)


def native_and_reference(fn, arrays, ops=CONV_OPS | POOL_OPS):
    """`fn` of inputs typed like `arrays`, compiled on LLVM (asserted to have no host step and to
    lower at least one of `ops`) and on the reference backend."""
    xs, out = build(fn, arrays)
    nat = flowml.function(xs, out, backend="llvm")
    ref = flowml.function(xs, out, backend="reference")
    ex = nat._executable
    assert not ex.host_steps(), f"host steps: {ex.host_steps()}"
    lowered = {ex.graph.op(s.node).name for s in ex.program.steps if s.kind == "native"}
    assert lowered & ops, f"none of {sorted(ops)} in {sorted(lowered)}"
    return nat, ref


def outputs(result):
    return [np.asarray(r) for r in (result if isinstance(result, (tuple, list)) else (result,))]


def close(got, want, dtype):
    """Within a gemm's rounding: relative to the result's scale (sums of products of O(1) terms)."""
    assert got.dtype == want.dtype and got.shape == want.shape
    scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
    tol = 2e-5 if np.dtype(dtype) == np.float32 else 1e-12
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale)


def pads_of(padding):
    if isinstance(padding, int):
        return ((padding, padding),) * 2
    if isinstance(padding[0], int):
        return tuple((p, p) for p in padding)
    return tuple(padding)


def stride_of(stride):
    return (stride, stride) if isinstance(stride, int) else tuple(stride)


def out_hw(xs, ws, stride, pads):
    return tuple((xs[2 + i] + sum(pads[i]) - ws[2 + i]) // stride[i] + 1 for i in range(2))


# ----------------------------------------------------------------- convolutions

CONV_CASES = [  # x shape, w shape, stride, padding ((top, bottom), (left, right) or shorter)
    ((1, 1, 5, 5), (1, 1, 3, 3), 1, 0),
    ((2, 3, 7, 6), (4, 3, 3, 2), 1, 0),
    ((2, 3, 7, 6), (4, 3, 3, 2), 2, 0),
    ((3, 2, 8, 9), (3, 2, 3, 3), (2, 3), 0),
    ((2, 2, 6, 7), (3, 2, 3, 3), 1, 1),
    ((2, 2, 6, 7), (3, 2, 2, 4), 1, ((0, 1), (1, 2))),
    ((1, 2, 5, 6), (2, 2, 3, 3), 2, (2, 1)),
    ((2, 1, 4, 5), (2, 1, 2, 3), (1, 2), ((0, 1), (2, 0))),
    ((3, 4, 3, 3), (5, 4, 3, 3), 1, 0),                 # 1x1 output
    ((2, 3, 4, 4), (2, 3, 1, 1), 1, 0),                 # 1x1 kernel
    ((2, 1, 3, 4), (2, 1, 2, 2), 1, 3),                 # rows and columns only of padding
    ((2, 2, 9, 10), (3, 2, 2, 2), 3, 0),                # stride > kernel: pixels no window reads
    ((1, 3, 11, 7), (2, 3, 5, 3), (3, 2), ((2, 0), (0, 1))),
]


def _conv_fn(xs, ws, stride, padding):
    stride, pads = stride_of(stride), pads_of(padding)

    def fn(x, w, g):
        return [L.conv2d(x, w, stride, pads), L.conv2d_backprop_input(g, w, xs[2:], stride, pads),
                L.conv2d_backprop_filter(x, g, ws[2:], stride, pads)]
    return fn, stride, pads


def check_conv(xs, ws, stride, padding, dtype, seed=0):
    fn, stride, pads = _conv_fn(xs, ws, stride, padding)
    gs = (xs[0], ws[0]) + out_hw(xs, ws, stride, pads)
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(s).astype(dtype) for s in (xs, ws, gs)]
    nat, ref = native_and_reference(fn, arrays, CONV_OPS)
    for got, want in zip(outputs(nat(*arrays)), outputs(ref(*arrays))):
        close(got, want, dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("xs, ws, stride, padding", CONV_CASES)
def test_convolutions_match_the_reference(xs, ws, stride, padding, dtype):
    check_conv(xs, ws, stride, padding, dtype)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_geometries_match_the_reference(data):
    d = data.draw
    n, c, f = d(st.integers(1, 3)), d(st.integers(1, 3)), d(st.integers(1, 4))
    kh, kw = d(st.integers(1, 4)), d(st.integers(1, 4))
    sh, sw = d(st.integers(1, 3)), d(st.integers(1, 3))
    pads = tuple((d(st.integers(0, 2)), d(st.integers(0, 2))) for _ in range(2))
    h = d(st.integers(max(1, kh - sum(pads[0])), 9))
    w = d(st.integers(max(1, kw - sum(pads[1])), 9))
    check_conv((n, c, h, w), (f, c, kh, kw), (sh, sw), pads, d(st.sampled_from([np.float32, np.float64])))


def test_symbolic_batch_and_image_sizes():
    """f64[N, 2, H, W]: the scratch matrices are sized at each call's dims."""
    flowml.reset_default_graph()
    x = flowml.tensor("x", "f64[N, 2, H, W]")
    w = flowml.param("w", np.random.default_rng(0).standard_normal((3, 2, 3, 3)))
    y = L.conv2d(x, w, 2, 1)
    outs = [y, L.max_pool2d(L.tanh(L.conv2d(x, w)), 2), flowml.grad(flowml.sum(y * y), [x, w])[0],
            flowml.grad(flowml.sum(y * y), [w])[0]]
    nat = flowml.function([x], outs, backend="llvm")
    ref = flowml.function([x], outs, backend="reference")
    assert not nat._executable.host_steps()
    for shape in [(2, 2, 7, 9), (1, 2, 6, 6), (4, 2, 8, 5)]:
        xv = np.random.default_rng(1).standard_normal(shape)
        for got, want in zip(outputs(nat(xv)), outputs(ref(xv))):
            close(got, want, np.float64)


def test_a_convolution_in_a_loop_body():
    """A conv net applied at each step of a scan (its scratch buffers are the body's), and its
    BPTT gradient."""
    src = """
input xs : f64[T, 2, 1, 6, 6]
param w : f64[3, 1, 3, 3] = normal(0, 1)
def step(h, x) = h + max_pool2d(tanh(conv2d(x, w)), 2)
hs = scan(step, zeros((2, 3, 2, 2)), xs)
cost = sum(hs[-1] * hs[-1])
fn f(xs) -> hs, grad(cost, w)
"""
    nat, ref = flowml.loads(src, backend="llvm", seed=0), flowml.loads(src, backend="reference", seed=0)
    assert not nat.functions["f"]._executable.host_steps()
    xs = np.random.default_rng(2).standard_normal((4, 2, 1, 6, 6))
    for got, want in zip(outputs(nat.f(xs)), outputs(ref.f(xs))):
        close(got, want, np.float64)


def test_a_convolution_on_one_side_of_an_if():
    """Only the taken side runs; its convolution's scratch is the function's."""
    src = """
input x : f64[N, 1, 6, 6]
input k : i64
param w : f64[2, 1, 3, 3] = normal(0, 1)
fn f(x, k) -> if k > 0 then sum(max_pool2d(conv2d(x, w, padding="same"), 2), axis=0) else zeros((2, 3, 3))
"""
    nat, ref = flowml.loads(src, backend="llvm", seed=1), flowml.loads(src, backend="reference", seed=1)
    assert not nat.functions["f"]._executable.host_steps()
    x = np.random.default_rng(4).standard_normal((3, 1, 6, 6))
    for k in (1, 0):
        close(np.asarray(nat.f(x, k)), np.asarray(ref.f(x, k)), np.float64)


# ----------------------------------------------------------------- pooling

POOL_CASES = [  # x shape, window, stride (None: the window)
    ((2, 3, 6, 6), 2, None),
    ((1, 2, 7, 6), 3, 2),
    ((3, 5, 5), 2, 1),                                  # overlapping windows
    ((2, 2, 5, 7), (2, 3), (1, 2)),
    ((4, 4), 2, None),                                  # a single plane
    ((2, 1, 9, 9), 2, 3),                               # stride > window
    ((1, 1, 3, 3), 3, None),                            # one window
]


def _pool_fn(window, stride):
    def fn(x, g, t):
        win = stride_of(window)
        st_ = win if stride is None else stride_of(stride)
        out = L.max_pool2d(x, win, st_)
        return [out, L.max_pool2d_backprop(x, out, g, win, st_), L.max_pool2d_tangent(x, out, t, win, st_)]
    return fn


def _pool_inputs(xs, window, stride, dtype, seed, nan=True):
    rng = np.random.default_rng(seed)
    x = rng.choice([-1.0, 0.0, 1.0, 2.0], size=xs).astype(dtype)  # ties in most windows
    if nan:
        x.reshape(-1)[rng.integers(0, x.size, max(1, x.size // 20))] = np.nan
    win = stride_of(window)
    st_ = win if stride is None else stride_of(stride)
    oh, ow = ((xs[-2] - win[0]) // st_[0] + 1, (xs[-1] - win[1]) // st_[1] + 1)
    g = rng.standard_normal(xs[:-2] + (oh, ow)).astype(dtype)
    t = rng.standard_normal(xs).astype(dtype)
    return [x, g, t]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("xs, window, stride", POOL_CASES)
def test_pooling_gives_the_reference_bits(xs, window, stride, dtype):
    arrays = _pool_inputs(xs, window, stride, dtype, seed=len(xs) + xs[-1])
    nat, ref = native_and_reference(_pool_fn(window, stride), arrays, POOL_OPS)
    for got, want in zip(outputs(nat(*arrays)), outputs(ref(*arrays))):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)  # (NaN where the reference has NaN)


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_max_pool2d_of_integers(dtype):
    x = np.random.default_rng(3).integers(-50, 50, (2, 3, 7, 8)).astype(dtype)
    nat, ref = native_and_reference(lambda a: L.max_pool2d(a, (2, 3), (2, 1)), [x], POOL_OPS)
    got, want = nat(x), ref(x)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


# ----------------------------------------------------------------- threads


def test_two_threads_give_the_bits_of_one(monkeypatch):
    """Inputs large enough that im2col, col2im and the pooling kernels are split over threads."""
    xs, ws, stride, pads = (16, 4, 40, 40), (6, 4, 3, 3), (1, 1), ((1, 1), (1, 1))
    rng = np.random.default_rng(5)
    x, w = rng.standard_normal(xs), rng.standard_normal(ws)
    g = rng.standard_normal((16, 6) + out_hw(xs, ws, stride, pads))
    xp = rng.choice([0.0, 1.0, 2.0], size=xs)
    gp, tp = rng.standard_normal((16, 4, 20, 20)), rng.standard_normal(xs)

    def fn(x, w, g, xp, gp, tp):
        conv, _, _ = _conv_fn(xs, ws, stride, pads)
        return conv(x, w, g) + _pool_fn(2, None)(xp, gp, tp)

    arrays = [x, w, g, xp, gp, tp]
    runs = []
    for threads in ("1", "2"):
        monkeypatch.setenv("FLOWML_NUM_THREADS", threads)
        nat, ref = native_and_reference(fn, arrays)
        runs.append(outputs(nat(*arrays)))
    for a, b in zip(*runs):
        assert a.tobytes() == b.tobytes()
    want = outputs(ref(*arrays))
    for got, w_ in zip(runs[1][:3], want[:3]):
        close(got, w_, np.float64)
    for got, w_ in zip(runs[1][3:], want[3:]):
        np.testing.assert_array_equal(got, w_)


# ----------------------------------------------------------------- derivatives on LLVM


def _net(x, w1, w2):
    h = L.max_pool2d(L.tanh(L.conv2d(x, w1, 1, ((1, 1), (1, 1)))), 2, 1)
    return L.max_pool2d(L.tanh(L.conv2d(h, w2, 2, ((1, 1), (1, 1)))), 2, 1)


def _net_inputs():
    rng = np.random.default_rng(7)
    return [rng.standard_normal((2, 2, 7, 7)), rng.standard_normal((3, 2, 3, 3)) * 0.5,
            rng.standard_normal((2, 3, 2, 2)) * 0.5]


def test_a_conv_net_gradient_on_llvm_matches_finite_differences():
    arrays = _net_inputs()
    xs, out = build(_net, arrays)
    cost = flowml.sum(out * projection(out.shape))
    f_cost = flowml.function(xs, cost, backend="llvm")
    f_grads = flowml.function(xs, flowml.grad(cost, xs), backend="llvm")
    for f in (f_cost, f_grads):
        assert not f._executable.host_steps()
    scale = max(1.0, abs(float(f_cost(*arrays))))
    for i, g in enumerate(f_grads(*arrays)):
        np.testing.assert_allclose(g, numeric_grad(f_cost, arrays, i), rtol=1e-5, atol=1e-6 * scale,
                                   err_msg=f"gradient with respect to input {i}")


def test_a_conv_net_second_derivatives_on_llvm_match_the_reference():
    """H·v (forward over reverse: the tangents of the backprop ops) and J·v."""
    arrays = _net_inputs()
    rng = np.random.default_rng(8)
    vs = [rng.standard_normal(a.shape) for a in arrays]

    def fn(x, w1, w2, v0, v1, v2):
        cost = flowml.sum(_net(x, w1, w2) ** 2)
        grads = flowml.grad(cost, [x, w1, w2])
        return rop(grads, [x, w1, w2], [v0, v1, v2]) + [rop(_net(x, w1, w2), [x, w1, w2], [v0, v1, v2])]

    nat, ref = native_and_reference(fn, arrays + vs)
    lowered = {nat._executable.graph.op(s.node).name for s in nat._executable.program.steps}
    assert {"max_pool2d_tangent", "conv2d_backprop_input", "conv2d_backprop_filter"} <= lowered
    for got, want in zip(outputs(nat(*arrays, *vs)), outputs(ref(*arrays, *vs))):
        close(got, want, np.float64)
