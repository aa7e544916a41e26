"""Reductions over axes (sum, prod, max, min, logsumexp), argmax / argmin, and the ops that
normalize along an axis: softmax, log_softmax and categorical_crossentropy."""

from __future__ import annotations

import numpy as np

from .. import lib as L
from ..graph import ShapeError
from ..indices import wrap as wrap_indices
from ..types import DTYPES, TensorType, is_float
from .core import Op, as_float, float_dtype, linear_in
from .indexing import onehot


def _reduced_shape(shape, axis, keepdims):
    if keepdims:
        return tuple(1 if i in axis else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axis)


class Reduce(Op):
    """A reduction over `axis` (a tuple of non-negative ints) with `keepdims`."""

    def __init__(self, name, impl, vjp=None, out_dtype=None, jvp=None, **props):
        super().__init__(name, impl=impl, vjp=vjp, verb=f"take the {name} of", jvp=jvp, **props)
        self.out_dtype = out_dtype or (lambda dt: dt)

    def infer(self, types, attrs):
        (t,) = types
        return TensorType(np.dtype(self.out_dtype(t.dtype)), _reduced_shape(t.shape, attrs["axis"], attrs["keepdims"]))


def _sum_dtype(dt):
    # numpy sums bools and small ints in the platform integer.
    return DTYPES["i64"] if dt.kind in "biu" else dt


def _keep(v, x, axis, keepdims):
    """`v` (a reduction of `x`) with the reduced axes put back as size 1."""
    return v if keepdims else L.expand_axes(v, axis)


def _sum_vjp(g, y, x, axis, keepdims):
    return [lambda: L.broadcast_to(_keep(g, x, axis, keepdims), x.type.shape)]


def _extreme_weights(y, x, axis, keepdims):
    # The derivative goes to the entries equal to the extreme, split evenly between ties.
    mask = L.cast(x == _keep(y, x, axis, keepdims), x.type.dtype)
    return mask / L.sum(mask, axis=axis, keepdims=True)


def _extreme_vjp(g, y, x, axis, keepdims):
    return [lambda: _extreme_weights(y, x, axis, keepdims) * _keep(g, x, axis, keepdims)]


def _extreme_jvp(tangents, y, x, axis, keepdims):
    return L.sum(tangents[0] * _extreme_weights(y, x, axis, keepdims), axis=axis, keepdims=keepdims)


def _prod_others(y, x, axis, keepdims):
    # d prod / d x_i = product of the others. Dividing y by x_i fails at zeros, so where x_i == 0
    # use the product of the nonzero entries when x_i is the only zero; with two zeros, that
    # product times the other zero entry (0, but its derivative — a second derivative of prod —
    # is not); with more, 0 (exact up to second derivatives).
    is_zero = x == 0
    nonzero = L.where(is_zero, 1, x)
    prod_nonzero = L.prod(nonzero, axis=axis, keepdims=True)
    zeros = L.sum(L.cast(is_zero, x.type.dtype), axis=axis, keepdims=True)
    zero_part = L.where(is_zero, x, 0)
    other_zero = L.sum(zero_part, axis=axis, keepdims=True) - zero_part
    at_zeros = L.where(zeros == 1, prod_nonzero, L.where(zeros == 2, prod_nonzero * other_zero, 0))
    return L.where(is_zero, at_zeros, _keep(y, x, axis, keepdims) / nonzero)


def _prod_vjp(g, y, x, axis, keepdims):
    return [lambda: _keep(g, x, axis, keepdims) * _prod_others(y, x, axis, keepdims)]


def _prod_jvp(tangents, y, x, axis, keepdims):
    return L.sum(tangents[0] * _prod_others(y, x, axis, keepdims), axis=axis, keepdims=keepdims)


def _logsumexp_vjp(g, y, x, axis, keepdims):
    return [lambda: _keep(g, x, axis, keepdims) * L.exp(x - _keep(y, x, axis, keepdims))]


def _logsumexp_jvp(tangents, y, x, axis, keepdims):
    return L.sum(tangents[0] * L.exp(x - _keep(y, x, axis, keepdims)), axis=axis, keepdims=keepdims)


def _np_logsumexp(x, axis, keepdims):
    x = as_float(x)
    if not axis:
        import scipy.special
        out = scipy.special.logsumexp(x, axis=axis, keepdims=keepdims)
    elif x.size == 0:  # a sum of no terms is 0: log gives -inf (scipy fails on several empty axes)
        with np.errstate(divide="ignore"):
            out = np.log(np.sum(np.exp(x), axis=axis, keepdims=True))
    else:
        # max-shifted, as scipy does, in plain numpy (scipy's array-API layer costs ~40 us a call);
        # an infinite or NaN max shifts by 0, so rows of -inf give -inf, and inf and NaN propagate
        m = np.max(x, axis=axis, keepdims=True)
        m = np.where(np.isfinite(m), m, 0).astype(x.dtype)
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            out = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
    # (a reduction of a 0-d array may come back as shape (1,): give it the type's shape)
    return np.reshape(out, _reduced_shape(x.shape, axis, keepdims))


sum_ = Reduce("sum", lambda x, axis, keepdims: np.sum(x, axis=axis, keepdims=keepdims, dtype=_sum_dtype(x.dtype)),
              _sum_vjp, out_dtype=_sum_dtype, jvp=linear_in(0), kernel_reduce=True)
prod = Reduce("prod", lambda x, axis, keepdims: np.prod(x, axis=axis, keepdims=keepdims, dtype=_sum_dtype(x.dtype)),
              _prod_vjp, out_dtype=_sum_dtype, jvp=_prod_jvp, kernel_reduce=True)
max_ = Reduce("max", lambda x, axis, keepdims: np.max(x, axis=axis, keepdims=keepdims), _extreme_vjp,
              jvp=_extreme_jvp, kernel_reduce=True, has_identity=False)
min_ = Reduce("min", lambda x, axis, keepdims: np.min(x, axis=axis, keepdims=keepdims), _extreme_vjp,
              jvp=_extreme_jvp, kernel_reduce=True, has_identity=False)
logsumexp = Reduce("logsumexp", _np_logsumexp, _logsumexp_vjp, out_dtype=float_dtype, jvp=_logsumexp_jvp)


class ArgReduce(Op):
    """argmax / argmin over one axis (or the flattened array when axis is None); i64."""

    def __init__(self, name, fn):
        super().__init__(name, verb=f"take the {name} of")
        self.fn = fn

    def infer(self, types, attrs):
        (t,) = types
        axis, keepdims = attrs["axis"], attrs["keepdims"]
        if axis is None:
            shape = (1,) * t.ndim if keepdims else ()
        else:
            shape = _reduced_shape(t.shape, (axis,), keepdims)
        return TensorType(DTYPES["i64"], shape)

    def impl(self, x, axis, keepdims):
        return np.asarray(self.fn(x, axis=axis, keepdims=keepdims), dtype=np.int64)


argmax = ArgReduce("argmax", np.argmax)
argmin = ArgReduce("argmin", np.argmin)


class Softmax(Op):
    """softmax / log_softmax along one axis, computed with the max subtracted."""

    def __init__(self, name, impl, vjp, jvp):
        super().__init__(name, impl=impl, vjp=vjp, jvp=jvp)

    def infer(self, types, attrs):
        (t,) = types
        return TensorType(float_dtype(t.dtype), t.shape)


def _np_softmax(x, axis):
    x = as_float(x)
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def _np_log_softmax(x, axis):
    x = as_float(x)
    shifted = x - np.max(x, axis=axis, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


class CategoricalCrossentropy(Op):
    """-log_softmax(x)[i, y[i]] for each row i: the cross-entropy of logits x [N, K] and integer
    labels y [N], computed as logsumexp(x[i]) - x[i, y[i]] without forming the log-softmax
    (the stabilize phase rewrites -log(softmax(x))[arange(N), y] into it)."""

    def __init__(self):
        super().__init__("categorical_crossentropy", vjp=self._vjp_rule, jvp=self._jvp_rule,
                         verb="take the cross-entropy of")

    def infer(self, types, attrs):
        x, y = types
        if x.ndim != 2 or not is_float(x.dtype):
            raise ShapeError(f"categorical_crossentropy needs float logits [N, K], not {x}")
        if y.ndim != 1 or y.dtype.kind not in "iu" or y.shape[0] != x.shape[0]:
            raise ShapeError(f"categorical_crossentropy needs integer labels [{x.shape[0]}], not {y}")
        return TensorType(x.dtype, (x.shape[0],))

    def impl(self, x, y):
        y = wrap_indices(y, x.shape[1], 1, what="label")
        lse = _np_logsumexp(x, (1,), False)
        return (lse - x[np.arange(x.shape[0]), y]).astype(x.dtype)

    @staticmethod
    def _residual(x, y):
        # onehot (a static or symbolic class count) wraps and checks labels as impl does
        hot = L.apply(onehot, [y], n=x.type.shape[1], dtype=x.type.dtype)
        return L.softmax(x, axis=1) - hot

    @classmethod
    def _vjp_rule(cls, g, out, x, y):
        return [lambda: L.expand_axes(g, (1,)) * cls._residual(x, y), None]

    @classmethod
    def _jvp_rule(cls, tangents, out, x, y):
        if tangents[0] is None:
            return None
        return L.sum(tangents[0] * cls._residual(x, y), axis=1)


categorical_crossentropy = CategoricalCrossentropy()


softmax = Softmax("softmax", _np_softmax,
                  lambda g, y, x, axis: [lambda: y * (g - L.sum(g * y, axis=(axis,), keepdims=True))],
                  lambda ts, y, x, axis: y * (ts[0] - L.sum(ts[0] * y, axis=(axis,), keepdims=True)))
log_softmax = Softmax("log_softmax", _np_log_softmax,
                      lambda g, y, x, axis: [lambda: g - L.exp(y) * L.sum(g, axis=(axis,), keepdims=True)],
                      lambda ts, y, x, axis: ts[0] - L.sum(ts[0] * L.exp(y), axis=(axis,), keepdims=True))
