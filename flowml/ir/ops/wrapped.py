"""Wrapped ops: a user's numpy/scipy function as an op of the graph (Theano's `as_op`, JAX's
`pure_callback` with `custom_vjp` / `custom_jvp`). `flowml.op(fn, out_type, vjp=, jvp=)` in
flowml/api.py makes one; this module is the op.

A `WrappedOp` is an ordinary `Op` whose `impl` calls the function, so every backend runs it the
way it runs any op it has no kernel for: the reference evaluator calls `impl`, the LLVM and
OpenCL backends run it as a host step (`backends.reference.run_op`). It is marked `wrapped`:
it is not in the registry `OPS` (two programs may each wrap a function called `f`), no rewrite
rule looks at it or matches it, it is never fused and never constant-folded (the function runs
when the model runs, not when it compiles).

The purity contract: the function computes its result from its arguments only — no state kept
between calls, no side effects the model relies on — so two calls with the same operands and
keyword arguments are merged into one (common subexpressions, keyed by the op object itself,
never by its name), a derivative may call it again, and calls from several threads may overlap
(the function must be thread-safe; numpy's functions are). Its arguments are read-only views of
the operands (writing into one is an error at the op); a result sharing memory with an argument
is copied.

Types: the result's type comes from the op's `rule(types, kwargs) -> TensorType` (a fixed type,
or the user's function of the operand types), is stored in the node's attrs (`result_type`),
and the value the function returns is checked against it at run time: its dtype exactly, its
shape with the call's dims. A mismatch, or an exception in the function, is a located
FlowRuntimeError naming the op (raised here as `WrappedOpFailed`, a ValueError, which the
backends' `run_op` locates at the node).

Derivatives: `vjp(g, out, *operands, **kwargs)` returns one cotangent per operand (a `Var`,
None for none, or a single `Var` for a one-operand op); `jvp(tangents, out, *operands,
**kwargs)` the tangent of the result (tangents: one `Var` per operand, zero where it has none).
Both are written with flowml's functions or other wrapped ops, so they are graphs that
differentiate again, to any order.
"""

from __future__ import annotations

import os
import traceback

import numpy as np

from ...errors import FlowGradError, FlowTypeError
from .. import lib as L
from ..graph import ShapeError, current_loc
from ..types import Sym, TensorType
from .core import OPS, Op, type_names

_FLOWML_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class WrappedOpFailed(ValueError):
    """The wrapped function raised, or returned a value that does not fit its declared type."""


class WrappedOp(Op):
    wrapped = True
    needs_env = True  # (the call's dims, to check the result's shape)

    def __init__(self, fn, rule, name: str, vjp=None, jvp=None):
        if name in OPS:
            raise FlowTypeError(f"flowml.op: '{name}' is the name of a built-in op; pass another name=",
                                current_loc())
        super().__init__(name, vjp=self._vjp_rule if vjp is not None else None,
                         jvp=self._jvp_rule if jvp is not None else None, verb=f"call {name}")
        self.fn = fn
        self.rule = rule
        self.user_vjp = vjp
        self.user_jvp = jvp

    def __repr__(self) -> str:
        return f"<wrapped op {self.name}>"

    # ------------------------------------------------------------ building

    def __call__(self, *args, **kwargs):
        """Apply the op: `args` are Vars (or numbers and arrays, made constants), `kwargs`
        static arguments passed to the function (and to its type rule and derivatives)."""
        for key, value in kwargs.items():
            if key in ("env", "result_type") or isinstance(value, L.Var):
                raise FlowTypeError(f"{self.name}: keyword argument '{key}' must be a static value (a number, "
                                    "string or tuple), not a model value; pass values positionally",
                                    current_loc())
        graph = L._graph_of(*args)
        operands = [L.as_var(a, graph) for a in args]
        try:
            t = self.infer([v.type for v in operands], kwargs)
        except ShapeError as e:
            raise FlowTypeError(str(e), current_loc()) from None
        n = graph.add(self, [v.id for v in operands], {**kwargs, "result_type": t}, type=t)
        return L.Var(graph, n)

    def infer(self, types, attrs):
        kwargs = {k: v for k, v in attrs.items() if k != "result_type"}
        try:
            t = self.rule(list(types), kwargs)
        except ShapeError:
            raise
        except FlowTypeError as e:
            raise ShapeError(f"{self.name}: {e.message}") from None
        except Exception as e:  # noqa: BLE001 - a rule refusing its operands is a type error
            raise ShapeError(f"the type rule of {self.name} fails on {type_names(types) or 'no operands'}: "
                             f"{type(e).__name__}: {e}") from None
        if not isinstance(t, TensorType):
            raise ShapeError(f"the type rule of {self.name} returned {t!r}, not a type")
        return TensorType(t.dtype, t.shape)

    # ------------------------------------------------------------ running

    def impl(self, *arrays, env, result_type, **kwargs):
        args = [_read_only(a) for a in arrays]
        try:
            value = self.fn(*args, **kwargs)
        except MemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - the user's function: its error, located at the op
            raise WrappedOpFailed(f"{type(e).__name__}: {e}{_where(e)}") from e
        value = _checked(value, result_type, env)
        if any(np.may_share_memory(value, a) for a in arrays):
            value = value.copy()  # (an operand's buffer is reused once the operand is dead)
        return value

    # ------------------------------------------------------------ derivatives

    def _vjp_rule(self, g, out, *operands, result_type, **kwargs):
        box: list = []  # the user's rule runs once, when the first cotangent is asked for

        def cotangents():
            if not box:
                result = self.user_vjp(g, out, *operands, **kwargs)
                box.append(self._per_operand(result, operands))
            return box[0]
        return [(lambda i=i: cotangents()[i]) for i in range(len(operands))]

    def _per_operand(self, result, operands) -> list:
        if not isinstance(result, (list, tuple)):
            if len(operands) != 1:
                raise FlowGradError(f"the VJP of {self.name} returned one value for {len(operands)} operands: "
                                    "return a list with a cotangent (or None) per operand", current_loc())
            result = [result]
        if len(result) != len(operands):
            raise FlowGradError(f"the VJP of {self.name} returned {len(result)} cotangents for {len(operands)} "
                                "operands: return one (or None) per operand", current_loc())
        return [None if r is None else self._fit(r, x, f"the VJP of {self.name}", f"operand {i}")
                for i, (r, x) in enumerate(zip(result, operands))]

    def _fit(self, v, like, rule: str, what: str):
        """A derivative the user's rule returned, given the shape of `like` (a scalar broadcasts)."""
        v = L.as_var(v, like.graph)
        if v.type.shape != like.type.shape:
            if v.type.ndim != 0:
                raise FlowGradError(f"{rule} returned {v.type} for {what} of type {like.type}: a derivative has "
                                    "the shape of what it is the derivative of", current_loc())
            v = L.broadcast_to(v, like.type.shape)
        return v

    def _jvp_rule(self, tangents, out, *operands, result_type, **kwargs):
        full = [t if t is not None else L.zeros_like(x) for t, x in zip(tangents, operands)]
        result = self.user_jvp(full, out, *operands, **kwargs)
        return None if result is None else self._fit(result, out, f"the JVP of {self.name}", "its result")

    @property
    def has_jvp(self) -> bool:
        return self.user_jvp is not None

    def jvp(self, tangents, out, *operands, **attrs):
        if self.user_jvp is None:
            raise FlowGradError(f"{self.name} has no forward-mode derivative: give flowml.op a jvp= to push "
                                "tangents through it", current_loc())
        return super().jvp(tangents, out, *operands, **attrs)


def _read_only(a) -> np.ndarray:
    """A view of operand `a` the function cannot write into (operands are the model's buffers)."""
    view = np.asarray(a).view()
    view.flags.writeable = False
    return view


def _where(e: BaseException) -> str:
    """' (at file.py:12)': the innermost line of the user's own code that the exception passed."""
    frames = [f for f in traceback.extract_tb(e.__traceback__)[1:]
              if not f.filename.startswith(_FLOWML_DIR) and "-packages" not in f.filename]
    if not frames:
        return ""
    return f" (at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno})"


def _described(value: np.ndarray) -> str:
    return f"{value.dtype.name} of shape {value.shape}"


def _checked(value, t: TensorType, env: dict[str, int]) -> np.ndarray:
    """The function's result as an array of type `t` (dims resolved by `env`), or the error."""
    try:
        arr = np.asarray(value)
    except Exception:  # noqa: BLE001 - any object numpy can't take
        arr = None
    if arr is None or arr.dtype.kind not in "biuf":
        raise WrappedOpFailed(f"returned {type(value).__name__} {value!r:.60}, not an array of {t}")
    dims = []
    for d in t.shape:
        try:
            dims.append(d.resolve(env) if isinstance(d, Sym) else d)
        except KeyError:
            dims.append(None)  # (a dim the call does not bind: the backend's own check binds it)
    wrong_shape = arr.ndim != t.ndim or any(e is not None and e != a for e, a in zip(dims, arr.shape))
    if arr.dtype != t.dtype or wrong_shape:
        bound = ", ".join(f"{s}={env[s]}" for s in sorted(t.symbols()) if s in env)
        hint = f"; convert it (.astype(np.{t.dtype.name}))" if not wrong_shape else ""
        raise WrappedOpFailed(f"returned {_described(arr)}, but its declared type is {t}"
                              + (f" with {bound}" if bound else "") + hint)
    return arr
