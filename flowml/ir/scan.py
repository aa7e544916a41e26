"""Loops: `scan` maps a body over sequences (along axis 0) carrying state; `iterate` runs a body
a fixed number of times. Both are differentiable (reverse mode is backprop through time).

The body is a sub-graph (attr `body`, a `Graph`) whose leaves are `input`s named `carry{j}`,
`seq{i}` and `free{f}`: the carried states, this step's elements of the sequences, and the
outer values the body reads (weights...). Its `outputs` are the new carries, then values the
step only emits. A scan node gives ONE of those outputs (`index`), stacked over the steps
(`history`) or at the last step; a loop with several outputs is several nodes sharing `body`.

Operands: initial carries, sequences, free values (in that order).
"""

from __future__ import annotations

import contextlib
import contextvars

import numpy as np

from ..errors import FlowTypeError
from . import lib as L
from . import ops as P
from .graph import Graph, ShapeError, at, current_loc
from .lib import Var
from .philox import RNG_PARAM
from .types import DTYPES, TensorType, is_float, resolve_dim


class Scan(P.Op):
    needs_env = True

    def __init__(self):
        super().__init__("scan", vjp=self._vjp_rule, jvp=self._jvp_rule, verb="loop over")

    def infer(self, types, attrs):
        body: Graph = attrs["body"]
        t = body.type(attrs["outputs"][attrs["index"]])
        if attrs["history"]:
            return TensorType(t.dtype, (attrs["length"],) + t.shape)
        return TensorType(t.dtype, t.shape)

    def impl(self, *arrays, body, n_carry, n_seq, outputs, index, history, length, env, truncate=None):
        # The nodes of one loop's outputs share its run within a call (see `scan_runs`).
        runs = _RUNS.get()
        key = (id(body), tuple(outputs), n_carry, n_seq, tuple(id(a) for a in arrays))
        found = runs.get(key) if runs is not None else None
        if found is None or not all(a is b for a, b in zip(found[0], arrays)):
            found = (tuple(arrays), _run(arrays, body, n_carry, n_seq, outputs, length, env))
            if runs is not None:
                runs[key] = found  # (keeps the arrays alive, so their ids stay theirs)
        histories, finals = found[1]
        return histories[index] if history else finals[index]

    # ------------------------------------------------------------ derivatives

    @staticmethod
    def _vjp_rule(g, y, *operands, body, n_carry, n_seq, outputs, index, history, length, truncate=None):
        out = index
        """Backprop through time: a reverse scan whose body is the VJP of this body."""
        def thunks():
            return _bptt(g, y, list(operands), body, n_carry, n_seq, outputs, out, history, length, truncate)
        cache: dict = {}

        def get(k):
            if "r" not in cache:
                cache["r"] = thunks()
            return cache["r"][k]
        return [(lambda k=k: get(k)) for k in range(len(operands))]

    @staticmethod
    def _jvp_rule(tangents, y, *operands, body, n_carry, n_seq, outputs, index, history, length, truncate=None):
        out = index
        return _forward_tangent(tangents, list(operands), body, n_carry, n_seq, outputs, out, history, length)


scan_op = Scan()


class RngFold(P.Op):
    """The random-stream key of one step of a loop: `__rng__` = (seed, calls) with the seed
    replaced by `philox.fold(seed, step)` (see `loop`). Integer: no derivative."""

    def __init__(self):
        super().__init__("rng_fold", jvp=lambda ts, y, key, step: None, verb="fold the step into")

    def infer(self, types, attrs):
        key, step = types
        if key.shape != (2,) or key.dtype != DTYPES["i64"] or step.shape != () or step.dtype.kind != "i":
            raise ShapeError(f"rng_fold takes an i64[2] key and an integer step, not {key} and {step}")
        return key

    def impl(self, key, step):
        from . import philox
        return np.array([philox.fold(key[0], step), key[1]], dtype=np.int64)


rng_fold = RngFold()


def _is_rng_key(graph: Graph, n: int) -> bool:
    return graph.op(n) is P.param and graph.attrs(n).get("name") == RNG_PARAM


_RUNS: contextvars.ContextVar = contextvars.ContextVar("flowml_scan_runs", default=None)


@contextlib.contextmanager
def scan_runs():
    """Within this block (one call of a compiled function), the scan nodes of one loop run it
    once: a loop with two carries is two nodes, and both read this run's results."""
    if _RUNS.get() is not None:
        yield
        return
    token = _RUNS.set({})
    try:
        yield
    finally:
        _RUNS.reset(token)


def _run(arrays, body, n_carry, n_seq, outputs, length, env):
    """Run a loop: (the stacked history, the last value) of every output."""
    from ..backends.reference import _compute, evaluate
    carries = list(arrays[:n_carry])
    seqs = arrays[n_carry:n_carry + n_seq]
    frees = arrays[n_carry + n_seq:]
    steps = int(resolve_dim(length, env))
    for s in seqs:
        if s.shape[0] != steps:
            raise ValueError(f"a sequence has length {s.shape[0]}, the loop runs {steps} steps")
    leaves = _leaf_names(body)
    inputs = {leaves[("free", f)]: v for f, v in enumerate(frees)}
    targets = list(outputs)
    order = sorted(body.ancestors(targets))
    lazy = any(body.op(n).lazy for n in order)
    # (the body's operand lists, read once: networkx lookups per node and step are slow)
    plan = None if lazy else [(n, body.operands(n)) for n in order]
    stacked: list[list] = [[] for _ in outputs]
    last = [None] * len(outputs)
    for t in range(steps):
        for j, c in enumerate(carries):
            inputs[leaves[("carry", j)]] = c
        for i, s in enumerate(seqs):
            inputs[leaves[("seq", i)]] = s[t]
        if ("step", 0) in leaves:  # the body draws random numbers: its key depends on t
            inputs[leaves[("step", 0)]] = np.array(t, dtype=np.int64)
        if lazy:
            values = evaluate(body, targets, inputs, {}, dict(env))
        else:
            values, step_env = {}, dict(env)
            with np.errstate(all="ignore"):
                for n, ops in plan:
                    values[n] = _compute(body, n, [values[o] for o in ops], inputs, {}, step_env)
        for k, o in enumerate(outputs):
            last[k] = np.asarray(values[o])
            stacked[k].append(last[k])
        carries = [values[outputs[j]] for j in range(n_carry)]
    histories, finals = [], []
    for k, o in enumerate(outputs):
        t_out = body.type(o)
        shape = tuple(resolve_dim(d, env) for d in t_out.shape)
        histories.append(np.stack(stacked[k]) if stacked[k] else np.zeros((0,) + shape, dtype=t_out.dtype))
        if last[k] is not None:
            finals.append(last[k])
        else:  # no step: a carry is its initial value, an emitted value is 0
            finals.append(np.asarray(arrays[k]) if k < n_carry else np.zeros(shape, dtype=t_out.dtype))
    return histories, finals


def _leaf_names(body: Graph) -> dict:
    names = {}
    for n in body.nodes():
        if body.op(n) is P.input_:
            name = body.attrs(n)["name"]
            kind = name.rstrip("0123456789")
            names[(kind, int(name[len(kind):]))] = name
    return names


def _leaf(body: Graph, kind: str, k: int) -> int:
    for n in body.nodes():
        if body.op(n) is P.input_ and body.attrs(n)["name"] == f"{kind}{k}":
            return n
    raise KeyError(f"{kind}{k}")


# ----------------------------------------------------------------- building


def loop(graph: Graph, step, inits: list[Var], seqs: list[Var], length, loc=None, rng_steps=True):
    """Trace `step(*carries, *seq_elements) -> new carries (+ emitted values)` into a body and
    return (body, n_carry, outputs, frees); see `scan_nodes` for the nodes.

    Random numbers: a node traced here that reads the model's random-stream key (`__rng__`: a
    random op, or a loop whose body draws) belongs to the body even when it does not depend on
    the carries, and with `rng_steps` it reads the key folded with the step index (leaf `step0`,
    set by `Scan.impl`), so each step draws different numbers. The loops derived from a body
    (BPTT, forward mode) copy its fold and give `step0` the forward step index themselves."""
    body = Graph()
    first_new = graph._next_id  # nodes traced by `step` have ids from here on
    placeholders = []
    with at(loc):
        for j, c in enumerate(inits):
            placeholders.append(L.input(graph, f"carry{j}", c.type.with_shape(c.type.shape)))
        for i, s in enumerate(seqs):
            if s.type.ndim == 0:
                raise FlowTypeError(f"scan over a scalar: a sequence needs an axis 0 to loop along, not {s.type}", loc)
            placeholders.append(L.input(graph, f"seq{i}", TensorType(s.dtype, s.type.shape[1:])))
    # the placeholders live in the outer graph while the step is traced, then everything between
    # them and the step's results is moved into `body`
    results = step(*placeholders)
    results = list(results) if isinstance(results, tuple) else [results]
    results = [L.as_var(r, graph) for r in results]
    if len(results) < len(inits):
        raise FlowTypeError(f"the loop body returns {len(results)} value(s) but carries {len(inits)} state(s)", loc)
    for j, (c, r) in enumerate(zip(inits, results)):
        if r.type.shape != c.type.shape or r.dtype != c.dtype:
            raise FlowTypeError(f"carried state {j} has type {c.type} before a step and {r.type} after it: "
                                "a carried state must keep its type (cast or reshape it)", graph.loc(r.id) or loc)
    ph_ids = [p.id for p in placeholders]
    needed = graph.ancestors([r.id for r in results])
    keys = [n for n in needed if _is_rng_key(graph, n)]
    drawing = [u for k in keys for u in graph.users(k) if u >= first_new and u in needed]
    inside = graph.descendants(ph_ids + drawing) & needed
    mapping: dict[int, int] = {}
    frees: list[int] = []
    for p, name in zip(ph_ids, [graph.attrs(p)["name"] for p in ph_ids]):
        mapping[p] = body.add(P.input_, [], {"name": name}, loc=graph.loc(p), name=name, type=graph.type(p))
    step_key: dict[int, int] = {}

    def free(o: int) -> int:
        if rng_steps and _is_rng_key(graph, o):
            if o not in step_key:
                key = _free(o)
                t = body.add(P.input_, [], {"name": "step0"}, loc=loc, name="step",
                             type=TensorType(DTYPES["i64"], ()))
                step_key[o] = body.add(rng_fold, [key, t], {}, loc=loc, name=RNG_PARAM)
            return step_key[o]
        return _free(o)

    def _free(o: int) -> int:
        if o not in mapping:
            k = len(frees)
            frees.append(o)
            mapping[o] = body.add(P.input_, [], {"name": f"free{k}"}, loc=graph.loc(o), name=graph.name(o),
                                  type=graph.type(o))
        return mapping[o]

    for n in sorted(inside):
        if n in mapping:
            continue
        ops = [mapping[o] if o in mapping and o not in step_key else free(o) for o in graph.operands(n)]
        d = graph.data(n)
        mapping[n] = body.add(d["op"], ops, d["attrs"], loc=d["loc"], name=d["name"], type=d["type"])
    outputs = tuple(mapping[r.id] if r.id in mapping and r.id not in step_key else free(r.id) for r in results)
    return body, len(inits), outputs, [Var(graph, f) for f in frees]


def scan_node(inits, seqs, frees, body, outputs, out, history, length, truncate=None) -> Var:
    operands = list(inits) + list(seqs) + list(frees)
    return L.apply(scan_op, operands, body=body, n_carry=len(inits), n_seq=len(seqs), outputs=tuple(outputs),
                   index=out, history=history, length=length,
                   **({"truncate": int(truncate)} if truncate is not None else {}))


def scan(step, inits, seqs, history=True, loc=None, truncate=None):
    """All outputs of a loop over `seqs` (or `length` steps): a list of Vars."""
    graph = (inits or seqs)[0].graph
    length = seqs[0].type.shape[0] if seqs else None
    for s in seqs[1:]:
        if s.type.shape[0] != length:
            raise FlowTypeError(f"scan's sequences have lengths {length} and {s.type.shape[0]}: they must be equal",
                                loc)
    body, n_carry, outputs, frees = loop(graph, step, inits, seqs, length, loc)
    with at(loc):
        return [scan_node(inits, seqs, frees, body, outputs, k, history, length, truncate)
                for k in range(len(outputs))]


def iterate(step, inits, n, loc=None):
    """The carries after `n` steps (n: an int or a dim)."""
    graph = inits[0].graph
    body, n_carry, outputs, frees = loop(graph, step, inits, [], n, loc)
    with at(loc):
        return [scan_node(inits, [], frees, body, outputs, k, False, n) for k in range(n_carry)]


# ----------------------------------------------------------------- reverse mode


def _copy_body(body: Graph, into: Graph, leaf_values: dict[str, Var]) -> dict[int, Var]:
    """Copy `body` into graph `into`, its leaves replaced by `leaf_values` (by name)."""
    mapping: dict[int, int] = {}
    for n in body.nodes():
        d = body.data(n)
        if d["op"] is P.input_:
            mapping[n] = leaf_values[d["attrs"]["name"]].id
            continue
        mapping[n] = into.add(d["op"], [mapping[o] for o in body.operands(n)], d["attrs"], loc=d["loc"],
                              name=d["name"], type=d["type"])
    return {n: Var(into, m) for n, m in mapping.items()}


def _bptt(g, y, operands, body, n_carry, n_seq, outputs, out, history, length, truncate=None):
    """Cotangents of all operands of scan node `y` given the cotangent g of its output. With
    `truncate` k (truncated backprop through time, Theano's truncate_gradient), only the last k
    steps are differentiated: earlier steps get no cotangent."""
    from ..passes.grad import vjp
    graph = y.graph
    inits = operands[:n_carry]
    seqs = operands[n_carry:n_carry + n_seq]
    frees = operands[n_carry + n_seq:]
    # the carries before each step: the history of an extra emitted copy of each carry
    prev_body, prev_outputs = _with_prev_emits(body, outputs, n_carry)
    prevs = [scan_node(inits, seqs, frees, prev_body, prev_outputs, len(outputs) + j, True, length)
             for j in range(n_carry)]
    float_carry = [is_float(c.dtype) for c in inits]
    drawing = ("step", 0) in _leaf_names(body)  # the body draws random numbers (keyed by the step)

    def rev(v):
        return L.getitem(v, slice(None, None, -1))

    # the reverse step: carries = cotangents of the carries and accumulated cotangents of the
    # frees; sequences = the reversed (g, previous carries, inputs)
    def step(*args):
        k = 0
        gc = list(args[k:k + n_carry]); k += n_carry
        gacc = list(args[k:k + len(frees)]); k += len(frees)
        g_t = args[k] if history else None; k += 1 if history else 0
        prev = list(args[k:k + n_carry]); k += n_carry
        xs = list(args[k:k + n_seq]); k += n_seq
        b = prev[0].graph if prev else (xs[0].graph if xs else graph)
        leaves = {f"carry{j}": prev[j] for j in range(n_carry)}
        leaves.update({f"seq{i}": xs[i] for i in range(n_seq)})
        leaves.update({f"free{f}": frees[f] for f in range(len(frees))})
        if drawing:
            leaves["step0"] = args[k]  # the forward step's index: it draws the same numbers
            k += 1
        within = args[k] < truncate if truncate is not None else None  # reverse step index < k
        vals = _copy_body(body, b, leaves)
        ys, seeds = [], []
        for j in range(n_carry):
            if float_carry[j]:
                ys.append(vals[outputs[j]])
                seeds.append(gc[j] + g_t if (history and j == out) else gc[j])
        if history and out >= n_carry:
            ys.append(vals[outputs[out]])
            seeds.append(g_t)
        wrt = [prev[j] for j in range(n_carry) if float_carry[j]] + \
              [xs[i] for i in range(n_seq) if is_float(xs[i].dtype)] + \
              [frees[f] for f in range(len(frees)) if is_float(frees[f].dtype)]
        grads = vjp(ys, wrt, seeds, disconnected="zero", what="scan") if ys and wrt else []
        it = iter(grads)
        new_gc = [next(it) if float_carry[j] else gc[j] for j in range(n_carry)]
        d_x = [next(it) if is_float(xs[i].dtype) else L.zeros_like(xs[i]) for i in range(n_seq)]
        d_free = [next(it) if is_float(frees[f].dtype) else None for f in range(len(frees))]
        if within is not None:  # beyond the last `truncate` steps: nothing flows
            new_gc = [L.where(within, v, 0) if float_carry[j] else v for j, v in enumerate(new_gc)]
            d_x = [L.where(within, v, 0) for v in d_x]
            d_free = [L.where(within, v, 0) if v is not None else None for v in d_free]
        new_acc = [gacc[f] + d_free[f] if d_free[f] is not None else gacc[f] for f in range(len(frees))]
        return tuple(new_gc + new_acc + d_x)

    zero_gc = [L.zeros_like(c) for c in inits]
    if not history:
        zero_gc[out] = zero_gc[out] + g if out < n_carry else zero_gc[out]
    init_carries = zero_gc + [L.zeros_like(f) for f in frees]
    rseqs = ([rev(g)] if history else []) + [rev(p) for p in prevs] + [rev(s) for s in seqs]
    if drawing:
        rseqs.append(rev(L.arange(graph, length)))
    if truncate is not None:
        rseqs.append(L.arange(graph, length))  # the reverse step's index (0 = the last step)
    if not history and out >= n_carry:
        # the last step's emitted value: seed it at the first reverse step only
        raise FlowTypeError("the derivative of an emitted (non-carried) value at the last step is not supported; "
                            "stack it (history) and take [-1]", current_loc())
    rstep_outs = _scan_all(step, init_carries, rseqs, length, rng_steps=False)
    n_gc = n_carry
    results = []
    for j in range(n_carry):
        results.append(rstep_outs[j][1])  # final
    for i in range(n_seq):
        results.append(rev(rstep_outs[n_gc + len(frees) + i][0]))  # history, back in time order
    for f in range(len(frees)):
        results.append(rstep_outs[n_gc + f][1])
    return results


def _scan_all(step, inits, seqs, length, rng_steps=True):
    """(history, final) of every output of a loop."""
    graph = (inits or seqs)[0].graph
    body, n_carry, outputs, frees = loop(graph, step, inits, seqs, length, rng_steps=rng_steps)
    out = []
    for k in range(len(outputs)):
        hist = scan_node(inits, seqs, frees, body, outputs, k, True, length) if k >= n_carry else None
        final = scan_node(inits, seqs, frees, body, outputs, k, False, length) if k < n_carry else None
        out.append((hist, final))
    return out


def _with_prev_emits(body: Graph, outputs, n_carry):
    """The body with each carry's value before the step added as an emitted output."""
    extra = tuple(_leaf(body, "carry", j) for j in range(n_carry))
    return body, tuple(outputs) + extra


# ----------------------------------------------------------------- forward mode


def _forward_tangent(tangents, operands, body, n_carry, n_seq, outputs, out, history, length):
    """The tangent of a scan's output: a scan carrying (states, their tangents)."""
    from ..passes.rop import rop
    inits = operands[:n_carry]
    seqs = operands[n_carry:n_carry + n_seq]
    frees = operands[n_carry + n_seq:]
    t_init = [t if t is not None else L.zeros_like(c) for t, c in zip(tangents[:n_carry], inits)]
    t_seq = [t if t is not None else L.zeros_like(s) for t, s in zip(tangents[n_carry:n_carry + n_seq], seqs)]
    t_free = [t if t is not None else L.zeros_like(f) for t, f in zip(tangents[n_carry + n_seq:], frees)]
    def step(*args):
        cs = list(args[:n_carry])
        tcs = list(args[n_carry:2 * n_carry])
        xs = list(args[2 * n_carry:2 * n_carry + n_seq])
        txs = list(args[2 * n_carry + n_seq:2 * n_carry + 2 * n_seq])
        b = (cs + xs)[0].graph
        leaves = {f"carry{j}": cs[j] for j in range(n_carry)}
        leaves.update({f"seq{i}": xs[i] for i in range(n_seq)})
        leaves.update({f"free{f}": frees[f] for f in range(len(frees))})
        if drawing:
            leaves["step0"] = args[-1]  # this step's index: it draws the same numbers as the loop
        vals = _copy_body(body, b, leaves)
        ys = [vals[o] for o in outputs]
        pairs = [(v, t) for v, t in zip(cs + xs + frees, tcs + txs + t_free) if is_float(v.dtype)]
        # an integer output (a step counter, the random-stream key's slot in a reverse loop) has a
        # zero tangent of its own type: only the float outputs go through rop
        ts = [L.zeros_like(v) for v in ys]
        floats = [k for k, v in enumerate(ys) if is_float(v.dtype)]
        if pairs and floats:
            for k, t in zip(floats, rop([ys[k] for k in floats], [p[0] for p in pairs], [p[1] for p in pairs],
                                        disconnected="zero")):
                ts[k] = t
        return tuple(ys[:n_carry] + list(ts[:n_carry]) + ys[n_carry:] + list(ts[n_carry:]))

    graph = inits[0].graph if inits else seqs[0].graph
    drawing = ("step", 0) in _leaf_names(body)
    steps = [L.arange(graph, length)] if drawing else []
    body2, n_c2, outputs2, frees2 = loop(graph, step, list(inits) + t_init, list(seqs) + t_seq + steps, length,
                                         rng_steps=False)
    # the index of `out`'s tangent among the new loop's outputs (carries, their tangents,
    # emitted values, their tangents)
    n_emit = len(outputs) - n_carry
    k = n_carry + out if out < n_carry else 2 * n_carry + n_emit + (out - n_carry)
    return scan_node(list(inits) + t_init, list(seqs) + t_seq + steps, frees2, body2, outputs2, k, history, length)
