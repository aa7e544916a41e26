"""Data parallelism: rewrite a step function so that each rank, holding a shard of the rows of
every input, makes the same update as one process holding all the rows.

Each `grad(cost, ...)` result the step uses is replaced by its allreduce before anything else
uses it — never the params after the update, which is right only for plain SGD: Adam,
momentum and gradient clipping see the global gradient. How the per-rank gradients combine
follows the cost's reduction over the rows (the sharded axis):

    cost = Σ terms, each (up to a factor that does not depend on the rows) one of
      mean(f(rows))  -> the average of the per-rank gradients weighted by rows: Σ_r n_r g_r / Σ_r n_r
      sum(f(rows))   -> their sum
      no rows        -> (a penalty on the params) the same on every rank: kept once

where f is row-wise (row i of f depends only on row i of the inputs: elementwise math, matmul by
params, conv/pool, log-softmax along a row, indexing row i...). A cost the pass cannot put in
this form (a max over the rows, a log of a mean, a batch statistic) is a located error asking for
an explicit `allreduce` of the gradients (which the pass then leaves alone). Updates that depend
on the rows other than through the gradients would differ between ranks: also an error.

Random draws in the step (dropout masks, noise) read a key offset by the rank, so each rank
draws its own numbers for its rows while the shared stream key stays the same everywhere.

The gradients are packed into flat buckets (one per dtype and kind, split at `bucket_bytes`, as
PyTorch DDP and Horovod do), so a step makes a few allreduces, not one per param; a "mean"
bucket carries its rank's row count as its last element, so the weights cost no extra message.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import FlowError
from ..ir.ops import collective as C
from ..ir import lib as L
from ..ir import ops as P
from ..ir.graph import DerivativeRecord, Graph, at
from ..ir.lib import Var
from ..ir.types import Sym
from ..program import FnDecl, Program, UpdateDecl
from .grad import grad

BUCKET_BYTES = 25 << 20  # PyTorch DDP's default bucket size
_EXPLICIT = ("reduce the gradients across ranks yourself, e.g. gw = allreduce(grad(cost, w), op=\"mean\") "
             "(the pass leaves a gradient that only feeds a collective alone), or write the cost as "
             "mean(...) or sum(...) over the rows")


class DistributeError(FlowError):
    pass


@dataclass
class Plan:
    """What the pass did to one step fn (for `flowml compile --distributed` and the tests)."""

    fn: FnDecl
    kinds: dict[str, str]        # param -> "mean", "sum" or "rep" (how its gradient combines)
    buckets: list[list[str]]     # the params of each allreduce, in order


def row_dim(program: Program, fn: FnDecl):
    """The symbolic dim of the rows that --distributed splits (the first axis of every input)."""
    dims = {}
    for name in fn.inputs:
        t = program.inputs[name].var.type
        if t.ndim == 0:
            continue
        dims[name] = t.shape[0]
    found = set(dims.values())
    if len(found) != 1 or not isinstance(next(iter(found)), Sym) or len(next(iter(found)).names) != 1 \
            or next(iter(found)).coeff != 1:
        listing = ", ".join(f"{n}: {program.inputs[n].var.type}" for n in fn.inputs) or "none"
        raise DistributeError(f"--distributed splits the rows of every input of fn {fn.name}, so their first axis "
                              f"must be one symbolic dim like N; the inputs are {listing}", fn.loc)
    return next(iter(found))


class _Rows:
    """Facts about the nodes of a graph relative to the sharded rows."""

    def __init__(self, graph: Graph, inputs: set[int], rows: Sym):
        self.g = graph
        self.rows = rows
        self.inputs = inputs
        self._dep: dict[int, bool] = {}
        self._rowwise: dict[int, bool] = {}

    def depends(self, n: int) -> bool:
        """Does n's value depend on which rows this rank holds (through the inputs or the row
        count)? A collective's result is the same on every rank."""
        if n not in self._dep:
            g = self.g
            op = g.op(n)
            if n in self.inputs:
                dep = True
            elif isinstance(op, C.Collective):
                dep = False
            elif op is P.dim:
                d = g.attrs(n)["dim"]
                dep = isinstance(d, Sym) and self.rows.names[0] in d.names
            else:
                dep = self.rows.names[0] in g.type(n).symbols() or any(self.depends(o) for o in g.operands(n))
            self._dep[n] = dep
        return self._dep[n]

    def _leading(self, n: int) -> bool:
        t = self.g.type(n)
        return t.ndim >= 1 and t.shape[0] == self.rows

    def rowwise(self, n: int) -> bool:
        """Is row i of n (axis 0, of size rows) a function of row i of the inputs alone?"""
        if n not in self._rowwise:
            self._rowwise[n] = self._leading(n) and self._rowwise_op(n)
        return self._rowwise[n]

    def _ok(self, o: int, out_ndim: int) -> bool:
        """An operand of a row-wise op: row-wise and aligned, or the same for every row."""
        if not self.depends(o):
            return self.g.type(o).ndim < out_ndim or self.g.type(o).shape[0] == 1
        return self.rowwise(o) and self.g.type(o).ndim == out_ndim

    def _rowwise_op(self, n: int) -> bool:
        g = self.g
        op = g.op(n)
        a = g.attrs(n)
        ops = g.operands(n)
        nd = g.type(n).ndim
        if n in self.inputs:
            return True
        if op is P.arange:  # the local row numbers 0..n-1 (indexing row i by i)
            return a["start"] == 0 and a["step"] == 1 and a["stop"] == self.rows
        if op.name == "random":  # a rank's own draws for its rows (dropout masks differ by design)
            return True
        if op.elementwise:
            return all(self._ok(o, nd) for o in ops)
        if op is P.matmul:
            return self.rowwise(ops[0]) and g.type(ops[0]).ndim >= 2 and not self.depends(ops[1])
        if op is P.reshape or op is P.broadcast_to:
            return self.rowwise(ops[0]) and g.type(ops[0]).shape[0] == self.rows
        if op is P.transpose:
            return tuple(a["axes"])[:1] == (0,) and self.rowwise(ops[0])
        if op.name in ("sum", "prod", "max", "min", "logsumexp", "argmax", "argmin", "softmax", "log_softmax"):
            axis = a.get("axis")
            axes = range(g.type(ops[0]).ndim) if axis is None else (axis if isinstance(axis, tuple) else (axis,))
            return 0 not in axes and self.rowwise(ops[0])
        if op.name == "onehot":
            return self.rowwise(ops[0])
        if op.name in ("categorical_crossentropy", "conv2d", "max_pool2d"):
            return self.rowwise(ops[0]) and all(self._ok(o, g.type(o).ndim + 1) or self.rowwise(o) for o in ops[1:])
        if op is P.index:
            return self._rowwise_index(ops, a["spec"])
        return False

    def _rowwise_index(self, ops, spec) -> bool:
        x, arrays = ops[0], ops[1:]
        if not self.rowwise(x) or not spec:
            return False
        first = spec[0]
        if first[0] == "slice" and first[1:] in ((None, None, None), (0, self.rows, None)):
            return all(item[0] in ("slice", "int") for item in spec[1:]) and not any(map(self.depends, arrays))
        if first[0] == "arr" and self.g.op(arrays[first[1] - 1]) is P.arange and self.rowwise(arrays[first[1] - 1]):
            others = [arrays[i[1] - 1] for i in spec[1:] if i[0] == "arr"]
            return all(i[0] in ("arr", "int") for i in spec[1:]) and \
                all(self.rowwise(o) and self.g.type(o).ndim == 1 for o in others)
        return False

    # ------------------------------------------------------------ the cost

    def _is_row_count(self, n: int) -> bool:
        """cast(dim(c * rows)): the number of elements a mean over the rows divides by."""
        g = self.g
        if g.op(n) is P.cast:
            n = g.operands(n)[0]
        if g.op(n) is not P.dim:
            return False
        d = g.attrs(n)["dim"]
        return isinstance(d, Sym) and d.names == self.rows.names

    def terms(self, v: Var) -> list[tuple[Var, str]]:
        """cost = Σ terms, each classified "mean", "sum" or "rep" (see the module doc)."""
        g = self.g
        n = v.id
        op = g.op(n)
        ops = [Var(g, o) for o in g.operands(n)]
        if not self.depends(n):
            return [(v, "rep")]
        with at(g.loc(n)):
            if op is P.add:
                return self.terms(ops[0]) + self.terms(ops[1])
            if op is P.sub:
                return self.terms(ops[0]) + [(-t, k) for t, k in self.terms(ops[1])]
            if op is P.neg:
                return [(-t, k) for t, k in self.terms(ops[0])]
            if op is P.mul and g.type(n).ndim == 0:
                for a, b in (ops, ops[::-1]):
                    if not self.depends(b.id):
                        return [(t * b, k) for t, k in self.terms(a)]
            if op is P.div and g.type(n).ndim == 0:
                a, b = ops
                if not self.depends(b.id):
                    return [(t / b, k) for t, k in self.terms(a)]
                if self._is_row_count(b.id):
                    inner = self.terms(a)
                    if all(k == "sum" for _, k in inner):
                        return [(t / b, "mean") for t, _ in inner]
            if op is P.sum_ and self.rowwise(ops[0].id):
                return [(v, "sum")]
        raise DistributeError(
            "--distributed cannot tell how this part of the cost combines across ranks (it is neither a mean "
            "nor a sum over the rows of row-wise values, nor free of the rows)", g.loc(n),
            notes=[_EXPLICIT])


def _total(terms: list[Var]) -> Var:
    out = terms[0]
    for t in terms[1:]:
        out = out + t
    return out


def _grad_records(program: Program, targets: list[int]):
    g = program.graph
    used = g.ancestors(targets)
    found = []
    for rec in g.derivatives:
        if not any(r in used for r in rec.results):
            continue
        seed_ok = rec.kind == "vjp" and len(rec.ys) == 1 and all(
            g.op(s) is P.const and np.all(g.attrs(s)["value"] == 1) for s in rec.directions)
        found.append((rec, seed_ok))
    return found


def distribute(program: Program, fn_name: str, bucket_bytes: int = BUCKET_BYTES) -> Plan:
    """Rewrite fn `fn_name` of `program` for data-parallel training (in place: the program's fn
    is replaced; call before building the Model)."""
    g = program.graph
    fn = program.functions[fn_name]
    rows = row_dim(program, fn)
    inputs = {program.inputs[n].var.id for n in fn.inputs}
    facts = _Rows(g, inputs, rows)
    targets = [v.id for _, v in fn.outputs] + [u.value.id for u in fn.updates]
    records = _grad_records(program, targets)
    used = g.ancestors(targets)
    results = {r for rec, _ in records for r in rec.results}
    replace: dict[int, tuple] = {}  # result -> (its pending slots, its local "rep" part)
    kinds: dict[str, str] = {}
    pending: list[tuple[str, Var, str]] = []  # (param name, local gradient, "mean" | "sum")
    for rec, seed_ok in records:
        cost = rec.ys[0]
        loc = g.loc(cost)
        if not any(facts.depends(y) for y in rec.ys):
            continue  # a derivative free of the rows is the same on every rank
        if all(isinstance(g.op(u), C.Collective) for r in rec.results if r in used for u in g.users(r)
               if u in used):
            continue  # the model reduces these gradients itself
        if not seed_ok:
            raise DistributeError("--distributed handles the gradients of grad(...); this step uses another "
                                  "derivative (rop, lop, jacobian...) of the rows", loc, notes=[_EXPLICIT])
        if g.ancestors([cost]) & results:
            raise DistributeError("--distributed cannot rewrite a gradient of a cost that itself uses gradients",
                                  loc, notes=[_EXPLICIT])
        with at(loc):
            classified = facts.terms(Var(g, cost))
        groups: dict[str, list[Var]] = {}
        for t, k in classified:
            groups.setdefault(k, []).append(t)
        if "mean" in groups and "rep" in groups:  # the weights sum to one: the penalty's gradient survives
            groups["mean"] += groups.pop("rep")
        xs = [Var(g, x) for x in rec.xs]
        names = [g.name(x) if g.op(x) is P.param else f"%{x}" for x in rec.xs]
        if set(groups) == {"rep"}:
            kinds.update((nm, "rep") for nm in names)
            continue
        with at(loc):
            if len(groups) == 1:  # the common case: the gradient as taken
                (kind,) = groups
                per_kind = {kind: [Var(g, r) for r in rec.results]}
            else:  # several kinds: take each kind's gradient apart
                per_kind = {k: grad(_total(ts), *xs, disconnected="zero") for k, ts in groups.items()}
        rep = per_kind.pop("rep", None)
        for i, (nm, r) in enumerate(zip(names, rec.results)):
            if r not in used:
                continue
            parts = [(k, gs[i]) for k, gs in per_kind.items()]
            kinds[nm] = "+".join(k for k, _ in parts)
            slots = []
            for k, local in parts:
                slots.append(len(pending))
                pending.append((nm, local, k))
            replace[r] = (slots, rep[i] if rep is not None else None)
    reduced, buckets = _allreduce_buckets(g, pending, rows, bucket_bytes, fn.loc)
    mapping = {}
    for r, (slots, rep) in replace.items():
        with at(g.loc(r)):
            total = _total([reduced[s] for s in slots] + ([rep] if rep is not None else []))
        mapping[r] = total.id
    new, _ = _substitute(program, fn, mapping)
    new = _own_random_streams(program, new, facts)
    _check_updates(program, new, facts, set(mapping.values()))
    program.functions[fn_name] = new
    return Plan(new, kinds, buckets)


RANK_STRIDE = 1 << 40  # a rank's random streams: the model's seed + rank · 2^40


def _own_random_streams(program: Program, fn: FnDecl, facts: _Rows) -> FnDecl:
    """Each rank draws its own random numbers (dropout masks, noise) for its rows: every random
    op of the step reads the key (seed + rank · 2^40, calls), not the shared key, which stays the
    same on every rank. Derivatives through the draws are recorded again for the copies, so the
    optimizer can still take them again after its stability rewrites."""
    g = program.graph
    targets = [v.id for _, v in fn.outputs] + [u.value.id for u in fn.updates]
    used = g.ancestors(targets)
    randoms = [n for n in sorted(used) if g.op(n) is P.random]
    if not randoms:
        return fn
    keyed: dict[int, int] = {}
    mapping = {}
    for n in randoms:
        d = g.data(n)
        (key,) = g.operands(n)
        if key not in keyed:
            with at(d["loc"]):
                stride = L.constant(np.array([RANK_STRIDE, 0], dtype=np.int64), g)
                keyed[key] = (Var(g, key) + C.rank(g) * stride).id
        mapping[n] = g.add(d["op"], [keyed[key]], d["attrs"], loc=d["loc"], name=d["name"], type=d["type"])
        facts._dep[mapping[n]] = True  # the draws differ between ranks
    new, new_id = _substitute(program, fn, mapping)
    for rec in list(g.derivatives):
        if any(r in used and r in new_id for r in rec.results):
            g.derivatives.append(DerivativeRecord(rec.kind, tuple(new_id.get(i, i) for i in rec.ys), rec.xs,
                                                  tuple(new_id.get(i, i) for i in rec.directions),
                                                  tuple(new_id.get(i, i) for i in rec.results)))
    return new


def _allreduce_buckets(g: Graph, pending, rows: Sym, bucket_bytes: int, loc):
    """One allreduce per bucket of flattened gradients; returns the reduced gradient of each
    pending entry (reshaped back) and the params of each bucket."""
    reduced: dict[int, Var] = {}
    buckets: list[list[str]] = []
    groups: dict[tuple, list[int]] = {}
    for i, (_, local, kind) in enumerate(pending):
        groups.setdefault((kind, local.dtype.str), []).append(i)
    with at(loc):
        count = None
        for (kind, _), members in groups.items():
            chunk: list[int] = []
            size = 0
            for i in members + [None]:
                nbytes = 0 if i is None else int(np.prod(pending[i][1].shape, dtype=np.int64)) * pending[i][1].dtype.itemsize
                if chunk and (i is None or size + nbytes > bucket_bytes):
                    if kind == "mean" and count is None:
                        count = L.cast(L.dim(g, rows), pending[chunk[0]][1].dtype)
                    _one_bucket(g, [pending[j][1] for j in chunk], kind, count, chunk, reduced)
                    buckets.append([pending[j][0] for j in chunk])
                    chunk, size = [], 0
                if i is not None:
                    chunk.append(i)
                    size += nbytes
    return reduced, buckets


def _one_bucket(g: Graph, grads: list[Var], kind: str, count, slots: list[int], reduced: dict) -> None:
    sizes = [int(np.prod(v.shape, dtype=np.int64)) for v in grads]
    flat = [L.reshape(v, (s,)) for v, s in zip(grads, sizes)]
    if kind == "mean":  # Σ_r n_r g_r and Σ_r n_r in one message
        flat = [f * count for f in flat] + [L.reshape(L.cast(count, grads[0].dtype), (1,))]
    packed = flat[0] if len(flat) == 1 else L.concatenate(flat, 0)
    out = C.allreduce(packed, "sum")
    total = out[sum(sizes)] if kind == "mean" else None
    start = 0
    for slot, v, s in zip(slots, grads, sizes):
        part = out[start:start + s]
        if total is not None:
            part = part / total
        reduced[slot] = L.reshape(part, v.shape)
        start += s


def _substitute(program: Program, fn: FnDecl, mapping: dict[int, int]) -> tuple[FnDecl, dict[int, int]]:
    """fn with every use of node k replaced by node mapping[k] (new nodes for what changes),
    and the map from old to new nodes."""
    g = program.graph
    targets = [v.id for _, v in fn.outputs] + [u.value.id for u in fn.updates]
    new_id: dict[int, int] = dict(mapping)
    for n in sorted(g.ancestors(targets)):
        if n in new_id:
            continue
        ops = g.operands(n)
        if any(o in new_id for o in ops):
            d = g.data(n)
            new_id[n] = g.add(d["op"], [new_id.get(o, o) for o in ops], d["attrs"], loc=d["loc"], name=d["name"],
                              type=d["type"])

    def mapped(v: Var) -> Var:
        return Var(g, new_id.get(v.id, v.id))
    return FnDecl(fn.name, list(fn.inputs), [(nm, mapped(v)) for nm, v in fn.outputs],
                  [UpdateDecl(u.param, mapped(u.value), u.loc) for u in fn.updates], fn.loc), new_id


def _check_updates(program: Program, fn: FnDecl, facts: _Rows, reduced: set[int]) -> None:
    """After the rewrite, every update must be the same on every rank."""
    facts._dep.update({r: False for r in reduced})
    for u in fn.updates:
        if facts.depends(u.value.id):
            raise DistributeError(f"the update of param '{u.param}' depends on this rank's rows other than through "
                                  "grad(...), so the ranks would drift apart", u.loc, notes=[_EXPLICIT])
