"""Convolution and pooling: conv2d, max_pool2d, and the ops their derivatives need."""

from __future__ import annotations

import numpy as np

from .. import lib as L
from ..graph import ShapeError
from ..types import Sym, TensorType, is_float, promote, resolve_dim
from .core import Op, offset_dim, type_names


# Images are NCHW: x [N, C, H, W]; filters [F, C, KH, KW]. `conv2d` is a cross-correlation (as
# Theano's conv2d with filter_flip=False, torch's F.conv2d): out[n, f, i, j] =
# Σ_c,a,b x_pad[n, c, i·sh + a, j·sw + b] · w[f, c, a, b]. Attrs: `stride` (sh, sw) and
# `padding` ((top, bottom), (left, right)) of zeros, resolved by `lib.conv2d` ("same", ints).
#
# The three ops below are the three partial derivatives of one trilinear form
# T(x, w, g) = <g, conv2d(x, w)>: conv2d(x, w) = ∂T/∂g, conv2d_backprop_input(g, w) = ∂T/∂x (the
# transposed convolution) and conv2d_backprop_filter(x, g) = ∂T/∂w. Each is bilinear, and the
# VJPs of each are the other two, so derivatives of any order stay within these three ops.
#
# max_pool2d takes the max of each `window` (kh, kw) placed every `stride` (sh, sw) over the last
# two axes, without padding (a partial window at the border is dropped: Theano's
# ignore_border=True). Its derivative goes to the maximum of each window; ties split it evenly
# (as the max reduction does). max_pool2d_backprop(x, out, g) is its VJP (g spread back onto x)
# and max_pool2d_tangent(x, out, t) its JVP (t gathered from the maxima); each is linear in its
# last operand and the other's transpose. Their derivative with respect to x is zero wherever it
# exists (the choice of the maxima is piecewise constant), so they give none.


def _conv_out_dim(d, k, s, lo, hi, what):
    """The number of windows of size k every s along a dim d padded by lo + hi."""
    if isinstance(d, int):
        span = d + lo + hi - k
        if span < 0:
            raise ShapeError(f"{what}: the window ({k}) is larger than the {'padded ' if lo or hi else ''}"
                             f"input ({d + lo + hi})")
        return span // s + 1
    if s == 1:
        return offset_dim(d, lo + hi - k + 1)
    return Sym((f"({d}{lo + hi - k:+d})//{s}+1",))


def _window_views(xp, kh, kw, sh, sw, oh, ow):
    """The strided windows of xp over its last two axes: [..., oh, ow, kh, kw] (a view)."""
    win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(-2, -1))
    return win[..., ::sh, ::sw, :, :][..., :oh, :ow, :, :]


def _pad_hw(x, padding):
    (pt, pb), (pl, pr) = padding
    if not (pt or pb or pl or pr):
        return x
    return np.pad(x, ((0, 0),) * (x.ndim - 2) + ((pt, pb), (pl, pr)))


def _out_hw(h, w, kh, kw, stride, padding):
    (pt, pb), (pl, pr) = padding
    return (h + pt + pb - kh) // stride[0] + 1, (w + pl + pr - kw) // stride[1] + 1


def _conv_dtype(types, name):
    dt, _ = promote(*types)
    if not is_float(dt) or any(not is_float(t.dtype) for t in types):
        raise ShapeError(f"{name} needs float arrays, not {type_names(types)}")
    return dt


def _static_kernel(w, what):
    kh, kw = w.shape[2], w.shape[3]
    if not (isinstance(kh, int) and isinstance(kw, int)):
        raise ShapeError(f"{what}: the filters {w} need a fixed kernel size (KH, KW)")
    return kh, kw


def _bilinear_jvp(tangents, out, a, b, **attrs):
    ta, tb = tangents
    terms = ([L.apply(out.op, [ta, b], **attrs)] if ta is not None else []) + \
            ([L.apply(out.op, [a, tb], **attrs)] if tb is not None else [])
    return L.add_all(terms)


class Conv2d(Op):
    """conv2d(x [N, C, H, W], w [F, C, KH, KW]) -> [N, F, OH, OW]; OH = (H + pads - KH) // sh + 1."""

    def __init__(self):
        super().__init__("conv2d", vjp=self._rule, jvp=_bilinear_jvp, verb="convolve")

    def infer(self, types, attrs):
        x, w = types
        if x.ndim != 4 or w.ndim != 4:
            raise ShapeError(f"cannot convolve {x} with {w}: conv2d takes images x [N, C, H, W] and "
                             "filters w [F, C, KH, KW]")
        if x.shape[1] != w.shape[1]:
            raise ShapeError(f"cannot convolve {x} with {w}: x has {x.shape[1]} channels but the filters "
                             f"expect {w.shape[1]} (x is [N, C, H, W], w is [F, C, KH, KW])")
        dt = _conv_dtype(types, "conv2d")
        kh, kw = _static_kernel(w, "conv2d")
        (pt, pb), (pl, pr) = attrs["padding"]
        sh, sw = attrs["stride"]
        where = f"conv2d of {x} with {w}"
        oh = _conv_out_dim(x.shape[2], kh, sh, pt, pb, where)
        ow = _conv_out_dim(x.shape[3], kw, sw, pl, pr, where)
        return TensorType(dt, (x.shape[0], w.shape[0], oh, ow))

    def impl(self, x, w, stride, padding):
        dt = np.result_type(x, w)
        x, w = x.astype(dt, copy=False), w.astype(dt, copy=False)
        kh, kw = w.shape[2:]
        oh, ow = _out_hw(x.shape[2], x.shape[3], kh, kw, stride, padding)
        cols = _window_views(_pad_hw(x, padding), kh, kw, *stride, oh, ow)   # [N, C, OH, OW, KH, KW]
        out = np.tensordot(cols, w, axes=([1, 4, 5], [1, 2, 3]))              # [N, OH, OW, F]
        return np.ascontiguousarray(out.transpose(0, 3, 1, 2))

    @staticmethod
    def _rule(g, out, x, w, stride, padding):
        return [lambda: L.conv2d_backprop_input(g, w, x.type.shape[2:], stride, padding),
                lambda: L.conv2d_backprop_filter(x, g, w.type.shape[2:], stride, padding)]


conv2d = Conv2d()


class Conv2dBackpropInput(Op):
    """The transposed convolution: conv2d_backprop_input(g [N, F, OH, OW], w [F, C, KH, KW]) ->
    [N, C, H, W], the VJP of conv2d with respect to x; `size` (H, W) is x's (a stride can
    leave rows at the border unused, so OH does not determine H)."""

    needs_env = True

    def __init__(self):
        super().__init__("conv2d_backprop_input", vjp=self._rule, jvp=_bilinear_jvp,
                         verb="transpose-convolve")

    def infer(self, types, attrs):
        g, w = types
        if g.ndim != 4 or w.ndim != 4 or g.shape[1] != w.shape[0]:
            raise ShapeError(f"conv2d_backprop_input: cannot spread {g} back through the filters {w}")
        dt = _conv_dtype(types, "conv2d_backprop_input")
        kh, kw = _static_kernel(w, "conv2d_backprop_input")
        h, wd = attrs["size"]
        (pt, pb), (pl, pr) = attrs["padding"]
        sh, sw = attrs["stride"]
        where = "conv2d_backprop_input"
        if (_conv_out_dim(h, kh, sh, pt, pb, where), _conv_out_dim(wd, kw, sw, pl, pr, where)) != g.shape[2:]:
            raise ShapeError(f"conv2d_backprop_input: {g} is not the output of a convolution of "
                             f"[{h}, {wd}] images with {w}")
        return TensorType(dt, (g.shape[0], w.shape[1], h, wd))

    def impl(self, g, w, size, stride, padding, env):
        dt = np.result_type(g, w)
        g, w = g.astype(dt, copy=False), w.astype(dt, copy=False)
        h, wd = (resolve_dim(d, env) for d in size)
        (pt, pb), (pl, pr) = padding
        sh, sw = stride
        n, _, oh, ow = g.shape
        _, c, kh, kw = w.shape
        cols = np.tensordot(w, g, axes=([0], [1]))             # [C, KH, KW, N, OH, OW]
        gx = np.zeros((c, n, h + pt + pb, wd + pl + pr), dtype=dt)
        for a in range(kh):                                    # one strided add per kernel offset
            for b in range(kw):
                gx[:, :, a:a + sh * oh:sh, b:b + sw * ow:sw] += cols[:, a, b]
        return np.ascontiguousarray(gx[:, :, pt:pt + h, pl:pl + wd].transpose(1, 0, 2, 3))

    @staticmethod
    def _rule(c, out, g, w, size, stride, padding):
        # <c, bi(g, w)> = T(c, w, g)
        return [lambda: L.conv2d(c, w, stride, padding),
                lambda: L.conv2d_backprop_filter(c, g, w.type.shape[2:], stride, padding)]


conv2d_backprop_input = Conv2dBackpropInput()


class Conv2dBackpropFilter(Op):
    """conv2d_backprop_filter(x [N, C, H, W], g [N, F, OH, OW]) -> [F, C, KH, KW]: the VJP of
    conv2d with respect to the filters (a correlation of the images with the cotangent);
    `kernel` is (KH, KW)."""

    def __init__(self):
        super().__init__("conv2d_backprop_filter", vjp=self._rule, jvp=_bilinear_jvp,
                         verb="correlate")

    def infer(self, types, attrs):
        x, g = types
        if x.ndim != 4 or g.ndim != 4 or x.shape[0] != g.shape[0]:
            raise ShapeError(f"conv2d_backprop_filter: cannot correlate {x} with {g}")
        dt = _conv_dtype(types, "conv2d_backprop_filter")
        kh, kw = attrs["kernel"]
        (pt, pb), (pl, pr) = attrs["padding"]
        sh, sw = attrs["stride"]
        where = "conv2d_backprop_filter"
        if (_conv_out_dim(x.shape[2], kh, sh, pt, pb, where), _conv_out_dim(x.shape[3], kw, sw, pl, pr, where)) \
                != g.shape[2:]:
            raise ShapeError(f"conv2d_backprop_filter: {g} is not the output of a convolution of {x} "
                             f"with [{kh}, {kw}] filters")
        return TensorType(dt, (g.shape[1], x.shape[1], kh, kw))

    def impl(self, x, g, kernel, stride, padding):
        dt = np.result_type(x, g)
        x, g = x.astype(dt, copy=False), g.astype(dt, copy=False)
        oh, ow = g.shape[2:]
        cols = _window_views(_pad_hw(x, padding), *kernel, *stride, oh, ow)   # [N, C, OH, OW, KH, KW]
        return np.ascontiguousarray(np.tensordot(g, cols, axes=([0, 2, 3], [0, 2, 3])))

    @staticmethod
    def _rule(c, out, x, g, kernel, stride, padding):
        # <c, bf(x, g)> = T(x, c, g)
        return [lambda: L.conv2d_backprop_input(g, c, x.type.shape[2:], stride, padding),
                lambda: L.conv2d(x, c, stride, padding)]


conv2d_backprop_filter = Conv2dBackpropFilter()


def _pool_out_hw(x, window, stride):
    return ((x.shape[-2] - window[0]) // stride[0] + 1, (x.shape[-1] - window[1]) // stride[1] + 1)


def _pool_offsets(x, window, stride, oh, ow):
    """(a, b, the view of x at window offset (a, b) of every window): [..., OH, OW] each."""
    sh, sw = stride
    for a in range(window[0]):
        for b in range(window[1]):
            yield a, b, x[..., a:a + sh * oh:sh, b:b + sw * ow:sw]


def _pool_weights(x, out, window, stride):
    """[(a, b, weight)]: the share of each window's derivative that goes to its offset (a, b):
    1 / (the number of maxima) where x is a maximum, else 0."""
    oh, ow = out.shape[-2:]
    masks = [(a, b, (v == out)) for a, b, v in _pool_offsets(x, window, stride, oh, ow)]
    count = np.zeros(out.shape, dtype=x.dtype)
    for _, _, m in masks:
        count += m
    with np.errstate(all="ignore"):
        inv = 1 / count  # no maximum (a NaN in the window): inf, and the derivative NaN
    return [(a, b, m * inv) for a, b, m in masks]


class MaxPool2d(Op):
    """max_pool2d(x [..., H, W]) -> [..., OH, OW], OH = (H - kh) // sh + 1: the max of each
    `window` placed every `stride` (no padding)."""

    def __init__(self):
        super().__init__("max_pool2d", vjp=self._rule, jvp=self._jvp_rule, verb="max-pool")

    def infer(self, types, attrs):
        (x,) = types
        if x.ndim < 2:
            raise ShapeError(f"cannot max-pool {x}: max_pool2d pools the last two axes of [..., H, W]")
        if x.dtype.kind == "b":
            raise ShapeError(f"cannot max-pool {x}: bools are not supported")
        (kh, kw), (sh, sw) = attrs["window"], attrs["stride"]
        where = f"max_pool2d of {x} with window ({kh}, {kw})"
        oh = _conv_out_dim(x.shape[-2], kh, sh, 0, 0, where)
        ow = _conv_out_dim(x.shape[-1], kw, sw, 0, 0, where)
        return TensorType(x.dtype, x.shape[:-2] + (oh, ow), x.weak)

    def impl(self, x, window, stride):
        oh, ow = _pool_out_hw(x, window, stride)
        out = None
        for _, _, v in _pool_offsets(x, window, stride, oh, ow):
            out = v.copy() if out is None else np.maximum(out, v, out=out)
        return out

    @staticmethod
    def _rule(g, out, x, window, stride):
        return [lambda: L.max_pool2d_backprop(x, out, g, window, stride)]

    @staticmethod
    def _jvp_rule(tangents, out, x, window, stride):
        return None if tangents[0] is None else L.max_pool2d_tangent(x, out, tangents[0], window, stride)


max_pool2d = MaxPool2d()


class MaxPool2dBackprop(Op):
    """max_pool2d_backprop(x, out, g) -> x's shape: each window's cotangent g added onto its
    maxima (split evenly between ties). `out` = max_pool2d(x) (given, not recomputed)."""

    def __init__(self):
        super().__init__("max_pool2d_backprop", vjp=self._rule, jvp=self._jvp_rule)

    def infer(self, types, attrs):
        x, out, g = types
        if out.shape != g.shape:
            raise ShapeError(f"max_pool2d_backprop: the cotangent {g} has not the shape of the pooled {out}")
        dt, _ = promote(x, g)
        return TensorType(dt, x.shape)

    def impl(self, x, out, g, window, stride):
        dt = np.result_type(x, g)
        gx = np.zeros(x.shape, dtype=dt)
        sh, sw = stride
        oh, ow = out.shape[-2:]
        for a, b, wt in _pool_weights(x, out, window, stride):
            gx[..., a:a + sh * oh:sh, b:b + sw * ow:sw] += g * wt
        return gx

    @staticmethod
    def _rule(c, y, x, out, g, window, stride):
        return [None, None, lambda: L.max_pool2d_tangent(x, out, c, window, stride)]

    @staticmethod
    def _jvp_rule(tangents, y, x, out, g, window, stride):
        return None if tangents[2] is None else L.max_pool2d_backprop(x, out, tangents[2], window, stride)


max_pool2d_backprop = MaxPool2dBackprop()


class MaxPool2dTangent(Op):
    """max_pool2d_tangent(x, out, t) -> out's shape: the tangent t (shaped like x) at each
    window's maximum (the mean over ties): the JVP of max_pool2d."""

    def __init__(self):
        super().__init__("max_pool2d_tangent", vjp=self._rule, jvp=self._jvp_rule)

    def infer(self, types, attrs):
        x, out, t = types
        if x.shape != t.shape:
            raise ShapeError(f"max_pool2d_tangent: the tangent {t} has not the shape of the pooled input {x}")
        dt, _ = promote(out, t)
        return TensorType(dt, out.shape)

    def impl(self, x, out, t, window, stride):
        dt = np.result_type(out, t)
        res = np.zeros(out.shape, dtype=dt)
        oh, ow = out.shape[-2:]
        views = {(a, b): v for a, b, v in _pool_offsets(t, window, stride, oh, ow)}
        for a, b, wt in _pool_weights(x, out, window, stride):
            res += views[a, b] * wt
        return res

    @staticmethod
    def _rule(c, y, x, out, t, window, stride):
        return [None, None, lambda: L.max_pool2d_backprop(x, out, c, window, stride)]

    @staticmethod
    def _jvp_rule(tangents, y, x, out, t, window, stride):
        return None if tangents[2] is None else L.max_pool2d_tangent(x, out, tangents[2], window, stride)


max_pool2d_tangent = MaxPool2dTangent()
