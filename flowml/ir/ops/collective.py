"""Collectives: ops that combine a value across the ranks of a data-parallel run (JAX's `psum`
inside `pmap` is the model), and the library functions that build them.

    allreduce(x, op="sum"|"mean"|"max")   every rank gets the sum / mean / max of every rank's x
    allgather(x)                           every rank gets [x of rank 0, x of rank 1, ...] (K rows)
    broadcast(x, root=0)                   every rank gets rank root's x
    rank(), world_size()                   this process's rank and the number of ranks (i64)

Each is defined once here (type rule, numpy implementation through `flowml.distributed`, VJP
and JVP as graphs). With one process they are identities, so a model using them runs
unchanged without MPI. Every rank must run the same collectives in the same order with the
same shapes (as in MPI): a collective inside an `if` whose branch differs between ranks hangs.
The ops carry `communicates = True`, so the optimizer never folds them into constants.
"""

from __future__ import annotations

import numpy as np

from ...errors import FlowTypeError
from .. import lib as L
from ..graph import ShapeError, current_loc
from ..types import DTYPES, TensorType, is_float
from .core import Op

REDUCTIONS = ("sum", "mean", "max")


def _world():
    from ...distributed import world
    return world()


class Collective(Op):
    communicates = True  # talks to the other ranks: never constant-folded, never evaluated twice


class Allreduce(Collective):
    def __init__(self):
        super().__init__("allreduce", vjp=self._rule, jvp=self._jvp_rule, verb="allreduce")

    def infer(self, types, attrs):
        (t,) = types
        op = attrs["reduction"]
        if t.dtype.kind == "b":
            raise ShapeError(f"cannot allreduce {t}: cast the bools to a number first")
        if op == "mean" and not is_float(t.dtype):
            raise ShapeError(f"allreduce(op=\"mean\") of {t}: the mean needs floats; cast first")
        return TensorType(t.dtype, t.shape)

    def impl(self, x, reduction):
        return _world().allreduce(np.asarray(x), reduction)

    @staticmethod
    def _max_weights(x, out):
        """Where this rank holds the maximum, split evenly among the ranks that tie."""
        hit = L.cast(L.equal(x, out), x.dtype)
        return hit / allreduce(hit, "sum")

    @staticmethod
    def _rule(g, out, x, reduction):
        # d/dx_r of Σ_s <g_s, out> = Σ_s g_s ∂out/∂x_r: the sum (mean) of the cotangents
        if reduction == "max":
            return [lambda: allreduce(g, "sum") * Allreduce._max_weights(x, out)]
        return [lambda: allreduce(g, reduction)]

    @staticmethod
    def _jvp_rule(tangents, out, x, reduction):
        (t,) = tangents
        if t is None:
            return None
        if reduction == "max":
            return allreduce(t * Allreduce._max_weights(x, out), "sum")
        return allreduce(t, reduction)


class Allgather(Collective):
    def __init__(self):
        super().__init__("allgather", vjp=self._rule, jvp=self._jvp_rule, verb="allgather")

    def infer(self, types, attrs):
        (t,) = types
        return TensorType(t.dtype, (attrs["size"],) + tuple(t.shape))

    def impl(self, x, size):
        w = _world()
        if w.size != size:
            raise ValueError(f"the graph was built for {size} rank(s) but runs on {w.size}")
        return w.allgather(np.asarray(x))

    @staticmethod
    def _rule(g, out, x, size):
        # rank r's x is row r of every rank's result: its cotangent is row r of Σ_s g_s
        return [lambda: L.getitem(allreduce(g, "sum"), rank(x.graph))]

    @staticmethod
    def _jvp_rule(tangents, out, x, size):
        return None if tangents[0] is None else allgather(tangents[0])


class Broadcast(Collective):
    def __init__(self):
        super().__init__("broadcast", vjp=self._rule, jvp=self._jvp_rule, verb="broadcast")

    def infer(self, types, attrs):
        (t,) = types
        return TensorType(t.dtype, t.shape)

    def impl(self, x, root):
        return _world().broadcast(np.asarray(x), root)

    @staticmethod
    def _rule(g, out, x, root):
        # only the root's x reaches the result; it reaches every rank's
        return [lambda: L.where(L.equal(rank(x.graph), root), allreduce(g, "sum"), 0)]

    @staticmethod
    def _jvp_rule(tangents, out, x, root):
        return None if tangents[0] is None else broadcast(tangents[0], root)


class WorldFact(Collective):
    """rank() or world_size(): an i64 scalar of the run (no operands)."""

    def __init__(self, name, read):
        super().__init__(name, jvp=lambda ts, y: None)
        self.read = read

    def infer(self, types, attrs):
        return TensorType(DTYPES["i64"], ())

    def impl(self):
        return np.int64(self.read(_world()))


allreduce_op = Allreduce()
allgather_op = Allgather()
broadcast_op = Broadcast()
rank_op = WorldFact("rank", lambda w: w.rank)
world_size_op = WorldFact("world_size", lambda w: w.size)
COLLECTIVES = (allreduce_op, allgather_op, broadcast_op, rank_op, world_size_op)


# ----------------------------------------------------------------- library functions


def _var(x, what):
    if not isinstance(x, L.Var):
        raise FlowTypeError(f"{what} takes a value of the model, not {x!r}", current_loc())
    return x


def allreduce(x, op="sum"):
    """Every rank's x combined by `op` ("sum", "mean" or "max"), on every rank."""
    if op not in REDUCTIONS:
        raise FlowTypeError(f"allreduce: op must be one of {', '.join(map(repr, REDUCTIONS))}, not {op!r}",
                            current_loc())
    return L.apply(allreduce_op, [_var(x, "allreduce")], reduction=op)


def allgather(x):
    """[x of rank 0, x of rank 1, ...] on every rank: a new leading axis, as long as there are
    ranks — known when the graph is built, as a pmap's axis size is in JAX (building it in a
    run launched by mpiexec loads MPI)."""
    return L.apply(allgather_op, [_var(x, "allgather")], size=_world().size)


def broadcast(x, root=0):
    """Rank `root`'s x, on every rank."""
    root = L.static_int(root, "broadcast's root")
    return L.apply(broadcast_op, [_var(x, "broadcast")], root=root)


def rank(graph):
    """This process's rank (0 .. world_size() - 1), an i64 scalar."""
    return L.Var(graph, graph.add(rank_op, [], {}))


def world_size(graph):
    """The number of ranks, an i64 scalar (1 without MPI)."""
    return L.Var(graph, graph.add(world_size_op, [], {}))
