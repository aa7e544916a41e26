"""The profiling build of a compiled fn on the LLVM backend (`flowml.profiling`, docs/inspect.md).

A separate compilation of the same graph and memory plan whose entry points time each of their
top-level steps with clock reads compiled into the code (`entry.NativeProgram(profile=True)`):
every step adds one call and its nanoseconds to its two words of `counters`, an i64 array whose
address goes into the frame. Host steps are timed here, around their numpy call, on the same
clock (CLOCK_MONOTONIC: `time.perf_counter_ns` on Linux). The ordinary build of the fn is not
touched: its module has no clock reads and its calls pay nothing.
"""

from __future__ import annotations

import time

import numpy as np

from .backend import LLVMExecutable


class ProfilingExecutable(LLVMExecutable):
    """An `LLVMExecutable` whose calls count, per step, calls and nanoseconds: native steps in
    `counters` (words 2i, 2i+1 for the step of node `program.profiled[i]`), host steps in
    `host_counts` (node -> [calls, ns]). `reset()` zeroes them."""

    profile = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        profiled = self.program.profiled if self.program is not None else []
        self.counters = np.zeros(max(2 * len(profiled), 1), dtype=np.int64)
        self.host_counts: dict[int, list[int]] = {}
        self._slot = self.program.slot.get(("profile",)) if self.program is not None else None

    def _binding(self, env):
        # every frame of a binding (the Python path's and the CPython entry's, all copies of its
        # template) holds the counters' address
        binding = super()._binding(env)
        if self._slot is not None and binding.ctx[self._slot] != self.counters.ctypes.data:
            for ctx in [binding.ctx] + [f.ctx for f in binding.frames]:
                ctx[self._slot] = self.counters.ctypes.data
        return binding

    def reset(self) -> None:
        self.counters[:] = 0
        self.host_counts = {}

    def native_counts(self) -> dict[int, tuple[int, int]]:
        """node -> (calls, nanoseconds) of each native step."""
        c = self.counters
        return {n: (int(c[2 * i]), int(c[2 * i + 1])) for i, n in enumerate(self.program.profiled)}

    def _run_segments(self, program, inputs, params, binding, frame, record):
        clock = time.perf_counter_ns
        for seg in program.segments:
            if seg.host is None:
                self._run_native(program, seg, binding, frame)
                continue
            t0 = clock()
            self._run_host(seg.host, inputs, params, binding, frame, record)
            dt = clock() - t0
            count = self.host_counts.setdefault(seg.host, [0, 0])
            count[0] += 1
            count[1] += dt
