"""solve, solve_triangular, cholesky, inv, det, slogdet, eigh, svd, qr: scipy's LAPACK (`..blas`:
the capsules of `scipy.linalg.cython_lapack`) called by pointer from the entry point, one call
per matrix of the batch, in frame buffers (LAPACK overwrites its operands).

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
        """The address, in the entry point, of a new frame buffer of `shape`'s dims."""
        return self.fn.load_slot(self.w.frame_buffer(dtype, shape))

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

    def lu(self, lu: str, piv: str, src: str, N: str, n32: str, lda: str, describe=None) -> None:
        """`lu` and `piv` the LU factors (getrf) of the n x n matrix at `src`, copied; when
        `describe` is given, an exactly singular matrix ends the call with its error."""
        self.copy(lu, src, self.fn.mul(N, N))
        self.fn.line(f"call void {self.routine('getrf')}(ptr {n32}, ptr {n32}, ptr {lu}, ptr {lda}, ptr {piv}, "
                     f"ptr {self.info})")
        if describe is not None:
            self.fail_on_info(describe)

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
        self.out_batch = out_batch
        t = w.type(node)
        self.batch = t.shape[:t.ndim - len(matrix_shape)]
        self.matrix = t.shape[t.ndim - len(matrix_shape):]

    def at(self, fn, base, bi, t):
        """The address of matrix `bi` in `fn` (the entry point or a kernel)."""
        return fn.gep(t, base, _batch_offset(fn, bi, self.out_batch, self, fn.size(self.matrix)))


def _solve_rhs(lp: _Lapack, b_node: int, out_batch, call_solver) -> None:
    """For each matrix `bi` of the batch, `call_solver(bi, x)` on the right-hand side copied into
    place (x: column-major, n x nrhs, leading dimension n), then the solution moved to the output."""
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


SMALL = 8  # matrices up to this size (and right-hand sides up to this many columns) are solved inline


@lowers("solve")
def lower_solve(w, n):
    a_node, b_node = w.operands(n)
    lp = _Lapack(w, n)
    fn = w.fn
    at, bt = w.type(a_node), w.type(b_node)
    N = w.dim(at.shape[-1])
    out_batch = w.type(n).shape[:-1] if bt.ndim == 1 else w.type(n).shape[:-2]
    k_dim = 1 if bt.ndim == 1 else bt.shape[-1]
    if isinstance(at.shape[-1], int) and at.shape[-1] <= SMALL and isinstance(k_dim, int) and k_dim <= SMALL:
        return _small_solve(w, n, lp, a_node, b_node, out_batch, at.shape[-1], k_dim)
    a = _Operand(w, a_node, out_batch, at.shape[-2:])
    lu = lp.scratch(lp.dt, at.shape[-2:])
    piv = lp.scratch("int32", at.shape[-1:])
    pa = w.ptr(a_node)
    getrs = lp.routine("getrs")
    n32, lda = lp.i32(N), lp.ld(N)
    nrhs = lp.i32("1" if bt.ndim == 1 else w.dim(bt.shape[-1]))
    trans = lp.char("T")

    def solver(bi, x):
        lp.lu(lu, piv, a.at(fn, pa, bi, lp.t), N, n32, lda, _singular)
        fn.line(f"call void {getrs}(ptr {trans}, ptr {n32}, ptr {nrhs}, ptr {lu}, ptr {lda}, ptr {piv}, "
                f"ptr {x}, ptr {lda}, ptr {lp.info})")
    _solve_rhs(lp, b_node, out_batch, solver)
    w.note(f"LAPACK {_PREFIX[lp.dt]}getrf + {_PREFIX[lp.dt]}getrs per matrix")


def _small_solve(w, n, lp, a_node, b_node, out_batch, size, nrhs):
    """Many small systems: Gaussian elimination with partial pivoting (LAPACK's getf2 order: the
    first largest |pivot|), inline in a kernel over the batch that runs on every thread, in
    registers and stack arrays rather than one LAPACK call per matrix. A zero pivot marks the
    matrix singular; the entry point checks the marks after the kernel."""
    g = w.graph
    t, ft = lp.t, IR_TYPE[lp.dt]
    bt = g.type(b_node)
    status = w.frame_buffer("int32", out_batch or (1,))  # 1: that matrix is singular
    k = w.kernel(f"solve{n}")
    a = _Operand(w, a_node, out_batch, g.type(a_node).shape[-2:])
    b = _Operand(w, b_node, out_batch, bt.shape[-1:] if bt.ndim == 1 else bt.shape[-2:])
    pa, pb, px = k.ptr(a_node), k.ptr(b_node), k.ptr(n)
    lu, x = k.array(t, size * size), k.array(t, size * nrhs)
    zero = float_literal(0.0, lp.dt)
    suffix = "f32" if ft == "float" else "f64"
    w.helper(f"llvm.fabs.{suffix}", f"declare {ft} @llvm.fabs.{suffix}({ft})")
    pst = k.load_slot(status)

    with k.loop("%start", "%end", "m") as bi:
        src_a, src_b = a.at(k, pa, bi, t), b.at(k, pb, bi, t)
        for e in range(size * size):
            k.line(f"store {ft} {k.load(t, src_a, str(e))}, ptr {k.gep(t, lu, str(e))}")
        for e in range(size * nrhs):
            k.line(f"store {ft} {k.load(t, src_b, str(e))}, ptr {k.gep(t, x, str(e))}")
        k.line(f"store i32 0, ptr {k.gep('i32', pst, bi)}")
        for c in range(size):  # column c: pick the pivot row, swap it up, eliminate below
            best = k.var("i64", str(c))
            mag = k.var(ft, k.emit(f"call {ft} @llvm.fabs.{suffix}({ft} {k.load(t, lu, str(c * size + c))})", "v"))
            for r in range(c + 1, size):
                v = k.emit(f"call {ft} @llvm.fabs.{suffix}({ft} {k.load(t, lu, str(r * size + c))})", "v")
                cur = k.emit(f"load {ft}, ptr {mag}", "v")
                more = k.emit(f"fcmp ogt {ft} {v}, {cur}", "c")
                k.line(f"store {ft} {k.emit(f'select i1 {more}, {ft} {v}, {ft} {cur}', 'v')}, ptr {mag}")
                old = k.emit(f"load i64, ptr {best}", "p")
                k.line(f"store i64 {k.emit(f'select i1 {more}, i64 {r}, i64 {old}', 'p')}, ptr {best}")
            p = k.emit(f"load i64, ptr {best}", "p")
            with k.if_(k.emit(f"fcmp oeq {ft} {k.emit(f'load {ft}, ptr {mag}', 'v')}, {zero}", "c")):
                k.line(f"store i32 1, ptr {k.gep('i32', pst, bi)}")
            for arr, cols in ((lu, size), (x, nrhs)):
                for j in range(cols):
                    here = k.gep(t, arr, str(c * cols + j))
                    there = k.gep(t, arr, k.add(k.mul(p, str(cols)), str(j)))
                    u, v = k.emit(f"load {ft}, ptr {here}", "v"), k.emit(f"load {ft}, ptr {there}", "v")
                    k.line(f"store {ft} {v}, ptr {here}")
                    k.line(f"store {ft} {u}, ptr {there}")
            pivot = k.load(t, lu, str(c * size + c))
            for r in range(c + 1, size):
                f = k.emit(f"fdiv {ft} {k.load(t, lu, str(r * size + c))}, {pivot}", "f")
                k.line(f"store {ft} {f}, ptr {k.gep(t, lu, str(r * size + c))}")
                for arr, cols, first in ((lu, size, c + 1), (x, nrhs, 0)):
                    for j in range(first, cols):
                        top = k.load(t, arr, str(c * cols + j))
                        cell = k.gep(t, arr, str(r * cols + j))
                        prod = k.emit(f"fmul {ft} {f}, {top}", "v")
                        old = k.emit(f"load {ft}, ptr {cell}", "v")
                        k.line(f"store {ft} {k.emit(f'fsub {ft} {old}, {prod}', 'v')}, ptr {cell}")
        dst = k.gep(t, px, k.mul(bi, str(size * nrhs)))
        for r in range(size - 1, -1, -1):  # back substitution, into the output
            for j in range(nrhs):
                acc = k.load(t, x, str(r * nrhs + j))
                for c in range(r + 1, size):
                    prod = k.emit(f"fmul {ft} {k.load(t, lu, str(r * size + c))}, {k.load(t, dst, str(c * nrhs + j))}", "v")
                    acc = k.emit(f"fsub {ft} {acc}, {prod}", "v")
                k.line(f"store {ft} {k.emit(f'fdiv {ft} {acc}, {k.load(t, lu, str(r * size + r))}', 'v')}, "
                       f"ptr {k.gep(t, dst, str(r * nrhs + j))}")
    k.line("ret void")
    fn = w.fn
    count = w.size(out_batch)
    w.launch(k, count, fn.mul(count, str(size * size * size)))
    with fn.loop("0", count, "chk") as bi:  # (serially, after the kernel: the first singular matrix)
        bad = fn.emit(f"icmp ne i32 {fn.load('i32', fn.load_slot(status), bi)}, 0", "c")
        w.fail_if(bad, n, _singular, bi)
    w.note(f"inline LU with partial pivoting per matrix ({size} x {size}, a kernel over the batch)")


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
    getrs = lp.routine("getrs")
    n32, lda, trans = lp.i32(N), lp.ld(N), lp.char("N")
    pa, px = w.ptr(a_node), w.ptr(n)
    nn = fn.mul(N, N)
    one, zero = float_literal(1.0, lp.dt), float_literal(0.0, lp.dt)
    with fn.loop("0", w.size(at.shape[:-2]), "lb") as bi:
        lp.lu(lu, piv, fn.gep(lp.t, pa, fn.mul(bi, nn)), N, n32, lda, _singular)
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


def _parts(w, n) -> dict[str, int]:
    """The nodes of n's group by part (a multipart op's nodes computed together: `w.group`)."""
    key = w.graph.op(n).multipart
    return {w.attrs(m)[key]: m for m in w.group} if key else {}


@lowers("det", "slogdet")
def lower_det(w, n):
    """sign and log|det| from getrf's factors (as numpy: det = sign * exp(log|det|), which
    overflows only when det does); an exactly singular matrix has sign 0, log|det| -inf. One
    factorization serves both of slogdet's parts."""
    (a_node,) = w.operands(n)
    lp = _Lapack(w, n)
    fn = w.fn
    parts = {"det": n} if w.graph.op(n) is P.det else _parts(w, n)
    at = w.type(a_node)
    N = w.dim(at.shape[-1])
    lu = lp.scratch(lp.dt, at.shape[-2:])
    piv = lp.scratch("int32", at.shape[-1:])
    n32, lda = lp.i32(N), lp.ld(N)
    pa = w.ptr(a_node)
    outs = {part: w.ptr(m) for part, m in parts.items()}
    nn = fn.mul(N, N)
    ft = IR_TYPE[lp.dt]
    lit = functools.partial(float_literal, dtype=lp.dt)
    suffix = "f32" if ft == "float" else "f64"
    w.helper(f"llvm.fabs.{suffix}", f"declare {ft} @llvm.fabs.{suffix}({ft})")
    with fn.loop("0", w.size(at.shape[:-2]), "lb") as bi:
        lp.lu(lu, piv, fn.gep(lp.t, pa, fn.mul(bi, nn)), N, n32, lda)  # (singular: det 0)
        sign, logabs = fn.var(ft, lit(1.0)), fn.var(ft, lit(0.0))
        with fn.loop("0", N, "di") as i:
            d = fn.load(lp.t, lu, fn.add(fn.mul(i, N), i))
            p = fn.emit(f"sext i32 {fn.load('i32', piv, i)} to i64", "p")
            swapped = fn.emit(f"icmp ne i64 {p}, {fn.add(i, '1')}", "c")
            negative = fn.emit(f"fcmp olt {ft} {d}, {lit(0.0)}", "c")
            zero = fn.emit(f"fcmp oeq {ft} {d}, {lit(0.0)}", "c")
            sv = fn.emit(f"load {ft}, ptr {sign}", "s")
            flip = fn.emit(f"xor i1 {swapped}, {negative}", "c")
            sv = fn.emit(f"select i1 {flip}, {ft} {fn.emit(f'fneg {ft} {sv}', 's')}, {ft} {sv}", "s")
            sv = fn.emit(f"select i1 {zero}, {ft} {lit(0.0)}, {ft} {sv}", "s")
            fn.line(f"store {ft} {sv}, ptr {sign}")
            mag = fn.emit(f"call {ft} @llvm.fabs.{suffix}({ft} {d})", "m")
            lg = fn.emit(w.mathlib.call("log", lp.dt, mag), "lg")
            total = fn.emit(f"fadd {ft} {fn.emit(f'load {ft}, ptr {logabs}', 'l')}, {lg}", "l")
            fn.line(f"store {ft} {total}, ptr {logabs}")
        sv = fn.emit(f"load {ft}, ptr {sign}", "s")
        sv = fn.emit(f"select i1 {fn.emit(f'fcmp oeq {ft} {sv}, {lit(0.0)}', 'c')}, {ft} {lit(0.0)}, {ft} {sv}", "s")
        lg = fn.emit(f"load {ft}, ptr {logabs}", "l")
        values = {"sign": sv, "logabsdet": lg}
        if "det" in outs:
            values["det"] = fn.emit(f"fmul {ft} {sv}, {fn.emit(w.mathlib.call('exp', lp.dt, lg), 'e')}", "det")
        for part, out in outs.items():
            fn.store(lp.t, values[part], out, bi)
    w.note(f"LAPACK {_PREFIX[lp.dt]}getrf per matrix" + (" (sign and log|det|)" if len(outs) > 1 else ""))


@lowers("eigh")
def lower_eigh(w, n):
    """syevd('L') of a copied column-major (the path scipy.linalg.eigh(lower=True) takes, so that
    the eigenvectors' signs are the reference's): eigenvalues ascending, written in place;
    eigenvectors (when asked for) the columns of the column-major result, transposed into place.
    One call serves both parts. Its workspaces are the documented minimums, bounded by 9 n^2
    and 8 n."""
    (a_node,) = w.operands(n)
    lp = _Lapack(w, n)
    fn = w.fn
    parts = _parts(w, n)
    vectors = "vectors" in parts
    at = w.type(a_node)
    N = w.dim(at.shape[-1])
    dims = at.shape[-2:]
    cm = lp.scratch(lp.dt, dims)
    values = w.ptr(parts["values"]) if "values" in parts else lp.scratch(lp.dt, (at.shape[:-2] + dims[-1:]))
    work_shape, iwork_shape = ((9,) + dims, (8, dims[-1])) if vectors else ((3, dims[-1]), (dims[-1],))
    work, iwork = lp.scratch(lp.dt, work_shape), lp.scratch("int32", iwork_shape)
    syevd = lp.routine("syevd")
    jobz, uplo = lp.char("V" if vectors else "N"), lp.char("L")
    n32, lda = lp.i32(N), lp.ld(N)
    lwork = lp.i32(w.size(work_shape))
    liwork = lp.i32(w.size(iwork_shape))
    pa = w.ptr(a_node)
    pv = w.ptr(parts["vectors"]) if vectors else None
    nn = fn.mul(N, N)
    with fn.if_(fn.emit(f"icmp sgt i64 {N}, 0", "c")):
        with fn.loop("0", w.size(at.shape[:-2]), "lb") as bi:
            lp.transpose(cm, fn.gep(lp.t, pa, fn.mul(bi, nn)), N, N)
            fn.line(f"call void {syevd}(ptr {jobz}, ptr {uplo}, ptr {n32}, ptr {cm}, ptr {lda}, "
                    f"ptr {fn.gep(lp.t, values, fn.mul(bi, N))}, ptr {work}, ptr {lwork}, ptr {iwork}, "
                    f"ptr {liwork}, ptr {lp.info})")
            lp.fail_on_info(_no_convergence)
            if vectors:
                lp.transpose(fn.gep(lp.t, pv, fn.mul(bi, nn)), cm, N, N)
    w.note(f"LAPACK {_PREFIX[lp.dt]}syevd per matrix" + (" (values and vectors)" if len(parts) > 1 else ""))


def _no_convergence(graph, node, info, env):
    return op_failed(graph, node, np.linalg.LinAlgError("Eigenvalues did not converge"))


@lowers("svd")
def lower_svd(w, n):
    """gesdd of a copied column-major (scipy.linalg.svd's routine and layout, so the vectors'
    signs are the reference's): jobz 'N' for the values alone, 'S' or 'A' with vectors; s is
    written in place, u and vt transposed into place. One call serves every part asked for. The
    matrix dims are ints, or one symbol for both (the type needs min(m, n)); the workspaces are
    LAPACK's documented minimums or more."""
    (a_node,) = w.operands(n)
    lp = _Lapack(w, n)
    fn = w.fn
    parts = _parts(w, n)
    full = w.attrs(n)["full_matrices"]
    at = w.type(a_node)
    m_dim, n_dim = at.shape[-2:]
    k_dim = m_dim if m_dim == n_dim else min(m_dim, n_dim)
    M, N, K = w.dim(m_dim), w.dim(n_dim), w.dim(k_dim)
    vectors = "u" in parts or "vt" in parts
    ucols = m_dim if full else k_dim
    vrows = n_dim if full else k_dim
    if isinstance(k_dim, int):
        big = max(m_dim, n_dim)
        work_shape = (4 * k_dim * k_dim + 8 * k_dim + big + 64,) if vectors else (3 * k_dim + max(big, 7 * k_dim) + 64,)
        iwork_shape = (8 * k_dim + 8,)
    else:  # m = n = k, a symbol
        work_shape = (13, k_dim, k_dim) if vectors else (11, k_dim)
        iwork_shape = (8, k_dim)
    batch = at.shape[:-2]
    cm = lp.scratch(lp.dt, (m_dim, n_dim))
    values = w.ptr(parts["s"]) if "s" in parts else lp.scratch(lp.dt, batch + (k_dim,))
    u = lp.scratch(lp.dt, (m_dim, ucols)) if vectors else cm
    vt = lp.scratch(lp.dt, (vrows, n_dim)) if vectors else cm
    work, iwork = lp.scratch(lp.dt, work_shape), lp.scratch("int32", iwork_shape)
    gesdd = lp.routine("gesdd")
    jobz = lp.char("N" if not vectors else ("A" if full else "S"))
    m32, n32, lda = lp.i32(M), lp.i32(N), lp.ld(M)
    ldu, ldvt = lp.ld(M), lp.ld(w.dim(vrows) if vectors else "1")
    lwork, liwork = lp.i32(w.size(work_shape)), lp.i32(w.size(iwork_shape))
    pa = w.ptr(a_node)
    outs = {part: w.ptr(m) for part, m in parts.items() if part != "s"}
    mn = fn.mul(M, N)
    with fn.if_(fn.emit(f"icmp sgt i64 {K}, 0", "c")):
        with fn.loop("0", w.size(batch), "lb") as bi:
            lp.transpose(cm, fn.gep(lp.t, pa, fn.mul(bi, mn)), M, N)
            fn.line(f"call void {gesdd}(ptr {jobz}, ptr {m32}, ptr {n32}, ptr {cm}, ptr {lda}, "
                    f"ptr {fn.gep(lp.t, values, fn.mul(bi, K))}, ptr {u}, ptr {ldu}, ptr {vt}, ptr {ldvt}, "
                    f"ptr {work}, ptr {lwork}, ptr {iwork}, ptr {lp.info})")
            lp.fail_on_info(_svd_no_convergence)
            if "u" in outs:  # (column-major m x c is row-major c x m)
                U = w.dim(ucols)
                lp.transpose(fn.gep(lp.t, outs["u"], fn.mul(bi, fn.mul(M, U))), u, U, M)
            if "vt" in outs:
                V = w.dim(vrows)
                lp.transpose(fn.gep(lp.t, outs["vt"], fn.mul(bi, fn.mul(V, N))), vt, N, V)
    w.note(f"LAPACK {_PREFIX[lp.dt]}gesdd per matrix" + (f" ({', '.join(sorted(parts))})" if len(parts) > 1 else ""))


def _svd_no_convergence(graph, node, info, env):
    return op_failed(graph, node, np.linalg.LinAlgError("SVD did not converge"))


@lowers("qr")
def lower_qr(w, n):
    """geqrf of a copied column-major (scipy.linalg.qr's routine and layout), then r read off its
    upper triangle and q built by orgqr from the reflectors (their first k columns copied into a
    buffer of q's columns); one factorization serves both parts."""
    (a_node,) = w.operands(n)
    lp = _Lapack(w, n)
    fn = w.fn
    parts = _parts(w, n)
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
    pa = w.ptr(a_node)
    mn = fn.mul(M, N)
    zero = float_literal(0.0, lp.dt)
    if "q" in parts:
        qbuf = lp.scratch(lp.dt, (m_dim, rows_dim))
        r32, pq = lp.i32(R), w.ptr(parts["q"])
    pr = w.ptr(parts["r"]) if "r" in parts else None
    with fn.loop("0", w.size(at.shape[:-2]), "lb") as bi:
        lp.transpose(cm, fn.gep(lp.t, pa, fn.mul(bi, mn)), M, N)
        fn.line(f"call void {lp.routine('geqrf')}(ptr {m32}, ptr {n32}, ptr {cm}, ptr {lda}, ptr {tau}, ptr {work}, "
                f"ptr {lwork}, ptr {lp.info})")
        if pr is not None:  # r[i, j] = cm[i + j m] on and above the diagonal
            dst = fn.gep(lp.t, pr, fn.mul(bi, fn.mul(R, N)))
            with fn.loop("0", R, "ri") as i:
                with fn.loop("0", N, "rj") as j:
                    upper = fn.emit(f"icmp sle i64 {i}, {j}", "c")
                    v = fn.load(lp.t, cm, fn.add(i, fn.mul(j, M)))
                    fn.store(lp.t, fn.emit(f"select i1 {upper}, {IR_TYPE[lp.dt]} {v}, {IR_TYPE[lp.dt]} {zero}", "r"),
                             dst, fn.add(fn.mul(i, N), j))
        if "q" in parts:
            lp.copy(qbuf, cm, fn.mul(M, K))  # (the reflectors: the first k columns)
            fn.line(f"call void {lp.routine('orgqr')}(ptr {m32}, ptr {r32}, ptr {k32}, ptr {qbuf}, ptr {lda}, "
                    f"ptr {tau}, ptr {work}, ptr {lwork}, ptr {lp.info})")
            lp.transpose(fn.gep(lp.t, pq, fn.mul(bi, fn.mul(M, R))), qbuf, R, M)
    w.note(f"LAPACK {_PREFIX[lp.dt]}geqrf" + (f" + {_PREFIX[lp.dt]}orgqr" if "q" in parts else "")
           + " per matrix")
