"""cumsum and cumprod as a row kernel: the operand (C-contiguous) seen as [outer, n, inner], a
row is the n elements at one (outer, inner) position, `inner` apart. A kernel iteration runs one
whole row in order (from its end when `reverse`), accumulating in the result dtype as numpy
does, so results are numpy's to the bit and do not depend on how the rows are split between
threads."""

from __future__ import annotations

from ....ir.types import dims_product
from ..irfunc import MEM_TYPE
from ..kernels import ITEMSIZE, LLVMScalarBuilder
from . import HostStep, lowers
from .linalg import _load_as


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
    with k.loop("%start", "%end", "r") as r:
        # row r: outer index r / inner, inner index r % inner
        o = k.emit(f"udiv i64 {r}, {inner}", "ix") if inner != "1" else r
        i = k.emit(f"urem i64 {r}, {inner}", "ix") if inner != "1" else "0"
        base = k.add(k.mul(k.mul(o, length), inner), i)
        acc = k.var(MEM_TYPE[dt] if dt != "bool" else "i8", sb.const(0 if op == "add" else 1, dt))
        with k.loop("0", length, "j") as j:
            step = k.emit(f"sub i64 {k.emit(f'sub i64 {length}, 1', 'ix')}, {j}", "ix") if a["reverse"] else j
            at = k.add(base, k.mul(step, inner))
            v = sb.binary(op, k.emit(f"load {MEM_TYPE[dt]}, ptr {acc}", "a"), _load_as(k, sb, px, at, src, dt), dt)
            k.line(f"store {MEM_TYPE[dt]} {v}, ptr {acc}")
            k.store(MEM_TYPE[dt], v, po, at)
    k.line("ret void")
    for declaration in sorted(sb.intrinsics):
        w.helper(declaration, declaration)
    rows = w.size([d for j, d in enumerate(shape) if j != axis])
    w.launch(k, rows, w.size(shape))
    w.note("row kernel")
