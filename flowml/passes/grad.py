"""Reverse-mode differentiation as an IR → IR transform.

`grad(cost, *wrt)` adds the nodes computing d cost / d wrt to the cost's graph and returns them,
so a gradient is an ordinary value: it can be optimized, compiled, and differentiated again.
One backward sweep over the nodes between `wrt` and `cost` (in reverse topological order) calls
each op's VJP rule once, so shared subexpressions are differentiated once and the gradient of an
n-node graph has O(n) nodes.
"""

from __future__ import annotations

from ..errors import FlowGradError
from ..ir import lib as L
from ..ir.graph import DerivativeRecord, at
from ..ir.lib import Var
from ..ir.types import is_float

DISCONNECTED_POLICIES = ("error", "zero")


def _describe(graph, n) -> str:
    name = graph.name(n)
    op = graph.op(n).name
    if op in ("input", "param"):
        return f"{op} '{name}'"
    return f"'{name}'" if name else f"the {op} value"


def _carries_gradient(graph, n) -> bool:
    return is_float(graph.type(n).dtype)


def _flows_from(graph, wrt: list[int], limit: set[int], through_stops: bool = False,
                forward: bool = False) -> set[int]:
    """The nodes within `limit` that a derivative can reach from `wrt`: float-valued nodes whose
    op has a VJP (a JVP, `forward`), fed by such a node (ids ascend topologically, so one
    forward scan suffices). With `through_stops`, stop_gradient counts as passing (to tell a
    deliberate cut from an op that has no derivative)."""
    reach = {w for w in wrt}
    for n in sorted(limit):
        op = graph.op(n)
        passes = (op.has_jvp if forward else op.has_vjp) or (through_stops and getattr(op, "stops_gradient", False))
        if n in reach or not _carries_gradient(graph, n) or not passes:
            continue
        if any(o in reach for o in graph.operands(n)):
            reach.add(n)
    return reach


def _reach_masks(graph, wrt: list[int], limit: set[int], through_stops: bool = False,
                 forward: bool = False) -> dict[int, int]:
    """`_flows_from` for every w of `wrt` at once, in one scan: node -> a bit mask with bit i set
    when a derivative reaches the node from wrt[i] (a per-w scan is quadratic in a deep model)."""
    masks: dict[int, int] = {}
    for i, w in enumerate(wrt):
        masks[w] = masks.get(w, 0) | (1 << i)
    for n in sorted(limit):
        op = graph.op(n)
        passes = (op.has_jvp if forward else op.has_vjp) or (through_stops and getattr(op, "stops_gradient", False))
        if not passes or not _carries_gradient(graph, n):
            continue
        m = 0
        for o in graph.operands(n):
            m |= masks.get(o, 0)
        if m:
            masks[n] = masks.get(n, 0) | m
    return masks


def _no_derivative_notes(op, forward: bool) -> list[str]:
    if not op.wrapped:
        return []
    return [f"{op.name} is a wrapped op made without {'jvp' if forward else 'vjp'}=: give flowml.op one to "
            "differentiate through it"]


def _blocker(graph, w: int, cost_ancestors: set[int], reach: set[int]) -> int | None:
    """An op on a path from `w` to the cost through which no derivative passes."""
    for n in sorted(graph.descendants([w]) & cost_ancestors):
        if n not in reach and any(o in reach for o in graph.operands(n)):
            return n
    return None


def check_connected(graph, y: Var, wrt, disconnected: str, what: str = "grad") -> None:
    """Raise (policy "error") when `y` does not depend on some `w`, or only through ops that
    have no derivative; with policy "zero" such a `w` simply gets a zero derivative."""
    loc = graph.loc(y.id)
    if disconnected not in DISCONNECTED_POLICIES:
        raise FlowGradError(f"disconnected must be one of {DISCONNECTED_POLICIES}, not {disconnected!r}", loc)
    for w in wrt:
        if w.graph is not graph:
            raise FlowGradError(f"{what}: the values come from different graphs", loc)
        if not is_float(w.dtype):
            raise FlowGradError(f"cannot differentiate with respect to {_describe(graph, w.id)} of type {w.type}: "
                                "only float values have gradients", graph.loc(w.id) or loc)
    if disconnected == "zero":
        return
    y_anc = graph.ancestors([y.id])
    forward = what == "rop"
    wrt_ids = [w.id for w in wrt]
    at_y = _reach_masks(graph, wrt_ids, y_anc, forward=forward).get(y.id, 0)
    at_y_through_stops = None
    for i, w in enumerate(wrt):
        if w.id not in y_anc:
            raise FlowGradError(f"{_subject(graph, y, what)} does not depend on {_describe(graph, w.id)}; pass "
                                "disconnected=\"zero\" to get a zero derivative instead", loc)
        if at_y >> i & 1:
            continue
        if at_y_through_stops is None:
            at_y_through_stops = _reach_masks(graph, wrt_ids, y_anc, through_stops=True, forward=forward).get(y.id, 0)
        if not at_y_through_stops >> i & 1:
            reach = _flows_from(graph, [w.id], y_anc, forward=forward)
            b = _blocker(graph, w.id, y_anc, reach)
            via = f"{graph.op(b).name} ({graph.loc(b)})" if b is not None else "an op without a derivative"
            raise FlowGradError(f"{_subject(graph, y, what)} depends on {_describe(graph, w.id)} only through "
                                f"{via}, which has no derivative", loc,
                                _no_derivative_notes(graph.op(b), forward) if b is not None else None)


def _subject(graph, y: Var, what: str) -> str:
    return "the cost" if what == "grad" else f"the output of {what}"


def grad(cost: Var, *wrt: Var, disconnected: str = "error") -> list[Var]:
    """d cost / d w for each w in `wrt`, as new nodes of the cost's graph."""
    graph = cost.graph
    loc = graph.loc(cost.id)
    if cost.type.ndim != 0:
        raise FlowGradError(f"grad needs a scalar cost, but {_describe(graph, cost.id)} has type {cost.type}; "
                            "reduce it first (e.g. with sum or mean)", loc)
    if not is_float(cost.dtype):
        raise FlowGradError(f"grad needs a float cost, but {_describe(graph, cost.id)} has type {cost.type}", loc)
    if not wrt:
        raise FlowGradError("grad needs at least one value to differentiate with respect to", loc)
    with at(loc):
        seed = L.constant(1.0, graph, dtype=cost.dtype)
    return vjp([cost], list(wrt), [seed], disconnected=disconnected)


def vjp(ys: list[Var], wrt: list[Var], seeds: list[Var], disconnected: str = "error",
        what: str = "grad") -> list[Var]:
    """Σ_k seeds[k]ᵀ · d ys[k] / d w for each w in `wrt`: one reverse sweep over the graph."""
    graph = ys[0].graph
    for y in ys:
        check_connected(graph, y, wrt, disconnected, what)
    y_anc = graph.ancestors([y.id for y in ys])
    wrt_ids = [w.id for w in wrt]
    active = _flows_from(graph, wrt_ids, y_anc) & y_anc  # nodes whose cotangent we need
    cotangents: dict[int, list[Var]] = {}
    for y, seed in zip(ys, seeds):
        cotangents.setdefault(y.id, []).append(seed)
    for n in sorted(active, reverse=True):
        parts = cotangents.pop(n, None)
        if parts is None:
            continue
        with at(graph.loc(n)):
            g = L.add_all(parts)
        cotangents[n] = [g]  # keep the total for the wrt lookups below
        if graph.op(n).leaf:
            continue
        operands = graph.operands(n)
        if not any(o in active for o in operands):
            continue
        out = Var(graph, n)
        with at(graph.loc(n)):
            rules = graph.op(n).vjp(g, out, *(Var(graph, o) for o in operands), **graph.attrs(n))
            for o, rule in zip(operands, rules):
                if rule is None or o not in active:
                    continue
                contribution = rule()
                if contribution is None:
                    continue
                if contribution.dtype != graph.type(o).dtype:
                    contribution = L.cast(contribution, graph.type(o).dtype)
                cotangents.setdefault(o, []).append(contribution)

    results = []
    for w in wrt:
        parts = cotangents.get(w.id)
        with at(graph.loc(w.id) or graph.loc(ys[0].id)):
            results.append(L.zeros_like(w) if parts is None else L.add_all(parts))
    graph.derivatives.append(DerivativeRecord("vjp", tuple(y.id for y in ys), tuple(w.id for w in wrt),
                                              tuple(s.id for s in seeds), tuple(r.id for r in results)))
    return results
