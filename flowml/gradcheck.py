"""Checking symbolic derivatives against central finite differences (Theano's verify_grad).

Values are perturbed in place in the graph (the reference evaluator's `overrides`), so any node
— an input, a param or an intermediate value — can be the variable of a check.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .backends.reference import evaluate
from .errors import FlowError, FlowGradError
from .ir import lib as L
from .ir.graph import Graph
from .ir.lib import Var
from .ir.types import TensorType, dtype_of

MAX_ENTRIES = 400  # above this many entries, check along random directions instead of per entry


@dataclass
class CheckRow:
    expression: str
    max_abs: float
    max_rel: float
    worst: str
    passed: bool


@dataclass
class GradCheckReport:
    rows: list[CheckRow] = field(default_factory=list)
    scale: float = 1.0  # the scale of the random float inputs the check used

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rows)

    @property
    def max_abs(self) -> float:
        return max((r.max_abs for r in self.rows), default=0.0)

    @property
    def max_rel(self) -> float:
        return max((r.max_rel for r in self.rows), default=0.0)

    def __str__(self) -> str:
        lines = [f"{'expression':40} {'max abs err':>12} {'max rel err':>12}  result"]
        for r in self.rows:
            lines.append(f"{r.expression[:40]:40} {r.max_abs:12.3e} {r.max_rel:12.3e}  "
                         f"{'pass' if r.passed else 'FAIL (worst: ' + r.worst + ')'}")
        return "\n".join(lines)


class GradientMismatch(FlowGradError):
    """verify_grad found a derivative that disagrees with finite differences."""

    def __init__(self, report: GradCheckReport):
        super().__init__("gradient check failed:\n" + str(report))
        self.report = report


def _tolerances(dtype, eps, abs_tol, rel_tol):
    f32 = np.dtype(dtype) == np.float32
    return (eps or (1e-3 if f32 else 1e-6), abs_tol or (1e-2 if f32 else 1e-6), rel_tol or (1e-2 if f32 else 1e-5))


def compare(label: str, analytic, numeric, abs_tol: float, rel_tol: float, names=None) -> CheckRow:
    a = np.asarray(analytic, dtype=np.float64).ravel()
    n = np.asarray(numeric, dtype=np.float64).ravel()
    abs_err = np.abs(a - n)
    rel_err = abs_err / np.maximum(np.abs(a) + np.abs(n), 1e-300)
    ok = (abs_err <= abs_tol) | (rel_err <= rel_tol)
    ok &= np.isfinite(a) == np.isfinite(n)
    if a.size == 0:
        return CheckRow(label, 0.0, 0.0, "", True)
    # The worst entry: a finite/non-finite mismatch (or NaN error), else the one furthest from
    # passing (its error over the tolerance; > 1 exactly when the entry fails). Adding 1e300 to
    # failing entries, as before, rounded their errors away and named the first failure.
    with np.errstate(invalid="ignore", divide="ignore"):
        badness = np.minimum(abs_err / abs_tol if abs_tol else np.where(abs_err > 0, np.inf, 0.0),
                             rel_err / rel_tol if rel_tol else np.where(rel_err > 0, np.inf, 0.0))
    badness = np.where((np.isfinite(a) != np.isfinite(n)) | np.isnan(badness), np.inf, badness)
    k = int(np.argmax(np.where(ok, np.minimum(badness, 1.0), badness)))
    where = names[k] if names is not None else f"entry {k}"
    worst = f"{where}: symbolic {a[k]:.6g}, numeric {n[k]:.6g}"
    return CheckRow(label, float(abs_err.max()), float(rel_err.max()), worst, bool(ok.all()))


class Evaluator:
    """Evaluates graph values at a point, with some node values overridden."""

    def __init__(self, graph: Graph, point: dict[int, np.ndarray], env: dict[str, int]):
        self.graph, self.point, self.env = graph, dict(point), env

    def __call__(self, targets: list[int], changes: dict[int, np.ndarray] | None = None) -> list[np.ndarray]:
        overrides = dict(self.point)
        overrides.update(changes or {})
        values = evaluate(self.graph, targets, {}, {}, dict(self.env), overrides=overrides)
        return [np.asarray(values[t]) for t in targets]


def _directions(x: np.ndarray, rng) -> list[tuple[str, np.ndarray]]:
    """Unit perturbations per entry, or random unit directions for large values."""
    if x.size <= MAX_ENTRIES:
        out = []
        for j in range(x.size):
            d = np.zeros(x.size)
            d[j] = 1
            index = tuple(int(i) for i in np.unravel_index(j, x.shape)) if x.ndim else ()
            out.append((f"entry {list(index)}", d.reshape(x.shape)))
        return out
    return [(f"random direction {i}", rng.standard_normal(x.shape)) for i in range(8)]


def numeric_directional(ev: Evaluator, target: int, x: int, d: np.ndarray, eps: float) -> np.ndarray:
    """(f(x + eps d) - f(x - eps d)) / 2 eps for the value of node `target` as a function of node `x`."""
    x0 = ev.point[x]
    dt = x0.dtype
    (plus,) = ev([target], {x: (x0 + eps * d).astype(dt)})
    (minus,) = ev([target], {x: (x0 - eps * d).astype(dt)})
    with np.errstate(all="ignore"):  # a NaN difference is reported as a failure, not a warning
        return (plus.astype(np.float64) - minus.astype(np.float64)) / (2 * eps)


def check_gradient(ev: Evaluator, cost: int, wrt: list[int], grads: list[int], labels: list[str],
                   rng, eps, abs_tol, rel_tol) -> list[CheckRow]:
    analytic = ev(grads)
    rows = []
    for w, g, a, label in zip(wrt, grads, analytic, labels):
        names, sym, num = [], [], []
        for name, d in _directions(ev.point[w], rng):
            names.append(name)
            sym.append(float(np.sum(a * d)))
            num.append(float(numeric_directional(ev, cost, w, d, eps)))
        rows.append(compare(label, sym, num, abs_tol, rel_tol, names))
    return rows


def verify_grad(fn, point, n_tests: int = 2, rng=None, eps=None, abs_tol=None, rel_tol=None,
                raise_error: bool = True, ops=None) -> GradCheckReport:
    """Check the gradient of `fn` at `point` (Theano's verify_grad).

    `fn` is a Python function of Vars (one per array in `point`, a list) returning a Var; or .flow
    source text (then `point` is a dict of input — and optionally param — values, and `fn=` picks
    the entry function via `fn_name`). The output is projected on a random tensor (so any output
    shape works) and its gradient with respect to every float argument is compared entry by entry
    with central differences. Raises `GradientMismatch` (or returns the report) on failure.
    `ops`: the wrapped ops .flow source may call (as for `flowml.loads`)."""
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    graph, y, wrt, values, env = _setup(fn, point, ops)
    dtype = np.result_type(*(values[w.id].dtype for w in wrt)) if wrt else np.float64
    eps, abs_tol, rel_tol = _tolerances(dtype, eps, abs_tol, rel_tol)
    report = GradCheckReport()
    for test in range(n_tests):
        r = rng.standard_normal(tuple(y.type.concrete_shape(env)) if y.ndim else ())
        r_var = L.constant(r.astype(y.dtype), graph)
        cost = L.sum(y * r_var)
        from .passes.grad import grad
        grads = grad(cost, *wrt, disconnected="zero")
        ev = Evaluator(graph, values, env)
        labels = [f"d/d {graph.name(w.id) or f'arg{i}'} (projection {test})" for i, w in enumerate(wrt)]
        report.rows.extend(check_gradient(ev, cost.id, [w.id for w in wrt], [g.id for g in grads], labels,
                                          rng, eps, abs_tol, rel_tol))
    if raise_error and not report.passed:
        raise GradientMismatch(report)
    return report


def _setup(fn, point, ops=None):
    if isinstance(fn, (str, bytes)):
        return _setup_source(fn, point, ops=ops)
    if not callable(fn):
        raise FlowError("verify_grad takes a Python function of Vars or .flow source text")
    arrays = [np.asarray(p) for p in (point if isinstance(point, (list, tuple)) else [point])]
    graph = Graph()
    xs, values = [], {}
    for i, a in enumerate(arrays):
        if a.dtype.kind != "f":
            a = a.astype(np.float64)
        x = L.input(graph, f"x{i}", TensorType(dtype_of(a.dtype), a.shape))
        xs.append(x)
        values[x.id] = a
    y = fn(*xs)
    if not isinstance(y, Var):
        raise FlowError("verify_grad: the function must return one flowml value")
    return graph, y, xs, values, {}


def _setup_source(source, point, fn_name=None, ops=None):
    from .api import parse_program
    from .program import Model, coerce_array
    program = parse_program(source, "<verify_grad>", ops)
    model = Model(program, backend="reference")
    fns = list(program.functions.values())
    if len(fns) != 1 and fn_name is None:
        raise FlowError("verify_grad: the source must have exactly one fn")
    fn = fns[0]
    if len(fn.outputs) != 1:
        raise FlowError(f"verify_grad: fn {fn.name} must have exactly one output")
    y = fn.outputs[0][1]
    env: dict[str, int] = {}
    values: dict[int, np.ndarray] = {}
    wrt = []
    point = dict(point)
    for name in fn.inputs:
        decl = program.inputs[name]
        values[decl.var.id] = coerce_array(point.pop(name), decl.var.type, f"input '{name}'", decl.loc, env)
        if decl.var.dtype.kind == "f":
            wrt.append(decl.var)
    used = program.graph.ancestors([y.id])
    for name, decl in program.params.items():
        value = point.pop(name, None)
        values[decl.var.id] = model.params[name] if value is None else np.asarray(value, dtype=decl.var.dtype)
        if decl.var.id in used and decl.var.dtype.kind == "f":
            wrt.append(decl.var)
    if point:
        raise FlowError(f"verify_grad: unknown names in the point: {', '.join(point)}")
    return program.graph, y, wrt, values, env


def check_model(program, fn_name: str | None = None, dims: dict[str, int] | None = None,
                seed: int = 0) -> GradCheckReport:
    """Check every derivative of a model (grad, rop, lop, jacobian, hessian, hessian_vector), or
    those a given fn uses, at a random point: inputs drawn at random (symbolic dims from `dims`,
    default 3), params at their initial values."""
    from .program import Model
    from .ir.types import Sym
    model = Model(program, backend="reference", seed=seed)
    rng = np.random.default_rng(seed)
    dims = dict(dims or {})
    graph = program.graph
    derivs = list(program.derivatives)
    if fn_name is not None:
        fn = program.functions[fn_name]
        used = graph.ancestors([v.id for _, v in fn.outputs] + [u.value.id for u in fn.updates])
        derivs = [d for d in derivs if any(r.id in used for r in d.results)]
    env: dict[str, int] = {}

    def draw(scale: float) -> dict[int, np.ndarray]:
        point: dict[int, np.ndarray] = {}
        for name, decl in program.inputs.items():
            t = decl.var.type
            for s in t.symbols():
                env.setdefault(s, dims.get(s, 3))
            shape = tuple(Sym(d.names, d.coeff).resolve(env) if isinstance(d, Sym) else d for d in t.shape)
            if t.dtype.kind == "f" and name not in dims:
                point[decl.var.id] = (scale * rng.standard_normal(shape)).astype(t.dtype)
            else:
                point[decl.var.id] = rng.integers(0, dims.get(name, 2), size=shape).astype(t.dtype)
        for name, decl in program.params.items():
            point[decl.var.id] = model.params[name]
        return point

    # Finite differences mean nothing where the model's values are not finite (a saturated
    # log(sigmoid), say): then draw the float inputs again, closer to zero.
    targets = [v.id for d in derivs for v in d.ys + d.results]
    for scale in (1.0, 0.1, 0.01):
        point = draw(scale)
        ev = Evaluator(graph, point, env)
        with np.errstate(all="ignore"):
            if all(np.all(np.isfinite(v)) for v in ev(targets)):
                break
    report = GradCheckReport()
    report.scale = scale
    for d in derivs:
        # Values the derivative is taken with respect to may be intermediate: fix them at
        # their computed values so they can be perturbed.
        base = ev([x.id for x in d.xs])
        local = Evaluator(graph, {**point, **{x.id: v for x, v in zip(d.xs, base)}}, env)
        dtype = np.result_type(*(b.dtype for b in base))
        tols = _tolerances(dtype, None, None, None)
        label = f"{d.text} ({d.loc.line}:{d.loc.col})" if d.loc else d.text
        report.rows.extend(_CHECKS[d.kind](d, label, local, base, env, rng, tols))
    return report


def _check_grad(d, label, local, base, env, rng, tols):
    names = [local.graph.name(x.id) or f"arg{i}" for i, x in enumerate(d.xs)]
    return check_gradient(local, d.ys[0].id, [x.id for x in d.xs], [r.id for r in d.results],
                          [f"{label} d/d {n}" for n in names], rng, *tols)


def _check_rop(d, label, local, base, env, rng, tols):
    eps, abs_tol, rel_tol = tols
    vs = local([v.id for v in d.directions])
    rows = []
    for y, r in zip(d.ys, d.results):
        (analytic,) = local([r.id])
        plus = local([y.id], {x.id: (b + eps * v).astype(b.dtype) for x, b, v in zip(d.xs, base, vs)})[0]
        minus = local([y.id], {x.id: (b - eps * v).astype(b.dtype) for x, b, v in zip(d.xs, base, vs)})[0]
        numeric = (plus.astype(np.float64) - minus.astype(np.float64)) / (2 * eps)
        rows.append(compare(f"{label} rop", analytic, numeric, abs_tol, rel_tol))
    return rows


def _check_lop(d, label, local, base, env, rng, tols):
    # lop is the gradient of Σ <u, y> with u held fixed (u may itself depend on x)
    graph = local.graph
    us = local([u.id for u in d.directions])
    u_nodes = [L.input(graph, f"__u{k}", y.type) for k, y in enumerate(d.ys)]
    s = _weighted_sum(d.ys, u_nodes)
    local = Evaluator(graph, {**local.point, **{u.id: v for u, v in zip(u_nodes, us)}}, env)
    names = [graph.name(x.id) or f"arg{i}" for i, x in enumerate(d.xs)]
    return check_gradient(local, s.id, [x.id for x in d.xs], [r.id for r in d.results],
                          [f"{label} lop d/d {n}" for n in names], rng, *tols)


def _directional_rows(label, local, f, x, analytic_along, directions, eps, abs_tol, rel_tol):
    """One row comparing a derivative of node `f` by node `x` along each direction with central
    differences of `f`: `analytic_along(d)` is the symbolic value along `d`."""
    names, sym, num = [], [], []
    for name, d in directions:
        names.append(name)
        sym.append(np.asarray(analytic_along(d), dtype=np.float64).ravel())
        num.append(numeric_directional(local, f, x, d, eps).ravel())
    # name every entry of every direction, so the worst one is reported precisely
    entry_names = [n if a.size == 1 else f"{n}, output entry {k}" for n, a in zip(names, sym) for k in range(a.size)]
    return compare(label, np.concatenate(sym), np.concatenate(num), abs_tol, rel_tol, entry_names)


def _check_jacobian(d, label, local, base, env, rng, tols):
    """J·d for each direction d of x (every entry, or random directions), against central
    differences of y along d."""
    (jac,) = local([d.results[0].id])
    (x,), (y,) = d.xs, d.ys
    axes = base[0].ndim
    along = lambda u: np.tensordot(jac, u, axes=axes) if axes else jac * u  # noqa: E731
    return [_directional_rows(f"{label} jacobian", local, y.id, x.id, along, _directions(base[0], rng), *tols)]


def _gradient_of(d):
    """The gradient of a hessian's cost, built anew for the check (and checked itself)."""
    from .passes.grad import grad
    (g,) = grad(d.ys[0], d.xs[0], disconnected="zero")
    return g


def _check_hessian(d, label, local, base, env, rng, tols):
    """H·d for each direction d of x against central differences of the cost's gradient along d,
    and that gradient against central differences of the cost: a second derivative is checked
    through the first, each against finite differences."""
    g = _gradient_of(d)
    name = local.graph.name(d.xs[0].id) or "x"
    rows = check_gradient(local, d.ys[0].id, [d.xs[0].id], [g.id], [f"{label} gradient d/d {name}"], rng, *tols)
    (hess,) = local([d.results[0].id])
    axes = base[0].ndim
    along = lambda u: np.tensordot(hess, u, axes=axes) if axes else hess * u  # noqa: E731
    rows.append(_directional_rows(f"{label} hessian", local, g.id, d.xs[0].id, along,
                                  _directions(base[0], rng), *tols))
    return rows


def _check_hessian_vector(d, label, local, base, env, rng, tols):
    """H·v against central differences of the cost's gradient along v (v held at its value at
    the point, as rop's direction is), and that gradient against differences of the cost."""
    g = _gradient_of(d)
    name = local.graph.name(d.xs[0].id) or "x"
    rows = check_gradient(local, d.ys[0].id, [d.xs[0].id], [g.id], [f"{label} gradient d/d {name}"], rng, *tols)
    (v,) = d.directions
    v = local([v.id])[0] if isinstance(v, Var) else np.full(base[0].shape, v, dtype=base[0].dtype)
    (hv,) = local([d.results[0].id])
    rows.append(_directional_rows(f"{label} hessian_vector", local, g.id, d.xs[0].id, lambda u: hv,
                                  [("v", np.broadcast_to(v, base[0].shape).astype(np.float64))], *tols))
    return rows


_CHECKS = {"grad": _check_grad, "rop": _check_rop, "lop": _check_lop, "jacobian": _check_jacobian,
           "hessian": _check_hessian, "hessian_vector": _check_hessian_vector}


def _weighted_sum(ys, us):
    total = None
    for y, u in zip(ys, us):
        term = L.sum(y * u)
        total = term if total is None else total + term
    return total
