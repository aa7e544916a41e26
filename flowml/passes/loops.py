"""Work a loop does at every step that needs no carried state, done once for all steps.

A recurrent layer's step reads `x_t @ Wx + h @ Wh`: the first product depends only on this step's
input, so the T products of (B, k) rows are one product of (T*B, k) rows before the loop -- one
large BLAS call instead of T small ones (cuDNN's input projection). Backprop through time has more:
its reverse step recomputes the forward step from the stacked states (sequences of the reverse
loop, so all of it is step-parallel), and it accumulates each weight's gradient in a carry,

    dW' = dW + x_t.T @ dz_t

-- T rank-B updates where one product of the stacked rows does the same sum (X.T @ DZ).

This pass rewrites each loop (the scan nodes sharing one body, `schedule.loop_key`) in two ways:

- **Hoisting**: a body node that depends on sequences and not on a carry (nor on the step's
  random key) is step-parallel. The step-parallel nodes that carried work reads, and that a
  product makes worth it, are computed before the loop for all steps at once -- the body's
  nodes re-applied to the stacked sequences (a leading axis of T added: elementwise ops broadcast,
  a product by a weight is one product of the flattened rows, slices, transposes, reshapes and
  reductions shift their axes) -- and enter the body as new sequences.
- **Accumulations**: a carry whose only use is `c' = c + e`, e a product `p.T @ q` of per-step
  matrices or a sum of a per-step value over its first axis, and whose history nobody reads, is
  dropped from the loop: the loop stacks p and q (or reads them as sequences already), and its
  last value is `c0 + P.T @ Q` over the (T*B)-row stacks (resp. a sum over both leading axes).

Runs at the start of the fuse phase on the outer graph, before `gemm` (whose in-place
accumulation then takes the products the rewrite builds). Loop bodies are otherwise optimized
when they are lowered.
"""

from __future__ import annotations

from collections import Counter

from ..ir import ops as P
from ..ir.graph import Graph
from ..ir.schedule import loop_key
from ..ir.types import dims_product

HOIST = "fuse: step-parallel work of a loop, once for all steps"
ACCUMULATE = "fuse: a loop's accumulated products, one product after it"

_REDUCTIONS = {"sum", "prod", "max", "min"}
_SHAPE_OPS = {"matmul", "transpose", "reshape", "index", "zeros_like", "cast"}


def _batchable(body: Graph, n: int) -> bool:
    """Whether node n can be re-applied to stacked operands (a leading axis of steps)."""
    op = body.op(n)
    if op.leaf or op.lazy or getattr(op, "wrapped", False):
        return op is P.const or op is P.dim
    if op.elementwise:
        return True
    if op.name in _REDUCTIONS:
        return True
    if op.name == "index":
        return all(item[0] != "arr" for item in body.attrs(n)["spec"]) and len(body.operands(n)) == 1
    if op.name == "matmul":
        return all(body.type(o).ndim >= 2 for o in body.operands(n))
    return op.name in _SHAPE_OPS


class _Loop:
    """One loop of the outer graph: its scan nodes, body and operands, and what this pass makes
    of them."""

    def __init__(self, graph: Graph, members: list[int]):
        self.graph, self.members = graph, members
        a = graph.attrs(members[0])
        self.attrs = a
        self.body: Graph = a["body"]
        self.n_carry, self.n_seq = a["n_carry"], a["n_seq"]
        self.length = a["length"]
        self.operands = graph.operands(members[0])
        body = self.body
        self.leaf = {body.attrs(m)["name"]: m for m in body.nodes() if body.op(m) is P.input_}
        self.users: dict[int, list[int]] = {}
        for m in body.nodes():
            for o in body.operands(m):
                self.users.setdefault(o, []).append(m)
        carried = {self.leaf[f"carry{j}"] for j in range(self.n_carry) if f"carry{j}" in self.leaf}
        if "step0" in self.leaf:
            carried.add(self.leaf["step0"])
        seqs = {self.leaf[f"seq{i}"] for i in range(self.n_seq) if f"seq{i}" in self.leaf}
        self.carried = body.descendants(carried) if carried else set()  # depends on the state
        per_step = body.descendants(seqs) if seqs else set()
        # step-parallel and re-appliable to stacks (with all of its step-parallel ancestry)
        self.parallel: set[int] = set(seqs)
        for m in sorted(per_step - self.carried - seqs):
            if _batchable(body, m) and all(o in self.parallel or o not in per_step for o in body.operands(m)):
                self.parallel.add(m)
        self.has_product: dict[int, bool] = {}

    def product_below(self, m: int) -> bool:
        """Whether a matmul is among m's step-parallel ancestors (m included)."""
        if m not in self.has_product:
            body = self.body
            self.has_product[m] = body.op(m) is P.matmul or any(
                self.product_below(o) for o in body.operands(m) if o in self.parallel)
        return self.has_product[m]

    def outputs_of(self, m: int) -> tuple[int, ...]:
        return self.graph.attrs(m)["outputs"]


class _Batcher:
    """Step-parallel body nodes as stacked values of the new outer graph."""

    def __init__(self, loop: _Loop, new: Graph, outer: dict[int, int], loc):
        self.loop, self.new, self.outer, self.loc = loop, new, outer, loc
        self.done: dict[int, tuple[int, bool]] = {}  # body node -> (new node, stacked?)

    def add(self, op, operands, attrs, type=None) -> int:
        return self.new.add(op, operands, attrs, loc=self.loc, type=type)

    def stacked(self, m: int) -> int:
        node, batched = self.value(m)
        assert batched
        return node

    def value(self, m: int) -> tuple[int, bool]:
        if m in self.done:
            return self.done[m]
        loop, body = self.loop, self.loop.body
        op, attrs = body.op(m), body.attrs(m)
        if op is P.input_:
            name = attrs["name"]
            kind, k = name.rstrip("0123456789"), int(name.lstrip("abcdefghijklmnopqrstuvwxyz"))
            at = k if kind == "carry" else loop.n_carry + k if kind == "seq" else loop.n_carry + loop.n_seq + k
            result = (self.outer[loop.operands[at]], kind == "seq")
        elif op.leaf:  # a constant, a dim: the same outside
            result = (self.add(op, [], attrs, type=body.type(m)), False)
        else:
            parts = [self.value(o) for o in body.operands(m)]
            if not any(b for _, b in parts):  # loop-invariant: computed once outside
                result = (self.add(op, [p for p, _ in parts], attrs), False)
            else:
                result = (self._apply(m, parts), True)
        self.done[m] = result
        return result

    def _flat(self, node: int, rows_from: int) -> tuple[int, tuple]:
        """node's axes before `rows_from` merged into one (rows), and the shape they had."""
        shape = self.new.type(node).shape
        lead = shape[:rows_from]
        return self.add(P.reshape, [node], {"shape": (dims_product(lead),) + tuple(shape[rows_from:])}), lead

    def _apply(self, m: int, parts: list[tuple[int, bool]]) -> int:
        body, T = self.loop.body, self.loop.length
        op, attrs = body.op(m), dict(body.attrs(m))
        rank = body.type(m).ndim
        if op.elementwise:  # stacked operands of lower rank get unit dims after the step axis
            ops = []
            for (node, batched), o in zip(parts, body.operands(m)):
                k = body.type(o).ndim
                if batched and k < rank:
                    node = self.add(P.reshape, [node], {"shape": (T,) + (1,) * (rank - k) + body.type(o).shape})
                ops.append(node)
            return self.add(op, ops, attrs)
        nodes = [p for p, _ in parts]
        if op.name == "matmul":
            (a, a_b), (b, b_b) = parts
            if a_b and not b_b and body.type(body.operands(m)[1]).ndim == 2:
                # (T, ..., M, K) @ (K, N): one product of all the rows
                flat, lead = self._flat(a, self.new.type(a).ndim - 1)
                prod = self.add(P.matmul, [flat, b], {})
                return self.add(P.reshape, [prod], {"shape": tuple(lead) + (self.new.type(prod).shape[-1],)})
            return self.add(P.matmul, nodes, {})
        if op.name == "transpose":
            attrs["axes"] = (0,) + tuple(x + 1 for x in attrs["axes"])
        elif op.name == "reshape":
            attrs["shape"] = (T,) + tuple(attrs["shape"])
        elif op.name == "index":
            attrs["spec"] = (("slice", None, None, None),) + tuple(attrs["spec"])
        elif op.name in _REDUCTIONS:
            axis = attrs.get("axis")
            n_in = body.type(body.operands(m)[0]).ndim
            attrs["axis"] = tuple(x + 1 for x in (range(n_in) if axis is None else axis))
        return self.add(op, nodes, attrs)


def _accumulation(loop: _Loop, j: int):
    """('product', p, q) or ('sum', q, axes) when carry j only accumulates e (c' = c + e) as the
    module docstring says, else None."""
    body = loop.body
    name = f"carry{j}"
    if name not in loop.leaf:
        return None
    c = loop.leaf[name]
    u = loop.attrs["outputs"][j]
    if loop.users.get(c, []) != [u] or body.op(u) is not P.add or loop.users.get(u):
        return None
    if body.type(c).dtype.kind != "f" or body.type(u) != body.type(c):
        return None
    a, b = body.operands(u)
    e = b if a == c else a if b == c else None
    if e is None or e == c or c in body.ancestors([e]) or loop.users.get(e, []) != [u]:
        return None
    if body.op(e) is P.matmul:
        x, q = body.operands(e)
        if (body.op(x) is P.transpose and tuple(body.attrs(x)["axes"]) == (1, 0) and body.type(q).ndim == 2
                and loop.users.get(x, []) == [e]):
            (p,) = body.operands(x)
            return ("product", p, q)
        return None
    s = e
    if body.op(s) is P.reshape:
        (s,) = body.operands(s)
        if loop.users.get(s, []) != [e]:
            return None
    if body.op(s) is P.sum_ and body.attrs(s).get("axis") is not None:
        (q,) = body.operands(s)
        if tuple(body.attrs(s)["axis"]) == (0,) and body.type(q).ndim >= 1:
            return ("sum", q, None)
    return None


def _needed(body: Graph, roots: list[int], hoisted: set[int]) -> tuple[set[int], set[int]]:
    """The body nodes the new body computes from `roots` down, a hoisted node being a leaf
    (a sequence) there; and the hoisted nodes it reads."""
    seen = body.ancestors(roots, stop=hoisted)
    return seen, seen & hoisted


def _is_zero(graph: Graph, n: int) -> bool:
    op = graph.op(n)
    if op is P.zeros_like:
        return True
    return op is P.full and graph.attrs(n).get("value") == 0


def _rewrite(graph: Graph, loop: _Loop, new: Graph, mapping: dict[int, int], stats: Counter) -> bool:
    """Write the loop into `new` (its scan nodes' new ids into `mapping`); False when there is
    nothing to gain (the caller copies it as it is)."""
    body, n_carry = loop.body, loop.n_carry
    members = loop.members
    hist_of_carry = {graph.attrs(m)["index"] for m in members
                     if graph.attrs(m)["history"] and graph.attrs(m)["index"] < n_carry}
    emitted = {o for m in members for o in loop.outputs_of(m)[n_carry:]}
    dropped: dict[int, tuple] = {}
    for j in range(n_carry):
        if j in hist_of_carry or loop.leaf.get(f"carry{j}") in emitted:
            continue
        found = _accumulation(loop, j)
        if found is not None:
            dropped[j] = found
    # the step-parallel nodes carried work reads, worth computing for all steps at once
    kept_carries = [j for j in range(n_carry) if j not in dropped]
    roots = [loop.attrs["outputs"][j] for j in kept_carries]
    roots += sorted(emitted)
    factors = [x for kind, *xs in dropped.values() for x in xs if x is not None]
    hoisted = []
    for m in sorted(loop.parallel):
        if body.op(m).leaf or not loop.product_below(m):
            continue
        if any(u not in loop.parallel for u in loop.users.get(m, [])):
            hoisted.append(m)
    # the accumulated factors: a sequence, a hoisted value, or a new emitted output
    new_emits = [x for x in factors if x not in loop.parallel]
    needed, used_hoisted = _needed(body, roots + new_emits, set(hoisted))
    if not dropped and not used_hoisted:
        return False
    loc = graph.loc(members[0])
    batch = _Batcher(loop, new, mapping, loc)
    stacked = {m: batch.stacked(m) for m in sorted(used_hoisted)}

    # the new body: kept carries, used sequences and frees (renumbered), the hoisted values as
    # sequences
    nb = Graph()
    bmap: dict[int, int] = {}
    outer_ops: list[int] = []
    for j in kept_carries:
        leaf = loop.leaf.get(f"carry{j}")
        name = f"carry{len(outer_ops)}"
        t = body.type(loop.attrs["outputs"][j])
        node = nb.add(P.input_, [], {"name": name}, loc=body.loc(leaf) if leaf is not None else loc, name=name, type=t)
        if leaf is not None:
            bmap[leaf] = node
        outer_ops.append(mapping[loop.operands[j]])
    leaves_used = {m for m in needed if body.op(m) is P.input_}
    seq_ops: list[tuple[int, int | None, object]] = []  # (outer node, old leaf, type)
    for i in range(loop.n_seq):
        leaf = loop.leaf.get(f"seq{i}")
        if leaf in leaves_used:
            seq_ops.append((mapping[loop.operands[n_carry + i]], leaf, body.type(leaf)))
    for m in sorted(used_hoisted):
        seq_ops.append((stacked[m], m, body.type(m)))
    for k, (outer, old, t) in enumerate(seq_ops):
        bmap[old] = nb.add(P.input_, [], {"name": f"seq{k}"}, loc=body.loc(old), name=body.name(old), type=t)
        outer_ops.append(outer)
    n_free = 0
    first_free = n_carry + loop.n_seq
    for f in range(len(loop.operands) - first_free):
        leaf = loop.leaf.get(f"free{f}")
        if leaf in leaves_used:
            bmap[leaf] = nb.add(P.input_, [], {"name": f"free{n_free}"}, loc=body.loc(leaf), name=body.name(leaf),
                                type=body.type(leaf))
            outer_ops.append(mapping[loop.operands[first_free + f]])
            n_free += 1
    if "step0" in loop.leaf and loop.leaf["step0"] in leaves_used:
        s = loop.leaf["step0"]
        bmap[s] = nb.add(P.input_, [], {"name": "step0"}, loc=body.loc(s), name=body.name(s), type=body.type(s))
    for m in sorted(needed - used_hoisted):
        if m in bmap:
            continue
        d = body.data(m)
        bmap[m] = nb.add(d["op"], [bmap[o] for o in body.operands(m)], d["attrs"], loc=d["loc"], name=d["name"],
                         type=d["type"])
    outputs = [bmap[loop.attrs["outputs"][j]] for j in kept_carries]
    emit_at: dict[int, int] = {}  # old emitted body node -> its index among the new outputs
    for x in sorted(emitted) + new_emits:
        if x not in emit_at:
            emit_at[x] = len(outputs)
            outputs.append(bmap[x])
    outputs_t = tuple(outputs)
    attrs = {k: v for k, v in loop.attrs.items() if k not in ("index", "history")}
    attrs.update(body=nb, n_carry=len(kept_carries), n_seq=len(seq_ops), outputs=outputs_t)

    def scan_node(index: int, history: bool) -> int:
        return new.add(P.OPS["scan"], outer_ops, dict(attrs, index=index, history=history), loc=loc)

    carry_at = {j: k for k, j in enumerate(kept_carries)}
    for m in members:
        a = graph.attrs(m)
        k = a["index"]
        if k < n_carry and k in dropped:
            continue  # below
        index = carry_at[k] if k < n_carry else emit_at[loop.outputs_of(m)[k]]
        mapping[m] = new.add(P.OPS["scan"], outer_ops, dict(attrs, index=index, history=a["history"]),
                             loc=graph.loc(m), name=graph.name(m))

    histories: dict[int, int] = {}

    def stack_of(x: int) -> int:
        if x in stacked:
            return stacked[x]
        if x in loop.parallel:  # a sequence leaf (or another step-parallel node)
            return batch.stacked(x)
        if x not in histories:  # a new emitted output: the loop stacks it
            histories[x] = scan_node(emit_at[x], True)
        return histories[x]

    for j, (kind, p, q) in dropped.items():
        t = body.type(loop.attrs["outputs"][j])
        if kind == "product":
            pf, _ = batch._flat(stack_of(p), 2)
            qf, _ = batch._flat(stack_of(q), 2)
            total = batch.add(P.matmul, [batch.add(P.transpose, [pf], {"axes": (1, 0)}), qf], {})
        else:
            total = batch.add(P.sum_, [stack_of(p)], {"axis": (0, 1), "keepdims": False})
        if tuple(new.type(total).shape) != tuple(t.shape):
            total = batch.add(P.reshape, [total], {"shape": tuple(t.shape)})
        init = loop.operands[j]
        final = total if _is_zero(graph, init) else batch.add(P.add, [mapping[init], total], {})
        if new.type(final).dtype != t.dtype:
            final = batch.add(P.OPS["cast"], [final], {"dtype": t.dtype.name})
        for m in members:
            if graph.attrs(m)["index"] == j:
                mapping[m] = final
        stats[ACCUMULATE] += 1
    if used_hoisted:
        stats[HOIST] += len(used_hoisted)
    return True


def hoist_loops(graph: Graph, roots: list[int], stats: Counter, steps: list | None = None
                ) -> tuple[Graph, list[int]]:
    """A new graph where every loop does its step-parallel work once before it and its
    accumulated products once after it (the module docstring); the same graph when no loop
    gains."""
    order = sorted(graph.ancestors(roots))
    groups: dict = {}
    for n in order:
        key = loop_key(graph, n)
        if key is not None:
            groups.setdefault(key, []).append(n)
    if not groups:
        return graph, roots
    loops = {members[0]: _Loop(graph, members) for members in groups.values()}
    member_of = {m: first for first, lp in loops.items() for m in lp.members}
    new = Graph()
    mapping: dict[int, int] = {}
    fires = []
    changed = False
    for n in order:
        if n in mapping:
            continue
        first = member_of.get(n)
        if first is not None and n == first:
            start = new.next_id
            if _rewrite(graph, loops[first], new, mapping, stats):
                changed = True
                fires.append((HOIST, tuple(loops[first].members), start, new.next_id))
                continue
        d = graph.data(n)
        mapping[n] = new.add(d["op"], [mapping[o] for o in graph.operands(n)], d["attrs"], loc=d["loc"],
                             name=d["name"], type=d["type"])
    if not changed:
        return graph, roots
    if steps is not None:
        steps.append((mapping, fires))
    return new, [mapping[r] for r in roots]
