"""The primitive ops. Each is defined once, here: its type rule, its numpy reference
implementation, its VJP (reverse-mode rule) and JVP, and its properties — attributes of `Op`
(`commutative`, `cheap`, `comparison`, `kernel_reduce`, ...) that the passes and backends read,
so adding an op touches its definition and its lowerings only.

VJP rules are written with IR-building functions (`flowml.ir.lib`, imported as `L`), never with
numpy, so a gradient is a graph that can be optimized, compiled and differentiated again. A rule
gets the output cotangent `g`, the op's output `out` and its operands (all `Var`s) plus the
node's attrs, and returns one entry per operand: a zero-argument function building that
operand's cotangent, or None when the operand gets no gradient through this op. Returning
functions means a rule builds nothing for operands that nobody differentiates.

Users don't call these directly; `flowml.ir.lib` wraps them with numpy's calling conventions
(promotion, axis normalization, broadcasting of python scalars).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.special

from .. import lib as L
from ..graph import ShapeError
from ..indices import wrap as wrap_indices
from ..types import DTYPES, Sym, TensorType, broadcast_shapes, is_float, promote, resolve_dim

OPS: dict[str, "Op"] = {}


class Op:
    """A primitive. `infer(types, attrs) -> TensorType`, `impl(*arrays, **attrs) -> ndarray`,
    `vjp(g, out, *operands, **attrs) -> [thunk | None per operand]` (None: no derivative),
    `jvp(tangents, out, *operands, **attrs) -> tangent | None` (tangents: None for zero)."""

    elementwise = False
    lazy = False  # only some operands are evaluated (see `choose`)
    needs_env = False  # impl takes env= (the values of symbolic dims)
    leaf = False  # input / param / const / dim: evaluated by the backend itself
    # What the passes and backends need to know of an op, kept here rather than in tables of op
    # names in each of them (tinygrad's GroupOp sets, as attributes); `Op(name, ..., cheap=True)`.
    commutative = False  # f(a, b) == f(b, a): rewrite patterns match both operand orders
    cheap = False  # cheap enough to compute again in every kernel that needs it (fuse)
    comparison = False  # compares its (promoted) operands; the result is bool
    logical = False  # and / or / not: its operands are taken as bools; the result is bool
    kernel_reduce = False  # a reduction a fused kernel can end in (sum, prod, max, min)
    has_identity = True  # a reduction over no elements is defined (not max / min)
    view = False  # the result shares its operand's buffer (the memory plan aliases it)
    # a shape op that is the identity on each element inside a fused kernel (broadcast_to: the
    # kernel's iteration broadcasts; reshape, of a one-element value only)
    kernel_identity = False

    def __init__(self, name, infer=None, impl=None, vjp=None, verb=None, jvp=None, **props):
        self.name = name
        for key, value in props.items():
            if not hasattr(Op, key) or callable(getattr(Op, key)):
                raise TypeError(f"op {name}: unknown property {key!r}")
            setattr(self, key, value)
        if infer is not None:
            self.infer = infer
        if impl is not None:
            self.impl = impl
        self._vjp = vjp
        self._jvp = jvp
        self.verb = verb or name
        OPS[name] = self

    def vjp(self, g, out, *operands, **attrs):
        if self._vjp is None:
            return [None] * len(operands)
        return self._vjp(g, out, *operands, **attrs)

    def jvp(self, tangents, out, *operands, **attrs):
        """The tangent of the output given operand tangents (None: zero), or None for zero."""
        if self._jvp is None:
            from ...errors import FlowGradError
            raise FlowGradError(f"{self.name} has no forward-mode derivative")
        return self._jvp(tangents, out, *operands, **attrs)

    @property
    def has_vjp(self) -> bool:
        return self._vjp is not None

    @property
    def bool_result(self) -> bool:
        return self.comparison or self.logical

    def __repr__(self) -> str:
        return f"<op {self.name}>"


def _type_names(types) -> str:
    return " and ".join(str(t) for t in types)


def linear_in(*positions):
    """The JVP of an op that is linear in the operands at `positions` (all when none are given;
    the others — index arrays, shape witnesses — are kept): the op applied to the tangents."""
    def jvp(tangents, out, *operands, **attrs):
        # (a local: the number of operands differs between calls, e.g. of concatenate)
        linear = positions or tuple(range(len(operands)))
        if all(tangents[i] is None for i in linear):
            return None
        args = [(tangents[i] if tangents[i] is not None else L.zeros_like(x)) if i in linear else x
                for i, x in enumerate(operands)]
        return L.apply(out.op, args, **attrs)
    return jvp


# ----------------------------------------------------------------- leaves


class Leaf(Op):
    leaf = True

    def infer(self, types, attrs):
        raise ShapeError(f"{self.name} nodes are typed when created")


input_ = Leaf("input")
param = Leaf("param")
const = Leaf("const")
dim = Leaf("dim")  # attrs: dim (int or Sym): the size of a symbolic dim, as an i64 scalar


# ----------------------------------------------------------------- elementwise


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
            raise ShapeError(f"cannot {self.verb} {_type_names(types)}: {self.not_for_bools}")
        shape = broadcast_shapes(*(t.shape for t in types))
        if shape is None:
            raise ShapeError(f"cannot {self.verb} {_type_names(types)}: shapes do not broadcast")
        dt, weak = promote(*types)
        return TensorType(np.dtype(self.out_dtype(dt)), shape, weak)

    def _vjp_from_deriv(self, g, out, *operands, **attrs):
        maps = self.deriv(out, *operands)
        return [None if m is None else (lambda m=m, x=x: _sum_to(_masked(m, g), x)) for m, x in zip(maps, operands)]

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


def _float_dtype(dt):
    return dt if is_float(dt) else DTYPES["f64"]


def _as_float(x):
    return x if x.dtype.kind == "f" else x.astype(np.float64)


def unary_float(name, fn, deriv):
    """An elementwise function of floats; ints and bools are first converted to f64."""
    return Elementwise(name, lambda x: fn(_as_float(x)), deriv, out_dtype=_float_dtype, nin=1)


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
erf = unary_float("erf", scipy.special.erf,
                  lambda y, x: [lambda t: t * (2 / math.sqrt(math.pi)) * L.exp(-(x * x))])
erfc = unary_float("erfc", scipy.special.erfc,
                   lambda y, x: [lambda t: t * (-2 / math.sqrt(math.pi)) * L.exp(-(x * x))])
sigmoid = unary_float("sigmoid", scipy.special.expit, lambda y, x: [lambda t: t * y * (1 - y)])
# log(1 + exp(x)) computed without overflow for large |x|.
softplus = unary_float("softplus", lambda x: np.logaddexp(x.dtype.type(0), x),
                       lambda y, x: [lambda t: t * L.sigmoid(x)])
abs_ = Elementwise("abs", np.abs, lambda y, x: [lambda t: t * L.sign(x)], nin=1, cheap=True)
# sign is piecewise constant: zero derivative wherever it exists.
sign = Elementwise("sign", np.sign, lambda y, x: [None], nin=1, not_for_bools="sign of bools is not supported")
relu = Elementwise("relu", lambda x: np.maximum(x, x.dtype.type(0)),
                   lambda y, x: [lambda t: L.where(x > 0, t, 0)], nin=1)
logical_not = Elementwise("not", np.logical_not, verb="negate", nin=1, logical=True, cheap=True)


def _sum_to(v, like):
    return L.sum_to(v, like.type.shape)


add = Elementwise("add", np.add, lambda y, a, b: [_identity, _identity], commutative=True, cheap=True)
sub = Elementwise("sub", np.subtract, lambda y, a, b: [_identity, lambda t: -t], verb="subtract", cheap=True,
                  not_for_bools="subtracting bools is not supported; use `!=` or cast to an integer first")
mul = Elementwise("mul", np.multiply, lambda y, a, b: [lambda t: t * b, lambda t: t * a], verb="multiply",
                  commutative=True, cheap=True)
div = Elementwise("div", np.true_divide, lambda y, a, b: [lambda t: t / b, lambda t: -(t * y) / b],
                  verb="divide", out_dtype=_float_dtype)


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
            raise ShapeError(f"where: condition {types[0]} and values {_type_names(types[1:])} do not broadcast")
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


class IfElse(Op):
    """`if c then a else b`: lazy — only the chosen branch is evaluated."""

    lazy = True

    def __init__(self):
        super().__init__("ifelse", vjp=self._vjp_rule, jvp=self._jvp_rule, verb="choose between")

    def infer(self, types, attrs):
        c, a, b = types
        if c.shape != () or c.dtype != DTYPES["bool"]:
            raise ShapeError(f"the condition of `if` must be a bool scalar, not {c}")
        shape = broadcast_shapes(a.shape, b.shape)
        if shape is None:
            raise ShapeError(f"the branches of `if` have types {a} and {b}, which do not broadcast")
        dt, weak = promote(a, b)
        return TensorType(dt, shape, weak)

    @staticmethod
    def choose(cond_value) -> int:
        """The operand index to evaluate, given the condition's value."""
        return 1 if bool(cond_value) else 2

    def impl(self, c, chosen):
        return chosen

    @staticmethod
    def _vjp_rule(g, y, c, a, b):
        return [None, lambda: _sum_to(L.ifelse(c, g, L.zeros_like(g)), a),
                lambda: _sum_to(L.ifelse(c, L.zeros_like(g), g), b)]

    @staticmethod
    def _jvp_rule(tangents, y, c, a, b):
        _, ta, tb = tangents
        return L.ifelse(c, ta if ta is not None else L.zeros_like(a), tb if tb is not None else L.zeros_like(b))


ifelse = IfElse()


# ----------------------------------------------------------------- reductions


def _reduced_shape(shape, axis, keepdims):
    if keepdims:
        return tuple(1 if i in axis else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axis)


class Reduce(Op):
    """A reduction over `axis` (a tuple of non-negative ints) with `keepdims`."""

    def __init__(self, name, impl, vjp=None, out_dtype=None, jvp=None, **props):
        super().__init__(name, impl=impl, vjp=vjp, verb=f"take the {name} of", jvp=jvp, **props)
        self.out_dtype = out_dtype or (lambda dt: dt)

    def infer(self, types, attrs):
        (t,) = types
        return TensorType(np.dtype(self.out_dtype(t.dtype)), _reduced_shape(t.shape, attrs["axis"], attrs["keepdims"]))


def _sum_dtype(dt):
    # numpy sums bools and small ints in the platform integer.
    return DTYPES["i64"] if dt.kind in "biu" else dt


def _keep(v, x, axis, keepdims):
    """`v` (a reduction of `x`) with the reduced axes put back as size 1."""
    return v if keepdims else L.expand_axes(v, axis)


def _sum_vjp(g, y, x, axis, keepdims):
    return [lambda: L.broadcast_to(_keep(g, x, axis, keepdims), x.type.shape)]


def _extreme_weights(y, x, axis, keepdims):
    # The derivative goes to the entries equal to the extreme, split evenly between ties.
    mask = L.cast(x == _keep(y, x, axis, keepdims), x.type.dtype)
    return mask / L.sum(mask, axis=axis, keepdims=True)


def _extreme_vjp(g, y, x, axis, keepdims):
    return [lambda: _extreme_weights(y, x, axis, keepdims) * _keep(g, x, axis, keepdims)]


def _extreme_jvp(tangents, y, x, axis, keepdims):
    return L.sum(tangents[0] * _extreme_weights(y, x, axis, keepdims), axis=axis, keepdims=keepdims)


def _prod_others(y, x, axis, keepdims):
    # d prod / d x_i = product of the others. Dividing y by x_i fails at zeros, so where x_i == 0
    # use the product of the nonzero entries when x_i is the only zero; with two zeros, that
    # product times the other zero entry (0, but its derivative — a second derivative of prod —
    # is not); with more, 0 (exact up to second derivatives).
    is_zero = x == 0
    nonzero = L.where(is_zero, 1, x)
    prod_nonzero = L.prod(nonzero, axis=axis, keepdims=True)
    zeros = L.sum(L.cast(is_zero, x.type.dtype), axis=axis, keepdims=True)
    zero_part = L.where(is_zero, x, 0)
    other_zero = L.sum(zero_part, axis=axis, keepdims=True) - zero_part
    at_zeros = L.where(zeros == 1, prod_nonzero, L.where(zeros == 2, prod_nonzero * other_zero, 0))
    return L.where(is_zero, at_zeros, _keep(y, x, axis, keepdims) / nonzero)


def _prod_vjp(g, y, x, axis, keepdims):
    return [lambda: _keep(g, x, axis, keepdims) * _prod_others(y, x, axis, keepdims)]


def _prod_jvp(tangents, y, x, axis, keepdims):
    return L.sum(tangents[0] * _prod_others(y, x, axis, keepdims), axis=axis, keepdims=keepdims)


def _logsumexp_vjp(g, y, x, axis, keepdims):
    return [lambda: _keep(g, x, axis, keepdims) * L.exp(x - _keep(y, x, axis, keepdims))]


def _logsumexp_jvp(tangents, y, x, axis, keepdims):
    return L.sum(tangents[0] * L.exp(x - _keep(y, x, axis, keepdims)), axis=axis, keepdims=keepdims)


def _np_logsumexp(x, axis, keepdims):
    x = _as_float(x)
    if x.size == 0 or not axis:
        out = scipy.special.logsumexp(x, axis=axis, keepdims=keepdims)
    else:
        # max-shifted, as scipy does, in plain numpy (scipy's array-API layer costs ~40 us a call);
        # an infinite or NaN max shifts by 0, so rows of -inf give -inf, and inf and NaN propagate
        m = np.max(x, axis=axis, keepdims=True)
        m = np.where(np.isfinite(m), m, 0).astype(x.dtype)
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            out = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
    # (a reduction of a 0-d array may come back as shape (1,): give it the type's shape)
    return np.reshape(out, _reduced_shape(x.shape, axis, keepdims))


sum_ = Reduce("sum", lambda x, axis, keepdims: np.sum(x, axis=axis, keepdims=keepdims, dtype=_sum_dtype(x.dtype)),
              _sum_vjp, out_dtype=_sum_dtype, jvp=linear_in(0), kernel_reduce=True)
prod = Reduce("prod", lambda x, axis, keepdims: np.prod(x, axis=axis, keepdims=keepdims, dtype=_sum_dtype(x.dtype)),
              _prod_vjp, out_dtype=_sum_dtype, jvp=_prod_jvp, kernel_reduce=True)
max_ = Reduce("max", lambda x, axis, keepdims: np.max(x, axis=axis, keepdims=keepdims), _extreme_vjp,
              jvp=_extreme_jvp, kernel_reduce=True, has_identity=False)
min_ = Reduce("min", lambda x, axis, keepdims: np.min(x, axis=axis, keepdims=keepdims), _extreme_vjp,
              jvp=_extreme_jvp, kernel_reduce=True, has_identity=False)
logsumexp = Reduce("logsumexp", _np_logsumexp, _logsumexp_vjp, out_dtype=_float_dtype, jvp=_logsumexp_jvp)


class ArgReduce(Op):
    """argmax / argmin over one axis (or the flattened array when axis is None); i64."""

    def __init__(self, name, fn):
        super().__init__(name, verb=f"take the {name} of")
        self.fn = fn

    def infer(self, types, attrs):
        (t,) = types
        axis, keepdims = attrs["axis"], attrs["keepdims"]
        if axis is None:
            shape = (1,) * t.ndim if keepdims else ()
        else:
            shape = _reduced_shape(t.shape, (axis,), keepdims)
        return TensorType(DTYPES["i64"], shape)

    def impl(self, x, axis, keepdims):
        return np.asarray(self.fn(x, axis=axis, keepdims=keepdims), dtype=np.int64)


argmax = ArgReduce("argmax", np.argmax)
argmin = ArgReduce("argmin", np.argmin)


class Softmax(Op):
    """softmax / log_softmax along one axis, computed with the max subtracted."""

    def __init__(self, name, impl, vjp, jvp):
        super().__init__(name, impl=impl, vjp=vjp, jvp=jvp)

    def infer(self, types, attrs):
        (t,) = types
        return TensorType(_float_dtype(t.dtype), t.shape)


def _np_softmax(x, axis):
    x = _as_float(x)
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def _np_log_softmax(x, axis):
    x = _as_float(x)
    shifted = x - np.max(x, axis=axis, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


class CategoricalCrossentropy(Op):
    """-log_softmax(x)[i, y[i]] for each row i: the cross-entropy of logits x [N, K] and integer
    labels y [N], computed as logsumexp(x[i]) - x[i, y[i]] without forming the log-softmax
    (the stabilize phase rewrites -log(softmax(x))[arange(N), y] into it)."""

    def __init__(self):
        super().__init__("categorical_crossentropy", vjp=self._vjp_rule, jvp=self._jvp_rule,
                         verb="take the cross-entropy of")

    def infer(self, types, attrs):
        x, y = types
        if x.ndim != 2 or not is_float(x.dtype):
            raise ShapeError(f"categorical_crossentropy needs float logits [N, K], not {x}")
        if y.ndim != 1 or y.dtype.kind not in "iu" or y.shape[0] != x.shape[0]:
            raise ShapeError(f"categorical_crossentropy needs integer labels [{x.shape[0]}], not {y}")
        return TensorType(x.dtype, (x.shape[0],))

    def impl(self, x, y):
        y = wrap_indices(y, x.shape[1], 1, what="label")
        lse = _np_logsumexp(x, (1,), False)
        return (lse - x[np.arange(x.shape[0]), y]).astype(x.dtype)

    @staticmethod
    def _residual(x, y):
        # onehot (a static or symbolic class count) wraps and checks labels as impl does
        hot = L.apply(onehot, [y], n=x.type.shape[1], dtype=x.type.dtype)
        return L.softmax(x, axis=1) - hot

    @classmethod
    def _vjp_rule(cls, g, out, x, y):
        return [lambda: L.expand_axes(g, (1,)) * cls._residual(x, y), None]

    @classmethod
    def _jvp_rule(cls, tangents, out, x, y):
        if tangents[0] is None:
            return None
        return L.sum(tangents[0] * cls._residual(x, y), axis=1)


categorical_crossentropy = CategoricalCrossentropy()


softmax = Softmax("softmax", _np_softmax,
                  lambda g, y, x, axis: [lambda: y * (g - L.sum(g * y, axis=(axis,), keepdims=True))],
                  lambda ts, y, x, axis: y * (ts[0] - L.sum(ts[0] * y, axis=(axis,), keepdims=True)))
log_softmax = Softmax("log_softmax", _np_log_softmax,
                      lambda g, y, x, axis: [lambda: g - L.exp(y) * L.sum(g, axis=(axis,), keepdims=True)],
                      lambda ts, y, x, axis: ts[0] - L.sum(ts[0] * L.exp(y), axis=(axis,), keepdims=True))


# ----------------------------------------------------------------- linear algebra


class Matmul(Op):
    """numpy's matmul: 1-D operands are promoted to matrices and the added dim removed; leading
    dims broadcast as batch dims."""

    def __init__(self):
        super().__init__("matmul", impl=np.matmul, vjp=self._rule, verb="matmul", jvp=self._jvp_rule)

    @staticmethod
    def _jvp_rule(tangents, y, a, b):
        ta, tb = tangents  # bilinear: d(a @ b) = da @ b + a @ db
        terms = ([L.matmul(ta, b)] if ta is not None else []) + ([L.matmul(a, tb)] if tb is not None else [])
        return L.add_all(terms)

    def infer(self, types, attrs):
        a, b = types
        if a.ndim == 0 or b.ndim == 0:
            raise ShapeError(f"cannot matmul {a} and {b}: matmul needs arrays, not scalars (use *)")
        a_shape = (1,) + a.shape if a.ndim == 1 else a.shape
        b_shape = b.shape + (1,) if b.ndim == 1 else b.shape
        if a_shape[-1] != b_shape[-2]:
            raise ShapeError(f"cannot matmul {a} and {b}: inner dims {a_shape[-1]} and {b_shape[-2]} differ")
        batch = broadcast_shapes(a_shape[:-2], b_shape[:-2])
        if batch is None:
            raise ShapeError(f"cannot matmul {a} and {b}: batch dims do not broadcast")
        shape = batch + ((a_shape[-2],) if a.ndim > 1 else ()) + ((b_shape[-1],) if b.ndim > 1 else ())
        dt, _ = promote(a, b)
        return TensorType(dt, shape)

    @staticmethod
    def _rule(g, y, a, b):
        # Work on the matrix forms (1-D operands get their unit dim back), then undo.
        a2 = L.reshape(a, (1,) + a.type.shape) if a.type.ndim == 1 else a
        b2 = L.reshape(b, b.type.shape + (1,)) if b.type.ndim == 1 else b
        g2 = g
        if a.type.ndim == 1:
            # a's added row dim sits just before b's column dim (last in g), or last when b is
            # 1-D too
            g2 = L.expand_axes(g2, (g2.type.ndim - (0 if b.type.ndim == 1 else 1),))
        if b.type.ndim == 1:
            g2 = L.expand_axes(g2, (g2.type.ndim,))

        def grad_a():
            ga = L.matmul(g2, L.swap_last(b2))
            return L.reshape(L.sum_to(ga, a2.type.shape), a.type.shape)

        def grad_b():
            gb = L.matmul(L.swap_last(a2), g2)
            return L.reshape(L.sum_to(gb, b2.type.shape), b.type.shape)
        return [grad_a, grad_b]


matmul = Matmul()


# ----------------------------------------------------------------- shape ops


class Transpose(Op):
    def __init__(self):
        super().__init__("transpose", vjp=self._rule, jvp=linear_in(0))

    def infer(self, types, attrs):
        (t,) = types
        return TensorType(t.dtype, tuple(t.shape[i] for i in attrs["axes"]), t.weak)

    def impl(self, x, axes):
        return np.transpose(x, axes)

    @staticmethod
    def _rule(g, y, x, axes):
        return [lambda: L.transpose(g, tuple(int(i) for i in np.argsort(axes)))]


transpose = Transpose()


def _env_shape(shape, env):
    return tuple(resolve_dim(d, env) for d in shape)


class Reshape(Op):
    """reshape to `shape` (a tuple of dims, -1 already resolved by `lib.reshape`)."""

    needs_env = True
    view = True
    cheap = True
    kernel_identity = True

    def __init__(self):
        super().__init__("reshape", vjp=lambda g, y, x, shape: [lambda: L.reshape(g, x.type.shape)],
                         jvp=linear_in(0))

    def infer(self, types, attrs):
        (t,) = types
        return TensorType(t.dtype, tuple(attrs["shape"]), t.weak)

    def impl(self, x, shape, env):
        return np.reshape(x, _env_shape(shape, env))


reshape = Reshape()


class BroadcastTo(Op):
    needs_env = True
    cheap = True
    kernel_identity = True

    def __init__(self):
        super().__init__("broadcast_to", vjp=lambda g, y, x, shape: [lambda: L.sum_to(g, x.type.shape)],
                         jvp=linear_in(0),
                         verb="broadcast")

    def infer(self, types, attrs):
        (t,) = types
        shape = tuple(attrs["shape"])
        if len(shape) < t.ndim or broadcast_shapes(t.shape, shape) != shape:
            raise ShapeError(f"cannot broadcast {t} to shape [{', '.join(map(str, shape))}]")
        return TensorType(t.dtype, shape, t.weak)

    def impl(self, x, shape, env):
        return np.broadcast_to(x, _env_shape(shape, env))


broadcast_to = BroadcastTo()


def _concat_dim(dims):
    total = 0
    syms = []
    for d in dims:
        if isinstance(d, int):
            total += d
        else:
            syms.append(str(d))
    if not syms:
        return total
    # A sum of symbolic dims is not a monomial; it becomes its own symbol, bound at run time.
    return Sym(("+".join(syms + ([str(total)] if total else [])),))


class Concatenate(Op):
    def __init__(self):
        super().__init__("concatenate", vjp=self._rule, jvp=linear_in())

    def infer(self, types, attrs):
        axis = attrs["axis"]
        first = types[0]
        for t in types[1:]:
            if t.ndim != first.ndim or any(a != b for i, (a, b) in enumerate(zip(t.shape, first.shape)) if i != axis):
                raise ShapeError(f"cannot concatenate {_type_names(types)} along axis {axis}")
        dt, _ = promote(*types)
        shape = list(first.shape)
        shape[axis] = _concat_dim([t.shape[axis] for t in types])
        return TensorType(dt, tuple(shape))

    def impl(self, *xs, axis):
        return np.concatenate(xs, axis=axis)

    @staticmethod
    def _rule(g, y, *xs, axis):
        return [(lambda k=k: L.concat_part(g, xs, axis, k)) for k in range(len(xs))]


concatenate = Concatenate()


class ConcatPart(Op):
    """The k-th part of `g` split along `axis` as `xs` were concatenated (the VJP of
    concatenate). The `xs` are operands only to give the parts' sizes."""

    def __init__(self):
        super().__init__("concat_part", vjp=self._rule, jvp=linear_in(0))

    def infer(self, types, attrs):
        g, xs = types[0], types[1:]
        return TensorType(g.dtype, xs[attrs["k"]].shape)

    def impl(self, g, *xs, axis, k):
        start = sum(x.shape[axis] for x in xs[:k])
        index = [slice(None)] * g.ndim
        index[axis] = slice(start, start + xs[k].shape[axis])
        return g[tuple(index)]

    @staticmethod
    def _rule(gk, y, g, *xs, axis, k):
        parts = [gk if i == k else L.zeros_like(x, dtype=gk.type.dtype) for i, x in enumerate(xs)]
        return [lambda: L.concatenate(parts, axis=axis)] + [None] * len(xs)


concat_part = ConcatPart()


# ----------------------------------------------------------------- indexing
#
# An index spec is a tuple with one item per index position, like numpy's index tuple:
#   ("slice", start, stop, step)  ints, dims or None
#   ("int", i)                    a static integer
#   ("arr", k)                    operand k (k >= 1) is an integer array
#   ("new",)                      a new unit axis (numpy's None)


def _spec_to_numpy(spec, arrays, env, shape, first_array: int):
    """The numpy index for `spec` into an array of `shape`; index arrays wrapped by numpy's rule
    and checked against their axis (`first_array`: the node operand that holds arrays[0])."""
    out = []
    axis = 0
    for item in spec:
        kind = item[0]
        if kind == "slice":
            out.append(slice(*(None if v is None else resolve_dim(v, env) for v in item[1:])))
        elif kind == "int":
            out.append(item[1])
        elif kind == "arr":
            k = item[1] - 1
            out.append(wrap_indices(arrays[k], shape[axis], first_array + k, axis=axis))
        else:
            out.append(None)
        axis += kind != "new"
    return tuple(out)


def _slice_len(d, start, stop, step):
    """The length of d[start:stop:step] as a dim (a derived symbol when it can't be known)."""
    if isinstance(d, int) and all(isinstance(v, (int, type(None))) for v in (start, stop, step)):
        return len(range(*slice(start, stop, step).indices(d)))
    if step in (None, 1) and all(isinstance(v, (int, type(None))) for v in (start, stop)):
        s = start or 0
        if s >= 0 and stop is None:
            return _offset_dim(d, -s)
        if s >= 0 and stop < 0:
            return _offset_dim(d, stop - s)
        if s < 0 and stop is None:
            return -s
        if s >= 0 and stop >= 0:
            return max(stop - s, 0)
    if start is None and stop is None and step in (None, 1, -1):
        return d
    return Sym((f"{d}[{'' if start is None else start}:{'' if stop is None else stop}"
                f"{'' if step is None else ':' + str(step)}]",))


def _offset_dim(d, offset):
    if offset == 0:
        return d
    return Sym((f"{d}{offset:+d}",))


def index_type(x: TensorType, spec, arr_types) -> tuple:
    """The shape of x[spec] following numpy's basic and advanced indexing rules."""
    consumed = sum(1 for it in spec if it[0] != "new")
    if consumed > x.ndim:
        raise ShapeError(f"too many indices for {x}: {consumed} given")
    spec = tuple(spec) + (("slice", None, None, None),) * (x.ndim - consumed)
    advanced = [i for i, it in enumerate(spec) if it[0] == "arr"]
    if advanced:
        if any(it[0] == "new" for it in spec):
            raise ShapeError("a new axis combined with array indices is not supported")
        # With arrays present, static ints index like (broadcast) arrays, as in numpy.
        advanced = [i for i, it in enumerate(spec) if it[0] in ("arr", "int")]
        bshape = broadcast_shapes(*(arr_types[spec[i][1] - 1].shape for i in advanced if spec[i][0] == "arr"))
        if bshape is None:
            raise ShapeError(f"index arrays of shapes {_type_names(arr_types)} do not broadcast")
    out_before, out_after = [], []
    axis = 0
    for i, it in enumerate(spec):
        kind = it[0]
        target = out_before if not advanced or i < advanced[0] else out_after
        if kind == "new":
            target.append(1)
            continue
        d = x.shape[axis]
        axis += 1
        if kind == "slice":
            target.append(_slice_len(d, *it[1:]))
        elif kind == "int" and isinstance(d, int) and not -d <= it[1] < d:
            raise ShapeError(f"index {it[1]} is out of bounds for axis {axis - 1} of {x}")
    if not advanced:
        return tuple(out_before)
    contiguous = advanced == list(range(advanced[0], advanced[-1] + 1))
    if contiguous:
        return tuple(out_before) + bshape + tuple(out_after)
    return bshape + tuple(out_before) + tuple(out_after)


class Index(Op):
    """x[spec]: basic slicing and numpy's integer-array indexing (a gather)."""

    needs_env = True

    def __init__(self):
        super().__init__("index", vjp=self._rule, verb="index", jvp=linear_in(0))

    def infer(self, types, attrs):
        x, arrs = types[0], types[1:]
        for t in arrs:
            if t.dtype.kind not in "iu":
                raise ShapeError(f"an index array must be integer, not {t}")
        return TensorType(x.dtype, index_type(x, attrs["spec"], arrs), x.weak)

    def impl(self, x, *arrays, spec, env):
        return x[_spec_to_numpy(spec, arrays, env, x.shape, 1)]

    @staticmethod
    def _rule(g, y, x, *arrays, spec):
        return [lambda: L.index_add(g, arrays, spec, x)] + [None] * len(arrays)


index = Index()


class IndexAdd(Op):
    """zeros shaped like `like`, with g added at [spec] (repeated indices accumulate): the
    VJP of `index` (a scatter-add). `like` is an operand only for its shape."""

    needs_env = True

    def __init__(self):
        super().__init__("index_add", vjp=self._rule, jvp=linear_in(0))

    def infer(self, types, attrs):
        g, like = types[0], types[1]
        return TensorType(g.dtype, like.shape)

    def impl(self, g, like, *arrays, spec, env):
        out = np.zeros(like.shape, dtype=g.dtype)
        np.add.at(out, _spec_to_numpy(spec, arrays, env, out.shape, 2), g)
        return out

    @staticmethod
    def _rule(gout, y, g, like, *arrays, spec):
        return [lambda: L.index_var(gout, arrays, spec), None] + [None] * len(arrays)


index_add = IndexAdd()


# ----------------------------------------------------------------- constructors


class Full(Op):
    """An array of `shape` filled with `value` (zeros, ones, full)."""

    needs_env = True

    def __init__(self):
        super().__init__("full")

    def infer(self, types, attrs):
        return TensorType(np.dtype(attrs["dtype"]), tuple(attrs["shape"]))

    def impl(self, value, shape, dtype, env):
        return np.full(_env_shape(shape, env), value, dtype=dtype)


full = Full()


class ZerosLike(Op):
    def __init__(self):
        super().__init__("zeros_like", vjp=lambda g, y, x, dtype: [None], jvp=lambda ts, y, x, dtype: None)

    def infer(self, types, attrs):
        return TensorType(np.dtype(attrs["dtype"]), types[0].shape)

    def impl(self, x, dtype):
        return np.zeros(x.shape, dtype=dtype)


zeros_like = ZerosLike()


class Arange(Op):
    needs_env = True

    def __init__(self):
        super().__init__("arange")

    def infer(self, types, attrs):
        start, stop, step = attrs["start"], attrs["stop"], attrs["step"]
        if isinstance(stop, int):
            n = len(range(start, stop, step))
        elif start == 0 and step == 1:
            n = stop
        else:
            n = Sym((f"arange({start},{stop},{step})",))
        return TensorType(DTYPES["i64"], (n,))

    def impl(self, start, stop, step, env):
        return np.arange(start, resolve_dim(stop, env), step, dtype=np.int64)


arange = Arange()


class Onehot(Op):
    """Rows of `n` classes (an int, or a dim bound at call time) with a 1 at each label."""

    needs_env = True

    def __init__(self):
        super().__init__("onehot")

    def infer(self, types, attrs):
        (t,) = types
        if t.dtype.kind not in "iu":
            raise ShapeError(f"onehot needs integer class labels, not {t}")
        return TensorType(np.dtype(attrs["dtype"]), t.shape + (attrs["n"],))

    def impl(self, y, n, dtype, env):
        n = resolve_dim(n, env)
        y = wrap_indices(y, n, 0, what="label")
        return (y[..., None] == np.arange(n)).astype(dtype)


onehot = Onehot()


class Random(Op):
    """Standard random numbers: `dist` "uniform" (in [0, 1)) or "normal", of `shape` and float
    `dtype`, from the counter-based Philox stream of operand `key` (i64[2]: the model's seed and
    call counter) at this op's `site`. No derivative: the key is an integer."""

    needs_env = True

    def __init__(self):
        super().__init__("random", jvp=lambda ts, y, key, **attrs: None, verb="draw")

    def infer(self, types, attrs):
        (key,) = types
        if key.shape != (2,) or key.dtype != DTYPES["i64"]:
            raise ShapeError(f"a random op's key is i64[2], not {key}")
        if attrs["dtype"] not in (DTYPES["f32"], DTYPES["f64"]):
            raise ShapeError(f"random numbers are f32 or f64, not {attrs['dtype']}")
        return TensorType(attrs["dtype"], tuple(attrs["shape"]))

    def impl(self, key, dist, shape, dtype, site, env):
        from .. import philox
        concrete = _env_shape(shape, env)
        size = int(np.prod(concrete, dtype=np.int64))
        w0, w1, w2, w3 = philox.words(size, int(key[0]), site, int(key[1]))
        out = philox.uniform(w0, w1, dtype) if dist == "uniform" else philox.normal(w2, w3, dtype)
        return out.reshape(concrete)


random = Random()


class StopGradient(Op):
    """The identity, through which no derivative flows (Theano's consider_constant /
    disconnected_grad, JAX's stop_gradient): the value is treated as a constant."""

    elementwise = True
    stops_gradient = True

    def __init__(self):
        super().__init__("stop_gradient", impl=lambda x: x, jvp=lambda ts, y, x: None)

    def infer(self, types, attrs):
        (t,) = types
        return TensorType(t.dtype, t.shape, t.weak)


stop_gradient = StopGradient()


# ----------------------------------------------------------------- convolution and pooling
#
# Images are NCHW: x [N, C, H, W]; filters [F, C, KH, KW]. `conv2d` is a cross-correlation (as
# Theano's conv2d with filter_flip=False, torch's F.conv2d): out[n, f, i, j] =
# Σ_c,a,b x_pad[n, c, i·sh + a, j·sw + b] · w[f, c, a, b]. Attrs: `stride` (sh, sw) and
# `padding` ((top, bottom), (left, right)) of zeros, resolved by `lib.conv2d` ("same", ints).
#
# The three ops below are the three partial derivatives of one trilinear form
# T(x, w, g) = <g, conv2d(x, w)>: conv2d(x, w) = ∂T/∂g, conv2d_backprop_input(g, w) = ∂T/∂x (the
# transposed convolution) and conv2d_backprop_filter(x, g) = ∂T/∂w. Each is bilinear, and the
# VJPs of each are the other two, so derivatives of any order stay within these three ops.
#
# max_pool2d takes the max of each `window` (kh, kw) placed every `stride` (sh, sw) over the last
# two axes, without padding (a partial window at the border is dropped: Theano's
# ignore_border=True). Its derivative goes to the maximum of each window; ties split it evenly
# (as the max reduction does). max_pool2d_backprop(x, out, g) is its VJP (g spread back onto x)
# and max_pool2d_tangent(x, out, t) its JVP (t gathered from the maxima); each is linear in its
# last operand and the other's transpose. Their derivative with respect to x is zero wherever it
# exists (the choice of the maxima is piecewise constant), so they give none.


def _conv_out_dim(d, k, s, lo, hi, what):
    """The number of windows of size k every s along a dim d padded by lo + hi."""
    if isinstance(d, int):
        span = d + lo + hi - k
        if span < 0:
            raise ShapeError(f"{what}: the window ({k}) is larger than the {'padded ' if lo or hi else ''}"
                             f"input ({d + lo + hi})")
        return span // s + 1
    if s == 1:
        return _offset_dim(d, lo + hi - k + 1)
    return Sym((f"({d}{lo + hi - k:+d})//{s}+1",))


def _window_views(xp, kh, kw, sh, sw, oh, ow):
    """The strided windows of xp over its last two axes: [..., oh, ow, kh, kw] (a view)."""
    win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(-2, -1))
    return win[..., ::sh, ::sw, :, :][..., :oh, :ow, :, :]


def _pad_hw(x, padding):
    (pt, pb), (pl, pr) = padding
    if not (pt or pb or pl or pr):
        return x
    return np.pad(x, ((0, 0),) * (x.ndim - 2) + ((pt, pb), (pl, pr)))


def _out_hw(h, w, kh, kw, stride, padding):
    (pt, pb), (pl, pr) = padding
    return (h + pt + pb - kh) // stride[0] + 1, (w + pl + pr - kw) // stride[1] + 1


def _conv_dtype(types, name):
    dt, _ = promote(*types)
    if not is_float(dt) or any(not is_float(t.dtype) for t in types):
        raise ShapeError(f"{name} needs float arrays, not {_type_names(types)}")
    return dt


def _static_kernel(w, what):
    kh, kw = w.shape[2], w.shape[3]
    if not (isinstance(kh, int) and isinstance(kw, int)):
        raise ShapeError(f"{what}: the filters {w} need a fixed kernel size (KH, KW)")
    return kh, kw


def _bilinear_jvp(tangents, out, a, b, **attrs):
    ta, tb = tangents
    terms = ([L.apply(out.op, [ta, b], **attrs)] if ta is not None else []) + \
            ([L.apply(out.op, [a, tb], **attrs)] if tb is not None else [])
    return L.add_all(terms)


class Conv2d(Op):
    """conv2d(x [N, C, H, W], w [F, C, KH, KW]) -> [N, F, OH, OW]; OH = (H + pads - KH) // sh + 1."""

    def __init__(self):
        super().__init__("conv2d", vjp=self._rule, jvp=_bilinear_jvp, verb="convolve")

    def infer(self, types, attrs):
        x, w = types
        if x.ndim != 4 or w.ndim != 4:
            raise ShapeError(f"cannot convolve {x} with {w}: conv2d takes images x [N, C, H, W] and "
                             "filters w [F, C, KH, KW]")
        if x.shape[1] != w.shape[1]:
            raise ShapeError(f"cannot convolve {x} with {w}: x has {x.shape[1]} channels but the filters "
                             f"expect {w.shape[1]} (x is [N, C, H, W], w is [F, C, KH, KW])")
        dt = _conv_dtype(types, "conv2d")
        kh, kw = _static_kernel(w, "conv2d")
        (pt, pb), (pl, pr) = attrs["padding"]
        sh, sw = attrs["stride"]
        where = f"conv2d of {x} with {w}"
        oh = _conv_out_dim(x.shape[2], kh, sh, pt, pb, where)
        ow = _conv_out_dim(x.shape[3], kw, sw, pl, pr, where)
        return TensorType(dt, (x.shape[0], w.shape[0], oh, ow))

    def impl(self, x, w, stride, padding):
        dt = np.result_type(x, w)
        x, w = x.astype(dt, copy=False), w.astype(dt, copy=False)
        kh, kw = w.shape[2:]
        oh, ow = _out_hw(x.shape[2], x.shape[3], kh, kw, stride, padding)
        cols = _window_views(_pad_hw(x, padding), kh, kw, *stride, oh, ow)   # [N, C, OH, OW, KH, KW]
        out = np.tensordot(cols, w, axes=([1, 4, 5], [1, 2, 3]))              # [N, OH, OW, F]
        return np.ascontiguousarray(out.transpose(0, 3, 1, 2))

    @staticmethod
    def _rule(g, out, x, w, stride, padding):
        return [lambda: L.conv2d_backprop_input(g, w, x.type.shape[2:], stride, padding),
                lambda: L.conv2d_backprop_filter(x, g, w.type.shape[2:], stride, padding)]


conv2d = Conv2d()


class Conv2dBackpropInput(Op):
    """The transposed convolution: conv2d_backprop_input(g [N, F, OH, OW], w [F, C, KH, KW]) ->
    [N, C, H, W], the VJP of conv2d with respect to x; `size` (H, W) is x's (a stride can
    leave rows at the border unused, so OH does not determine H)."""

    needs_env = True

    def __init__(self):
        super().__init__("conv2d_backprop_input", vjp=self._rule, jvp=_bilinear_jvp,
                         verb="transpose-convolve")

    def infer(self, types, attrs):
        g, w = types
        if g.ndim != 4 or w.ndim != 4 or g.shape[1] != w.shape[0]:
            raise ShapeError(f"conv2d_backprop_input: cannot spread {g} back through the filters {w}")
        dt = _conv_dtype(types, "conv2d_backprop_input")
        kh, kw = _static_kernel(w, "conv2d_backprop_input")
        h, wd = attrs["size"]
        (pt, pb), (pl, pr) = attrs["padding"]
        sh, sw = attrs["stride"]
        where = "conv2d_backprop_input"
        if (_conv_out_dim(h, kh, sh, pt, pb, where), _conv_out_dim(wd, kw, sw, pl, pr, where)) != g.shape[2:]:
            raise ShapeError(f"conv2d_backprop_input: {g} is not the output of a convolution of "
                             f"[{h}, {wd}] images with {w}")
        return TensorType(dt, (g.shape[0], w.shape[1], h, wd))

    def impl(self, g, w, size, stride, padding, env):
        dt = np.result_type(g, w)
        g, w = g.astype(dt, copy=False), w.astype(dt, copy=False)
        h, wd = (resolve_dim(d, env) for d in size)
        (pt, pb), (pl, pr) = padding
        sh, sw = stride
        n, _, oh, ow = g.shape
        _, c, kh, kw = w.shape
        cols = np.tensordot(w, g, axes=([0], [1]))             # [C, KH, KW, N, OH, OW]
        gx = np.zeros((c, n, h + pt + pb, wd + pl + pr), dtype=dt)
        for a in range(kh):                                    # one strided add per kernel offset
            for b in range(kw):
                gx[:, :, a:a + sh * oh:sh, b:b + sw * ow:sw] += cols[:, a, b]
        return np.ascontiguousarray(gx[:, :, pt:pt + h, pl:pl + wd].transpose(1, 0, 2, 3))

    @staticmethod
    def _rule(c, out, g, w, size, stride, padding):
        # <c, bi(g, w)> = T(c, w, g)
        return [lambda: L.conv2d(c, w, stride, padding),
                lambda: L.conv2d_backprop_filter(c, g, w.type.shape[2:], stride, padding)]


conv2d_backprop_input = Conv2dBackpropInput()


class Conv2dBackpropFilter(Op):
    """conv2d_backprop_filter(x [N, C, H, W], g [N, F, OH, OW]) -> [F, C, KH, KW]: the VJP of
    conv2d with respect to the filters (a correlation of the images with the cotangent);
    `kernel` is (KH, KW)."""

    def __init__(self):
        super().__init__("conv2d_backprop_filter", vjp=self._rule, jvp=_bilinear_jvp,
                         verb="correlate")

    def infer(self, types, attrs):
        x, g = types
        if x.ndim != 4 or g.ndim != 4 or x.shape[0] != g.shape[0]:
            raise ShapeError(f"conv2d_backprop_filter: cannot correlate {x} with {g}")
        dt = _conv_dtype(types, "conv2d_backprop_filter")
        kh, kw = attrs["kernel"]
        (pt, pb), (pl, pr) = attrs["padding"]
        sh, sw = attrs["stride"]
        where = "conv2d_backprop_filter"
        if (_conv_out_dim(x.shape[2], kh, sh, pt, pb, where), _conv_out_dim(x.shape[3], kw, sw, pl, pr, where)) \
                != g.shape[2:]:
            raise ShapeError(f"conv2d_backprop_filter: {g} is not the output of a convolution of {x} "
                             f"with [{kh}, {kw}] filters")
        return TensorType(dt, (g.shape[1], x.shape[1], kh, kw))

    def impl(self, x, g, kernel, stride, padding):
        dt = np.result_type(x, g)
        x, g = x.astype(dt, copy=False), g.astype(dt, copy=False)
        oh, ow = g.shape[2:]
        cols = _window_views(_pad_hw(x, padding), *kernel, *stride, oh, ow)   # [N, C, OH, OW, KH, KW]
        return np.ascontiguousarray(np.tensordot(g, cols, axes=([0, 2, 3], [0, 2, 3])))

    @staticmethod
    def _rule(c, out, x, g, kernel, stride, padding):
        # <c, bf(x, g)> = T(x, c, g)
        return [lambda: L.conv2d_backprop_input(g, c, x.type.shape[2:], stride, padding),
                lambda: L.conv2d(x, c, stride, padding)]


conv2d_backprop_filter = Conv2dBackpropFilter()


def _pool_out_hw(x, window, stride):
    return ((x.shape[-2] - window[0]) // stride[0] + 1, (x.shape[-1] - window[1]) // stride[1] + 1)


def _pool_offsets(x, window, stride, oh, ow):
    """(a, b, the view of x at window offset (a, b) of every window): [..., OH, OW] each."""
    sh, sw = stride
    for a in range(window[0]):
        for b in range(window[1]):
            yield a, b, x[..., a:a + sh * oh:sh, b:b + sw * ow:sw]


def _pool_weights(x, out, window, stride):
    """[(a, b, weight)]: the share of each window's derivative that goes to its offset (a, b):
    1 / (the number of maxima) where x is a maximum, else 0."""
    oh, ow = out.shape[-2:]
    masks = [(a, b, (v == out)) for a, b, v in _pool_offsets(x, window, stride, oh, ow)]
    count = np.zeros(out.shape, dtype=x.dtype)
    for _, _, m in masks:
        count += m
    with np.errstate(all="ignore"):
        inv = 1 / count  # no maximum (a NaN in the window): inf, and the derivative NaN
    return [(a, b, m * inv) for a, b, m in masks]


class MaxPool2d(Op):
    """max_pool2d(x [..., H, W]) -> [..., OH, OW], OH = (H - kh) // sh + 1: the max of each
    `window` placed every `stride` (no padding)."""

    def __init__(self):
        super().__init__("max_pool2d", vjp=self._rule, jvp=self._jvp_rule, verb="max-pool")

    def infer(self, types, attrs):
        (x,) = types
        if x.ndim < 2:
            raise ShapeError(f"cannot max-pool {x}: max_pool2d pools the last two axes of [..., H, W]")
        if x.dtype.kind == "b":
            raise ShapeError(f"cannot max-pool {x}: bools are not supported")
        (kh, kw), (sh, sw) = attrs["window"], attrs["stride"]
        where = f"max_pool2d of {x} with window ({kh}, {kw})"
        oh = _conv_out_dim(x.shape[-2], kh, sh, 0, 0, where)
        ow = _conv_out_dim(x.shape[-1], kw, sw, 0, 0, where)
        return TensorType(x.dtype, x.shape[:-2] + (oh, ow), x.weak)

    def impl(self, x, window, stride):
        oh, ow = _pool_out_hw(x, window, stride)
        out = None
        for _, _, v in _pool_offsets(x, window, stride, oh, ow):
            out = v.copy() if out is None else np.maximum(out, v, out=out)
        return out

    @staticmethod
    def _rule(g, out, x, window, stride):
        return [lambda: L.max_pool2d_backprop(x, out, g, window, stride)]

    @staticmethod
    def _jvp_rule(tangents, out, x, window, stride):
        return None if tangents[0] is None else L.max_pool2d_tangent(x, out, tangents[0], window, stride)


max_pool2d = MaxPool2d()


class MaxPool2dBackprop(Op):
    """max_pool2d_backprop(x, out, g) -> x's shape: each window's cotangent g added onto its
    maxima (split evenly between ties). `out` = max_pool2d(x) (given, not recomputed)."""

    def __init__(self):
        super().__init__("max_pool2d_backprop", vjp=self._rule, jvp=self._jvp_rule)

    def infer(self, types, attrs):
        x, out, g = types
        if out.shape != g.shape:
            raise ShapeError(f"max_pool2d_backprop: the cotangent {g} has not the shape of the pooled {out}")
        dt, _ = promote(x, g)
        return TensorType(dt, x.shape)

    def impl(self, x, out, g, window, stride):
        dt = np.result_type(x, g)
        gx = np.zeros(x.shape, dtype=dt)
        sh, sw = stride
        oh, ow = out.shape[-2:]
        for a, b, wt in _pool_weights(x, out, window, stride):
            gx[..., a:a + sh * oh:sh, b:b + sw * ow:sw] += g * wt
        return gx

    @staticmethod
    def _rule(c, y, x, out, g, window, stride):
        return [None, None, lambda: L.max_pool2d_tangent(x, out, c, window, stride)]

    @staticmethod
    def _jvp_rule(tangents, y, x, out, g, window, stride):
        return None if tangents[2] is None else L.max_pool2d_backprop(x, out, tangents[2], window, stride)


max_pool2d_backprop = MaxPool2dBackprop()


class MaxPool2dTangent(Op):
    """max_pool2d_tangent(x, out, t) -> out's shape: the tangent t (shaped like x) at each
    window's maximum (the mean over ties): the JVP of max_pool2d."""

    def __init__(self):
        super().__init__("max_pool2d_tangent", vjp=self._rule, jvp=self._jvp_rule)

    def infer(self, types, attrs):
        x, out, t = types
        if x.shape != t.shape:
            raise ShapeError(f"max_pool2d_tangent: the tangent {t} has not the shape of the pooled input {x}")
        dt, _ = promote(out, t)
        return TensorType(dt, out.shape)

    def impl(self, x, out, t, window, stride):
        dt = np.result_type(out, t)
        res = np.zeros(out.shape, dtype=dt)
        oh, ow = out.shape[-2:]
        views = {(a, b): v for a, b, v in _pool_offsets(t, window, stride, oh, ow)}
        for a, b, wt in _pool_weights(x, out, window, stride):
            res += views[a, b] * wt
        return res

    @staticmethod
    def _rule(c, y, x, out, t, window, stride):
        return [None, None, lambda: L.max_pool2d_backprop(x, out, c, window, stride)]

    @staticmethod
    def _jvp_rule(tangents, y, x, out, t, window, stride):
        return None if tangents[2] is None else L.max_pool2d_tangent(x, out, tangents[2], window, stride)


max_pool2d_tangent = MaxPool2dTangent()
