"""Scalar formulas: how each elementwise primitive is computed from a few scalar operations.

The native backends (LLVM, OpenCL) compile fused nodes element by element. Each writes a
`ScalarBuilder` for the handful of operations below; the math of every elementwise op lives
here once, so both backends compute the same formulas (sigmoid, softplus, floor division...).

A builder value is opaque (an LLVM register, a C expression); `dtype` arguments are numpy dtype
names ("f32", "f64", "i32", "i64", "bool" spelled as numpy: float32, float64, int32, int64, bool).

Primitives a builder implements (all elementwise on one scalar of the given dtype):
  const(value, dtype)                  a literal
  binary(op, a, b, dtype)              op in add sub mul div (true division on floats,
                                       truncating on ints — formulas below only use it so)
  neg(a, dtype)
  compare(op, a, b, dtype)             op in eq ne lt le gt ge; dtype is the operands'; → bool
                                       (ordered: false on NaN, except ne: true on NaN)
  logic(op, a, b)                      op in and or (bool operands); not_(a)
  select(c, a, b, dtype)               c a bool
  call(fn, a, dtype)                   fn in CALLS (libm functions of float dtypes)
  call2(fn, a, b, dtype)               fn in CALLS2 (pow fmod, floats)
  cast(a, from_dtype, to_dtype)        float→int truncates; x→bool is x != 0; bool→x is 0/1
"""

from __future__ import annotations

import numpy as np

from ..ir import ops as P
from ..ir.types import is_float

# The libm functions the formulas call (a builder's `call` / `call2`): a new elementwise op
# computed by one of them is added here and in FORMULAS, nowhere else.
CALLS = frozenset({"exp", "log", "log1p", "expm1", "sqrt", "tanh", "sin", "cos", "erf", "erfc", "fabs", "floor",
                   "ceil", "trunc", "rint", "log2", "log10", "tan", "asin", "acos", "atan", "sinh", "cosh",
                   "asinh", "acosh", "atanh"})
CALLS2 = frozenset({"pow", "fmod", "atan2", "hypot"})


def _zero(b, dt):
    return b.const(0, dt)


def _one(b, dt):
    return b.const(1, dt)


def _to_bool(b, x, dt):
    return x if dt == "bool" else b.compare("ne", x, _zero(b, dt), dt)


def _is_nan(b, x, dt):
    return b.compare("ne", x, x, dt)


# ----------------------------------------------------------------- arithmetic


def _add(b, dt, x, y):
    if dt == "bool":
        return b.logic("or", x, y)
    return b.binary("add", x, y, dt)


def _sub(b, dt, x, y):
    return b.binary("sub", x, y, dt)


def _mul(b, dt, x, y):
    if dt == "bool":
        return b.logic("and", x, y)
    return b.binary("mul", x, y, dt)


def _div(b, dt, x, y):
    return b.binary("div", x, y, dt)


def _floordiv(b, dt, x, y):
    if is_float(dt):
        # numpy: floor(x / y) computed from fmod so that x == q*y + r exactly where possible
        r = b.call2("fmod", x, y, dt)
        q = b.binary("div", b.binary("sub", x, r, dt), y, dt)
        # r and y of opposite signs (r != 0): numpy's quotient is one lower
        adjust = b.logic("and", b.compare("ne", r, _zero(b, dt), dt),
                         b.compare("ne", b.compare("lt", r, _zero(b, dt), dt),
                                   b.compare("lt", y, _zero(b, dt), dt), "bool"))
        q = b.select(adjust, b.binary("sub", q, _one(b, dt), dt), q, dt)
        # round to the nearest integer below (q is integral up to rounding), 0 / NaN cases as numpy
        fq = b.call("floor", q, dt)
        fq = b.select(b.compare("gt", b.binary("sub", q, fq, dt), b.const(0.5, dt), dt),
                      b.binary("add", fq, _one(b, dt), dt), fq, dt)
        plain = b.binary("div", x, y, dt)
        # a zero quotient has the sign of x / y, as numpy's copysign(0, x / y): -0.0 // 3 is
        # -0.0 (q above lost it). q == 0 means |x| < |y|, so x / y is finite and 1 / (x / y)
        # carries its sign, zeros included.
        neg = b.compare("lt", b.binary("div", _one(b, dt), plain, dt), _zero(b, dt), dt)
        fq = b.select(b.compare("eq", q, _zero(b, dt), dt),
                      b.select(neg, b.const(-0.0, dt), _zero(b, dt), dt), fq, dt)
        return b.select(b.compare("eq", y, _zero(b, dt), dt), plain, fq, dt)
    # integers: Python semantics (round toward -inf); division by zero gives 0 as in numpy
    safe_y = b.select(b.compare("eq", y, _zero(b, dt), dt), _one(b, dt), y, dt)
    q = b.binary("div", x, safe_y, dt)  # truncates toward zero
    r = b.binary("sub", x, b.binary("mul", q, safe_y, dt), dt)
    adjust = b.logic("and", b.compare("ne", r, _zero(b, dt), dt),
                     b.compare("ne", b.compare("lt", r, _zero(b, dt), dt),
                               b.compare("lt", safe_y, _zero(b, dt), dt), "bool"))
    q = b.select(adjust, b.binary("sub", q, _one(b, dt), dt), q, dt)
    return b.select(b.compare("eq", y, _zero(b, dt), dt), _zero(b, dt), q, dt)


def _mod(b, dt, x, y):
    if is_float(dt):
        # numpy: fmod, then moved to the divisor's sign; a zero result takes the divisor's sign
        r = b.call2("fmod", x, y, dt)
        differ = b.compare("ne", b.compare("lt", r, _zero(b, dt), dt), b.compare("lt", y, _zero(b, dt), dt), "bool")
        moved = b.select(b.logic("and", b.compare("ne", r, _zero(b, dt), dt), differ),
                         b.binary("add", r, y, dt), r, dt)
        signed_zero = b.select(b.compare("lt", y, _zero(b, dt), dt), b.const(-0.0, dt), _zero(b, dt), dt)
        return b.select(b.compare("eq", moved, _zero(b, dt), dt), signed_zero, moved, dt)
    safe_y = b.select(b.compare("eq", y, _zero(b, dt), dt), _one(b, dt), y, dt)
    q = _floordiv(b, dt, x, safe_y)
    r = b.binary("sub", x, b.binary("mul", q, safe_y, dt), dt)
    return b.select(b.compare("eq", y, _zero(b, dt), dt), _zero(b, dt), r, dt)


def _pow(b, dt, x, y):
    if is_float(dt):
        return b.call2("pow", x, y, dt)
    # integer power by squaring, unrolled over every bit of a non-negative exponent (31 for
    # i32, 63 for i64): products wrap as numpy's do, so 2**64 == 0 and 0**64 == 0 (stopping
    # at fewer bits would ignore the high bits: 0**64 would be 1). Once e is 0 the remaining
    # steps change nothing. numpy refuses negative exponents; they give garbage here.
    result = _one(b, dt)
    base = x
    e = y
    for _ in range(31 if dt == "int32" else 63):
        odd = b.compare("ne", b.binary("sub", e, b.binary("mul", b.binary("div", e, b.const(2, dt), dt),
                                                           b.const(2, dt), dt), dt), _zero(b, dt), dt)
        result = b.select(odd, b.binary("mul", result, base, dt), result, dt)
        base = b.binary("mul", base, base, dt)
        e = b.binary("div", e, b.const(2, dt), dt)
    return result


def _maximum(b, dt, x, y, pick="gt"):
    if dt == "bool":
        return b.logic("or" if pick == "gt" else "and", x, y)
    chosen = b.select(b.compare(pick, x, y, dt), x, y, dt)
    if is_float(dt):  # numpy propagates NaN from either side
        chosen = b.select(_is_nan(b, x, dt), x, chosen, dt)
    return chosen


def _minimum(b, dt, x, y):
    return _maximum(b, dt, x, y, pick="lt")


# ----------------------------------------------------------------- unary


def _neg(b, dt, x):
    return b.neg(x, dt)


def _call(fn):
    return lambda b, dt, x: b.call(fn, x, dt)


def _sigmoid(b, dt, x):
    # with e = exp(-|x|) <= 1 nothing overflows: 1/(1+e) for x >= 0, e/(1+e) below, which keeps
    # the tiny (even denormal) values of sigmoid(-720) that 1/(1+exp(720)) = 1/inf loses
    e = b.call("exp", b.neg(b.call("fabs", x, dt), dt), dt)
    den = b.binary("add", _one(b, dt), e, dt)
    num = b.select(b.compare("ge", x, _zero(b, dt), dt), _one(b, dt), e, dt)
    return b.binary("div", num, den, dt)


def _softplus(b, dt, x):
    # log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)): no overflow, exact at ±800
    pos = b.select(b.compare("gt", x, _zero(b, dt), dt), x, _zero(b, dt), dt)
    tail = b.call("log1p", b.call("exp", b.neg(b.call("fabs", x, dt), dt), dt), dt)
    return b.binary("add", pos, tail, dt)


def _abs(b, dt, x):
    if is_float(dt):
        return b.call("fabs", x, dt)
    if dt == "bool":
        return x
    return b.select(b.compare("lt", x, _zero(b, dt), dt), b.neg(x, dt), x, dt)


def _sign(b, dt, x):
    if dt == "bool":
        return x
    rest = x
    if is_float(dt):  # numpy: sign(-0.0) is +0.0, sign(NaN) is NaN
        rest = b.select(_is_nan(b, x, dt), x, _zero(b, dt), dt)
    s = b.select(b.compare("gt", x, _zero(b, dt), dt), _one(b, dt),
                 b.select(b.compare("lt", x, _zero(b, dt), dt), b.const(-1, dt), rest, dt), dt)
    return s  # zero gives zero (+0.0), NaN NaN, as numpy


def _relu(b, dt, x):
    # numpy's maximum(x, 0): NaN stays NaN
    return _maximum(b, dt, x, _zero(b, dt))


def _isnan(b, dt, x):
    return _is_nan(b, x, dt) if is_float(dt) else b.const(False, "bool")


def _isinf(b, dt, x):
    if not is_float(dt):
        return b.const(False, "bool")
    return b.compare("eq", b.call("fabs", x, dt), b.const(float("inf"), dt), dt)


def _isfinite(b, dt, x):
    if not is_float(dt):
        return b.const(True, "bool")
    # ordered: false for NaN as for the infinities
    return b.compare("lt", b.call("fabs", x, dt), b.const(float("inf"), dt), dt)


def _call2(fn):
    return lambda b, dt, x, y: b.call2(fn, x, y, dt)


def _compare(op):
    return lambda b, dt, x, y: b.compare(op, x, y, dt)


def _logic(op):
    def f(b, dt, x, y):
        return b.logic(op, _to_bool(b, x, dt), _to_bool(b, y, dt))
    return f


def _not(b, dt, x):
    return b.not_(_to_bool(b, x, dt))


def _where(b, dt, c, x, y, cond_dtype="bool"):
    return b.select(_to_bool(b, c, cond_dtype), x, y, dt)


def _identity(b, dt, x):
    return x


FORMULAS = {
    "add": _add, "sub": _sub, "mul": _mul, "div": _div, "floordiv": _floordiv, "mod": _mod,
    "pow": _pow, "maximum": _maximum, "minimum": _minimum, "neg": _neg,
    "exp": _call("exp"), "log": _call("log"), "log1p": _call("log1p"), "expm1": _call("expm1"),
    "sqrt": _call("sqrt"), "tanh": _call("tanh"), "sin": _call("sin"), "cos": _call("cos"),
    "erf": _call("erf"), "erfc": _call("erfc"), "sigmoid": _sigmoid, "softplus": _softplus,
    "abs": _abs, "sign": _sign, "relu": _relu,
    "floor": _call("floor"), "ceil": _call("ceil"), "trunc": _call("trunc"), "rint": _call("rint"),
    "log2": _call("log2"), "log10": _call("log10"), "tan": _call("tan"), "arcsin": _call("asin"),
    "arccos": _call("acos"), "arctan": _call("atan"), "sinh": _call("sinh"), "cosh": _call("cosh"),
    "arcsinh": _call("asinh"), "arccosh": _call("acosh"), "arctanh": _call("atanh"),
    "arctan2": _call2("atan2"), "hypot": _call2("hypot"),
    "isnan": _isnan, "isinf": _isinf, "isfinite": _isfinite,
    "eq": _compare("eq"), "ne": _compare("ne"), "lt": _compare("lt"), "le": _compare("le"),
    "gt": _compare("gt"), "ge": _compare("ge"),
    "and": _logic("and"), "or": _logic("or"), "not": _not,
    "stop_gradient": _identity,
}


def emit(b, op: str, operand_dtype: str, result_dtype: str, args: list, attrs: dict):
    """The builder value of `op` applied to `args` (each already of `operand_dtype`, the
    promoted operand dtype; for `where`, the value operands'), giving `result_dtype`."""
    if op == "cast":
        return b.cast(args[0], operand_dtype, result_dtype)
    if op == "where":
        return _where(b, result_dtype, *args, cond_dtype=attrs.get("cond_dtype", "bool"))
    formula = FORMULAS.get(op)
    if formula is None:
        raise KeyError(f"no scalar formula for {op}")
    return formula(b, operand_dtype, *args)


def operand_dtype(op: str, arg_dtypes: list[str], result_dtype: str) -> str:
    """The dtype the args are converted to before the formula runs: bool for logic, the promoted
    dtype of the args for comparisons, the result's otherwise (so `exp` of an int and `/` of
    ints compute in float64, as numpy does)."""
    prim = P.OPS.get(op)
    if prim is not None and prim.logical:
        return "bool"
    if prim is not None and prim.comparison:
        return np.result_type(*[np.dtype(d) for d in arg_dtypes]).name
    if op == "where":
        return result_dtype
    if op == "cast":
        return arg_dtypes[0]
    return result_dtype


# broadcast_to, reshape of one element: the kernel's iteration space does the broadcasting
FORMULAS.update({name: _identity for name, op in P.OPS.items() if op.kernel_identity})
