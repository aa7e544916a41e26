"""Shape ops (transpose, reshape, broadcast_to, concatenate and its VJP concat_part) and the
constructors of new arrays (full, zeros_like, arange)."""

from __future__ import annotations

import numpy as np

from .. import lib as L
from ..graph import ShapeError
from ..types import DTYPES, Sym, TensorType, broadcast_shapes, promote, resolve_dim
from .core import Op, env_shape, linear_in, type_names


class Transpose(Op):
    def __init__(self):
        super().__init__("transpose", vjp=self._rule, jvp=linear_in(0))

    def infer(self, types, attrs):
        (t,) = types
        return TensorType(t.dtype, tuple(t.shape[i] for i in attrs["axes"]), t.weak)

    def impl(self, x, axes):
        return np.transpose(x, axes)

    @staticmethod
    def _rule(g, y, x, axes):
        return [lambda: L.transpose(g, tuple(int(i) for i in np.argsort(axes)))]


transpose = Transpose()


class Reshape(Op):
    """reshape to `shape` (a tuple of dims, -1 already resolved by `lib.reshape`)."""

    needs_env = True
    view = True
    cheap = True
    kernel_identity = True

    def __init__(self):
        super().__init__("reshape", vjp=lambda g, y, x, shape: [lambda: L.reshape(g, x.type.shape)],
                         jvp=linear_in(0))

    def infer(self, types, attrs):
        (t,) = types
        return TensorType(t.dtype, tuple(attrs["shape"]), t.weak)

    def impl(self, x, shape, env):
        return np.reshape(x, env_shape(shape, env))


reshape = Reshape()


class BroadcastTo(Op):
    needs_env = True
    cheap = True
    kernel_identity = True

    def __init__(self):
        super().__init__("broadcast_to", vjp=lambda g, y, x, shape: [lambda: L.sum_to(g, x.type.shape)],
                         jvp=linear_in(0),
                         verb="broadcast")

    def infer(self, types, attrs):
        (t,) = types
        shape = tuple(attrs["shape"])
        if len(shape) < t.ndim or broadcast_shapes(t.shape, shape) != shape:
            raise ShapeError(f"cannot broadcast {t} to shape [{', '.join(map(str, shape))}]")
        return TensorType(t.dtype, shape, t.weak)

    def impl(self, x, shape, env):
        return np.broadcast_to(x, env_shape(shape, env))


broadcast_to = BroadcastTo()


def _concat_dim(dims):
    total = 0
    syms = []
    for d in dims:
        if isinstance(d, int):
            total += d
        else:
            syms.append(str(d))
    if not syms:
        return total
    # A sum of symbolic dims is not a monomial; it becomes its own symbol, bound at run time.
    return Sym(("+".join(syms + ([str(total)] if total else [])),))


class Concatenate(Op):
    def __init__(self):
        super().__init__("concatenate", vjp=self._rule, jvp=linear_in())

    def infer(self, types, attrs):
        axis = attrs["axis"]
        first = types[0]
        for t in types[1:]:
            if t.ndim != first.ndim or any(a != b for i, (a, b) in enumerate(zip(t.shape, first.shape)) if i != axis):
                raise ShapeError(f"cannot concatenate {type_names(types)} along axis {axis}")
        dt, _ = promote(*types)
        shape = list(first.shape)
        shape[axis] = _concat_dim([t.shape[axis] for t in types])
        return TensorType(dt, tuple(shape))

    def impl(self, *xs, axis):
        return np.concatenate(xs, axis=axis)

    @staticmethod
    def _rule(g, y, *xs, axis):
        return [(lambda k=k: L.concat_part(g, xs, axis, k)) for k in range(len(xs))]


concatenate = Concatenate()


class ConcatPart(Op):
    """The k-th part of `g` split along `axis` as `xs` were concatenated (the VJP of
    concatenate). The `xs` are operands only to give the parts' sizes."""

    def __init__(self):
        super().__init__("concat_part", vjp=self._rule, jvp=linear_in(0))

    def infer(self, types, attrs):
        g, xs = types[0], types[1:]
        return TensorType(g.dtype, xs[attrs["k"]].shape)

    def impl(self, g, *xs, axis, k):
        start = sum(x.shape[axis] for x in xs[:k])
        index = [slice(None)] * g.ndim
        index[axis] = slice(start, start + xs[k].shape[axis])
        return g[tuple(index)]

    @staticmethod
    def _rule(gk, y, g, *xs, axis, k):
        parts = [gk if i == k else L.zeros_like(x, dtype=gk.type.dtype) for i, x in enumerate(xs)]
        return [lambda: L.concatenate(parts, axis=axis)] + [None] * len(xs)


concat_part = ConcatPart()


# ----------------------------------------------------------------- constructors


class Full(Op):
    """An array of `shape` filled with `value` (zeros, ones, full)."""

    needs_env = True

    def __init__(self):
        super().__init__("full")

    def infer(self, types, attrs):
        return TensorType(np.dtype(attrs["dtype"]), tuple(attrs["shape"]))

    def impl(self, value, shape, dtype, env):
        return np.full(env_shape(shape, env), value, dtype=dtype)


full = Full()


class ZerosLike(Op):
    def __init__(self):
        super().__init__("zeros_like", vjp=lambda g, y, x, dtype: [None], jvp=lambda ts, y, x, dtype: None)

    def infer(self, types, attrs):
        return TensorType(np.dtype(attrs["dtype"]), types[0].shape)

    def impl(self, x, dtype):
        return np.zeros(x.shape, dtype=dtype)


zeros_like = ZerosLike()


class Arange(Op):
    needs_env = True

    def __init__(self):
        super().__init__("arange")

    def infer(self, types, attrs):
        start, stop, step = attrs["start"], attrs["stop"], attrs["step"]
        if isinstance(stop, int):
            n = len(range(start, stop, step))
        elif start == 0 and step == 1:
            n = stop
        else:
            n = Sym((f"arange({start},{stop},{step})",))
        return TensorType(DTYPES["i64"], (n,))

    def impl(self, start, stop, step, env):
        return np.arange(start, resolve_dim(stop, env), step, dtype=np.int64)


arange = Arange()
