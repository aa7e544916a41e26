"""The LLVM backend: fused nodes become native loops compiled by llvmlite; the rest of a function
is a short schedule of steps around them.

A compiled function is a list of steps in topological order. A step is one of:
  - a native kernel (one per fused node) called through ctypes — the GIL is released, and large
    kernels are split across threads by `flowml_parallel_for`;
  - matmul, through the BLAS numpy links (`numpy.matmul(..., out=buffer)`);
  - a view (reshape): no copy;
  - any other op: its numpy reference implementation (softmax, gathers, ...).
Kernels read and write the buffers of the optimizer's memory plan; a param update the plan
marks in place is written straight into the param's array. All kernels of a function live in one
LLVM module, compiled once and kept in the persistent compile cache.

Shapes reach native code only after the call boundary checked every input against its
declaration; kernels take their sizes from the bound dims.
"""

from __future__ import annotations

import ctypes

import numpy as np

from ...errors import FlowInternalError, FlowRuntimeError
from ...ir import ops as P
from ...ir.fused import REDUCTIONS
from ...ir.graph import Graph
from ...ir.types import Sym, resolve_dim
from .. import scalar as S
from ..reference import ReferenceState
from . import cache, jit, parallel, vecmath
from .kernels import ITEMSIZE, KernelWriter

_KERNEL = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64)
_NATIVE_OPS = set(S.FORMULAS) | {"cast", "where", "const"}
MIN_ITEMS_PER_THREAD = 1 << 15


def _dims_ok(t) -> bool:
    """Native code sizes come from dims bound by the inputs: derived dims (N-1) are not."""
    return all(isinstance(d, int) or all(n.isidentifier() for n in d.names) for d in t.shape)


def _native_fused(graph: Graph, n: int) -> bool:
    a = graph.attrs(n)
    types = [graph.type(o) for o in graph.operands(n)] + [graph.type(n)]
    if not all(_dims_ok(t) and t.dtype.name in ITEMSIZE for t in types):
        return False
    if not all(isinstance(d, int) or all(x.isidentifier() for x in d.names) for d in a["shape"]):
        return False
    return all(ins.op in _NATIVE_OPS and ins.dtype in ITEMSIZE for ins in a["body"])


def _size(shape, env) -> int:
    size = 1
    for d in shape:
        size *= resolve_dim(d, env)
    return int(size)


class LLVMState(ReferenceState):
    """Params as numpy arrays that kernels update in place."""

    def set(self, name: str, value: np.ndarray) -> None:
        self.values[name] = np.array(value, order="C")


class _Kernel:
    def __init__(self, node, info, slots_in, slot_out, reduce_name, zero_first):
        self.node = node
        self.info = info
        self.slots_in = slots_in
        self.slot_out = slot_out
        self.zero_first = zero_first
        self.fn = None
        self.address = 0


class LLVMExecutable:
    def __init__(self, graph: Graph, outputs: list[int], updates: list[tuple[str, int]], plan=None):
        self.graph = graph
        self.outputs = outputs
        self.updates = updates
        self.plan = plan
        targets = list(outputs) + [n for _, n in updates]
        self.nodes = sorted(graph.ancestors(targets))
        if any(graph.op(n).lazy for n in self.nodes):
            self._lazy = True  # `if` picks one branch: run it with the reference evaluator
        else:
            self._lazy = False
        self.inplace = dict(plan.inplace) if plan is not None else {}
        self._inplace_nodes = {v: name for name, v in self.inplace.items()}
        self.slot: dict[object, int] = {}
        self.kernels: dict[int, _Kernel] = {}
        self.ir_text = ""
        self.module = None
        self._buffers: dict[tuple, dict[int, np.ndarray]] = {}
        if not self._lazy:
            self._build()

    # ------------------------------------------------------------ compile

    def _slot(self, key) -> int:
        if key not in self.slot:
            self.slot[key] = len(self.slot)
        return self.slot[key]

    def _build(self) -> None:
        g = self.graph
        mathlib = vecmath.MathLib()
        functions, intrinsics = [], set()
        for n in self.nodes:
            if g.op(n).name != "fused" or not _native_fused(g, n):
                continue
            a = g.attrs(n)
            operands = g.operands(n)
            slots = {k: self._slot(("ptr", o)) for k, o in enumerate(operands)}
            slots["out"] = self._slot(("ptr", n))
            dims = {name: self._slot(("dim", name)) for t in [g.type(o) for o in operands] + [g.type(n)]
                    for d in t.shape if isinstance(d, Sym) for name in d.names}
            for d in a["shape"]:
                if isinstance(d, Sym):
                    for name in d.names:
                        dims[name] = self._slot(("dim", name))
            writer = KernelWriter(f"k{n}", g.type(n), [g.type(o) for o in operands], a["body"], a["reduce"],
                                  a["shape"], slots, dims, mathlib)
            text, info = writer.write()
            functions.append(text)
            intrinsics |= writer.b.intrinsics
            zero_first = info.atomic_sum
            self.kernels[n] = _Kernel(n, info, [slots[k] for k in range(len(operands))], slots["out"],
                                      a["reduce"], zero_first)
        if not functions:
            return
        self.ir_text = "\n\n".join(functions + sorted(intrinsics) + [mathlib.declarations()]) + "\n"
        self.module = cache.compile_cached(self.ir_text, "llvm-kernels-v1", name="flowml_fn")
        for k in self.kernels.values():
            k.address = self.module.address(k.info.name)
            k.fn = _KERNEL(k.address)

    # ------------------------------------------------------------ run

    def _buffers_for(self, env: dict[str, int]) -> dict[int, np.ndarray]:
        """Arrays of the memory plan's buffers for this binding of the dims (kept for reuse)."""
        key = tuple(sorted(env.items()))
        found = self._buffers.get(key)
        if found is not None:
            return found
        g = self.graph
        by_buffer: dict[int, np.ndarray] = {}
        out: dict[int, np.ndarray] = {}
        assign = self.plan.assign if self.plan is not None else {}
        for n in self.kernels:
            if n in self._inplace_nodes:
                continue
            t = g.type(n)
            shape = tuple(resolve_dim(d, env) for d in t.shape)
            b = assign.get(n)
            if b is None:
                out[n] = np.empty(shape, dtype=t.dtype)
                continue
            if b not in by_buffer:
                by_buffer[b] = np.empty(_size(t.shape, env) * t.dtype.itemsize, dtype=np.uint8)
            out[n] = by_buffer[b][: _size(t.shape, env) * t.dtype.itemsize].view(t.dtype).reshape(shape)
        if len(self._buffers) > 8:
            self._buffers.clear()  # many shapes in turn: don't keep them all
        self._buffers[key] = out
        return out

    def __call__(self, inputs: dict[str, np.ndarray], state: LLVMState, env: dict[str, int]):
        if self._lazy:
            from ..reference import ReferenceExecutable
            return ReferenceExecutable(self.graph, self.outputs, self.updates)(inputs, state, env)
        g = self.graph
        env = dict(env)
        buffers = self._buffers_for(env)
        ctx = np.zeros(len(self.slot) + 1, dtype=np.int64)
        for key, s in self.slot.items():
            if key[0] == "dim":
                ctx[s] = env[key[1]]
        ctx_ptr = ctx.ctypes.data
        values: dict[int, np.ndarray] = {}
        slot = self.slot
        with np.errstate(all="ignore"):
            for n in self.nodes:
                op = g.op(n)
                if op is P.input_:
                    v = inputs[g.attrs(n)["name"]]
                elif op is P.param:
                    v = state.values[g.attrs(n)["name"]]
                elif op is P.const:
                    v = g.attrs(n)["value"]
                elif op is P.dim:
                    d = g.attrs(n)["dim"]
                    v = np.int64(resolve_dim(d, env))
                elif n in self.kernels:
                    v = self._run_kernel(n, buffers, state, ctx, ctx_ptr, env)
                elif op is P.reshape:
                    v = values[g.operands(n)[0]].reshape(tuple(resolve_dim(d, env) for d in g.type(n).shape))
                elif op is P.matmul:
                    a, b = (values[o] for o in g.operands(n))
                    v = np.matmul(a, b)
                else:
                    v = self._reference_step(n, [values[o] for o in g.operands(n)], env)
                values[n] = v
                s = slot.get(("ptr", n))
                if s is not None:
                    if not (isinstance(v, np.ndarray) and v.flags.c_contiguous):
                        v = values[n] = np.ascontiguousarray(v) if np.ndim(v) else np.array(v)
                    ctx[s] = v.ctypes.data
        new_values = {}
        for name, n in self.updates:
            if self.inplace.get(name) == n:
                continue
            new_values[name] = np.array(values[n], dtype=g.type(n).dtype)
        for name, v in new_values.items():
            state.values[name] = v
        return [values[n] for n in self.outputs]

    def _run_kernel(self, n, buffers, state, ctx, ctx_ptr, env):
        k = self.kernels[n]
        name = self._inplace_nodes.get(n)
        out = state.values[name] if name is not None else buffers[n]
        ctx[k.slot_out] = out.ctypes.data
        g = self.graph
        reduce = g.attrs(n)["reduce"]
        if reduce is not None and reduce[0] in ("max", "min"):
            shape = g.attrs(n)["shape"]
            if any(resolve_dim(shape[a], env) == 0 for a in reduce[1]):
                raise FlowRuntimeError(f"zero-size array to reduction operation {reduce[0]} which has no "
                                       f"identity", g.loc(n))
        if k.zero_first:
            out[...] = 0
        extent = _size(k.info.parallel_axis_extent, env) if k.info.parallel_axis_extent else 1
        if extent == 0:
            k.fn(ctx_ptr, 0, 0)  # (a reduction over an empty axis still sets its identity)
            return out
        total = _size(g.attrs(n)["shape"], env)
        threads = parallel.threads_for(total, MIN_ITEMS_PER_THREAD) if k.info.splittable else 1
        threads = min(threads, extent)
        if threads > 1:
            parallel.parallel_for(k.address, ctx_ptr, extent, threads)
        else:
            k.fn(ctx_ptr, 0, extent)
        return out

    def _reference_step(self, n, args, env):
        g = self.graph
        op = g.op(n)
        attrs = g.attrs(n)
        try:
            out = op.impl(*args, env=env, **attrs) if op.needs_env else op.impl(*args, **attrs)
        except (IndexError, ValueError, ZeroDivisionError, TypeError) as e:
            raise FlowRuntimeError(f"{op.name} failed: {e}", g.loc(n)) from None
        out = np.asarray(out)
        t = g.type(n)
        if out.dtype != t.dtype:
            raise FlowInternalError(f"{op.name} (%{n}) produced {out.dtype}, its type says {t}", g.loc(n))
        for d, actual in zip(t.shape, out.shape):  # bind derived dims (N-1) as they appear
            if isinstance(d, Sym) and len(d.names) == 1 and d.coeff == 1 and d.names[0] not in env:
                env[d.names[0]] = actual
        return out

    # ------------------------------------------------------------ inspection

    def llvm_ir(self) -> str:
        return self.ir_text

    def optimized_llvm_ir(self) -> str:
        return self.module.optimized_ir() if self.module is not None else ""

    def assembly(self) -> str:
        return self.module.assembly() if self.module is not None else ""


class LLVMBackend:
    name = "llvm"

    def create_state(self, values: dict[str, np.ndarray]) -> LLVMState:
        return LLVMState(values)

    def compile(self, graph: Graph, outputs: list[int], updates: list[tuple[str, int]], plan=None):
        return LLVMExecutable(graph, outputs, updates, plan)
