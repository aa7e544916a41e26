"""OpenCL C spelling of flowml's scalars: C types, literals, and the `ScalarBuilder` that lets
`flowml.backends.scalar` write each elementwise op's formula as OpenCL C statements.

Values are SSA locals (`v12`) or literals; every builder call appends one declaration, so a
fused body becomes a straight line of typed statements that the OpenCL compiler is free to
schedule. Choices, and why:

* bool is `int` 0/1 in registers (what C comparisons yield) and `uchar` in buffers (numpy's
  bool is one byte).
* Literals carry their type (`1.0f`, `1.0`, `5L`) and NaN/inf are `NAN`/`INFINITY` cast to the
  type: an untyped `1.0` would silently make a float32 formula compute in double, and
  `min(x, 1.0)` with x a float is an ambiguous overload in OpenCL C.
* Integer add/sub/mul/neg wrap through the unsigned type: signed overflow is undefined in C
  (the compiler may assume it away) but wraps in numpy.
* Integer division by -1 is spelled as a negation: INT_MIN / -1 traps (SIGFPE) on x86, which
  would kill the whole process on a CPU device; numpy gives INT_MIN.
"""

from __future__ import annotations

import math

import numpy as np

from ...ir.types import dtype_of, is_float
from ..scalar import CALLS, CALLS2

CTYPE = {"float32": "float", "float64": "double", "int32": "int", "int64": "long", "bool": "int"}
# The type of an array element in a kernel buffer (bool differs: one byte).
BUF_CTYPE = {"float32": "float", "float64": "double", "int32": "int", "int64": "long", "bool": "uchar"}
UNSIGNED = {"int32": "uint", "int64": "ulong"}


def dtype_name(dt) -> str:
    """numpy name ('float32', ...) of a flowml dtype given as 'f32', np.float32, a dtype..."""
    return dtype_of(dt).name


def literal(value, dt: str) -> str:
    """A C literal of type `dt` for `value` (exact: float32 values are rounded first)."""
    if dt == "bool":
        return "1" if bool(value) else "0"
    if dt in ("int32", "int64"):
        v = int(value)
        suffix = "L" if dt == "int64" else ""
        bits = 64 if dt == "int64" else 32
        if v == -(2 ** (bits - 1)):  # the minimum has no positive counterpart to negate
            return f"(-{-(v + 1)}{suffix}-1{suffix})"
        return f"({v}{suffix})" if v < 0 else f"{v}{suffix}"
    v = float(np.float32(value)) if dt == "float32" else float(value)
    ctype = CTYPE[dt]
    if math.isnan(v):
        return f"(({ctype})NAN)"
    if math.isinf(v):
        return f"(({ctype})INFINITY)" if v > 0 else f"(-({ctype})INFINITY)"
    # repr gives the shortest decimal that reads back as this double, which for a float32
    # value also reads back (with the f suffix) as exactly that float32.
    text = repr(v) + ("f" if dt == "float32" else "")
    return f"({text})" if text.startswith("-") else text


_BINARY = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
_COMPARE = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}


class CBuilder:
    """`scalar.ScalarBuilder` for OpenCL C: collects statements in `self.lines`."""

    def __init__(self, prefix: str = "v", indent: str = "    "):
        self.lines: list[str] = []
        self.prefix = prefix
        self.indent = indent
        self._n = 0

    def let(self, dt: str, expr: str) -> str:
        """Declare a new local of dtype `dt` holding `expr`; its name is the value."""
        name = f"{self.prefix}{self._n}"
        self._n += 1
        self.lines.append(f"{self.indent}{CTYPE[dt]} {name} = {expr};")
        return name

    # ---- the ScalarBuilder interface (see flowml/backends/scalar.py)

    def const(self, value, dtype):
        return literal(value, dtype)

    def binary(self, op, a, b, dtype):
        if dtype in UNSIGNED and op in ("add", "sub", "mul"):
            u, t = UNSIGNED[dtype], CTYPE[dtype]
            return self.let(dtype, f"({t})(({u}){a} {_BINARY[op]} ({u}){b})")
        if dtype in UNSIGNED and op == "div":
            u, t = UNSIGNED[dtype], CTYPE[dtype]
            return self.let(dtype, f"({b} == -1) ? ({t})(({u})0 - ({u}){a}) : ({a} / {b})")
        if dtype == "bool":
            raise ValueError(f"no {op} on bools")  # formulas use logic ops for bools
        return self.let(dtype, f"{a} {_BINARY[op]} {b}")

    def neg(self, a, dtype):
        if dtype in UNSIGNED:
            u, t = UNSIGNED[dtype], CTYPE[dtype]
            return self.let(dtype, f"({t})(({u})0 - ({u}){a})")
        return self.let(dtype, f"-{a}")

    def compare(self, op, a, b, dtype):
        # C's ordered comparisons are false on NaN and != is true: what the formulas expect
        return self.let("bool", f"{a} {_COMPARE[op]} {b}")

    def logic(self, op, a, b):
        return self.let("bool", f"{a} {'&&' if op == 'and' else '||'} {b}")

    def not_(self, a):
        return self.let("bool", f"!{a}")

    def select(self, c, a, b, dtype):
        return self.let(dtype, f"{c} ? {a} : {b}")

    def call(self, fn, a, dtype):
        if fn not in CALLS or not is_float(dtype):
            raise ValueError(f"no OpenCL call {fn} on {dtype}")
        return self.let(dtype, f"{fn}({a})")

    def call2(self, fn, a, b, dtype):
        if fn not in CALLS2 or not is_float(dtype):
            raise ValueError(f"no OpenCL call {fn} on {dtype}")
        return self.let(dtype, f"{fn}({a}, {b})")

    def cast(self, a, from_dtype, to_dtype):
        if from_dtype == to_dtype:
            return a
        if to_dtype == "bool":
            return self.let("bool", f"{a} != {literal(0, from_dtype)}")
        # float -> int truncates (C's rule); bool (an int 0/1) -> anything is its value
        return self.let(to_dtype, f"({CTYPE[to_dtype]}){a}")
