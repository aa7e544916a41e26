"""LLVM IR for one fused node: a loop nest over its iteration space.

Every kernel has the signature `void @kN(ptr %ctx, i64 %start, i64 %end)`. `ctx` is the
executable's slot table (an i64 array: data pointers of values and sizes of symbolic dims, at
slots fixed when the function is compiled); the kernel computes the part [start, end) of its
outermost loop, so `flowml_parallel_for` can split it across threads.

The loop nest: axes of the iteration space whose broadcast pattern is the same for every
operand (and, for a reduction, that are all reduced or all kept) are collapsed into one, so a
contiguous elementwise kernel is one flat loop the vectorizer widens. An operand is contiguous
(C order); its stride on a collapsed axis is 0 where it is broadcast. A reduction whose
innermost axis is reduced accumulates in a register (with `reassoc`, so sums vectorize) in
blocks of BLOCK elements, float32 blocks added into a float64 total, so a float32 sum of 2**24
terms keeps about 1e-7 relative error.

The math of each instruction comes from `flowml.backends.scalar`; this module only supplies the
`ScalarBuilder` for LLVM IR text.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from ...ir.types import is_float
from .. import scalar as S

IR_TYPE = {"float32": "float", "float64": "double", "int32": "i32", "int64": "i64", "bool": "i1"}
MEM_TYPE = {**IR_TYPE, "bool": "i8"}
ITEMSIZE = {"float32": 4, "float64": 8, "int32": 4, "int64": 8, "bool": 1}
BLOCK = 4096

_FCMP = {"eq": "oeq", "ne": "une", "lt": "olt", "le": "ole", "gt": "ogt", "ge": "oge"}
_ICMP = {"eq": "eq", "ne": "ne", "lt": "slt", "le": "sle", "gt": "sgt", "ge": "sge"}
_UCMP = {"eq": "eq", "ne": "ne", "lt": "ult", "le": "ule", "gt": "ugt", "ge": "uge"}
_INTRINSIC = {"fabs": "fabs", "floor": "floor", "sqrt": "sqrt", "ceil": "ceil", "trunc": "trunc",
              "rint": "roundeven"}


def float_literal(value: float, dtype: str) -> str:
    """LLVM float constants are written as the double-hex of the (rounded) value."""
    v = float(np.float32(value)) if dtype == "float32" else float(value)
    return "0x%016X" % struct.unpack("<Q", struct.pack("<d", v))[0]


class LLVMScalarBuilder:
    """`flowml.backends.scalar`'s ScalarBuilder, emitting LLVM IR text lines."""

    def __init__(self, lines: list[str], mathlib, prefix: str):
        self.lines = lines
        self.lib = mathlib
        self.prefix = prefix
        self.count = 0
        self.intrinsics: set[str] = set()

    def _emit(self, rhs: str) -> str:
        self.count += 1
        reg = f"%{self.prefix}{self.count}"
        self.lines.append(f"  {reg} = {rhs}")
        return reg

    def const(self, value, dtype):
        if is_float(dtype):
            return float_literal(value, dtype)
        if dtype == "bool":
            return "true" if value else "false"
        return str(int(value))

    def binary(self, op, a, b, dtype):
        t = IR_TYPE[dtype]
        if is_float(dtype):
            # no `contract`: a fused multiply-add would round differently from numpy
            return self._emit(f"f{op} {t} {a}, {b}")
        if op == "div" and b != "-1" and not b.lstrip("-").isdigit():
            # sdiv of INT_MIN by -1 is undefined (x86's idiv traps: SIGFPE kills the process);
            # numpy wraps it to INT_MIN. Divide by -1 as a wrapping negation instead. (Division
            # by zero is guarded by the formulas, which never divide by a zero they can see.)
            minus1 = self._emit(f"icmp eq {t} {b}, -1")
            safe = self._emit(f"select i1 {minus1}, {t} 1, {t} {b}")
            q = self._emit(f"sdiv {t} {a}, {safe}")
            negated = self._emit(f"sub {t} 0, {a}")
            return self._emit(f"select i1 {minus1}, {t} {negated}, {t} {q}")
        if op == "div" and b == "-1":
            return self._emit(f"sub {t} 0, {a}")
        ins = {"add": "add", "sub": "sub", "mul": "mul", "div": "sdiv"}[op]
        return self._emit(f"{ins} {t} {a}, {b}")

    def neg(self, a, dtype):
        t = IR_TYPE[dtype]
        if is_float(dtype):
            return self._emit(f"fneg {t} {a}")
        return self._emit(f"sub {t} 0, {a}")

    def compare(self, op, a, b, dtype):
        t = IR_TYPE[dtype]
        if is_float(dtype):
            return self._emit(f"fcmp {_FCMP[op]} {t} {a}, {b}")
        table = _UCMP if dtype == "bool" else _ICMP
        return self._emit(f"icmp {table[op]} {t} {a}, {b}")

    def logic(self, op, a, b):
        return self._emit(f"{op} i1 {a}, {b}")

    def not_(self, a):
        return self._emit(f"xor i1 {a}, true")

    def select(self, c, a, b, dtype):
        t = IR_TYPE[dtype]
        return self._emit(f"select i1 {c}, {t} {a}, {t} {b}")

    def call(self, fn, a, dtype):
        t = IR_TYPE[dtype]
        if fn in _INTRINSIC:
            name = f"llvm.{_INTRINSIC[fn]}.{'f32' if dtype == 'float32' else 'f64'}"
            self.intrinsics.add(f"declare {t} @{name}({t})")
            return self._emit(f"call {t} @{name}({t} {a})")
        return self._emit(self.lib.call(fn, dtype, a))

    def call2(self, fn, a, b, dtype):
        t = IR_TYPE[dtype]
        if fn == "fmod":
            return self._emit(f"frem {t} {a}, {b}")
        return self._emit(self.lib.call(fn, dtype, a, b))

    def cast(self, a, src, dst):
        if src == dst:
            return a
        ts, td = IR_TYPE[src], IR_TYPE[dst]
        fs, fd = is_float(src), is_float(dst)
        if dst == "bool":
            zero = self.const(0, src)
            return self._emit(f"fcmp une {ts} {a}, {zero}" if fs else f"icmp ne {ts} {a}, {zero}")
        if fs and fd:
            return self._emit(f"{'fpext' if ITEMSIZE[dst] > ITEMSIZE[src] else 'fptrunc'} {ts} {a} to {td}")
        if fs:
            return self._emit(f"fptosi {ts} {a} to {td}")
        if fd:
            return self._emit(f"{'uitofp' if src == 'bool' else 'sitofp'} {ts} {a} to {td}")
        if src == "bool":
            return self._emit(f"zext i1 {a} to {td}")
        return self._emit(f"{'sext' if ITEMSIZE[dst] > ITEMSIZE[src] else 'trunc'} {ts} {a} to {td}")


@dataclass
class KernelInfo:
    name: str
    parallel_axis_extent: object  # a dim expression (int or Sym product) of the outer loop
    splittable: bool              # the outer loop may run in chunks on several threads
    atomic_sum: bool = False      # chunks add their partial sums into the output atomically


class KernelWriter:
    """Writes one fused node's kernel function."""

    def __init__(self, name: str, node_type, operand_types, body, reduce, iteration_shape,
                 slots: dict, dim_slots: dict[str, int], mathlib, inplace_operand: int | None = None,
                 metadata_id=None):
        self.name = name
        self.out_type = node_type
        self.operand_types = operand_types
        self.body = body
        self.reduce = reduce
        self.shape = tuple(iteration_shape)
        self.slots = slots  # "out" / k -> ctx slot of the data pointer
        self.dim_slots = dim_slots
        self.lib = mathlib
        self.inplace_operand = inplace_operand
        self.metadata_id = metadata_id  # () -> a number for metadata unique in the module, or None
        self.metadata: list[str] = []  # module-level metadata lines (loop hints)
        self.lines: list[str] = []
        self.b = LLVMScalarBuilder(self.lines, mathlib, "v")
        self.block = "entry"
        self.tmp = 0

    # -------------------------------------------------------------- helpers

    def fresh(self, stem: str) -> str:
        self.tmp += 1
        return f"%{stem}{self.tmp}"

    def emit(self, rhs: str, stem: str = "t") -> str:
        reg = self.fresh(stem)
        self.lines.append(f"  {reg} = {rhs}")
        return reg

    def label(self, name: str) -> None:
        self.lines.append(f"{name}:")
        self.block = name

    def ctx_load(self, slot: int, typ: str) -> str:
        p = self.emit(f"getelementptr i64, ptr %ctx, i64 {slot}", "c")
        return self.emit(f"load {typ}, ptr {p}", "c")

    def dim(self, d) -> str:
        if isinstance(d, int):
            return str(d)
        value = str(d.coeff)
        for name in d.names:
            v = self.ctx_load(self.dim_slots[name], "i64")
            value = self.emit(f"mul i64 {value}, {v}", "d")
        return value

    def product(self, dims) -> str:
        value = "1"
        for d in dims:
            dv = self.dim(d)
            value = dv if value == "1" else self.emit(f"mul i64 {value}, {dv}", "d")
        return value

    # -------------------------------------------------------------- structure

    def collapsed_axes(self):
        """Groups of iteration axes with one pattern (reduced?, broadcast per operand)."""
        nd = len(self.shape)
        red = set(self.reduce[1]) if self.reduce else set()
        groups: list[tuple[tuple, list[int]]] = []
        for a, d in enumerate(self.shape):
            if d == 1:
                continue  # a unit axis iterates once: drop it
            pattern = (a in red,) + tuple(self._broadcast(t.shape, a, nd) for t in self.operand_types)
            if groups and groups[-1][0] == pattern:
                groups[-1][1].append(a)
            else:
                groups.append((pattern, [a]))
        return groups

    @staticmethod
    def _broadcast(shape, axis, nd) -> bool:
        k = axis - (nd - len(shape))
        return k < 0 or shape[k] == 1

    def operand_stride(self, k: int, axes: list[int]) -> str:
        """Element stride of operand k along a collapsed axis ending at axes[-1]."""
        shape = self.operand_types[k].shape
        nd = len(self.shape)
        if self._broadcast(shape, axes[-1], nd):
            return "0"
        k0 = axes[-1] - (nd - len(shape))
        return self.product(shape[k0 + 1:])

    def out_stride(self, axes: list[int]) -> str:
        if self.reduce is None:
            return self.product(self.shape[axes[-1] + 1:])
        red = set(self.reduce[1])
        if axes[-1] in red:
            return "0"
        return self.product(d for a, d in enumerate(self.shape) if a > axes[-1] and a not in red)

    # -------------------------------------------------------------- the function

    def write(self) -> tuple[str, KernelInfo]:
        groups = self.collapsed_axes()
        self.lines.append(f"define void @{self.name}(ptr noalias %ctx, i64 %start, i64 %end) {{")
        self.label("entry")
        nin = len(self.operand_types)
        self.ptrs = [self.ctx_load(self.slots[k], "ptr") for k in range(nin)]
        self.out_ptr = self.ctx_load(self.slots["out"], "ptr")
        extents = [self.product(self.shape[a] for a in axes) for _, axes in groups]
        in_strides = [[self.operand_stride(k, axes) for k in range(nin)] for _, axes in groups]
        out_strides = [self.out_stride(axes) for _, axes in groups]
        reduced = [pattern[0] for pattern, _ in groups]
        out_dt = self.out_type.dtype.name
        splittable = not (groups and reduced[0])
        atomic = False
        if self.reduce is not None:
            if groups and all(reduced) and len(groups) == 1 and self.reduce[0] == "sum" and is_float(out_dt):
                atomic = True  # a full sum: chunks add partials into the output
            self._init_output(extents, reduced, splittable, atomic)
        self.loops(groups, extents, in_strides, out_strides, reduced, 0, ["0"] * nin, "0", atomic)
        self.lines.append("  ret void")
        self.lines.append("}")
        self.lines.extend(self.metadata)
        outer = groups[0][1] if groups else []
        info = KernelInfo(self.name, tuple(self.shape[a] for a in outer) if groups else (),
                          splittable or atomic, atomic)
        return "\n".join(self.lines), info

    def _identity(self, dt: str) -> str:
        name = self.reduce[0]
        if name == "sum":
            return self.b.const(0, dt) if dt != "bool" else "false"
        if name == "prod":
            return self.b.const(1, dt) if dt != "bool" else "true"
        if is_float(dt):
            return float_literal(-np.inf if name == "max" else np.inf, dt)
        if dt == "bool":
            return "false" if name == "max" else "true"
        info = np.iinfo(np.dtype(dt))
        return str(info.min if name == "max" else info.max)

    def _init_output(self, extents, reduced, splittable, atomic) -> None:
        """Set the kept outputs of this chunk to the reduction's identity."""
        dt = self.out_type.dtype.name
        kept = [e for e, r in zip(extents, reduced) if not r]
        if splittable and kept:
            # the chunk [start, end) of the outer (kept) axis owns start*inner .. end*inner
            inner = "1"
            for e in kept[1:]:
                inner = self.emit(f"mul i64 {inner}, {e}")
            lo = self.emit(f"mul i64 %start, {inner}")
            hi = self.emit(f"mul i64 %end, {inner}")
        else:
            lo = "0"
            hi = "1"
            for e in kept:
                hi = self.emit(f"mul i64 {hi}, {e}")
        if atomic:
            return  # chunks add into it: the caller sets it to 0 before any chunk runs
        ident = self._identity(dt)
        i = self._loop_head("init", lo, hi)
        self._store(self.out_ptr, i, ident, dt)
        self._loop_tail("init", i)

    def _loop_head(self, tag: str, lo: str, hi: str) -> str:
        pre = self.block
        head, body, latch = f"{tag}{self.tmp}.head", f"{tag}{self.tmp}.body", f"{tag}{self.tmp}.latch"
        self.tmp += 1
        exit_ = head.replace(".head", ".exit")
        i = self.fresh("i")
        self.lines.append(f"  br label %{head}")
        self.label(head)
        self.lines.append(f"  {i} = phi i64 [{lo}, %{pre}], [{i}.next, %{latch}]")
        c = self.emit(f"icmp slt i64 {i}, {hi}")
        self.lines.append(f"  br i1 {c}, label %{body}, label %{exit_}")
        self.label(body)
        self._open = getattr(self, "_open", [])
        self._open.append((i, latch, exit_))
        return i

    def _loop_tail(self, tag: str, i: str, hint: str = "") -> None:
        i_, latch, exit_ = self._open.pop()
        self.lines.append(f"  br label %{latch}")
        self.label(latch)
        self.lines.append(f"  {i}.next = add nsw i64 {i}, 1")
        self.lines.append(f"  br label %{latch.replace('.latch', '.head')}{hint}")
        self.label(exit_)

    def _load(self, ptr: str, offset: str, dt: str) -> str:
        mt = MEM_TYPE[dt]
        p = self.emit(f"getelementptr {mt}, ptr {ptr}, i64 {offset}", "p")
        v = self.emit(f"load {mt}, ptr {p}, align {ITEMSIZE[dt]}", "x")
        if dt == "bool":
            v = self.emit(f"icmp ne i8 {v}, 0", "x")
        return v

    def _store(self, ptr: str, offset: str, value: str, dt: str) -> None:
        mt = MEM_TYPE[dt]
        if dt == "bool":
            value = self.emit(f"zext i1 {value} to i8", "x")
        p = self.emit(f"getelementptr {mt}, ptr {ptr}, i64 {offset}", "p")
        self.lines.append(f"  store {mt} {value}, ptr {p}, align {ITEMSIZE[dt]}")

    def loops(self, groups, extents, in_strides, out_strides, reduced, level, in_offs, out_off, atomic):
        nin = len(self.operand_types)
        if level == len(groups):
            self.element(in_offs, out_off)
            return
        lo, hi = ("%start", "%end") if level == 0 else ("0", extents[level])
        innermost = level == len(groups) - 1
        if self.reduce is not None and innermost and reduced[level]:
            self.register_reduction(lo, hi, in_strides[level], in_offs, out_off, atomic)
            return
        i = self._loop_head("L", lo, hi)
        first = len(self.lines)
        offs = [self._advance(in_offs[k], i, in_strides[level][k]) for k in range(nin)]
        o = self._advance(out_off, i, out_strides[level])
        self.loops(groups, extents, in_strides, out_strides, reduced, level + 1, offs, o, atomic)
        hint = ""
        if innermost and level > 0 and any("@flowml_mvec_" in line for line in self.lines[first:]):
            hint = self._vectorize_hint()
        self._loop_tail("L", i, hint)

    def _vectorize_hint(self) -> str:
        """`!llvm.loop` metadata vectorizing an inner loop that calls vector math, however short.
        Left alone, LLVM fully unrolls a short constant-trip loop (the 9 pixels of a 3x3 image
        under a per-channel bias) into scalar calls, each of which is a whole libmvec vector
        call (vecmath's lane-0 wrappers): 8 calls where one vector call and a remainder do.
        (Results are unchanged: the remainder's scalar calls give the vector lanes' bits.)"""
        if self.metadata_id is None:
            return ""
        loop, vec, unroll = (self.metadata_id() for _ in range(3))
        self.metadata += [f"!{loop} = distinct !{{!{loop}, !{vec}, !{unroll}}}",
                          f"!{vec} = !{{!\"llvm.loop.vectorize.enable\", i1 true}}",
                          f"!{unroll} = !{{!\"llvm.loop.unroll.disable\"}}"]
        return f", !llvm.loop !{loop}"

    def _advance(self, base: str, i: str, stride: str) -> str:
        if stride == "0":
            return base
        step = i if stride == "1" else self.emit(f"mul i64 {i}, {stride}", "o")
        return step if base == "0" else self.emit(f"add i64 {base}, {step}", "o")

    def body_value(self, in_offs: list[str]) -> tuple[str, str]:
        """Load the operands and compute the body: (value, dtype)."""
        values, dtypes = [], []
        for k, t in enumerate(self.operand_types):
            dt = t.dtype.name
            values.append(self._load(self.ptrs[k], in_offs[k], dt))
            dtypes.append(dt)
        for ins in self.body:
            if ins.op == "const":
                values.append(self.b.const(ins.attr("value"), ins.dtype))
                dtypes.append(ins.dtype)
                continue
            arg_dts = [dtypes[a] for a in ins.args]
            args = [values[a] for a in ins.args]
            if ins.op == "where":
                cond = self.b.cast(args[0], arg_dts[0], "bool")
                vals = [self.b.cast(v, d, ins.dtype) for v, d in zip(args[1:], arg_dts[1:])]
                out = S.emit(self.b, "where", ins.dtype, ins.dtype, [cond] + vals, {})
            elif ins.op == "cast":
                out = self.b.cast(args[0], arg_dts[0], ins.dtype)
            else:
                odt = S.operand_dtype(ins.op, arg_dts, ins.dtype)
                args = [self.b.cast(v, d, odt) for v, d in zip(args, arg_dts)]
                out = S.emit(self.b, ins.op, odt, ins.dtype, args, dict(ins.attrs))
            values.append(out)
            dtypes.append(ins.dtype)
        return values[-1], dtypes[-1]

    def element(self, in_offs, out_off) -> None:
        v, dt = self.body_value(in_offs)
        out_dt = self.out_type.dtype.name
        v = self.b.cast(v, dt, out_dt)
        if self.reduce is None:
            self._store(self.out_ptr, out_off, v, out_dt)
            return
        old = self._load(self.out_ptr, out_off, out_dt)
        self._store(self.out_ptr, out_off, self.combine(old, v, out_dt, flags=""), out_dt)

    def combine(self, acc: str, v: str, dt: str, flags: str = "reassoc contract") -> str:
        name = self.reduce[0]
        t = IR_TYPE[dt]
        if name in ("sum", "prod"):
            if dt == "bool":
                return self.b.logic("or" if name == "sum" else "and", acc, v)
            if is_float(dt):
                return self.emit(f"f{'add' if name == 'sum' else 'mul'} {flags} {t} {acc}, {v}".replace("  ", " "))
            return self.emit(f"{'add' if name == 'sum' else 'mul'} {t} {acc}, {v}")
        if dt == "bool":
            return self.b.logic("or" if name == "max" else "and", acc, v)
        pick = self.b.compare("gt" if name == "max" else "lt", v, acc, dt)
        if is_float(dt):  # NaN wins, as in numpy
            pick = self.b.logic("or", pick, self.b.compare("ne", v, v, dt))
        return self.b.select(pick, v, acc, dt)

    def register_reduction(self, lo, hi, strides, in_offs, out_off, atomic) -> None:
        """The innermost, reduced loop: accumulate in registers, blockwise."""
        out_dt = self.out_type.dtype.name
        wide = self.reduce[0] == "sum" and out_dt == "float32"
        total_dt = "float64" if wide else out_dt
        nin = len(self.operand_types)
        # outer loop over blocks, carrying the total in a phi
        pre = self.block
        tag = f"R{self.tmp}"
        self.tmp += 1
        ident_total = self._identity(total_dt)
        self.lines.append(f"  br label %{tag}.bhead")
        self.label(f"{tag}.bhead")
        j0 = f"%{tag}.j0"
        total = f"%{tag}.total"
        self.lines.append(f"  {j0} = phi i64 [{lo}, %{pre}], [{j0}.next, %{tag}.bexit]")
        self.lines.append(f"  {total} = phi {IR_TYPE[total_dt]} [{ident_total}, %{pre}], [{total}.next, %{tag}.bexit]")
        more = self.emit(f"icmp slt i64 {j0}, {hi}")
        self.lines.append(f"  br i1 {more}, label %{tag}.bbody, label %{tag}.done")
        self.label(f"{tag}.bbody")
        j1 = self.emit(f"add i64 {j0}, {BLOCK}")
        short = self.emit(f"icmp slt i64 {j1}, {hi}")
        jend = self.emit(f"select i1 {short}, i64 {j1}, i64 {hi}")
        self.lines.append(f"  br label %{tag}.head")
        self.label(f"{tag}.head")
        j = f"%{tag}.j"
        acc = f"%{tag}.acc"
        t = IR_TYPE[out_dt]
        self.lines.append(f"  {j} = phi i64 [{j0}, %{tag}.bbody], [{j}.next, %{tag}.body]")
        self.lines.append(f"  {acc} = phi {t} [{self._identity(out_dt)}, %{tag}.bbody], [{acc}.next, %{tag}.body]")
        c = self.emit(f"icmp slt i64 {j}, {jend}")
        self.lines.append(f"  br i1 {c}, label %{tag}.body, label %{tag}.bexit")
        self.label(f"{tag}.body")
        offs = [self._advance(in_offs[k], j, strides[k]) for k in range(nin)]
        v, dt = self.body_value(offs)
        v = self.b.cast(v, dt, out_dt)
        nxt = self.combine(acc, v, out_dt)
        self.lines.append(f"  {acc}.next = {self.lines.pop().split(' = ', 1)[1]}")
        self.lines.append(f"  {j}.next = add nsw i64 {j}, 1")
        self.lines.append(f"  br label %{tag}.head")
        self.label(f"{tag}.bexit")
        part = self.b.cast(acc, out_dt, total_dt) if wide else acc
        saved = self.reduce
        merged = self.combine(total, part, total_dt, flags="")
        self.reduce = saved
        self.lines.append(f"  {total}.next = {self.lines.pop().split(' = ', 1)[1]}")
        self.lines.append(f"  {j0}.next = add i64 {j0}, {BLOCK}")
        self.lines.append(f"  br label %{tag}.bhead")
        self.label(f"{tag}.done")
        result = self.b.cast(total, total_dt, out_dt) if wide else total
        p = self.emit(f"getelementptr {MEM_TYPE[out_dt]}, ptr {self.out_ptr}, i64 {out_off}", "p")
        if atomic:
            self.lines.append(f"  %{tag}.old = atomicrmw fadd ptr {p}, {t} {result} monotonic, align {ITEMSIZE[out_dt]}")
            return
        old = self._load(self.out_ptr, out_off, out_dt)
        self._store(self.out_ptr, out_off, self.combine(old, result, out_dt, flags=""), out_dt)
        del nxt, merged
