"""Ops that steer evaluation or differentiation rather than compute: the lazy `ifelse` and
`stop_gradient`."""

from __future__ import annotations

from .. import lib as L
from ..graph import ShapeError
from ..types import DTYPES, TensorType, broadcast_shapes, promote
from .core import Op, sum_to_like


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
        return [None, lambda: sum_to_like(L.ifelse(c, g, L.zeros_like(g)), a),
                lambda: sum_to_like(L.ifelse(c, L.zeros_like(g), g), b)]

    @staticmethod
    def _jvp_rule(tangents, y, c, a, b):
        _, ta, tb = tangents
        return L.ifelse(c, ta if ta is not None else L.zeros_like(a), tb if tb is not None else L.zeros_like(b))


ifelse = IfElse()


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
