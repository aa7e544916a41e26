"""Memory: plan the buffers of a compiled function.

Nodes run in the order of `flowml.ir.schedule` (ascending ids, a loop's nodes together, the
nodes only one side of a lazy `if` needs just before it). A node's value lives from the node that
computes it to its last reader; when it dies, its buffer can hold a later value of the same
size and dtype. A param update is done in place — the new value written straight into the
param's storage — when its value is an elementwise kernel of the param's shape and no node
after it still reads the param's old value. `reshape` is a view: it shares its operand's
buffer. Leaves (inputs, params, constants) have their own storage and are not planned.

The plan is data for the native backends; the reference backend ignores it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from ..ir import ops as P
from ..ir.graph import Graph
from ..ir.schedule import flatten, schedule
from ..ir.types import Sym, TensorType

@dataclass
class Buffer:
    dtype: np.dtype
    shape: tuple  # of the first value placed in it; later values have the same size

    def nbytes(self, env: dict[str, int]) -> int:
        return _nbytes(TensorType(self.dtype, self.shape), env)


@dataclass
class MemoryPlan:
    buffers: list[Buffer] = field(default_factory=list)
    assign: dict[int, int] = field(default_factory=dict)      # node -> buffer index
    alias: dict[int, int] = field(default_factory=dict)       # view node -> node it views
    inplace: dict[str, int] = field(default_factory=dict)     # param -> node written into it
    values: list[int] = field(default_factory=list)           # planned nodes, in run order

    def bytes_before(self, graph: Graph, env: dict[str, int]) -> int:
        """Every intermediate in its own buffer (no planning)."""
        return sum(_nbytes(graph.type(n), env) for n in self.values if n not in self.alias)

    def bytes_after(self, env: dict[str, int]) -> int:
        return sum(b.nbytes(env) for b in self.buffers)


def _size_key(t: TensorType) -> tuple:
    """Values with equal keys have equal byte sizes for every binding of the dims."""
    ints = 1
    syms: dict[str, int] = {}
    for d in t.shape:
        if isinstance(d, int):
            ints *= d
        else:
            ints *= d.coeff
            for name in d.names:
                syms[name] = syms.get(name, 0) + 1
    return (t.dtype.itemsize * ints, tuple(sorted(syms.items())))


def _nbytes(t: TensorType, env: dict[str, int]) -> int:
    size = 1
    for d in t.shape:
        size *= d.resolve(env) if isinstance(d, Sym) else d
    return int(size) * t.dtype.itemsize


_PRODUCTS = (P.matmul, P.gemm)  # the ops a native backend lets read a transpose as it is stored


def _read_through_transposes(graph: Graph, o: int, root_of: dict[int, int]) -> int:
    """The buffer a product reads for operand o: a native backend reads a transpose as it is
    stored (BLAS's transpose flags)."""
    while graph.op(o) is P.transpose:
        o = graph.operands(o)[0]
    return root_of.get(o, o)


def plan_memory(graph: Graph, outputs: list[int], updates: list[tuple[str, int]]) -> MemoryPlan:
    plan = MemoryPlan()
    runs = flatten(schedule(graph, outputs + [n for _, n in updates]))  # (a node may run twice: see schedule)
    position: dict[int, int] = {}
    for i, n in enumerate(runs):
        position.setdefault(n, i)
    order = list(position)
    end = len(runs)
    root_of = {}  # view -> the node whose buffer it uses
    for n in order:
        op = graph.op(n)
        if op.leaf:
            continue
        if op.view:
            src = graph.operands(n)[0]
            plan.alias[n] = src
            root_of[n] = root_of.get(src, src)
        plan.values.append(n)
    # last use of each buffer-owning value (a view's readers keep its source alive)
    last = {}
    readers: dict[int, list[int]] = {}  # buffer owner -> the nodes that read it (one pass, not one per param)
    for i, n in enumerate(runs):
        for o in graph.operands(n):
            owners = {root_of.get(o, o)}
            if graph.op(n) in _PRODUCTS:  # (a native backend may read o's source with a transpose flag)
                owners.add(_read_through_transposes(graph, o, root_of))
            for owner in owners:
                last[owner] = max(last.get(owner, -1), i)
                readers.setdefault(owner, []).append(n)
    for n in outputs + [v for _, v in updates]:
        owner = root_of.get(n, n)
        last[owner] = end  # returned or written back: alive to the end
    # in-place param updates
    param_nodes = {graph.attrs(n)["name"]: n for n in order if graph.op(n) is P.param}
    outs = set(outputs)
    # params whose old value is returned, or written to another param, after the updates ran
    read_at_end = {root_of.get(n, n) for n in outputs + [u for _, u in updates]}
    writes = Counter(u for _, u in updates)
    for name, v in updates:
        p = param_nodes.get(name)
        into = graph.op(v).accumulates_into
        if v in outs or not (into is not None or graph.op(v).name == "fused" and graph.attrs(v)["reduce"] is None):
            continue  # only an elementwise kernel (or gemm, over its c) writes over what it reads
        if into is not None and p is not None and any(
                _read_through_transposes(graph, o, root_of) == p for k, o in enumerate(graph.operands(v)) if k != into):
            continue  # gemm reads its other operands whole (a transpose as it is stored): not the param
        if writes[v] != 1:
            continue  # two params get the same value: it needs its own buffer
        if p is None:
            plan.inplace[name] = v  # the function doesn't read the param at all
            continue
        if p in read_at_end:
            continue  # e.g. `fn f() -> w { w <- w + 1 }` returns the old w: keep it
        same_shape = all(graph.type(o).shape == graph.type(v).shape
                         for o in graph.operands(v) if root_of.get(o, o) == p)
        if same_shape and all(position[u] <= position[v] for u in readers.get(p, ())):
            plan.inplace[name] = v
    # greedy buffer reuse by exact size
    free: dict[tuple, list[int]] = {}
    releases: dict[int, list[int]] = {}
    written_inplace = set(plan.inplace.values())
    for n in plan.values:
        i = position[n]
        for b in releases.pop(i, []):
            free.setdefault(plan_key(plan.buffers[b]), []).append(b)
        if n in plan.alias or n in written_inplace:
            continue
        t = graph.type(n)
        key = _size_key(t) + (t.dtype.str,)
        if free.get(key):
            b = free[key].pop()
        else:
            b = len(plan.buffers)
            plan.buffers.append(Buffer(t.dtype, t.shape))
        plan.assign[n] = b
        # the buffer is free again after the last reader runs (reads happen before writes
        # only within one node, so a node never writes into a buffer it reads)
        releases.setdefault(last.get(n, i) + 1, []).append(b)
    return plan


def plan_key(b: Buffer) -> tuple:
    return _size_key(TensorType(b.dtype, b.shape)) + (b.dtype.str,)
