"""matmul: scipy's BLAS gemm called by pointer from the entry point (`..blas`: the capsules of
`scipy.linalg.cython_blas`), one call per matrix of the batch; an operand that is a transpose
of its last two axes is read as it is stored, with gemm's transpose flag, so `x.T @ g` copies
nothing. Integer and mixed-dtype products (no BLAS routine) run a native loop kernel."""

from __future__ import annotations

from ....ir import ops as P
from .. import blas
from ..irfunc import IR_TYPE, MEM_TYPE
from ..kernels import LLVMScalarBuilder, float_literal
from . import lowers

_BLAS = {"float32": "s", "float64": "d"}


def swapped_source(g, o):
    """The operand of `o` when `o` transposes just its last two axes, else None."""
    if g.op(o) is not P.transpose:
        return None
    axes = tuple(g.attrs(o)["axes"])
    nd = len(axes)
    if nd < 2 or axes != tuple(range(nd - 2)) + (nd - 1, nd - 2):
        return None
    return g.operands(o)[0]


class _Matrix:
    """One operand as matrices: where they are, their batch dims, rows x cols as stored, and
    whether they are read transposed."""

    def __init__(self, g, o, vector_rows: bool):
        src = swapped_source(g, o)
        self.node = src if src is not None else o
        self.trans = src is not None
        shape = g.type(o).shape
        if len(shape) == 1:  # numpy: a vector is a 1 x K row (left) or a K x 1 column (right)
            shape = (1,) + shape if vector_rows else shape + (1,)
        self.batch = shape[:-2]
        self.rows, self.cols = shape[-2], shape[-1]  # of the operand as used (after transposing)


def _batch_offset(fn, bi, out_batch, m: _Matrix, elems: str) -> str:
    """Element offset of matrix `bi` of the output's batch in operand `m` (broadcasting)."""
    if not m.batch:
        return "0"
    lead = len(out_batch) - len(m.batch)
    offset, rest, stride = "0", bi, elems
    for j in range(len(out_batch) - 1, -1, -1):
        dj = fn.dim(out_batch[j])
        idx = fn.emit(f"urem i64 {rest}, {dj}", "bi")
        rest = fn.emit(f"udiv i64 {rest}, {dj}", "bi")
        k = j - lead
        if k >= 0 and m.batch[k] != 1:
            offset = fn.add(offset, fn.mul(idx, stride))
            stride = fn.mul(stride, fn.dim(m.batch[k]))
    return offset


@lowers("matmul")
def lower_matmul(w, n):
    g = w.graph
    a_node, b_node = w.operands(n)
    a, b = _Matrix(g, a_node, True), _Matrix(g, b_node, False)
    out_t = g.type(n)
    dt = out_t.dtype.name
    M, K, N = w.dim(a.rows), w.dim(a.cols), w.dim(b.cols)
    matrix_dims = sum(g.type(o).ndim > 1 for o in (a_node, b_node))  # M and N, unless a vector's
    out_batch = out_t.shape[:out_t.ndim - matrix_dims]
    fn = w.fn
    mk, kn, mn = fn.mul(M, K), fn.mul(K, N), fn.mul(M, N)
    count = w.size(out_batch)
    blas_ok = dt in _BLAS and g.type(a.node).dtype.name == dt and g.type(b.node).dtype.name == dt
    pa, pb, pc = w.ptr(a.node), w.ptr(b.node), w.ptr(n)
    if blas_ok:
        call = _gemm_call(w, dt, a.trans, b.trans, M, N, K)
        t = MEM_TYPE[dt]
        if not out_batch:
            call(pa, pb, pc)
        else:
            with fn.loop("0", count, "mb") as bi:
                call(fn.gep(t, pa, _batch_offset(fn, bi, out_batch, a, mk)),
                     fn.gep(t, pb, _batch_offset(fn, bi, out_batch, b, kn)),
                     fn.gep(t, pc, fn.mul(bi, mn)))
        flags = "".join(["T" if a.trans else "N", "T" if b.trans else "N"])
        w.note(f"BLAS {_BLAS[dt]}gemm ({flags})" + (" per batch matrix" if out_batch else ""))
        return
    _loop_matmul(w, n, a, b, out_batch, M, N, K, mk, kn, mn, count)
    w.note("native loop (no BLAS routine for these dtypes)")


@lowers("gemm")
def lower_gemm(w, n):
    """alpha * op(A) @ B + beta * C: C copied into the result's buffer unless it is that buffer
    (a param updated in place), then one BLAS gemm with beta."""
    g = w.graph
    a_node, b_node, c_node = w.operands(n)
    a, b = _Matrix(g, a_node, True), _Matrix(g, b_node, False)
    t = g.type(n)
    dt = t.dtype.name
    M, K, N = w.dim(a.rows), w.dim(a.cols), w.dim(b.cols)
    fn = w.fn
    pc, out = w.ptr(c_node), w.ptr(n)
    with fn.if_(fn.emit(f"icmp ne ptr {pc}, {out}", "c")):
        nbytes = fn.mul(fn.mul(M, N), str(t.dtype.itemsize))
        fn.line(f"call void @llvm.memmove.p0.p0.i64(ptr {out}, ptr {pc}, i64 {nbytes}, i1 false)")
        w.helper("llvm.memmove", "declare void @llvm.memmove.p0.p0.i64(ptr, ptr, i64, i1)")
    attrs = w.attrs(n)
    _gemm_call(w, dt, a.trans, b.trans, M, N, K, alpha=attrs["alpha"], beta=attrs["beta"])(
        w.ptr(a.node), w.ptr(b.node), out)
    flags = "".join(["T" if a.trans else "N", "T" if b.trans else "N"])
    w.note(f"BLAS {_BLAS[dt]}gemm ({flags}) adding beta * c")


def _gemm_call(w, dt, trans_a, trans_b, M, N, K, alpha=1.0, beta=0.0):
    """A function emitting one row-major C = alpha * op(A) @ op(B) + beta * C through
    column-major gemm: C^T = op(B)^T op(A)^T, i.e. gemm(tb, ta, N, M, K, alpha, B, ldb, A, lda,
    beta, C, N)."""
    fn = w.fn
    routine = w.blas(_BLAS[dt] + "gemm")
    ft = IR_TYPE[dt]

    def i32(value):
        one = fn.emit(f"call i64 @llvm.smax.i64(i64 {value}, i64 1)", "ld")  # BLAS wants ld >= 1
        w.helper("llvm.smax.i64", "declare i64 @llvm.smax.i64(i64, i64)")
        return fn.emit(f"trunc i64 {one} to i32", "ld")

    def cell(typ, value):
        p = fn.var(typ)
        fn.line(f"store {typ} {value}, ptr {p}")
        return p

    def scalar(value):
        return cell(ft, float_literal(value, dt))

    def emit(pa, pb, pc):
        restore = one_thread_if_small(w, fn.mul(fn.mul(M, N), K))
        ta = cell("i8", ord("T" if trans_b else "N"))
        tb = cell("i8", ord("T" if trans_a else "N"))
        m = cell("i32", fn.emit(f"trunc i64 {N} to i32", "d"))
        nn = cell("i32", fn.emit(f"trunc i64 {M} to i32", "d"))
        k = cell("i32", fn.emit(f"trunc i64 {K} to i32", "d"))
        ldb = cell("i32", i32(K if trans_b else N))
        lda = cell("i32", i32(M if trans_a else K))
        ldc = cell("i32", i32(N))
        fn.line(f"call void {routine}(ptr {ta}, ptr {tb}, ptr {m}, ptr {nn}, ptr {k}, ptr {scalar(alpha)}, "
                f"ptr {pb}, ptr {ldb}, ptr {pa}, ptr {lda}, ptr {scalar(beta)}, ptr {pc}, ptr {ldc})")
        restore()
    return emit


def one_thread_if_small(w, work: str):
    """Run the BLAS call about to be emitted on the calling thread alone when `work` (flops, an
    i64) is below `blas.SMALL_GEMM` (see there); returns the function that emits the restoring
    call, for after it."""
    fn = w.fn
    setter = w.blas(blas.THREADS)
    small = fn.emit(f"icmp ult i64 {work}, {blas.SMALL_GEMM}", "small")
    old = fn.var("i32", "0")
    with fn.if_(small):
        fn.line(f"store i32 {fn.emit(f'call i32 {setter}(i32 1)', 'nt')}, ptr {old}")

    def restore():
        with fn.if_(small):
            fn.line(f"call i32 {setter}(i32 {fn.emit(f'load i32, ptr {old}', 'nt')})")
    return restore


def _loop_matmul(w, n, a, b, out_batch, M, N, K, mk, kn, mn, count):
    """C[i, j] = sum_k A[i, k] B[k, j] in the output's dtype, a kernel over the batch's rows."""
    g = w.graph
    dt = g.type(n).dtype.name
    k = w.kernel(f"mm{n}")
    types = [g.type(a.node).dtype.name, g.type(b.node).dtype.name]
    pa, pb, pc = k.ptr(a.node), k.ptr(b.node), k.ptr(n)
    Mk, Kk, Nk = k.dim(a.rows), k.dim(a.cols), k.dim(b.cols)
    mkk, knk, mnk = k.mul(Mk, Kk), k.mul(Kk, Nk), k.mul(Mk, Nk)
    sb = LLVMScalarBuilder(k.lines, w.mathlib, "mm")
    zero = sb.const(0, dt)
    with k.loop("%start", "%end", "r") as r:  # r = batch index * M + row
        bi = k.emit(f"udiv i64 {r}, {Mk}", "b")
        i = k.emit(f"urem i64 {r}, {Mk}", "row")
        oa = _batch_offset(k, bi, out_batch, a, mkk)
        ob = _batch_offset(k, bi, out_batch, b, knk)
        oc = k.add(k.mul(bi, mnk), k.mul(i, Nk))
        with k.loop("0", Nk, "j") as j:
            acc = k.var(IR_TYPE[dt], zero)
            with k.loop("0", Kk, "kk") as kk:
                ia = k.add(oa, k.add(k.mul(kk, Mk), i) if a.trans else k.add(k.mul(i, Kk), kk))
                ib = k.add(ob, k.add(k.mul(j, Kk), kk) if b.trans else k.add(k.mul(kk, Nk), j))
                x = _load_as(k, sb, pa, ia, types[0], dt)
                y = _load_as(k, sb, pb, ib, types[1], dt)
                s = k.emit(f"load {IR_TYPE[dt]}, ptr {acc}", "acc")
                s = sb.binary("add", s, sb.binary("mul", x, y, dt), dt)
                k.line(f"store {IR_TYPE[dt]} {s}, ptr {acc}")
            total = k.emit(f"load {IR_TYPE[dt]}, ptr {acc}", "acc")
            k.store(MEM_TYPE[dt], _to_mem(k, total, dt), pc, k.add(oc, j))
    k.line("ret void")
    w.launch(k, w.fn.mul(count, M), w.fn.mul(w.fn.mul(count, M), w.fn.mul(N, K)))


def _load_as(k, sb, base, index, src, dst):
    v = k.load(MEM_TYPE[src], base, index)
    if src == "bool":
        v = k.emit(f"trunc i8 {v} to i1", "b")
    return sb.cast(v, src, dst)


def _to_mem(k, v, dt):
    return k.emit(f"zext i1 {v} to i8", "b") if dt == "bool" else v
