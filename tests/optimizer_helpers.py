"""Helpers for the optimizer tests (tests/test_optimizer.py, test_rules.py, test_fusion.py).

Graphs are built in private `Graph`s with `flowml.ir.lib` (imported as `L`), optimized with
`flowml.passes.pipeline.optimize` (or one rule with `rewrite.run_phase`), and evaluated before
and after with the reference backend's `evaluate` — the ground truth every rewrite must keep.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from flowml.backends.reference import evaluate
from flowml.ir import lib as L
from flowml.ir.graph import Graph
from flowml.ir.lib import Var
from flowml.ir.types import TensorType, dtype_of, sym
from flowml.passes import canonicalize, specialize, stabilize
from flowml.passes.grad import grad
from flowml.passes.pipeline import optimize
from flowml.passes.rewrite import Rule, run_phase

# every rule of the rewrite phases, by the name stats count it under
ALL_RULES: dict[str, tuple[str, Rule]] = {}
for _phase, _module in (("canonicalize", canonicalize), ("stabilize", stabilize), ("specialize", specialize)):
    for _r in _module.RULES:
        ALL_RULES[_r.name] = (_phase, _r)


def T(dtype: str, *shape) -> TensorType:
    """T("f64", 3, "N"): a tensor type (strings are symbolic dims)."""
    return TensorType(dtype_of(dtype), tuple(sym(d) if isinstance(d, str) else d for d in shape))


def typed(a) -> TensorType:
    a = np.asarray(a)
    return TensorType(np.dtype(a.dtype), tuple(a.shape))


def inputs(graph: Graph, arrays) -> list[Var]:
    """One input per array, named x0, x1, ..., typed like the array."""
    return [L.input(graph, f"x{i}", typed(a)) for i, a in enumerate(arrays)]


def feed_of(arrays) -> dict[str, np.ndarray]:
    return {f"x{i}": np.asarray(a) for i, a in enumerate(arrays)}


def values(graph: Graph, roots: list[int], feed: dict, params: dict | None = None,
           env: dict | None = None) -> list[np.ndarray]:
    out = evaluate(graph, list(roots), dict(feed), dict(params or {}), dict(env or {}))
    return [np.asarray(out[r]) for r in roots]


def rule(name: str) -> Rule:
    return ALL_RULES[name][1]


def apply_rule(name: str, graph: Graph, roots: list[int]) -> tuple[Graph, list[int], int]:
    """The graph rewritten with this one rule to a fixpoint; how often it fired."""
    stats: Counter = Counter()
    new, new_roots = run_phase(graph, roots, [rule(name)], stats)
    return new, new_roots, stats[name]


def ops_of(graph: Graph, roots: list[int]) -> Counter:
    """Op name -> count over what the roots need."""
    return Counter(graph.op(n).name for n in graph.ancestors(roots))


def fused_ops(graph: Graph, roots: list[int]) -> Counter:
    """Op name -> count, looking inside fused nodes' bodies too."""
    out: Counter = Counter()
    for n in graph.ancestors(roots):
        if graph.op(n).name == "fused":
            out.update(ins.op for ins in graph.attrs(n)["body"])
            if graph.attrs(n)["reduce"]:
                out[graph.attrs(n)["reduce"][0]] += 1
        else:
            out[graph.op(n).name] += 1
    return out


def with_grad(fn, arrays):
    """(graph, [y, d sum(y)/d x0, ...]) for `fn` on inputs typed like `arrays` (y may be any
    shape: the gradient of its sum is its elementwise derivative for an elementwise fn)."""
    graph = Graph()
    xs = inputs(graph, arrays)
    y = fn(*xs)
    wrt = [x for x in xs if x.dtype.kind == "f"]
    grads = grad(L.sum(y), *wrt) if wrt else []
    return graph, [y.id] + [g.id for g in grads]


def optimized_values(fn, arrays, level: int = 1, after: str | None = None) -> list[np.ndarray]:
    """The value of fn and of the gradient of its sum, computed by the optimized graph."""
    graph, roots = with_grad(fn, arrays)
    opt = optimize(graph, roots, [], level=level, after=after)
    return values(opt.graph, opt.outputs, feed_of(arrays))


def assert_same_values(before, after, rtol=1e-12, atol=1e-300, what=""):
    """Equal where finite (to rtol), and the same inf/NaN pattern."""
    for i, (a, b) in enumerate(zip(before, after)):
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape and a.dtype == b.dtype, (what, i, a.shape, b.shape, a.dtype, b.dtype)
        if a.dtype.kind != "f":
            np.testing.assert_array_equal(a, b, err_msg=f"{what} output {i}")
            continue
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=f"{what} output {i}: NaN pattern")
        finite = np.isfinite(a)
        np.testing.assert_array_equal(a[~finite & ~np.isnan(a)], b[~finite & ~np.isnan(a)],
                                      err_msg=f"{what} output {i}: infinities")
        np.testing.assert_allclose(b[finite], a[finite], rtol=rtol, atol=atol, err_msg=f"{what} output {i}")


# ---------------------------------------------------------------- random graphs
#
# Expressions drawn from a pool written the way users write them — with the left sides of the
# rules (log(1 + x), 1 / (1 + exp(-x)), exp(x) / sum(exp(x)), x ** 2, transpose(transpose(x)),
# a repeated subexpression, ...) — on values kept in a range where the naive formulas are still
# accurate, so the graph before and after every phase must agree to rounding.


def _axis(a: Var, k: int):
    return (k % a.ndim,) if a.ndim else ()


def _squash(a: Var, scale: float = 3.0) -> Var:
    return L.tanh(a) * scale


def _softmax_naive(a: Var, k: int) -> Var:
    if not a.ndim:
        return a
    e = L.exp(_squash(a))
    return e / L.sum(e, axis=_axis(a, k), keepdims=True)


def _unit(a: Var) -> Var:
    u = 1 + a * a
    return L.sqrt(u * u)


POOL = {
    "exp_tanh": lambda a, b, k: L.exp(L.tanh(a)),
    "log1p_sq": lambda a, b, k: L.log(1 + a * a),
    "softplus": lambda a, b, k: L.log(1 + L.exp(_squash(a))),
    "sigmoid": lambda a, b, k: 1 / (1 + L.exp(-_squash(a))),
    "sigmoid_ratio": lambda a, b, k: L.exp(_squash(a)) / (1 + L.exp(_squash(a))),
    "log_sigmoid": lambda a, b, k: L.log(L.sigmoid(_squash(a, 5.0))),
    "log_one_minus_sigmoid": lambda a, b, k: L.log(1 - L.sigmoid(_squash(a, 5.0))),
    "expm1": lambda a, b, k: L.exp(L.tanh(a)) - 1,
    "abs_of_sqrt": lambda a, b, k: _unit(a),
    "square": lambda a, b, k: L.tanh(a) ** 2,
    "sqrt_pow": lambda a, b, k: (1 + a * a) ** 0.5,
    "identities": lambda a, b, k: -(-((a * 1 + 0) / 1 - 0)) * -1.0,
    "div4": lambda a, b, k: a / 4.0,
    "erfc": lambda a, b, k: 1 - L.erf(a),
    "log_erfc": lambda a, b, k: L.log(1 - L.erf(_squash(a))),
    "log_exp": lambda a, b, k: L.log(L.exp(L.tanh(a))),
    "add": lambda a, b, k: a + b,
    "sub_neg": lambda a, b, k: a - (-b),
    "mul": lambda a, b, k: L.tanh(a) * b,
    "div": lambda a, b, k: a / (1 + b * b),
    # (against a constant: a tie between two values the phases round differently could flip)
    "where": lambda a, b, k: L.where(a > 0.3, a, L.sin(b)),
    "cse": lambda a, b, k: L.tanh(a * b) + L.tanh(a * b),
    "sum": lambda a, b, k: L.sum(a, axis=_axis(a, k), keepdims=True),
    "mean": lambda a, b, k: L.mean(a * b, axis=_axis(a, k), keepdims=True),
    "logsumexp": lambda a, b, k: L.log(L.sum(L.exp(_squash(a)), axis=_axis(a, k), keepdims=True)),
    "softmax": lambda a, b, k: _softmax_naive(a, k),
    "transpose2": lambda a, b, k: L.transpose(L.transpose(L.sin(a))),
    "reshape2": lambda a, b, k: L.reshape(L.reshape(L.cos(a), (-1,)), a.type.shape) if a.ndim else L.cos(a),
    "sum_of_broadcast": lambda a, b, k: L.sum(L.broadcast_to(a, (3,) + a.type.shape), axis=0),
    "folded": lambda a, b, k: a + L.constant(2.0, a.graph) * L.constant(3.0, a.graph),
}
BINARY = {"add", "sub_neg", "mul", "div", "where", "cse", "mean"}


def random_program(draw, st, hnp, max_ops: int = 8):
    """(arrays, steps): inputs and a list of (pool op, operand picks) — draw with hypothesis."""
    n_inputs = draw(st.integers(1, 3))
    shapes = draw(hnp.mutually_broadcastable_shapes(num_shapes=n_inputs, min_dims=0, max_dims=2,
                                                    min_side=1, max_side=3))
    arrays = [draw(hnp.arrays(np.float64, s, elements=st.floats(-2, 2))) for s in shapes.input_shapes]
    steps = draw(st.lists(st.tuples(st.sampled_from(sorted(POOL)), st.integers(0, 99), st.integers(0, 99)),
                          min_size=1, max_size=max_ops))
    return arrays, steps


def build_program(arrays, steps, with_grads: bool = True):
    """(graph, roots): two outputs of the drawn expression (the last value and an earlier one, so
    fusion must materialize a shared value) and the gradient of both w.r.t. every input."""
    graph = Graph()
    xs = inputs(graph, arrays)
    vals = list(xs)
    for name, i, j in steps:
        a = vals[-1 - (i % len(vals))] if i % 3 else vals[-1]
        b = vals[j % len(vals)] if name in BINARY else None
        vals.append(POOL[name](a, b, j))
    last, other = vals[-1], vals[len(xs) + steps[0][1] % len(steps)]
    roots = [last.id, other.id]
    if with_grads:
        cost = L.sum(last * last) + L.sum(L.sin(other))
        roots += [g.id for g in grad(cost, *xs, disconnected="zero")]
    return graph, roots
