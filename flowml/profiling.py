"""The profiler (Theano's ProfileMode): where a compiled fn's time goes, step by step.

    p = model.train.profile(x, y)           # one call, in the fn's profiling build
    print(p)                                # a table: one row per step, and the call boundary
    with flowml.profile() as p:             # every fn called inside the block
        for _ in range(100):
            model.train(x, y)
    p.save("profile.json")                  # for tools, and `flowml compile --emit html --profile-json`

On the LLVM backend a profiled call runs the fn's *profiling build*, a separate compilation of
the same optimized graph and memory plan whose entry points read the clock around each step
(`backends/llvm/profiling.py`): one row per native step (a fused kernel, a BLAS call, a loop,
a branch...) timed by that compiled code, one per host step timed around its numpy call, and
the *call boundary* — the call's wall time less its steps (argument checks, frame set-up,
outputs). Nothing else is unattributed. Ordinary calls keep running the ordinary build.

The reference backend (and an LLVM fn that runs on the reference evaluator) has no native
code: its rows are its nodes timed from Python around their numpy calls ("host timers").
"""

from __future__ import annotations

import json
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np

from .errors import FlowError

SCHEMA = 1  # the JSON's "flowml_profile" version


@dataclass
class Row:
    """One step of a profiled fn (or its call boundary: kind "boundary", id and node None)."""

    fn: str
    id: str | None  # the node as `flowml compile --emit ir` numbers the optimized graph ("%7")
    node: int | None  # its id in the graph
    op: str | None
    kind: str  # "native", "host" or "boundary"
    detail: str  # what it ran as (`--emit plan`'s text: "kernel k8", "BLAS dgemm (NN)", why a host step)
    name: str | None  # the .flow value it computes, when it has a name
    calls: int
    total_s: float
    mean_s: float
    share: float  # of the fn's profiled time
    bytes: int | None  # operands and result, per call (None where a dim is unknown)
    gbps: float | None
    gflops: float | None  # matmul and gemm: 2 m n k per call
    source: str | None  # file:line:col of the .flow source
    line: str | None  # the source line


# ------------------------------------------------------------------ what one fn's steps are


def _nbytes(graph, n, env) -> int | None:
    from .ir.types import resolve_dim
    t = graph.type(n)
    try:
        return int(np.prod([resolve_dim(d, env) for d in t.shape], dtype=np.int64)) * t.dtype.itemsize
    except (KeyError, TypeError, ValueError):
        return None


def _flops(graph, n, env) -> int | None:
    """2 m n k of a matmul or gemm (k: the inner dim of its logical operand a)."""
    from .ir.types import resolve_dim
    if graph.op(n).name not in ("matmul", "gemm"):
        return None
    a = graph.type(graph.operands(n)[0])
    try:
        out = int(np.prod([resolve_dim(d, env) for d in graph.type(n).shape], dtype=np.int64))
        return 2 * out * resolve_dim(a.shape[-1], env)
    except (KeyError, TypeError, ValueError):
        return None


@dataclass
class _Step:
    node: int | None
    kind: str
    detail: str
    group: tuple  # the nodes it computes (a loop's, or just its own)


class _Build:
    """A fn's profiling build: the executable its profiled calls run, its steps, what building
    it took; `counts()` the calls and nanoseconds of each step since `reset()`."""

    def __init__(self, function):
        from .ir.dump import dump_nodes
        self.function = function
        c = function.compiled
        g = self.graph = c.graph
        _, self.ids = dump_nodes(g, list(c.outputs) + [n for _, n in c.updates])
        if function.model.check:
            raise FlowError(f"fn {function.name}: a model in check mode runs every call on the reference backend "
                            "too; profile a model loaded without check=True")
        start = time.perf_counter()
        backend = function.model.backend.name
        ex = self.opencl = None
        if backend == "llvm":
            from .backends.llvm.profiling import ProfilingExecutable
            ex = ProfilingExecutable(g, c.outputs, c.updates, plan=c.plan)
            if ex.program is None:  # (the fn runs on the reference evaluator: timed as it is)
                ex = None
        elif backend == "opencl":
            from .backends.opencl.profiling import HostTimedExecutable
            self.opencl = HostTimedExecutable(g, c.outputs, c.updates, function._executable.device)
        elif backend != "reference":
            raise FlowError(f"fn {function.name}: the profiler times the llvm, opencl and reference backends, not "
                            f"{backend}")
        self.native = ex is not None
        self.executable = ex if ex is not None else (self.opencl or _HostTimed(g, c.outputs, c.updates))
        self.build_s = time.perf_counter() - start
        self._entry = None  # the CPython entry of the profiling build (backends/llvm/pyentry.py), per dims
        if ex is not None and os.environ.get("FLOWML_FASTCALL", "1") != "0":
            model = function.model
            inputs = [(n, model.program.inputs[n].var.type) for n in function.input_names]
            self._entry = ex.fastcall(inputs, self._python_path, model._state.values, function._stale,
                                      model._shared._states, model._shared.lock if function._updated else None)
        self._moved: dict = {}
        self.timing = ("native timers compiled into the profiling build" if self.native
                       else self.opencl.timing if self.opencl is not None
                       else "host timers around each node's numpy call (no native code)")
        self.steps = self._steps()

    def _steps(self) -> list[_Step]:
        g = self.graph
        if self.opencl is not None:
            ex = self.opencl
            if ex._lazy:
                return [_Step(None, "host", "the whole fn, on the reference evaluator (a lazy if: "
                              "only the taken side's nodes run)", tuple(ex.nodes))]
            return [_Step(n, *ex.describe(n), (n,)) for n in ex.nodes if not g.op(n).leaf]
        if not self.native:
            if self.executable.lazy:
                return [_Step(None, "host", "the whole fn, on the reference evaluator (a lazy if: "
                              "only the taken side's nodes run)", tuple(self.executable.nodes))]
            return [_Step(n, "host", "numpy (the reference backend)", (n,)) for n in self.executable.nodes
                    if not g.op(n).leaf]
        program = self.executable.program
        groups: dict[int, list[int]] = {}
        for s in program.steps:
            if s.detail.startswith("computed by the loop of node "):
                groups.setdefault(int(s.detail.rsplit(" ", 1)[1]), []).append(s.node)
        profiled = set(program.profiled)
        steps = []
        for s in program.steps:
            if (s.kind == "native" and s.node in profiled) or s.kind == "host":
                steps.append(_Step(s.node, s.kind, s.detail, (s.node, *groups.get(s.node, ()))))
        return steps

    def _python_path(self, *args, **kwargs):
        return _profiled_call(self.function, self.executable, args, kwargs)[0]

    def entry(self, env: dict):
        """The native entry that takes a call of these dims as the fn's ordinary calls are
        taken (so that the call boundary is the ordinary one), or None: the Python path."""
        if self._entry is None:
            return None
        return self._entry.entry(env, self.function.single_output is not False)

    def reset(self) -> None:
        self.executable.reset()

    def counts(self) -> dict:
        """step node (None: a lazy fn's whole evaluation) -> (calls, ns)."""
        ex = self.executable
        found = {n: tuple(c) for n, c in ex.host_counts.items()}
        if self.native:
            found.update(ex.native_counts())
        return found

    def moved(self, step: _Step, env: dict) -> tuple[int | None, int | None]:
        """(bytes, flops) of one call of a step: its operands (from outside it) and results."""
        key = (step.node, tuple(sorted(env.items())))
        found = self._moved.get(key)
        if found is None:
            found = self._moved[key] = self._count_moved(step, env)
        return found

    def _count_moved(self, step: _Step, env: dict) -> tuple[int | None, int | None]:
        g = self.graph
        if step.node is None or g.op(step.node).view:
            return None, None
        inside = set(step.group)
        values = set(inside) | {o for m in inside for o in g.operands(m)}
        total = 0
        for v in values:
            b = _nbytes(g, v, env)
            if b is None:
                return None, None
            total += b
        flops = _flops(g, step.node, env)
        return total, flops


class HostCounts:
    """Per step (a node, or None for a whole call), the calls and nanoseconds timed from the host,
    in `host_counts`: what the host-timed executables of every backend collect."""

    host_counts: dict

    def reset(self) -> None:
        self.host_counts = {}

    def _add(self, key, ns: int) -> None:
        c = self.host_counts.setdefault(key, [0, 0])
        c[0] += 1
        c[1] += ns


class _HostTimed(HostCounts):
    """The reference evaluator with each node timed around its numpy call (a fn with a lazy
    `if`, evaluated on demand, is timed as one step)."""

    def __init__(self, graph, outputs, updates):
        from .backends.reference import ReferenceExecutable
        self.reference = ReferenceExecutable(graph, outputs, updates)
        self.graph, self.outputs, self.updates = graph, outputs, updates
        self.nodes, self.lazy = self.reference.nodes, self.reference.lazy
        self.reset()

    def __call__(self, inputs, state, env):
        from .backends.reference import _compute
        from .ir.scan import scan_runs
        clock = time.perf_counter_ns
        if self.lazy:
            t0 = clock()
            outs = self.reference(inputs, state, env)
            self._add(None, clock() - t0)
            return outs
        g = self.graph
        values: dict = {}
        env = dict(env)
        with scan_runs(), np.errstate(all="ignore"):
            for n in self.nodes:
                args = [values[o] for o in g.operands(n)]
                if g.op(n).leaf:
                    values[n] = _compute(g, n, args, inputs, state.values, env)
                    continue
                t0 = clock()
                values[n] = _compute(g, n, args, inputs, state.values, env)
                self._add(n, clock() - t0)
        for name, n in self.updates:
            state.set(name, values[n])
        return [values[n] for n in self.outputs]


def _build(function) -> _Build:
    build = function.__dict__.get("_profile_build")
    if build is None:
        build = function.__dict__["_profile_build"] = _Build(function)
    return build


# ------------------------------------------------------------------ collecting


class _FnProfile:
    """What the profiled calls of one fn added up to."""

    def __init__(self, function, build: _Build):
        self.function, self.build = function, build
        self.calls = 0
        self.total_ns = 0
        self.steps: dict = {}  # step node -> [calls, ns, bytes, flops] (bytes/flops summed over calls)

    def add(self, counts: dict, total_ns: int, env: dict) -> None:
        self.calls += 1
        self.total_ns += total_ns
        for step in self.build.steps:
            calls, ns = counts.get(step.node, (0, 0))
            acc = self.steps.setdefault(step.node, [0, 0, 0, 0])
            acc[0] += calls
            acc[1] += ns
            if calls:
                b, f = self.build.moved(step, env)
                acc[2] = None if b is None or acc[2] is None else acc[2] + b * calls
                acc[3] = None if f is None or acc[3] is None else acc[3] + f * calls

    def rows(self) -> list[Row]:
        g, ids, name = self.build.graph, self.build.ids, self.function.name
        total = self.total_ns / 1e9
        rows, steps_ns = [], 0
        for step in self.build.steps:
            calls, ns, moved, flops = self.steps.get(step.node, [0, 0, 0, 0])
            steps_ns += ns
            n = step.node
            loc = g.loc(n) if n is not None else None
            seconds = ns / 1e9
            rows.append(Row(
                fn=name, id=ids.get(n) if n is not None else None, node=n, op=g.op(n).name if n is not None else None,
                kind=step.kind, detail=step.detail, name=g.name(n) if n is not None else None, calls=calls,
                total_s=seconds, mean_s=seconds / calls if calls else 0.0, share=seconds / total if total else 0.0,
                bytes=moved // calls if calls and moved is not None else None,
                gbps=moved / seconds / 1e9 if moved and seconds else None,
                gflops=flops / seconds / 1e9 if flops and seconds else None,
                source=str(loc) if loc else None,
                line=loc.source_line().strip() if loc and loc.source_line() else None))
        boundary = max(self.total_ns - steps_ns, 0) / 1e9
        rows.append(Row(fn=name, id=None, node=None, op=None, kind="boundary",
                        detail="call boundary: argument checks, frame set-up, outputs", name=None,
                        calls=self.calls, total_s=boundary, mean_s=boundary / self.calls if self.calls else 0.0,
                        share=boundary / total if total else 0.0, bytes=None, gbps=None, gflops=None,
                        source=None, line=None))
        return rows

    def to_json(self) -> dict:
        f = self.function
        info = dict(getattr(f, "compile_info", {}))
        info["profiling_build_s"] = self.build.build_s
        return {"fn": f.name, "file": f.model.program.file, "backend": f.model.backend.name,
                "timing": self.build.timing, "calls": self.calls, "total_s": self.total_ns / 1e9,
                "compile": info, "rows": [asdict(r) for r in self.rows()]}


class Profile:
    """The profile of the calls made in a `flowml.profile()` block, or by `Function.profile`:
    per fn, one row per step (`rows`), as a table (`str(p)`, or rich's `console.print(p)`) and as
    JSON (`to_json()`, `save(path)`; the schema is in docs/inspect.md, "Profiling")."""

    def __init__(self):
        self._fns: dict[int, _FnProfile] = {}
        self._lock = threading.Lock()
        self.result = None  # what the last profiled call returned

    @property
    def functions(self) -> list[_FnProfile]:
        return list(self._fns.values())

    @property
    def rows(self) -> list[Row]:
        return [r for f in self._fns.values() for r in f.rows()]

    def call(self, function, args, kwargs):
        """Call `function` once in its profiling build and add the call to this profile."""
        build = _build(function)
        with self._lock:
            fp = self._fns.get(id(function))
            if fp is None:
                fp = self._fns[id(function)] = _FnProfile(function, build)
            fast = None if kwargs else function._fast_inputs(args)
            entry = build.entry(fast[1]) if fast is not None else None
            build.reset()
            if entry is not None:  # (the fn's ordinary calls take this path too)
                t0 = time.perf_counter_ns()
                result = entry(*args)
                total = time.perf_counter_ns() - t0
                env = fast[1]
            else:
                t0 = time.perf_counter_ns()
                result, env = _profiled_call(function, build.executable, args, kwargs)
                total = time.perf_counter_ns() - t0
            env = build.executable._binding(env).env if build.native else env
            fp.add(build.counts(), total, env)
        self.result = result
        return result

    def to_json(self) -> dict:
        return {"flowml_profile": SCHEMA, "functions": [f.to_json() for f in self._fns.values()]}

    def save(self, path) -> None:
        try:
            with open(path, "w", encoding="utf-8") as f:
                json.dump(self.to_json(), f, indent=1)
                f.write("\n")
        except OSError as e:
            raise FlowError(f"{path}: cannot write the profile ({e.strerror or e})") from None

    def __rich_console__(self, console, options):
        from .profile_table import tables
        yield from tables(self)

    def __str__(self) -> str:
        from rich.console import Console
        console = Console(width=160, record=True, file=_Null(), color_system=None)
        console.print(self)
        return console.export_text().rstrip()

    def __repr__(self) -> str:
        fns = ", ".join(f"{f.function.name} ({f.calls} call{'s' if f.calls != 1 else ''})" for f in self._fns.values())
        return f"<flowml profile of {fns or 'no calls'}>"


class _Null:
    def write(self, text):
        return len(text)

    def flush(self):
        pass


def _profiled_call(function, executable, args, kwargs):
    """`Function.__call__`'s Python path, on `executable` (the fn's profiling build): the same
    argument checks, locking and results. Returns (the result, the dims the call bound)."""
    from .program import coerce_array
    fast = None if kwargs else function._fast_inputs(args)
    if fast is not None:
        arrays, env = fast
    else:
        bound = function._bind(args, kwargs)
        env, arrays = {}, {}
        for name in function.input_names:
            decl = function.model.program.inputs[name]
            arrays[name] = coerce_array(bound[name], decl.var.type, f"{function.name}(): input '{name}'",
                                        decl.loc, env)
    model = function.model
    with model._shared.lock:
        if function._stale:
            model._shared.acquire(model.backend.name)
        try:
            outs = executable(arrays, model._state, dict(env))
        finally:
            if function._updated:
                model._shared.wrote(model.backend.name, function._updated)
    if not getattr(executable, "owns_outputs", False):
        outs = [np.array(o) for o in outs]
    if not outs:
        return None, env
    if len(outs) == 1 and function.single_output is not False:
        return outs[0], env
    return tuple(outs), env


# ------------------------------------------------------------------ flowml.profile()

_active: Profile | None = None
_saved: dict = {}  # fn -> its class before the block (a fn with a native entry has one of its own)


def _profiled_class():
    from .program import Function

    class ProfiledFunction(Function):
        """A fn inside a `flowml.profile()` block: its calls go to the block's profile."""

        def __call__(self, *args, **kwargs):
            return _active.call(self, args, kwargs)

    ProfiledFunction.__module__ = Function.__module__
    return ProfiledFunction


_ProfiledFunction = None


def _divert(function) -> None:
    if function not in _saved:
        _saved[function] = type(function)
        function.__class__ = _ProfiledFunction


def forget_entry(function) -> bool:
    """A fn inside a `flowml.profile()` block is given back the plain class after it (its native
    entry, built for an old `single_output`, is stale); False for a fn outside a block."""
    from .program import Function
    if function not in _saved:
        return False
    _saved[function] = Function
    return True


@contextmanager
def profile():
    """Profile every fn called inside the block (each in its profiling build): yields the
    `Profile` the calls add to. Fns called after the block run their ordinary build again."""
    global _active, _ProfiledFunction
    from . import program
    if _active is not None:
        raise FlowError("flowml.profile(): a profile is already being collected (blocks do not nest)")
    if _ProfiledFunction is None:
        _ProfiledFunction = _profiled_class()
    p = _active = Profile()
    try:
        for f in list(program._LIVE):
            _divert(f)
        program._PROFILING = _divert  # (fns made inside the block too)
        yield p
    finally:
        program._PROFILING = None
        for f, cls in _saved.items():
            f.__class__ = cls
        _saved.clear()
        _active = None
