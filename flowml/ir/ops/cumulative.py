"""Running sums and products along one axis: cumsum and cumprod (numpy's, plus `reverse`, which
runs from the end of the axis: what cumsum's derivative needs).

Both accumulate in order, one element after the other, in the result dtype (numpy's order, so
results match numpy's to the bit). Integers and bools accumulate in i64, as numpy's (and
flowml's) sum."""

from __future__ import annotations

import numpy as np

from .. import lib as L
from ..graph import ShapeError
from ..types import DTYPES, TensorType
from .core import Op, linear_in


def _acc_dtype(dt):
    return DTYPES["i64"] if dt.kind in "biu" else dt


class Cumulative(Op):
    """cumsum / cumprod of one operand along `axis` (a non-negative int), from the end of the
    axis when `reverse`."""

    def __init__(self, name, np_fn, vjp, jvp):
        super().__init__(name, impl=self._impl, vjp=vjp, jvp=jvp, verb=f"take the {name} of")
        self.np_fn = np_fn

    def infer(self, types, attrs):
        (t,) = types
        if not 0 <= attrs["axis"] < max(t.ndim, 1) or t.ndim == 0:
            raise ShapeError(f"{self.name}: axis {attrs['axis']} is out of range for {t}")
        return TensorType(np.dtype(_acc_dtype(t.dtype)), t.shape)

    def _impl(self, x, axis, reverse):
        dt = _acc_dtype(x.dtype)
        if reverse:
            return np.flip(self.np_fn(np.flip(x, axis), axis=axis, dtype=dt), axis)
        return self.np_fn(x, axis=axis, dtype=dt)


def _cumsum_vjp(g, y, x, axis, reverse):
    # y_j = sum of x_i for i <= j: x_i's cotangent is the sum of g_j for j >= i
    return [lambda: L.apply(cumsum, [g], axis=axis, reverse=not reverse)]


cumsum = Cumulative("cumsum", np.cumsum, _cumsum_vjp, linear_in(0))


def _zeros_seen(x, axis, reverse):
    """(x is zero, how many zeros up to each position, the first zero of each row). "Zero" is
    |x| < sqrt(smallest normal) (1.5e-154 in f64): dividing by such an x could overflow, and
    taking it as an exact zero drops terms of the derivative that carry it as a factor, which are
    that small relative to the rest."""
    is_zero = L.abs(x) < float(np.sqrt(np.finfo(x.dtype).tiny))
    count = L.apply(cumsum, [L.cast(is_zero, "i64")], axis=axis, reverse=reverse)
    return is_zero, count, is_zero & (count == 1)


def _cumprod_without_first_zero(x, first, axis, reverse):
    """cumprod of x with each row's first zero taken as 1: the products that skip it."""
    return L.apply(cumprod, [L.where(first, 1, x)], axis=axis, reverse=reverse)


def _cumprod_vjp(g, y, x, axis, reverse):
    # d y_j / d x_i = prod_{k <= j, k != i} x_k (for i <= j). Dividing y_j by x_i fails at zeros:
    # a row's first zero gets the products that skip it; any entry after it (zero or not) gets
    # y_j / x_i, which is 0 there because y_j is (the products include the first zero). (A tiny
    # x counts as a zero: `_zeros_seen`.)
    def cot():
        is_zero, _, first = _zeros_seen(x, axis, reverse)
        back = lambda v: L.apply(cumsum, [v], axis=axis, reverse=not reverse)  # noqa: E731
        safe = L.where(is_zero, 1, x)
        skip = _cumprod_without_first_zero(x, first, axis, reverse)
        return L.where(is_zero, L.where(first, back(g * skip), 0), back(g * y) / safe)
    return [cot]


def _cumprod_jvp(tangents, y, x, axis, reverse):
    # dy_j = sum_{i <= j} t_i prod_{k <= j, k != i} x_k: y_j * cumsum(t / x)_j before a row's first
    # zero; t_z times the products skipping that zero z up to its second zero; 0 from there on.
    (t,) = tangents
    if t is None:
        return None
    is_zero, count, first = _zeros_seen(x, axis, reverse)
    run = lambda v: L.apply(cumsum, [v], axis=axis, reverse=reverse)  # noqa: E731
    ratio = run(L.where(is_zero, 0, t / L.where(is_zero, 1, x)))
    at_first = run(L.where(first, t, 0))
    skip = _cumprod_without_first_zero(x, first, axis, reverse)
    return L.where(count == 0, y * ratio, L.where(count == 1, at_first * skip, 0))


cumprod = Cumulative("cumprod", np.cumprod, _cumprod_vjp, _cumprod_jvp)
