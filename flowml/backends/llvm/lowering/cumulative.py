"""cumsum and cumprod as kernels over the operand (C-contiguous) seen as [outer, n, inner]: each
element is accumulated along the axis in order (from its end when `reverse`), in the result
dtype, as numpy does, so results are numpy's to the bit and do not depend on how the work is
split between threads.

Along the last axis (inner = 1) a kernel iteration is one row, accumulated in a register. Along
another axis the rows are `inner` apart, and walking one row at a time would jump through memory:
an iteration is instead a block of up to BLOCK neighbouring rows, which steps along the axis
together (y[j] = y[j - 1] + x[j] over the block: contiguous, and the vectorizer widens it)."""

from __future__ import annotations

from ..irfunc import MEM_TYPE
from ..kernels import ITEMSIZE, LLVMScalarBuilder
from . import HostStep, lowers
from .linalg import _load_as

BLOCK = 4096  # neighbouring rows that step along the axis together (fewer: the vector loop's set-up per step dominates)


@lowers("cumsum", "cumprod")
def lower_cumulative(w, n):
    g = w.graph
    (x,) = w.operands(n)
    a = w.attrs(n)
    shape, axis = g.type(x).shape, a["axis"]
    src, dt = g.type(x).dtype.name, g.type(n).dtype.name
    if src not in ITEMSIZE or dt not in ITEMSIZE:
        raise HostStep(f"no native {g.op(n).name} of {src}")
    op = "add" if g.op(n).name == "cumsum" else "mul"
    k = w.kernel(f"{g.op(n).name}{n}")
    sb = LLVMScalarBuilder(k.lines, w.mathlib, "s")
    px, po = k.ptr(x), k.ptr(n)
    length = k.dim(shape[axis])
    inner = k.size(shape[axis + 1:])
    last = k.emit(f"sub i64 {length}, 1", "ix")

    def position(j):  # the j-th step along the axis (from the end when reverse)
        return k.emit(f"sub i64 {last}, {j}", "ix") if a["reverse"] else j

    t = MEM_TYPE[dt]
    if inner == "1":
        with k.loop("%start", "%end", "r") as r:
            base = k.mul(r, length)
            acc = k.var(t, sb.const(0 if op == "add" else 1, dt))
            with k.loop("0", length, "j") as j:
                at = k.add(base, position(j))
                v = sb.binary(op, k.emit(f"load {t}, ptr {acc}", "a"), _load_as(k, sb, px, at, src, dt), dt)
                k.line(f"store {t} {v}, ptr {acc}")
                k.store(t, v, po, at)
        items = w.size(shape[:axis])
    else:
        blocks = k.emit(f"udiv i64 {k.add(inner, str(BLOCK - 1))}, {BLOCK}", "ix")
        with k.loop("%start", "%end", "r") as r:
            o = k.emit(f"udiv i64 {r}, {blocks}", "ix")
            lo = k.mul(k.emit(f"urem i64 {r}, {blocks}", "ix"), str(BLOCK))
            end = k.add(lo, str(BLOCK))
            hi = k.emit(f"select i1 {k.emit(f'icmp slt i64 {end}, {inner}', 'c')}, i64 {end}, i64 {inner}", "ix")
            base = k.mul(k.mul(o, length), inner)
            with k.if_(k.emit(f"icmp sgt i64 {length}, 0", "c")):
                first = k.add(base, k.mul(position("0"), inner))
                with k.loop(lo, hi, "i") as i:  # the first step: the operand itself
                    at = k.add(first, i)
                    k.store(t, _load_as(k, sb, px, at, src, dt), po, at)
                with k.loop("1", length, "j") as j:
                    row = k.add(base, k.mul(position(j), inner))
                    prev = k.add(base, k.mul(position(k.emit(f"sub i64 {j}, 1", "ix")), inner))
                    with k.loop(lo, hi, "i") as i:
                        v = sb.binary(op, k.load(t, po, k.add(prev, i)), _load_as(k, sb, px, k.add(row, i), src, dt), dt)
                        k.store(t, v, po, k.add(row, i))
        items = w.fn.mul(w.size(shape[:axis]), _blocks(w, shape[axis + 1:]))
    k.line("ret void")
    for declaration in sorted(sb.intrinsics):
        w.helper(declaration, declaration)
    w.launch(k, items, w.size(shape))
    w.note("row kernel" if inner == "1" else f"row-block kernel ({BLOCK} rows a block)")


def _blocks(w, inner_shape) -> str:
    """ceil(inner / BLOCK) in the entry point."""
    inner = w.size(inner_shape)
    return w.fn.emit(f"udiv i64 {w.fn.add(inner, str(BLOCK - 1))}, {BLOCK}", "ix")
