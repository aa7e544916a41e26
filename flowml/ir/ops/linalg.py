"""Linear algebra: matmul, and gemm (the specialize phase's fused `alpha * a @ b + beta * c`)."""

from __future__ import annotations

import numpy as np

from .. import lib as L
from ..graph import ShapeError
from ..types import TensorType, broadcast_shapes, promote
from .core import Op


class Matmul(Op):
    """numpy's matmul: 1-D operands are promoted to matrices and the added dim removed; leading
    dims broadcast as batch dims."""

    def __init__(self):
        super().__init__("matmul", impl=np.matmul, vjp=self._rule, verb="matmul", jvp=self._jvp_rule)

    @staticmethod
    def _jvp_rule(tangents, y, a, b):
        ta, tb = tangents  # bilinear: d(a @ b) = da @ b + a @ db
        terms = ([L.matmul(ta, b)] if ta is not None else []) + ([L.matmul(a, tb)] if tb is not None else [])
        return L.add_all(terms)

    def infer(self, types, attrs):
        a, b = types
        if a.ndim == 0 or b.ndim == 0:
            raise ShapeError(f"cannot matmul {a} and {b}: matmul needs arrays, not scalars (use *)")
        a_shape = (1,) + a.shape if a.ndim == 1 else a.shape
        b_shape = b.shape + (1,) if b.ndim == 1 else b.shape
        if a_shape[-1] != b_shape[-2]:
            raise ShapeError(f"cannot matmul {a} and {b}: inner dims {a_shape[-1]} and {b_shape[-2]} differ")
        batch = broadcast_shapes(a_shape[:-2], b_shape[:-2])
        if batch is None:
            raise ShapeError(f"cannot matmul {a} and {b}: batch dims do not broadcast")
        shape = batch + ((a_shape[-2],) if a.ndim > 1 else ()) + ((b_shape[-1],) if b.ndim > 1 else ())
        dt, _ = promote(a, b)
        return TensorType(dt, shape)

    @staticmethod
    def _rule(g, y, a, b):
        # Work on the matrix forms (1-D operands get their unit dim back), then undo.
        a2 = L.reshape(a, (1,) + a.type.shape) if a.type.ndim == 1 else a
        b2 = L.reshape(b, b.type.shape + (1,)) if b.type.ndim == 1 else b
        g2 = g
        if a.type.ndim == 1:
            # a's added row dim sits just before b's column dim (last in g), or last when b is
            # 1-D too
            g2 = L.expand_axes(g2, (g2.type.ndim - (0 if b.type.ndim == 1 else 1),))
        if b.type.ndim == 1:
            g2 = L.expand_axes(g2, (g2.type.ndim,))

        def grad_a():
            ga = L.matmul(g2, L.swap_last(b2))
            return L.reshape(L.sum_to(ga, a2.type.shape), a.type.shape)

        def grad_b():
            gb = L.matmul(L.swap_last(a2), g2)
            return L.reshape(L.sum_to(gb, b2.type.shape), b.type.shape)
        return [grad_a, grad_b]


matmul = Matmul()


class Gemm(Op):
    """`alpha * (a @ b) + beta * c`: BLAS's gemm (a matrix b) and gemv (a vector b), c shaped
    like the product, alpha and beta numbers. Not written by users: the specialize phase builds
    it from a linear combination of one product and one other value, such as the update
    `w <- w - lr * (x.T @ g + l2 * w)` (Theano's gemm optimization), so the product is computed
    into c's buffer -- a param updated in place -- with no pass over its result left to do."""

    accumulates_into = 2  # its result may be written over c (what BLAS does)

    def __init__(self):
        super().__init__("gemm", impl=self._impl, vjp=self._rule, verb="gemm", jvp=self._jvp_rule)

    def infer(self, types, attrs):
        a, b, c = types
        if a.ndim != 2 or b.ndim not in (1, 2):
            raise ShapeError(f"gemm needs a matrix and a matrix or vector, not {a} and {b}")
        if a.shape[1] != b.shape[0]:
            raise ShapeError(f"cannot gemm {a} and {b}: inner dims {a.shape[1]} and {b.shape[0]} differ")
        shape = (a.shape[0],) + b.shape[1:]
        if tuple(c.shape) != shape or not (a.dtype == b.dtype == c.dtype) or a.dtype.kind != "f":
            raise ShapeError(f"gemm needs one float dtype and c shaped like a @ b: {a}, {b}, {c}")
        return TensorType(c.dtype, shape)

    @staticmethod
    def _impl(a, b, c, alpha, beta):
        dt = c.dtype
        return (dt.type(alpha) * np.matmul(a, b) + dt.type(beta) * c).astype(dt, copy=False)

    @staticmethod
    def _jvp_rule(tangents, y, a, b, c, alpha, beta):
        ta, tb, tc = tangents
        terms = [alpha * L.matmul(ta, b)] if ta is not None else []
        terms += [alpha * L.matmul(a, tb)] if tb is not None else []
        terms += [beta * tc] if tc is not None else []
        return L.add_all(terms)

    @staticmethod
    def _rule(g, y, a, b, c, alpha, beta):
        def grad_a():
            if b.type.ndim == 1:  # d/da (a @ b) is the outer product with b
                return alpha * L.matmul(L.reshape(g, g.type.shape + (1,)), L.reshape(b, (1,) + b.type.shape))
            return alpha * L.matmul(g, L.swap_last(b))
        return [grad_a, lambda: alpha * L.matmul(L.swap_last(a), g), lambda: beta * g]


gemm = Gemm()
