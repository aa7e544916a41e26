"""Building graphs: `Var` (a symbolic value) and the function library with numpy's names and
calling conventions.

The same functions serve the .flow language's built-ins, the Python builder API and the VJP
rules in `ops`. They handle what numpy users expect — python scalars as weak literals, type
promotion, negative axes, `axis=None`, `keepdims` — and then apply one primitive.
"""

from __future__ import annotations

import builtins
import math
import numbers
from typing import Sequence

import numpy as np

from ..errors import FlowTypeError
from . import ops as P
from .graph import Graph, current_loc
from .types import (DTYPES, Sym, TensorType, dim_div, dim_mul, dims_product, dtype_of, is_float, promote,
                    sym)


class Var:
    """A value in a graph: the handle users and rules build with. Arithmetic on Vars (and on
    Vars with python numbers or numpy arrays) adds nodes to the graph."""

    __slots__ = ("graph", "id")
    __array_priority__ = 1000  # make numpy defer `ndarray * Var` to Var.__rmul__

    def __init__(self, graph: Graph, id: int):
        self.graph = graph
        self.id = id

    @property
    def type(self) -> TensorType:
        return self.graph.type(self.id)

    @property
    def op(self):
        return self.graph.op(self.id)

    @property
    def shape(self) -> tuple:
        return self.type.shape

    @property
    def ndim(self) -> int:
        return self.type.ndim

    @property
    def dtype(self) -> np.dtype:
        return self.type.dtype

    @property
    def T(self) -> "Var":
        return transpose(self)

    @property
    def name(self) -> str | None:
        return self.graph.name(self.id)

    def __repr__(self) -> str:
        label = self.name or f"%{self.id}"
        return f"<Var {label}: {self.type}>"

    def __bool__(self):
        raise TypeError("a flowml Var has no truth value; use `ifelse` or `where`")

    __hash__ = object.__hash__

    # arithmetic
    def __add__(self, o): return add(self, o)
    def __radd__(self, o): return add(o, self)
    def __sub__(self, o): return subtract(self, o)
    def __rsub__(self, o): return subtract(o, self)
    def __mul__(self, o): return multiply(self, o)
    def __rmul__(self, o): return multiply(o, self)
    def __truediv__(self, o): return divide(self, o)
    def __rtruediv__(self, o): return divide(o, self)
    def __floordiv__(self, o): return floor_div(self, o)
    def __rfloordiv__(self, o): return floor_div(o, self)
    def __mod__(self, o): return mod(self, o)
    def __rmod__(self, o): return mod(o, self)
    def __pow__(self, o): return power(self, o)
    def __rpow__(self, o): return power(o, self)
    def __matmul__(self, o): return matmul(self, o)
    def __rmatmul__(self, o): return matmul(o, self)
    def __neg__(self): return negative(self)
    def __pos__(self): return self
    def __abs__(self): return abs(self)
    def __invert__(self): return logical_not(self)
    def __and__(self, o): return logical_and(self, o)
    def __or__(self, o): return logical_or(self, o)

    # comparisons build nodes (so a Var can't be a dict key by value; hashing is by identity)
    def __eq__(self, o): return equal(self, o)  # type: ignore[override]
    def __ne__(self, o): return not_equal(self, o)  # type: ignore[override]
    def __lt__(self, o): return less(self, o)
    def __le__(self, o): return less_equal(self, o)
    def __gt__(self, o): return greater(self, o)
    def __ge__(self, o): return greater_equal(self, o)

    def __getitem__(self, item): return getitem(self, item)

    def sum(self, axis=None, keepdims=False): return sum(self, axis, keepdims)
    def mean(self, axis=None, keepdims=False): return mean(self, axis, keepdims)
    def reshape(self, *shape): return reshape(self, shape[0] if len(shape) == 1 else shape)
    def astype(self, dtype): return cast(self, dtype)
    # numpy's other ndarray methods that have a function here (sort is left out: numpy's sorts in place)
    def prod(self, axis=None, keepdims=False): return prod(self, axis, keepdims)
    def max(self, axis=None, keepdims=False): return max(self, axis, keepdims)
    def min(self, axis=None, keepdims=False): return min(self, axis, keepdims)
    def var(self, axis=None, *, ddof=0, keepdims=False): return var(self, axis, ddof=ddof, keepdims=keepdims)
    def std(self, axis=None, *, ddof=0, keepdims=False): return std(self, axis, ddof=ddof, keepdims=keepdims)
    def any(self, axis=None, keepdims=False): return any(self, axis, keepdims)
    def all(self, axis=None, keepdims=False): return all(self, axis, keepdims)
    def argmax(self, axis=None, keepdims=False): return argmax(self, axis, keepdims)
    def argmin(self, axis=None, keepdims=False): return argmin(self, axis, keepdims)
    def argsort(self, axis=-1): return argsort(self, axis)
    def cumsum(self, axis=None): return cumsum(self, axis)
    def cumprod(self, axis=None): return cumprod(self, axis)
    def round(self, decimals=0): return round(self, decimals)
    def clip(self, lo, hi): return clip(self, lo, hi)
    def flatten(self): return reshape(self, (-1,))
    def squeeze(self, axis=None): return squeeze(self, axis)
    def swapaxes(self, axis1, axis2): return swapaxes(self, axis1, axis2)
    def transpose(self, *axes): return transpose(self, axes[0] if len(axes) == 1 else (axes or None))
    def repeat(self, repeats, axis=None): return repeat(self, repeats, axis)
    def diagonal(self, offset=0, axis1=0, axis2=1): return diagonal(self, offset, axis1, axis2)
    def trace(self, offset=0, axis1=0, axis2=1): return trace(self, offset, axis1, axis2)


# ----------------------------------------------------------------- constants and leaves


def _apply(op, operands: Sequence[Var], graph: Graph | None = None, **attrs) -> Var:
    graph = graph or operands[0].graph
    return Var(graph, graph.add(op, [v.id for v in operands], attrs))


def apply(op, operands: Sequence[Var], **attrs) -> Var:
    """Apply a primitive to Vars as they are (no promotion): for rules that re-apply an op."""
    return _apply(op, operands, **attrs)


def constant(value, graph: Graph, dtype=None, weak: bool | None = None) -> Var:
    """A constant node. Python scalars are weak (they take the dtype of what they meet)."""
    if weak is None:
        weak = dtype is None and isinstance(value, (bool, numbers.Number)) and not isinstance(value, np.generic)
    arr = np.asarray(value)
    if dtype is not None:
        arr = arr.astype(dtype_of(dtype))
    elif arr.dtype.kind in "iu":
        arr = arr.astype(np.int64)
    elif arr.dtype.kind == "f":
        arr = arr.astype(np.float64) if weak else arr
    elif arr.dtype.kind != "b":
        raise FlowTypeError(f"cannot make a flowml constant of {type(value).__name__} {value!r}", current_loc())
    if arr.dtype not in (DTYPES[k] for k in DTYPES):
        arr = arr.astype(np.float64 if arr.dtype.kind == "f" else np.int64)
    arr.setflags(write=False)
    t = TensorType(arr.dtype, arr.shape, weak)
    return Var(graph, graph.add(P.const, [], {"value": arr}, type=t))


def input(graph: Graph, name: str, type: TensorType) -> Var:
    return Var(graph, graph.add(P.input_, [], {"name": name}, name=name, type=type))


def param(graph: Graph, name: str, type: TensorType) -> Var:
    return Var(graph, graph.add(P.param, [], {"name": name}, name=name, type=type))


def dim(graph: Graph, d) -> Var:
    """The size of a dim (int or symbol) as an i64 scalar value."""
    d = sym(d) if isinstance(d, str) else d
    if isinstance(d, int):
        return constant(d, graph, dtype="i64")
    return Var(graph, graph.add(P.dim, [], {"dim": d}, type=TensorType(DTYPES["i64"], ())))


def const_value(v):
    """The python/numpy value of a constant Var (or the value itself); None if not constant."""
    if not isinstance(v, Var):
        return v
    if v.op is P.const:
        arr = v.graph.attrs(v.id)["value"]
        return arr.item() if arr.ndim == 0 else arr
    return None


def _graph_of(*values) -> Graph:
    for v in values:
        if isinstance(v, Var):
            return v.graph
        if isinstance(v, (list, tuple)):
            for x in v:
                if isinstance(x, Var):
                    return x.graph
    raise FlowTypeError("at least one operand must be a flowml value", current_loc())


def as_var(value, graph: Graph) -> Var:
    if isinstance(value, Var):
        if value.graph is not graph:
            raise FlowTypeError("cannot combine values from two different graphs", current_loc())
        return value
    return constant(value, graph)


def _coerce(values: Sequence[Var]) -> list[Var]:
    """Give weak literals the dtype they meet (so `x32 * 0.5` stays f32 on every backend)."""
    dt, weak = promote(*(v.type for v in values))
    if weak:
        return list(values)
    out = []
    for v in values:
        if v.type.weak:
            value = const_value(v)
            v = constant(value, v.graph, dtype=dt) if value is not None else _apply(P.cast, [v], dtype=dt)
        out.append(v)
    return out


def _elementwise(op, *values) -> Var:
    g = _graph_of(*values)
    return _apply(op, _coerce([as_var(v, g) for v in values]))


# ----------------------------------------------------------------- elementwise


def add(a, b): return _elementwise(P.add, a, b)
def subtract(a, b): return _elementwise(P.sub, a, b)
def multiply(a, b): return _elementwise(P.mul, a, b)
def divide(a, b): return _elementwise(P.div, a, b)
def floor_div(a, b): return _elementwise(P.floordiv, a, b)
def mod(a, b): return _elementwise(P.mod, a, b)
def maximum(a, b): return _elementwise(P.maximum, a, b)
def minimum(a, b): return _elementwise(P.minimum, a, b)
def equal(a, b): return _elementwise(P.eq, a, b)
def not_equal(a, b): return _elementwise(P.ne, a, b)
def less(a, b): return _elementwise(P.lt, a, b)
def less_equal(a, b): return _elementwise(P.le, a, b)
def greater(a, b): return _elementwise(P.gt, a, b)
def greater_equal(a, b): return _elementwise(P.ge, a, b)
def logical_and(a, b): return _elementwise(P.logical_and, a, b)
def logical_or(a, b): return _elementwise(P.logical_or, a, b)
def logical_not(x): return _elementwise(P.logical_not, x)
def negative(x): return _elementwise(P.neg, x)
def exp(x): return _elementwise(P.exp, x)
def log(x): return _elementwise(P.log, x)
def log1p(x): return _elementwise(P.log1p, x)
def expm1(x): return _elementwise(P.expm1, x)
def sqrt(x): return _elementwise(P.sqrt, x)
def abs(x): return _elementwise(P.abs_, x)  # noqa: A001 - numpy's name
def sign(x): return _elementwise(P.sign, x)
def sin(x): return _elementwise(P.sin, x)
def cos(x): return _elementwise(P.cos, x)
def tanh(x): return _elementwise(P.tanh, x)
def erf(x): return _elementwise(P.erf, x)
def erfc(x): return _elementwise(P.erfc, x)
def sigmoid(x): return _elementwise(P.sigmoid, x)
def softplus(x): return _elementwise(P.softplus, x)
def relu(x): return _elementwise(P.relu, x)

def log2(x): return _elementwise(P.log2, x)
def log10(x): return _elementwise(P.log10, x)
def tan(x): return _elementwise(P.tan, x)
def arcsin(x): return _elementwise(P.arcsin, x)
def arccos(x): return _elementwise(P.arccos, x)
def arctan(x): return _elementwise(P.arctan, x)
def sinh(x): return _elementwise(P.sinh, x)
def cosh(x): return _elementwise(P.cosh, x)
def arcsinh(x): return _elementwise(P.arcsinh, x)
def arccosh(x): return _elementwise(P.arccosh, x)
def arctanh(x): return _elementwise(P.arctanh, x)
def arctan2(a, b): return _elementwise(P.arctan2, a, b)
def hypot(a, b): return _elementwise(P.hypot, a, b)
def isnan(x): return _elementwise(P.isnan, x)
def isinf(x): return _elementwise(P.isinf, x)
def isfinite(x): return _elementwise(P.isfinite, x)


def _rounded(op, x):
    """floor / ceil / trunc / rint of floats; integers and bools are whole already, and keep
    their dtype (numpy 2)."""
    x = as_var(x, _graph_of(x))
    return _elementwise(op, x) if is_float(x.dtype) else x


def floor(x): return _rounded(P.floor, x)
def ceil(x): return _rounded(P.ceil, x)
def trunc(x): return _rounded(P.trunc, x)
def rint(x):
    """numpy's rint: floats rounded half to even; integers and bools become f64 (as numpy's rint,
    unlike its round)."""
    x = as_var(x, _graph_of(x))
    return _elementwise(P.rint, x) if is_float(x.dtype) else cast(x, "f64")


def round(x, decimals=0):  # noqa: A001 - numpy's name
    """numpy's round: to `decimals` places (static), halves to even, computed as numpy does
    (rint(x * 10**d) / 10**d, or times 10**-d for negative d)."""
    x = as_var(x, _graph_of(x))
    d = static_int(decimals, "round's decimals")
    if not is_float(x.dtype):
        if d >= 0:
            return x
        raise FlowTypeError(f"round of integers to {d} decimals is not supported; cast to a float first",
                            current_loc())
    if d == 0:
        return _elementwise(P.rint, x)
    if d > 0:
        return rint(x * 10.0 ** d) / 10.0 ** d
    return rint(x / 10.0 ** -d) * 10.0 ** -d


def square(x):
    """x * x; of bools in i64 (numpy gives int8, which flowml lacks)."""
    x = as_var(x, _graph_of(x))
    if x.dtype.kind == "b":
        x = cast(x, "i64")
    return x * x


def logaddexp(a, b):
    """log(exp(a) + exp(b)) without overflow: max(a, b) + log1p(exp(-|a - b|)), as numpy. Where
    a and b are the same infinity, a - b is NaN: the difference is taken as 0 there (the result
    is that infinity). Its derivative (exp(a - result), exp(b - result)) follows from the
    formula; at a == b it is split evenly, as maximum's is."""
    g = _graph_of(a, b)
    a, b = _coerce([as_var(a, g), as_var(b, g)])
    if not is_float(promote(a.type, b.type)[0]):
        a, b = cast(a, "f64"), cast(b, "f64")
    d = a - b
    d = where(isnan(d), 0, d)
    return maximum(a, b) + log1p(exp(-abs(d)))



def power(a, b):
    if isinstance(a, Var) and a.dtype.kind in "iu" and const_value(b) is not None and np.any(np.asarray(const_value(b)) < 0):
        raise FlowTypeError(f"cannot raise the integers {a.type} to a negative power; cast to a float first",
                            current_loc())
    return _elementwise(P.pow_, a, b)


def where(cond, a, b):
    g = _graph_of(cond, a, b)
    cond = as_var(cond, g)
    if cond.dtype != DTYPES["bool"]:
        cond = cast(cond, "bool")
    a, b = _coerce([as_var(a, g), as_var(b, g)])
    return _apply(P.where, [cond, a, b])


def ifelse(cond, a, b):
    """A lazy conditional: only the chosen branch runs (`if c then a else b` in .flow)."""
    g = _graph_of(cond, a, b)
    a, b = _coerce([as_var(a, g), as_var(b, g)])
    return _apply(P.ifelse, [as_var(cond, g), a, b])


def stop_gradient(x):
    """x, treated as a constant by derivatives."""
    return _apply(P.stop_gradient, [as_var(x, _graph_of(x))])


def add_all(terms):
    """The sum of a list of Vars, left to right; None for an empty list (a zero derivative)."""
    if not terms:
        return None
    total = terms[0]
    for t in terms[1:]:
        total = total + t
    return total


def clip(x, lo, hi):
    return minimum(maximum(x, lo), hi)


def cast(x, dtype):
    dt = dtype_of(_static_dtype(dtype))
    if x.type.dtype == dt and not x.type.weak:
        return x
    return _apply(P.cast, [x], dtype=dt)


def _static_dtype(dtype):
    return dtype.dtype_name if isinstance(dtype, TensorType) else dtype


def zeros_like(x, dtype=None):
    return _apply(P.zeros_like, [x], dtype=dtype_of(dtype) if dtype is not None else x.dtype)


def ones_like(x, dtype=None):
    return zeros_like(x, dtype) + 1


# ----------------------------------------------------------------- static arguments


def static_int(v, what: str) -> int:
    value = const_value(v)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise FlowTypeError(f"{what} must be a constant integer, not {_describe(v)}", current_loc())
    return int(value)


def static_bool(v, what: str) -> bool:
    value = const_value(v)
    if not isinstance(value, (bool, np.bool_)):
        raise FlowTypeError(f"{what} must be true or false, not {_describe(v)}", current_loc())
    return bool(value)


def _describe(v) -> str:
    return f"a value of type {v.type}" if isinstance(v, Var) else repr(v)


def _normalize_axis(axis, ndim: int, what="axis") -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    axes = axis if isinstance(axis, (tuple, list)) else (axis,)
    out = []
    for a in axes:
        a = static_int(a, what)
        if not -ndim <= a < builtins.max(ndim, 1) or (ndim == 0 and a not in (0, -1)):
            raise FlowTypeError(f"{what} {a} is out of range for an array of rank {ndim}", current_loc())
        out.append(a % ndim if ndim else 0)
    if len(set(out)) != len(out):
        raise FlowTypeError(f"repeated {what} in {tuple(axes)}", current_loc())
    return tuple(sorted(out)) if ndim else ()


def as_dim(v):
    """A shape entry: an int, a symbol, or a value that is one (N, x.shape[0], 2 * N)."""
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return int(v)
    if isinstance(v, Sym):
        return v
    if isinstance(v, str):
        return sym(v)
    if isinstance(v, Var):
        if v.op is P.dim:
            return v.graph.attrs(v.id)["dim"]
        value = const_value(v)
        if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
            return int(value)
        if v.op is P.mul:
            a, b = (Var(v.graph, o) for o in v.graph.operands(v.id))
            return dim_mul(as_dim(a), as_dim(b))
        if v.op is P.neg:
            (a,) = (Var(v.graph, o) for o in v.graph.operands(v.id))
            inner = as_dim(a)
            if isinstance(inner, int):
                return -inner
    raise FlowTypeError(f"a shape entry must be an integer or a dim like N or x.shape[0], not {_describe(v)}",
                        current_loc())


def as_shape(shape) -> tuple:
    if isinstance(shape, (tuple, list)):
        return tuple(as_dim(d) for d in shape)
    return (as_dim(shape),)


# ----------------------------------------------------------------- reductions


def _reduce(op, x, axis, keepdims):
    g = _graph_of(x)
    x = as_var(x, g)
    return _apply(op, [x], axis=_normalize_axis(axis, x.ndim), keepdims=static_bool(keepdims, "keepdims"))


def sum(x, axis=None, keepdims=False): return _reduce(P.sum_, x, axis, keepdims)  # noqa: A001
def prod(x, axis=None, keepdims=False): return _reduce(P.prod, x, axis, keepdims)
def max(x, axis=None, keepdims=False): return _reduce(P.max_, x, axis, keepdims)  # noqa: A001
def min(x, axis=None, keepdims=False): return _reduce(P.min_, x, axis, keepdims)  # noqa: A001
def logsumexp(x, axis=None, keepdims=False): return _reduce(P.logsumexp, x, axis, keepdims)


def mean(x, axis=None, keepdims=False):
    axes = _normalize_axis(axis, x.ndim)
    total = sum(x, axes, keepdims)
    count = dims_product(x.type.shape[i] for i in axes)
    dt = x.dtype if is_float(x.dtype) else DTYPES["f64"]
    return total / cast(dim(x.graph, count), dt)


def _count(x, axes) -> Var:
    """The number of elements over `axes` of x, an i64 scalar (a dim expression if symbolic)."""
    return dim(x.graph, dims_product(x.type.shape[i] for i in axes))


def var(x, axis=None, *, ddof=0, keepdims=False):
    """numpy's var: the mean squared deviation from the mean, divided by n - ddof instead of n
    (ddof=1: the unbiased estimate; ddof and keepdims by keyword only, numpy's third positional
    argument being a dtype). Two passes (the mean first), as numpy, so it does not
    cancel catastrophically as E[x^2] - E[x]^2 would. Integers and bools give f64."""
    x = as_var(x, _graph_of(x))
    axes = _normalize_axis(axis, x.ndim)
    keepdims = static_bool(keepdims, "keepdims")
    if not is_float(x.dtype):
        x = cast(x, "f64")
    deviation = x - mean(x, axes, keepdims=True)
    total = sum(deviation * deviation, axes, keepdims)
    return total / (cast(_count(x, axes), x.dtype) - static_int(ddof, "ddof"))


def std(x, axis=None, *, ddof=0, keepdims=False):
    """numpy's std: sqrt(var(x, axis, ddof=ddof, keepdims=keepdims))."""
    return sqrt(var(x, axis, ddof=ddof, keepdims=keepdims))


def any(x, axis=None, keepdims=False):  # noqa: A001 - numpy's name
    """Whether any element over `axis` is true (nonzero); false over no elements."""
    x = as_var(x, _graph_of(x))
    return sum(cast(x, "bool"), axis, keepdims) > 0


def all(x, axis=None, keepdims=False):  # noqa: A001 - numpy's name
    """Whether every element over `axis` is true (nonzero); true over no elements."""
    x = as_var(x, _graph_of(x))
    return sum(logical_not(cast(x, "bool")), axis, keepdims) == 0


def _cumulative(op, x, axis):
    x = as_var(x, _graph_of(x))
    if axis is None:  # numpy: over the flattened array
        x, axis = reshape(x, (-1,)), 0
    return _apply(op, [x], axis=_normalize_axis(axis, x.ndim)[0], reverse=False)


def cumsum(x, axis=None):
    """The running sums along `axis` (the flattened array by default); integers and bools in i64."""
    return _cumulative(P.cumsum, x, axis)


def cumprod(x, axis=None):
    """The running products along `axis` (the flattened array by default); integers and bools in i64."""
    return _cumulative(P.cumprod, x, axis)


def argsort(x, axis=-1):
    """The indices (i64) that sort x along `axis` (the flattened array for None): numpy's stable
    order, ascending, NaNs last, ties in their order."""
    x = as_var(x, _graph_of(x))
    if axis is None:
        x, axis = reshape(x, (-1,)), 0
    if x.ndim == 0:
        raise FlowTypeError(f"cannot sort a scalar {x.type}", current_loc())
    return _apply(P.argsort, [x], axis=_normalize_axis(axis, x.ndim)[0])


def top_k(x, k):
    """The k largest entries along the last axis, largest first, and their indices (JAX's
    lax.top_k): (values, indices [..., k] i64); ties keep the lower index first, NaNs come last.
    Both from argsort, so the values' derivative goes back to where each came from."""
    from .arrays import take_along_axis
    x = as_var(x, _graph_of(x))
    k = static_int(k, "top_k's k")
    if x.ndim == 0:
        raise FlowTypeError(f"top_k takes an array of rank >= 1, not {x.type}", current_loc())
    n = x.type.shape[-1]
    if k < 0 or (isinstance(n, int) and k > n):
        raise FlowTypeError(f"top_k's k must be between 0 and {n} (the last axis), not {k}", current_loc())
    keys = negative(x) if x.dtype.kind != "b" else logical_not(x)
    idx = argsort(keys, axis=-1)[(slice(None),) * (x.ndim - 1) + (slice(0, k),)]
    return take_along_axis(x, idx, -1), idx


def sort(x, axis=-1):
    """x sorted along `axis` (the flattened array for None), NaNs last: x gathered at argsort(x),
    so its derivative takes each cotangent back to where its element came from."""
    from .arrays import take_along_axis
    x = as_var(x, _graph_of(x))
    if axis is None:
        x, axis = reshape(x, (-1,)), 0
    return take_along_axis(x, argsort(x, axis), axis)


def _argreduce(op, x, axis, keepdims):
    axis = None if axis is None else _normalize_axis(axis, x.ndim)[0]
    return _apply(op, [x], axis=axis, keepdims=static_bool(keepdims, "keepdims"))


def argmax(x, axis=None, keepdims=False): return _argreduce(P.argmax, x, axis, keepdims)
def argmin(x, axis=None, keepdims=False): return _argreduce(P.argmin, x, axis, keepdims)


def softmax(x, axis=-1):
    return _apply(P.softmax, [x], axis=_normalize_axis(axis, x.ndim)[0])


def log_softmax(x, axis=-1):
    return _apply(P.log_softmax, [x], axis=_normalize_axis(axis, x.ndim)[0])


def categorical_crossentropy(logits, labels):
    """-log_softmax(logits)[i, labels[i]] per row: logits [N, K] float, labels [N] integer."""
    g = _graph_of(logits, labels)
    return _apply(P.categorical_crossentropy, [as_var(logits, g), as_var(labels, g)])


def sum_to(v: Var, shape: tuple) -> Var:
    """Sum `v` down to `shape` (undo broadcasting): the adjoint of broadcasting."""
    lead = v.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, d in enumerate(shape) if d == 1 and v.type.shape[lead + i] != 1)
    if axes:
        v = sum(v, axes, keepdims=True)
    if v.ndim != len(shape) or v.type.shape != tuple(shape):
        v = reshape(v, shape)
    return v


# ----------------------------------------------------------------- linear algebra


def matmul(a, b):
    g = _graph_of(a, b)
    return _apply(P.matmul, [as_var(a, g), as_var(b, g)])


def dot(a, b):
    """numpy's dot for 1-D and 2-D operands (matmul; scalars multiply)."""
    if (isinstance(a, Var) and a.ndim == 0) or (isinstance(b, Var) and b.ndim == 0):
        return multiply(a, b)
    return matmul(a, b)


def outer(a, b):
    return multiply(reshape(a, (-1, 1)), reshape(b, (1, -1)))


def _linalg_operands(what, *values):
    """The operands of a decomposition as Vars of one float dtype (integers become f64, as in
    numpy.linalg); a matrix operand must have at least two dims."""
    g = _graph_of(*values)
    vs = [as_var(v, g) for v in values]
    if vs[0].ndim < 2:
        raise FlowTypeError(f"{what} needs a matrix (..., n, n), not {vs[0].type}", current_loc())
    dt, _ = promote(*(v.type for v in vs))
    if dt.kind != "f":
        dt = DTYPES["f64"]
    return [v if v.type.dtype == dt else _apply(P.cast, [v], dtype=dt) for v in vs]


def solve(a, b):
    """x with a @ x = b (numpy.linalg.solve): b is (..., n, k), or (n,) for one vector."""
    return _apply(P.solve, _linalg_operands("solve", a, b))


def solve_triangular(a, b, lower=False, unit_diagonal=False):
    """x with a @ x = b for a triangular a (scipy.linalg.solve_triangular): only the triangle
    `lower` names is read, and not the diagonal when `unit_diagonal` (ones are taken)."""
    lower = static_bool(lower, "solve_triangular's lower")
    unit_diagonal = static_bool(unit_diagonal, "solve_triangular's unit_diagonal")
    return _apply(P.solve_triangular, _linalg_operands("solve_triangular", a, b), lower=lower,
                  unit_diagonal=unit_diagonal)


def cholesky(a):
    """The lower triangular l with l @ l.T = a of a symmetric positive definite a (reads a's
    lower triangle, as numpy.linalg.cholesky)."""
    return _apply(P.cholesky, _linalg_operands("cholesky", a))


def inv(a):
    return _apply(P.inv, _linalg_operands("inv", a))


def det(a):
    return _apply(P.det, _linalg_operands("det", a))


def slogdet(a):
    """(sign, logabsdet) of numpy.linalg.slogdet: det(a) = sign * exp(logabsdet), stable where
    det itself over- or underflows."""
    (a,) = _linalg_operands("slogdet", a)
    return _apply(P.slogdet, [a], part="sign"), _apply(P.slogdet, [a], part="logabsdet")


def eigh(a):
    """(w, v) of numpy.linalg.eigh for a symmetric a (its lower triangle read): the eigenvalues
    ascending, and the eigenvectors as the columns of v."""
    (a,) = _linalg_operands("eigh", a)
    return _apply(P.eigh, [a], part="values"), _apply(P.eigh, [a], part="vectors")


def svd(a, full_matrices=True, compute_uv=True):
    """numpy.linalg.svd: (u, s, vt) with a = u @ (s[..., None] * vt) (full_matrices: u and vt
    square), or s alone (compute_uv=False); the singular values descending."""
    (a,) = _linalg_operands("svd", a)
    full = static_bool(full_matrices, "svd's full_matrices")
    if not static_bool(compute_uv, "svd's compute_uv"):
        return _apply(P.svd, [a], part="s", full_matrices=False)
    # (s is the same either way; built with u's and vt's attrs, it is computed in their call)
    return (_apply(P.svd, [a], part="u", full_matrices=full), _apply(P.svd, [a], part="s", full_matrices=full),
            _apply(P.svd, [a], part="vt", full_matrices=full))


def qr(a, mode="reduced"):
    """numpy.linalg.qr: (q, r) with a = q @ r, q's columns orthonormal and r upper triangular;
    mode 'reduced' (q [..., m, k], r [..., k, n]), 'complete' (q square, r [..., m, n]) or 'r'
    (r alone, as reduced)."""
    (a,) = _linalg_operands("qr", a)
    mode = const_value(mode)
    if mode not in ("reduced", "complete", "r"):
        raise FlowTypeError(f"qr's mode is 'reduced', 'complete' or 'r', not {mode!r}", current_loc())
    complete = mode == "complete"
    r = _apply(P.qr, [a], part="r", complete=complete)
    return r if mode == "r" else (_apply(P.qr, [a], part="q", complete=complete), r)


def cho_solve(c_and_lower, b, lower=None):
    """scipy.linalg.cho_solve((c, lower), b): x with a @ x = b from a's Cholesky factor c (lower:
    a = c @ c.T, else a = c.T @ c); also cho_solve(c, b, lower=true)."""
    if isinstance(c_and_lower, tuple):
        c, low = c_and_lower
    else:
        c, low = c_and_lower, True if lower is None else lower
    low = static_bool(low, "cho_solve's lower")
    c, b = _linalg_operands("cho_solve", c, b)
    if low:  # c c^T x = b
        return solve_triangular(swap_last(c), solve_triangular(c, b, lower=True), lower=False)
    return solve_triangular(c, solve_triangular(swap_last(c), b, lower=True), lower=False)


def _cutoff(s, rcond, m, n):
    """numpy's: singular values at most rcond * the largest count as zero (rcond: max(m, n) * eps
    by default)."""
    if rcond is None:
        rcond = builtins.max(_static_or(m, 1), _static_or(n, 1)) * float(np.finfo(s.dtype).eps)
    return multiply(max(s, axis=-1, keepdims=True), rcond)


def _static_or(d, default):
    return d if isinstance(d, int) else default


def pinv(a, rcond=None):
    """The Moore-Penrose pseudo-inverse (numpy.linalg.pinv): v diag(1/s) u^T over the singular
    values above the cutoff (rcond * the largest; max(m, n) * eps by default)."""
    (a,) = _linalg_operands("pinv", a)
    rcond = None if const_value(rcond) is None else float(const_value(rcond))
    u, s, vt = svd(a, full_matrices=False)
    keep = s > _cutoff(s, rcond, *a.type.shape[-2:])
    s_inv = where(keep, 1.0 / where(keep, s, ones_like(s)), zeros_like(s))
    return matmul(swap_last(vt) * expand_dims(s_inv, -2), swap_last(u))


def lstsq(a, b, rcond=None):
    """numpy.linalg.lstsq: (x, residuals, rank, s), x minimizing |a @ x - b| (the least-norm one
    when a is rank deficient). `residuals` are the sums of squared residuals of b's columns
    (numpy gives an empty array instead when rank < n or m <= n: a flowml value has one shape);
    `rank` counts the singular values above the cutoff (rcond * the largest; max(m, n) * eps by
    default)."""
    a, b = _linalg_operands("lstsq", a, b)
    rcond = None if const_value(rcond) is None else float(const_value(rcond))
    s = svd(a, compute_uv=False)
    x = matmul(pinv(a, rcond), b)
    r = matmul(a, x) - b
    residuals = sum(r * r, axis=0) if b.ndim > 1 else sum(r * r, axis=-1, keepdims=True)
    rank = sum(cast(s > _cutoff(s, rcond, *a.type.shape[-2:]), "i64"), axis=-1)
    return x, residuals, rank, s


def _norm_order(ord):
    """numpy's `ord` of `norm` as None, a float or 'fro' / 'nuc' ('inf' and '-inf' as strings too,
    for .flow, which has no inf literal)."""
    value = const_value(ord)
    if value is None or value in ("fro", "nuc"):
        return value
    if value in ("inf", "-inf"):
        return float(value)
    if isinstance(value, (numbers.Number, np.number)) and not isinstance(value, (bool, np.bool_)):
        return float(value)
    raise FlowTypeError(f"norm's ord must be a number, inf, -inf, 'fro' or 'nuc', not {_describe(ord)}", current_loc())


def _two_norm(x, axes):
    """sqrt(sum(x ** 2)) over `axes` (kept), scaled by the largest |x| so that it overflows only
    when the norm does (numpy's overflows at 1e155)."""
    m = stop_gradient(max(abs(x), axis=axes, keepdims=True))
    safe = where(m > 0, m, ones_like(m))
    r = safe * sqrt(sum((x / safe) * (x / safe), axis=axes, keepdims=True))
    return where(m == math.inf, m, r)


def norm(x, ord=None, axis=None, keepdims=False):
    """numpy.linalg.norm: a vector norm over one axis (ord 2 by default; inf, -inf, 0, 1, any p),
    a matrix norm over two ('fro' by default; 'nuc', 1, -1, 2, -2, inf, -inf), the 2-norm of
    everything when both ord and axis are None."""
    g = _graph_of(x)
    x = as_var(x, g)
    if x.dtype.kind != "f":
        x = cast(x, "f64")
    order = _norm_order(ord)
    if axis is None:
        if order is not None and x.ndim not in (1, 2):
            raise FlowTypeError(f"norm with an ord needs a vector or a matrix, or axis=, not {x.type}", current_loc())
        axes = tuple(range(x.ndim))
    else:
        raw = axis if isinstance(axis, (tuple, list)) else (axis,)
        _normalize_axis(raw, x.ndim, "norm's axis")  # (checks range and repeats)
        axes = tuple(static_int(a, "norm's axis") % x.ndim for a in raw)
    if order is None and axis is None:
        r = _two_norm(x, axes)
    elif len(axes) == 1:
        r = _vector_norm(x, order, axes)
    elif len(axes) == 2:
        r = _matrix_norm(x, order, axes)
    else:
        raise FlowTypeError(f"norm's axis names one axis (a vector norm) or two (a matrix norm), not {len(axes)}",
                            current_loc())
    if keepdims:
        return r
    return reshape(r, tuple(d for i, d in enumerate(r.type.shape) if i not in axes))


def _vector_norm(x, order, axes):
    a = abs(x)
    if order is None or order == 2:
        return _two_norm(x, axes)
    if order == math.inf:
        return max(a, axis=axes, keepdims=True)
    if order == -math.inf:
        return min(a, axis=axes, keepdims=True)
    if order == 0:
        return sum(cast(x != 0, x.dtype), axis=axes, keepdims=True)
    if order == 1:
        return sum(a, axis=axes, keepdims=True)
    if isinstance(order, str):
        raise FlowTypeError(f"norm's ord {order!r} is a matrix norm: give two axes", current_loc())
    return sum(a ** order, axis=axes, keepdims=True) ** (1.0 / order)


def _matrix_norm(x, order, axes):
    rows, cols = axes
    a = abs(x)
    if order in (None, "fro"):
        return _two_norm(x, axes)
    if order in (1, -1):
        col_sums = sum(a, axis=rows, keepdims=True)
        return (max if order == 1 else min)(col_sums, axis=cols, keepdims=True)
    if order in (math.inf, -math.inf):
        row_sums = sum(a, axis=cols, keepdims=True)
        return (max if order > 0 else min)(row_sums, axis=rows, keepdims=True)
    if order in (2, -2, "nuc"):  # of the singular values
        rest = [i for i in range(x.ndim) if i not in axes]
        m = transpose(x, tuple(rest) + (rows, cols))
        mdim, ndim = m.type.shape[-2:]
        if mdim == ndim or (isinstance(mdim, int) and isinstance(ndim, int)):
            s = svd(m, compute_uv=False)
            r = max(s, axis=-1) if order == 2 else min(s, axis=-1) if order == -2 else sum(s, axis=-1)
        elif order == 2:  # (dims of unknown order: the largest eigenvalue of m^T m)
            r = sqrt(maximum(max(eigvalsh(matmul(swap_last(m), m)), axis=-1), 0.0))
        else:
            raise FlowTypeError(f"norm's ord {order!r} of {x.type} needs min(m, n) singular values: make the "
                                "matrix dims ints, or equal", current_loc())
        return reshape(r, tuple(1 if i in axes else d for i, d in enumerate(x.type.shape)))
    raise FlowTypeError(f"norm's matrix ord must be 'fro', 'nuc', 1, -1, 2, -2, inf or -inf, not {order!r}",
                        current_loc())


def eigvalsh(a):
    """The eigenvalues of a symmetric a, ascending (numpy.linalg.eigvalsh)."""
    (a,) = _linalg_operands("eigvalsh", a)
    return _apply(P.eigh, [a], part="values")


# ----------------------------------------------------------------- shape ops


def transpose(x, axes=None):
    axes = tuple(range(x.ndim))[::-1] if axes is None else tuple(static_int(a, "axes") % x.ndim for a in axes)
    if sorted(axes) != list(range(x.ndim)):
        raise FlowTypeError(f"axes {axes} are not a permutation of the {x.ndim} axes of {x.type}", current_loc())
    if axes == tuple(range(x.ndim)):
        return x
    return _apply(P.transpose, [x], axes=axes)


def swap_last(x):
    axes = list(range(x.ndim))
    axes[-2:] = axes[-2:][::-1]
    return transpose(x, tuple(axes))


def reshape(x, shape):
    shape = as_shape(shape)
    if sum_count(d == -1 for d in shape) > 1:
        raise FlowTypeError("reshape: only one dim can be -1", current_loc())
    total = dims_product(x.type.shape)
    if -1 in shape:
        known = dims_product(d for d in shape if d != -1)
        rest = dim_div(total, known)
        if rest is None:
            raise FlowTypeError(f"cannot reshape {x.type} to ({', '.join(map(str, shape))})", current_loc())
        shape = tuple(rest if d == -1 else d for d in shape)
    elif dims_product(shape) != total:
        raise FlowTypeError(f"cannot reshape {x.type} to [{', '.join(map(str, shape))}]: sizes differ",
                            current_loc())
    if shape == x.type.shape:
        return x
    return _apply(P.reshape, [x], shape=shape)


def sum_count(bools) -> int:
    n = 0
    for b in bools:
        n += bool(b)
    return n


def expand_axes(x, axes):
    """Insert unit dims so that they end up at `axes` of the result (numpy's expand_dims)."""
    shape = list(x.type.shape)
    for a in sorted(axes):
        shape.insert(a, 1)
    return reshape(x, tuple(shape))


def expand_dims(x, axis):
    ndim = x.ndim + (len(axis) if isinstance(axis, (tuple, list)) else 1)
    return expand_axes(x, _normalize_axis(axis, ndim))


def broadcast_to(x, shape):
    g = _graph_of(x)
    x = as_var(x, g)
    shape = as_shape(shape)
    if shape == x.type.shape:
        return x
    return _apply(P.broadcast_to, [x], shape=shape)


def _var_list(xs) -> list[Var]:
    xs = list(xs)
    g = _graph_of(*xs)
    return _coerce([as_var(x, g) for x in xs])


def concatenate(xs, axis=0):
    xs = _var_list(xs)
    axis = _normalize_axis(axis, xs[0].ndim)[0]
    if len(xs) == 1:
        return xs[0]
    return _apply(P.concatenate, xs, axis=axis)


def stack(xs, axis=0):
    xs = _var_list(xs)
    axis = _normalize_axis(axis, xs[0].ndim + 1)[0]
    return concatenate([expand_axes(x, (axis,)) for x in xs], axis=axis)


def concat_part(g, xs, axis, k):
    return _apply(P.concat_part, [g, *xs], axis=axis, k=k)


# ----------------------------------------------------------------- indexing


def getitem(x: Var, item) -> Var:
    """numpy indexing: ints, slices, None (new axis), `...` and integer arrays."""
    items = item if isinstance(item, tuple) else (item,)
    dots = [i for i, it in enumerate(items) if it is Ellipsis]  # (`is`: == on a Var builds a node)
    if len(dots) > 1:
        raise FlowTypeError("an index can only have a single ellipsis ('...')", current_loc())
    if dots:  # the axes the other items do not name, as full slices
        used = builtins.sum(it is not None and it is not Ellipsis for it in items)
        items = items[:dots[0]] + (slice(None),) * builtins.max(x.ndim - used, 0) + items[dots[0] + 1:]
    spec, arrays = [], []
    for it in items:
        if it is None:
            spec.append(("new",))
        elif isinstance(it, slice):
            spec.append(("slice",) + tuple(None if v is None else as_dim(v) for v in (it.start, it.stop, it.step)))
        elif isinstance(it, Var) and const_value(it) is None or isinstance(it, (np.ndarray, list)):
            arr = as_var(np.asarray(it) if not isinstance(it, Var) else it, x.graph)
            arrays.append(arr)
            spec.append(("arr", len(arrays)))
        else:
            value = const_value(it)
            if isinstance(value, np.ndarray):
                arrays.append(it)
                spec.append(("arr", len(arrays)))
            else:
                spec.append(("int", static_int(it, "an index")))
    return index_var(x, arrays, tuple(spec))


def index_var(x, arrays, spec):
    return _apply(P.index, [x, *arrays], spec=tuple(spec))


def index_add(g, arrays, spec, like):
    return _apply(P.index_add, [g, like, *arrays], spec=tuple(spec))


def take(x, indices, axis=0):
    axis = _normalize_axis(axis, x.ndim)[0]
    return getitem(x, (slice(None),) * axis + (indices,))


# ----------------------------------------------------------------- constructors


def _shape_arg(shape):
    return as_shape(shape)


def full(graph: Graph, shape, value, dtype=None):
    """An array of `shape` filled with `value`: a number, a constant, or a scalar value of the
    graph (1.0 / 0.0 unfolded, x[0] * 2), which is broadcast."""
    if builtins.any(isinstance(d, int) and d < 0 for d in as_shape(shape)):
        raise FlowTypeError(f"a shape must not have negative dims, got {as_shape(shape)}", current_loc())
    if isinstance(value, Var):
        if const_value(value) is None:
            if value.ndim != 0:
                raise FlowTypeError(f"full's value must be a scalar, not {value.type}", current_loc())
            return broadcast_to(value if dtype is None else cast(value, dtype), as_shape(shape))
        value = const_value(value)
    if dtype is None:
        dtype = "f64" if isinstance(value, float) else ("bool" if isinstance(value, bool) else "i64")
    return Var(graph, graph.add(P.full, [], {"shape": _shape_arg(shape), "value": value,
                                             "dtype": dtype_of(_static_dtype(dtype))}))


def zeros(graph: Graph, shape, dtype="f64"):
    return full(graph, shape, 0, dtype)


def ones(graph: Graph, shape, dtype="f64"):
    return full(graph, shape, 1, dtype)


def arange(graph: Graph, start, stop=None, step=1):
    if stop is None:
        start, stop = 0, start
    start = static_int(start, "arange's start")
    step = static_int(step, "arange's step")
    if step == 0:
        raise FlowTypeError("arange's step must not be zero", current_loc())
    stop = as_dim(stop)
    return Var(graph, graph.add(P.arange, [], {"start": start, "stop": stop, "step": step}))


def onehot(y, n, dtype="f64"):
    return _apply(P.onehot, [y], n=static_int(n, "onehot's number of classes"),
                  dtype=dtype_of(_static_dtype(dtype)))


# ----------------------------------------------------------------- random numbers


def random(key: Var, dist: str, shape, dtype="f64") -> Var:
    """Standard uniform ([0, 1)) or normal numbers from the Philox stream of `key` (see
    `flowml.ir.philox`); each call site gets its own stream (`site`)."""
    graph = key.graph
    site = getattr(graph, "random_sites", 0) + 1
    graph.random_sites = site
    return _apply(P.random, [key], dist=dist, shape=as_shape(shape), dtype=dtype_of(_static_dtype(dtype)),
                  site=site)


def uniform(key: Var, low=0.0, high=1.0, shape=(), dtype="f64") -> Var:
    u = random(key, "uniform", shape, dtype)
    return u if (const_value(low), const_value(high)) == (0.0, 1.0) else low + (high - low) * u


def normal(key: Var, mean=0.0, std=1.0, shape=(), dtype="f64") -> Var:
    z = random(key, "normal", shape, dtype)
    return z if (const_value(mean), const_value(std)) == (0.0, 1.0) else mean + std * z


def bernoulli(key: Var, p, shape=None, dtype=None) -> Var:
    """1 with probability p, else 0 (p broadcasts to `shape`, default p's shape); dtype
    default p's float dtype (f64 for a python number), so `x * bernoulli(0.7, x.shape)` works."""
    graph = key.graph
    p = as_var(p, graph)
    shape = p.type.shape if shape is None else as_shape(shape)
    dt = dtype if dtype is not None else (p.dtype if is_float(p.dtype) and not p.type.weak else "f64")
    u = random(key, "uniform", shape, dt if is_float(dtype_of(_static_dtype(dt))) else "f64")
    return cast(u < p, dt)


def randint(key: Var, low, high, shape=()) -> Var:
    """Integers in [low, high) (i64), uniform."""
    u = random(key, "uniform", shape, "f64")
    return cast(floor_div(u * (high - low), 1), "i64") + low


# ----------------------------------------------------------------- convolution and pooling


def _int_pair(v, what: str) -> tuple[int, int]:
    """An int or a pair of ints (static), as (rows, columns)."""
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise FlowTypeError(f"{what} must be an integer or a pair of integers, not {len(v)} values", current_loc())
        return static_int(v[0], what), static_int(v[1], what)
    n = static_int(v, what)
    return n, n


def _same_padding(d, k: int, s: int) -> tuple[int, int]:
    """TensorFlow's (and torch's, for stride 1) "same": out = ceil(d / s), the extra row at the end."""
    if s == 1:
        total = k - 1
    elif isinstance(d, int):
        total = builtins.max((-(-d // s) - 1) * s + k - d, 0)
    else:
        raise FlowTypeError(f'padding="same" with stride {s} needs a fixed image size, not {d}', current_loc())
    return total // 2, total - total // 2


def _conv_padding(padding, x: Var, w: Var, stride) -> tuple:
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0), (0, 0)
        if padding == "same":
            return tuple(_same_padding(x.type.shape[2 + i], w.type.shape[2 + i], stride[i]) for i in range(2))
        raise FlowTypeError(f'conv2d: padding must be "valid", "same", an integer or pairs of integers, '
                            f'not "{padding}"', current_loc())
    if isinstance(padding, (tuple, list)) and len(padding) == 2 and builtins.all(isinstance(p, (tuple, list)) for p in padding):
        pads = tuple(_int_pair(p, "conv2d's padding") for p in padding)
    else:
        ph, pw = _int_pair(padding, "conv2d's padding")
        pads = ((ph, ph), (pw, pw))
    if builtins.min(builtins.min(p) for p in pads) < 0:
        raise FlowTypeError(f"conv2d's padding must not be negative, got {pads}", current_loc())
    return pads


def conv2d(x, w, stride=1, padding="valid"):
    """The 2-D cross-correlation of images x [N, C, H, W] with filters w [F, C, KH, KW] (Theano's
    conv2d without filter flipping, torch's F.conv2d): [N, F, OH, OW]. `stride`: an int or
    (sh, sw); `padding` (zeros): "valid" (none), "same" (OH = ceil(H / sh)), an int, (ph, pw)
    or ((top, bottom), (left, right))."""
    g = _graph_of(x, w)
    x, w = as_var(x, g), as_var(w, g)
    if x.ndim != 4 or w.ndim != 4:
        raise FlowTypeError(f"cannot convolve {x.type} with {w.type}: conv2d takes images x [N, C, H, W] and "
                            "filters w [F, C, KH, KW]", current_loc())
    stride = _int_pair(stride, "conv2d's stride")
    if builtins.min(stride) < 1:
        raise FlowTypeError(f"conv2d's stride must be at least 1, got {stride}", current_loc())
    pads = _conv_padding(padding, x, w, stride)
    dt, _ = promote(x.type, w.type)
    dt = dt if is_float(dt) else DTYPES["f64"]
    return _apply(P.conv2d, [cast(x, dt), cast(w, dt)], stride=stride, padding=pads)


def _pool_windows(window, stride, what: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """A pooling's (window, stride) as int pairs, the stride defaulting to the window (windows
    that do not overlap); each at least 1."""
    window = _int_pair(window, f"{what}'s window")
    stride = window if stride is None else _int_pair(stride, f"{what}'s stride")
    if builtins.min(window) < 1 or builtins.min(stride) < 1:
        raise FlowTypeError(f"{what}'s window and stride must be at least 1, got {window} and {stride}",
                            current_loc())
    return window, stride


def conv1d(x, w, stride=1, padding="valid"):
    """The 1-D cross-correlation of signals x [N, C, L] with filters w [F, C, K] (torch's
    F.conv1d): [N, F, OL]. `padding`: "valid", "same", an int or (left, right). A conv2d of
    height 1, so native and differentiable as that."""
    g = _graph_of(x, w)
    x, w = as_var(x, g), as_var(w, g)
    if x.ndim != 3 or w.ndim != 3:
        raise FlowTypeError(f"cannot convolve {x.type} with {w.type}: conv1d takes signals x [N, C, L] and "
                            "filters w [F, C, K]", current_loc())
    s = static_int(stride, "conv1d's stride")
    if isinstance(padding, str):
        pads = padding
    else:
        left, right = _int_pair(padding, "conv1d's padding")
        pads = ((0, 0), (left, right))
    y = conv2d(expand_dims(x, 2), expand_dims(w, 2), stride=(1, s), padding=pads)
    return reshape(y, y.type.shape[:2] + y.type.shape[3:])


def avg_pool2d(x, window, stride=None):
    """The mean of each window (kh, kw) of the last two axes, placed every `stride` (default: the
    window), without padding: [..., (H - kh) // sh + 1, (W - kw) // sw + 1] (torch's avg_pool2d
    with padding 0). One conv2d of the images, as one channel each, with a filter of 1 / (kh kw),
    so native and differentiable as that; integers pool as f64."""
    g = _graph_of(x)
    x = as_var(x, g)
    if x.ndim < 2:
        raise FlowTypeError(f"avg_pool2d pools the last two axes of an array of rank >= 2, not {x.type}",
                            current_loc())
    window, stride = _pool_windows(window, stride, "avg_pool2d")
    lead, (h, w_) = x.type.shape[:-2], x.type.shape[-2:]
    dt = x.dtype if is_float(x.dtype) else DTYPES["f64"]
    images = reshape(cast(x, dt), (dims_product(lead) if lead else 1, 1, h, w_))
    weights = constant(np.full((1, 1) + window, 1.0 / (window[0] * window[1])), g, dtype=dt)
    y = conv2d(images, weights, stride=stride)
    return reshape(y, lead + y.type.shape[2:])


def conv2d_backprop_input(g, w, size, stride, padding):
    """The transposed convolution of g [N, F, OH, OW] with w [F, C, KH, KW] onto [N, C, *size]
    (the VJP of conv2d with respect to its images; `stride`, `padding` as conv2d's attrs)."""
    return _apply(P.conv2d_backprop_input, [g, w], size=as_shape(tuple(size)), stride=tuple(stride),
                  padding=tuple(padding))


def conv2d_backprop_filter(x, g, kernel, stride, padding):
    """The correlation of the images x with g [N, F, OH, OW]: [F, C, *kernel] (the VJP of conv2d
    with respect to its filters)."""
    return _apply(P.conv2d_backprop_filter, [x, g], kernel=tuple(int(k) for k in kernel),
                  stride=tuple(stride), padding=tuple(padding))


def max_pool2d(x, window, stride=None):
    """The max over each window (kh, kw) of the last two axes, placed every `stride` (default:
    the window, so windows do not overlap); no padding: [..., (H - kh) // sh + 1, ...]. The
    derivative goes to each window's maximum (split evenly between ties)."""
    g = _graph_of(x)
    x = as_var(x, g)
    window, stride = _pool_windows(window, stride, "max_pool2d")
    return _apply(P.max_pool2d, [x], window=window, stride=stride)


def max_pool2d_backprop(x, out, g, window, stride):
    """g (shaped like max_pool2d(x) = out) added onto the maxima of x's windows: the VJP."""
    return _apply(P.max_pool2d_backprop, [x, out, g], window=tuple(window), stride=tuple(stride))


def max_pool2d_tangent(x, out, t, window, stride):
    """t (shaped like x) at the maxima of x's windows: the JVP of max_pool2d."""
    return _apply(P.max_pool2d_tangent, [x, out, t], window=tuple(window), stride=tuple(stride))


# The public library, under numpy's names: what a .flow program can call (`lang.builtins` adds
# the constructors and random draws, which take the graph or the random key first) and what
# `flowml` exports for the Python builder. A new op's function is listed here once.
__all__ = [
    "Var",
    "exp", "log", "log1p", "expm1", "sqrt", "abs", "sign", "sin", "cos", "tanh", "erf", "erfc",
    "sigmoid", "softplus", "relu", "maximum", "minimum", "clip", "where", "ifelse", "cast",
    "log2", "log10", "tan", "arcsin", "arccos", "arctan", "arctan2", "sinh", "cosh", "arcsinh", "arccosh",
    "arctanh", "hypot", "logaddexp", "square", "power", "floor", "ceil", "trunc", "rint", "round", "isnan",
    "isinf", "isfinite",
    "sum", "mean", "max", "min", "prod", "var", "std", "any", "all", "cumsum", "cumprod", "sort", "argsort", "argmax", "argmin", "logsumexp", "softmax", "log_softmax",
    "categorical_crossentropy", "matmul", "dot", "outer", "transpose", "reshape", "broadcast_to",
    "expand_dims", "concatenate", "stack", "take", "onehot", "zeros_like", "ones_like",
    "stop_gradient", "conv2d", "conv1d", "max_pool2d", "avg_pool2d", "top_k",
    "solve", "solve_triangular", "cholesky", "inv", "det", "slogdet", "eigh", "eigvalsh", "norm", "svd", "pinv", "lstsq",
    "qr", "cho_solve",
    "squeeze", "swapaxes", "moveaxis", "flip", "roll", "repeat", "tile", "pad", "diagonal", "trace", "diag",
    "tril", "triu", "take_along_axis", "tensordot", "einsum",
]

# numpy's array-manipulation functions, composed from the primitives above (flowml/ir/arrays.py;
# its constructors eye and linspace take the graph first, as zeros does)
from .arrays import (diag, diagonal, einsum, eye, flip, linspace, moveaxis, pad, repeat, roll,  # noqa: E402
                     squeeze, swapaxes, take_along_axis, tensordot, tile, trace, tril, triu)
