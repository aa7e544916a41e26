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
from ..ir.graph import at
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


def _flows_from(graph, wrt: list[int], limit: set[int]) -> set[int]:
    """The nodes within `limit` that a derivative can reach from `wrt`: float-valued nodes whose
    op has a VJP, fed by such a node (ids ascend topologically, so one forward scan suffices)."""
    reach = {w for w in wrt}
    for n in sorted(limit):
        if n in reach or not _carries_gradient(graph, n) or not graph.op(n).has_vjp:
            continue
        if any(o in reach for o in graph.operands(n)):
            reach.add(n)
    return reach


def _blocker(graph, w: int, cost_ancestors: set[int], reach: set[int]) -> int | None:
    """An op on a path from `w` to the cost through which no derivative passes."""
    for n in sorted(graph.descendants([w]) & cost_ancestors):
        if n not in reach and any(o in reach for o in graph.operands(n)):
            return n
    return None


def grad(cost: Var, *wrt: Var, disconnected: str = "error") -> list[Var]:
    """d cost / d w for each w in `wrt`, as new nodes of the cost's graph."""
    graph = cost.graph
    loc = graph.loc(cost.id)
    if disconnected not in DISCONNECTED_POLICIES:
        raise FlowGradError(f"disconnected must be one of {DISCONNECTED_POLICIES}, not {disconnected!r}", loc)
    if cost.type.ndim != 0:
        raise FlowGradError(f"grad needs a scalar cost, but {_describe(graph, cost.id)} has type {cost.type}; "
                            "reduce it first (e.g. with sum or mean)", loc)
    if not is_float(cost.dtype):
        raise FlowGradError(f"grad needs a float cost, but {_describe(graph, cost.id)} has type {cost.type}", loc)
    if not wrt:
        raise FlowGradError("grad needs at least one value to differentiate with respect to", loc)
    for w in wrt:
        if w.graph is not graph:
            raise FlowGradError("grad: the cost and the values to differentiate by are from different graphs", loc)
        if not is_float(w.dtype):
            raise FlowGradError(f"cannot differentiate with respect to {_describe(graph, w.id)} of type {w.type}: "
                                "only float values have gradients", graph.loc(w.id) or loc)

    cost_anc = graph.ancestors([cost.id])
    wrt_ids = [w.id for w in wrt]
    reach = _flows_from(graph, wrt_ids, cost_anc)
    for w in wrt:
        if w.id not in cost_anc:
            if disconnected == "error":
                raise FlowGradError(f"the cost does not depend on {_describe(graph, w.id)}; pass "
                                    "disconnected=\"zero\" to get a zero gradient instead", loc)
        elif cost.id not in _flows_from(graph, [w.id], cost_anc):
            b = _blocker(graph, w.id, cost_anc, _flows_from(graph, [w.id], cost_anc))
            what = f"{graph.op(b).name} ({graph.loc(b)})" if b is not None else "an op without a derivative"
            if disconnected == "error":
                raise FlowGradError(f"the cost depends on {_describe(graph, w.id)} only through {what}, "
                                    "which has no gradient", loc)

    active = reach & cost_anc  # nodes whose cotangent we need
    cotangents: dict[int, list[Var]] = {}
    with at(loc):
        cotangents[cost.id] = [L.constant(1.0, graph, dtype=cost.dtype)]
    for n in sorted(active, reverse=True):
        parts = cotangents.pop(n, None)
        if parts is None:
            continue
        g = _accumulate(parts)
        cotangents[n] = [g]  # keep the total for wrt lookups below
        if n in wrt_ids and graph.op(n).leaf:
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
        with at(graph.loc(w.id) or loc):
            if parts is None:
                results.append(L.zeros_like(w))
            else:
                results.append(_accumulate(parts))
    return results


def _accumulate(parts: list[Var]) -> Var:
    total = parts[0]
    for p in parts[1:]:
        total = total + p
    return total
