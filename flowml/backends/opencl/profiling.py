"""The OpenCL backend's profiled calls (`flowml.profiling`): each step timed from the host.

A step of an OpenCL fn is a kernel launch (or a device matmul, a host step...) queued from
Python: `HostTimedExecutable` times each around its call and waits for the device's queue to
finish before reading the clock again, so a step's time is its own (and the steps run one at a
time, not overlapped as in an ordinary call). A fn with a lazy `if` (run on the reference
evaluator) is timed as one step."""

from __future__ import annotations

import time

from ...ir import ops as P
from ...profiling import HostCounts
from .backend import OpenCLExecutable


class HostTimedExecutable(OpenCLExecutable, HostCounts):
    """An `OpenCLExecutable` counting, per node, calls and nanoseconds in `host_counts`."""

    timing = "host timers around each step, the device's queue finished after each"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.reset()

    def describe(self, n: int) -> tuple[str, str]:
        """(kind, what it runs as) of node n's step."""
        g, op = self.graph, self.graph.op(n)
        if n in self.kernels:
            return "native", "OpenCL kernel"
        if op is P.matmul and g.type(n).dtype.kind == "f":
            return "native", "the device's matmul"
        if op is P.gemm:
            return "native", "the device's matmul, then alpha and beta * c"
        if op is P.transpose:
            return "native", "the device's transpose"
        if op is P.reshape:
            return "native", "a view of its operand"
        return "host", "numpy on the host (operands copied from the device, the result back)"

    def __call__(self, inputs, state, env):
        if not self._lazy:
            return super().__call__(inputs, state, env)
        t0 = time.perf_counter_ns()
        outs = super().__call__(inputs, state, env)
        self._add(None, time.perf_counter_ns() - t0)
        return outs

    def _compute(self, n, values, inputs, state, env):
        if self.graph.op(n).leaf:
            return super()._compute(n, values, inputs, state, env)
        from .device import queue
        q = queue(self.device)
        t0 = time.perf_counter_ns()
        v = super()._compute(n, values, inputs, state, env)
        q.finish()
        self._add(n, time.perf_counter_ns() - t0)
        return v
