"""Forward mode (R-op, J·v) and the derivatives built from both modes.

`rop(ys, xs, vs)` pushes tangents `vs` of `xs` forward through the graph with each op's JVP rule
(one sweep in topological order), adding the tangent nodes to the graph. Like `grad`, the result
is an ordinary value: it optimizes, compiles and differentiates again. On top of the two modes:
`lop` (uᵀ·J), `jacobian`, `hessian` and `hessian_vector` (forward-over-reverse, no Hessian formed).
"""

from __future__ import annotations

import numpy as np

from ..errors import FlowGradError
from ..ir import lib as L
from ..ir.graph import DerivativeRecord, at
from ..ir.lib import Var
from ..ir.types import dims_product, is_float
from .grad import check_connected, vjp


def _pairs(xs, vs, what: str):
    xs = list(xs) if isinstance(xs, (list, tuple)) else [xs]
    vs = list(vs) if isinstance(vs, (list, tuple)) else [vs]
    if len(xs) != len(vs):
        raise FlowGradError(f"{what}: {len(xs)} value(s) but {len(vs)} direction(s)", None)
    return xs, vs


def _fit(v: Var, like: Var, what: str, loc) -> Var:
    """`v` as a direction for `like`: same shape, cast to its dtype."""
    graph = like.graph
    v = L.as_var(v, graph)
    if v.type.shape != like.type.shape:
        if v.type.ndim == 0 and v.type.weak:
            v = L.broadcast_to(v, like.type.shape)
        else:
            raise FlowGradError(f"{what} must have the shape of the value it goes with: {v.type} "
                                f"given for {like.type}", loc)
    return L.cast(v, like.dtype) if v.dtype != like.dtype or v.type.weak else v


def rop(ys, xs, vs, disconnected: str = "error"):
    """J·v: the directional derivative of each y along the directions vs of xs."""
    single = not isinstance(ys, (list, tuple))
    ys = [ys] if single else list(ys)
    xs, vs = _pairs(xs, vs, "rop")
    graph = ys[0].graph
    loc = graph.loc(ys[0].id)
    vs = [_fit(v, x, "rop's direction v", loc) for x, v in zip(xs, vs)]
    for y in ys:
        if not is_float(y.dtype):
            raise FlowGradError(f"rop needs float values, but the output has type {y.type}", graph.loc(y.id))
        check_connected(graph, y, xs, disconnected, "rop")
    needed = graph.ancestors([y.id for y in ys])
    tangents: dict[int, Var] = {x.id: v for x, v in zip(xs, vs)}
    start = min(x.id for x in xs)
    for n in sorted(graph.descendants([x.id for x in xs]) & needed):
        if n in tangents or n < start or not is_float(graph.type(n).dtype):
            continue
        operands = graph.operands(n)
        ts = [tangents.get(o) for o in operands]
        if all(t is None for t in ts):
            continue
        out = Var(graph, n)
        with at(graph.loc(n)):
            t = graph.op(n).jvp(ts, out, *(Var(graph, o) for o in operands), **graph.attrs(n))
            if t is None:
                continue
            if t.type.shape != out.type.shape:
                t = L.broadcast_to(t, out.type.shape)
            if t.dtype != out.dtype:
                t = L.cast(t, out.dtype)
        tangents[n] = t
    results = []
    for y in ys:
        with at(graph.loc(y.id)):
            results.append(tangents[y.id] if y.id in tangents else L.zeros_like(y))
    graph.derivatives.append(DerivativeRecord("jvp", tuple(y.id for y in ys), tuple(x.id for x in xs),
                                              tuple(v.id for v in vs), tuple(r.id for r in results)))
    return results[0] if single else results


def lop(ys, xs, us, disconnected: str = "error"):
    """uᵀ·J: the vector-Jacobian product of ys with cotangents us, with respect to xs."""
    ys, us = _pairs(ys, us, "lop")
    single = not isinstance(xs, (list, tuple))
    xs = [xs] if single else list(xs)
    graph = ys[0].graph
    us = [_fit(u, y, "lop's cotangent u", graph.loc(y.id)) for y, u in zip(ys, us)]
    for y in ys:
        if not is_float(y.dtype):
            raise FlowGradError(f"lop needs float values, but the output has type {y.type}", graph.loc(y.id))
    # All outputs are swept at once: seed each with its cotangent.
    results = vjp(ys, xs, us, disconnected=disconnected, what="lop")
    return results[0] if single else results


def _static_size(v: Var, what: str) -> int:
    size = dims_product(v.type.shape)
    if not isinstance(size, int):
        raise FlowGradError(f"{what} needs a fixed size, but it has type {v.type}", v.graph.loc(v.id))
    return size


def _basis(like: Var, i: int) -> Var:
    e = np.zeros(_static_size(like, "basis"), dtype=like.dtype)
    e[i] = 1
    return L.constant(e.reshape(like.type.shape), like.graph, dtype=like.dtype)


def jacobian(y: Var, x: Var) -> Var:
    """dy/dx with shape y.shape + x.shape: one forward sweep per entry of x, or one reverse
    sweep per entry of y, whichever is fewer."""
    m, n = _static_size(y, "jacobian's output"), _static_size(x, "jacobian's input")
    if n <= m:
        cols = [L.reshape(rop(y, x, _basis(x, j)), (m,)) for j in range(n)]
        jac = L.stack(cols, axis=1)  # [m, n]
    else:
        jac = L.stack([L.reshape(lop(y, x, _basis(y, i)), (n,)) for i in range(m)], axis=0)
    return L.reshape(jac, y.type.shape + x.type.shape)


def hessian(cost: Var, x: Var) -> Var:
    """d²cost/dx² with shape x.shape + x.shape (for a vector or a small matrix x)."""
    from .grad import grad
    (g,) = grad(cost, x)
    return jacobian(g, x)


def hessian_vector(cost: Var, x: Var, v) -> Var:
    """H·v computed forward-over-reverse: the R-op of the gradient. No Hessian is formed."""
    from .grad import grad
    (g,) = grad(cost, x)
    return rop(g, x, v, disconnected="zero")
