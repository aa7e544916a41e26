"""The `Op` base class, the registry `OPS` of every op by name, the leaf ops, and the helpers
several families share (JVPs of linear ops, dtype and dim algebra). What an op is: see
`flowml.ir.ops`."""

from __future__ import annotations

import numpy as np

from .. import lib as L
from ..graph import ShapeError
from ..types import DTYPES, Sym, is_float, resolve_dim


OPS: dict[str, "Op"] = {}


def op_named(name: str) -> "Op":
    """The registered op `name` (what a pickled op becomes again)."""
    if name not in OPS:  # ops of modules not imported yet (scan, fused) register on import
        import flowml.ir.fused  # noqa: F401
        import flowml.ir.scan  # noqa: F401
    return OPS[name]


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
    # the operand (by position) whose buffer the result may be written over, whatever its other
    # operands are (gemm's c): the memory plan may then update a param in place through it
    accumulates_into = None
    # the attr naming which of several results of one computation a node is (eigh's "part":
    # values or vectors): a native backend computes the nodes differing only in it together
    multipart = None
    # a user's function wrapped as an op (`flowml.op`, flowml/ir/ops/wrapped.py): not in OPS,
    # run on the host by every backend, never rewritten, matched by a rule or fused
    wrapped = False

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
        if not self.wrapped:  # (a user's op lives as long as the graphs that use it)
            OPS[name] = self

    def __reduce__(self):
        # pickled by name (the warm model cache, flowml/modelcache.py): an op is a singleton
        # that passes compare with `is`, and its rules are code, not data
        if self.wrapped or OPS.get(self.name) is not self:
            raise TypeError(f"op {self.name!r} is not a registered op: it cannot be pickled")
        return (op_named, (self.name,))

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
    def has_jvp(self) -> bool:
        """Whether tangents pass through (forward mode): every built-in op with a VJP has a JVP."""
        return self.has_vjp

    @property
    def bool_result(self) -> bool:
        return self.comparison or self.logical

    def __repr__(self) -> str:
        return f"<op {self.name}>"


def type_names(types) -> str:
    """Types as an error message names them: "f64[3] and f64[4]"."""
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


def sum_to_like(v, like):
    """v summed over the dims it was broadcast to from `like`'s shape (a VJP's last step)."""
    return L.sum_to(v, like.type.shape)


def float_dtype(dt):
    """The dtype a float function of `dt` computes in: `dt` if a float, else f64."""
    return dt if is_float(dt) else DTYPES["f64"]


def as_float(x):
    """The array `x` as floats (f64 unless it is one already): numpy impls of float functions."""
    return x if x.dtype.kind == "f" else x.astype(np.float64)


def env_shape(shape, env):
    """A shape of dims with its symbolic dims resolved by `env` (their values at run time)."""
    return tuple(resolve_dim(d, env) for d in shape)


def offset_dim(d, offset):
    """The dim d + offset (a derived symbol when d is symbolic)."""
    if offset == 0:
        return d
    return Sym((f"{d}{offset:+d}",))


# ----------------------------------------------------------------- leaves


class Leaf(Op):
    leaf = True

    def infer(self, types, attrs):
        raise ShapeError(f"{self.name} nodes are typed when created")


input_ = Leaf("input")
param = Leaf("param")
const = Leaf("const")
dim = Leaf("dim")  # attrs: dim (int or Sym): the size of a symbolic dim, as an i64 scalar
