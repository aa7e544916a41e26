"""A compiled function as native entry points: its steps lowered through the lowering table
into one LLVM module whose entry functions run them in order.

The steps of a function are its nodes in topological order. Leaves (inputs, params, constants,
dims) and views (reshape) emit nothing: their addresses are slots of the call frame. Every
other node is lowered (`flowml.backends.llvm.lowering`) into the entry point, or, when it has
no lowering, is a *host step*: its numpy implementation, run between two entry points. So a
function whose every node is lowered is one native call, `i32 @flowml_entry0(ptr %ctx)`; each
host step splits the function into one more native segment.

The call frame `ctx` is an i64 array: slot 0 holds the thread count, slots 1-3 the details of a
failure (an index and its position), then one slot per value address and per symbolic dim (see
`irfunc`). An entry point returns 0, or the code of the first failure (a bad index...): the
caller turns code k into the located error `errors[k - 1]` describes.

Check mode records from the same entry points: after each native step they call the hook whose
address is in the frame's slot 4 (zero, and so skipped, in an ordinary call), which copies the
node's value as it is computed — check mode checks the very code that runs.

The profiling build (`NativeProgram(..., profile=True)`, `profiling.ProfilingExecutable`) is a
separate compilation whose entry points read the monotonic clock (libc's `clock_gettime`)
after each top-level step (a loop or a branch is one step; the read ending one step starts the
next, and the entry point's first step starts with a read of its own) and add the call and its
nanoseconds to the step's two words of a counter array, whose address is in the frame slot
keyed ("profile",). An ordinary program has neither the slot nor the clock reads.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from ...ir.graph import Graph
from . import blas, parallel, vecmath
from .irfunc import IRFunction, dim_names

THREADS_SLOT = 0
ERROR_SLOTS = (1, 2, 3)
HOOK_SLOT = 4  # check mode: `void hook(ptr ctx, i64 node)` called after each native step, or 0
RESERVED = 5
MIN_ITEMS_PER_THREAD = 1 << 15


@dataclass
class Step:
    """One node of the function and how it runs: kind is 'leaf', 'view', 'native', 'host' or
    'none' (folded into its users: a transpose read by matmul with a transpose flag)."""
    node: int
    kind: str
    detail: str = ""  # the native code it became (kernel, BLAS call...) or why it is a host step


@dataclass
class Segment:
    """A native entry point (`name`, running `nodes`) or a host step (`host`: the node)."""
    name: str | None = None
    nodes: list[int] = field(default_factory=list)
    host: int | None = None


class BranchHostStep(Exception):
    """A node on one side of a lazy `if` has no native code: the branch cannot be native (the
    LLVM backend then runs the whole fn on the reference evaluator)."""

    def __init__(self, node: int, reason: str):
        super().__init__(reason)
        self.node, self.reason = node, reason


class Lowerer:
    """What a lowering may use while writing node n's code: the graph, the entry function being
    written (`fn`), kernels beside it, BLAS declarations, error codes."""

    def __init__(self, program: "NativeProgram"):
        self.program = program
        self.graph = program.graph
        self.mathlib = program.mathlib
        self.fn: IRFunction | None = None
        self.detail = ""
        self.group: list[int] = []  # the nodes being lowered together (a loop's scan nodes)
        self.branch = None  # the `schedule.Branch` of the `ifelse` being lowered

    # ---- the graph
    def type(self, n):
        return self.graph.type(n)

    def attrs(self, n):
        return self.graph.attrs(n)

    def operands(self, n):
        return self.graph.operands(n)

    def users(self, n) -> list[int]:
        return self.program.users.get(n, [])

    def is_result(self, n) -> bool:
        """n is returned or written to a param (its value must exist when the call ends)."""
        return n in self.program.results

    # ---- code
    def ptr(self, node: int) -> str:
        return self.fn.ptr(node)

    def dim(self, d) -> str:
        return self.fn.dim(d)

    def size(self, shape) -> str:
        return self.fn.size(shape)

    def kernel(self, stem: str) -> IRFunction:
        """A new `void (ptr %ctx, i64 %start, i64 %end)` function in the module (see `launch`)."""
        k = IRFunction(f"{stem}.{self.program.next_id()}", self.program.slot_of)
        self.program.pending.append(k)
        return k

    def frame_buffer(self, dtype, shape, key=None) -> tuple:
        """A buffer of every call frame, allocated with the frame (its symbolic dims resolved per
        binding), of `shape` and `dtype`: its slot key (a fresh one unless `key`), whose address
        `fn.load_slot(key)` loads."""
        key = key or ("scratch", self.program.next_id())
        self.program.statics.append(("buffer", (self.program.slot_of(key),), np.dtype(dtype).str, tuple(shape)))
        return key

    def helper(self, name: str, text: str) -> None:
        """A module-level definition or declaration, emitted once however often it is used."""
        self.program.helpers.setdefault(name, text)

    def blas(self, routine: str) -> str:
        """The IR name of scipy's BLAS routine (declared in the module)."""
        self.program.blas.add(routine)
        return "@" + blas.symbol(routine)

    def launch(self, kernel: IRFunction | str, extent: str, work: str | None = None, parallel_ok: bool = True,
               arg: str = "%ctx") -> None:
        """Run `kernel` over [0, extent) from the entry point: split over the frame's thread count
        when `work` (items, default extent) is large enough; each thread gets whole iterations,
        so results do not depend on the thread count unless the kernel makes them. `kernel` is an
        IRFunction or the name of a module-level one; its first argument is the frame, or `arg`."""
        fn = self.fn
        name = kernel if isinstance(kernel, str) else kernel.name
        if not parallel_ok:
            fn.line(f"call void @{name}(ptr {arg}, i64 0, i64 {extent})")
            return
        work = work or extent
        nthreads = fn.load_word(THREADS_SLOT)
        t = fn.emit(f"udiv i64 {work}, {MIN_ITEMS_PER_THREAD}", "nt")
        t = fn.emit(f"call i64 @llvm.smin.i64(i64 {t}, i64 {extent})", "nt")
        t = fn.emit(f"call i64 @llvm.smin.i64(i64 {t}, i64 {nthreads})", "nt")
        self.helper("llvm.smin.i64", "declare i64 @llvm.smin.i64(i64, i64)")
        many = fn.emit(f"icmp sgt i64 {t}, 1", "c")
        par, one, done = fn.label("par"), fn.label("one"), fn.label("ran")
        fn.line(f"br i1 {many}, label %{par}, label %{one}")
        fn.block(par)
        fn.line(f"call void @{parallel.NAME}(ptr @{name}, ptr {arg}, i64 {extent}, i64 {t})")
        fn.line(f"br label %{done}")
        fn.block(one)
        fn.line(f"call void @{name}(ptr {arg}, i64 0, i64 {extent})")
        fn.line(f"br label %{done}")
        fn.block(done)
        self.program.uses_parallel = True

    def fail_if(self, cond: str, n: int, describe, *info: str) -> None:
        """If the i1 `cond` holds, the entry point stops: up to three i64 `info` words go to the
        frame's error slots and the call raises `describe(node, info_words)` (a FlowRuntimeError)."""
        code = self.program.error_code(n, describe)
        fn = self.fn
        with fn.if_(cond):
            for slot, value in zip(ERROR_SLOTS, info):
                fn.line(f"store i64 {value}, ptr {fn.slot_ptr(slot)}")
            fn.line(f"ret i32 {code}")

    def note(self, text: str) -> None:
        """What node n became, for `--emit plan` ("dgemm", "kernel k12 (2 threads max)")."""
        self.detail = text


def _record_hook(fn: IRFunction, n: int) -> None:
    hook = fn.emit(f"load ptr, ptr {fn.slot_ptr(HOOK_SLOT)}", "hook")
    with fn.if_(fn.emit(f"icmp ne ptr {hook}, null", "c")):
        fn.line(f"call void {hook}(ptr %ctx, i64 {n})")


def _clock(w: "Lowerer") -> str:
    """An i64 register: the monotonic clock's nanoseconds now (the profiling build)."""
    import time
    fn = w.fn
    w.helper("clock_gettime", "declare i32 @clock_gettime(i32, ptr)")
    ts = fn.array("i64", 2)  # struct timespec {tv_sec, tv_nsec}
    fn.line(f"call i32 @clock_gettime(i32 {time.CLOCK_MONOTONIC}, ptr {ts})")
    sec = fn.emit(f"load i64, ptr {ts}", "sec")
    nsec = fn.emit(f"load i64, ptr {fn.gep('i64', ts, '1')}", "nsec")
    ns = fn.emit(f"mul i64 {sec}, 1000000000", "ns")
    return fn.emit(f"add i64 {ns}, {nsec}", "now")


def _count(w: "Lowerer", index: int, t0: str) -> str:
    """Add one call and the nanoseconds since `t0` to step `index`'s counter words; returns the
    clock's register, which starts the next step of the entry point (its straight-line code
    dominates what follows: every lowering leaves control flow joined)."""
    fn = w.fn
    now = _clock(w)
    elapsed = fn.emit(f"sub i64 {now}, {t0}", "dt")
    counters = fn.load_slot(("profile",))
    for word, amount in ((2 * index, "1"), (2 * index + 1, elapsed)):
        p = fn.gep("i64", counters, str(word))
        old = fn.emit(f"load i64, ptr {p}", "c")
        fn.line(f"store i64 {fn.emit(f'add i64 {old}, {amount}', 'c')}, ptr {p}")
    return now


class NativeProgram:
    """The lowered function: its steps, segments, slots, error table and module text."""

    statics: list = ()  # (see __init__; the default of a program pickled before there were any)

    profile = False  # (see __init__; the default of a program pickled before there was profiling)
    profiled: list = ()

    def __init__(self, graph: Graph, nodes: list[int], results: set[int], alias: dict[int, int],
                 profile: bool = False):
        """`profile`: the profiling build (see the module's doc): `profiled[i]` is the node whose
        step counter words 2i (calls) and 2i+1 (nanoseconds) count."""
        self.graph = graph
        self.profile = profile
        self.profiled: list[int] = []
        self.nodes = nodes
        self.results = results
        self.alias = alias  # view -> the node whose storage it shares (resolved to the root)
        self.users: dict[int, list[int]] = {}
        for n in nodes:
            for o in graph.operands(n):
                self.users.setdefault(o, []).append(n)
        self.slot: dict[tuple, int] = {}
        self.mathlib = vecmath.MathLib()
        self.helpers: dict[str, str] = {}
        self.blas: set[str] = set()
        self.functions: list[IRFunction] = []
        self.pending: list[IRFunction] = []
        self.errors: list[tuple[int, object]] = []
        self.uses_parallel = False
        self.world_keys: set[tuple] = set()  # frame slots of the process group (lowering/collective.py)
        self._ids = 0
        self.steps: list[Step] = []
        self.segments: list[Segment] = []
        # what each frame needs beyond the memory plan's buffers (a loop body's values, its
        # constants and dims): ("buffer", slots, dtype, shape) one array per frame whose address
        # goes into every slot; ("const", slot, array) / ("dim", slot, dim) set once per binding
        self.statics: list[tuple] = []
        self.records = True  # check mode's hook after each node (not inside a loop's body)
        self.kernel_prefix = ""  # of fused kernels' names (k<node>)
        self._lower_all()

    # The lowering's scaffolding (the functions being written, the math library...): a pickled
    # program (the warm model cache, flowml/modelcache.py) leaves it and keeps what calls need
    # (steps, segments, slots, the error table, the module text...).
    SCAFFOLDING = ("graph", "users", "mathlib", "helpers", "functions", "pending", "_ids", "_index_dims",
                   "entries", "module", "_segment")

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in self.SCAFFOLDING}

    # ---- slots and names
    def slot_of(self, key) -> int:
        if key[0] == "ptr":
            key = ("ptr", self.alias.get(key[1], key[1]))
        if key not in self.slot:
            self.slot[key] = RESERVED + len(self.slot)
        return self.slot[key]

    def next_id(self) -> int:
        self._ids += 1
        return self._ids

    def error_code(self, n: int, describe) -> int:
        self.errors.append((n, describe))
        return len(self.errors)

    # ---- lowering
    def _lower_all(self) -> None:
        from ...ir.schedule import schedule
        w = Lowerer(self)
        self._segment = None
        self._lower_items(w, schedule(self.graph, sorted(self.results)), top=True)
        self._close(w)
        self.segments = [s for s in self.segments if s.host is not None or s.nodes]

    def _lower_items(self, w: "Lowerer", items: list, top: bool) -> None:
        """Lower the scheduled items (`flowml.ir.schedule`) into `w.fn`. At the top, a node that
        is not lowered becomes a host step between two entry points; inside a branch it cannot
        (raises BranchHostStep)."""
        # (imported here: the lowering table imports every family, which a program loaded from
        # the warm model cache never needs)
        from ...ir.schedule import Branch, Loop
        from .lowering import LOWERINGS, HostStep
        g = self.graph
        for item in items:
            nodes = item.nodes if isinstance(item, Loop) else [item.node if isinstance(item, Branch) else item]
            n = nodes[0]
            op = g.op(n)
            if op.leaf:
                self.steps.append(Step(n, "leaf"))
                self.slot_of(("ptr", n))
                continue
            if op.view:
                self.steps.append(Step(n, "view", "shares its operand's buffer"))
                continue
            lower = LOWERINGS.get(op.name)
            if lower is None:
                reason = "no LLVM lowering"
            else:
                if top and self._segment is None:
                    self._segment = Segment(f"flowml_entry{len(self.segments)}")
                    self.segments.append(self._segment)
                    w.fn = IRFunction(self._segment.name, self.slot_of, "i32", "ptr noalias %ctx")
                mark = (len(w.fn.lines), len(w.fn.allocas), len(w.fn.head), dict(w.fn._dims),
                        len(self.pending), len(self.errors), len(self.statics))
                timed = top and self.profile
                if timed:  # (the clock read that ended the step before starts this one: one read a step)
                    chained = w.fn.clock
                    clock_at = len(w.fn.lines)
                    t0 = chained or _clock(w)
                    clock_end = len(w.fn.lines)
                w.detail = ""
                w.group, w.branch = nodes, item if isinstance(item, Branch) else None
                try:
                    lower(w, n)
                    reason = None
                except HostStep as e:
                    reason = e.reason
                    if timed:
                        w.fn.clock = chained  # (a fresh read is rolled back with the rest)
                    lines, allocas, head, dims, pending, errors, statics = mark
                    del w.fn.lines[lines:], w.fn.allocas[allocas:], w.fn.head[head:]
                    w.fn._dims = dims
                    del self.pending[pending:], self.errors[errors:], self.statics[statics:]
            if reason is None:
                if timed and w.detail == "folded":  # (no code: no row, and no clock reads)
                    del w.fn.lines[clock_at:clock_end]
                elif timed:
                    w.fn.clock = _count(w, len(self.profiled), t0)
                    self.profiled.append(n)
                for k, m in enumerate(nodes):
                    detail = w.detail if k == 0 else (f"computed by the loop of node {n}" if op.name == "scan"
                                                      else f"computed with node {n}")
                    self.steps.append(Step(m, "native" if detail != "folded" else "none", detail))
                    if detail != "folded":
                        if self._segment is not None:
                            self._segment.nodes.append(m)
                        self.slot_of(("ptr", m))
                        if self.records:
                            _record_hook(w.fn, m)
                continue
            if not top:
                raise BranchHostStep(n, reason)
            self._close(w)
            for m in nodes:
                self.steps.append(Step(m, "host", reason))
                self.segments.append(Segment(host=m))
                self.slot_of(("ptr", m))

    def lower_branch(self, w: "Lowerer", items: list) -> None:
        """Lower the items of one side of an `if` (`lowering/control.py`) into `w.fn`."""
        group, branch, detail = w.group, w.branch, w.detail
        self._lower_items(w, items, top=False)
        w.group, w.branch, w.detail = group, branch, detail

    def _close(self, w: Lowerer) -> None:
        if self._segment is not None and w.fn is not None:
            w.fn.line("ret i32 0")
            self.functions.append(w.fn)
            w.fn = None
        self._segment = None

    # ---- the module
    def module_text(self) -> str:
        kept = {s.name for s in self.segments if s.name}
        entries = [f for f in self.functions if f.name in kept]
        parts = [f.text() for f in entries] + [k.text() for k in self.pending]
        parts += list(self.helpers.values())
        parts.append(blas.declarations(sorted(self.blas)))
        if self.uses_parallel:
            parts.append(parallel.DECLARATION)
        parts.append(self.mathlib.declarations())
        return "\n\n".join(p for p in parts if p) + "\n"

    def external_symbols(self) -> set[str]:
        """The functions the module declares but does not define (what native code may call)."""
        import re
        text = self.text  # (the module as compiled; also there for a program from the model cache)
        declared = set(re.findall(r"^declare [^@]*@([\w.$]+)\(", text, re.M))
        return declared


def dims_used(graph: Graph, nodes) -> set[str]:
    names = set()
    for n in nodes:
        names |= dim_names(graph.type(n).shape)
        shape = graph.attrs(n).get("shape") if graph.op(n).name in ("fused", "random", "full", "reshape",
                                                                      "broadcast_to") else None
        if shape is not None:
            names |= dim_names(shape)
    return names



class BodyProgram(NativeProgram):
    """A loop's body (a scan node's `body` graph), lowered as the function `i32 @<fn_name>(ptr
    %ctx)` of the enclosing program's module, through the same lowering table. Its values live
    in the same call frame: slot keys ("sub", tag, node) and buffers of their own (`statics`,
    allocated once per frame); its kernels, helpers and declarations are the module's; its
    failures are entries of the enclosing error table, described with the body's graph.

    `roots`: the body outputs the loop needs; `direct`: those the loop points at their
    destination before each step (a history slice, a carry's next buffer), which need no buffer.
    Raises HostStep if a body node has no native code (the loop then runs on the host)."""

    def __init__(self, parent: NativeProgram, graph: Graph, roots: list[int], node: int, direct: set[int]):
        from ...ir import ops as P
        from ...ir.schedule import schedule
        from ...passes.memory import plan_memory
        from .lowering import HostStep
        self.parent, self.node = parent, node
        self.graph = graph
        self.results = set(roots)
        self.nodes = sorted(graph.ancestors(roots))
        if any(graph.op(m) is P.param for m in self.nodes):
            raise HostStep("its body reads a param")
        plan = plan_memory(graph, list(roots), [])
        self.alias = {}
        for v in plan.alias:
            root = v
            while root in plan.alias:
                root = plan.alias[root]
            self.alias[v] = root
        self.users = {}
        for m in self.nodes:
            for o in graph.operands(m):
                self.users.setdefault(o, []).append(m)
        self.tag = parent.next_id()
        self.fn_name = f"flowml.loop.{self.tag}"
        self.kernel_prefix = f"loop{self.tag}."
        self.mathlib, self.helpers, self.blas = parent.mathlib, parent.helpers, parent.blas
        self.pending, self.errors, self.world_keys = parent.pending, parent.errors, parent.world_keys
        self.functions, self.steps, self.segments, self.statics = [], [], [], []
        self.uses_parallel, self.records, self._segment = False, False, None
        w = Lowerer(self)
        w.fn = IRFunction(self.fn_name, self.slot_of, "i32", "ptr noalias %ctx")
        try:
            self._lower_items(w, schedule(graph, sorted(self.results)), top=False)
        except BranchHostStep as e:
            raise HostStep(f"its body's {graph.op(e.node).name} has no native code ({e.reason})") from None
        w.fn.line("ret i32 0")
        self.pending.append(w.fn)
        parent.uses_parallel |= self.uses_parallel
        folded = {s.node for s in self.steps if s.kind == "none"}
        buffers: dict[int, list[int]] = {}
        for m in self.nodes:
            op = graph.op(m)
            if op is P.const:
                self.statics.append(("const", self.slot_of(("ptr", m)), graph.attrs(m)["value"]))
            elif op is P.dim:
                self.statics.append(("dim", self.slot_of(("ptr", m)), graph.attrs(m)["dim"]))
            elif not (op.leaf or op.view or m in folded or m in direct):
                buffers.setdefault(plan.assign.get(m, -1 - m), []).append(self.slot_of(("ptr", m)))
        for b, slots in buffers.items():
            t = plan.buffers[b] if b >= 0 else graph.type(-1 - b)
            self.statics.append(("buffer", tuple(slots), t.dtype.str, tuple(t.shape)))
        parent.statics.extend(self.statics)

    def slot_of(self, key) -> int:
        if key[0] == "ptr":
            return self.parent.slot_of(("sub", self.tag, self.alias.get(key[1], key[1])))
        return self.parent.slot_of(key)  # (dims and the frame's other words are the enclosing ones)

    def next_id(self) -> int:
        return self.parent.next_id()

    def error_code(self, n: int, describe) -> int:
        return self.parent.error_code(self.node, functools.partial(_in_body, self.graph, n, describe))


def _in_body(body: Graph, body_node: int, describe, graph, node, info, env):
    """The error of node `body_node` of a loop's body (an entry point's error describer)."""
    return describe(body, body_node, info, env)
