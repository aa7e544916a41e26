"""Reductions that are not fused kernels: softmax, log_softmax, logsumexp,
categorical_crossentropy, argmax and argmin, as row kernels.

An operand (C-contiguous) is seen as rows: a row is the elements that reduce into one output
(`_Rows`: the kept axes pick the row, the reduced axes walk it, each run of consecutive kept or
reduced axes collapsed into one loop). A kernel iteration computes one whole row, in a fixed
order, so results never depend on how `launch` splits the rows between threads.

The arithmetic is the reference's, step for step (flowml/ir/ops/reduce.py), so results are
within a few ulp of it: the row max is subtracted before exp; sums of exp are vectorized
(`reassoc`) in short blocks added with compensation, float32 ones accumulated in float64 and
rounded once; softmax divides by the sum.
The max is `llvm.maxnum` (vectorizes; it skips NaN where numpy's max returns it, but a NaN in
the row makes its sum NaN, so every result of that row is NaN either way).
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager

import numpy as np

from ...reference import op_failed
from ....ir.indices import IndexOutOfRange
from ..irfunc import IR_TYPE, MEM_TYPE
from ..kernels import LLVMScalarBuilder, float_literal
from . import lowers
from .linalg import _load_as

SUM_BLOCK = 64  # terms per vectorized partial sum


class _Rows:
    """`shape` as rows over the reduced `axes`: `kept` / `reduced` are the groups of consecutive
    kept / reduced axes (size-1 axes dropped); a row's index runs over the kept axes in C order,
    which is the output's element order (keepdims or not)."""

    def __init__(self, shape, axes):
        self.shape = tuple(shape)
        groups: list[tuple[bool, list[int]]] = []
        for a, d in enumerate(self.shape):
            if d == 1:
                continue
            if groups and groups[-1][0] == (a in axes):
                groups[-1][1].append(a)
            else:
                groups.append((a in axes, [a]))
        self.kept = [g for r, g in groups if not r]
        self.reduced = [g for r, g in groups if r]
        self.kept_dims = [d for a, d in enumerate(self.shape) if a not in axes]
        self.reduced_dims = [d for a, d in enumerate(self.shape) if a in axes]

    def walk(self, k) -> "_Walk":
        """The extents and strides as registers of kernel k (emit before the row loop)."""
        def loops(groups):
            return [(k.size([self.shape[a] for a in g]), k.size(self.shape[g[-1] + 1:])) for g in groups]
        return _Walk(loops(self.kept), loops(self.reduced))


class _Walk:
    def __init__(self, kept, reduced):
        self.kept, self.reduced = kept, reduced

    def base(self, k, r: str) -> str:
        """The element offset of row r's first element."""
        rest, offset = r, "0"
        for j in range(len(self.kept) - 1, -1, -1):
            extent, stride = self.kept[j]
            if j > 0:
                idx = k.emit(f"urem i64 {rest}, {extent}", "ix")
                rest = k.emit(f"udiv i64 {rest}, {extent}", "ix")
            else:
                idx = rest
            offset = k.add(offset, k.mul(idx, stride))
        return offset

    @contextmanager
    def each(self, k, base: str):
        """Loops over the row's elements in C order; yields (element offset, position in row)."""
        with ExitStack() as loops:
            offset, pos = base, "0"
            for extent, stride in self.reduced:
                i = loops.enter_context(k.loop("0", extent, "j"))
                offset = k.add(offset, k.mul(i, stride))
                pos = i if pos == "0" else k.add(k.mul(pos, extent), i)
            yield offset, pos


def _intrinsic(w, name: str, dt: str, arity: int) -> str:
    t = IR_TYPE[dt]
    full = f"llvm.{name}.{'f32' if dt == 'float32' else 'f64'}"
    w.helper(full, f"declare {t} @{full}({', '.join([t] * arity)})")
    return f"@{full}"


class _RowKernel:
    """A kernel over the rows of operand x (of node n): its registers, loads and row math."""

    def __init__(self, w, n, x, axes, stem):
        g = w.graph
        self.w, self.n = w, n
        self.rows = _Rows(g.type(x).shape, axes)
        self.src = g.type(x).dtype.name
        self.dt = g.type(n).dtype.name if g.type(n).dtype.kind == "f" else self.src
        self.k = k = w.kernel(f"{stem}{n}")
        self.sb = LLVMScalarBuilder(k.lines, w.mathlib, "s")
        self.px, self.po = k.ptr(x), k.ptr(n)
        self.walk = self.rows.walk(k)

    def load(self, offset: str, dt: str | None = None) -> str:
        return _load_as(self.k, self.sb, self.px, offset, self.src, dt or self.dt)

    def store(self, value: str, offset: str, dt: str | None = None) -> None:
        dt = dt or self.dt
        self.k.store(MEM_TYPE[dt], value, self.po, offset)

    def cell(self, typ: str, init: str):
        return self.k.var(typ, init)

    def get(self, typ: str, cell: str) -> str:
        return self.k.emit(f"load {typ}, ptr {cell}", "c")

    def row_max(self, base: str) -> str:
        """The row's max (-inf for an empty row; NaN skipped, see the module's docstring)."""
        k, t = self.k, IR_TYPE[self.dt]
        maxnum = _intrinsic(self.w, "maxnum", self.dt, 2)
        m = self.cell(t, float_literal(-np.inf, self.dt))
        with self.walk.each(k, base) as (off, _):
            v = self.load(off)
            k.line(f"store {t} {k.emit(f'call {t} {maxnum}({t} {self.get(t, m)}, {t} {v})', 'mx')}, ptr {m}")
        return self.get(t, m)

    def sum_exp(self, base: str, shift: str, keep=None) -> str:
        """sum(exp(x - shift)) over the row, in the kernel's dtype; `keep(offset, e)` may store
        each term. The innermost axis is summed in blocks of SUM_BLOCK terms (each a vectorized
        loop, `reassoc`), and the blocks' sums added with Neumaier's compensation, so a long
        row's sum stays within an ulp or two, as numpy's pairwise sum (one vectorized loop over
        4097 float64 terms is ~6 ulp off)."""
        k, sb, dt = self.k, self.sb, self.dt
        acc_dt = "float64" if dt == "float32" else dt
        at = IR_TYPE[acc_dt]
        total, lost = self.cell(at, "0.0"), self.cell(at, "0.0")

        def term(off):
            e = sb.call("exp", sb.binary("sub", self.load(off), shift, dt), dt)
            if keep is not None:
                keep(off, e)
            return sb.cast(e, dt, acc_dt)

        with ExitStack() as loops:
            offset = base
            for extent, stride in self.walk.reduced[:-1]:
                i = loops.enter_context(k.loop("0", extent, "j"))
                offset = k.add(offset, k.mul(i, stride))
            if not self.walk.reduced:  # one element
                self._compensated_add(total, lost, term(offset), acc_dt)
            else:
                extent, stride = self.walk.reduced[-1]
                blocks = k.emit(f"udiv i64 {k.add(extent, str(SUM_BLOCK - 1))}, {SUM_BLOCK}", "nb")
                b = loops.enter_context(k.loop("0", blocks, "blk"))
                lo = k.mul(b, str(SUM_BLOCK))
                hi = k.emit(f"call i64 @llvm.smin.i64(i64 {k.add(lo, str(SUM_BLOCK))}, i64 {extent})", "hi")
                self.w.helper("llvm.smin.i64", "declare i64 @llvm.smin.i64(i64, i64)")
                part = self.cell(at, "0.0")
                with k.loop(lo, hi, "j") as j:
                    e = term(k.add(offset, k.mul(j, stride)))
                    k.line(f"store {at} {k.emit(f'fadd reassoc {at} {self.get(at, part)}, {e}', 'sum')}, ptr {part}")
                self._compensated_add(total, lost, self.get(at, part), acc_dt)
        t = self.get(at, total)
        # an infinite term makes the compensation NaN (inf - inf); the terms are >= 0, so the
        # total stays infinite (or NaN) from then on and is the sum
        finite = sb.compare("lt", sb.call("fabs", t, acc_dt), float_literal(np.inf, acc_dt), acc_dt)
        s = sb.select(finite, sb.binary("add", t, self.get(at, lost), acc_dt), t, acc_dt)
        return sb.cast(s, acc_dt, dt)

    def _compensated_add(self, total: str, lost: str, v: str, dt: str) -> None:
        """total += v, the rounding error added to `lost` (Neumaier; exact float ops, no flags)."""
        sb, at = self.sb, IR_TYPE[dt]
        t = self.get(at, total)
        s = sb.binary("add", t, v, dt)
        big = sb.compare("ge", sb.call("fabs", t, dt), sb.call("fabs", v, dt), dt)
        err = sb.select(big, sb.binary("add", sb.binary("sub", t, s, dt), v, dt),
                        sb.binary("add", sb.binary("sub", v, s, dt), t, dt), dt)
        self.k.line(f"store {at} {sb.binary('add', self.get(at, lost), err, dt)}, ptr {lost}")
        self.k.line(f"store {at} {s}, ptr {total}")

    def logsumexp(self, base: str) -> str:
        """log(sum(exp(x - m))) + m, m the row max where finite, else 0 (as the reference)."""
        sb, dt = self.sb, self.dt
        m = self.row_max(base)
        finite = sb.compare("lt", sb.call("fabs", m, dt), float_literal(np.inf, dt), dt)
        shift = sb.select(finite, m, sb.const(0, dt), dt)
        return sb.binary("add", sb.call("log", self.sum_exp(base, shift), dt), shift, dt)

    def finish(self, work: str) -> None:
        """Close the kernel and launch it over the rows from the entry point."""
        w = self.w
        self.k.line("ret void")
        for declaration in sorted(self.sb.intrinsics):
            w.helper(declaration, declaration)
        w.launch(self.k, w.size(self.rows.kept_dims), work)


def _no_max(graph, node, info, env):
    return op_failed(graph, node, ValueError("zero-size array to reduction operation maximum which has no identity"))


def _empty_sequence(graph, node, info, env):
    name = graph.op(node).name
    return op_failed(graph, node, ValueError(f"attempt to get {name} of an empty sequence"))


def _rows_of(w, n, stem, axes=None, empty=None):
    """The row kernel of n's operand; `empty`: the error for a zero-size axis (numpy's max and
    argmax refuse one, even with no rows)."""
    (x,) = w.operands(n)
    if axes is None:
        axes = {w.attrs(n)["axis"]}
    rk = _RowKernel(w, n, x, set(axes), stem)
    if empty is not None:
        w.fail_if(w.fn.emit(f"icmp eq i64 {w.size(rk.rows.reduced_dims)}, 0", "c"), n, empty)
    return rk, x


@lowers("softmax")
def lower_softmax(w, n):
    rk, x = _rows_of(w, n, "softmax", empty=_no_max)
    k, sb, dt = rk.k, rk.sb, rk.dt
    with k.loop("%start", "%end", "r") as r:
        base = rk.walk.base(k, r)
        m = rk.row_max(base)
        s = rk.sum_exp(base, m, keep=lambda off, e: rk.store(e, off))
        with rk.walk.each(k, base) as (off, _):  # e / sum, as the reference (not e * (1 / sum))
            e = k.load(MEM_TYPE[dt], rk.po, off)
            rk.store(sb.binary("div", e, s, dt), off)
    rk.finish(w.size(w.type(x).shape))
    w.note(f"row kernel {k.name}")


@lowers("log_softmax")
def lower_log_softmax(w, n):
    rk, x = _rows_of(w, n, "logsoftmax", empty=_no_max)
    k, sb, dt = rk.k, rk.sb, rk.dt
    with k.loop("%start", "%end", "r") as r:
        base = rk.walk.base(k, r)
        m = rk.row_max(base)
        log_sum = sb.call("log", rk.sum_exp(base, m), dt)
        with rk.walk.each(k, base) as (off, _):
            rk.store(sb.binary("sub", sb.binary("sub", rk.load(off), m, dt), log_sum, dt), off)
    rk.finish(w.size(w.type(x).shape))
    w.note(f"row kernel {k.name}")


@lowers("logsumexp")
def lower_logsumexp(w, n):
    rk, x = _rows_of(w, n, "logsumexp", axes=w.attrs(n)["axis"])
    k = rk.k
    with k.loop("%start", "%end", "r") as r:
        rk.store(rk.logsumexp(rk.walk.base(k, r)), r)
    rk.finish(w.size(w.type(x).shape))
    w.note(f"row kernel {k.name}")


def _bad_label(graph, node, info, env):
    i, value, classes = info
    return op_failed(graph, node, IndexOutOfRange(1, (i,), value, classes, "label", None))


@lowers("categorical_crossentropy")
def lower_categorical_crossentropy(w, n):
    """logsumexp(x[i]) - x[i, y[i]]; the labels are checked first, serially in the entry point,
    so the first bad one is reported (as the reference's `wrap`: [-K, K) wraps once)."""
    x, y = w.operands(n)
    rows, classes = w.type(x).shape
    ydt = w.type(y).dtype.name
    fn = w.fn
    count, K = w.dim(rows), w.dim(classes)
    py = w.ptr(y)
    low = fn.emit(f"sub i64 0, {K}", "lo")
    with fn.loop("0", count, "lab") as i:
        v = _label(fn, py, i, ydt)
        bad = fn.emit(f"or i1 {fn.emit(f'icmp slt i64 {v}, {low}', 'c')}, "
                      f"{fn.emit(f'icmp sge i64 {v}, {K}', 'c')}", "c")
        w.fail_if(bad, n, _bad_label, i, v, K)
    rk = _RowKernel(w, n, x, {1}, "xent")
    k, sb, dt = rk.k, rk.sb, rk.dt
    pyk, Kk = k.ptr(y), k.dim(classes)
    with k.loop("%start", "%end", "r") as r:
        base = rk.walk.base(k, r)
        lse = rk.logsumexp(base)
        label = _label(k, pyk, r, ydt)
        wrapped = k.emit(f"select i1 {k.emit(f'icmp slt i64 {label}, 0', 'c')}, i64 {k.add(label, Kk)}, i64 {label}")
        rk.store(sb.binary("sub", lse, rk.load(k.add(base, wrapped)), dt), r)
    rk.finish(fn.mul(count, K))
    w.note(f"row kernel {k.name} (labels checked first)")


def _label(f, ptr, i, dt) -> str:
    v = f.load(MEM_TYPE[dt], ptr, i)
    return v if dt == "int64" else f.emit(f"sext {MEM_TYPE[dt]} {v} to i64", "lab")


def _lower_argreduce(w, n, compare):
    """The position of the row's first max (min); numpy's rule: the first NaN wins."""
    axis = w.attrs(n)["axis"]
    shape = w.type(w.operands(n)[0]).shape
    axes = range(len(shape)) if axis is None else (axis,)
    rk, x = _rows_of(w, n, w.graph.op(n).name, axes, _empty_sequence)
    k, sb, dt = rk.k, rk.sb, rk.src
    t = IR_TYPE[dt]
    with k.loop("%start", "%end", "r") as r:
        base = rk.walk.base(k, r)
        best, where = rk.cell(t, rk.load(base, dt)), rk.cell("i64", "0")
        with rk.walk.each(k, base) as (off, pos):
            v, b = rk.load(off, dt), rk.get(t, best)
            take = sb.compare(compare, v, b, dt)
            if dt.startswith("float"):  # a NaN is taken, and nothing after the first one
                take = sb.logic("and", sb.logic("or", take, sb.compare("ne", v, v, dt)), sb.compare("eq", b, b, dt))
            k.line(f"store {t} {sb.select(take, v, b, dt)}, ptr {best}")
            at = k.emit(f"select i1 {take}, i64 {pos}, i64 {rk.get('i64', where)}", "at")
            k.line(f"store i64 {at}, ptr {where}")
        rk.store(rk.get("i64", where), r, "int64")
    rk.finish(w.size(shape))
    w.note(f"row kernel {k.name}")


@lowers("argmax")
def lower_argmax(w, n):
    _lower_argreduce(w, n, "gt")


@lowers("argmin")
def lower_argmin(w, n):
    _lower_argreduce(w, n, "lt")
