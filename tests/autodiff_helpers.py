"""Helpers for tests/test_autodiff.py: graphs built in a private `Graph`, evaluated with the
reference backend, and derivatives checked against high-order central differences.

A `Case` is a function of Vars plus the arrays to call it on; `build(case)` gives a fresh graph
with one input per array (named x0, x1, ...), `values(graph, vars, feed)` evaluates Vars, and
`fd_jvp` differentiates numerically with the 5-point stencil

    f'(x)·v ≈ (-f(x+2hv) + 8 f(x+hv) - 8 f(x-hv) + f(x-2hv)) / 12h

whose truncation error is O(h⁴) — with h = 1e-3 in float64 both it and the rounding error are
around 1e-12 relative, so the derivatives can be compared to ~1e-7.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from flowml.backends.reference import evaluate
from flowml.ir import lib as L
from flowml.ir.graph import Graph
from flowml.ir.lib import Var
from flowml.ir.types import TensorType

H = 1e-3


@dataclass
class Case:
    """`fn(*vars) -> Var` on inputs typed like `arrays`; `wrt`: the indices of the arrays to
    differentiate (default: every float array)."""

    fn: Callable
    arrays: list
    wrt: list | None = None
    label: str = ""
    env: dict = field(default_factory=dict)

    def __post_init__(self):
        self.arrays = [np.asarray(a) for a in self.arrays]
        if self.wrt is None:
            self.wrt = [i for i, a in enumerate(self.arrays) if a.dtype.kind == "f"]


def typed(a) -> TensorType:
    a = np.asarray(a)
    return TensorType(np.dtype(a.dtype), tuple(a.shape))


def build(case: Case):
    """(graph, input Vars, output Var, feed) for a case."""
    graph = Graph()
    xs = [L.input(graph, f"x{i}", typed(a)) for i, a in enumerate(case.arrays)]
    y = case.fn(*xs)
    feed = {f"x{i}": a for i, a in enumerate(case.arrays)}
    return graph, xs, y, feed


def add_input(graph: Graph, name: str, like) -> Var:
    """A new input of `graph` typed like the array or Var `like`."""
    t = like.type if isinstance(like, Var) else typed(like)
    return L.input(graph, name, TensorType(t.dtype, t.shape))


def values(graph: Graph, vars, feed: dict, env: dict | None = None, params: dict | None = None):
    """The values of `vars` (a Var or a list) given input values by name."""
    single = isinstance(vars, Var)
    vs = [vars] if single else list(vars)
    out = evaluate(graph, [v.id for v in vs], dict(feed), dict(params or {}), dict(env or {}))
    res = [np.asarray(out[v.id]) for v in vs]
    return res[0] if single else res


def fd_jvp(f: Callable[[dict], np.ndarray], feed: dict, directions: dict, h: float = H) -> np.ndarray:
    """The derivative of `f(feed)` along `directions` (input name -> array), 5-point stencil."""
    def at(t):
        moved = dict(feed)
        for name, d in directions.items():
            x = feed[name]
            moved[name] = (x + t * d).astype(x.dtype)
        return np.asarray(f(moved), dtype=np.float64)
    return (-at(2 * h) + 8 * at(h) - 8 * at(-h) + at(-2 * h)) / (12 * h)


def assert_close(got, want, rtol=1e-7, atol=1e-9, what="", slack=0.0):
    """Entrywise |got - want| <= atol * scale + slack + rtol * |want|, with scale the size of
    `want` (`slack`: an entrywise bound of the error of `want` itself)."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    scale = max(1.0, float(np.max(np.abs(want))) if want.size else 1.0)
    if np.ndim(slack) == 0:
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * scale + slack, err_msg=what)
        return
    bound = atol * scale + slack + rtol * np.abs(want)
    bad = ~(np.abs(got - want) <= bound) & ~(np.isnan(got) & np.isnan(want))
    assert not bad.any(), (f"{what}: {int(bad.sum())} of {got.size} differ: got {got[bad]}, "
                           f"the differences give {want[bad]} (bound {bound[bad]})")


def assert_matches_fd(got, f, feed, directions, rtol, atol, what):
    """`got` equals the 5-point difference of `f` along `directions`, within the tolerances.

    Where it does not, the stencil's own truncation error (h⁴·f⁽⁵⁾/30, large for a polynomial of
    high degree such as a prod of many entries) is taken into account: the stencil at h/2 is
    about 16× more accurate, and |D(h) - D(h/2)| bounds its error. A wrong derivative differs
    from both by the same amount, whatever h, so it still fails."""
    want = fd_jvp(f, feed, directions)
    try:
        assert_close(got, want, rtol, atol, what)
        return
    except AssertionError:
        pass
    finer = fd_jvp(f, feed, directions, h=H / 2)
    assert_close(got, finer, rtol, atol, what, slack=np.abs(want - finer))


def rng_like(rng, a, lo=-1.0, hi=1.0):
    a = np.asarray(a)
    return rng.uniform(lo, hi, size=a.shape).astype(a.dtype)


def inner(a, b) -> float:
    return float(np.sum(np.asarray(a, dtype=np.float64) * np.asarray(b, dtype=np.float64)))


def inner_scale(a, b) -> float:
    """Σ|a·b|: the size against which a cancelling inner product is judged."""
    return float(np.sum(np.abs(np.asarray(a, dtype=np.float64) * np.asarray(b, dtype=np.float64))))


def directions(case: Case, rng):
    """Random directions for the differentiated inputs: {input name: array}."""
    return {f"x{i}": rng_like(rng, case.arrays[i]) for i in case.wrt}


def check_jvp(case: Case, seed=0, rtol=1e-7, atol=1e-9):
    """rop(y, xs, vs) equals the 5-point central difference of y along vs."""
    from flowml.passes.rop import rop
    rng = np.random.default_rng(seed)
    graph, xs, y, feed = build(case)
    dirs = directions(case, rng)
    v_vars = [add_input(graph, f"v{i}", case.arrays[i]) for i in case.wrt]
    jv = rop(y, [xs[i] for i in case.wrt], v_vars)
    assert jv.type.shape == y.type.shape and jv.dtype == y.dtype, (jv.type, y.type)
    feed_v = {**feed, **{f"v{i}": dirs[f"x{i}"] for i in case.wrt}}
    got = values(graph, jv, feed_v, case.env)
    assert_matches_fd(got, lambda fd: values(graph, y, fd, case.env), feed, dirs, rtol, atol, f"J·v of {case.label}")
    return got


def check_dot_product(case: Case, seed=0, rtol=1e-10):
    """⟨u, J·v⟩ = ⟨Jᵀ·u, v⟩ with J·v from rop and Jᵀ·u from lop (relative to Σ|terms|)."""
    from flowml.passes.rop import lop, rop
    rng = np.random.default_rng(seed + 1000)
    graph, xs, y, feed = build(case)
    wrt = [xs[i] for i in case.wrt]
    v_vars = [add_input(graph, f"v{i}", case.arrays[i]) for i in case.wrt]
    u_var = add_input(graph, "u", y)
    jv = rop(y, wrt, v_vars)
    jtu = lop(y, wrt, u_var)
    assert isinstance(jtu, list) and len(jtu) == len(wrt)
    for g, x in zip(jtu, wrt):
        assert g.type.shape == x.type.shape and g.dtype == x.dtype, (g.type, x.type)
    # directions exactly representable in f32, so that an f32 <-> f64 cast on the way is exact
    vs = {f"v{i}": _f32_exact(rng_like(rng, case.arrays[i])) for i in case.wrt}
    yv = values(graph, y, feed, case.env)
    u = _f32_exact(rng.uniform(-1, 1, size=yv.shape).astype(yv.dtype))
    got = values(graph, [jv] + jtu, {**feed, **vs, "u": u}, case.env)
    jv_val, jtu_vals = got[0], got[1:]
    lhs = inner(u, jv_val)
    rhs = sum(inner(g, vs[f"v{i}"]) for g, i in zip(jtu_vals, case.wrt))
    scale = max(inner_scale(u, jv_val), sum(inner_scale(g, vs[f"v{i}"]) for g, i in zip(jtu_vals, case.wrt)),
                1e-300)
    assert abs(lhs - rhs) <= rtol * scale, f"{case.label}: <u, Jv> = {lhs!r}, <J^T u, v> = {rhs!r}"
    return lhs, rhs


def _f32_exact(a):
    return a.astype(np.float32).astype(a.dtype)


def check_lop(case: Case, seed=0, rtol=1e-7, atol=1e-9):
    """lop(y, xs, u) projected on random directions d equals the derivative of <u, y> along d."""
    from flowml.passes.rop import lop
    rng = np.random.default_rng(seed + 2000)
    graph, xs, y, feed = build(case)
    wrt = [xs[i] for i in case.wrt]
    u_var = add_input(graph, "u", y)
    jtu = lop(y, wrt, u_var)
    yv = values(graph, y, feed, case.env)
    u = rng.uniform(-1, 1, size=yv.shape).astype(yv.dtype)
    got = values(graph, jtu, {**feed, "u": u}, case.env)
    dirs = directions(case, rng)
    sym = sum(inner(g, dirs[f"x{i}"]) for g, i in zip(got, case.wrt))
    num = float(fd_jvp(lambda fd: inner(u, values(graph, y, fd, case.env)), feed, dirs))
    scale = max(1.0, sum(inner_scale(g, dirs[f"x{i}"]) for g, i in zip(got, case.wrt)))
    assert abs(sym - num) <= rtol * scale + atol, f"{case.label}: lop·d = {sym!r}, numeric {num!r}"


def check_grad(case: Case, seed=0, rtol=1e-7, atol=1e-9, n_dirs=2):
    """grad(sum(y * r), xs) per entry along random directions equals finite differences of the
    cost, and has each x's shape and dtype."""
    from flowml.passes.grad import grad
    rng = np.random.default_rng(seed + 3000)
    graph, xs, y, feed = build(case)
    yv = values(graph, y, feed, case.env)
    r = L.constant(rng.uniform(-1, 1, size=yv.shape).astype(yv.dtype), graph)
    cost = L.sum(y * r)
    gs = grad(cost, *[xs[i] for i in case.wrt])
    for g, i in zip(gs, case.wrt):
        assert g.type.shape == xs[i].type.shape and g.dtype == xs[i].dtype
    got = values(graph, gs, feed, case.env)
    for _ in range(n_dirs):
        dirs = directions(case, rng)
        sym = sum(inner(g, dirs[f"x{i}"]) for g, i in zip(got, case.wrt))
        num = float(fd_jvp(lambda fd: values(graph, cost, fd, case.env), feed, dirs))
        scale = max(1.0, sum(inner_scale(g, dirs[f"x{i}"]) for g, i in zip(got, case.wrt)))
        assert abs(sym - num) <= rtol * scale + atol, f"{case.label}: grad·d = {sym!r}, numeric {num!r}"
    return got


def check_hvp(case: Case, seed=0, rtol=1e-6, atol=1e-8):
    """hessian_vector(sum(y * r), x, v) for each differentiated x equals the central
    difference of the symbolic gradient along v."""
    from flowml.passes.grad import grad
    from flowml.passes.rop import hessian_vector
    rng = np.random.default_rng(seed + 4000)
    graph, xs, y, feed = build(case)
    yv = values(graph, y, feed, case.env)
    r = L.constant(rng.uniform(-1, 1, size=yv.shape).astype(yv.dtype), graph)
    cost = L.sum(y * r)
    for i in case.wrt:
        v_var = add_input(graph, f"v{i}", case.arrays[i])
        hv = hessian_vector(cost, xs[i], v_var)
        assert hv.type.shape == xs[i].type.shape
        (g,) = grad(cost, xs[i])
        v = rng_like(rng, case.arrays[i])
        got = values(graph, hv, {**feed, f"v{i}": v}, case.env)
        assert_matches_fd(got, lambda fd: values(graph, g, fd, case.env), feed, {f"x{i}": v}, rtol, atol,
                          f"H·v of {case.label} for x{i}")


def node_count(graph: Graph) -> int:
    return len(graph)
