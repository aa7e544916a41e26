"""Shape ops and constructors. `reshape` is a view (no step: it shares its operand's buffer, see
entry.py). `transpose` is folded into the matmuls that read it (gemm's transpose flags) or
copied; `concatenate` copies each part into its place, `concat_part` copies a slice out;
`full`, `zeros_like` and `arange` fill their output.

Every copy is one loop nest (`copy_nest`): a source and a destination walked with strides per
axis (in elements, as dims), axes that are contiguous in both merged first, so a copy of rows is
one memcpy per row and a nest costs one odometer step per row rather than a div/mod chain per
element. The gather and scatter-add of `indexing` are the same nest with index arrays added to
one side's offset (`Gather`)."""

from __future__ import annotations

import math
from contextlib import ExitStack
from dataclasses import dataclass, field

import numpy as np

from ....ir import ops as P
from ....ir.types import Dim, dim_mul
from ..irfunc import MEM_TYPE
from ..kernels import ITEMSIZE, LLVMScalarBuilder, float_literal
from . import HostStep, lowers
from .linalg import swapped_source


def c_strides(shape) -> list[Dim]:
    """The element strides of a C-contiguous array of `shape`, as dims."""
    strides, s = [], 1
    for d in reversed(shape):
        strides.append(s)
        s = dim_mul(s, d)
    return strides[::-1]


@dataclass
class Gather:
    """An index array read along the nest: adds wrap(arr[at]) * mult to its access's offset, where
    `at` advances by `strides` (per nest axis, 0 where the array broadcasts) and negative indices
    wrap by `size` (they were checked to lie in [-size, size) before the nest runs)."""
    node: int
    strides: list
    size: Dim
    mult: Dim


@dataclass
class Access:
    """One side of a copy: node's buffer, walked by `strides` (dims, per nest axis) from
    `offset` (a function of the kernel giving an i64 register, or None for 0), plus gathers."""
    node: int
    strides: list
    offset: object = None
    gathers: list = field(default_factory=list)

    def walkers(self):
        return [self] + self.gathers


def _simplify(shape, accesses):
    """Axes of length 1 dropped and neighbours that every walker steps through contiguously
    (stride[j] == stride[j + 1] * len[j + 1]) merged: (lens, strides per walker)."""
    walkers = [x for a in accesses for x in a.walkers()]
    lens, strides = [], [[] for _ in walkers]
    for j, d in enumerate(shape):
        if d == 1:
            continue
        if lens and all(s[-1] == dim_mul(x.strides[j], d) for s, x in zip(strides, walkers)):
            lens[-1] = dim_mul(lens[-1], d)
            for s, x in zip(strides, walkers):
                s[-1] = x.strides[j]
            continue
        lens.append(d)
        for s, x in zip(strides, walkers):
            s.append(x.strides[j])
    if not lens:
        lens, strides = [1], [[0] for _ in walkers]
    for x, s in zip(walkers, strides):
        x.nest_strides = s
    return lens


def _load_value(k, sb, base, index, src, dst):
    """base[index] of dtype src, as a register of dtype dst (bools are i8 in memory)."""
    v = k.load(MEM_TYPE[src], base, index)
    if src == "bool":
        v = k.emit(f"trunc i8 {v} to i1", "b")
    v = sb.cast(v, src, dst)
    return k.emit(f"zext i1 {v} to i8", "b") if dst == "bool" else v


def copy_nest(w, stem, shape, dst: Access, src: Access, accumulate=False, parallel=True) -> None:
    """A kernel doing dst[...] = src[...] (or += when `accumulate`) over the index space `shape`
    (C order), launched from the entry point. Threads get whole rows (every axis but the last),
    so a nest is deterministic when no two rows write one element — and `accumulate` with
    `parallel=False` adds serially in C order, as numpy's add.at does."""
    g = w.graph
    if any(d == 0 for d in shape):
        return
    lens = _simplify(shape, [dst, src])
    for gth in dst.gathers + src.gathers:
        gth.dtype = g.type(gth.node).dtype.name
    st, dt = g.type(src.node).dtype.name, g.type(dst.node).dtype.name
    k = w.kernel(f"{stem}{src.node}")
    sb = LLVMScalarBuilder(k.lines, w.mathlib, "c")
    walkers = dst.walkers() + src.walkers()
    bases = {id(x): k.ptr(x.node) for x in walkers}
    outer, inner = lens[:-1], lens[-1]
    with k.if_(k.emit("icmp slt i64 %start, %end", "c")):
        # where row %start begins: its multi-index and every walker's offset
        idx = [k.var("i64") for _ in outer]
        offs = {id(x): k.var("i64", x.offset(k) if getattr(x, "offset", None) else "0") for x in walkers}
        rest = "%start"
        for j in range(len(outer) - 1, -1, -1):
            dj = k.dim(outer[j])
            i = k.emit(f"urem i64 {rest}, {dj}", "ix") if j else rest
            if j:
                rest = k.emit(f"udiv i64 {rest}, {dj}", "ix")
            k.line(f"store i64 {i}, ptr {idx[j]}")
            for x in walkers:
                _bump(k, offs[id(x)], k.mul(i, k.dim(x.nest_strides[j])))
        with k.loop("%start", "%end", "r"):
            at = {id(x): k.emit(f"load i64, ptr {offs[id(x)]}", "o") for x in walkers}
            _row(k, sb, w, inner, dst, src, at, bases, st, dt, accumulate)
            _odometer(k, outer, idx, walkers, offs)
    k.line("ret void")
    for declaration in sorted(sb.intrinsics):
        w.helper(declaration, declaration)
    rows = w.size(outer)
    w.launch(k, rows, w.fn.mul(rows, w.dim(inner)), parallel_ok=parallel)


def _bump(k, var, delta):
    if delta != "0":
        v = k.emit(f"load i64, ptr {var}", "o")
        k.line(f"store i64 {k.emit(f'add i64 {v}, {delta}', 'o')}, ptr {var}")


def _odometer(k, outer, idx, walkers, offs):
    """Step the row multi-index by one: the last outer axis advances, carrying into the ones
    before it; every walker's offset follows."""
    with ExitStack() as carry:
        for j in range(len(outer) - 1, -1, -1):
            i = k.emit(f"add i64 {k.emit(f'load i64, ptr {idx[j]}', 'ix')}, 1", "ix")
            k.line(f"store i64 {i}, ptr {idx[j]}")
            for x in walkers:
                _bump(k, offs[id(x)], k.dim(x.nest_strides[j]))
            if j == 0:
                break
            dj = k.dim(outer[j])
            carry.enter_context(k.if_(k.emit(f"icmp eq i64 {i}, {dj}", "c")))
            k.line(f"store i64 0, ptr {idx[j]}")
            for x in walkers:
                _bump(k, offs[id(x)], k.emit(f"sub i64 0, {k.mul(dj, k.dim(x.nest_strides[j]))}", "o"))


def _gather_terms(k, x, at, bases, i):
    """The sum of x's gathered offsets at inner position i (None: at the row's start)."""
    total = "0"
    for gth in x.gathers:
        t = MEM_TYPE[gth.dtype]
        pos = at[id(gth)] if i is None else k.add(at[id(gth)], k.mul(i, k.dim(gth.nest_strides[-1])))
        v = k.load(t, bases[id(gth)], pos)
        if t != "i64":
            v = k.emit(f"sext {t} {v} to i64", "g")
        neg = k.emit(f"icmp slt i64 {v}, 0", "c")
        v = k.emit(f"select i1 {neg}, i64 {k.add(v, k.dim(gth.size))}, i64 {v}", "g")
        total = k.add(total, k.mul(v, k.dim(gth.mult)))
    return total


def _row(k, sb, w, inner, dst, src, at, bases, st, dt, accumulate):
    """One row of the nest: `inner` elements."""
    n_inner = k.dim(inner)
    if not dst.gathers and not src.gathers and not accumulate and st == dt \
            and dst.nest_strides[-1] == 1 and src.nest_strides[-1] == 1:
        pd = k.gep(MEM_TYPE[dt], bases[id(dst)], at[id(dst)])
        ps = k.gep(MEM_TYPE[st], bases[id(src)], at[id(src)])
        nbytes = k.mul(n_inner, str(ITEMSIZE[dt]))
        k.line(f"call void @llvm.memcpy.p0.p0.i64(ptr {pd}, ptr {ps}, i64 {nbytes}, i1 false)")
        w.helper("llvm.memcpy", "declare void @llvm.memcpy.p0.p0.i64(ptr, ptr, i64, i1)")
        return
    # gathers whose arrays stay put along the row are read once per row
    per_row = {id(x): _gather_terms(k, x, at, bases, None) for x in (dst, src)
               if x.gathers and all(gth.nest_strides[-1] == 0 for gth in x.gathers)}
    with k.loop("0", n_inner, "e") as i:
        where = {}
        for x in (dst, src):
            off = k.add(at[id(x)], k.mul(i, k.dim(x.nest_strides[-1])))
            if x.gathers:
                off = k.add(off, per_row[id(x)] if id(x) in per_row else _gather_terms(k, x, at, bases, i))
            where[id(x)] = off
        v = _load_value(k, sb, bases[id(src)], where[id(src)], st, dt)
        if accumulate:
            old = k.load(MEM_TYPE[dt], bases[id(dst)], where[id(dst)])
            v = k.emit(f"or i8 {old}, {v}", "b") if dt == "bool" else sb.binary("add", old, v, dt)
        k.store(MEM_TYPE[dt], v, bases[id(dst)], where[id(dst)])


# ----------------------------------------------------------------- ops


@lowers("transpose")
def lower_transpose(w, n):
    g = w.graph
    users = w.users(n)
    if swapped_source(g, n) is not None and users and not w.is_result(n) \
            and all(g.op(u) is P.matmul or g.op(u) is P.gemm and g.operands(u)[2] != n for u in users):
        # every reader is a product that reads the operand with a transpose flag (the memory plan
        # keeps what it transposes alive until then)
        w.note("folded")
        return
    (x,) = w.operands(n)
    axes = tuple(g.attrs(n)["axes"])
    xs = c_strides(g.type(x).shape)
    shape = g.type(n).shape
    copy_nest(w, "tr", shape, Access(n, c_strides(shape)), Access(x, [xs[a] for a in axes]))
    w.note("copy kernel")


def _axis_start(parts, axis):
    """A function of a kernel giving the sum of `parts`' dims along `axis` (where a part starts)."""
    def start(k):
        total = "0"
        for d in parts:
            total = k.add(total, k.dim(d))
        return total
    return start


def _scaled(start, stride):
    return lambda k: k.mul(start(k), k.dim(stride))


@lowers("concatenate")
def lower_concatenate(w, n):
    g = w.graph
    axis = g.attrs(n)["axis"]
    shape = g.type(n).shape
    out = c_strides(shape)
    xs = w.operands(n)
    for i, x in enumerate(xs):
        start = _axis_start([g.type(o).shape[axis] for o in xs[:i]], axis)
        xshape = g.type(x).shape
        copy_nest(w, "cat", xshape, Access(n, out, _scaled(start, out[axis])), Access(x, c_strides(xshape)))
    w.note(f"{len(xs)} copy kernels")


@lowers("concat_part")
def lower_concat_part(w, n):
    g = w.graph
    a = g.attrs(n)
    gnode, xs = w.operands(n)[0], w.operands(n)[1:]
    src = c_strides(g.type(gnode).shape)
    start = _axis_start([g.type(o).shape[a["axis"]] for o in xs[:a["k"]]], a["axis"])
    shape = g.type(n).shape
    copy_nest(w, "part", shape, Access(n, c_strides(shape)), Access(gnode, src, _scaled(start, src[a["axis"]])))
    w.note("copy kernel")


def zero_fill(w, n) -> None:
    """node n's buffer set to zero bytes (0, 0.0 and False) from the entry point."""
    t = w.type(n)
    nbytes = w.fn.mul(w.size(t.shape), str(t.dtype.itemsize))
    w.fn.line(f"call void @llvm.memset.p0.i64(ptr {w.ptr(n)}, i8 0, i64 {nbytes}, i1 false)")
    w.helper("llvm.memset", "declare void @llvm.memset.p0.i64(ptr, i8, i64, i1)")


def _fill_kernel(w, n, stem, element):
    """A kernel storing element(k, i) (a register in memory type) at each position i of n."""
    t = w.type(n)
    k = w.kernel(f"{stem}{n}")
    po = k.ptr(n)
    with k.loop("%start", "%end", "e") as i:
        k.store(MEM_TYPE[t.dtype.name], element(k, i), po, i)
    k.line("ret void")
    w.launch(k, w.size(t.shape))


def _literal(value, dtype: str) -> str:
    """numpy's value of np.full(..., value, dtype) as an LLVM constant in memory type."""
    v = np.full((), value, dtype=dtype)[()]
    if dtype.startswith("float"):
        return float_literal(float(v), dtype)
    return str(int(v))


@lowers("full")
def lower_full(w, n):
    a = w.attrs(n)
    dtype = w.type(n).dtype.name
    if dtype not in ITEMSIZE:
        raise HostStep(f"no native fill for {dtype}")
    value = np.full((), a["value"], dtype=dtype)[()]
    if value == 0 and not (dtype.startswith("float") and math.copysign(1.0, float(value)) < 0):
        zero_fill(w, n)
        w.note("memset")
        return
    literal = _literal(a["value"], dtype)
    _fill_kernel(w, n, "full", lambda k, i: literal)
    w.note("fill kernel")


@lowers("zeros_like")
def lower_zeros_like(w, n):
    zero_fill(w, n)
    w.note("memset")


@lowers("arange")
def lower_arange(w, n):
    a = w.attrs(n)
    start, step = a["start"], a["step"]
    _fill_kernel(w, n, "arange", lambda k, i: k.add(str(start), k.mul(i, str(step))))
    w.note("fill kernel")
