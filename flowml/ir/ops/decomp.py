"""Matrix decompositions and what is built on them: solve, solve_triangular, cholesky, inv, det,
slogdet. numpy's semantics (scipy's for solve_triangular), batched over leading axes that
broadcast; float operands of one dtype (`flowml.ir.lib` promotes integers to f64, as numpy's
linalg does). Their derivatives are the published ones (Giles 2008, "An extended collection of
matrix derivative results"; Murray 2016 for the Cholesky factor), written with the ops
themselves, so they differentiate again.

A function that reads one triangle of its matrix (cholesky: the lower one, as numpy;
solve_triangular: the one `lower` names) has the derivative of that function: the other
triangle's gradient is zero, and finite differences of the function agree with it.
"""

from __future__ import annotations

import numpy as np

from .. import lib as L
from ..graph import ShapeError
from ..types import TensorType, broadcast_shapes
from .core import Op


def _square(t, what):
    if t.ndim < 2 or t.shape[-1] != t.shape[-2]:
        raise ShapeError(f"{what} needs square matrices (..., n, n), not {t}")
    if t.dtype.kind != "f":
        raise ShapeError(f"{what} needs float matrices, not {t}")


def _same_float(a, b, what):
    if a.dtype != b.dtype:
        raise ShapeError(f"{what} needs operands of one float dtype, not {a} and {b}")


class _Decomp(Op):
    """An op of this family: registered under its name, with its impl, VJP and JVP methods. One
    with several results (slogdet, eigh, svd, qr) is one node per result, its attr `part` saying
    which: the native backend computes the parts of one matrix in one call."""

    def __init__(self, name, verb=None, multipart=None):
        super().__init__(name, impl=self.impl, vjp=self.rule, jvp=self.tangent, verb=verb or name,
                         multipart=multipart)


# ----------------------------------------------------------------- solves


class Solve(_Decomp):
    """numpy.linalg.solve(a, b): x with a @ x = b. b is one vector per matrix when it is 1-D
    (numpy 2's rule), else (..., n, k); batch dims broadcast. LU with partial pivoting."""

    def __init__(self):
        super().__init__("solve")

    def infer(self, types, attrs):
        a, b = types
        _square(a, "solve")
        _same_float(a, b, "solve")
        n = a.shape[-1]
        if b.ndim == 1:
            if b.shape[0] != n:
                raise ShapeError(f"cannot solve {a} with {b}: b has {b.shape[0]} rows, the matrix {n}")
            return TensorType(a.dtype, a.shape[:-1])
        if b.ndim < 2 or b.shape[-2] != n:
            raise ShapeError(f"cannot solve {a} with {b}: b must be (..., {n}, k) or ({n},)")
        batch = broadcast_shapes(a.shape[:-2], b.shape[:-2])
        if batch is None:
            raise ShapeError(f"cannot solve {a} with {b}: batch dims do not broadcast")
        return TensorType(a.dtype, batch + b.shape[-2:])

    @staticmethod
    def impl(a, b):
        return np.linalg.solve(a, b)

    @staticmethod
    def rule(g, x, a, b):
        # x = a^-1 b: gb = a^-T g, ga = -gb x^T (an outer product for vector b)
        gb = _once(lambda: _solve_like(L.solve, a, g, b, transpose=True))
        return [lambda: _grad_matrix(gb(), x, a, b), lambda: L.sum_to(gb(), b.type.shape)]

    @staticmethod
    def tangent(tangents, x, a, b):
        rhs = _tangent_rhs(tangents, x, b)  # dx = a^-1 (db - da x)
        return None if rhs is None else _solve_like(L.solve, a, rhs, b)


def _once(build):
    """build(), built on the first call only (a cotangent two operands' rules share)."""
    memo = []

    def get():
        if not memo:
            memo.append(build())
        return memo[0]
    return get


def _solve_like(solver, a, r, b, transpose=False, **kw):
    """solver(a or a^T, r) where r is shaped like the solution: one vector per matrix when b is a
    vector (r may then carry a batch of its own: each row is one right-hand side), else matrices."""
    m = L.swap_last(a) if transpose else a
    if b.type.ndim == 1 and r.ndim > 1:
        x = solver(m, L.expand_dims(r, -1), **kw)
        return L.reshape(x, x.type.shape[:-1])
    return solver(m, r, **kw)


def _outer_or_product(u, x, b):
    """u x^T for the solution x of a @ x = b (an outer product per matrix when b is a vector)."""
    if b.type.ndim == 1:
        return L.multiply(L.expand_dims(u, -1), L.expand_dims(x, -2))
    return L.matmul(u, L.swap_last(x))


def _grad_matrix(gb, x, a, b, mask=None):
    """-gb x^T, summed back over a's broadcast batch dims (ga of a solve)."""
    prod = _outer_or_product(gb, x, b)
    return L.sum_to(L.negative(mask(prod) if mask else prod), a.type.shape)


def _tangent_rhs(tangents, x, b, mask=None):
    """db - da x (da masked to the triangle a solve reads), or None when both are zero."""
    ta, tb = tangents
    rhs = [tb] if tb is not None else []
    if ta is not None:
        ta = mask(ta) if mask else ta
        if b.type.ndim == 1:
            rhs.append(L.negative(L.sum(L.multiply(ta, L.expand_dims(x, -2)), axis=-1)))
        else:
            rhs.append(L.negative(L.matmul(ta, x)))
    return L.add_all(rhs) if rhs else None


class SolveTriangular(_Decomp):
    """scipy.linalg.solve_triangular(a, b, lower=False, unit_diagonal=False): x with a @ x = b,
    reading only the triangle of a that `lower` names (and not its diagonal when unit_diagonal:
    ones are taken). b as for `solve`."""

    def __init__(self):
        super().__init__("solve_triangular", verb="solve a triangular system")

    def infer(self, types, attrs):
        return solve.infer(types, attrs)

    @staticmethod
    def impl(a, b, lower, unit_diagonal):
        import scipy.linalg
        tri = _triangle_np(a, lower, unit_diagonal)
        vector = b.ndim == 1
        bm = b[:, None] if vector else b
        shape = np.broadcast_shapes(a.shape[:-2], bm.shape[:-2])
        at = np.broadcast_to(tri, shape + a.shape[-2:])
        bt = np.broadcast_to(bm, shape + bm.shape[-2:])
        out = np.empty(shape + bm.shape[-2:], dtype=a.dtype)
        for i in np.ndindex(*shape):
            out[i] = scipy.linalg.solve_triangular(at[i], bt[i], lower=lower, check_finite=False)
        return out[..., 0] if vector else out

    @staticmethod
    def rule(g, x, a, b, lower, unit_diagonal):
        mask = lambda m: triangle(m, lower, strict=unit_diagonal)  # noqa: E731
        gb = _once(lambda: _solve_like(L.solve_triangular, a, g, b, transpose=True, lower=not lower,
                                       unit_diagonal=unit_diagonal))
        return [lambda: _grad_matrix(gb(), x, a, b, mask), lambda: L.sum_to(gb(), b.type.shape)]

    @staticmethod
    def tangent(tangents, x, a, b, lower, unit_diagonal):
        rhs = _tangent_rhs(tangents, x, b, lambda m: triangle(m, lower, strict=unit_diagonal))
        return None if rhs is None else _solve_like(L.solve_triangular, a, rhs, b, lower=lower,
                                                    unit_diagonal=unit_diagonal)


def _triangle_np(a, lower, unit_diagonal=False):
    t = np.tril(a) if lower else np.triu(a)
    if unit_diagonal:
        t = t.copy()
        i = np.arange(a.shape[-1])
        t[..., i, i] = 1
    return t


def triangle(x, lower: bool, strict: bool = False):
    """x with the other triangle zeroed (numpy's tril / triu of the last two axes); strict: the
    diagonal too."""
    from .. import arrays  # (it builds on flowml.ir.lib, which imports the ops)
    return arrays.tril(x, -1 if strict else 0) if lower else arrays.triu(x, 1 if strict else 0)


# ----------------------------------------------------------------- factorizations


class Cholesky(_Decomp):
    """numpy.linalg.cholesky(a): the lower triangular l with l @ l.T = a, of a symmetric positive
    definite a; reads a's lower triangle only."""

    def __init__(self):
        super().__init__("cholesky", verb="take the Cholesky factor of")

    def infer(self, types, attrs):
        (a,) = types
        _square(a, "cholesky")
        return a

    @staticmethod
    def impl(a):
        return np.linalg.cholesky(a)

    @staticmethod
    def rule(g, l, a):
        # Murray 2016: with phi(m) = tril(m) with its diagonal halved, the symmetric gradient is
        # s = sym(l^-T phi(l^T g) l^-1); as a function of a's lower triangle, the entries below
        # the diagonal get both of theirs: tril(s + s^T) - diag(s).
        def grad_a():
            p = _phi(L.matmul(L.swap_last(l), g))
            s = L.solve_triangular(L.swap_last(l), p, lower=False)  # l^-T p
            s = L.swap_last(L.solve_triangular(L.swap_last(l), L.swap_last(s), lower=False))  # ... l^-1
            sym = L.multiply(L.add(s, L.swap_last(s)), 0.5)
            return L.add(triangle(L.multiply(sym, 2.0), True, strict=True), _diagonal_part(sym))
        return [grad_a]

    @staticmethod
    def tangent(tangents, l, a):
        (ta,) = tangents
        if ta is None:
            return None
        # the tangent of the lower triangle as a symmetric matrix, then dl = l phi(l^-1 da l^-T)
        low = triangle(ta, True, strict=True)
        da = L.add(L.add(low, L.swap_last(low)), _diagonal_part(ta))
        m = L.solve_triangular(l, da, lower=True)  # l^-1 da
        m = L.swap_last(L.solve_triangular(l, L.swap_last(m), lower=True))  # ... l^-T
        return L.matmul(l, _phi(m))


def _phi(m):
    """tril(m) with its diagonal halved."""
    return L.add(triangle(m, True, strict=True), L.multiply(_diagonal_part(m), 0.5))


def _diagonal_mask(m):
    """The bool [n, k] mask of the diagonal of the matrices m [..., n, k]."""
    from .. import arrays
    return arrays.eye(m.graph, m.type.shape[-2], m.type.shape[-1], dtype="bool")


def _diagonal_part(m):
    """m with everything but its diagonal zeroed."""
    return L.where(_diagonal_mask(m), m, L.zeros_like(m))


def _off_diagonal_reciprocal(gap):
    """1 / gap off the diagonal of the matrices gap [..., n, n], 0 on it (where gap is 0: the
    derivatives of eigenvectors and singular vectors divide by the gaps between values)."""
    off = L.logical_not(_diagonal_mask(gap))
    return L.where(off, L.divide(1.0, L.where(off, gap, 1.0)), 0.0)


def _trace(m):
    return L.sum(_diagonal_part(m), axis=(-2, -1))


def _scalar_per_matrix(v):
    """v (one value per matrix, shape batch) broadcast against the matrices (batch + (1, 1))."""
    return L.expand_dims(L.expand_dims(v, -1), -1)


class Inv(_Decomp):
    """numpy.linalg.inv(a)."""

    def __init__(self):
        super().__init__("inv", verb="invert")

    def infer(self, types, attrs):
        (a,) = types
        _square(a, "inv")
        return a

    @staticmethod
    def impl(a):
        return np.linalg.inv(a)

    @staticmethod
    def rule(g, y, a):
        return [lambda: L.negative(L.matmul(L.matmul(L.swap_last(y), g), L.swap_last(y)))]

    @staticmethod
    def tangent(tangents, y, a):
        (ta,) = tangents
        return None if ta is None else L.negative(L.matmul(L.matmul(y, ta), y))


class Det(_Decomp):
    """numpy.linalg.det(a), from the LU factorization (0 for an exactly singular a)."""

    def __init__(self):
        super().__init__("det", verb="take the determinant of")

    def infer(self, types, attrs):
        (a,) = types
        _square(a, "det")
        return TensorType(a.dtype, a.shape[:-2])

    @staticmethod
    def impl(a):
        return np.asarray(np.linalg.det(a), dtype=a.dtype)

    @staticmethod
    def rule(g, d, a):  # d det = det tr(a^-1 da): ga = g det a^-T
        return [lambda: L.multiply(_scalar_per_matrix(L.multiply(g, d)), L.swap_last(L.inv(a)))]

    @staticmethod
    def tangent(tangents, d, a):
        (ta,) = tangents
        return None if ta is None else L.multiply(d, _trace(L.solve(a, ta)))


class Slogdet(_Decomp):
    """One part of numpy.linalg.slogdet(a): `part` 'sign' (-1, 0 or 1) or 'logabsdet' (log|det a|,
    -inf when a is singular). `flowml.ir.lib.slogdet` returns both, as numpy."""

    def __init__(self):
        super().__init__("slogdet", verb="take the log-determinant of", multipart="part")

    def infer(self, types, attrs):
        (a,) = types
        _square(a, "slogdet")
        if attrs["part"] not in ("sign", "logabsdet"):
            raise ShapeError(f"slogdet's part is 'sign' or 'logabsdet', not {attrs['part']!r}")
        return TensorType(a.dtype, a.shape[:-2])

    @staticmethod
    def impl(a, part):
        sign, logabs = np.linalg.slogdet(a)
        return np.asarray(sign if part == "sign" else logabs, dtype=a.dtype)

    @staticmethod
    def rule(g, y, a, part):
        if part == "sign":
            return [None]
        return [lambda: L.multiply(_scalar_per_matrix(g), L.swap_last(L.inv(a)))]

    @staticmethod
    def tangent(tangents, y, a, part):
        (ta,) = tangents
        if ta is None or part == "sign":
            return None
        return _trace(L.solve(a, ta))


solve = Solve()
solve_triangular = SolveTriangular()
cholesky = Cholesky()
inv = Inv()
det = Det()
slogdet = Slogdet()


class Eigh(_Decomp):
    """One part of numpy.linalg.eigh(a) of a symmetric a (its lower triangle read): `part`
    'values' (ascending, [..., n]) or 'vectors' (the columns, [..., n, n]). `flowml.ir.lib.eigh`
    returns both. The derivative of the vectors is undefined where eigenvalues repeat (inf or
    NaN, as in JAX)."""

    def __init__(self):
        super().__init__("eigh", verb="take the eigendecomposition of", multipart="part")

    def infer(self, types, attrs):
        (a,) = types
        _square(a, "eigh")
        if attrs["part"] not in ("values", "vectors"):
            raise ShapeError(f"eigh's part is 'values' or 'vectors', not {attrs['part']!r}")
        return a if attrs["part"] == "vectors" else TensorType(a.dtype, a.shape[:-1])

    @staticmethod
    def impl(a, part):
        # scipy's syevd, the routine the native code calls: eigenvectors are defined up to sign,
        # and numpy's own LAPACK may pick the other one
        import scipy.linalg
        w = np.empty(a.shape[:-1], a.dtype)
        v = np.empty(a.shape, a.dtype)
        for i in np.ndindex(*a.shape[:-2]):
            w[i], v[i] = scipy.linalg.eigh(a[i], lower=True, driver="evd", check_finite=False)
        return w if part == "values" else v

    @staticmethod
    def rule(g, y, a, part):
        # with g = V (diag(gw) + F o (V^T gV)) V^T, F_ij = 1 / (w_j - w_i) off the diagonal, and
        # only a's lower triangle read: ga = tril(g + g^T, -1) + diag(g)
        def grad_a():
            w, v = L.eigh(a)
            if part == "values":
                inner = L.multiply(L.expand_dims(g, -1), _eye_like(v))
            else:
                inner = L.multiply(_gap_inverse(w), L.matmul(L.swap_last(v), g))
            full = L.matmul(L.matmul(v, inner), L.swap_last(v))
            return L.add(triangle(L.add(full, L.swap_last(full)), True, strict=True), _diagonal_part(full))
        return [grad_a]

    @staticmethod
    def tangent(tangents, y, a, part):
        (ta,) = tangents
        if ta is None:
            return None
        w, v = L.eigh(a)
        low = triangle(ta, True, strict=True)
        da = L.add(L.add(low, L.swap_last(low)), _diagonal_part(ta))  # the symmetric matrix read
        m = L.matmul(L.matmul(L.swap_last(v), da), v)
        if part == "values":
            return L.sum(_diagonal_part(m), axis=-1)
        return L.matmul(v, L.multiply(_gap_inverse(w), m))


def _eye_like(m):
    return L.cast(_diagonal_mask(m), m.dtype)


def _gap_inverse(w):
    """F_ij = 1 / (w_j - w_i) for i != j, 0 on the diagonal ([..., n, n] from w [..., n])."""
    return _off_diagonal_reciprocal(L.subtract(L.expand_dims(w, -2), L.expand_dims(w, -1)))


eigh = Eigh()


def _smaller_dim(t, what):
    """min(m, n) of matrices t [..., m, n], which a type needs: known when both are ints or they
    are the same symbol."""
    m, n = t.shape[-2], t.shape[-1]
    if m == n:
        return m
    if isinstance(m, int) and isinstance(n, int):
        return m if m < n else n
    raise ShapeError(f"{what} of {t} needs to know the smaller of its last two dims: make them ints, or equal")


class Svd(_Decomp):
    """One part of numpy.linalg.svd(a, full_matrices): `part` 's' (the singular values,
    descending, [..., k] with k = min(m, n)), 'u' ([..., m, k], or m x m with full matrices) or
    'vt' ([..., k, n], or n x n). `flowml.ir.lib.svd` returns (u, s, vt), or s alone. The
    vectors have the signs LAPACK's gesdd gives (the same on every backend); their derivative
    is that of the reduced decomposition (none with full matrices, as in JAX), undefined where
    singular values repeat or, for the vectors of a non-square matrix, vanish."""

    def __init__(self):
        super().__init__("svd", verb="take the singular value decomposition of", multipart="part")

    def infer(self, types, attrs):
        (a,) = types
        if a.ndim < 2 or a.dtype.kind != "f":
            raise ShapeError(f"svd needs float matrices (..., m, n), not {a}")
        k = _smaller_dim(a, "svd")
        m, n = a.shape[-2:]
        part, full = attrs["part"], attrs["full_matrices"]
        if part == "s":
            return TensorType(a.dtype, a.shape[:-2] + (k,))
        if part == "u":
            return TensorType(a.dtype, a.shape[:-2] + (m, m if full else k))
        if part == "vt":
            return TensorType(a.dtype, a.shape[:-2] + (n if full else k, n))
        raise ShapeError(f"svd's part is 's', 'u' or 'vt', not {part!r}")

    @staticmethod
    def impl(a, part, full_matrices):
        # scipy's gesdd on the column-major copy: the routine and layout the native code uses
        import scipy.linalg
        out = None
        for i in np.ndindex(*a.shape[:-2]):
            if part == "s":
                r = scipy.linalg.svd(a[i], compute_uv=False, lapack_driver="gesdd", check_finite=False)
            else:
                u, s, vt = scipy.linalg.svd(a[i], full_matrices=full_matrices, lapack_driver="gesdd",
                                            check_finite=False)
                r = u if part == "u" else vt
            if out is None:
                out = np.empty(a.shape[:-2] + r.shape, a.dtype)
            out[i] = r
        if out is None:  # (an empty batch)
            k = min(a.shape[-2:])
            m, n = a.shape[-2:]
            inner = {"s": (k,), "u": (m, m if full_matrices else k), "vt": (n if full_matrices else k, n)}[part]
            out = np.empty(a.shape[:-2] + inner, a.dtype)
        return out

    @staticmethod
    def rule(g, y, a, part, full_matrices):
        if part != "s" and full_matrices:
            from ...errors import FlowGradError
            raise FlowGradError("svd with full_matrices=true has no derivative (its extra vectors are any basis "
                                "of the complement): use full_matrices=false")
        return [lambda: _svd_vjp(a, part, g)]

    @staticmethod
    def tangent(tangents, y, a, part, full_matrices):
        (ta,) = tangents
        if ta is None:
            return None
        if part != "s" and full_matrices:
            from ...errors import FlowGradError
            raise FlowGradError("svd with full_matrices=true has no derivative: use full_matrices=false")
        u, s, vt = L.svd(a, full_matrices=False)
        v = L.swap_last(vt)
        ds_mat = L.matmul(L.matmul(L.swap_last(u), ta), v)  # u^T da v
        if part == "s":
            return L.sum(_diagonal_part(ds_mat), axis=-1)
        f = _svd_gaps(s)
        srow = L.expand_dims(s, -2)  # [..., 1, k]: entry (i, j) is s_j
        scol = L.expand_dims(s, -1)  # s_i
        m, n = a.type.shape[-2:]
        if part == "u":  # du = u (F o (dS S + S dS^T)) + (I - u u^T) da v S^-1
            dss = L.multiply(ds_mat, srow)
            du = L.matmul(u, L.multiply(f, L.add(dss, L.swap_last(dss))))
            if _maybe_greater(m, n):
                dav = L.matmul(ta, v)
                du = L.add(du, L.divide(L.subtract(dav, L.matmul(u, L.matmul(L.swap_last(u), dav))), srow))
            return du
        sds = L.multiply(scol, ds_mat)  # dv = v (F o (S dS + dS^T S)) + (I - v v^T) da^T u S^-1
        dv = L.matmul(v, L.multiply(f, L.add(sds, L.swap_last(sds))))
        if _maybe_greater(n, m):
            dau = L.matmul(L.swap_last(ta), u)
            dv = L.add(dv, L.divide(L.subtract(dau, L.matmul(v, L.matmul(vt, dau))), srow))
        return L.swap_last(dv)


def _maybe_greater(p, q) -> bool:
    """p > q, or not known to be false (symbolic dims)."""
    return not (isinstance(p, int) and isinstance(q, int)) or p > q


def _svd_gaps(s):
    """F_ij = 1 / (s_j^2 - s_i^2) off the diagonal, 0 on it."""
    srow, scol = L.expand_dims(s, -2), L.expand_dims(s, -1)
    return _off_diagonal_reciprocal(L.multiply(L.add(srow, scol), L.subtract(srow, scol)))


def _svd_vjp(a, part, g):
    """The cotangent of a from that of one part of its reduced SVD (the transpose of `tangent`):
    u [diag(gs) + (J + J^T) S + S (K + K^T)] v^T, J = F o (u^T gu), K = F o (v^T gv), plus the
    parts off the span of u (m > n) or v (n > m)."""
    u, s, vt = L.svd(a, full_matrices=False)
    v = L.swap_last(vt)
    srow, scol = L.expand_dims(s, -2), L.expand_dims(s, -1)
    m, n = a.type.shape[-2:]
    if part == "s":
        return L.matmul(L.multiply(u, L.expand_dims(g, -2)), vt)  # u diag(gs) v^T
    f = _svd_gaps(s)
    if part == "u":
        j = L.multiply(f, L.matmul(L.swap_last(u), g))
        inner = L.multiply(L.add(j, L.swap_last(j)), srow)
        ga = L.matmul(L.matmul(u, inner), vt)
        if _maybe_greater(m, n):
            off = L.subtract(g, L.matmul(u, L.matmul(L.swap_last(u), g)))  # (I - u u^T) gu
            ga = L.add(ga, L.matmul(L.divide(off, srow), vt))
        return ga
    gv = L.swap_last(g)
    kk = L.multiply(f, L.matmul(vt, gv))
    inner = L.multiply(scol, L.add(kk, L.swap_last(kk)))
    ga = L.matmul(L.matmul(u, inner), vt)
    if _maybe_greater(n, m):
        off = L.subtract(gv, L.matmul(v, L.matmul(vt, gv)))  # (I - v v^T) gv
        ga = L.add(ga, L.matmul(u, L.swap_last(L.divide(off, srow))))
    return ga


svd = Svd()


class Qr(_Decomp):
    """One part of numpy.linalg.qr(a, mode): `part` 'q' ([..., m, k], or m x m when `complete`)
    or 'r' ([..., k, n], or m x n), k = min(m, n). Householder QR (LAPACK's geqrf, orgqr): r's
    diagonal may be negative, as numpy's. Derivatives for m >= n without `complete` (PyTorch's
    rule), none otherwise."""

    def __init__(self):
        super().__init__("qr", verb="take the QR decomposition of", multipart="part")

    def infer(self, types, attrs):
        (a,) = types
        if a.ndim < 2 or a.dtype.kind != "f":
            raise ShapeError(f"qr needs float matrices (..., m, n), not {a}")
        k = _smaller_dim(a, "qr")
        m, n = a.shape[-2:]
        rows = m if attrs["complete"] else k
        if attrs["part"] == "q":
            return TensorType(a.dtype, a.shape[:-2] + (m, rows))
        if attrs["part"] == "r":
            return TensorType(a.dtype, a.shape[:-2] + (rows, n))
        raise ShapeError(f"qr's part is 'q' or 'r', not {attrs['part']!r}")

    @staticmethod
    def impl(a, part, complete):
        import scipy.linalg
        m, n = a.shape[-2:]
        rows = m if complete else min(m, n)
        out = np.empty(a.shape[:-2] + ((m, rows) if part == "q" else (rows, n)), a.dtype)
        for i in np.ndindex(*a.shape[:-2]):
            q, r = scipy.linalg.qr(a[i], mode="full" if complete else "economic", check_finite=False)
            out[i] = q if part == "q" else r
        return out

    @staticmethod
    def _differentiable(a, complete):
        m, n = a.type.shape[-2:]
        if complete and m != n or not (m == n or (isinstance(m, int) and isinstance(n, int) and m >= n)):
            from ...errors import FlowGradError
            raise FlowGradError(f"qr of {a.type} has no derivative here: flowml differentiates qr of matrices "
                                "with m >= n (known from the type), without mode='complete'")

    @staticmethod
    def rule(g, y, a, part, complete):
        Qr._differentiable(a, complete)

        def grad_a():
            q, r = L.qr(a)
            # (PyTorch's linalg_qr_backward) ga = [gq + q syminvadj(triu(gr r^T - q^T gq))] r^-T
            m = L.matmul(g, L.swap_last(r)) if part == "r" else L.negative(L.matmul(L.swap_last(q), g))
            t = triangle(m, lower=False)
            sym = L.subtract(L.add(t, L.swap_last(t)), _diagonal_part(t))
            x = L.matmul(q, sym)
            if part == "q":
                x = L.add(x, g)
            # x r^-T = (r^-1 x^T)^T
            return L.swap_last(L.solve_triangular(r, L.swap_last(x), lower=False))
        return [grad_a]

    @staticmethod
    def tangent(tangents, y, a, part, complete):
        (ta,) = tangents
        if ta is None:
            return None
        Qr._differentiable(a, complete)
        q, r = L.qr(a)
        # (JAX's qr_jvp_rule) with dx r^-1 = (r^-T dx^T)^T
        dx_rinv = L.swap_last(L.solve_triangular(L.swap_last(r), L.swap_last(ta), lower=True))
        qt = L.matmul(L.swap_last(q), dx_rinv)
        low = triangle(qt, lower=True, strict=True)
        do = L.subtract(low, L.swap_last(low))
        if part == "q":
            return L.add(L.matmul(q, L.subtract(do, qt)), dx_rinv)
        return L.matmul(L.subtract(qt, do), r)


qr = Qr()
