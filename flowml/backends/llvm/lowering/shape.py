"""Shape ops. `reshape` is a view (no step: it shares its operand's buffer, see entry.py).
`transpose` is folded into the matmuls that read it (gemm's transpose flags) or copied by a
kernel over the output's elements."""

from __future__ import annotations

from ....ir import ops as P
from ..irfunc import MEM_TYPE
from . import lowers
from .linalg import swapped_source


def strided_copy_kernel(w, n, src, src_strides, stem="copy"):
    """A kernel writing node n's elements (C order) from `src`, where output axis j advances the
    source by `src_strides[j]` elements (i64 registers or ints of the kernel): transposes,
    broadcasts (stride 0)."""
    g = w.graph
    shape = g.type(n).shape
    t = MEM_TYPE[g.type(n).dtype.name]
    k = w.kernel(f"{stem}{n}")
    ps, po = k.ptr(src), k.ptr(n)
    strides = [s(k) if callable(s) else str(s) for s in src_strides]
    with k.loop("%start", "%end", "e") as e:
        rest, offset = e, "0"
        for j in range(len(shape) - 1, -1, -1):
            dj = k.dim(shape[j])
            if j > 0:
                idx = k.emit(f"urem i64 {rest}, {dj}", "ix")
                rest = k.emit(f"udiv i64 {rest}, {dj}", "ix")
            else:
                idx = rest
            offset = k.add(offset, k.mul(idx, strides[j]))
        k.store(t, k.load(t, ps, offset), po, e)
    k.line("ret void")
    total = w.size(shape)
    w.launch(k, total)


@lowers("transpose")
def lower_transpose(w, n):
    g = w.graph
    users = w.users(n)
    if swapped_source(g, n) is not None and users and not w.is_result(n) \
            and all(g.op(u) is P.matmul for u in users):
        w.note("folded")  # every reader is a matmul, which reads the operand with a transpose flag
        return
    (x,) = w.operands(n)
    axes = tuple(g.attrs(n)["axes"])
    xshape = g.type(x).shape

    def stride_of(axis):
        return lambda k: k.size(xshape[axis + 1:])
    strided_copy_kernel(w, n, x, [stride_of(a) for a in axes], "tr")
    w.note("copy kernel")
