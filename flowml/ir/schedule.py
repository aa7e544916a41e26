"""The order in which a native backend runs a function's nodes, with its control flow.

Without a lazy `if` this is the topological order (ascending ids), except that the nodes of one
loop (a loop with k outputs is k `scan` nodes sharing a body and operands) are grouped into a
`Loop` at the place of the first, since one native loop computes them all; so are the parts of
one decomposition (eigh's values and vectors, svd's u, s and vt: an op's `multipart` nodes of
the same operands), which one LAPACK call computes. A lazy `ifelse`
becomes a `Branch`: the nodes only its `then` side needs, and those only its `else` side
needs, are scheduled inside it (run only when that side is taken); what the rest of the
function needs runs unconditionally. A node that both sides (or two `if`s) need but nothing
unconditional does is scheduled in each.

The memory plan (`flowml.passes.memory`) uses the same order (`flatten`), so that a value's
buffer is live from where it is really computed to its last reader.
"""

from __future__ import annotations

from dataclasses import dataclass

from .graph import Graph


@dataclass
class Loop:
    """The scan nodes of one loop, or the parts of one decomposition (the first is where they
    are computed)."""
    nodes: list[int]


@dataclass
class Branch:
    """An `ifelse` node and the items that run only when its condition is true / false."""
    node: int
    then: list
    orelse: list


def loop_key(graph: Graph, n: int):
    """What makes scan nodes one loop: the same body, carries and operands (None: not a scan).
    Their emitted outputs may differ: backprop's loop that stacks the states before each step
    is the forward loop with more outputs, and runs as that loop."""
    if graph.op(n).name != "scan":
        return None
    a = graph.attrs(n)
    return (id(a["body"]), tuple(a["outputs"][:a["n_carry"]]), a["n_carry"], a["n_seq"], tuple(graph.operands(n)))


def group_key(graph: Graph, n: int):
    """What makes nodes one `Loop` item: one loop's scan nodes (`loop_key`), or the parts of one
    decomposition: the same multipart op, operands and attrs but the part (None: neither)."""
    op = graph.op(n)
    if op.multipart:
        attrs = graph.attrs(n)
        return (op.name, tuple(graph.operands(n)), tuple(sorted((k, v) for k, v in attrs.items() if k != op.multipart)))
    return loop_key(graph, n)


def schedule(graph: Graph, roots: list[int], available: frozenset = frozenset()) -> list:
    """The items (node ids, `Loop`s, `Branch`es) that compute `roots`, given the nodes already
    computed (`available`)."""
    needed: set[int] = set()
    stack = [r for r in roots if r not in available]
    while stack:
        n = stack.pop()
        if n in needed or n in available:
            continue
        needed.add(n)
        ops = graph.operands(n)
        stack.extend(ops[:1] if graph.op(n).lazy else ops)
    items: list = []
    loops: dict = {}
    inner = available | needed  # (what a branch of a node here may read without computing it)
    for n in sorted(needed):
        op = graph.op(n)
        if op.lazy:
            _, a, b = graph.operands(n)
            items.append(Branch(n, schedule(graph, [a], inner), schedule(graph, [b], inner)))
            continue
        key = group_key(graph, n)
        if key is None:
            items.append(n)
        elif key in loops:
            loops[key].nodes.append(n)
        else:
            loops[key] = Loop([n])
            items.append(loops[key])
    return items


def flatten(items: list) -> list[int]:
    """The nodes in the order they run (a branch's sides, then the branch; a node scheduled in
    two places appears twice)."""
    out: list[int] = []
    for item in items:
        if isinstance(item, Loop):
            out.extend(item.nodes)
        elif isinstance(item, Branch):
            out.extend(flatten(item.then) + flatten(item.orelse) + [item.node])
        else:
            out.append(item)
    return out
