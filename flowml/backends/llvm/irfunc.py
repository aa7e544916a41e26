"""A small writer of one LLVM IR function as text: fresh register names, labels, the allocas
hoisted into the entry block (so mem2reg turns loop counters into phis), counted loops, and the
call frame's slots.

Every function the native runtime generates takes the call frame `ptr %ctx` first: an i64
array whose slots (fixed at compile time) hold the data addresses of values, the sizes of
symbolic dims and per-binding facts such as thread counts. Kernels that `flowml_parallel_for`
may split have the signature `void (ptr %ctx, i64 %start, i64 %end)`.
"""

from __future__ import annotations

from contextlib import contextmanager

from ...ir.types import Sym

IR_TYPE = {"float32": "float", "float64": "double", "int32": "i32", "int64": "i64", "bool": "i1"}
MEM_TYPE = {**IR_TYPE, "bool": "i8"}  # how a value is stored (bools as one byte)


class IRFunction:
    """Lines of one function. `slot_of(key) -> int` gives the frame slot of a ("ptr", node) or
    ("dim", name) key; `dims` are loaded once per function, at its top."""

    def __init__(self, name: str, slot_of, signature: str = "void", params: str = "ptr %ctx, i64 %start, i64 %end"):
        self.name = name
        self.slot_of = slot_of
        self.signature = signature
        self.params = params
        self.allocas: list[str] = []
        self.head: list[str] = []  # loads of dims, hoisted like the allocas
        self.lines: list[str] = []
        self.count = 0
        self._dims: dict[str, str] = {}
        self.clock: str | None = None  # the profiling build: the last clock read (entry.NativeProgram)

    # ------------------------------------------------------------ registers and text

    def fresh(self, stem: str = "t") -> str:
        self.count += 1
        return f"%{stem}.{self.count}"

    def emit(self, rhs: str, stem: str = "t") -> str:
        reg = self.fresh(stem)
        self.lines.append(f"  {reg} = {rhs}")
        return reg

    def line(self, text: str) -> None:
        self.lines.append(f"  {text}")

    def label(self, stem: str) -> str:
        self.count += 1
        return f"{stem}.{self.count}"

    def block(self, label: str) -> None:
        self.lines.append(f"{label}:")

    def var(self, typ: str, init: str | None = None) -> str:
        """A mutable local (an alloca in the entry block)."""
        reg = self.fresh("var")
        self.allocas.append(f"  {reg} = alloca {typ}, align 8")
        if init is not None:
            self.line(f"store {typ} {init}, ptr {reg}")
        return reg

    def array(self, typ: str, n: int) -> str:
        reg = self.fresh("arr")
        self.allocas.append(f"  {reg} = alloca {typ}, i64 {n}, align 8")
        return reg

    def text(self) -> str:
        return "\n".join([f"define {self.signature} @{self.name}({self.params}) {{", "entry:",
                          *self.allocas, *self.head, *self.lines, "}"])

    # ------------------------------------------------------------ the frame

    def slot_ptr(self, slot: int) -> str:
        return self.emit(f"getelementptr i64, ptr %ctx, i64 {slot}", "s")

    def load_word(self, slot: int) -> str:
        """The i64 in frame slot `slot` (a reserved slot: thread count, error words...)."""
        return self.emit(f"load i64, ptr {self.slot_ptr(slot)}", "v")

    def load_slot(self, key, typ: str = "ptr") -> str:
        return self.emit(f"load {typ}, ptr {self.slot_ptr(self.slot_of(key))}", "v")

    def ptr(self, node: int) -> str:
        """The data address of node `node`'s value (loaded where it is used: a slot may be set
        during the call, e.g. by an in-place update)."""
        return self.load_slot(("ptr", node))

    def dim(self, d) -> str:
        """An i64 for dim `d` (an int, or a Sym: coeff times the product of named dims)."""
        if isinstance(d, int):
            return str(d)
        value = None
        for name in d.names:
            v = self._dims.get(name)
            if v is None:
                v = self.fresh("dim")
                slot = self.slot_of(("dim", name))
                p = self.fresh("dimp")
                self.head.append(f"  {p} = getelementptr i64, ptr %ctx, i64 {slot}")
                self.head.append(f"  {v} = load i64, ptr {p}")
                self._dims[name] = v
            value = v if value is None else self.emit(f"mul i64 {value}, {v}", "d")
        if d.coeff != 1:
            value = self.emit(f"mul i64 {value}, {d.coeff}", "d")
        return value

    def size(self, dims) -> str:
        """An i64 for the product of `dims`."""
        value = "1"
        for d in dims:
            dv = self.dim(d)
            value = dv if value == "1" else (self.emit(f"mul i64 {value}, {dv}", "d") if dv != "1" else value)
        return value

    # ------------------------------------------------------------ arithmetic on i64

    def mul(self, a: str, b: str) -> str:
        if a == "1":
            return b
        if b == "1":
            return a
        return self.emit(f"mul i64 {a}, {b}", "m")

    def add(self, a: str, b: str) -> str:
        if a == "0":
            return b
        if b == "0":
            return a
        return self.emit(f"add i64 {a}, {b}", "a")

    def gep(self, typ: str, base: str, index: str) -> str:
        return self.emit(f"getelementptr inbounds {typ}, ptr {base}, i64 {index}", "p")

    def load(self, typ: str, base: str, index: str) -> str:
        return self.emit(f"load {typ}, ptr {self.gep(typ, base, index)}", "l")

    def store(self, typ: str, value: str, base: str, index: str) -> None:
        self.line(f"store {typ} {value}, ptr {self.gep(typ, base, index)}")

    # ------------------------------------------------------------ control flow

    @contextmanager
    def loop(self, lo: str, hi: str, stem: str = "i"):
        """`for i in range(lo, hi)`: yields the i64 register of i inside the body."""
        counter = self.var("i64")
        self.line(f"store i64 {lo}, ptr {counter}")
        head, body, end = self.label(f"{stem}.head"), self.label(f"{stem}.body"), self.label(f"{stem}.end")
        self.line(f"br label %{head}")
        self.block(head)
        i = self.emit(f"load i64, ptr {counter}", stem)
        more = self.emit(f"icmp slt i64 {i}, {hi}", "c")
        self.line(f"br i1 {more}, label %{body}, label %{end}")
        self.block(body)
        yield i
        nxt = self.emit(f"add nuw nsw i64 {i}, 1", "n")
        self.line(f"store i64 {nxt}, ptr {counter}")
        self.line(f"br label %{head}")
        self.block(end)

    @contextmanager
    def if_(self, cond: str):
        """`if cond:` (an i1)."""
        then, done = self.label("then"), self.label("endif")
        self.line(f"br i1 {cond}, label %{then}, label %{done}")
        self.block(then)
        yield
        self.line(f"br label %{done}")
        self.block(done)


def dim_names(shape) -> set[str]:
    return {name for d in shape if isinstance(d, Sym) for name in d.names}
