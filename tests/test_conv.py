"""Convolution and pooling: `conv2d` and `max_pool2d` (with their derivative ops
conv2d_backprop_input / conv2d_backprop_filter and max_pool2d_backprop / max_pool2d_tangent),
and examples/lenet.flow.

Values are compared with naive loop implementations (one output pixel at a time) over shapes,
strides, paddings and channel counts, symbolic batch and image sizes included; derivatives with
finite differences (first and second order, reverse and forward mode), the tie convention of
max-pooling with its forward/reverse consistency; type errors name the shapes; LeNet trains on
every backend as on the reference, and as its numpy reference (examples/reference/lenet_numpy.py)
with hand-written backpropagation, step for step.
"""

from __future__ import annotations

import os
import re
import sys

import numpy as np
import pytest

import flowml
from flowml.ir import lib as L
from flowml.ir import ops as P
from flowml.ir.graph import Graph
from flowml.ir.types import TensorType
from flowml.passes.rop import lop, rop
from autodiff_helpers import Case, check_dot_product, check_hvp, check_jvp, values
from helpers import assert_same, check_grad, opencl_param, run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LENET = os.path.join(ROOT, "examples", "lenet.flow")
DATA = os.path.join(ROOT, "examples", "data", "digits.npz")
sys.path.insert(0, os.path.join(ROOT, "examples", "reference"))


NATIVE = ["llvm", opencl_param()]


# ----------------------------------------------------------------- naive implementations


def naive_conv2d(x, w, stride=(1, 1), pads=((0, 0), (0, 0))):
    (pt, pb), (pl, pr) = pads
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    n, c, h, wd = xp.shape
    f, _, kh, kw = w.shape
    sh, sw = stride
    oh, ow = (h - kh) // sh + 1, (wd - kw) // sw + 1
    out = np.zeros((n, f, oh, ow), dtype=np.result_type(x, w))
    for b in range(n):
        for k in range(f):
            for i in range(oh):
                for j in range(ow):
                    out[b, k, i, j] = np.sum(xp[b, :, i * sh:i * sh + kh, j * sw:j * sw + kw] * w[k])
    return out


def same_pads(h, k, s):
    """TensorFlow's "same": ceil(h / s) outputs, the odd padding row at the end."""
    total = max((-(-h // s) - 1) * s + k - h, 0)
    return total // 2, total - total // 2


def naive_max_pool2d(x, window, stride):
    kh, kw = window
    sh, sw = stride
    h, w = x.shape[-2:]
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    out = np.zeros(x.shape[:-2] + (oh, ow), dtype=x.dtype)
    for i in range(oh):
        for j in range(ow):
            out[..., i, j] = x[..., i * sh:i * sh + kh, j * sw:j * sw + kw].max(axis=(-2, -1))
    return out


def naive_max_pool2d_grad(x, g, window, stride):
    """Each window's g split evenly between its maxima."""
    kh, kw = window
    sh, sw = stride
    gx = np.zeros(x.shape)
    for idx in np.ndindex(*g.shape):
        lead, (i, j) = idx[:-2], idx[-2:]
        win = x[lead + (slice(i * sh, i * sh + kh), slice(j * sw, j * sw + kw))]
        mask = win == win.max()
        gx[lead + (slice(i * sh, i * sh + kh), slice(j * sw, j * sw + kw))] += g[idx] * mask / mask.sum()
    return gx


RNG = np.random.default_rng(0)


def rand(*shape, dtype=np.float64):
    return RNG.standard_normal(shape).astype(dtype)


# ----------------------------------------------------------------- values

CONV_CASES = [  # x shape, w shape, stride, padding (as given to conv2d)
    ((1, 1, 5, 5), (1, 1, 3, 3), 1, "valid"),
    ((2, 3, 7, 6), (4, 3, 3, 2), 1, "valid"),
    ((2, 3, 7, 6), (4, 3, 3, 2), 2, "valid"),
    ((2, 2, 8, 9), (3, 2, 3, 3), (2, 3), "valid"),
    ((2, 2, 6, 7), (3, 2, 3, 3), 1, "same"),
    ((2, 2, 6, 7), (3, 2, 2, 4), 1, "same"),         # even kernels: the extra row at the end
    ((2, 2, 7, 8), (3, 2, 3, 2), 2, "same"),
    ((1, 2, 5, 5), (2, 2, 3, 3), 1, 1),
    ((1, 2, 5, 6), (2, 2, 3, 3), 2, (2, 1)),
    ((2, 1, 4, 5), (2, 1, 2, 3), (1, 2), ((0, 1), (2, 0))),
    ((3, 4, 3, 3), (5, 4, 3, 3), 1, "valid"),        # 1x1 output
    ((2, 3, 4, 4), (2, 3, 1, 1), 1, "valid"),        # 1x1 kernel
]


def _pads_of(xs, ws, stride, padding):
    stride = (stride, stride) if isinstance(stride, int) else stride
    if padding == "valid":
        return stride, ((0, 0), (0, 0))
    if padding == "same":
        return stride, tuple(same_pads(xs[2 + i], ws[2 + i], stride[i]) for i in range(2))
    if isinstance(padding, int):
        return stride, ((padding, padding),) * 2
    if isinstance(padding[0], int):
        return stride, tuple((p, p) for p in padding)
    return stride, padding


@pytest.mark.parametrize("xs, ws, stride, padding", CONV_CASES)
def test_conv2d_matches_a_naive_loop(xs, ws, stride, padding):
    x, w = rand(*xs), rand(*ws)
    got, out = run(lambda a, b: L.conv2d(a, b, stride, padding), x, w)
    assert_same(got, naive_conv2d(x, w, *_pads_of(xs, ws, stride, padding)), out, rtol=1e-12, atol=1e-12)
    if padding == "same" and stride in (1, (1, 1)):
        assert got.shape[2:] == xs[2:]


def test_conv2d_f32_and_mixed_dtypes():
    x32, w32, w64 = rand(2, 3, 6, 6, dtype=np.float32), rand(4, 3, 3, 3, dtype=np.float32), rand(4, 3, 3, 3)
    got, out = run(lambda a, b: L.conv2d(a, b), x32, w32)
    assert_same(got, naive_conv2d(x32, w32), out, rtol=1e-5, atol=1e-5)
    got, out = run(lambda a, b: L.conv2d(a, b), x32, w64)
    assert_same(got, naive_conv2d(x32.astype(np.float64), w64), out)
    xi = RNG.integers(0, 5, (1, 3, 4, 4))
    got, out = run(lambda a, b: L.conv2d(a, b), xi, w64)            # integers convolve as f64
    assert_same(got, naive_conv2d(xi.astype(np.float64), w64), out)


POOL_CASES = [  # x shape, window, stride
    ((2, 3, 6, 6), 2, None),
    ((2, 3, 7, 5), 2, None),            # partial windows at the border are dropped
    ((1, 2, 6, 7), (2, 3), None),
    ((1, 2, 7, 7), 3, 2),               # overlapping windows
    ((1, 1, 5, 6), (3, 2), (1, 2)),
    ((3, 5, 5), 2, 1),                  # any leading axes: the last two are pooled
    ((4, 4), 4, None),
]


@pytest.mark.parametrize("xs, window, stride", POOL_CASES)
def test_max_pool2d_matches_a_naive_loop(xs, window, stride):
    x = rand(*xs)
    win = (window, window) if isinstance(window, int) else window
    st = win if stride is None else ((stride, stride) if isinstance(stride, int) else stride)
    got, out = run(lambda a: L.max_pool2d(a, window, stride), x)
    assert_same(got, naive_max_pool2d(x, win, st), out)
    xi = RNG.integers(-9, 9, xs)
    got, out = run(lambda a: L.max_pool2d(a, window, stride), xi)   # keeps the dtype
    assert_same(got, naive_max_pool2d(xi, win, st), out)


def test_symbolic_batch_and_image_sizes():
    """f64[N, C, H, W]: N passes through; image dims become derived dims, bound at call time."""
    flowml.reset_default_graph()
    x = flowml.tensor("x", "f64[N, 2, H, W]")
    w = flowml.param("w", rand(3, 2, 3, 3))
    a = L.conv2d(x, w)
    b = L.max_pool2d(a, 2)
    c = L.conv2d(x, w, stride=2, padding=1)
    d = L.conv2d(x, w, padding="same")
    assert str(a.type) == "f64[N, 3, H-2, W-2]" and str(d.type) == "f64[N, 3, H, W]"
    assert str(b.type) == "f64[N, 3, (H-2-2)//2+1, (W-2-2)//2+1]"
    f = flowml.function([x], [a, b, c, d])
    wv = flowml.get_value(w)
    for shape in [(2, 2, 7, 9), (1, 2, 6, 6), (3, 2, 8, 8)]:
        xv = rand(*shape)
        av, bv, cv, dv = f(xv)
        np.testing.assert_allclose(av, naive_conv2d(xv, wv), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(bv, naive_max_pool2d(av, (2, 2), (2, 2)))
        np.testing.assert_allclose(cv, naive_conv2d(xv, wv, (2, 2), ((1, 1), (1, 1))), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(dv, naive_conv2d(xv, wv, (1, 1), ((1, 1), (1, 1))), rtol=1e-12, atol=1e-12)


def test_the_language_takes_strides_and_paddings():
    model = flowml.loads("""
input x : f64[N, 1, 8, 8]
param w : f64[4, 1, 3, 3] = normal(0, 1)
fn f(x) -> (conv2d(x, w), conv2d(x, w, stride=2), conv2d(x, w, padding="same"), conv2d(x, w, 2, (1, 0)),
            max_pool2d(x, 2), max_pool2d(x, (3, 2), stride=1))
""")
    x, w = rand(5, 1, 8, 8), model.params["w"]
    a, b, c, d, e, f = model.f(x)
    np.testing.assert_allclose(a, naive_conv2d(x, w), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(b, naive_conv2d(x, w, (2, 2)), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(c, naive_conv2d(x, w, (1, 1), ((1, 1), (1, 1))), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(d, naive_conv2d(x, w, (2, 2), ((1, 1), (0, 0))), rtol=1e-12, atol=1e-12)
    assert e.shape == (5, 1, 4, 4) and f.shape == (5, 1, 6, 7)
    np.testing.assert_allclose(f, naive_max_pool2d(x, (3, 2), (1, 1)))


# ----------------------------------------------------------------- derivatives

GRAD_CASES = [  # a subset of CONV_CASES, small enough for entrywise finite differences
    ((2, 2, 5, 4), (3, 2, 3, 2), 1, "valid"),
    ((1, 2, 6, 5), (2, 2, 3, 3), 2, "valid"),        # stride 2 leaves a row and a column unused
    ((1, 2, 5, 6), (2, 2, 2, 3), 1, "same"),
    ((2, 1, 5, 5), (2, 1, 3, 3), (2, 1), ((0, 1), (2, 0))),
]


@pytest.mark.parametrize("xs, ws, stride, padding", GRAD_CASES)
def test_conv2d_gradient_matches_finite_differences(xs, ws, stride, padding):
    check_grad(lambda a, b: L.conv2d(a, b, stride, padding), rand(*xs), rand(*ws))


@pytest.mark.parametrize("xs, window, stride", [((2, 2, 6, 6), 2, None), ((1, 2, 7, 6), 3, 2), ((3, 5, 5), 2, 1)])
def test_max_pool2d_gradient_matches_finite_differences(xs, window, stride):
    x = RNG.permutation(np.prod(xs)).reshape(xs) * 0.01   # distinct values: one maximum per window
    check_grad(lambda a: L.max_pool2d(a, window, stride), x)


def _layer(x, w, stride=1, padding="valid"):
    return L.max_pool2d(L.tanh(L.conv2d(x, w, stride, padding)), 2, 1)


def test_a_conv_pool_stack_gradient_and_second_derivatives():
    """Two layers: gradient by finite differences; H·v (forward over reverse, through the VJPs
    of the backprop ops) by differences of the gradient; J·v and the dot-product test."""
    x, w1, w2 = rand(2, 2, 7, 7), rand(3, 2, 3, 3) * 0.5, rand(2, 3, 2, 2) * 0.5

    def net(a, b, c):
        return _layer(_layer(a, b, 1, "same"), c, 2, 1)

    check_grad(net, x, w1, w2)
    case = Case(net, [x, w1, w2])
    check_jvp(case, rtol=1e-6, atol=1e-8)
    check_dot_product(case)
    check_hvp(case, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("op", ["conv2d", "conv2d_backprop_input", "conv2d_backprop_filter"])
def test_conv_derivative_ops_jvp_and_hessian(op):
    xs, ws, stride, pads = (2, 2, 6, 5), (3, 2, 3, 2), (2, 1), ((1, 0), (0, 1))
    gs = P.conv2d.infer([TensorType(np.dtype("f8"), xs), TensorType(np.dtype("f8"), ws)],
                        {"stride": stride, "padding": pads}).shape
    fn, arrays = {
        "conv2d": (lambda a, b: L.conv2d(a, b, stride, pads), [rand(*xs), rand(*ws)]),
        "conv2d_backprop_input": (lambda g, b: L.conv2d_backprop_input(g, b, xs[2:], stride, pads),
                                  [rand(*gs), rand(*ws)]),
        "conv2d_backprop_filter": (lambda a, g: L.conv2d_backprop_filter(a, g, ws[2:], stride, pads),
                                   [rand(*xs), rand(*gs)]),
    }[op]
    case = Case(lambda a, b: L.tanh(fn(a, b)), arrays, label=op)  # tanh: a nonzero second derivative
    check_jvp(case)
    check_dot_product(case)
    check_hvp(case)


def test_backprop_ops_are_the_transposes_of_conv2d():
    """<g, conv2d(x, w)> = <conv2d_backprop_input(g, w), x> = <conv2d_backprop_filter(x, g), w>."""
    for xs, ws, stride, padding in CONV_CASES:
        stride_, pads = _pads_of(xs, ws, stride, padding)
        x, w = rand(*xs), rand(*ws)
        y = naive_conv2d(x, w, stride_, pads)
        g = rand(*y.shape)
        gx = P.conv2d_backprop_input.impl(g, w, xs[2:], stride_, pads, env={})
        gw = P.conv2d_backprop_filter.impl(x, g, ws[2:], stride_, pads)
        t = np.sum(g * y)
        assert np.isclose(np.sum(gx * x), t, rtol=1e-12) and np.isclose(np.sum(gw * w), t, rtol=1e-12)


def test_max_pool2d_ties_split_the_derivative_evenly():
    x = np.array([[[[1.0, 3.0, 0.0, 0.0],
                    [3.0, 2.0, 0.0, 0.0],
                    [5.0, 5.0, 1.0, 2.0],
                    [5.0, 5.0, 0.0, 0.0]]]])
    g = np.array([[[[1.0, 2.0], [4.0, 8.0]]]])
    graph = Graph()
    xv = L.input(graph, "x", TensorType(np.dtype("f8"), x.shape))
    gv = L.input(graph, "g", TensorType(np.dtype("f8"), g.shape))
    tv = L.input(graph, "t", TensorType(np.dtype("f8"), x.shape))
    y = L.max_pool2d(xv, 2)
    gx = lop(y, xv, gv)
    jv = rop(y, xv, tv)
    t = np.arange(16.0).reshape(x.shape)
    gxv, jvv = values(graph, [gx, jv], {"x": x, "g": g, "t": t})
    want = np.array([[[[0, 0.5, 0.5, 0.5], [0.5, 0, 0.5, 0.5], [1, 1, 0, 8], [1, 1, 0, 0]]]])
    np.testing.assert_allclose(gxv, want)
    np.testing.assert_allclose(gxv, naive_max_pool2d_grad(x, g, (2, 2), (2, 2)))
    # forward mode: the mean of the tangent over the ties
    np.testing.assert_allclose(jvv, [[[[(1 + 4) / 2, (2 + 3 + 6 + 7) / 4], [(8 + 9 + 12 + 13) / 4, 11]]]])


@pytest.mark.parametrize("window, stride", [(2, None), (3, 1), ((2, 3), (1, 2))])
def test_max_pool2d_ties_forward_and_reverse_agree(window, stride):
    """At ties no finite difference applies, but J·v and Jᵀ·u follow the same convention."""
    rng = np.random.default_rng(3)
    for seed in range(5):
        x = rng.choice([-1.0, 0.0, 1.0], size=(2, 2, 6, 7))
        check_dot_product(Case(lambda a: L.max_pool2d(a, window, stride), [x]), seed=seed)
        wn = (window, window) if isinstance(window, int) else window
        st = wn if stride is None else ((stride, stride) if isinstance(stride, int) else stride)
        g = rng.standard_normal(naive_max_pool2d(x, wn, st).shape)
        got = P.max_pool2d_backprop.impl(x, P.max_pool2d.impl(x, wn, st), g, wn, st)
        np.testing.assert_allclose(got, naive_max_pool2d_grad(x, g, wn, st), rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------- errors


def _type_error(src):
    with pytest.raises(flowml.FlowTypeError) as info:
        flowml.loads(src, file="model.flow")
    return str(info.value)


def test_channel_mismatch_names_the_shapes():
    msg = _type_error("input x : f64[N, 3, 8, 8]\nparam w : f64[20, 1, 3, 3] = zeros\nfn f(x) -> conv2d(x, w)\n")
    assert msg.startswith("model.flow:3:12: cannot convolve f64[N, 3, 8, 8] with f64[20, 1, 3, 3]: "
                          "x has 3 channels but the filters expect 1"), msg
    assert "conv2d(x, w)" in msg  # the source line, with a caret under it


@pytest.mark.parametrize("decl, call, expected", [
    ("input x : f64[N, 8, 8]\nparam w : f64[2, 1, 3, 3] = zeros", "conv2d(x, w)",
     "cannot convolve f64[N, 8, 8] with f64[2, 1, 3, 3]: conv2d takes images x [N, C, H, W]"),
    ("input x : f64[N, 1, 2, 8]\nparam w : f64[2, 1, 3, 3] = zeros", "conv2d(x, w)",
     "the window (3) is larger than the input (2)"),
    ("input x : f64[N, 1, 8, 8]\nparam w : f64[2, 1, 3, 3] = zeros", 'conv2d(x, w, padding="full")',
     'padding must be "valid", "same", an integer or pairs of integers, not "full"'),
    ("input x : f64[N, 1, 8, 8]\nparam w : f64[2, 1, 3, 3] = zeros", "conv2d(x, w, stride=0)",
     "conv2d's stride must be at least 1"),
    ("input x : f64[N, 1, 8, 8]\nparam w : f64[2, 1, 3, 3] = zeros", "conv2d(x, w, padding=-1)",
     "conv2d's padding must not be negative"),
    ("input x : f64[N, 1, H, H]\nparam w : f64[2, 1, 3, 3] = zeros", 'conv2d(x, w, stride=2, padding="same")',
     'padding="same" with stride 2 needs a fixed image size, not H'),
    ("input x : f64[N, 1, 8, 8]\ninput w : f64[2, 1, K, K]", "conv2d(x, w)",
     "conv2d: the filters f64[2, 1, K, K] need a fixed kernel size"),
    ("input x : bool[N, 1, 8, 8]", "max_pool2d(x, 2)", "cannot max-pool bool[N, 1, 8, 8]: bools are not supported"),
    ("input x : f64[N, 1, 3, 8]", "max_pool2d(x, 4)",
     "max_pool2d of f64[N, 1, 3, 8] with window (4, 4): the window (4) is larger than the input (3)"),
    ("input x : f64[8]", "max_pool2d(x, 2)", "cannot max-pool f64[8]: max_pool2d pools the last two axes"),
    ("input x : f64[N, 1, 8, 8]", "max_pool2d(x, 0)", "max_pool2d's window and stride must be at least 1"),
    ("input x : f64[N, 1, 8, 8]", "max_pool2d(x, (2, 2, 2))", "max_pool2d's window must be an integer or a pair"),
])
def test_type_errors(decl, call, expected):
    inputs = [line.split()[1] for line in decl.splitlines() if line.startswith("input")]
    msg = _type_error(f"{decl}\nfn f({', '.join(inputs)}) -> {call}\n")
    assert expected in msg, msg
    assert msg.startswith("model.flow:"), msg


def test_the_primitives_type_rules_check_their_operands():
    """What the library functions never build (they cast images and filters to one float dtype,
    and pass the derivative ops consistent shapes) is still refused by the primitives."""
    g = Graph()
    xi = L.input(g, "xi", TensorType(np.dtype("i8"), (2, 1, 5, 5)))
    x = L.input(g, "x", TensorType(np.dtype("f8"), (2, 1, 5, 5)))
    w = L.input(g, "w", TensorType(np.dtype("f8"), (3, 1, 3, 3)))
    cases = [
        (lambda: L.apply(P.conv2d, [xi, w], stride=(1, 1), padding=((0, 0), (0, 0))), "conv2d needs float arrays"),
        (lambda: L.conv2d_backprop_input(L.conv2d(x, w), w, (6, 5), (1, 1), ((0, 0), (0, 0))),
         "is not the output of a convolution of [6, 5] images"),
        (lambda: L.conv2d_backprop_filter(x, L.conv2d(x, w), (2, 2), (1, 1), ((0, 0), (0, 0))),
         "is not the output of a convolution of f64[2, 1, 5, 5] with [2, 2] filters"),
        (lambda: L.max_pool2d_backprop(x, L.max_pool2d(x, 2), x, (2, 2), (2, 2)),
         "the cotangent f64[2, 1, 5, 5] has not the shape of the pooled f64[2, 1, 2, 2]"),
    ]
    for build, expected in cases:
        with pytest.raises(flowml.FlowTypeError, match=re.escape(expected)):
            build()


# ----------------------------------------------------------------- backends


SMALL = """
input x : f64[N, 2, 7, 7]
input y : i64[N]
param w : f64[3, 2, 3, 3] = normal(0, 0.5)
param v : f64[4, 3, 2, 2] = normal(0, 0.5)
h = max_pool2d(tanh(conv2d(x, w, padding="same")), 3, 2)
z = max_pool2d(conv2d(h, v, stride=2, padding=1), 2, 1)
cost = mean(categorical_crossentropy(reshape(z, (N, 4)), y))
gx, gw, gv = grad(cost, x, w, v)
fn f(x, y) -> cost, h, z, gx, gw, gv {
    w <- w - 0.1 * gw
    v <- v - 0.1 * gv
}
"""


@pytest.mark.parametrize("backend", NATIVE)
def test_native_backends_give_the_references_results(backend):
    ref, nat = flowml.loads(SMALL, backend="reference"), flowml.loads(SMALL, backend=backend)
    rng = np.random.default_rng(1)
    for n in (4, 1, 3):
        x, y = rng.standard_normal((n, 2, 7, 7)), rng.integers(0, 4, n)
        for got, want in zip(nat.f(x, y), ref.f(x, y)):
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    for p in ref.params:
        np.testing.assert_allclose(nat.params[p], ref.params[p], rtol=1e-10, atol=1e-12)


def _digits(rows):
    d = np.load(DATA)
    return d["X"][:rows].astype(np.float64), d["y"][:rows].astype(np.int64)


def _epoch(model, X, y, batch=20, seed=0):
    order = np.random.RandomState(seed).permutation(len(X))
    return [float(model.train(X[order[s:s + batch]], y[order[s:s + batch]])) for s in range(0, len(X), batch)]


def test_lenet_trains_and_the_loss_falls():
    from flowml.train import Phase, train
    X, y = _digits(300)
    model = flowml.load(LENET, backend="llvm")
    history = train(model, {"X": X, "y": y}, [Phase("train", 2)], 20, 200, "error", progress=False)
    assert history.loss[1] < history.loss[0] < np.log(10) + 0.01
    assert history.test[1] < 0.9


@pytest.mark.parametrize("backend", NATIVE)
def test_lenet_epoch_on_a_native_backend_matches_the_reference(backend):
    X, y = _digits(200)
    ref, nat = flowml.load(LENET, backend="reference"), flowml.load(LENET, backend=backend)
    np.testing.assert_allclose(_epoch(nat, X, y), _epoch(ref, X, y), rtol=1e-10)
    for p in ref.params:
        np.testing.assert_allclose(nat.params[p], ref.params[p], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(nat.error(X, y), ref.error(X, y))


def test_lenet_matches_its_numpy_reference_step_for_step():
    """From the numpy reference's initial params, flowml's steps (symbolic derivatives) and the
    reference's (hand-written backpropagation) give the same costs and params."""
    import lenet_numpy as R
    X, y = _digits(240)
    p = R.init_params(7)
    p["W3"] = np.random.default_rng(0).uniform(-0.1, 0.1, (100, 10))  # so that every layer learns from step 1
    model = flowml.load(LENET, backend="llvm")
    for k, v in p.items():
        model.params[k] = v.copy()
    order = np.random.RandomState(0).permutation(len(X))
    for s in range(0, len(X), 20):
        idx = order[s:s + 20]
        want = R.train_step(p, X[idx] / 16, y[idx])
        assert np.isclose(float(model.train(X[idx], y[idx])), want, rtol=1e-12)
    for k in p:
        np.testing.assert_allclose(model.params[k], p[k], rtol=1e-9, atol=1e-12, err_msg=k)
    assert np.isclose(float(model.error(X, y)), R.error(p, X / 16, y))
