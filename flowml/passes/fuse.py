"""Fuse: group elementwise ops (and a reduction that consumes them) into `fused` nodes, one
kernel each, so `sum((x - y)**2)` reads x and y once and writes one number.

Rules, applied from the outputs back (consumers decide before their producers):
  - every elementwise op becomes a fused node; a sum/prod/max/min starts one too;
  - an elementwise producer joins its consumers' fused node when ALL its users are in that node
    (so nothing outside needs its value — this also keeps every fused region convex: no path
    leaves the region and comes back) and it is computed over the same iteration shape (or is a
    scalar), so fusing never recomputes an expensive op once per broadcast element;
  - a value the function returns or uses to update a param is always materialized.
Constant scalars inside a region become literals of its body.
"""

from __future__ import annotations

from collections import Counter

from ..ir import ops as P
from ..ir.fused import Instr, fused
from ..ir.graph import Graph
from ..ir.types import TensorType


def _fusible_elementwise(graph: Graph, n: int) -> bool:
    """Elementwise ops, and the shape ops that are the identity on each element inside a
    kernel: broadcast_to (the kernel's iteration already broadcasts) and reshape of a value
    with one element."""
    op = graph.op(n)
    if op.kernel_identity:
        return op is not P.reshape or all(d == 1 for d in graph.type(graph.operands(n)[0]).shape)
    return op.elementwise and not op.lazy and op.name != "fused"


def _fusible_reduce(graph: Graph, n: int) -> bool:
    return graph.op(n).kernel_reduce


def _iteration_shape(graph: Graph, root: int) -> tuple:
    if _fusible_reduce(graph, root):
        return graph.type(graph.operands(root)[0]).shape
    return graph.type(root).shape


def find_groups(graph: Graph, roots: list[int]) -> dict[int, set[int]]:
    """node -> the roots of the fused groups it is computed in (a cheap op may be computed
    in several), for every node that goes into a fused node."""
    needed = graph.ancestors(roots)
    materialized = set(roots)
    groups: dict[int, set[int]] = {}
    for n in sorted(needed, reverse=True):
        is_elem = _fusible_elementwise(graph, n)
        if not is_elem and not _fusible_reduce(graph, n):
            continue
        users = [u for u in graph.users(n) if u in needed]
        if is_elem and n not in materialized and users and all(u in groups for u in users):
            owners = set().union(*(groups[u] for u in users))
            shape = graph.type(n).shape
            fits = all(shape == _iteration_shape(graph, r) or shape == () for r in owners)
            # a cheap op (`Op.cheap`) is computed again in each kernel rather than stored and reloaded
            if fits and (len(owners) == 1 or graph.op(n).cheap):
                groups[n] = owners
                continue
        groups[n] = {n}
    return groups


FUSED = "fuse: elementwise ops (and a reduction) into one kernel"  # (how provenance names a fused node)


def fuse(graph: Graph, roots: list[int], stats: Counter, steps: list | None = None) -> tuple[Graph, list[int]]:
    """A new graph where each group is one fused node. `steps` (a list): gets the (map, fires)
    of the rewrite, as `rewrite.run_phase` gives them (flowml/passes/provenance.py)."""
    groups = find_groups(graph, roots)
    members: dict[int, list[int]] = {}
    for n, owners in groups.items():
        for root in owners:
            members.setdefault(root, []).append(n)
    new = Graph()
    mapping: dict[int, int] = {}
    fires: list[tuple[str, tuple[int, ...], int, int]] = []
    for n in sorted(graph.ancestors(roots)):
        if n not in groups:
            d = graph.data(n)
            mapping[n] = new.add(d["op"], [mapping[o] for o in graph.operands(n)], d["attrs"],
                                 loc=d["loc"], name=d["name"], type=d["type"])
        elif n in members:
            mapping[n] = _build_fused(graph, new, sorted(members[n]), n, mapping)
            # (its scalar constant operands became literals of the body: the node stands for them too)
            literals = {o for m in members[n] for o in graph.operands(m)
                        if graph.op(o) is P.const and graph.type(o).shape == ()}
            fires.append((FUSED, tuple(sorted(literals.union(members[n]))), mapping[n], mapping[n] + 1))
            stats["fuse: ops into kernels"] += len(members[n])
            stats["fuse: kernels"] += 1
    if steps is not None:
        steps.append((mapping, fires))
    return new, [mapping[r] for r in roots]


def _build_fused(graph: Graph, new: Graph, nodes: list[int], root: int, mapping: dict[int, int]) -> int:
    inside = set(nodes)
    operands: list[int] = []  # old ids of the region's inputs
    slot: dict[int, int] = {}  # old id -> value index
    body: list[Instr] = []

    def value_of(o: int) -> int:
        if o in slot:
            return slot[o]
        t = graph.type(o)
        if graph.op(o) is P.const and t.shape == ():
            # a scalar constant is a literal of the body
            slot[o] = ("lit", len(body))
            body.append(Instr("const", (), (("value", graph.attrs(o)["value"].item()),), t.dtype.name))
            return slot[o]
        slot[o] = ("in", len(operands))
        operands.append(o)
        return slot[o]

    reduce = None
    computed = [n for n in nodes if not (n == root and _fusible_reduce(graph, n))]
    # gather inputs first so value indices are final: operands, then instructions
    for n in computed:
        for o in graph.operands(n):
            if o not in inside:
                value_of(o)
    if _fusible_reduce(graph, root):
        (src,) = graph.operands(root)
        if src not in inside:
            value_of(src)
    nin = len(operands)

    def index(ref) -> int:
        kind, k = ref
        return k if kind == "in" else nin + k

    for n in computed:
        args = tuple(index(slot[o]) for o in graph.operands(n))
        if graph.op(n).name == "broadcast_to":
            attrs = ()
        elif graph.op(n).name == "reshape":
            attrs = (("shape", graph.type(n).shape),)
        else:
            attrs = tuple(sorted(graph.attrs(n).items()))
        slot[n] = ("lit", len(body))
        body.append(Instr(graph.op(n).name, args, attrs, graph.type(n).dtype.name))
    if _fusible_reduce(graph, root):
        (src,) = graph.operands(root)
        a = graph.attrs(root)
        reduce = (graph.op(root).name, tuple(a["axis"]), bool(a["keepdims"]))
        result = index(slot[src])
        if result != nin + len(body) - 1:
            # the reduced value must be the body's last value: add an explicit copy
            body.append(Instr("stop_gradient", (result,), (), graph.type(src).dtype.name))
    t: TensorType = graph.type(root)
    return new.add(fused, [mapping[o] for o in operands],
                   {"body": tuple(body), "reduce": reduce, "shape": _iteration_shape(graph, root)}, loc=graph.loc(root), name=graph.name(root), type=t)
