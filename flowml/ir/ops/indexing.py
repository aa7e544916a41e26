"""Indexing: the shape algebra of numpy's basic and advanced indexing (`index_type`), the
gather `index`, its VJP the scatter-add `index_add`, and `onehot`. Index arrays (and labels)
wrap by numpy's rule (`flowml.ir.indices`)."""

from __future__ import annotations

import numpy as np

from .. import lib as L
from ..graph import ShapeError
from ..indices import wrap as wrap_indices
from ..types import Sym, TensorType, broadcast_shapes, resolve_dim
from .core import Op, linear_in, offset_dim, type_names


# An index spec is a tuple with one item per index position, like numpy's index tuple:
#   ("slice", start, stop, step)  ints, dims or None
#   ("int", i)                    a static integer
#   ("arr", k)                    operand k (k >= 1) is an integer array
#   ("new",)                      a new unit axis (numpy's None)


def _spec_to_numpy(spec, arrays, env, shape, first_array: int):
    """The numpy index for `spec` into an array of `shape`; index arrays wrapped by numpy's rule
    and checked against their axis (`first_array`: the node operand that holds arrays[0])."""
    out = []
    axis = 0
    for item in spec:
        kind = item[0]
        if kind == "slice":
            out.append(slice(*(None if v is None else resolve_dim(v, env) for v in item[1:])))
        elif kind == "int":  # a constant: checked here only when its axis is a symbolic dim
            i, n = item[1], shape[axis]
            if not -n <= i < n:
                raise IndexError(f"index {i} is out of range for axis {axis} of size {n} "
                                 f"(valid: {-n} to {n - 1}; negative ones count from the end)")
            out.append(i)
        elif kind == "arr":
            k = item[1] - 1
            out.append(wrap_indices(arrays[k], shape[axis], first_array + k, axis=axis))
        else:
            out.append(None)
        axis += kind != "new"
    return tuple(out)


def _slice_len(d, start, stop, step):
    """The length of d[start:stop:step] as a dim (a derived symbol when it can't be known)."""
    if isinstance(d, int) and all(isinstance(v, (int, type(None))) for v in (start, stop, step)):
        return len(range(*slice(start, stop, step).indices(d)))
    if step in (None, 1) and all(isinstance(v, (int, type(None))) for v in (start, stop)):
        s = start or 0
        if s >= 0 and stop is None:
            return offset_dim(d, -s)
        if s >= 0 and stop < 0:
            return offset_dim(d, stop - s)
        if s < 0 and stop is None:
            return -s
        if s >= 0 and stop >= 0:
            return max(stop - s, 0)
    if start is None and stop is None and step in (None, 1, -1):
        return d
    return Sym((f"{d}[{'' if start is None else start}:{'' if stop is None else stop}"
                f"{'' if step is None else ':' + str(step)}]",))


def index_type(x: TensorType, spec, arr_types) -> tuple:
    """The shape of x[spec] following numpy's basic and advanced indexing rules."""
    consumed = sum(1 for it in spec if it[0] != "new")
    if consumed > x.ndim:
        raise ShapeError(f"too many indices for {x}: {consumed} given")
    spec = tuple(spec) + (("slice", None, None, None),) * (x.ndim - consumed)
    advanced = [i for i, it in enumerate(spec) if it[0] == "arr"]
    if advanced:
        if any(it[0] == "new" for it in spec):
            raise ShapeError("a new axis combined with array indices is not supported")
        # With arrays present, static ints index like (broadcast) arrays, as in numpy.
        advanced = [i for i, it in enumerate(spec) if it[0] in ("arr", "int")]
        bshape = broadcast_shapes(*(arr_types[spec[i][1] - 1].shape for i in advanced if spec[i][0] == "arr"))
        if bshape is None:
            raise ShapeError(f"index arrays of shapes {type_names(arr_types)} do not broadcast")
    out_before, out_after = [], []
    axis = 0
    for i, it in enumerate(spec):
        kind = it[0]
        target = out_before if not advanced or i < advanced[0] else out_after
        if kind == "new":
            target.append(1)
            continue
        d = x.shape[axis]
        axis += 1
        if kind == "slice":
            target.append(_slice_len(d, *it[1:]))
        elif kind == "int" and isinstance(d, int) and not -d <= it[1] < d:
            raise ShapeError(f"index {it[1]} is out of bounds for axis {axis - 1} of {x}")
    if not advanced:
        return tuple(out_before)
    contiguous = advanced == list(range(advanced[0], advanced[-1] + 1))
    if contiguous:
        return tuple(out_before) + bshape + tuple(out_after)
    return bshape + tuple(out_before) + tuple(out_after)


class Index(Op):
    """x[spec]: basic slicing and numpy's integer-array indexing (a gather)."""

    needs_env = True

    def __init__(self):
        super().__init__("index", vjp=self._rule, verb="index", jvp=linear_in(0))

    def infer(self, types, attrs):
        x, arrs = types[0], types[1:]
        for t in arrs:
            if t.dtype.kind not in "iu":
                raise ShapeError(f"an index array must be integer, not {t}")
        return TensorType(x.dtype, index_type(x, attrs["spec"], arrs), x.weak)

    def impl(self, x, *arrays, spec, env):
        return x[_spec_to_numpy(spec, arrays, env, x.shape, 1)]

    @staticmethod
    def _rule(g, y, x, *arrays, spec):
        return [lambda: L.index_add(g, arrays, spec, x)] + [None] * len(arrays)


index = Index()


class IndexAdd(Op):
    """zeros shaped like `like`, with g added at [spec] (repeated indices accumulate): the
    VJP of `index` (a scatter-add). `like` is an operand only for its shape."""

    needs_env = True

    def __init__(self):
        super().__init__("index_add", vjp=self._rule, jvp=linear_in(0))

    def infer(self, types, attrs):
        g, like = types[0], types[1]
        return TensorType(g.dtype, like.shape)

    def impl(self, g, like, *arrays, spec, env):
        out = np.zeros(like.shape, dtype=g.dtype)
        np.add.at(out, _spec_to_numpy(spec, arrays, env, out.shape, 2), g)
        return out

    @staticmethod
    def _rule(gout, y, g, like, *arrays, spec):
        return [lambda: L.index_var(gout, arrays, spec), None] + [None] * len(arrays)


index_add = IndexAdd()


class Onehot(Op):
    """Rows of `n` classes (an int, or a dim bound at call time) with a 1 at each label."""

    needs_env = True

    def __init__(self):
        super().__init__("onehot")

    def infer(self, types, attrs):
        (t,) = types
        if t.dtype.kind not in "iu":
            raise ShapeError(f"onehot needs integer class labels, not {t}")
        return TensorType(np.dtype(attrs["dtype"]), t.shape + (attrs["n"],))

    def impl(self, y, n, dtype, env):
        n = resolve_dim(n, env)
        y = wrap_indices(y, n, 0, what="label")
        return (y[..., None] == np.arange(n)).astype(dtype)


onehot = Onehot()
