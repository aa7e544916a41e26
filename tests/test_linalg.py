"""solve, solve_triangular, cholesky, inv, det, slogdet: values against numpy / scipy on every
backend (batched, broadcast, vector right-hand sides, f32 and f64), derivatives of every order
against finite differences, native LAPACK calls on LLVM, located errors for singular matrices,
and the stability rewrites they bring (log(det(a)) -> slogdet, inv(a) @ b -> solve)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

import flowml
from flowml.errors import FlowRuntimeError, FlowTypeError
from flowml.ir import lib as L
from autodiff_helpers import Case, check_dot_product, check_grad, check_hvp, check_jvp, check_lop

BACKENDS = ["reference", "llvm"]


def well_conditioned(rng, *shape, dtype=np.float64):
    """Random square matrices a bit away from singular (a diagonal shift)."""
    n = shape[-1]
    a = rng.normal(size=shape) + 3 * np.eye(n)
    return a.astype(dtype)


def spd(rng, *shape, dtype=np.float64):
    b = rng.normal(size=shape)
    return (b @ np.swapaxes(b, -1, -2) + shape[-1] * np.eye(shape[-1])).astype(dtype)


PROGRAM = """
input a : {dt}[B, N, N]
input m : {dt}[N, K]
input v : {dt}[N]
input s : {dt}[B, N, N]
fn f(a, m, v, s) -> solve(a, m), solve(a, v), solve(a[0], m), inv(a), det(a), sgn, logabs, l, t1, t2, t3 {
  sgn, logabs = slogdet(a)
  l = cholesky(s)
  t1 = solve_triangular(a, m, lower=true)
  t2 = solve_triangular(a, v)
  t3 = solve_triangular(a, m, unit_diagonal=true)
}
"""


def expected(a, m, v, s):
    tri = lambda t, low: np.tril(t) if low else np.triu(t)  # noqa: E731
    unit = np.triu(a, 1) + np.eye(a.shape[-1])
    return [np.linalg.solve(a, m), np.linalg.solve(a, v), np.linalg.solve(a[0], m), np.linalg.inv(a),
            np.linalg.det(a), *np.linalg.slogdet(a), np.linalg.cholesky(s),
            np.stack([scipy.linalg.solve_triangular(tri(x, True), m, lower=True) for x in a]),
            np.stack([scipy.linalg.solve_triangular(tri(x, False), v) for x in a]),
            np.stack([np.linalg.solve(u, m) for u in unit])]


@pytest.mark.parametrize("backend", BACKENDS + ["opencl"])
@pytest.mark.parametrize("dt", ["f64", "f32"])
def test_every_function_matches_numpy_batched_and_broadcast(backend, dt):
    model = flowml.loads(PROGRAM.replace("{dt}", dt), backend=backend)
    dtype = np.float64 if dt == "f64" else np.float32
    tol = 1e-9 if dt == "f64" else 2e-4
    rng = np.random.default_rng(0)
    for b, n, k in [(1, 1, 1), (3, 4, 2), (2, 7, 5), (4, 3, 1)]:
        args = (well_conditioned(rng, b, n, n, dtype=dtype), rng.normal(size=(n, k)).astype(dtype),
                rng.normal(size=n).astype(dtype), spd(rng, b, n, n, dtype=dtype))
        got = model.f(*args)
        for i, (g, e) in enumerate(zip(got, expected(*[x.astype(np.float64) for x in args]))):
            assert g.dtype == dtype, (i, g.dtype)
            np.testing.assert_allclose(g, e, rtol=tol, atol=tol, err_msg=f"output {i} at b={b} n={n} k={k}")


def test_llvm_runs_each_as_a_lapack_call():
    ex = flowml.loads(PROGRAM.replace("{dt}", "f64"), backend="llvm").f._executable
    assert ex.summary() == "1 native call, nothing on the host"
    text = "\n".join(ex.plan_text({}))
    for routine in ("dgetrf + dgetrs", "dgetrf per matrix", "dpotrf", "dtrtrs"):
        assert f"LAPACK {routine}" in text, text


def test_integer_operands_are_solved_in_f64():
    x = flowml.tensor("x", "i64[3, 3]")
    f = flowml.function([x], [flowml.inv(x), flowml.det(x)])
    a = np.array([[2, 1, 0], [1, 3, 1], [0, 1, 4]])
    inv, det = f(a)
    assert inv.dtype == np.float64
    np.testing.assert_allclose(inv, np.linalg.inv(a))
    np.testing.assert_allclose(det, np.linalg.det(a))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_singular_matrix_is_a_located_error(backend):
    src = "input a : f64[N, N]\ninput b : f64[N]\nfn f(a, b) -> solve(a, b)\nfn g(a) -> inv(a)\nfn h(a) -> cholesky(a)\n" \
          "fn t(a, b) -> solve_triangular(a, b, lower=true)\nfn d(a) -> det(a), slogdet(a)[0], slogdet(a)[1]\n"
    model = flowml.loads(src, file="lin.flow", backend=backend)
    singular = np.array([[1.0, 2.0], [2.0, 4.0]])
    with pytest.raises(FlowRuntimeError, match=r"lin\.flow:3:15.*solve failed: Singular matrix"):
        model.f(singular, np.ones(2))
    with pytest.raises(FlowRuntimeError, match=r"lin\.flow:4.*inv failed: Singular matrix"):
        model.g(singular)
    with pytest.raises(FlowRuntimeError, match=r"lin\.flow:5.*cholesky failed: Matrix is not positive definite"):
        model.h(-np.eye(2))
    with pytest.raises(FlowRuntimeError, match=r"lin\.flow:6.*solve_triangular failed: singular matrix: "
                                               r"resolution failed at diagonal 1"):
        model.t(np.array([[1.0, 0.0], [5.0, 0.0]]), np.ones(2))
    det, sign, logabs = model.d(singular)  # det of a singular matrix is no error: 0, as numpy
    assert det == 0 and sign == 0 and logabs == -np.inf
    assert model.f(np.eye(2), np.ones(2)).tolist() == [1.0, 1.0]  # (the function still works after)


def test_bad_operands_are_type_errors_at_the_call():
    with pytest.raises(flowml.FlowError, match=r"solve needs square matrices"):
        flowml.loads("input a : f64[3, 4]\ninput b : f64[3]\nfn f(a, b) -> solve(a, b)\n")
    with pytest.raises(flowml.FlowError, match=r"cannot solve f64\[3, 3\] with f64\[4\]"):
        flowml.loads("input a : f64[3, 3]\ninput b : f64[4]\nfn f(a, b) -> solve(a, b)\n")
    with pytest.raises(FlowTypeError, match=r"det needs a matrix"):
        L.det(flowml.tensor("v", "f64[3]"))


# ---------------------------------------------------------------- derivatives


def _cases():
    rng = np.random.default_rng(1)
    a = well_conditioned(rng, 3, 3)
    ab = well_conditioned(rng, 2, 3, 3)
    s = spd(rng, 3, 3)
    m, v = rng.normal(size=(3, 2)), rng.normal(size=3)
    return [
        Case(lambda a, m: L.solve(a, m), [a, m], label="solve matrix"),
        Case(lambda a, v: L.solve(a, v), [ab, v], label="solve batched vector"),
        Case(lambda a, m: L.solve_triangular(a, m, lower=True), [a, m], label="solve_triangular lower"),
        Case(lambda a, v: L.solve_triangular(a, v, unit_diagonal=True), [ab, v], label="solve_triangular unit"),
        Case(lambda s: L.cholesky(s), [s], label="cholesky"),
        Case(lambda a: L.inv(a), [ab], label="inv"),
        Case(lambda a: L.det(a), [ab], label="det"),
        Case(lambda a: L.slogdet(a)[1], [ab], label="slogdet"),
        # (eigenvectors have a sign of LAPACK's choosing: their squares are a function of a; and
        # a need not be symmetric: eigh reads its lower triangle)
        Case(lambda a: L.eigh(a)[0], [rng.normal(size=(2, 4, 4))], label="eigh values"),
        Case(lambda a: L.eigh(a)[1] ** 2, [rng.normal(size=(4, 4))], label="eigh vectors"),
        Case(lambda x: L.svd(x, compute_uv=False), [rng.normal(size=(2, 4, 3))], label="svd values"),
        Case(lambda x: L.svd(x, full_matrices=False)[0] ** 2, [rng.normal(size=(4, 3))], label="svd u tall"),
        Case(lambda x: L.svd(x, full_matrices=False)[2] ** 2, [rng.normal(size=(4, 3))], label="svd vt tall"),
        Case(lambda x: L.svd(x, full_matrices=False)[0] ** 2, [rng.normal(size=(3, 5))], label="svd u wide"),
        Case(lambda x: L.svd(x, full_matrices=False)[2] ** 2, [rng.normal(size=(3, 5))], label="svd vt wide"),
        Case(lambda x: L.pinv(x), [rng.normal(size=(4, 3))], label="pinv"),
        Case(lambda x: L.qr(x)[0], [rng.normal(size=(2, 4, 3))], label="qr q"),
        Case(lambda x: L.qr(x)[1], [rng.normal(size=(4, 3))], label="qr r"),
        Case(lambda x: L.qr(x, "complete")[1], [rng.normal(size=(3, 3))], label="qr r square"),
        Case(lambda c, b: L.cho_solve((c, True), b), [np.linalg.cholesky(s), m], label="cho_solve"),
        Case(lambda x: L.norm(x), [rng.normal(size=(3, 4))], label="norm fro"),
        Case(lambda x: L.norm(x, 3.0, axis=1), [rng.normal(size=(3, 4))], label="norm p"),
        Case(lambda x: L.norm(x, 2, axis=(0, 1)), [rng.normal(size=(4, 3))], label="norm 2 (matrix)"),
        Case(lambda x: L.norm(x, "nuc"), [rng.normal(size=(4, 3))], label="norm nuc"),
    ]


@pytest.mark.parametrize("case", _cases(), ids=lambda c: c.label)
def test_derivatives_match_finite_differences(case):
    check_grad(case, rtol=1e-6, atol=1e-8)
    check_jvp(case, rtol=1e-6, atol=1e-8)
    check_lop(case, rtol=1e-6, atol=1e-8)
    check_dot_product(case)
    check_hvp(case, rtol=1e-5, atol=1e-7)


def test_gradients_on_llvm_equal_the_reference():
    rng = np.random.default_rng(2)
    a_val, b_val, s_val = well_conditioned(rng, 4, 4), rng.normal(size=(4, 3)), spd(rng, 4, 4)
    outs = {}
    for backend in BACKENDS:
        flowml.reset_default_graph()
        a, b, s = flowml.tensor("a", "f64[N, N]"), flowml.tensor("b", "f64[N, K]"), flowml.tensor("s", "f64[N, N]")
        cost = (flowml.sum(flowml.solve(a, b) ** 2) + flowml.slogdet(a)[1] + flowml.sum(flowml.cholesky(s))
                + flowml.sum(flowml.inv(a)) + flowml.det(a))
        f = flowml.function([a, b, s], [cost, *flowml.grad(cost, [a, b, s])], backend=backend)
        outs[backend] = f(a_val, b_val, s_val)
    for got, want in zip(outs["llvm"], outs["reference"]):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_cholesky_reads_the_lower_triangle_and_so_does_its_gradient():
    rng = np.random.default_rng(3)
    s = spd(rng, 3, 3)
    junk = s + np.triu(rng.normal(size=(3, 3)), 1)  # the strict upper triangle is never read
    f = flowml.function([x := flowml.tensor("x", "f64[3, 3]")], flowml.cholesky(x))
    np.testing.assert_allclose(f(junk), np.linalg.cholesky(s))
    g = flowml.function([x], flowml.grad(flowml.sum(flowml.cholesky(x)), x))
    assert np.all(np.triu(g(junk), 1) == 0)


# ---------------------------------------------------------------- eigh and norm


@pytest.mark.parametrize("backend", BACKENDS + ["opencl"])
def test_eigh_matches_numpy_and_is_the_same_on_every_backend(backend):
    src = "input a : f64[B, N, N]\nfn f(a) -> w, v, eigvalsh(a) {\n  w, v = eigh(a)\n}\n"
    rng = np.random.default_rng(5)
    a = rng.normal(size=(3, 6, 6))  # (not symmetric: the lower triangle is read, as numpy's)
    w, v, w2 = flowml.loads(src, backend=backend).f(a)
    want_w, want_v = np.linalg.eigh(a)
    np.testing.assert_allclose(w, want_w, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(w2, want_w, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.abs(v), np.abs(want_v), rtol=1e-10, atol=1e-12)  # (signs are LAPACK's)
    ref_w, ref_v, _ = flowml.loads(src, backend="reference").f(a)
    np.testing.assert_allclose(v, ref_v, rtol=1e-10, atol=1e-12)  # ... the same on every backend
    sym = np.tril(a) + np.swapaxes(np.tril(a, -1), -1, -2)
    np.testing.assert_allclose(sym @ v, v * w[:, None, :], atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS + ["opencl"])
@pytest.mark.parametrize("shape", [(4, 3), (3, 5), (4, 4)])
def test_svd_pinv_lstsq_match_numpy(backend, shape):
    m, n = shape
    src = (f"input a : f64[B, {m}, {n}]\ninput b : f64[{m}, 2]\n"
           "fn f(a, b) -> u, s, vt, uf, vtf, svd(a, compute_uv=false), pinv(a), x, res, rk, sv {\n"
           "  u, s, vt = svd(a, full_matrices=false)\n  uf, s2, vtf = svd(a)\n"
           "  x, res, rk, sv = lstsq(a[0], b)\n}\n")
    rng = np.random.default_rng(8)
    a, b = rng.normal(size=(2, m, n)), rng.normal(size=(m, 2))
    got = flowml.loads(src, backend=backend).f(a, b)
    u, s, vt, uf, vtf, s_only, pinv, x, res, rank, sv = got
    want_u, want_s, want_vt = np.linalg.svd(a, full_matrices=False)
    for v, w_ in ((s, want_s), (s_only, want_s), (sv, want_s[0])):
        np.testing.assert_allclose(v, w_, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.abs(u), np.abs(want_u), atol=1e-10)
    np.testing.assert_allclose(np.abs(vt), np.abs(want_vt), atol=1e-10)
    np.testing.assert_allclose((u * s[:, None, :]) @ vt, a, atol=1e-12)
    assert uf.shape == (2, m, m) and vtf.shape == (2, n, n)
    np.testing.assert_allclose(uf @ np.swapaxes(uf, -1, -2), np.broadcast_to(np.eye(m), (2, m, m)), atol=1e-12)
    np.testing.assert_allclose(pinv, np.linalg.pinv(a), atol=1e-12)
    want_x, want_res, want_rank, _ = np.linalg.lstsq(a[0], b)
    np.testing.assert_allclose(x, want_x, atol=1e-12)
    assert rank == want_rank and rank.dtype == np.int64
    if want_res.size:  # (numpy gives residuals only for a full-rank tall a)
        np.testing.assert_allclose(res, want_res, rtol=1e-10)
    ref = flowml.loads(src, backend="reference").f(a, b)
    for i in (0, 2, 3, 4):  # the vectors' signs are the same on every backend
        np.testing.assert_allclose(got[i], ref[i], atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS + ["opencl"])
@pytest.mark.parametrize("shape", [(5, 3), (3, 5), (4, 4)])
def test_qr_and_cho_solve_match_numpy_and_scipy(backend, shape):
    m, n = shape
    src = (f"input a : f64[B, {m}, {n}]\ninput c : f64[{m}, {m}]\ninput b : f64[{m}, 2]\n"
           "fn f(a, c, b) -> q, r, qc, rc, qr(a, \"r\"), cho_solve((c, true), b), cho_solve(c.T, b, lower=false) {\n"
           "  q, r = qr(a)\n  qc, rc = qr(a, \"complete\")\n}\n")
    rng = np.random.default_rng(9)
    a, b = rng.normal(size=(2, m, n)), rng.normal(size=(m, 2))
    spd_a = spd(rng, m, m)
    c = np.linalg.cholesky(spd_a)
    q, r, qc, rc, r_only, x1, x2 = flowml.loads(src, backend=backend).f(a, c, b)
    for got, want in zip((q, r, qc, rc, r_only), (*np.linalg.qr(a), *np.linalg.qr(a, "complete"), np.linalg.qr(a)[1])):
        np.testing.assert_allclose(got, want, atol=1e-12)
    for x in (x1, x2):
        np.testing.assert_allclose(x, np.linalg.solve(spd_a, b), rtol=1e-10)


def test_qr_derivative_needs_a_tall_matrix():
    flowml.reset_default_graph()
    x = flowml.tensor("x", "f64[2, 3]")
    with pytest.raises(flowml.FlowError, match="m >= n"):
        flowml.grad(flowml.sum(flowml.qr(x)[1]), x)


def test_svd_of_full_matrices_has_no_derivative():
    flowml.reset_default_graph()
    x = flowml.tensor("x", "f64[3, 2]")
    with pytest.raises(flowml.FlowError, match="full_matrices=false"):
        flowml.grad(flowml.sum(flowml.svd(x)[0]), x)
    (g,) = [flowml.grad(flowml.sum(flowml.svd(x)[1]), x)]  # the values' derivative is defined
    assert g.type.shape == (3, 2)


NORMS = [(None, None), (None, -1), (1, 0), ("inf", 1), ("-inf", 2), (0, 2), (3.5, 1), ("fro", (1, 2)),
         (1, (1, 2)), (-1, (2, 1)), ("inf", (0, 2)), ("-inf", (1, 2)), (2, (1, 2)), (2, (2, 0)), (-2, (1, 2)),
         ("nuc", (0, 1))]


@pytest.mark.parametrize("backend", BACKENDS)
def test_norm_matches_numpy_for_every_ord(backend):
    flowml.reset_default_graph()
    x = flowml.tensor("x", "f64[3, 4, 5]")
    outs = [flowml.norm(x, ord=o, axis=a) for o, a in NORMS] + [flowml.norm(x, 2, (1, 2), keepdims=True)]
    f = flowml.function([x], outs, backend=backend)
    value = np.random.default_rng(6).normal(size=(3, 4, 5))
    ords = [float(o) if isinstance(o, str) and "inf" in o else o for o, _ in NORMS]
    want = [np.linalg.norm(value, ord=o, axis=a) for o, (_, a) in zip(ords, NORMS)]
    for i, (got, w) in enumerate(zip(f(value), want + [np.linalg.norm(value, 2, (1, 2), keepdims=True)])):
        np.testing.assert_allclose(got, w, rtol=1e-10, err_msg=f"norm #{i}")
    big = flowml.function([x], flowml.norm(x * 1e200), backend=backend)(value)
    np.testing.assert_allclose(big, np.linalg.norm(value) * 1e200, rtol=1e-12)  # (no overflow)


def test_norm_refuses_what_it_cannot_do():
    flowml.reset_default_graph()
    x = flowml.tensor("x", "f64[3, 4]")
    with pytest.raises(FlowTypeError, match="needs min"):
        flowml.norm(flowml.tensor("y", "f64[N, M]"), "nuc")
    with pytest.raises(FlowTypeError, match="is a matrix norm"):
        flowml.norm(x, "fro", axis=0)
    with pytest.raises(FlowTypeError, match="ord must be"):
        flowml.norm(x, "max")


# ---------------------------------------------------------------- stability rewrites


def test_log_det_becomes_slogdet_and_stays_finite():
    model = flowml.loads("input a : f64[N, N]\nfn f(a) -> log(det(a)), log(abs(det(a)))\n")
    assert "det " not in model.f.ir().replace("slogdet", "")
    big = 10 * np.eye(400)  # det = 1e400 overflows
    logdet, logabs = model.f(big)
    np.testing.assert_allclose([logdet, logabs], [400 * np.log(10)] * 2)
    flip = np.diag([-1.0, 2.0])
    logdet, logabs = model.f(flip)
    assert np.isnan(logdet) and np.isclose(logabs, np.log(2))  # (log of a negative det is nan, as naively)
    with np.errstate(divide="ignore"):
        assert model.f(np.zeros((2, 2)))[0] == -np.inf


def test_inv_times_b_becomes_solve():
    model = flowml.loads("input a : f64[N, N]\ninput b : f64[N, K]\nfn f(a, b) -> inv(a) @ b\n")
    ir = model.f.ir()
    assert "solve" in ir and "inv" not in ir, ir
    rng = np.random.default_rng(4)
    a, b = well_conditioned(rng, 5, 5), rng.normal(size=(5, 2))
    np.testing.assert_allclose(model.f(a, b), np.linalg.solve(a, b))
