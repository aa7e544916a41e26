"""The IR verifier (tinygrad's type_verify): checks that a graph is well formed, so that a pass
that breaks it is caught at the phase that did, not later as a wrong answer or a crash in a
backend. The optimizer runs it after every phase under `FLOWML_VERIFY=1` (or `verify=True`).

A well-formed graph:
  - every root (output or update value) is a node of the graph;
  - every node has a registered op, a `TensorType` of one of flowml's dtypes, and operands
    that are nodes of the graph and come before it (ascending ids are a topological
    order, which every pass relies on; it also rules out cycles);
  - every node's type, inferred again from its operands' types and its attrs, is its stored
    type (leaves and fused nodes are typed when created: for a fused node, its body refers
    only to operands and earlier instructions, and names elementwise ops);
  - every derivative record names nodes of the graph.
"""

from __future__ import annotations

from ..errors import FlowInternalError
from . import ops as P
from .graph import Graph, ShapeError
from .types import DTYPE_NAMES, TensorType


def _fail(graph: Graph, where: str, n: int | None, msg: str) -> FlowInternalError:
    what = f"%{n} ({graph.op(n).name}): " if n is not None and n in graph else ""
    loc = graph.loc(n) if n is not None and n in graph else None
    return FlowInternalError(f"IR verifier, after {where}: {what}{msg}", loc)


def verify_graph(graph: Graph, roots: list[int], where: str) -> None:
    """Raise FlowInternalError at the first thing wrong with `graph` (what `roots` need)."""
    for r in roots:
        if r not in graph:
            raise _fail(graph, where, None, f"root %{r} is not a node of the graph")
    for n in sorted(graph.ancestors(roots)):
        _verify_node(graph, n, where)
    for rec in graph.derivatives:
        for i in rec.ys + rec.xs + rec.directions + rec.results:
            if i not in graph:
                raise _fail(graph, where, None, f"a {rec.kind} derivative record names %{i}, not in the graph")


def _verify_node(graph: Graph, n: int, where: str) -> None:
    d = graph.data(n)
    op = d.get("op")
    if not isinstance(op, P.Op) or (P.OPS.get(op.name) is not op and not op.wrapped):
        raise _fail(graph, where, None, f"%{n} has no registered op ({op!r})")
    t = d.get("type")
    if not isinstance(t, TensorType) or t.dtype not in DTYPE_NAMES:
        raise _fail(graph, where, n, f"its type {t!r} is not a flowml tensor type")
    operands = list(graph.operands(n))
    for o in operands:
        if o not in graph:
            raise _fail(graph, where, n, f"operand %{o} is not a node of the graph")
        if o >= n:
            raise _fail(graph, where, n, f"operand %{o} does not come before it (a cycle, or ids out of order)")
    if op.leaf:
        if operands:
            raise _fail(graph, where, n, f"a leaf with operands {operands}")
        return
    if op.name == "fused":
        _verify_fused(graph, n, len(operands), where)
        return
    try:
        inferred = op.infer([graph.type(o) for o in operands], d["attrs"])
    except (ShapeError, KeyError, IndexError, TypeError, ValueError) as e:
        raise _fail(graph, where, n, f"its type rule fails on its operands: {e}") from None
    if (inferred.dtype, inferred.shape, inferred.weak) != (t.dtype, t.shape, t.weak):
        raise _fail(graph, where, n, f"stored type {t}, but its operands give {inferred}")


def _verify_fused(graph: Graph, n: int, nin: int, where: str) -> None:
    body = graph.attrs(n)["body"]
    for i, ins in enumerate(body):
        if ins.op != "const":
            op = P.OPS.get(ins.op)
            if op is None or not (op.elementwise or op.kernel_identity):
                raise _fail(graph, where, n, f"body[{i}] is {ins.op!r}, not an elementwise op")
        for a in ins.args:
            if not 0 <= a < nin + i:
                raise _fail(graph, where, n, f"body[{i}] ({ins.op}) reads value {a}, which is not defined before it")
    reduce = graph.attrs(n)["reduce"]
    if reduce is not None and not P.OPS[reduce[0]].kernel_reduce:
        raise _fail(graph, where, n, f"it ends in {reduce[0]!r}, not a reduction a kernel can do")
