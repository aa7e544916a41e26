"""The reference backend: evaluates a graph op by op with numpy.

It is the ground truth every pass and every other backend is tested against, so it favours
clarity over speed — and it checks, at every node, that the value numpy produced has exactly
the dtype and shape the type rules promised.
"""

from __future__ import annotations

import numpy as np

from ..errors import FlowInternalError, FlowRuntimeError
from ..ir import ops as P
from ..ir.graph import Graph
from ..ir.indices import IndexOutOfRange
from ..ir.types import Sym
from ..sizes import allocation_failed, check_value


class ReferenceState:
    """Params as numpy arrays, kept between calls."""

    def __init__(self, values: dict[str, np.ndarray]):
        self.values = {k: np.array(v) for k, v in values.items()}

    def get(self, name: str) -> np.ndarray:
        return self.values[name].copy()

    def has(self, name: str) -> bool:
        return name in self.values

    def set(self, name: str, value: np.ndarray) -> None:
        self.values[name] = np.array(value)


class ReferenceExecutable:
    """Runs one function: computes `outputs` and the update values from the old state, then
    assigns the updates (so updates are simultaneous)."""

    def __init__(self, graph: Graph, outputs: list[int], updates: list[tuple[str, int]]):
        self.graph = graph
        self.outputs = outputs
        self.updates = updates
        targets = list(outputs) + [n for _, n in updates]
        self.nodes = sorted(graph.ancestors(targets))
        self.lazy = any(graph.op(n).lazy for n in self.nodes)

    def __call__(self, inputs: dict[str, np.ndarray], state: ReferenceState, env: dict[str, int]):
        values = evaluate(self.graph, list(self.outputs) + [n for _, n in self.updates], inputs,
                          state.values, dict(env), order=None if self.lazy else self.nodes)
        for name, n in self.updates:
            state.set(name, values[n])
        return [values[n] for n in self.outputs]


def evaluate(graph: Graph, targets: list[int], inputs: dict[str, np.ndarray], params: dict[str, np.ndarray],
             env: dict[str, int], order: list[int] | None = None,
             overrides: dict[int, np.ndarray] | None = None) -> dict[int, np.ndarray]:
    """Values of `targets` (and of what they needed). With `order` (a topological list of all
    needed nodes) every node is computed in turn; without it, evaluation is demand-driven, which
    lets `ifelse` compute only its chosen branch. `overrides` fixes the values of some nodes
    (finite differences perturb intermediate values this way)."""
    from ..ir.scan import scan_runs
    with scan_runs():
        return _evaluate(graph, targets, inputs, params, env, order, overrides)


def _evaluate(graph, targets, inputs, params, env, order, overrides):
    values: dict[int, np.ndarray] = dict(overrides or {})
    with np.errstate(all="ignore"):
        if order is not None:
            for n in order:
                if n in values:
                    continue
                values[n] = _compute(graph, n, [values[o] for o in graph.operands(n)], inputs, params, env)
            return values
        stack = list(targets)
        while stack:
            n = stack[-1]
            if n in values:
                stack.pop()
                continue
            op = graph.op(n)
            operands = graph.operands(n)
            needed = operands
            if op.lazy:
                cond = operands[0]
                needed = [cond] if cond not in values else [cond, operands[op.choose(values[cond])]]
            missing = [o for o in needed if o not in values]
            if missing:
                stack.extend(missing)
                continue
            stack.pop()
            if op.lazy:
                chosen = operands[op.choose(values[operands[0]])]
                value = _broadcast_branch(np.asarray(values[chosen]), graph.type(n).shape, env)
                values[n] = _check(graph, n, value.astype(graph.type(n).dtype, copy=False), env)
            else:
                values[n] = _compute(graph, n, [values[o] for o in operands], inputs, params, env)
    return values


def _broadcast_branch(value: np.ndarray, shape: tuple, env: dict[str, int]) -> np.ndarray:
    """The chosen branch of an `ifelse` broadcast to the result's shape (the branches may
    differ, e.g. f64[3] and f64). A dim not known from `env` is the branch's own."""
    lead = len(shape) - value.ndim
    target = []
    for i, d in enumerate(shape):
        try:
            target.append(d.resolve(env) if isinstance(d, Sym) else d)
        except KeyError:
            target.append(value.shape[i - lead] if i >= lead else 1)
    return np.broadcast_to(value, tuple(target))


def _compute(graph: Graph, n: int, args: list, inputs, params, env) -> np.ndarray:
    op = graph.op(n)
    attrs = graph.attrs(n)
    if op is P.input_:
        return inputs[attrs["name"]]
    if op is P.param:
        return params[attrs["name"]]
    if op is P.const:
        return attrs["value"]
    if op is P.dim:
        d = attrs["dim"]
        return np.int64(d.resolve(env) if isinstance(d, Sym) else d)
    if op.lazy:  # order-driven evaluation only runs graphs without lazy ops
        raise FlowInternalError("lazy op evaluated eagerly")
    return run_op(graph, n, args, env)


def op_failed(graph: Graph, n: int, e: Exception) -> FlowRuntimeError:
    """The located error for node n's numpy implementation raising `e`; a bad index names the
    operand that holds it (the input's or value's name) and its first bad position."""
    op = graph.op(n)
    if isinstance(e, IndexOutOfRange):
        return FlowRuntimeError(f"{op.name}: {e.describe(graph.name(graph.operands(n)[e.operand]))}", graph.loc(n))
    return FlowRuntimeError(f"{op.name} failed: {e}", graph.loc(n))


def _run_impl(graph: Graph, n: int, args: list, env: dict[str, int]) -> np.ndarray:
    """Node n's numpy implementation; its result's size is checked first, and numpy's errors
    become errors located at the node."""
    op = graph.op(n)
    attrs = graph.attrs(n)
    check_value(graph, n, env)
    try:
        out = op.impl(*args, env=env, **attrs) if op.needs_env else op.impl(*args, **attrs)
    except (IndexError, ValueError, ZeroDivisionError, TypeError) as e:
        raise op_failed(graph, n, e) from None
    except MemoryError:
        raise allocation_failed(graph, n, env) from None
    return np.asarray(out)


def run_op(graph: Graph, n: int, args: list, env: dict[str, int]) -> np.ndarray:
    """Node n's numpy implementation on `args` (how this backend computes every non-leaf node,
    and the native backends' steps that have no kernel): errors located at the node, the
    value's dtype and shape checked against its type, derived dims (N-1) bound in `env`."""
    return _check(graph, n, _run_impl(graph, n, args, env), env)


def _check(graph: Graph, n: int, value: np.ndarray, env: dict[str, int]) -> np.ndarray:
    """The value must have the node's dtype and shape; symbols first seen here are bound."""
    t = graph.type(n)
    if value.dtype != t.dtype:
        raise FlowInternalError(f"{graph.op(n).name} (%{n}) produced {value.dtype}, its type says {t}", graph.loc(n))
    if value.ndim != t.ndim:
        raise FlowInternalError(f"{graph.op(n).name} (%{n}) produced shape {value.shape}, its type says {t}",
                                graph.loc(n))
    for d, actual in zip(t.shape, value.shape):
        if isinstance(d, int):
            expected = d
        elif len(d.names) == 1 and d.coeff == 1 and d.names[0] not in env:
            env[d.names[0]] = actual  # a derived dim (e.g. N-1): bound when first computed
            continue
        else:
            try:
                expected = d.resolve(env)
            except KeyError:
                continue
        if expected != actual:
            raise FlowRuntimeError(f"{graph.op(n).name} produced shape {value.shape}, but its type is {t} "
                                   f"with {', '.join(f'{k}={v}' for k, v in env.items())}", graph.loc(n))
    return value


class ReferenceBackend:
    name = "reference"

    def create_state(self, values: dict[str, np.ndarray]) -> ReferenceState:
        return ReferenceState(values)

    def compile(self, graph: Graph, outputs: list[int], updates: list[tuple[str, int]],
                plan=None) -> ReferenceExecutable:
        """`plan` (the optimizer's memory plan) is for native backends: numpy allocates."""
        return ReferenceExecutable(graph, outputs, updates)
