"""The LLVM backend: a compiled function is native entry points (see `entry`) over the memory
plan's buffers, called through ctypes with the GIL released.

Per call, only what changes is done in Python: the input and param addresses go into the call
frame, the entry points run (with any host steps between them), the outputs are copied out and
the updates not done in place are written back. What depends only on the dims (the frame's dim
slots, thread count, the buffers) is set up once per binding of the dims (`_Binding`).

Re-entrant: the buffers and the frame are a call's own (a `_Frame`, taken from a per-binding
pool and given back when the call returns), so threads may call one function at once with no
lock; outputs are copied out of the frame before it goes back.

Shapes reach native code only after the call boundary checked every input against its
declaration; entry points take their sizes from the frame's dim slots.
"""

from __future__ import annotations

import ctypes

import numpy as np

from ...errors import FlowInternalError
from ...ir import ops as P
from ...ir.graph import Graph
from ...ir.types import resolve_dim, resolve_name
from ...passes.memory import plan_memory
from ...sizes import allocation_failed, check_value
from ..reference import ReferenceExecutable, ReferenceState, run_op
from . import blas, cache, parallel, vecmath
from .entry import ERROR_SLOTS, HOOK_SLOT, THREADS_SLOT, BranchHostStep, NativeProgram, dims_used

_ENTRY = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p)
_HOOK = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64)

class LLVMState(ReferenceState):
    """Params as numpy arrays that kernels update in place."""

    def set(self, name: str, value: np.ndarray) -> None:
        self.values[name] = np.array(value, order="C")


def _address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


class LLVMExecutable:
    owns_outputs = True  # a call returns new arrays (copies out of its frame)
    _lazy_reason = ""
    profile = False  # the profiling build (profiling.ProfilingExecutable): clock reads around each step

    def __init__(self, graph: Graph, outputs: list[int], updates: list[tuple[str, int]], plan=None,
                 compile: bool = True):
        """`compile=False`: lower the graph to the module's text (`llvm_ir`, `kernels`, the plan)
        but build no machine code; such an executable is for reading, not for calling."""
        self.graph = graph
        self.outputs = outputs
        self.updates = updates
        targets = list(outputs) + [n for _, n in updates]
        self.nodes = sorted(graph.ancestors(targets))
        # a lazy `if` is a branch in the native code; only when one of its sides has a node with
        # no native code does the fn run on the reference evaluator (`_lazy`)
        self._lazy = False
        self._reference = None
        self.plan = plan if plan is not None else plan_memory(graph, list(outputs), list(updates))
        self.inplace = dict(self.plan.inplace)
        self._inplace_nodes = {v: name for name, v in self.inplace.items()}
        self.alias = {}
        for v in self.plan.alias:
            root = v
            while root in self.plan.alias:
                root = self.plan.alias[root]
            self.alias[v] = root
        self.results = set(targets)
        self._bindings: dict[tuple, _Binding] = {}
        self.program = None
        self.module = None
        try:
            self.program = self._lower(compile)
        except BranchHostStep as e:
            self._lazy = True
            self._lazy_reason = (f"a side of a lazy `if` has a host step ({graph.op(e.node).name}: {e.reason}): "
                                 "the fn runs on the reference evaluator")
            self._reference = ReferenceExecutable(graph, outputs, updates)
        # a loop run as host steps (its body has a node with no native code): its nodes share a run
        self._has_scan = any(graph.op(n).name == "scan" for n in self.host_steps())
        self._direct = self.direct_outputs()

    # ------------------------------------------------------------ compile

    def _lower(self, compile: bool = True) -> NativeProgram:
        program = NativeProgram(self.graph, self.nodes, self.results, self.alias, profile=self.profile)
        for step in program.steps:
            if step.kind == "host" and step.detail == "no LLVM lowering":
                op = self.graph.op(step.node)
                if getattr(op, "wrapped", False):
                    step.detail = "a wrapped Python function (flowml.op)"
        program.text = program.module_text() if any(s.name for s in program.segments) else ""
        if compile:
            self._load(program)
        else:
            program.entries, program.module = {}, None
        return program

    def _load(self, program: NativeProgram) -> None:
        """The program's module, from the object-code cache or compiled, and its entry points."""
        program.entries = {}
        program.module = None
        names = [s.name for s in program.segments if s.name]
        if names:
            vecmath.ensure_symbols()  # (lowering binds them too; a program from the model cache was not lowered here)
            if program.blas:
                blas.ensure_symbols(sorted(program.blas))
            if program.uses_parallel:
                parallel.ensure_symbols()
            program.module = cache.compile_cached(program.text, "llvm-entry-v1", name="flowml_fn")
            for name in names:
                program.entries[name] = _ENTRY(program.module.address(name))
        self.module = program.module

    # The warm model cache (flowml/modelcache.py) pickles a compiled fn: its graph, plan and
    # lowered program, not the machine code, which is loaded again from the object-code cache.
    def __getstate__(self):
        state = dict(self.__dict__)
        for transient in ("module", "_bindings", "_reference"):
            state.pop(transient, None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._bindings = {}
        self._reference = ReferenceExecutable(self.graph, self.outputs, self.updates) if self._lazy else None
        self.module = None
        if self.program is not None:
            self._load(self.program)

    def direct_outputs(self) -> list[int]:
        """The outputs (by position) a call's native code writes straight into the array it
        returns, rather than into the frame and then copied: each is a value of its own (not an
        input, param or constant, not an update done in place, not a folded transpose, not a
        value returned twice). (An output is live to the end of the call, so the memory plan
        gives its buffer to no later value: the frame's buffer is simply not used.)"""
        if self.program is None:
            return []
        folded = {s.node for s in self.program.steps if s.kind == "none"}
        seen, direct = set(), []
        for o, n in enumerate(self.outputs):
            root = self.alias.get(n, n)
            if not (self.graph.op(root).leaf or root in self._inplace_nodes or root in folded or root in seen):
                direct.append(o)
            seen.add(root)
        return direct

    @property
    def kernels(self) -> dict[int, str]:
        """The fused nodes that became kernels: node -> the kernel's function name."""
        if self.program is None:
            return {}
        return {s.node: f"k{s.node}" for s in self.program.steps if s.detail.startswith(f"kernel k{s.node}")}

    def host_steps(self) -> dict[int, str]:
        """The nodes run on the host: node -> why (`--emit plan` lists them)."""
        if self.program is None:
            return {n: self._lazy_reason for n in self.nodes if not self.graph.op(n).leaf}
        return {s.node: s.detail for s in self.program.steps if s.kind == "host"}

    def plan_text(self, ids: dict[int, str]) -> list[str]:
        """The steps as `--emit plan` lists them; `ids` names the nodes as the IR dump does."""
        g = self.graph
        if self.program is None:
            return [f"  (the whole fn runs on the reference evaluator: {self._lazy_reason})"]
        rows = []
        for s in self.program.steps:
            if s.kind == "leaf":
                continue
            kind = {"native": "native", "host": "HOST", "view": "view", "none": "folded"}[s.kind]
            detail = s.detail if s.kind != "none" else "read by its products (matmul, gemm) with a transpose flag"
            loc = g.loc(s.node)
            rows.append((ids.get(s.node, f"%?{s.node}"), g.op(s.node).name, kind, detail, str(loc) if loc else ""))
        widths = [max((len(r[i]) for r in rows), default=0) for i in range(4)]
        return ["  " + "  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4] for r in rows]

    def summary(self) -> str:
        """What one call of the fn runs: "1 native call, nothing on the host", or
        "3 native calls and 2 host steps"."""
        if self.program is None:
            return f"no native code ({self._lazy_reason})"
        native = sum(1 for s in self.program.segments if s.host is None)
        host = sum(1 for s in self.program.segments if s.host is not None)
        calls = f"{native} native call{'' if native == 1 else 's'}"
        if not host:
            return calls + ", nothing on the host"
        return f"{calls} and {host} host step{'' if host == 1 else 's'} per call"

    # ------------------------------------------------------------ run

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
        """Run the function. `record` (check mode): a dict that receives a copy of every node's
        value, keyed by node id (none for a lazy graph, which the reference evaluator runs)."""
        if self._lazy:
            return [np.array(v) for v in self._reference(inputs, state, env)]
        if not self._has_scan:
            return self._call(inputs, state, env, record)
        from ...ir.scan import scan_runs
        with scan_runs():  # the nodes of one loop share its run
            return self._call(inputs, state, env, record)

    def _call(self, inputs, state, env, record):
        program = self.program
        binding = self._binding(env)
        frames = binding.frames
        try:
            frame = frames.pop()  # (atomic: two threads never get one frame)
        except IndexError:
            frame = _Frame(binding)  # every frame of the binding is in use: one more
        try:
            return self._run(program, inputs, state.values, binding, frame, record)
        finally:
            frames.append(frame)

    def _run(self, program: NativeProgram, inputs, params, binding: "_Binding", frame: "_Frame", record):
        g = self.graph
        ctx = frame.ctx
        env = binding.env
        for name, n in binding.input_nodes:
            a = inputs[name]
            if not (a.flags.c_contiguous and a.flags.aligned):
                a = inputs[name] = np.ascontiguousarray(a)
            ctx[binding.slot[n]] = _address(a)
        for name, n in binding.param_nodes:
            a = params[name]
            if not (type(a) is np.ndarray and a.flags.c_contiguous and a.flags.aligned and a.flags.writeable):
                a = params[name] = np.array(a, order="C")
            ctx[binding.slot[n]] = _address(a)
        for name, n in binding.inplace_nodes:
            a = params.get(name)
            if a is None or a.shape != binding.shapes[n] or not a.flags.writeable or not a.flags.c_contiguous:
                a = params[name] = np.empty(binding.shapes[n], dtype=g.type(n).dtype)
            ctx[binding.slot[n]] = _address(a)
        if program.world_keys:  # the process group (collectives): read on every call
            from .lowering.collective import world_slots
            for key, value in world_slots(program.world_keys).items():
                ctx[binding.slot_keys[key]] = value
        direct = {}  # output position -> (its root, the frame's own array, the fresh one computed into)
        try:
            for o in self._direct:
                root = self.alias.get(self.outputs[o], self.outputs[o])
                try:
                    a = np.empty(binding.shapes[root], dtype=g.type(root).dtype)
                except MemoryError:
                    raise allocation_failed(g, root, env) from None
                direct[o] = (root, frame.arrays[root], a)
                frame.arrays[root] = a  # (this call's: the frame is its own until it returns)
                ctx[binding.slot[root]] = _address(a)
            return self._execute(program, inputs, params, binding, frame, record, direct)
        finally:
            for root, own, _ in direct.values():  # the frame's own buffers again, for its next call
                frame.arrays[root] = own
                ctx[binding.slot[root]] = _address(own)

    def _execute(self, program: NativeProgram, inputs, params, binding: "_Binding", frame: "_Frame", record,
                 direct: dict):
        g = self.graph
        ctx = frame.ctx
        hook = None
        if record is not None:
            hook = self._recorder(record, inputs, params, binding, frame)
            ctx[HOOK_SLOT] = ctypes.cast(hook, ctypes.c_void_p).value
        try:
            self._run_segments(program, inputs, params, binding, frame, record)
        finally:
            ctx[HOOK_SLOT] = 0
        if record is not None:  # views and folded transposes: from what they view, as it was
            for n in self.nodes:  # (a node on the side of an `if` not taken has no value)
                if n not in record and (g.op(n).view or n in binding.folded) and g.operands(n)[0] in record:
                    src = record[g.operands(n)[0]]
                    record[n] = (np.transpose(src, g.attrs(n)["axes"]) if n in binding.folded
                                 else src.reshape(binding.shapes[n])).copy()
        outs = [direct[o][2].reshape(binding.shapes[n]) if o in direct
                else np.array(self._value(n, inputs, params, binding, frame)) for o, n in enumerate(self.outputs)]
        new_values = {}
        for name, n in self.updates:
            if self.inplace.get(name) != n:
                new_values[name] = np.array(self._value(n, inputs, params, binding, frame), dtype=g.type(n).dtype)
        for name, v in new_values.items():
            old = params.get(name)
            if old is not None and old.shape == v.shape and old.flags.writeable:
                np.copyto(old, v)  # keep the param's array (and address) for the next call
            else:
                params[name] = v
        return outs

    def _run_segments(self, program: NativeProgram, inputs, params, binding: "_Binding", frame: "_Frame", record):
        """The entry points in order, with the host steps between them."""
        for seg in program.segments:
            if seg.host is None:
                self._run_native(program, seg, binding, frame)
            else:
                self._run_host(seg.host, inputs, params, binding, frame, record)

    def _run_native(self, program: NativeProgram, seg, binding: "_Binding", frame: "_Frame") -> None:
        rc = program.entries[seg.name](frame.ctx_ptr)
        if rc:
            raise self.native_error(rc, frame.ctx, binding.env)

    def _run_host(self, n: int, inputs, params, binding: "_Binding", frame: "_Frame", record) -> None:
        args = [self._value(o, inputs, params, binding, frame) for o in self.graph.operands(n)]
        with np.errstate(all="ignore"):
            value = run_op(self.graph, n, args, dict(binding.env))
        np.copyto(frame.arrays[n], value)
        if record is not None:
            record[n] = np.array(value, copy=True)

    def native_error(self, rc: int, ctx: np.ndarray, env: dict[str, int]):
        """The located error of an entry point's return code `rc`, its details in frame `ctx`."""
        node, describe = self.program.errors[rc - 1]
        return describe(self.graph, node, tuple(int(ctx[s]) for s in ERROR_SLOTS), env)

    def fastcall(self, inputs, fallback, values, stale, states, lock):
        """The fn's CPython entries (`pyentry.FastCall`: argument checks and unboxing in native
        code), or None where its calls stay on the Python path (`pyentry.unavailable`)."""
        from . import pyentry
        if pyentry.unavailable(self) is not None:
            return None
        return pyentry.FastCall(self, inputs, fallback, values, stale, states, lock)

    def _recorder(self, record, inputs, params, binding, frame):
        """Check mode's hook: copies each node's value as the entry point computes it (leaves
        first, before any in-place update changes a param)."""
        for n in self.nodes:
            if self.graph.op(n).leaf:
                record[n] = np.array(self._value(n, inputs, params, binding, frame), copy=True)

        def hook(_ctx, n):
            record[n] = np.array(self._value(n, inputs, params, binding, frame), copy=True)
        return _HOOK(hook)

    def _value(self, n: int, inputs, params, binding: "_Binding", frame: "_Frame") -> np.ndarray:
        """Node n's value after the steps ran (a view of where it lives)."""
        g = self.graph
        root = self.alias.get(n, n)
        op = g.op(root)
        if op is P.input_:
            v = inputs[g.attrs(root)["name"]]
        elif op is P.param:
            v = params[g.attrs(root)["name"]]
        elif op is P.const:
            v = np.asarray(g.attrs(root)["value"])
        elif op is P.dim:
            v = binding.dim_values[root]
        elif root in self._inplace_nodes:
            v = params[self._inplace_nodes[root]]
        elif root in binding.folded:  # a transpose that its matmuls read with a transpose flag
            v = np.transpose(self._value(g.operands(root)[0], inputs, params, binding, frame),
                             g.attrs(root)["axes"])
        else:
            v = frame.arrays[root]
        shape = binding.shapes[n]
        return v if v.shape == shape else v.reshape(shape)

    # ------------------------------------------------------------ inspection

    def llvm_ir(self) -> str:
        return self.program.text if self.program is not None else ""

    def optimized_llvm_ir(self) -> str:
        return self.module.optimized_ir() if self.module is not None else ""

    def assembly(self) -> str:
        return self.module.assembly() if self.module is not None else ""


def _dim_value(name: str, env: dict[str, int]) -> int:
    if name in env:
        return env[name]
    value = resolve_name(name, env)
    if value is None:
        raise FlowInternalError(f"the size {name} cannot be computed from {env}")
    return value


class _Binding:
    """What one binding of the dims fixes: the frame's dim slots and thread count, every value's
    shape (checked to fit in memory), the constants' addresses, and a pool of frames
    (`_Frame`) that calls of these dims take their buffers from, one per call running at once."""

    def __init__(self, ex: LLVMExecutable, env: dict[str, int]):
        g = ex.graph
        program = ex.program
        self.ex = ex
        self.env = env = dict(env)
        names = dims_used(g, ex.nodes) | {key[1] for key in program.slot if key[0] == "dim"}  # (a loop body's too)
        for name in sorted(names, key=len):
            env[name] = _dim_value(name, env)
        for n in ex.nodes:  # every value of these dims fits in memory, or a located error now
            if not g.op(n).leaf:
                check_value(g, n, env)
        self.shapes = {n: tuple(resolve_dim(d, env) for d in g.type(n).shape) for n in ex.nodes}
        self.slot = {n: program.slot_of(("ptr", n)) for n in ex.nodes}
        self.slot_keys = {key: program.slot_of(key) for key in program.world_keys}
        self.ctx = np.zeros(len(program.slot) + 8, dtype=np.int64)  # the template of every frame
        self.ctx[THREADS_SLOT] = parallel.num_threads()
        for key, s in program.slot.items():
            if key[0] == "dim":
                self.ctx[s] = env[key[1]]
        self.dim_values = {}
        self.consts = []
        self.input_nodes, self.param_nodes, self.inplace_nodes = [], [], []
        for n in ex.nodes:
            op = g.op(n)
            if op is P.input_:
                self.input_nodes.append((g.attrs(n)["name"], n))
            elif op is P.param:
                self.param_nodes.append((g.attrs(n)["name"], n))
            elif op is P.const:
                c = np.ascontiguousarray(g.attrs(n)["value"])
                self.consts.append(c)  # (kept alive: the frame holds its address)
                self.ctx[self.slot[n]] = _address(c)
            elif op is P.dim:
                d = g.attrs(n)["dim"]
                v = self.dim_values[n] = np.array(resolve_dim(d, env), dtype=np.int64)
                self.ctx[self.slot[n]] = _address(v)
            elif n in ex._inplace_nodes:
                self.inplace_nodes.append((ex._inplace_nodes[n], n))
        for kind, slot, value in (s for s in program.statics if s[0] != "buffer"):  # a loop body's leaves
            v = np.ascontiguousarray(value) if kind == "const" else np.array(resolve_dim(value, env), dtype=np.int64)
            self.consts.append(v)
            self.ctx[slot] = _address(v)
        self.folded = {s.node for s in program.steps if s.kind == "none"}
        self.frames: list[_Frame] = [_Frame(self)]  # the free ones


class _Frame:
    """One call's own memory: the buffers of the memory plan (shared between nodes as the plan
    says) and the call frame holding their addresses, the dims, and (set per call) the input and
    param addresses."""

    def __init__(self, binding: _Binding):
        ex, env = binding.ex, binding.env
        g = ex.graph
        self.ctx = binding.ctx.copy()
        self.ctx_ptr = self.ctx.ctypes.data
        self.arrays: dict[int, np.ndarray] = {}
        by_buffer: dict[int, np.ndarray] = {}
        assign = ex.plan.assign
        skip = binding.folded
        for n in ex.nodes:
            op = g.op(n)
            if op.leaf or n in ex.alias or n in ex._inplace_nodes or n in skip:
                continue
            t = g.type(n)
            shape = binding.shapes[n]
            nbytes = int(np.prod(shape, dtype=np.int64)) * t.dtype.itemsize
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
            self.arrays[n] = arr
            self.ctx[binding.slot[n]] = _address(arr)
        self.statics = []  # a loop body's buffers (entry.NativeProgram.statics)
        for _, slots, dtype, shape in (s for s in ex.program.statics if s[0] == "buffer"):
            nbytes = int(np.prod([resolve_dim(d, env) for d in shape], dtype=np.int64)) * np.dtype(dtype).itemsize
            try:
                arr = np.empty(max(nbytes, 1), dtype=np.uint8)
            except MemoryError:
                raise allocation_failed(g, ex.nodes[-1], env) from None
            self.statics.append(arr)
            for s in slots:
                self.ctx[s] = _address(arr)


class LLVMBackend:
    name = "llvm"

    def cache_environment(self) -> list:
        """What a lowered program depends on beyond its graph (the CPU's vector width, libmvec,
        the compiler): part of the warm model cache's key when it keeps executables."""
        from .jit import use_avx512
        from .vecmath import libmvec_available
        return [*cache._environment(), use_avx512(), libmvec_available()]

    def create_state(self, values: dict[str, np.ndarray]) -> LLVMState:
        return LLVMState(values)

    def compile(self, graph: Graph, outputs: list[int], updates: list[tuple[str, int]], plan=None):
        return LLVMExecutable(graph, outputs, updates, plan)

