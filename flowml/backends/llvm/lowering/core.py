"""Fused kernels (`kernels.KernelWriter`: the loop nest over the iteration space with the
scalar formulas of `flowml.backends.scalar`), and elementwise ops or kernel reductions left
unfused (at -O0, or where the fuse phase is switched off) as one-op kernels."""

from __future__ import annotations

import functools

from ....ir import ops as P
from ....ir.fused import Instr, empty_reduction_error
from ....ir.types import resolve_dim
from ... import scalar as S
from ..kernels import ITEMSIZE, KernelWriter
from . import HostStep, lowers

_FORMULAS = set(S.FORMULAS) | {"cast", "where", "const"}


def lower_kernel(w, n, operands, body, reduce, shape, name: str | None = None) -> None:
    g = w.graph
    types = [g.type(o) for o in operands] + [g.type(n)]
    bad = [t for t in types if t.dtype.name not in ITEMSIZE]
    if bad:
        raise HostStep(f"no native kernels for {bad[0].dtype} values")
    missing = sorted({ins.op for ins in body if ins.op not in _FORMULAS or ins.dtype not in ITEMSIZE})
    if missing:
        raise HostStep(f"no scalar formula for {', '.join(missing)}")
    name = w.program.kernel_prefix + (name or f"k{n}")  # (a loop body's nodes are numbered apart)
    slots = {k: w.program.slot_of(("ptr", o)) for k, o in enumerate(operands)}
    slots["out"] = w.program.slot_of(("ptr", n))
    dims = {d: w.program.slot_of(("dim", d)) for d in _names(types, shape)}
    writer = KernelWriter(name, g.type(n), types[:-1], body, reduce, shape, slots, dims, w.mathlib,
                          metadata_id=w.program.next_id)
    text, info = writer.write()
    w.helper(name, text)
    for declaration in sorted(writer.b.intrinsics):
        w.helper(declaration, declaration)
    fn = w.fn
    if reduce is not None and not P.OPS[reduce[0]].has_identity and reduce[1]:
        # max / min over an empty axis has no value: numpy refuses it, and so do we
        empty = [fn.emit(f"icmp eq i64 {w.dim(shape[a])}, 0", "c") for a in reduce[1]]
        cond = empty[0]
        for e in empty[1:]:
            cond = fn.emit(f"or i1 {cond}, {e}", "c")
        w.fail_if(cond, n, functools.partial(_empty_reduction, reduce, shape))
    extent = w.size(info.parallel_axis_extent) if info.parallel_axis_extent else "1"
    if info.atomic_sum:
        # a full float sum: chunks would add their partials into the output in whatever order the
        # threads finish; one chunk keeps the bits the same on every call
        t = g.type(n)
        fn.line(f"call void @llvm.memset.p0.i64(ptr {w.ptr(n)}, i8 0, i64 {t.dtype.itemsize}, i1 false)")
        w.helper("llvm.memset", "declare void @llvm.memset.p0.i64(ptr, i8, i64, i1)")
        w.launch(name, extent, parallel_ok=False)
        w.note(f"kernel {name}, one thread (a full sum)")
    else:
        w.launch(name, extent, w.size(shape), parallel_ok=info.splittable)
        w.note(f"kernel {name}" + ("" if info.splittable else ", one thread"))


def _names(types, shape) -> set[str]:
    from ..irfunc import dim_names
    names = dim_names(shape)
    for t in types:
        names |= dim_names(t.shape)
    return names


@lowers("fused")
def lower_fused(w, n):
    a = w.attrs(n)
    lower_kernel(w, n, w.operands(n), a["body"], a["reduce"], a["shape"])


def _lone_elementwise(w, n):
    g = w.graph
    ops = g.operands(n)
    op = g.op(n)
    attrs = () if op.name == "broadcast_to" else tuple(sorted(g.attrs(n).items()))
    body = (Instr(op.name, tuple(range(len(ops))), attrs, g.type(n).dtype.name),)
    lower_kernel(w, n, ops, body, None, g.type(n).shape)


def _lone_reduction(w, n):
    g = w.graph
    (x,) = g.operands(n)
    a = g.attrs(n)
    lower_kernel(w, n, [x], (), (g.op(n).name, tuple(a["axis"]), bool(a["keepdims"])), g.type(x).shape)


for _op in P.OPS.values():
    if _op.elementwise and _op.name in _FORMULAS:
        lowers(_op.name)(_lone_elementwise)
    elif _op.kernel_reduce:
        lowers(_op.name)(_lone_reduction)
lowers("broadcast_to")(_lone_elementwise)


def _empty_reduction(reduce, shape, graph, node, info, env):
    """The error of a max / min over an empty axis (an entry point's error describer: a partial
    of a module-level function, so that a lowered program pickles for the warm model cache)."""
    return empty_reduction_error(reduce, tuple(resolve_dim(d, env) for d in shape), graph.loc(node))
