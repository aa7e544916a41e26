"""The OpenCL backend: the optimized graph's fused nodes as OpenCL kernels, params on the device.

A compiled function is a schedule like the LLVM backend's: each fused node runs as one
generated kernel (all of a function's kernels are built as one program), matmul as a tiled
local-memory kernel, transpose as a strided copy, reshape as a view of a contiguous device
array. Ops without a device kernel yet (softmax, the cross-entropy, gathers with general
index specs, ...) run on the host with their numpy reference implementation: their operands are
read back and their result written to the device. Params live on the device between calls;
only inputs, outputs and what a host step needs cross the bus; `model.params` reads back on
demand.
"""

from __future__ import annotations

import numpy as np

from ...errors import FlowError, FlowInternalError
from ...ir import ops as P
from ...ir.fused import Instr, empty_reduction_error
from ...ir.graph import Graph
from ...ir.types import TensorType, bound_by_inputs, resolve_dim
from ...sizes import check_value
from ..reference import ReferenceExecutable, run_op


def _cl():
    from . import device, runtime
    return device, runtime


class OpenCLState:
    """Params as device arrays."""

    def __init__(self, device, values: dict[str, np.ndarray]):
        self.device = device
        self.values = {}
        for k, v in values.items():
            self.set(k, v)

    def get(self, name: str) -> np.ndarray:
        return self.values[name].get()

    def has(self, name: str) -> bool:
        return name in self.values

    def set(self, name: str, value) -> None:
        _, runtime = _cl()
        self.values[name] = runtime.to_device(np.array(value, order="C"), self.device)


class OpenCLExecutable:
    def __init__(self, graph: Graph, outputs, updates, device):
        self.graph = graph
        self.outputs = outputs
        self.updates = updates
        self.device = device
        device_mod, runtime = _cl()
        self.nodes = sorted(graph.ancestors(list(outputs) + [n for _, n in updates]))
        self._lazy = any(graph.op(n).lazy for n in self.nodes)  # (run on the reference evaluator)
        self._reference = ReferenceExecutable(graph, outputs, updates) if self._lazy else None
        if not device_mod.supports_fp64(device):
            # f64 results, and fused kernels that compute in f64 inside (cast(cast(x, f64) * 3, f32))
            f64 = [n for n in self.nodes if graph.type(n).dtype == np.float64
                   or (graph.op(n).name == "fused" and any(np.dtype(i.dtype) == np.float64
                                                            for i in graph.attrs(n)["body"]))]
            if f64:
                names = sorted({graph.name(n) for n in f64 if graph.name(n)})
                loc = graph.loc(f64[0])
                raise FlowError(f"the OpenCL device {device.name.strip()} has no float64 support "
                                f"(cl_khr_fp64), but the model computes f64 values"
                                + (f" ({', '.join(names[:8])})" if names else ""), loc,
                                notes=["declare the model's inputs and params as f32, or use --backend llvm"])
        fused = [n for n in self.nodes if graph.op(n).name == "fused" and self._native(n)]
        specs = [([graph.type(o) for o in graph.operands(n)], graph.type(n), graph.attrs(n)["body"],
                  graph.attrs(n)["reduce"], graph.attrs(n)["shape"]) for n in fused]
        # a float matmul of mixed operand dtypes (f32 @ f64) computes in its result dtype, as
        # numpy does: the other operand is cast on the device first (a kernel of this program)
        casts = []
        for n in self.nodes:
            t = graph.type(n)
            if graph.op(n) is P.matmul and t.dtype.kind == "f":
                for k, o in enumerate(graph.operands(n)):
                    src = graph.type(o)
                    if src.dtype != t.dtype:
                        casts.append((n, k))
                        specs.append(([src], TensorType(t.dtype, src.shape),
                                      (Instr("cast", (0,), (("dtype", t.dtype),), t.dtype.name),), None, src.shape))
        compiled = runtime.compile_fused_many(specs, device) if specs else []
        self.kernels = dict(zip(fused, compiled))
        self._casts = dict(zip(casts, compiled[len(fused):]))
        self._consts: dict[int, object] = {}

    def _native(self, n: int) -> bool:
        g = self.graph
        types = [g.type(o) for o in g.operands(n)] + [g.type(n)]
        if not all(bound_by_inputs(t.shape) for t in types):
            return False
        # OpenCL guarantees a kernel only 1024 bytes of arguments (8 each: a pointer or a long per
        # operand, its offset and a stride per dim; the output and the sizes): a node with more
        # operands than fit runs on the host
        rank, nin = len(g.attrs(n)["shape"]), len(types) - 1
        return (nin * (2 + rank) + rank + 6) * 8 <= self.device.max_parameter_size

    def sources(self) -> str:
        seen, out = set(), []
        for k in self.kernels.values():
            src = k.gen.source
            if src not in seen:
                seen.add(src)
                out.append(src)
        return "\n\n".join(out)

    def __call__(self, inputs, state: OpenCLState, env):
        from ...ir.scan import scan_runs
        with scan_runs():  # the nodes of one loop share its run
            return self._call(inputs, state, env)

    def _call(self, inputs, state: OpenCLState, env):
        g = self.graph
        if self._lazy:  # `if` picks one branch: the reference evaluator on host copies
            host = _HostState({k: v.get() for k, v in state.values.items()})
            outs = self._reference(inputs, host, env)
            for name, _ in self.updates:
                state.set(name, host.values[name])
            return outs
        env = dict(env)
        dev = self.device
        values: dict[int, object] = {}
        limit, where = dev.max_mem_alloc_size, f"one buffer of the OpenCL device {dev.name.strip()} holds"
        for n in self.nodes:
            op = g.op(n)
            if op is not P.param:  # a value bigger than a device buffer: a located error, before allocating
                check_value(g, n, env, limit, where)
            v = self._compute(n, values, inputs, state, env)
            values[n] = v
            self._check_shape(n, v, env)
        new = {name: values[n] for name, n in self.updates}
        for name, v in new.items():
            state.values[name] = v.copy() if v is state.values.get(name) else v
        return [values[n].get() for n in self.outputs]

    def _compute(self, n, values: dict, inputs, state: OpenCLState, env):
        """Node n's value (on the device), its operands' in `values`."""
        _, runtime = _cl()
        g, dev, op = self.graph, self.device, self.graph.op(n)
        if op is P.input_:
            v = runtime.to_device(inputs[g.attrs(n)["name"]], dev)
        elif op is P.param:
            v = state.values[g.attrs(n)["name"]]
        elif op is P.const:
            v = self._consts.get(n)
            if v is None:
                v = self._consts[n] = runtime.to_device(np.array(g.attrs(n)["value"]), dev)
        elif op is P.dim:
            v = runtime.to_device(np.array(resolve_dim(g.attrs(n)["dim"], env), dtype=np.int64), dev)
        elif n in self.kernels:
            shape = tuple(resolve_dim(d, env) for d in g.attrs(n)["shape"])
            # a one-element operand may have more (unit) dims than the iteration space (the
            # fuse phase treats its reshape as the identity): drop them
            args = [a.reshape(()) if len(a.shape) > len(shape) else a for a in (values[o] for o in g.operands(n))]
            err = empty_reduction_error(g.attrs(n)["reduce"], shape, g.loc(n))
            if err is not None:
                raise err
            v = self.kernels[n](*args, shape=shape)
        elif op is P.reshape:
            src = values[g.operands(n)[0]]
            v = src.reshape(tuple(resolve_dim(d, env) for d in g.type(n).shape))
        elif op is P.matmul and g.type(n).dtype.kind == "f":
            a, b = (self._casts[(n, k)](values[o]) if (n, k) in self._casts else values[o]
                    for k, o in enumerate(g.operands(n)))
            v = runtime.matmul(a, b, device=dev)
        elif op is P.gemm:  # the device's matmul, then alpha and beta * c by pyopencl's array kernels
            a, b, c = (values[o] for o in g.operands(n))
            dt = g.type(n).dtype
            v = runtime.matmul(a, b, device=dev) * dt.type(g.attrs(n)["alpha"]) + c * dt.type(g.attrs(n)["beta"])
        elif op is P.transpose:
            v = runtime.transpose(values[g.operands(n)[0]], g.attrs(n)["axes"], device=dev)
        else:
            v = self._host_step(n, [values[o] for o in g.operands(n)], env)
        return v

    def _host_step(self, n, args, env):
        _, runtime = _cl()
        out = run_op(self.graph, n, [a.get() for a in args], env)
        return runtime.to_device(np.ascontiguousarray(out) if out.ndim else np.array(out), self.device)

    def _check_shape(self, n, v, env) -> None:
        t = self.graph.type(n)
        if len(v.shape) != t.ndim or v.dtype != t.dtype:
            raise FlowInternalError(f"{self.graph.op(n).name} (%{n}) produced {v.dtype}{list(v.shape)} on the "
                                    f"OpenCL device, its type says {t}", self.graph.loc(n))


class _HostState:
    def __init__(self, values):
        self.values = values

    def set(self, name, value):
        self.values[name] = np.array(value)


class OpenCLBackend:
    def __init__(self, spec: str = "opencl"):
        device_mod, _ = _cl()
        self.device = device_mod.select_device(spec)
        self.name = spec

    def create_state(self, values):
        return OpenCLState(self.device, values)

    def compile(self, graph: Graph, outputs, updates, plan=None):
        return OpenCLExecutable(graph, outputs, updates, self.device)
