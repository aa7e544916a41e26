"""Canonicalize: fold constants and apply algebraic identities, so later phases see one
spelling of each computation. (Merging common subexpressions and dropping dead code happen in
every rebuild; see `rewrite`.) Every rule here is exact in floating point."""

from __future__ import annotations

import numpy as np

from ..ir import lib as L
from ..ir import ops as P
from ..ir.graph import Graph
from ..ir.lib import Var
from ..ir.types import dims_product
from .rewrite import Rule, rule

FOLD_LIMIT = 1 << 16  # elements: larger constants are left to be computed at run time


@rule("op(constants...) -> constant")
def fold_constants(graph: Graph, n: int):
    op = graph.op(n)
    operands = graph.operands(n)
    if op.leaf or op.lazy or not operands or any(graph.op(o) is not P.const for o in operands):
        return None
    t = graph.type(n)
    if t.symbols() or getattr(op, "stops_gradient", False) or getattr(op, "communicates", False):
        return None
    size = int(np.prod([d for d in t.shape], dtype=np.int64))
    largest = max(int(np.prod(graph.type(o).shape, dtype=np.int64)) for o in operands)
    if size > FOLD_LIMIT or (size > 1 and size > largest):
        return None  # folding would store an expansion (a broadcast) instead of computing it
    args = [graph.attrs(o)["value"] for o in operands]
    attrs = dict(graph.attrs(n))
    try:
        with np.errstate(all="ignore"):
            value = op.impl(*args, env={}, **attrs) if op.needs_env else op.impl(*args, **attrs)
    except Exception:  # noqa: BLE001 - a constant that fails to compute fails at run time instead
        return None
    value = np.asarray(value)
    if value.dtype != t.dtype or value.shape != t.shape:
        return None
    return L.constant(value, graph, dtype=t.dtype, weak=t.weak)


def _is_int(x: Var) -> bool:
    return x.dtype.kind in "biu"


def _exact_zero_product(x: Var) -> bool:
    """x * 0 is 0 exactly when x can't be inf or NaN: integers, and floats cast from them."""
    if _is_int(x):
        return True
    return x.op is P.cast and x.graph.type(x.graph.operands(x.id)[0]).dtype.kind in "biu"


def _power_rule(text: str, exponent: float, build, floats_only: bool = False) -> Rule:
    """`x ** exponent -> build(x)` where x already has the power's dtype: `build` computes in x's
    dtype, so an i64 x ** 2.0 (an f64) must not become the i64 x * x (which overflows), nor an f32
    x ** f64(2) an f32 product (rounded to f32)."""
    def fn(graph: Graph, n: int):
        if graph.op(n) is not P.pow_:
            return None
        x, c = graph.operands(n)
        if graph.op(c) is not P.const or graph.type(x).dtype != graph.type(n).dtype:
            return None
        value = graph.attrs(c)["value"]
        if value.size == 0 or not np.all(value == exponent):
            return None
        if floats_only and graph.type(x).dtype.kind != "f":
            return None
        return build(Var(graph, x))
    return Rule(text, fn=fn, roots=("pow",))


@rule("transpose(transpose(x)) -> transpose(x) with composed axes (or x)", roots=("transpose",))
def transpose_of_transpose(graph: Graph, n: int):
    if graph.op(n) is not P.transpose:
        return None
    (inner,) = graph.operands(n)
    axes = graph.attrs(n)["axes"]
    if axes == tuple(range(len(axes))):
        return Var(graph, inner)
    if graph.op(inner) is not P.transpose:
        return None
    (x,) = graph.operands(inner)
    inner_axes = graph.attrs(inner)["axes"]
    composed = tuple(inner_axes[a] for a in axes)
    if composed == tuple(range(len(composed))):
        return Var(graph, x)
    return L.transpose(Var(graph, x), composed)


@rule("reshape(reshape(x)) -> reshape(x); reshape to x's own shape -> x", roots=("reshape",))
def reshape_chain(graph: Graph, n: int):
    if graph.op(n) is not P.reshape:
        return None
    (inner,) = graph.operands(n)
    shape = graph.type(n).shape
    if graph.type(inner).shape == shape:
        return Var(graph, inner)
    if graph.op(inner) is P.reshape:
        return L.apply(P.reshape, [Var(graph, graph.operands(inner)[0])], shape=graph.attrs(n)["shape"])
    return None


@rule("broadcast_to(x) of x's own shape -> x; broadcast_to(broadcast_to(x)) -> broadcast_to(x)", roots=("broadcast_to",))
def broadcast_chain(graph: Graph, n: int):
    if graph.op(n) is not P.broadcast_to:
        return None
    (inner,) = graph.operands(n)
    if graph.type(inner).shape == graph.type(n).shape:
        return Var(graph, inner)
    if graph.op(inner) is P.broadcast_to:
        return L.broadcast_to(Var(graph, graph.operands(inner)[0]), graph.type(n).shape)
    return None


@rule("f(broadcast_to(x), y) -> f(x, y) for elementwise f when y gives the shape anyway")
def elementwise_of_broadcast(graph: Graph, n: int):
    op = graph.op(n)
    if not op.elementwise or op is P.stop_gradient or isinstance(op, P.Cast):
        return None
    operands = graph.operands(n)
    if len(operands) < 2:
        return None
    from ..ir.types import broadcast_shapes
    for i, o in enumerate(operands):
        if graph.op(o) is not P.broadcast_to:
            continue
        inner = graph.operands(o)[0]
        trial = [inner if j == i else p for j, p in enumerate(operands)]
        if broadcast_shapes(*(graph.type(p).shape for p in trial)) == graph.type(n).shape:
            return L.apply(op, [Var(graph, p) for p in trial], **graph.attrs(n))
    return None


@rule("sum(broadcast_to(x)) over only broadcast axes -> x * count", roots=("sum",))
def sum_of_broadcast(graph: Graph, n: int):
    if graph.op(n) is not P.sum_:
        return None
    (b,) = graph.operands(n)
    if graph.op(b) is not P.broadcast_to:
        return None
    (x,) = graph.operands(b)
    xt, bt = graph.type(x), graph.type(b)
    axis = graph.attrs(n)["axis"]  # (keepdims is in the output type)
    lead = bt.ndim - xt.ndim
    # every reduced axis must be one the broadcast created (absent in x, or 1 in x)
    for a in axis:
        if a >= lead and xt.shape[a - lead] != 1:
            return None
    # and every kept axis must have x's full size
    for a in range(bt.ndim):
        if a not in axis and (a < lead or xt.shape[a - lead] != bt.shape[a]):
            return None
    count = dims_product(bt.shape[a] for a in axis)
    xv = Var(graph, x)
    out_shape = graph.type(n).shape
    squeezed = L.reshape(xv, out_shape) if xt.shape != out_shape else xv
    if not isinstance(count, int):
        return squeezed * L.cast(L.dim(graph, count), xt.dtype) if xt.dtype.kind == "f" else None
    return squeezed * L.constant(count, graph, dtype=graph.type(n).dtype)


@rule("sum(x, axis=()) -> x")
def empty_reduction(graph: Graph, n: int):
    op = graph.op(n)
    if isinstance(op, P.Reduce) and op is not P.logsumexp and graph.attrs(n)["axis"] == () \
            and graph.type(graph.operands(n)[0]).dtype == graph.type(n).dtype:
        return Var(graph, graph.operands(n)[0])
    return None


@rule("if c then a else b with a constant c -> a or b", roots=("ifelse", "where"))
def constant_condition(graph: Graph, n: int):
    op = graph.op(n)
    if op not in (P.ifelse, P.where):
        return None
    c, a, b = graph.operands(n)
    if graph.op(c) is not P.const:
        return None
    value = graph.attrs(c)["value"]
    if value.all():
        return Var(graph, a)
    if not value.any():
        return Var(graph, b)
    return None


@rule("cast(x) to x's own dtype -> x", roots=("cast",))
def cast_to_same(graph: Graph, n: int):
    if graph.op(n) is P.cast and graph.type(graph.operands(n)[0]).dtype == graph.type(n).dtype:
        return Var(graph, graph.operands(n)[0])
    return None


RULES = [
    fold_constants,
    Rule("x * 1 -> x"),
    Rule("x + 0 -> x"),
    Rule("x - 0 -> x"),
    Rule("0 - x -> -x"),
    Rule("x / 1 -> x"),
    Rule("--x -> x"),
    Rule("x * -1 -> -x"),
    Rule("x * 0 -> zeros_like(x)", when=lambda x: _exact_zero_product(x)),
    Rule("x - x -> zeros_like(x)", when=lambda x: _is_int(x)),
    Rule("x ** 1 -> x"),
    _power_rule("x ** 2 -> x * x", 2, lambda x: x * x),
    _power_rule("x ** 0.5 -> sqrt(x)", 0.5, L.sqrt),
    _power_rule("x ** -1 -> 1 / x", -1, lambda x: 1 / x, floats_only=True),
    Rule("-(a - b) -> b - a"),
    Rule("-a * -b -> a * b"),
    Rule("-(-a * b) -> a * b"),
    Rule("a - -b -> a + b"),
    Rule("a + -b -> a - b"),
    Rule("where(c, x, x) -> x"),
    transpose_of_transpose,
    reshape_chain,
    broadcast_chain,
    elementwise_of_broadcast,
    sum_of_broadcast,
    empty_reduction,
    constant_condition,
    cast_to_same,
]
