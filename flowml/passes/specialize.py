"""Specialize: once derivatives are taken, drop what only mattered to differentiation and
pick the cheaper spelling of what remains."""

from __future__ import annotations

import numpy as np

from ..ir import ops as P
from ..ir.graph import Graph
from ..ir.lib import Var
from .rewrite import Rule, rule


@rule("stop_gradient(x) -> x", roots=("stop_gradient",))
def drop_stop_gradient(graph: Graph, n: int):
    if graph.op(n) is P.stop_gradient:
        return Var(graph, graph.operands(n)[0])
    return None


def _power_of_two(c: Var) -> bool:
    """Dividing by 2**k is multiplying by 2**-k exactly (no rounding either way)."""
    value = c.graph.attrs(c.id)["value"] if c.op is P.const else None
    if value is None or value.dtype.kind != "f" or value.size == 0:
        return False
    mantissa, _ = np.frexp(value)
    with np.errstate(over="ignore", divide="ignore"):
        inverse = np.reciprocal(value)  # 1 / 2**-1074 overflows: then x / c is not x * (1 / c)
    return bool(np.all(np.abs(mantissa) == 0.5) and np.all(np.isfinite(inverse)))


RULES = [
    drop_stop_gradient,
    Rule("x / c -> x * (1 / c)", when=lambda x, c: _power_of_two(c) and x.op is not P.const),
]
