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
"""

from __future__ import annotations

from dataclasses import dataclass, field

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


class Lowerer:
    """What a lowering may use while writing node n's code: the graph, the entry function being
    written (`fn`), kernels beside it, BLAS declarations, error codes."""

    def __init__(self, program: "NativeProgram"):
        self.program = program
        self.graph = program.graph
        self.mathlib = program.mathlib
        self.fn: IRFunction | None = None
        self.detail = ""

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


class NativeProgram:
    """The lowered function: its steps, segments, slots, error table and module text."""

    def __init__(self, graph: Graph, nodes: list[int], results: set[int], alias: dict[int, int]):
        self.graph = graph
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
        self._lower_all()

    # The lowering's scaffolding (the functions being written, the math library...): a pickled
    # program (the warm model cache, flowml/modelcache.py) leaves it and keeps what calls need
    # (steps, segments, slots, the error table, the module text...).
    SCAFFOLDING = ("graph", "users", "mathlib", "helpers", "functions", "pending", "_ids", "_index_dims",
                   "entries", "module")

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
        # (imported here: the lowering table imports every family, which a program loaded from
        # the warm model cache never needs)
        from .lowering import LOWERINGS, HostStep
        g = self.graph
        w = Lowerer(self)
        current: Segment | None = None
        for n in self.nodes:
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
                if current is None:
                    current = Segment(f"flowml_entry{len(self.segments)}")
                    self.segments.append(current)
                    w.fn = IRFunction(current.name, self.slot_of, "i32", "ptr noalias %ctx")
                mark = (len(w.fn.lines), len(w.fn.allocas), len(w.fn.head), dict(w.fn._dims),
                        len(self.pending), len(self.errors))
                w.detail = ""
                try:
                    lower(w, n)
                    reason = None
                except HostStep as e:
                    reason = e.reason
                    lines, allocas, head, dims, pending, errors = mark
                    del w.fn.lines[lines:], w.fn.allocas[allocas:], w.fn.head[head:]
                    w.fn._dims = dims
                    del self.pending[pending:], self.errors[errors:]
            if reason is None:
                self.steps.append(Step(n, "native" if w.detail != "folded" else "none", w.detail))
                if w.detail != "folded":
                    current.nodes.append(n)
                    self.slot_of(("ptr", n))
                    _record_hook(w.fn, n)
                continue
            current = self._close(w, current)
            self.steps.append(Step(n, "host", reason))
            self.segments.append(Segment(host=n))
            self.slot_of(("ptr", n))
        self._close(w, current)
        self.segments = [s for s in self.segments if s.host is not None or s.nodes]

    def _close(self, w: Lowerer, segment: Segment | None) -> None:
        if segment is not None and w.fn is not None:
            w.fn.line("ret i32 0")
            self.functions.append(w.fn)
            w.fn = None
        return None

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

