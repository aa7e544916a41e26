"""solve, solve_triangular, cholesky, inv, det, slogdet, eigh, svd, qr: scipy's LAPACK (`..blas`: the capsules
of `scipy.linalg.cython_lapack`) called by pointer from the entry point, one call per matrix of
the batch, in scratch buffers of the call frame (LAPACK overwrites its operands).

LAPACK is column-major; a row-major matrix read column-major is its transpose. So the LU factors
of a^T come from copying a as it is (getrf), and `getrs` with trans='T' solves (a^T)^T x = b; the
Cholesky factor of a symmetric a is potrf('U') of the same bytes, whose upper factor read
row-major is the lower one; a triangular solve reads a's bytes as the other triangle,
transposed. Right-hand sides with several columns are copied to and from column-major.

A singular matrix (or one not positive definite) ends the call with numpy's error, located at
the node."""

from __future__ import annotations

import functools

import numpy as np

from ....ir import ops as P
from ...reference import op_failed
from ..irfunc import IR_TYPE, MEM_TYPE
from ..kernels import float_literal
from . import HostStep, lowers
from .linalg import _batch_offset

_PREFIX = {"float32": "s", "float64": "d"}


class _Lapack:
    """What one lowering needs: the dtype's routines, Fortran arguments by reference, scratch
    buffers, copies."""

    def __init__(self, w, n):
        self.w, self.n, self.fn = w, n, w.fn
        dt = w.type(n).dtype.name
        if dt not in _PREFIX:
            raise HostStep(f"no LAPACK routine for {dt}")
        self.dt, self.t, self.size = dt, MEM_TYPE[dt], np.dtype(dt).itemsize
        self.info = self.fn.var("i32", "0")

    def routine(self, name: str) -> str:
        return self.w.blas(_PREFIX[self.dt] + name)

    def i32(self, value: str) -> str:
        """A pointer to the i32 `value` (an i64 register or literal)."""
        v = self.fn.emit(f"trunc i64 {value} to i32", "d") if not value.isdigit() else value
        cell = self.fn.var("i32")
        self.fn.line(f"store i32 {v}, ptr {cell}")
        return cell

    def ld(self, value: str) -> str:
        """A leading dimension: at least 1, as LAPACK requires even of an empty matrix."""
        self.w.helper("llvm.smax.i64", "declare i64 @llvm.smax.i64(i64, i64)")
        return self.i32(self.fn.emit(f"call i64 @llvm.smax.i64(i64 {value}, i64 1)", "ld"))

    def char(self, c: str) -> str:
        cell = self.fn.var("i8")
        self.fn.line(f"store i8 {ord(c)}, ptr {cell}")
        return cell

    def scratch(self, dtype: str, shape: tuple) -> str:
        """A buffer of the call frame (allocated with it) of `shape`'s dims."""
        program = self.w.program
        slot = program.slot_of(("scratch", program.next_id()))
        program.statics.append(("buffer", (slot,), np.dtype(dtype).str, tuple(shape)))
        return self.fn.emit(f"load ptr, ptr {self.fn.slot_ptr(slot)}", "scr")

    def copy(self, dst: str, src: str, count: str) -> None:
        self.w.helper("llvm.memcpy", "declare void @llvm.memcpy.p0.p0.i64(ptr, ptr, i64, i1)")
        nbytes = self.fn.mul(count, str(self.size))
        self.fn.line(f"call void @llvm.memcpy.p0.p0.i64(ptr {dst}, ptr {src}, i64 {nbytes}, i1 false)")

    def transpose(self, dst: str, src: str, rows: str, cols: str) -> None:
        """dst[j * rows + i] = src[i * cols + j]: a row-major rows x cols matrix to column-major."""
        fn, t = self.fn, self.t
        with fn.loop("0", rows, "ti") as i:
            with fn.loop("0", cols, "tj") as j:
                v = fn.load(t, src, fn.add(fn.mul(i, cols), j))
                fn.store(t, v, dst, fn.add(fn.mul(j, rows), i))

    def fail_on_info(self, describe) -> None:
        """The call ends with `describe`'s error when LAPACK's info is positive (info: its word)."""
        info = self.fn.emit(f"load i32, ptr {self.info}", "info")
        wide = self.fn.emit(f"sext i32 {info} to i64", "info")
        self.w.fail_if(self.fn.emit(f"icmp sgt i64 {wide}, 0", "c"), self.n, describe, wide)


def _singular(graph, node, info, env):
    return op_failed(graph, node, np.linalg.LinAlgError("Singular matrix"))


def _not_positive_definite(graph, node, info, env):
    return op_failed(graph, node, np.linalg.LinAlgError("Matrix is not positive definite"))


def _singular_triangle(graph, node, info, env):
    return op_failed(graph, node, np.linalg.LinAlgError(
        f"singular matrix: resolution failed at diagonal {int(info[0]) - 1}"))


class _Operand:
    """A square or right-hand-side operand, batched: its matrix `i` of the output's batch."""

    def __init__(self, w, node, out_batch, matrix_shape):
        self.w, self.node, self.out_batch = w, node, out_batch
        t = w.type(node)
        self.batch = t.shape[:t.ndim - len(matrix_shape)]
        self.elems = w.size(t.shape[t.ndim - len(matrix_shape):])

    def at(self, fn, base, bi, t):
        return fn.gep(t, base, _batch_offset(fn, bi, self.out_batch, self, self.elems))


def _solve_rhs(lp: _Lapack, b_node: int, out_batch, call_solver) -> None:
    """For each matrix of the batch, `call_solver(bi, x, ldb, nrhs)` on the right-hand side
    copied into place (x: column-major, n x nrhs), then the solution moved to the output."""
    w, fn, n = lp.w, lp.fn, lp.n
    bt = w.type(b_node)
    vector = bt.ndim == 1
    N = w.dim(bt.shape[0] if vector else bt.shape[-2])
    K = "1" if vector else w.dim(bt.shape[-1])
    b = _Operand(w, b_node, out_batch, bt.shape[-1:] if vector else bt.shape[-2:])
    pb, px = w.ptr(b_node), w.ptr(n)
    nk = fn.mul(N, K)
    cm = None if vector else lp.scratch(lp.dt, (bt.shape[-2], bt.shape[-1]))
    with fn.loop("0", w.size(out_batch), "lb") as bi:
        src = b.at(fn, pb, bi, lp.t)
        dst = fn.gep(lp.t, px, fn.mul(bi, nk))
        if vector:
            lp.copy(dst, src, N)
            call_solver(bi, dst)
        else:
            lp.transpose(cm, src, N, K)
            call_solver(bi, cm)
            lp.transpose(dst, cm, K, N)  # (column-major n x k is row-major k x n)


@lowers("solve")
def lower_solve(w, n):
    a_node, b_node = w.operands(n)
    lp = _Lapack(w, n)
    fn = w.fn
    at, bt = w.type(a_node), w.type(b_node)
    N = w.dim(at.shape[-1])
    out_batch = w.type(n).shape[:-1] if bt.ndim == 1 else w.type(n).shape[:-2]
    a = _Operand(w, a_node, out_batch, at.shape[-2:])
    lu = lp.scratch(lp.dt, at.shape[-2:])
    piv = lp.scratch("int32", at.shape[-1:])
    pa = w.ptr(a_node)
    getrf, getrs = lp.routine("getrf"), lp.routine("getrs")
    n32, lda = lp.i32(N), lp.ld(N)
    nrhs = lp.i32("1" if bt.ndim == 1 else w.dim(bt.shape[-1]))
    trans = lp.char("T")

    def solver(bi, x):
        lp.copy(lu, a.at(fn, pa, bi, lp.t), fn.mul(N, N))
        fn.line(f"call void {getrf}(ptr {n32}, ptr {n32}, ptr {lu}, ptr {lda}, ptr {piv}, ptr {lp.info})")
        lp.fail_on_info(_singular)
        fn.line(f"call void {getrs}(ptr {trans}, ptr {n32}, ptr {nrhs}, ptr {lu}, ptr {lda}, ptr {piv}, "
                f"ptr {x}, ptr {lda}, ptr {lp.info})")
    _solve_rhs(lp, b_node, out_batch, solver)
    w.note(f"LAPACK {_PREFIX[lp.dt]}getrf + {_PREFIX[lp.dt]}getrs per matrix")


@lowers("solve_triangular")
def lower_solve_triangular(w, n):
    a_node, b_node = w.operands(n)
    attrs = w.attrs(n)
    lp = _Lapack(w, n)
    fn = w.fn
    at, bt = w.type(a_node), w.type(b_node)
    N = w.dim(at.shape[-1])
    out_batch = w.type(n).shape[:-1] if bt.ndim == 1 else w.type(n).shape[:-2]
    a = _Operand(w, a_node, out_batch, at.shape[-2:])
    pa = w.ptr(a_node)
    trtrs = lp.routine("trtrs")
    # a's bytes column-major are a^T: the other triangle, solved transposed
    uplo, trans, diag = lp.char("U" if attrs["lower"] else "L"), lp.char("T"), lp.char("U" if attrs["unit_diagonal"] else "N")
    n32, lda = lp.i32(N), lp.ld(N)
    nrhs = lp.i32("1" if bt.ndim == 1 else w.dim(bt.shape[-1]))

    def solver(bi, x):
        fn.line(f"call void {trtrs}(ptr {uplo}, ptr {trans}, ptr {diag}, ptr {n32}, ptr {nrhs}, "
                f"ptr {a.at(fn, pa, bi, lp.t)}, ptr {lda}, ptr {x}, ptr {lda}, ptr {lp.info})")
        lp.fail_on_info(_singular_triangle)
    _solve_rhs(lp, b_node, out_batch, solver)
    w.note(f"LAPACK {_PREFIX[lp.dt]}trtrs per matrix")


@lowers("inv")
def lower_inv(w, n):
    (a_node,) = w.operands(n)
    lp = _Lapack(w, n)
    fn = w.fn
    at = w.type(a_node)
    N = w.dim(at.shape[-1])
    lu = lp.scratch(lp.dt, at.shape[-2:])
    piv = lp.scratch("int32", at.shape[-1:])
    getrf, getrs = lp.routine("getrf"), lp.routine("getrs")
    n32, lda, trans = lp.i32(N), lp.ld(N), lp.char("N")
    pa, px = w.ptr(a_node), w.ptr(n)
    nn = fn.mul(N, N)
    one, zero = float_literal(1.0, lp.dt), float_literal(0.0, lp.dt)
    with fn.loop("0", w.size(at.shape[:-2]), "lb") as bi:
        lp.copy(lu, fn.gep(lp.t, pa, fn.mul(bi, nn)), nn)
        fn.line(f"call void {getrf}(ptr {n32}, ptr {n32}, ptr {lu}, ptr {lda}, ptr {piv}, ptr {lp.info})")
        lp.fail_on_info(_singular)
        x = fn.gep(lp.t, px, fn.mul(bi, nn))
        with fn.loop("0", N, "ei") as i:  # the identity, then (a^T)^-1 column-major = a^-1 row-major
            with fn.loop("0", N, "ej") as j:
                fn.store(lp.t, fn.emit(f"select i1 {fn.emit(f'icmp eq i64 {i}, {j}', 'c')}, "
                                       f"{IR_TYPE[lp.dt]} {one}, {IR_TYPE[lp.dt]} {zero}", "e"),
                         x, fn.add(fn.mul(i, N), j))
        fn.line(f"call void {getrs}(ptr {trans}, ptr {n32}, ptr {n32}, ptr {lu}, ptr {lda}, ptr {piv}, "
                f"ptr {x}, ptr {lda}, ptr {lp.info})")
    w.note(f"LAPACK {_PREFIX[lp.dt]}getrf + {_PREFIX[lp.dt]}getrs per matrix")


@lowers("cholesky")
def lower_cholesky(w, n):
    (a_node,) = w.operands(n)
    lp = _Lapack(w, n)
    fn = w.fn
    at = w.type(a_node)
    N = w.dim(at.shape[-1])
    potrf = lp.routine("potrf")
    n32, lda, uplo = lp.i32(N), lp.ld(N), lp.char("U")
    pa, px = w.ptr(a_node), w.ptr(n)
    nn = fn.mul(N, N)
    zero = float_literal(0.0, lp.dt)
    with fn.loop("0", w.size(at.shape[:-2]), "lb") as bi:
        x = fn.gep(lp.t, px, fn.mul(bi, nn))
        src = fn.gep(lp.t, pa, fn.mul(bi, nn))
        with fn.if_(fn.emit(f"icmp ne ptr {x}, {src}", "c")):
            lp.copy(x, src, nn)
        fn.line(f"call void {potrf}(ptr {uplo}, ptr {n32}, ptr {x}, ptr {lda}, ptr {lp.info})")
        lp.fail_on_info(_not_positive_definite)
        with fn.loop("0", N, "zi") as i:  # the strict upper triangle still holds a's
            with fn.loop(fn.add(i, "1"), N, "zj") as j:
                fn.store(lp.t, zero, x, fn.add(fn.mul(i, N), j))
    w.note(f"LAPACK {_PREFIX[lp.dt]}potrf per matrix")


@lowers("det", "slogdet")
def lower_det(w, n):
    """sign and log|det| from getrf's factors (as numpy: det = sign * exp(log|det|), which
    overflows only when det does); an exactly singular matrix has sign 0, log|det| -inf."""
    (a_node,) = w.operands(n)
    lp = _Lapack(w, n)
    fn = w.fn
    op = w.graph.op(n)
    part = "det" if op is P.det else w.attrs(n)["part"]
    at = w.type(a_node)
    N = w.dim(at.shape[-1])
    lu = lp.scratch(lp.dt, at.shape[-2:])
    piv = lp.scratch("int32", at.shape[-1:])
    getrf = lp.routine("getrf")
    n32, lda = lp.i32(N), lp.ld(N)
    pa, px = w.ptr(a_node), w.ptr(n)
    nn = fn.mul(N, N)
    ft = IR_TYPE[lp.dt]
    lit = functools.partial(float_literal, dtype=lp.dt)
    w.helper(f"llvm.fabs.{ft}", f"declare {ft} @llvm.fabs.{'f32' if ft == 'float' else 'f64'}({ft})")
    fabs = f"@llvm.fabs.{'f32' if ft == 'float' else 'f64'}"
    with fn.loop("0", w.size(at.shape[:-2]), "lb") as bi:
        lp.copy(lu, fn.gep(lp.t, pa, fn.mul(bi, nn)), nn)
        fn.line(f"call void {getrf}(ptr {n32}, ptr {n32}, ptr {lu}, ptr {lda}, ptr {piv}, ptr {lp.info})")
        sign, logabs = fn.var(ft, lit(1.0)), fn.var(ft, lit(0.0))
        with fn.loop("0", N, "di") as i:
            d = fn.load(lp.t, lu, fn.add(fn.mul(i, N), i))
            p = fn.emit(f"sext i32 {fn.load('i32', piv, i)} to i64", "p")
            swapped = fn.emit(f"icmp ne i64 {p}, {fn.add(i, '1')}", "c")
            negative = fn.emit(f"fcmp olt {ft} {d}, {lit(0.0)}", "c")
            zero = fn.emit(f"fcmp oeq {ft} {d}, {lit(0.0)}", "c")
            s = fn.emit(f"load {ft}, ptr {sign}", "s")
            flip = fn.emit(f"xor i1 {swapped}, {negative}", "c")
            s = fn.emit(f"select i1 {flip}, {ft} {fn.emit(f'fneg {ft} {s}', 's')}, {ft} {s}", "s")
            s = fn.emit(f"select i1 {zero}, {ft} {lit(0.0)}, {ft} {s}", "s")
            fn.line(f"store {ft} {s}, ptr {sign}")
            mag = fn.emit(f"call {ft} {fabs}({ft} {d})", "m")
            lg = fn.emit(w.mathlib.call("log", lp.dt, mag), "lg")
            total = fn.emit(f"fadd {ft} {fn.emit(f'load {ft}, ptr {logabs}', 'l')}, {lg}", "l")
            fn.line(f"store {ft} {total}, ptr {logabs}")
        s = fn.emit(f"load {ft}, ptr {sign}", "s")
        s = fn.emit(f"select i1 {fn.emit(f'fcmp oeq {ft} {s}, {lit(0.0)}', 'c')}, {ft} {lit(0.0)}, {ft} {s}", "s")
        lg = fn.emit(f"load {ft}, ptr {logabs}", "l")
        if part == "sign":
            value = s
        elif part == "logabsdet":
            value = lg
        else:
            value = fn.emit(f"fmul {ft} {s}, {fn.emit(w.mathlib.call('exp', lp.dt, lg), 'e')}", "det")
        fn.store(lp.t, value, px, bi)
    w.note(f"LAPACK {_PREFIX[lp.dt]}getrf per matrix")


@lowers("eigh")
def lower_eigh(w, n):
    """syevd('L') of a copied column-major (the path scipy.linalg.eigh(lower=True) takes, so that
    the eigenvectors' signs are the reference's): eigenvalues ascending, eigenvectors as the
    columns of the column-major result, transposed into place. Its workspaces are the
    documented minimums, bounded by 9 n^2 and 8 n."""
    (a_node,) = w.operands(n)
    lp = _Lapack(w, n)
    fn = w.fn
    vectors = w.attrs(n)["part"] == "vectors"
    at = w.type(a_node)
    N = w.dim(at.shape[-1])
    dims = at.shape[-2:]
    cm = lp.scratch(lp.dt, dims)
    values = lp.scratch(lp.dt, dims[-1:])
    work_shape, iwork_shape = ((9,) + dims, (8, dims[-1])) if vectors else ((3, dims[-1]), (dims[-1],))
    work, iwork = lp.scratch(lp.dt, work_shape), lp.scratch("int32", iwork_shape)
    syevd = lp.routine("syevd")
    jobz, uplo = lp.char("V" if vectors else "N"), lp.char("L")
    n32, lda = lp.i32(N), lp.ld(N)
    lwork = lp.i32(w.size(work_shape))
    liwork = lp.i32(w.size(iwork_shape))
    pa, px = w.ptr(a_node), w.ptr(n)
    nn = fn.mul(N, N)
    with fn.if_(fn.emit(f"icmp sgt i64 {N}, 0", "c")):
        with fn.loop("0", w.size(at.shape[:-2]), "lb") as bi:
            lp.transpose(cm, fn.gep(lp.t, pa, fn.mul(bi, nn)), N, N)
            fn.line(f"call void {syevd}(ptr {jobz}, ptr {uplo}, ptr {n32}, ptr {cm}, ptr {lda}, ptr {values}, "
                    f"ptr {work}, ptr {lwork}, ptr {iwork}, ptr {liwork}, ptr {lp.info})")
            lp.fail_on_info(_no_convergence)
            if vectors:
                lp.transpose(fn.gep(lp.t, px, fn.mul(bi, nn)), cm, N, N)
            else:
                lp.copy(fn.gep(lp.t, px, fn.mul(bi, N)), values, N)
    w.note(f"LAPACK {_PREFIX[lp.dt]}syevd per matrix")


def _no_convergence(graph, node, info, env):
    return op_failed(graph, node, np.linalg.LinAlgError("Eigenvalues did not converge"))


@lowers("svd")
def lower_svd(w, n):
    """gesdd of a copied column-major (scipy.linalg.svd's routine and layout, so the vectors'
    signs are the reference's): jobz 'N' for the values, 'S' or 'A' for the vectors; the part
    asked for is transposed (or copied) into place. The matrix dims are ints, or one symbol for
    both (the type needs min(m, n)); the workspaces are LAPACK's documented minimums or more."""
    (a_node,) = w.operands(n)
    lp = _Lapack(w, n)
    fn = w.fn
    attrs = w.attrs(n)
    part, full = attrs["part"], attrs["full_matrices"]
    at = w.type(a_node)
    m_dim, n_dim = at.shape[-2:]
    k_dim = m_dim if m_dim == n_dim else min(m_dim, n_dim)
    M, N, K = w.dim(m_dim), w.dim(n_dim), w.dim(k_dim)
    vectors = part != "s"
    ucols = m_dim if full else k_dim
    vrows = n_dim if full else k_dim
    if isinstance(k_dim, int):
        big = max(m_dim, n_dim)
        work_shape = (4 * k_dim * k_dim + 8 * k_dim + big + 64,) if vectors else (3 * k_dim + max(big, 7 * k_dim) + 64,)
        iwork_shape = (8 * k_dim + 8,)
    else:  # m = n = k, a symbol
        work_shape = (13, k_dim, k_dim) if vectors else (11, k_dim)
        iwork_shape = (8, k_dim)
    cm = lp.scratch(lp.dt, (m_dim, n_dim))
    values = lp.scratch(lp.dt, (k_dim,))
    u = lp.scratch(lp.dt, (m_dim, ucols)) if vectors else values
    vt = lp.scratch(lp.dt, (vrows, n_dim)) if vectors else values
    work, iwork = lp.scratch(lp.dt, work_shape), lp.scratch("int32", iwork_shape)
    gesdd = lp.routine("gesdd")
    jobz = lp.char("N" if not vectors else ("A" if full else "S"))
    m32, n32, lda = lp.i32(M), lp.i32(N), lp.ld(M)
    ldu, ldvt = lp.ld(M), lp.ld(w.dim(vrows) if vectors else "1")
    lwork, liwork = lp.i32(w.size(work_shape)), lp.i32(w.size(iwork_shape))
    pa, px = w.ptr(a_node), w.ptr(n)
    mn = fn.mul(M, N)
    out_size = w.size(w.type(n).shape[-1:] if part == "s" else w.type(n).shape[-2:])
    with fn.if_(fn.emit(f"icmp sgt i64 {K}, 0", "c")):
        with fn.loop("0", w.size(at.shape[:-2]), "lb") as bi:
            lp.transpose(cm, fn.gep(lp.t, pa, fn.mul(bi, mn)), M, N)
            fn.line(f"call void {gesdd}(ptr {jobz}, ptr {m32}, ptr {n32}, ptr {cm}, ptr {lda}, ptr {values}, "
                    f"ptr {u}, ptr {ldu}, ptr {vt}, ptr {ldvt}, ptr {work}, ptr {lwork}, ptr {iwork}, ptr {lp.info})")
            lp.fail_on_info(_svd_no_convergence)
            dst = fn.gep(lp.t, px, fn.mul(bi, out_size))
            if part == "s":
                lp.copy(dst, values, K)
            elif part == "u":  # (column-major m x c is row-major c x m)
                lp.transpose(dst, u, w.dim(ucols), M)
            else:
                lp.transpose(dst, vt, N, w.dim(vrows))
    w.note(f"LAPACK {_PREFIX[lp.dt]}gesdd per matrix")


def _svd_no_convergence(graph, node, info, env):
    return op_failed(graph, node, np.linalg.LinAlgError("SVD did not converge"))


@lowers("qr")
def lower_qr(w, n):
    """geqrf of a copied column-major (scipy.linalg.qr's routine and layout), then r read off its
    upper triangle, or q built by orgqr from the reflectors (their first k columns copied into a
    buffer of q's columns)."""
    (a_node,) = w.operands(n)
    lp = _Lapack(w, n)
    fn = w.fn
    attrs = w.attrs(n)
    at = w.type(a_node)
    m_dim, n_dim = at.shape[-2:]
    k_dim = m_dim if m_dim == n_dim else min(m_dim, n_dim)
    M, N, K = w.dim(m_dim), w.dim(n_dim), w.dim(k_dim)
    rows_dim = m_dim if attrs["complete"] else k_dim  # q's columns, r's rows
    R = w.dim(rows_dim)
    work_shape = (64 * max(m_dim, n_dim) + 64,) if isinstance(k_dim, int) else (64, k_dim)
    cm = lp.scratch(lp.dt, (m_dim, n_dim))
    tau = lp.scratch(lp.dt, (k_dim,))
    work = lp.scratch(lp.dt, work_shape)
    m32, n32, k32, lda = lp.i32(M), lp.i32(N), lp.i32(K), lp.ld(M)
    lwork = lp.i32(w.size(work_shape))
    pa, px = w.ptr(a_node), w.ptr(n)
    mn = fn.mul(M, N)
    zero = float_literal(0.0, lp.dt)
    if attrs["part"] == "q":
        qbuf = lp.scratch(lp.dt, (m_dim, rows_dim))
        out_size, r32 = fn.mul(M, R), lp.i32(R)
    else:
        out_size = fn.mul(R, N)
    with fn.loop("0", w.size(at.shape[:-2]), "lb") as bi:
        lp.transpose(cm, fn.gep(lp.t, pa, fn.mul(bi, mn)), M, N)
        fn.line(f"call void {lp.routine('geqrf')}(ptr {m32}, ptr {n32}, ptr {cm}, ptr {lda}, ptr {tau}, ptr {work}, "
                f"ptr {lwork}, ptr {lp.info})")
        dst = fn.gep(lp.t, px, fn.mul(bi, out_size))
        if attrs["part"] == "r":  # r[i, j] = cm[i + j m] on and above the diagonal
            with fn.loop("0", R, "ri") as i:
                with fn.loop("0", N, "rj") as j:
                    upper = fn.emit(f"icmp sle i64 {i}, {j}", "c")
                    v = fn.load(lp.t, cm, fn.add(i, fn.mul(j, M)))
                    fn.store(lp.t, fn.emit(f"select i1 {upper}, {IR_TYPE[lp.dt]} {v}, {IR_TYPE[lp.dt]} {zero}", "r"),
                             dst, fn.add(fn.mul(i, N), j))
        else:
            lp.copy(qbuf, cm, fn.mul(M, K))  # (the reflectors: the first k columns)
            fn.line(f"call void {lp.routine('orgqr')}(ptr {m32}, ptr {r32}, ptr {k32}, ptr {qbuf}, ptr {lda}, "
                    f"ptr {tau}, ptr {work}, ptr {lwork}, ptr {lp.info})")
            lp.transpose(dst, qbuf, R, M)
    w.note(f"LAPACK {_PREFIX[lp.dt]}geqrf" + (f" + {_PREFIX[lp.dt]}orgqr" if attrs["part"] == "q" else "")
           + " per matrix")
