"""The fused node: a region of elementwise ops (optionally ending in a reduction) run as one
kernel. The fuse phase builds them; every backend runs them.

A fused node's operands are the region's inputs (arrays of any shapes that broadcast to the
node's *iteration space*: the broadcast of all operand shapes). Its attrs:

- `body`: a tuple of `Instr`s in SSA form. Value k < nin is operand k; value nin + i is the result
  of `body[i]`. An instruction names an elementwise primitive of `flowml.ir.ops` (`add`, `exp`,
  `where`, `cast`, ...) or `const` (a scalar literal: attrs `value`), its argument values, its
  attrs (`cast` has `dtype`) and its result dtype. Every instruction is computed at every point
  of the iteration space.
- `shape`: the iteration space (dims may be symbolic).
- `reduce`: None, or `(name, axis, keepdims)` with name in sum/prod/max/min: the body's result is
  reduced over `axis` (a tuple of ints of the iteration space) — `sum((x - y)**2)` is one pass.

The result is the last instruction's value (or operand 0 when the body is empty, e.g. a bare
reduction). The reference implementation below evaluates the body with each primitive's own
numpy implementation, so a fused node computes exactly what its ops computed unfused.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import FlowRuntimeError
from . import ops as P
from .graph import ShapeError
from .types import resolve_dim


@dataclass(frozen=True)
class Instr:
    op: str                 # an elementwise primitive's name, or "const"
    args: tuple[int, ...]   # value indices
    attrs: tuple            # sorted (key, value) pairs
    dtype: str              # the result's dtype, by numpy's name ("float64": np.dtype(...).name)

    def attr(self, key, default=None):
        return dict(self.attrs).get(key, default)


# (derived from the ops' `kernel_reduce` property)
REDUCTIONS = tuple(name for name, op in P.OPS.items() if op.kernel_reduce)


class Fused(P.Op):
    """One kernel: `body` over the iteration space, then an optional `reduce`."""

    elementwise = False
    needs_env = True  # `shape`, the iteration space, may have symbolic dims

    def __init__(self):
        super().__init__("fused", verb="compute")

    def infer(self, types, attrs):
        raise ShapeError("fused nodes are typed when created")

    def impl(self, *arrays, body, reduce, shape, env=None):
        values = [np.asarray(a) for a in arrays]
        for ins in body:
            if ins.op == "const":
                values.append(np.asarray(ins.attr("value"), dtype=ins.dtype))
                continue
            if ins.op == "broadcast_to":  # the final broadcast below does it
                values.append(values[ins.args[0]])
                continue
            if ins.op == "reshape":  # of a one-element value: its shape is all ones
                values.append(np.reshape(values[ins.args[0]], ins.attr("shape")))
                continue
            op = P.OPS[ins.op]
            out = op.impl(*(values[a] for a in ins.args), **dict(ins.attrs))
            values.append(np.asarray(out).astype(ins.dtype, copy=False))
        result = np.broadcast_to(values[-1], resolve_shape(shape, env or {}))
        if reduce is None:
            return np.array(result)  # (ascontiguousarray would make a 0-d result 1-d)
        name, axis, keepdims = reduce
        op = P.OPS[name]
        return op.impl(result, axis=axis, keepdims=keepdims)


fused = Fused()


def empty_reduction_error(reduce, shape, loc=None) -> FlowRuntimeError | None:
    """The error of a fused node whose `reduce` combines no elements by an op without an
    identity (max / min over an empty axis: numpy refuses it too), else None. `shape` is the
    iteration space with its dims resolved. Every native backend raises this one."""
    if reduce is None:
        return None
    name, axis, _ = reduce
    if P.OPS[name].has_identity or all(shape[a] != 0 for a in axis):
        return None
    return FlowRuntimeError(f"{name} over an empty axis: zero-size array to reduction operation {name} "
                            "which has no identity", loc)


def resolve_shape(shape, env) -> tuple[int, ...]:
    return tuple(resolve_dim(d, env) for d in shape)
