"""Indexing: the gather `index` (numpy's basic and advanced indexing), its VJP the scatter-add
`index_add`, and `onehot`.

An index is a strided access into its operand (`shape.copy_nest`): each slice gives an axis a
stride (step times the axis's stride) and a start, an int a fixed offset, and each index array
a `Gather` term read along the broadcast axes. Indices are checked in the entry point before the
kernel runs — a serial scan, so the error names the first bad position, with the reference
backend's message — and the kernel wraps negative ones (numpy's rule, `flowml.ir.indices`).

`index_add` zeroes its output and runs the same nest the other way round, adding: serially in C
order when index arrays may repeat (numpy's add.at order, so the same bits), split over threads
when the index is only slices and ints (no element is written twice)."""

from __future__ import annotations

import functools

import numpy as np

from ....ir.indices import IndexOutOfRange
from ....ir.ops.indexing import _spec_to_numpy, index_type
from ....ir.types import Sym, dim_mul, resolve_dim
from ...reference import op_failed
from ..irfunc import MEM_TYPE
from . import HostStep, lowers
from .shape import Access, Gather, c_strides, copy_nest, zero_fill

_FULL = ("slice", None, None, None)


def _smin_smax(w):
    w.helper("llvm.smin.i64", "declare i64 @llvm.smin.i64(i64, i64)")
    w.helper("llvm.smax.i64", "declare i64 @llvm.smax.i64(i64, i64)")


def _slice_start(w, item, d):
    """A function of a kernel giving where slice `item` of an axis of length d starts (Python's
    slice.indices: a negative start counts from the end, then it is clamped)."""
    start, step = item[1], item[3] or 1
    _smin_smax(w)

    def emit(k):
        n = k.dim(d)
        if start is None:
            return "0" if step > 0 else k.emit(f"sub i64 {n}, 1", "st")
        s = k.dim(start)
        neg = k.emit(f"icmp slt i64 {s}, 0", "c")
        s = k.emit(f"select i1 {neg}, i64 {k.emit(f'add i64 {s}, {n}', 'st')}, i64 {s}", "st")
        lo, hi = ("0", n) if step > 0 else ("-1", k.emit(f"sub i64 {n}, 1", "st"))
        s = k.emit(f"call i64 @llvm.smax.i64(i64 {s}, i64 {lo})", "st")
        return k.emit(f"call i64 @llvm.smin.i64(i64 {s}, i64 {hi})", "st")
    return emit


def _wrapped_int(i, d):
    """A function of a kernel giving the constant index i on an axis of length d, wrapped."""
    if isinstance(d, int):
        return lambda k: str(i % d if i < 0 else i)
    return lambda k: k.emit(f"add i64 {k.dim(d)}, {i}", "ix") if i < 0 else str(i)


def _access(w, x_type, spec, arrays, out_shape):
    """The access of index spec `spec` into a value of type x_type, over the index space
    out_shape (the shape of x[spec]): (strides per axis, offset, gathers, checks), where checks
    are (spec position, item) in spec order for the entry point to run first."""
    xshape = x_type.shape
    xs = c_strides(xshape)
    consumed = sum(1 for it in spec if it[0] != "new")
    spec = tuple(spec) + (_FULL,) * (len(xshape) - consumed)
    has_arr = any(it[0] == "arr" for it in spec)
    adv = [i for i, it in enumerate(spec) if has_arr and it[0] in ("arr", "int")]
    n_basic = sum(1 for it in spec if it[0] in ("slice", "new"))
    nb = len(out_shape) - n_basic  # the broadcast index arrays' axes
    contiguous = adv == list(range(adv[0], adv[-1] + 1)) if adv else True
    b0 = sum(1 for it in spec[:adv[0]] if it[0] in ("slice", "new")) if adv and contiguous else 0
    strides = [0] * len(out_shape)
    offsets, gathers, checks = [], [], []
    axis = o = 0
    for pos, it in enumerate(spec):
        kind = it[0]
        if adv and pos == adv[0] and contiguous:
            o += nb
        if kind == "new":
            o += 1
            continue
        d = xshape[axis]
        if kind == "slice":
            step = 1 if it[3] is None else it[3]
            if not isinstance(step, int):
                raise HostStep("a slice step that is a dim")
            for v in it[1:3]:
                if isinstance(v, Sym) and any(name not in _known_dims(w) for name in v.names):
                    raise HostStep(f"a slice bound ({v}) that is not a dim of the function")
            oo = o + (nb if adv and not contiguous else 0)
            strides[oo] = dim_mul(step, xs[axis])
            start = _slice_start(w, it, d)
            offsets.append((start, xs[axis]))
            o += 1
        elif kind == "int":
            offsets.append((_wrapped_int(it[1], d), xs[axis]))
            if not isinstance(d, int):
                checks.append(("int", axis, it[1], d))
        else:
            arr = arrays[it[1] - 1]
            ashape = w.type(arr).shape
            a_strides = c_strides(ashape)
            gs = [0] * len(out_shape)
            lead = nb - len(ashape)
            for b in range(nb):
                aa = b - lead
                if aa >= 0 and ashape[aa] != 1:
                    gs[b0 + b] = a_strides[aa]
            gathers.append(Gather(arr, gs, d, xs[axis]))
            checks.append(("arr", axis, it[1] - 1, d))
        axis += 1

    def offset(k):
        total = "0"
        for start, stride in offsets:
            total = k.add(total, k.mul(start(k), k.dim(stride)))
        return total
    return strides, offset, gathers, checks


def _known_dims(w):
    cached = getattr(w.program, "_index_dims", None)
    if cached is None:
        from ..entry import dims_used  # (entry imports the lowering table)
        cached = w.program._index_dims = dims_used(w.graph, w.program.nodes)
    return cached


def run_checks(w, n, checks, arrays, first_array: int, x_node: int) -> None:
    """The entry point's checks of the index's ints (on symbolic axes) and arrays, in spec order
    (the reference raises for the first bad item)."""
    for kind, axis, what, d in checks:
        if kind == "int":
            bad = _int_out_of_range(w, what, d)
            w.fail_if(bad, n, functools.partial(_int_error, axis, what, x_node))
        else:
            check_range(w, n, arrays[what], d, first_array + what, "index", axis)


def _int_out_of_range(w, i, d):
    fn = w.fn
    shifted = fn.emit(f"add i64 {w.dim(d)}, {i}", "ck")  # in range iff 0 <= i + d < 2d
    return fn.emit(f"icmp uge i64 {shifted}, {fn.emit(f'shl i64 {w.dim(d)}, 1', 'ck')}", "ck")


def _int_error(axis, i, x_node, graph, node, info, env):
    """The error of int index `i` out of range on `axis` (describers are partials of module-level
    functions, so that a lowered program pickles for the warm model cache)."""
    shape = tuple(resolve_dim(d, env) for d in graph.type(x_node).shape)
    try:  # the reference's own check raises the IndexError it would raise
        _spec_to_numpy((_FULL,) * axis + (("int", i),), [], env, shape, 1)
    except IndexError as e:
        return op_failed(graph, node, e)
    raise AssertionError("the native check and the reference disagree")


def check_range(w, n, arr, d, operand, what, axis) -> None:
    """Fail unless every entry of index array `arr` lies in [-d, d): a vectorizable scan for any
    bad one, then (only if there is one) a serial scan for the first, reported by position."""
    fn = w.fn
    t = MEM_TYPE[w.type(arr).dtype.name]
    count = w.size(w.type(arr).shape)
    size = w.dim(d)
    twice = fn.emit(f"shl i64 {size}, 1", "ck")
    base = w.ptr(arr)

    def is_bad(i):
        v = fn.load(t, base, i)
        if t != "i64":
            v = fn.emit(f"sext {t} {v} to i64", "ck")
        return v, fn.emit(f"icmp uge i64 {fn.emit(f'add i64 {v}, {size}', 'ck')}, {twice}", "ck")
    anybad = fn.var("i8", "0")
    with fn.loop("0", count, "ck") as i:
        bad = fn.emit(f"zext i1 {is_bad(i)[1]} to i8", "ck")
        seen = fn.emit(f"load i8, ptr {anybad}", "ck")
        fn.line(f"store i8 {fn.emit(f'or i8 {seen}, {bad}', 'ck')}, ptr {anybad}")
    seen = fn.emit(f"load i8, ptr {anybad}", "ck")
    with fn.if_(fn.emit(f"icmp ne i8 {seen}, 0", "ck")):
        with fn.loop("0", count, "fb") as i:
            v, bad = is_bad(i)
            w.fail_if(bad, n, functools.partial(_range_error, arr, d, operand, what, axis), i, v)


def _range_error(arr, d, operand, what, axis, graph, node, info, env):
    shape = tuple(resolve_dim(s, env) for s in graph.type(arr).shape)
    position = tuple(int(p) for p in np.unravel_index(info[0], shape)) if shape else ()
    return op_failed(graph, node, IndexOutOfRange(operand, position, info[1], resolve_dim(d, env), what, axis))


@lowers("index")
def lower_index(w, n):
    g = w.graph
    x, *arrays = w.operands(n)
    spec = g.attrs(n)["spec"]
    shape = g.type(n).shape
    strides, offset, gathers, checks = _access(w, g.type(x), spec, arrays, shape)
    run_checks(w, n, checks, arrays, 1, x)
    copy_nest(w, "gather", shape, Access(n, c_strides(shape)), Access(x, strides, offset, gathers))
    w.note("gather kernel" if gathers else "strided copy kernel")


@lowers("index_add")
def lower_index_add(w, n):
    g = w.graph
    gnode, like, *arrays = w.operands(n)
    spec = g.attrs(n)["spec"]
    shape = g.type(gnode).shape
    if index_type(g.type(like), spec, [g.type(a) for a in arrays]) != tuple(shape):
        raise HostStep("a gradient not shaped like the index")
    strides, offset, gathers, checks = _access(w, g.type(n), spec, arrays, shape)
    run_checks(w, n, checks, arrays, 2, n)
    zero_fill(w, n)
    copy_nest(w, "scatter", shape, Access(n, strides, offset, gathers), Access(gnode, c_strides(shape)),
              accumulate=bool(gathers), parallel=not gathers)
    w.note("scatter-add kernel, one thread (in element order)" if gathers else "strided copy kernel")


@lowers("onehot")
def lower_onehot(w, n):
    g = w.graph
    (y,) = w.operands(n)
    classes = g.attrs(n)["n"]
    dt = g.type(n).dtype.name
    check_range(w, n, y, classes, 0, "label", None)
    zero_fill(w, n)
    k = w.kernel(f"onehot{n}")
    py, po = k.ptr(y), k.ptr(n)
    t = MEM_TYPE[g.type(y).dtype.name]
    nc = k.dim(classes)
    one = {"float32": "1.0", "float64": "1.0"}.get(dt, "1")
    with k.loop("%start", "%end", "e") as e:
        v = k.load(t, py, e)
        if t != "i64":
            v = k.emit(f"sext {t} {v} to i64", "l")
        neg = k.emit(f"icmp slt i64 {v}, 0", "c")
        v = k.emit(f"select i1 {neg}, i64 {k.add(v, nc)}, i64 {v}", "l")
        k.store(MEM_TYPE[dt], one, po, k.add(k.mul(e, nc), v))
    k.line("ret void")
    w.launch(k, w.size(g.type(y).shape))
    w.note("memset and a kernel writing the ones")
