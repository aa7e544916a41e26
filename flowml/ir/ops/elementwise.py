"""The elementwise ops: one `Elementwise` per numpy ufunc flowml has (arithmetic, math
functions, comparisons, logic), `where` and `cast`, each with its derivative given once as
maps (see `Elementwise`)."""

from __future__ import annotations

import math

import numpy as np

from .. import lib as L
from ..graph import ShapeError
from ..types import DTYPES, TensorType, broadcast_shapes, promote
from .core import Op, as_float, float_dtype, sum_to_like, type_names


class Elementwise(Op):
    """Broadcasting elementwise op. `out_dtype(dtype) -> dtype` maps the promoted operand dtype
    to the result dtype (e.g. `exp` of an int is f64, a comparison is bool).

    Its derivative is given once, as `deriv(out, *operands) -> [map | None per operand]`: map i
    takes a tangent t of operand i to its effect on the output (t * ∂out/∂operand_i, written so
    that it is safe where the untaken side of a `where` is inf). An elementwise linear map is
    its own transpose, so the same maps give the VJP (applied to the cotangent, then summed
    back over broadcast dims) and the JVP (applied to the tangents and added). None means a
    zero derivative; an op without `deriv` has none at all (comparisons, logic)."""

    elementwise = True

    def __init__(self, name, impl, deriv=None, verb=None, out_dtype=None, nin=2, not_for_bools=None, **props):
        super().__init__(name, impl=impl, verb=verb,
                         vjp=self._vjp_from_deriv if deriv is not None else None,
                         jvp=self._jvp_from_deriv if deriv is not None else None, **props)
        self.deriv = deriv
        self.out_dtype = out_dtype or (_bool if self.bool_result else (lambda dt: dt))
        self.nin = nin
        self.not_for_bools = not_for_bools  # why numpy refuses it on bools (so flowml does too)

    def infer(self, types, attrs):
        if len(types) != self.nin:
            raise ShapeError(f"{self.name} takes {self.nin} operands, got {len(types)}")
        if self.not_for_bools and all(t.dtype.kind == "b" for t in types):
            raise ShapeError(f"cannot {self.verb} {type_names(types)}: {self.not_for_bools}")
        shape = broadcast_shapes(*(t.shape for t in types))
        if shape is None:
            raise ShapeError(f"cannot {self.verb} {type_names(types)}: shapes do not broadcast")
        dt, weak = promote(*types)
        return TensorType(np.dtype(self.out_dtype(dt)), shape, weak)

    def _vjp_from_deriv(self, g, out, *operands, **attrs):
        maps = self.deriv(out, *operands)
        return [None if m is None else (lambda m=m, x=x: sum_to_like(_masked(m, g), x)) for m, x in zip(maps, operands)]

    def _jvp_from_deriv(self, tangents, out, *operands, **attrs):
        maps = self.deriv(out, *operands)
        terms = [m(t) for m, t in zip(maps, tangents) if m is not None and t is not None]
        return L.add_all(terms)


def _zero_mask(g):
    """(c, inner, taken_when_c) if the cotangent g is where(c, inner, 0) or where(c, 0, inner)."""
    if g.op is not where:
        return None
    c, a, b = (L.Var(g.graph, o) for o in g.graph.operands(g.id))
    if L.const_value(b) is not None and np.all(L.const_value(b) == 0):
        return c, a, True
    if L.const_value(a) is not None and np.all(L.const_value(a) == 0):
        return c, b, False
    return None


def _masked(m, g):
    """m(g), where a cotangent masked by a `where` keeps its mask outside the derivative: the
    derivative of where(x > 0, log(x), 0) at x = 0 is where(x > 0, g / x, 0) = 0, not 0 / 0. This is
    the "double where" JAX users write by hand."""
    mask = _zero_mask(g)
    if mask is None or m is _identity:
        return m(g)
    c, inner, taken = mask
    r = m(inner)
    return L.where(c, r, 0) if taken else L.where(c, 0, r)


def _special(name):
    """scipy.special's function `name`, imported at its first call (importing scipy.special
    costs `import flowml` 0.2-0.4 s)."""
    def fn(x):
        import scipy.special
        return getattr(scipy.special, name)(x)
    return fn


def unary_float(name, fn, deriv):
    """An elementwise function of floats; ints and bools are first converted to f64."""
    return Elementwise(name, lambda x: fn(as_float(x)), deriv, out_dtype=float_dtype, nin=1)


def _bool(dt):
    return DTYPES["bool"]


def _identity(t):
    return t


def _zero_map(*operands):
    return [None] * len(operands)


neg = Elementwise("neg", np.negative, lambda y, x: [lambda t: -t], verb="negate", nin=1, cheap=True,
                  not_for_bools="negating bools is not supported; use `not`")
exp = unary_float("exp", np.exp, lambda y, x: [lambda t: t * y])
log = unary_float("log", np.log, lambda y, x: [lambda t: t / x])
log1p = unary_float("log1p", np.log1p, lambda y, x: [lambda t: t / (x + 1)])
expm1 = unary_float("expm1", np.expm1, lambda y, x: [lambda t: t * (y + 1)])
sqrt = unary_float("sqrt", np.sqrt, lambda y, x: [lambda t: t / (y * 2)])
sin = unary_float("sin", np.sin, lambda y, x: [lambda t: t * L.cos(x)])
cos = unary_float("cos", np.cos, lambda y, x: [lambda t: -(t * L.sin(x))])
tanh = unary_float("tanh", np.tanh, lambda y, x: [lambda t: t * (1 - y * y)])
erf = unary_float("erf", _special("erf"),
                  lambda y, x: [lambda t: t * (2 / math.sqrt(math.pi)) * L.exp(-(x * x))])
erfc = unary_float("erfc", _special("erfc"),
                   lambda y, x: [lambda t: t * (-2 / math.sqrt(math.pi)) * L.exp(-(x * x))])
sigmoid = unary_float("sigmoid", _special("expit"), lambda y, x: [lambda t: t * y * (1 - y)])
# log(1 + exp(x)) computed without overflow for large |x|.
softplus = unary_float("softplus", lambda x: np.logaddexp(x.dtype.type(0), x),
                       lambda y, x: [lambda t: t * L.sigmoid(x)])

# numpy's everyday functions (issue 15). Logs in other bases, the rest of the trigonometric and
# hyperbolic family, each derivative written so that it does not overflow before the function does.
_LN2, _LN10 = math.log(2), math.log(10)
log2 = unary_float("log2", np.log2, lambda y, x: [lambda t: t / (x * _LN2)])
log10 = unary_float("log10", np.log10, lambda y, x: [lambda t: t / (x * _LN10)])
tan = unary_float("tan", np.tan, lambda y, x: [lambda t: t * (1 + y * y)])
arcsin = unary_float("arcsin", np.arcsin, lambda y, x: [lambda t: t / L.sqrt(1 - x * x)])
arccos = unary_float("arccos", np.arccos, lambda y, x: [lambda t: -(t / L.sqrt(1 - x * x))])
arctan = unary_float("arctan", np.arctan, lambda y, x: [lambda t: t / (1 + x * x)])
sinh = unary_float("sinh", np.sinh, lambda y, x: [lambda t: t * L.cosh(x)])
cosh = unary_float("cosh", np.cosh, lambda y, x: [lambda t: t * L.sinh(x)])
# 1 / sqrt(x^2 + 1) as 1 / hypot(x, 1), and sqrt(x^2 - 1) as sqrt(x - 1) sqrt(x + 1): x^2 would
# overflow at |x| = 1e155 (f64) where the derivative is still a normal number.
arcsinh = unary_float("arcsinh", np.arcsinh, lambda y, x: [lambda t: t / L.hypot(x, 1)])
arccosh = unary_float("arccosh", np.arccosh, lambda y, x: [lambda t: t / (L.sqrt(x - 1) * L.sqrt(x + 1))])
arctanh = unary_float("arctanh", np.arctanh, lambda y, x: [lambda t: t / (1 - x * x)])


def _rounding(name, fn):
    """floor, ceil, trunc, rint: of floats only (`flowml.ir.lib` returns ints and bools as they
    are, as numpy 2 does); piecewise constant, so a zero derivative wherever it exists."""
    return Elementwise(name, fn, lambda y, x: [None], nin=1, cheap=True)


floor = _rounding("floor", np.floor)
ceil = _rounding("ceil", np.ceil)
trunc = _rounding("trunc", np.trunc)
rint = _rounding("rint", np.rint)  # round half to even, as np.round

# Tests of a float's class: a bool per element, no derivative (like a comparison; of integers
# and bools: never NaN or inf).
isnan = Elementwise("isnan", np.isnan, nin=1, comparison=True, cheap=True)
isinf = Elementwise("isinf", np.isinf, nin=1, comparison=True, cheap=True)
isfinite = Elementwise("isfinite", np.isfinite, nin=1, comparison=True, cheap=True)

abs_ = Elementwise("abs", np.abs, lambda y, x: [lambda t: t * L.sign(x)], nin=1, cheap=True)
# sign is piecewise constant: zero derivative wherever it exists.
sign = Elementwise("sign", np.sign, lambda y, x: [None], nin=1, not_for_bools="sign of bools is not supported")
relu = Elementwise("relu", lambda x: np.maximum(x, x.dtype.type(0)),
                   lambda y, x: [lambda t: L.where(x > 0, t, 0)], nin=1)
logical_not = Elementwise("not", np.logical_not, verb="negate", nin=1, logical=True, cheap=True)


add = Elementwise("add", np.add, lambda y, a, b: [_identity, _identity], commutative=True, cheap=True)
sub = Elementwise("sub", np.subtract, lambda y, a, b: [_identity, lambda t: -t], verb="subtract", cheap=True,
                  not_for_bools="subtracting bools is not supported; use `!=` or cast to an integer first")
mul = Elementwise("mul", np.multiply, lambda y, a, b: [lambda t: t * b, lambda t: t * a], verb="multiply",
                  commutative=True, cheap=True)
div = Elementwise("div", np.true_divide, lambda y, a, b: [lambda t: t / b, lambda t: -(t * y) / b],
                  verb="divide", out_dtype=float_dtype)


def _int_if_bool(dt):
    return DTYPES["i64"] if dt.kind == "b" else dt


def _on_ints_if_bool(fn):
    """numpy computes floor_divide, mod and power of two bools in int8, which flowml lacks: it
    computes them in i64 (as it sums bools in i64)."""
    def impl(a, b):
        if a.dtype.kind == "b" and b.dtype.kind == "b":
            a, b = a.astype(np.int64), b.astype(np.int64)
        return fn(a, b)
    return impl


# floor(a / b) is piecewise constant: zero derivative wherever it exists.
floordiv = Elementwise("floordiv", _on_ints_if_bool(np.floor_divide), _zero_map,
                       verb="floor-divide", out_dtype=_int_if_bool)
mod = Elementwise("mod", _on_ints_if_bool(np.mod),
                  lambda y, a, b: [_identity, lambda t: -(t * L.floor_div(a, b))],
                  verb="take the remainder of", out_dtype=_int_if_bool)


def _pow_deriv(y, a, b):
    def by_b(t):
        # d/db a**b = a**b log a; where a == 0 the limit (b > 0) is 0, which also keeps NaN out.
        safe_log = L.where(a == 0, 0, L.log(L.where(a == 0, 1, a)))
        return t * y * safe_log
    return [lambda t: t * b * a ** (b - 1), by_b]


pow_ = Elementwise("pow", _on_ints_if_bool(np.power), _pow_deriv, verb="raise", out_dtype=_int_if_bool)



def _float_binary(name, fn, deriv, verb):
    return Elementwise(name, lambda a, b: fn(as_float(a), as_float(b)), deriv, verb=verb, out_dtype=float_dtype)


def _arctan2_deriv(y, a, b):
    # d atan2(a, b) = (b da - a db) / (a^2 + b^2), with a^2 + b^2 as hypot(a, b)^2 so that it
    # neither overflows nor underflows before atan2 does. (At (0, 0) it is NaN, as in JAX.)
    h = L.hypot(a, b)
    return [lambda t: t * (b / h) / h, lambda t: -(t * (a / h) / h)]


def _hypot_deriv(y, a, b):
    # d hypot = (a da + b db) / hypot; at (0, 0), where it is not defined, 0 (a subgradient)
    safe = L.where(y == 0, 1, y)
    return [lambda t: t * (a / safe), lambda t: t * (b / safe)]


arctan2 = _float_binary("arctan2", np.arctan2, _arctan2_deriv, "take the arctangent of")
# sqrt(a^2 + b^2) without overflow or underflow (libm's hypot: finite at 1e200, exact to an ulp)
hypot = _float_binary("hypot", np.hypot, _hypot_deriv, "take the hypotenuse of")

def _minmax_deriv(pick):
    # The winner takes the derivative; a tie splits it evenly (as JAX does).
    def deriv(y, a, b):
        return [lambda t: L.where(pick(a, b), t, L.where(a == b, t * 0.5, 0)),
                lambda t: L.where(pick(b, a), t, L.where(a == b, t * 0.5, 0))]
    return deriv


maximum = Elementwise("maximum", np.maximum, _minmax_deriv(lambda a, b: a > b), verb="take the maximum of",
                      commutative=True, cheap=True)
minimum = Elementwise("minimum", np.minimum, _minmax_deriv(lambda a, b: a < b), verb="take the minimum of",
                      commutative=True, cheap=True)

eq = Elementwise("eq", np.equal, verb="compare", comparison=True, commutative=True, cheap=True)
ne = Elementwise("ne", np.not_equal, verb="compare", comparison=True, commutative=True, cheap=True)
lt = Elementwise("lt", np.less, verb="compare", comparison=True, cheap=True)
le = Elementwise("le", np.less_equal, verb="compare", comparison=True, cheap=True)
gt = Elementwise("gt", np.greater, verb="compare", comparison=True, cheap=True)
ge = Elementwise("ge", np.greater_equal, verb="compare", comparison=True, cheap=True)
logical_and = Elementwise("and", np.logical_and, verb="combine", logical=True, commutative=True, cheap=True)
logical_or = Elementwise("or", np.logical_or, verb="combine", logical=True, commutative=True, cheap=True)


class Where(Elementwise):
    """where(c, a, b): elementwise choice, eager (both sides are computed). Its derivative is a
    where too, so an inf or NaN on the untaken side never leaks into the derivative."""

    def __init__(self):
        super().__init__("where", np.where, self._deriv, verb="select between", nin=3, cheap=True)

    def infer(self, types, attrs):
        shape = broadcast_shapes(*(t.shape for t in types))
        if shape is None:
            raise ShapeError(f"where: condition {types[0]} and values {type_names(types[1:])} do not broadcast")
        dt, weak = promote(types[1], types[2])
        return TensorType(dt, shape, weak)

    @staticmethod
    def _deriv(y, c, a, b):
        return [None, lambda t: L.where(c, t, 0), lambda t: L.where(c, 0, t)]


where = Where()


class Cast(Elementwise):
    """Convert to `dtype`. Between float dtypes the derivative passes through (the passes cast
    it back to the operand's dtype); to an integer dtype there is none."""

    def __init__(self):
        super().__init__("cast", lambda x, dtype: x.astype(dtype), lambda y, x: [_identity], verb="cast", nin=1,
                         cheap=True)

    def infer(self, types, attrs):
        return TensorType(np.dtype(attrs["dtype"]), types[0].shape)


cast = Cast()
