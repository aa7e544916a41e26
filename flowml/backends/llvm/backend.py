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

Re-entrant: the buffers and the slot table are a call's own (a `_Frame`, taken from a per-binding
pool and given back when the call returns), so threads may call one function at once; outputs
are copied out of the frame before it goes back.

Shapes reach native code only after the call boundary checked every input against its
declaration; kernels take their sizes from the bound dims.
"""

from __future__ import annotations

import ctypes

import numpy as np

from ...errors import FlowRuntimeError
from ...ir import ops as P
from ...ir.fused import empty_reduction_error
from ...ir.graph import Graph
from ...ir.types import Sym, bound_by_inputs, resolve_dim
from ...sizes import allocation_failed, check_value
from .. import scalar as S
from ..reference import ReferenceExecutable, ReferenceState, run_op
from . import cache, parallel, vecmath
from .kernels import ITEMSIZE, KernelWriter

_KERNEL = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64)
_NATIVE_OPS = set(S.FORMULAS) | {"cast", "where", "const"}
MIN_ITEMS_PER_THREAD = 1 << 15


def _native_fused(graph: Graph, n: int) -> bool:
    """Native code takes its sizes from the dims the inputs bind (not derived ones like N-1)."""
    a = graph.attrs(n)
    types = [graph.type(o) for o in graph.operands(n)] + [graph.type(n)]
    if not all(bound_by_inputs(t.shape) and t.dtype.name in ITEMSIZE for t in types):
        return False
    if not bound_by_inputs(a["shape"]):
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
    """One compiled fused node: its loop's facts (`info`), where its output's address goes in the
    slot table, and its entry point."""

    def __init__(self, info, slot_out):
        self.info = info
        self.slot_out = slot_out
        self.fn = None
        self.address = 0


class LLVMExecutable:
    owns_outputs = True  # a call returns new arrays (copies out of its frame)

    def __init__(self, graph: Graph, outputs: list[int], updates: list[tuple[str, int]], plan=None):
        self.graph = graph
        self.outputs = outputs
        self.updates = updates
        self.plan = plan
        targets = list(outputs) + [n for _, n in updates]
        self.nodes = sorted(graph.ancestors(targets))
        # `if` picks one branch: a function with one runs on the reference evaluator
        self._lazy = any(graph.op(n).lazy for n in self.nodes)
        self._reference = ReferenceExecutable(graph, outputs, updates) if self._lazy else None
        self._has_scan = any(graph.op(n).name == "scan" for n in self.nodes)
        self.inplace = dict(plan.inplace) if plan is not None else {}
        self._inplace_nodes = {v: name for name, v in self.inplace.items()}
        self.slot: dict[object, int] = {}
        self.kernels: dict[int, _Kernel] = {}
        self.ir_text = ""
        self.module = None
        self._bindings: dict[tuple, _Binding] = {}
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
            self.kernels[n] = _Kernel(info, slots["out"])
        if not functions:
            return
        self.ir_text = "\n\n".join(functions + sorted(intrinsics) + [mathlib.declarations()]) + "\n"
        self.module = cache.compile_cached(self.ir_text, "llvm-kernels-v1", name="flowml_fn")
        for k in self.kernels.values():
            k.address = self.module.address(k.info.name)
            k.fn = _KERNEL(k.address)

    # ------------------------------------------------------------ run
    #
    # Per call only what changes is done in Python: input and param addresses go into the slot
    # table, then the steps run. What depends only on the dims (buffers, their addresses, each
    # kernel's extent and thread count) is set up once per binding of the dims (`_Binding`).

    def _prepare_steps(self) -> None:
        g = self.graph
        # An output that is an updated param, or may be a view of one (reshape, and numpy's
        # slices, transposes... of the reference steps), must keep the old value, but the
        # param's array is overwritten by the update (in place, or by copyto below): such a
        # param is read as a copy.
        updated = {name for name, _ in self.updates}
        keep_old = set()
        stack, seen = list(self.outputs), set()
        while stack:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            op = g.op(n)
            if op is P.param and g.attrs(n)["name"] in updated:
                keep_old.add(n)
            elif not (op.leaf or n in self.kernels or op is P.matmul):  # (those make new arrays)
                stack.extend(g.operands(n))
        steps = []
        for n in self.nodes:
            op = g.op(n)
            operands = g.operands(n)
            slot = self.slot.get(("ptr", n))
            if op is P.input_:
                steps.append(("input", n, g.attrs(n)["name"], slot))
            elif op is P.param:
                steps.append(("param_copy" if n in keep_old else "param", n, g.attrs(n)["name"], slot))
            elif op is P.const:
                steps.append(("const", n, g.attrs(n)["value"], slot))
            elif op is P.dim:
                steps.append(("dim", n, g.attrs(n)["dim"], slot))
            elif n in self.kernels:
                steps.append(("kernel", n, self.kernels[n], slot))
            elif op is P.reshape:
                steps.append(("view", n, (operands[0], g.type(n).shape), slot))
            elif op is P.matmul:
                steps.append(("matmul", n, tuple(operands), slot))
            else:
                steps.append(("ref", n, tuple(operands), slot))
        self.steps = steps

    def _binding(self, env: dict[str, int]) -> "_Binding":
        key = tuple(sorted(env.items()))
        found = self._bindings.get(key)
        if found is None:
            if len(self._bindings) > 8:
                self._bindings.clear()  # many shapes in turn: don't keep them all
            found = self._bindings[key] = _Binding(self, env)
        return found

    def __call__(self, inputs: dict[str, np.ndarray], state: LLVMState, env: dict[str, int],
                 record: dict[int, np.ndarray] | None = None):
        if not self._has_scan:
            return self._call(inputs, state, env, record)
        from ...ir.scan import scan_runs
        with scan_runs():  # the nodes of one loop share its run
            return self._call(inputs, state, env, record)

    def _call(self, inputs: dict[str, np.ndarray], state: LLVMState, env: dict[str, int],
              record: dict[int, np.ndarray] | None = None):
        """Run the function. `record` (check mode): a dict that receives a copy of every node's
        value, keyed by node id (none for a lazy graph, which the reference evaluator runs)."""
        if self._lazy:
            return [np.array(v) for v in self._reference(inputs, state, env)]
        if not hasattr(self, "steps"):
            self._prepare_steps()
        env = dict(env)
        binding = self._binding(env)
        frames = binding.frames
        try:
            frame = frames.pop()  # (atomic: two threads never get one frame)
        except IndexError:
            frame = _Frame(binding)  # every frame of the binding is in use: one more
        try:
            return self._run(inputs, state.values, env, binding, frame, record)
        finally:
            frames.append(frame)

    def _run(self, inputs, params, env, binding: "_Binding", frame: "_Frame", record):
        ctx = frame.ctx
        values: dict[int, np.ndarray] = {}
        with np.errstate(all="ignore"):
            for kind, n, data, slot in self.steps:
                if kind == "kernel":
                    v = binding.run_kernel(n, data, params, frame)
                elif kind == "input":
                    v = inputs[data]
                elif kind == "param":
                    v = params[data]
                elif kind == "param_copy":
                    v = params[data].copy()
                elif kind == "const":
                    v = data
                elif kind == "view":
                    v = values[data[0]].reshape(tuple(resolve_dim(d, env) for d in data[1]))
                elif kind == "matmul":
                    v = np.matmul(values[data[0]], values[data[1]])
                elif kind == "dim":
                    v = np.int64(resolve_dim(data, env))
                else:
                    v = self._reference_step(n, [values[o] for o in data], env)
                values[n] = v
                if slot is not None and kind != "kernel":
                    if not (type(v) is np.ndarray and v.flags.c_contiguous and v.flags.aligned):
                        v = values[n] = np.require(v, requirements="CA") if np.ndim(v) else np.array(v)
                    ctx[slot] = v.__array_interface__["data"][0]
                if record is not None:  # a copy: buffers are reused, params updated in place
                    record[n] = np.array(v, copy=True)
        g = self.graph
        new_values = {}
        for name, n in self.updates:
            if self.inplace.get(name) != n:
                new_values[name] = np.array(values[n], dtype=g.type(n).dtype)
        for name, v in new_values.items():
            old = params.get(name)
            if old is not None and old.shape == v.shape and old.flags.writeable:
                np.copyto(old, v)  # keep the param's array (and address) for the next call
            else:
                params[name] = v
        # copies: the frame's buffers are the next call's, and an output may be an input or a
        # param (or a view of one)
        return [np.array(values[n]) for n in self.outputs]

    def _reference_step(self, n, args, env):
        return run_op(self.graph, n, args, env)

    # ------------------------------------------------------------ inspection

    def llvm_ir(self) -> str:
        return self.ir_text

    def optimized_llvm_ir(self) -> str:
        return self.module.optimized_ir() if self.module is not None else ""

    def assembly(self) -> str:
        return self.module.assembly() if self.module is not None else ""


class _Binding:
    """What one binding of the dims fixes: each kernel's loop extent and thread count, the slot
    table's dims, the buffers' sizes (by the memory plan), and a pool of frames (`_Frame`) that
    calls of these dims take their buffers from, one frame per call running at once."""

    def __init__(self, ex: LLVMExecutable, env: dict[str, int]):
        g = ex.graph
        self.ex = ex
        self.env = env
        self.ctx = np.zeros(len(ex.slot) + 1, dtype=np.int64)  # the template: dims only
        for key, s in ex.slot.items():
            if key[0] == "dim":
                self.ctx[s] = env[key[1]]
        self.launch: dict[int, tuple[int, int, bool]] = {}
        self.errors: dict[int, FlowRuntimeError] = {}  # kernels that raise when run (extent -1)
        nthreads = parallel.num_threads()
        for n in ex.nodes:  # every value of these dims fits in memory, or a located error now
            if not g.op(n).leaf:
                check_value(g, n, env)
        for n, k in ex.kernels.items():
            a = g.attrs(n)
            err = empty_reduction_error(a["reduce"], tuple(resolve_dim(d, env) for d in a["shape"]), g.loc(n))
            if err is not None:
                self.launch[n] = (-1, 0, False)  # raises when run, as numpy does
                self.errors[n] = err
            else:
                extent = _size(k.info.parallel_axis_extent, env) if k.info.parallel_axis_extent else 1
                threads = 1
                if k.info.splittable and extent > 1:
                    total = _size(a["shape"], env)
                    threads = max(1, min(nthreads, extent, total // MIN_ITEMS_PER_THREAD))
                self.launch[n] = (extent, threads, k.info.atomic_sum)  # chunks add into a zeroed output
        self.frames: list[_Frame] = [_Frame(self)]  # the free ones

    def run_kernel(self, n: int, k: "_Kernel", params: dict[str, np.ndarray], frame: "_Frame") -> np.ndarray:
        extent, threads, zero_first = self.launch[n]
        name = self.ex._inplace_nodes.get(n)
        if name is not None:
            out = params[name]
            frame.ctx[k.slot_out] = out.__array_interface__["data"][0]
        else:
            out = frame.buffers[n]
        if extent < 0:
            raise self.errors[n]
        if zero_first:
            out.fill(0)
        # (ctypes releases the GIL during both calls: other threads run meanwhile)
        if threads > 1:
            parallel.parallel_for(k.address, frame.ctx_ptr, extent, threads)
        else:
            k.fn(frame.ctx_ptr, 0, extent)
        return out


class _Frame:
    """One call's own memory: the kernels' output buffers (shared between nodes as the memory
    plan says) and the slot table holding their addresses, the dims, and (set per call) the
    input and param addresses."""

    def __init__(self, binding: _Binding):
        ex, env = binding.ex, binding.env
        g = ex.graph
        self.ctx = binding.ctx.copy()
        self.ctx_ptr = self.ctx.ctypes.data
        self.buffers: dict[int, np.ndarray] = {}
        by_buffer: dict[int, np.ndarray] = {}
        assign = ex.plan.assign if ex.plan is not None else {}
        for n, k in ex.kernels.items():
            if n in ex._inplace_nodes:
                continue
            t = g.type(n)
            shape = tuple(resolve_dim(d, env) for d in t.shape)
            nbytes = _size(t.shape, env) * t.dtype.itemsize
            b = assign.get(n)
            try:
                if b is None:
                    arr = np.empty(shape, dtype=t.dtype)
                else:
                    if b not in by_buffer or by_buffer[b].size < nbytes:
                        by_buffer[b] = np.empty(max(nbytes, 1), dtype=np.uint8)
                    arr = by_buffer[b][:nbytes].view(t.dtype).reshape(shape)
            except MemoryError:
                raise allocation_failed(g, n, env) from None
            self.buffers[n] = arr
            self.ctx[k.slot_out] = arr.ctypes.data


class LLVMBackend:
    name = "llvm"

    def create_state(self, values: dict[str, np.ndarray]) -> LLVMState:
        return LLVMState(values)

    def compile(self, graph: Graph, outputs: list[int], updates: list[tuple[str, int]], plan=None):
        return LLVMExecutable(graph, outputs, updates, plan)
