"""Check mode (Theano's DebugMode): run every call on the model's backend *and* on the reference
backend, and compare them node by node.

    model = flowml.load("examples/logreg.flow", backend="llvm", check=True)
    model.train(x, y)      # FlowRuntimeError at the first node whose values differ

Both run the same optimized graph: the backend on the call's inputs and params, the reference
(`flowml.backends.reference.evaluate`) on the same inputs and on a copy of the params taken
before the call. A backend whose executable accepts `record=` (the LLVM backend) hands back a
copy of every node's value, and every computed node is compared in topological order (for
other backends, and for graphs with a lazy `if`, which the LLVM backend runs on the reference
evaluator, there are no such copies). Then the outputs as the call returns them and the params as
it leaves them are compared too (a buffer or a param's array overwritten after its node ran
shows only there). The first node that differs is reported
with its source location and its IR line (as `flowml compile --emit ir` numbers it), the first
element that differs, and how many do. After a failed check the params are restored to their
values before the call.

Tolerances (numpy's `isclose`, NaN equal to NaN, infinities exact): float64 rtol 1e-5 /
atol 1e-8, float32 rtol 1e-3 / atol 1e-5 (Theano's DebugMode values); integers and bools exact.
"""

from __future__ import annotations

import inspect

import numpy as np

from .errors import FlowError, FlowRuntimeError

TOLERANCES = {np.dtype(np.float64): (1e-5, 1e-8), np.dtype(np.float32): (1e-3, 1e-5)}


def _accepts_record(executable) -> bool:
    try:
        return "record" in inspect.signature(executable.__call__).parameters
    except (TypeError, ValueError):
        return False


def mismatch(actual, expected, name: str = "backend") -> str | None:
    """Why `actual` (the value backend `name` computed) is not `expected` (the reference's), or
    None when they agree within the tolerances."""
    a, e = np.asarray(actual), np.asarray(expected)
    if a.shape != e.shape:
        return f"{name} gives shape {a.shape}, the reference {e.shape}"
    if a.dtype != e.dtype:
        return f"{name} gives dtype {a.dtype}, the reference {e.dtype}"
    if a.size == 0:
        return None
    if a.dtype.kind == "f":
        rtol, atol = TOLERANCES.get(a.dtype, TOLERANCES[np.dtype(np.float32)])
        ok = np.isclose(a, e, rtol=rtol, atol=atol, equal_nan=True)
        tol = f" beyond rtol={rtol:g}, atol={atol:g}"
    else:
        ok = a == e
        tol = ""
    if ok.all():
        return None
    bad = ~ok
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    at = f"at index {first}: " if a.ndim else ""
    count = int(bad.sum())
    return (f"{at}{name} gives {str(a[first])}, the reference {str(e[first])} "
            f"({count} of {a.size} element{'s' if a.size > 1 else ''} differ{'s' if count == 1 else ''}{tol})")


def checked_call(function, arrays: dict, env: dict) -> list:
    """Call `function` (a `flowml.program.Function`) on its backend and on the reference, compare,
    and return the backend's outputs."""
    from .backends.reference import evaluate
    from .ir.dump import dump_nodes, node_line

    model = function.model
    state = model._state
    executable = function._executable
    graph, outputs, updates = function.compiled.graph, function.compiled.outputs, function.compiled.updates
    before = {k: np.array(state.get(k), copy=True) for k in model.program.params if state.has(k)}
    record: dict[int, np.ndarray] | None = {} if _accepts_record(executable) else None
    if record is not None:
        outs = executable(arrays, state, dict(env), record=record)
    else:
        outs = executable(arrays, state, dict(env))
    roots = list(outputs) + [n for _, n in updates]
    nodes = graph.topo(graph.ancestors(roots))
    lazy = any(graph.op(n).lazy for n in nodes)
    try:
        try:
            expected = evaluate(graph, roots, arrays, before, dict(env),
                                order=None if lazy else sorted(nodes))
        except FlowError as e:
            e.notes.append(f"check mode: the reference backend failed where the {model.backend.name} "
                           "backend did not")
            raise
        # what the backend computed: every node it recorded, else its outputs and updated params
        got: dict[int, np.ndarray] = {}
        if record:
            got.update(record)
        else:
            got.update(zip(outputs, outs))
            for name, n in updates:
                got.setdefault(n, state.get(name))
        _, ids = dump_nodes(graph, roots)
        fn = function.name
        for n in nodes:
            if graph.op(n).leaf or n not in got or n not in expected:
                continue
            why = mismatch(got[n], expected[n], model.backend.name)
            if why is not None:
                raise FlowRuntimeError(
                    f"check mode: fn {fn}: {ids[n]} ({graph.op(n).name}) differs from the reference: {why}",
                    graph.loc(n),
                    notes=[f"{node_line(graph, n, ids)}",
                           f"(node numbers as in `flowml compile --emit ir --fn {fn}`)"])
        # what the call hands back and leaves in the params (a buffer or a param array that a
        # later step overwrote would differ here, not above)
        finals = [(f"output '{name}'", n, value) for (name, _), n, value in zip(function.decl.outputs, outputs, outs)]
        finals += [(f"param '{name}' after its update", n, state.get(name)) for name, n in updates]
        for what, n, value in finals:
            why = mismatch(value, expected[n], model.backend.name)
            if why is not None:
                raise FlowRuntimeError(
                    f"check mode: fn {fn}: {what} ({ids[n]}) differs from the reference: {why}", graph.loc(n),
                    notes=[f"{node_line(graph, n, ids)}",
                           f"(node numbers as in `flowml compile --emit ir --fn {fn}`)"])
    except FlowError:
        for name, value in before.items():  # leave the params as they were before the call
            state.set(name, value)
        raise
    return outs
