"""numpy's array-manipulation functions, built from flowml's primitives (as JAX builds most of
jnp): squeeze, swapaxes, moveaxis, flip, roll, repeat, tile, pad, diagonal, trace, diag, eye,
tril, triu, linspace, take_along_axis, tensordot and einsum.

Each is a composition of reshape, transpose, broadcast_to, concatenate, indexing (slices and
integer arrays), arange, where and matmul, so it is differentiable (forward and reverse) and
native on every backend that runs those, with nothing new to lower. Shapes, axes, shifts and
repeats are static, as numpy's are in JAX's jit. `flowml.ir.lib` exports them under numpy's names.
"""

from __future__ import annotations

import builtins
import string

import numpy as np

from ..errors import FlowTypeError
from . import lib as L
from .graph import current_loc
from .types import broadcast_shapes, dims_product, is_float


def _err(message):
    return FlowTypeError(message, current_loc())


def _var(x):
    return L.as_var(x, L._graph_of(x))


def _axis(axis, ndim, what="axis") -> int:
    return L._normalize_axis(axis, ndim, what)[0]


def _axes_in_order(axis, ndim, what="axis") -> list[int]:
    """Normalized axes in the order given (numpy's moveaxis pairs source[i] with destination[i])."""
    axes = axis if isinstance(axis, (tuple, list)) else (axis,)
    out = [_axis(a, ndim, what) for a in axes]
    if len(set(out)) != len(out):
        raise _err(f"repeated {what} in {tuple(axes)}")
    return out


def _static_ints(v, what) -> tuple[int, ...]:
    items = v if isinstance(v, (tuple, list)) else (v,)
    return tuple(L.static_int(i, what) for i in items)


# ----------------------------------------------------------------- axes


def squeeze(x, axis=None):
    """x without the axes of length 1 (those of `axis`, or all of them)."""
    x = _var(x)
    shape = x.type.shape
    if axis is None:
        axes = {i for i, d in enumerate(shape) if d == 1}
    else:
        axes = set(L._normalize_axis(axis, x.ndim))
        for a in sorted(axes):
            if shape[a] != 1:
                raise _err(f"cannot squeeze axis {a} of {x.type}: its length is {shape[a]}, not 1")
    return L.reshape(x, tuple(d for i, d in enumerate(shape) if i not in axes))


def swapaxes(x, axis1, axis2):
    x = _var(x)
    perm = list(range(x.ndim))
    a, b = _axis(axis1, x.ndim), _axis(axis2, x.ndim)
    perm[a], perm[b] = perm[b], perm[a]
    return L.transpose(x, tuple(perm))


def moveaxis(x, source, destination):
    """The axes `source` moved to the positions `destination` (ints or sequences of ints), the
    others kept in their order."""
    x = _var(x)
    src = _axes_in_order(source, x.ndim, "source axis")
    dst = _axes_in_order(destination, x.ndim, "destination axis")
    if len(src) != len(dst):
        raise _err(f"moveaxis: {len(src)} source axes but {len(dst)} destinations")
    order = [a for a in range(x.ndim) if a not in src]
    for d, s in sorted(zip(dst, src)):
        order.insert(d, s)
    return L.transpose(x, tuple(order))


def flip(x, axis=None):
    """x with the order of the elements along `axis` (all axes by default) reversed."""
    x = _var(x)
    axes = L._normalize_axis(axis, x.ndim)
    return L.getitem(x, tuple(slice(None, None, -1) if a in axes else slice(None) for a in range(x.ndim)))


def _along(x, axis, s):
    return L.getitem(x, (slice(None),) * axis + (s,))


def roll(x, shift, axis=None):
    """The elements shifted by `shift` along `axis` (the flattened array by default), those
    pushed past the end coming back at the start. `shift` and `axis` may be tuples."""
    x = _var(x)
    if axis is None:
        return L.reshape(roll(L.reshape(x, (-1,)), shift, 0), x.type.shape)
    shifts, axes = _static_ints(shift, "roll's shift"), _axes_in_order(axis, x.ndim)
    if len(shifts) == 1 and len(axes) > 1:
        shifts = shifts * len(axes)
    if len(shifts) != len(axes):
        raise _err(f"roll: {len(shifts)} shifts for {len(axes)} axes")
    total = {}
    for s, a in zip(shifts, axes):  # numpy adds the shifts of a repeated axis
        total[a] = total.get(a, 0) + s
    for a, s in total.items():
        n = x.type.shape[a]
        if not isinstance(n, int):
            # a gather of (i - s) mod n keeps the axis's symbolic length (two slices joined would
            # have the length "N-s+s", a different dim)
            x = L.take(x, L.mod(L.arange(x.graph, n) - s, L.dim(x.graph, n)), a)
            continue
        s = s % n if n else 0
        if s:
            x = L.concatenate([_along(x, a, slice(-s, None)), _along(x, a, slice(None, -s))], axis=a)
    return x


def repeat(x, repeats, axis=None):
    """Each element repeated `repeats` times along `axis` (the flattened array by default):
    `repeats` an int, or one int per element along a static axis."""
    x = _var(x)
    if axis is None:
        x, axis = L.reshape(x, (-1,)), 0
    axis = _axis(axis, x.ndim)
    shape = x.type.shape
    reps = _static_ints(repeats, "repeat's repeats")
    if builtins.any(r < 0 for r in reps):
        raise _err(f"repeat's repeats must not be negative, got {reps}")
    if not isinstance(repeats, (tuple, list)) or len(reps) == 1:
        r = reps[0]
        wide = L.broadcast_to(L.expand_axes(x, (axis + 1,)), shape[:axis + 1] + (r,) + shape[axis + 1:])
        return L.reshape(wide, shape[:axis] + (L.dim_mul(shape[axis], r),) + shape[axis + 1:])
    if shape[axis] != len(reps):
        raise _err(f"repeat: {len(reps)} repeats for an axis of length {shape[axis]}")
    return L.take(x, np.repeat(np.arange(len(reps)), reps), axis)


def tile(x, reps):
    """x repeated `reps` times along each axis (numpy's tile: `reps` an int or a tuple; the
    shorter of x's shape and reps is padded with leading 1s)."""
    x = _var(x)
    reps = _static_ints(reps, "tile's reps")
    if builtins.any(r < 0 for r in reps):
        raise _err(f"tile's reps must not be negative, got {reps}")
    d = builtins.max(len(reps), x.ndim)
    shape = (1,) * (d - x.ndim) + tuple(x.type.shape)
    reps = (1,) * (d - len(reps)) + reps
    interleaved = tuple(v for s in shape for v in (1, s))
    wide = L.broadcast_to(L.reshape(x, interleaved), tuple(v for r, s in zip(reps, shape) for v in (r, s)))
    return L.reshape(wide, tuple(L.dim_mul(r, s) for r, s in zip(reps, shape)))


def pad(x, pad_width, mode="constant", constant_values=0):
    """x with `pad_width` elements of `constant_values` added before and after each axis:
    `pad_width` an int, (before, after) for every axis, or one (before, after) per axis. Only
    mode "constant"."""
    x = _var(x)
    if mode != "constant":
        raise _err(f'pad: only mode "constant" is supported, not "{mode}"')
    try:
        widths = np.broadcast_to(np.asarray(_nested_ints(pad_width), dtype=np.int64), (x.ndim, 2))
    except ValueError:
        raise _err(f"pad: pad_width {pad_width!r} does not fit an array of rank {x.ndim}") from None
    if (widths < 0).any():
        raise _err(f"pad: widths must not be negative, got {widths.tolist()}")
    value = L.cast(L.as_var(constant_values, x.graph), x.dtype)
    for a, (before, after) in enumerate(widths.tolist()):
        parts = []
        for width in (before, None, after):
            if width is None:
                parts.append(x)
            elif width:
                parts.append(L.broadcast_to(value, x.type.shape[:a] + (width,) + x.type.shape[a + 1:]))
        x = L.concatenate(parts, axis=a) if len(parts) > 1 else x
    return x


def _nested_ints(v):
    if isinstance(v, (tuple, list)):
        return [_nested_ints(i) for i in v]
    return L.static_int(v, "pad's widths")


# ----------------------------------------------------------------- diagonals and triangles


def _diagonal_length(n, m, offset):
    if isinstance(n, int) and isinstance(m, int):
        return builtins.max(0, builtins.min(n, m - offset) if offset >= 0 else builtins.min(n + offset, m))
    if offset == 0 and n == m:
        return n
    raise _err(f"the diagonal {offset} of a [{n}, {m}] matrix needs fixed sizes (or offset 0 of a square one)")


def _arange(graph, n, start=0):
    i = L.arange(graph, n)
    return i + start if start else i


def diagonal(x, offset=0, axis1=0, axis2=1):
    """numpy's diagonal: the elements x[..., i, i + offset] of the matrices over axis1, axis2,
    along a new last axis."""
    x = _var(x)
    if x.ndim < 2:
        raise _err(f"diagonal needs at least 2 axes, not {x.type}")
    offset = L.static_int(offset, "diagonal's offset")
    a, b = _axis(axis1, x.ndim), _axis(axis2, x.ndim)
    if a == b:
        raise _err("diagonal: axis1 and axis2 must differ")
    y = moveaxis(x, (a, b), (-2, -1))
    n, m = y.type.shape[-2:]
    length = _diagonal_length(n, m, offset)
    rows = _arange(x.graph, length, builtins.max(0, -offset))
    cols = _arange(x.graph, length, builtins.max(0, offset))
    return L.getitem(y, (slice(None),) * (y.ndim - 2) + (rows, cols))


def trace(x, offset=0, axis1=0, axis2=1):
    """The sum of the diagonal (numpy's trace)."""
    return L.sum(diagonal(x, offset, axis1, axis2), axis=-1)


def _band_mask(graph, n, m, k, keep):
    """[n, m] bools: keep(col - row, k)."""
    rows = L.reshape(L.arange(graph, n), (n, 1))
    cols = L.reshape(L.arange(graph, m), (1, m))
    return keep(cols - rows, k)


def eye(graph, N, M=None, k=0, dtype="f64"):
    """The [N, M] matrix with ones on the diagonal k (0: the main one) and zeros elsewhere."""
    n = L.as_dim(N)
    m = n if M is None else L.as_dim(M)
    k = L.static_int(k, "eye's k")
    return L.cast(_band_mask(graph, n, m, k, lambda d, k: d == k), dtype)


def _triangle(x, k, keep, name):
    x = _var(x)
    if x.ndim < 2:
        raise _err(f"{name} needs at least 2 axes, not {x.type}")
    k = L.static_int(k, f"{name}'s k")
    n, m = x.type.shape[-2:]
    return L.where(_band_mask(x.graph, n, m, k, keep), x, L.zeros_like(x))


def tril(x, k=0):
    """x with the elements above the diagonal k (of its last two axes) zeroed."""
    return _triangle(x, k, lambda d, k: d <= k, "tril")


def triu(x, k=0):
    """x with the elements below the diagonal k (of its last two axes) zeroed."""
    return _triangle(x, k, lambda d, k: d >= k, "triu")


def diag(v, k=0):
    """numpy's diag: of a vector, the square matrix with it on the diagonal k; of a matrix, its
    diagonal k."""
    v = _var(v)
    k = L.static_int(k, "diag's k")
    if v.ndim == 2:
        return diagonal(v, k)
    if v.ndim != 1:
        raise _err(f"diag takes a vector or a matrix, not {v.type}")
    (n,) = v.type.shape
    if k and not isinstance(n, int):
        raise _err(f"diag of a vector of symbolic length {n} with k={k} needs a fixed length")
    size = n + builtins.abs(k) if k else n
    padded = pad(v, (0, builtins.abs(k))) if k else v
    # element [r, c] with c - r == k is v[min(r, c)]: v[r] (as a column) above the diagonal
    values = L.reshape(padded, (size, 1)) if k > 0 else L.reshape(padded, (1, size))
    return L.where(_band_mask(v.graph, size, size, k, lambda d, k: d == k), values, L.zeros_like(values))


# ----------------------------------------------------------------- constructors


def linspace(graph, start, stop, num=50, endpoint=True, dtype=None):
    """`num` (static) evenly spaced values from start to stop (included when `endpoint`), as
    numpy's: start + i * step, with the last value exactly stop. start and stop may be values
    (then the new axis comes first, as numpy's axis=0). dtype: f64 by default; an integer dtype
    rounds down (numpy 2)."""
    num = L.static_int(num, "linspace's num")
    if num < 0:
        raise _err(f"linspace's num must not be negative, got {num}")
    endpoint = L.static_bool(endpoint, "endpoint") if not isinstance(endpoint, bool) else endpoint
    start, stop = L.as_var(start, graph), L.as_var(stop, graph)
    dt = L.promote(start.type, stop.type)[0]
    fdt = dt if is_float(dt) and not (start.type.weak and stop.type.weak) else "f64"
    start, stop = L.cast(start, fdt), L.cast(stop, fdt)
    extra = builtins.max(start.ndim, stop.ndim)
    i = L.reshape(L.cast(L.arange(graph, num), fdt), (num,) + (1,) * extra)
    div = num - 1 if endpoint else num
    step = (stop - start) / builtins.max(div, 1)
    y = start + i * step if div > 0 else start + i * 0
    if endpoint and num > 1:
        last = L.reshape(L.arange(graph, num), (num,) + (1,) * extra) == num - 1
        y = L.where(last, stop, y)
    y = L.broadcast_to(y, (num,) + tuple(broadcast_shapes(start.type.shape, stop.type.shape)))
    if dtype is not None and not is_float(L.dtype_of(L._static_dtype(dtype))):
        y = L.floor(y)
    return y if dtype is None else L.cast(y, dtype)


# ----------------------------------------------------------------- gathers and products


def take_along_axis(x, indices, axis):
    """numpy's take_along_axis: x[..., indices[..., j, ...], ...] along `axis`, the other axes
    matched by position (indices has x's rank; its other dims broadcast against x's)."""
    x, indices = _var(x), L.as_var(indices, _var(x).graph)
    if axis is None:
        x, axis = L.reshape(x, (-1,)), 0
    if indices.dtype.kind not in "iu":
        raise _err(f"take_along_axis: indices must be integers, not {indices.type}")
    if indices.ndim != x.ndim:
        raise _err(f"take_along_axis: indices {indices.type} must have the rank of {x.type}")
    axis = _axis(axis, x.ndim)
    items = []
    for j, d in enumerate(x.type.shape):
        if j == axis:
            items.append(indices)
        else:
            shape = [1] * x.ndim
            shape[j] = d
            items.append(L.reshape(L.arange(x.graph, d), tuple(shape)))
    return L.getitem(x, tuple(items))


def _static_axes(axes, ndim, what):
    items = axes if isinstance(axes, (tuple, list)) else (axes,)
    return [L.static_int(a, what) % ndim if ndim else 0 for a in items]


def tensordot(a, b, axes=2):
    """numpy's tensordot: the sum over the last `axes` axes of a and the first of b, or over the
    pairs axes = (a's axes, b's axes); as one matmul of the two, transposed and reshaped."""
    g = L._graph_of(a, b)
    a, b = L._coerce([L.as_var(a, g), L.as_var(b, g)])
    if isinstance(axes, (tuple, list)):
        if len(axes) != 2:
            raise _err("tensordot's axes must be an int or a pair (a's axes, b's axes)")
        ia, ib = _static_axes(axes[0], a.ndim, "tensordot's axes"), _static_axes(axes[1], b.ndim, "tensordot's axes")
    else:
        n = L.static_int(axes, "tensordot's axes")
        if n < 0 or n > builtins.min(a.ndim, b.ndim):
            raise _err(f"tensordot: cannot sum over {n} axes of {a.type} and {b.type}")
        ia, ib = list(range(a.ndim - n, a.ndim)), list(range(n))
    if len(ia) != len(ib):
        raise _err(f"tensordot: {len(ia)} axes of a but {len(ib)} of b")
    for i, j in zip(ia, ib):
        if a.type.shape[i] != b.type.shape[j]:
            raise _err(f"tensordot: axis {i} of {a.type} and axis {j} of {b.type} differ in length")
    free_a = [i for i in range(a.ndim) if i not in ia]
    free_b = [j for j in range(b.ndim) if j not in ib]
    return _contract(a, free_a, ia, b, ib, free_b)


def _contract(a, free_a, sum_a, b, sum_b, free_b):
    """sum over the paired axes sum_a / sum_b of a[free_a..., sum...] * b[sum..., free_b...]: one
    matmul of [M, K] by [K, N] (a dot of vectors or a scaled matrix where M, K or N is empty)."""
    sa, sb = a.type.shape, b.type.shape
    fa, fb = [sa[i] for i in free_a], [sb[j] for j in free_b]
    k = dims_product(sa[i] for i in sum_a)
    lhs = L.reshape(L.transpose(a, tuple(free_a + sum_a)), (dims_product(fa), k))
    rhs = L.reshape(L.transpose(b, tuple(sum_b + free_b)), (k, dims_product(fb)))
    return L.reshape(L.matmul(lhs, rhs), tuple(fa + fb))


def einsum(subscripts, *operands):
    """numpy's einsum (without "..."), operands contracted left to right: "ij,jk->ik",
    "bij,bjk->bik", "ii->i" (an index repeated within an operand takes the diagonal). Without
    "->" the output is the indices that appear once, sorted. Each pair is one matmul (batched
    over the indices both operands and the output share)."""
    if not isinstance(subscripts, str):
        raise _err("einsum's first argument must be a string of subscripts, like \"ij,jk->ik\"")
    if not operands:
        raise _err("einsum needs at least one operand")
    g = L._graph_of(*operands)
    ops = L._coerce([L.as_var(o, g) for o in operands])
    spec = subscripts.replace(" ", "")
    if "." in spec:
        raise _err("einsum: '...' is not supported; name every axis")
    inputs, arrow, output = spec.partition("->")
    terms = inputs.split(",")
    if len(terms) != len(ops):
        raise _err(f"einsum: {len(terms)} terms in \"{subscripts}\" for {len(ops)} operands")
    letters = set(string.ascii_letters)
    for t, x in zip(terms, ops):
        if not set(t) <= letters:
            raise _err(f"einsum: subscripts are letters, not \"{t}\"")
        if len(t) != x.ndim:
            raise _err(f"einsum: \"{t}\" names {len(t)} axes of {x.type}")
    if not arrow:
        counts = {c: "".join(terms).count(c) for c in set("".join(terms))}
        output = "".join(sorted(c for c, n in counts.items() if n == 1))
    if len(set(output)) != len(output) or not set(output) <= set("".join(terms)):
        raise _err(f"einsum: the output \"{output}\" must name distinct indices of the inputs")
    for k, (t, x) in enumerate(zip(terms, ops)):
        ops[k], terms[k] = _diagonals(x, t)
    sizes = {}
    for t, x in zip(terms, ops):
        for c, d in zip(t, x.type.shape):
            if sizes.setdefault(c, d) != d:
                raise _err(f"einsum: index '{c}' has lengths {sizes[c]} and {d}")
    x, t = ops[0], terms[0]
    for i in range(1, len(ops)):
        later = set(output) | set("".join(terms[i + 1:]))
        x, t = _einsum_pair(x, t, ops[i], terms[i], later)
    x, t = _sum_out(x, t, set(output))
    return L.transpose(x, tuple(t.index(c) for c in output))


def _diagonals(x, t):
    """An index repeated within one operand ("ii->i") is its diagonal over those axes."""
    while len(set(t)) != len(t):
        c = next(c for c in t if t.count(c) > 1)
        i, j = t.index(c), t.index(c, t.index(c) + 1)
        if x.type.shape[i] != x.type.shape[j]:
            raise _err(f"einsum: index '{c}' has lengths {x.type.shape[i]} and {x.type.shape[j]}")
        x = diagonal(x, 0, i, j)
        t = "".join(ch for k, ch in enumerate(t) if k not in (i, j)) + c
    return x, t


def _sum_out(x, t, keep):
    axes = tuple(i for i, c in enumerate(t) if c not in keep)
    if not axes:
        return x, t
    return L.sum(x, axes), "".join(c for c in t if c in keep)


def _einsum_pair(a, ta, b, tb, keep):
    """a (indices ta) times b (tb), summed over the shared indices not in `keep`."""
    a, ta = _sum_out(a, ta, keep | set(tb))
    b, tb = _sum_out(b, tb, keep | set(ta))
    batch = [c for c in ta if c in tb and c in keep]
    summed = [c for c in ta if c in tb and c not in keep]
    only_a = [c for c in ta if c not in tb]
    only_b = [c for c in tb if c not in ta]
    if not batch:
        out = _contract(a, [ta.index(c) for c in only_a], [ta.index(c) for c in summed],
                        b, [tb.index(c) for c in summed], [tb.index(c) for c in only_b])
        return out, "".join(only_a + only_b)
    # batched: [B, M, K] @ [B, K, N]
    sa, sb = a.type.shape, b.type.shape
    dims = lambda t, s, cs: [s[t.index(c)] for c in cs]  # noqa: E731
    bd, md, kd, nd = dims(ta, sa, batch), dims(ta, sa, only_a), dims(ta, sa, summed), dims(tb, sb, only_b)
    lhs = L.reshape(L.transpose(a, tuple(ta.index(c) for c in batch + only_a + summed)),
                    (dims_product(bd), dims_product(md), dims_product(kd)))
    rhs = L.reshape(L.transpose(b, tuple(tb.index(c) for c in batch + summed + only_b)),
                    (dims_product(bd), dims_product(kd), dims_product(nd)))
    out = L.reshape(L.matmul(lhs, rhs), tuple(bd + md + nd))
    return out, "".join(batch + only_a + only_b)
