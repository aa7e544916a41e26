"""The embedding API: load .flow models, or build graphs in Python the Theano way.

    model = flowml.load("examples/logreg.flow")
    prediction, xent = model.train(x=x, y=y)

    x = flowml.tensor("x", "f64[N, 3]")
    w = flowml.param("w", np.zeros(3))
    cost = flowml.mean((x @ w - 1) ** 2)
    (gw,) = flowml.grad(cost, [w])
    step = flowml.function([x], cost, updates={w: w - 0.1 * gw})
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from .backends import get_backend
from .errors import FlowError, FlowNameError, FlowTypeError
from .ir import lib as L
from .ir.graph import Graph, current_loc
from .ir.lib import Var
from .ir.types import TensorType, dtype_of, sym
from .passes.grad import grad as _grad
from .program import FnDecl, InputDecl, Model, ParamDecl, Program, UpdateDecl, coerce_array
from .state import SharedState


def loads(source: str | bytes, backend: str | None = None, seed: int | None = None,
          file: str = "<string>", check: bool = False, opt_level: int = 1, exclude=None, ops=None) -> Model:
    """Parse, build and compile a .flow program given as text. `check=True`: check mode, every
    call is also run on the reference backend and compared node by node. `opt_level=0`: no
    optimizer (the graph as built). `exclude`: names of optimizer phases and rules to switch
    off (`["stabilize", "fold_constants"]`; docs/optimizer.md). `ops`: the host's wrapped ops
    the program may call, by the name it calls them (`{"solve": flowml.op(...)}`); a program
    calls no other code."""
    from . import modelcache
    backend = get_backend(backend) if not hasattr(backend, "compile") else backend
    key = None
    if ops is None and not check:  # (a user's Python function is not data: not cached)
        data = source.encode() if isinstance(source, str) else bytes(source)
        key = modelcache.model_key(data, file, opt_level, exclude, backend)
        found = modelcache.lookup(key)
        if found is not None:
            program, compiled = found
            return Model(program, backend=backend, seed=seed, opt_level=opt_level, exclude=exclude,
                         compiled=compiled)
    from .lang.build import build
    from .lang.parser import parse
    model = Model(build(parse(source, file), ops), backend=backend, seed=seed, check=check, opt_level=opt_level,
                  exclude=exclude)
    if key is not None:
        modelcache.store(key, model)
    return model


def load(path: str | os.PathLike, backend: str | None = None, seed: int | None = None,
         check: bool = False, opt_level: int = 1, exclude=None, ops=None) -> Model:
    """Load a .flow file (see `loads`)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise FlowError(f"{path}: cannot read the file ({e.strerror})") from None
    return loads(data, backend=backend, seed=seed, file=path, check=check, opt_level=opt_level, exclude=exclude,
                 ops=ops)


def parse_program(source: str | bytes, file: str = "<string>", ops=None) -> Program:
    """Parse and build without compiling (what `flowml check` and `compile` use)."""
    from .lang.build import build
    from .lang.parser import parse
    return build(parse(source, file), ops)


def op(fn, out_type, vjp=None, jvp=None, name: str | None = None):
    """`fn`, a numpy/scipy function of arrays, as an op (Theano's `as_op`, JAX's
    `pure_callback`): the result, called on Vars, builds a node that runs `fn` when the model
    runs, on every backend. `out_type`: the result's type ("f64[N]", a TensorType) or a
    function of the operands' types (and the call's keyword arguments) giving it. `vjp(g, out,
    *xs)`: the cotangents of the operands (a list, or one Var for one operand), `jvp(tangents,
    out, *xs)`: the result's tangent, both built with flowml's functions or wrapped ops;
    without one, derivatives through the op are an error naming it. `fn` must be pure (see
    docs/api.md, "Wrapping functions as ops")."""
    from .ir.ops.wrapped import WrappedOp
    if not callable(fn):
        raise FlowTypeError(f"flowml.op wraps a function, not {fn!r:.40}", current_loc())
    for what, f in (("vjp", vjp), ("jvp", jvp)):
        if f is not None and not callable(f):
            raise FlowTypeError(f"flowml.op: {what} must be a function, not {f!r:.40}", current_loc())
    if name is None:
        name = getattr(fn, "__name__", None)
        if not isinstance(name, str) or not name.isidentifier():
            raise FlowTypeError(f"flowml.op: {fn!r:.40} has no usable name; pass name=", current_loc())
    elif not isinstance(name, str) or not name:
        raise FlowTypeError(f"flowml.op: name must be a non-empty string, not {name!r}", current_loc())
    if callable(out_type) and not isinstance(out_type, TensorType):
        def rule(types, kwargs):
            return _parse_type(out_type(*types, **kwargs))
    else:
        fixed = _parse_type(out_type)

        def rule(types, kwargs):
            return fixed
    return WrappedOp(fn, rule, name, vjp=vjp, jvp=jvp)


# ----------------------------------------------------------------- the Python builder


class _Session:
    """The default graph of the Python builder and its params' values, shared by every function
    compiled from it on any backend (as Theano's shared variables are)."""

    def __init__(self) -> None:
        self.program = Program(Graph(), file="<python>")
        self.state = SharedState()


_session = _Session()


def reset_default_graph() -> None:
    """Start a new default graph (forgetting the old one's values and params)."""
    global _session
    _session = _Session()


def default_graph() -> Graph:
    return _session.program.graph


def _parse_type(type_) -> TensorType:
    if isinstance(type_, TensorType):
        return type_
    if not isinstance(type_, str):
        raise FlowTypeError(f"a type is written as a string like \"f64[N, 784]\", not {type_!r}", current_loc())
    from .lang.parser import parse_type
    t = parse_type(type_)
    return TensorType(dtype_of(t.dtype), tuple(sym(d) if isinstance(d, str) else d for d in t.dims))


def tensor(name: str, type: str | TensorType) -> Var:
    """A symbolic input: `tensor("x", "f64[N, 784]")`."""
    prog = _session.program
    if name in prog.inputs or name in prog.params:
        raise FlowNameError(f"'{name}' is already defined", current_loc())
    var = L.input(prog.graph, name, _parse_type(type))
    prog.inputs[name] = InputDecl(name, var, prog.graph.loc(var.id))
    return var


def param(name: str, value=None, type: str | TensorType | None = None, init=None) -> Var:
    """Trained state (Theano's shared variable): `param("w", np.zeros((784, 10)))`, or a type
    and an initializer `init(rng) -> array`."""
    prog = _session.program
    if name in prog.inputs or name in prog.params:
        raise FlowNameError(f"'{name}' is already defined", current_loc())
    if value is not None:
        arr = np.asarray(value)
        if arr.dtype.kind in "iu":
            arr = arr.astype(np.int64)
        try:
            t = _parse_type(type) if type is not None else TensorType(dtype_of(arr.dtype), arr.shape)
            initial = np.array(arr, dtype=t.dtype)
        except (TypeError, ValueError):
            raise FlowTypeError(f"param '{name}': cannot make a param of {arr.dtype} values; "
                                "flowml has bool, i32, i64, f32 and f64", current_loc()) from None
        init = lambda rng: initial  # noqa: E731
    elif type is None or init is None:
        raise FlowTypeError(f"param '{name}' needs a value, or a type and an init function", current_loc())
    else:
        t = _parse_type(type)
        init = _typed_init(name, init, t, current_loc())
    if t.symbols():
        raise FlowTypeError(f"a param needs a fixed shape, not {t}", current_loc())
    var = L.param(prog.graph, name, t)
    prog.params[name] = ParamDecl(name, var, prog.graph.loc(var.id), init)
    return var


def _typed_init(name: str, init, t: TensorType, loc):
    """`init`'s draws (f64, as numpy's generators give them) in the param's dtype, as a .flow
    initializer's are."""
    def draw(rng):
        value = init(rng)
        try:
            return np.asarray(value, dtype=t.dtype)
        except (TypeError, ValueError):
            raise FlowTypeError(f"param '{name}': init returned {type(value).__name__} {value!r:.40}, "
                                f"not an array for {t}", loc) from None
    return draw


shared = param  # Theano's name


def grad(cost: Var, wrt: Var | Sequence[Var], disconnected: str = "error"):
    """d cost / d wrt: a Var for one Var, a list for a list."""
    if isinstance(wrt, Var):
        return _grad(cost, wrt, disconnected=disconnected)[0]
    return _grad(cost, *wrt, disconnected=disconnected)


def function(inputs: Sequence[Var], outputs=None, updates=None, backend: str | None = None,
             name: str = "f", check: bool = False, exclude=None):
    """Compile a function of the default graph (Theano's `theano.function`). `outputs` is a Var
    (the call returns an array) or a list (a tuple); `updates` maps params to new values.
    `check=True`: check mode; `exclude`: optimizer phases and rules to switch off (see
    `flowml.loads`)."""
    prog = _session.program
    backend_obj = get_backend(backend)
    single = isinstance(outputs, Var)
    outs = list(outputs) if isinstance(outputs, (list, tuple)) else ([] if outputs is None else [outputs])
    for v in list(inputs) + outs:
        if not isinstance(v, Var) or v.graph is not prog.graph:
            raise FlowTypeError("function() takes Vars of the default graph", current_loc())
    for v in inputs:
        if v.op.name != "input":
            raise FlowTypeError(f"function() inputs must be tensors made with flowml.tensor, not {v}", current_loc())
    pairs = list(updates.items()) if isinstance(updates, dict) else list(updates or [])
    upd = []
    for p, value in pairs:
        if not isinstance(p, Var) or p.op.name != "param":
            raise FlowTypeError(f"only params can be updated, not {p}", current_loc())
        value = L.as_var(value, prog.graph)
        if value.type.weak:
            value = L.cast(value, p.dtype)
        upd.append(UpdateDecl(p.name, value, current_loc()))
    fn = FnDecl(name, [v.name for v in inputs],
                [(v.name or f"out{i}", v) for i, v in enumerate(outs)], upd, current_loc())
    sub = Program(prog.graph, prog.file, dict(prog.inputs), dict(prog.params), {name: fn}, prog.seed)
    model = Model(sub, backend=backend_obj, state=_session.state, check=check, exclude=exclude)
    f = model.functions[name]
    f.single_output = True if single else False
    return f


def _default_param(p) -> ParamDecl:
    """The declaration of `p`, a param of the default graph (not of one reset since)."""
    if not isinstance(p, Var) or p.op.name != "param":
        raise FlowTypeError(f"{p!r} is not a param", current_loc())
    decl = _session.program.params.get(p.name)
    if decl is None or p.graph is not _session.program.graph:
        raise FlowNameError(f"'{p.name}' is not a param of the default graph (it was made before "
                            "reset_default_graph())", current_loc())
    return decl


def get_value(p: Var) -> np.ndarray:
    """The current value (a copy) of a param of the default graph, whichever backend last
    changed it."""
    decl = _default_param(p)
    _ensure_initialized(decl)
    return _session.state.get(p.name)


def set_value(p: Var, value) -> None:
    """Set a param of the default graph: every function compiled from it, on any backend, sees
    the new value."""
    decl = _default_param(p)
    value = coerce_array(value, decl.var.type, f"param '{p.name}'", decl.loc, {})
    _host_state().set(p.name, value, _HOST)


# Values set or read before any function ran live in a numpy state (the reference backend's);
# a function's backend copies them over when it first needs them.
_HOST = "reference"


def _host_state():
    _session.state.state(get_backend(_HOST))
    return _session.state


def _ensure_initialized(decl: ParamDecl) -> None:
    from .program import initial_value
    if not _session.state.has(decl.name):
        _host_state().set(decl.name, initial_value(decl, _session.program.seed), _HOST)


# Constructors build in the default graph (the library versions take a graph first).
def zeros(shape, dtype="f64") -> Var:
    return L.zeros(default_graph(), shape, dtype)


def ones(shape, dtype="f64") -> Var:
    return L.ones(default_graph(), shape, dtype)


def full(shape, value, dtype=None) -> Var:
    return L.full(default_graph(), shape, value, dtype)


def arange(start, stop=None, step=1) -> Var:
    return L.arange(default_graph(), start, stop, step)


def eye(N, M=None, k=0, dtype="f64") -> Var:
    return L.eye(default_graph(), N, M, k, dtype)


def linspace(start, stop, num=50, endpoint=True, dtype=None) -> Var:
    return L.linspace(default_graph(), start, stop, num, endpoint, dtype)


# Derivatives beyond grad (graph → graph, like grad): see flowml.passes.rop.
from .passes.rop import hessian, hessian_vector, jacobian, lop, rop  # noqa: E402,F401


# Random numbers of the default graph (Theano's RandomStreams): the streams' key is the hidden
# param __rng__, advanced once per call of each function that draws (see flowml/program.py).


def uniform(low=0.0, high=1.0, shape=(), dtype="f64") -> Var:
    from .program import rng_key
    return L.uniform(rng_key(_session.program), low, high, shape, dtype)


def normal(mean=0.0, std=1.0, shape=(), dtype="f64") -> Var:
    from .program import rng_key
    return L.normal(rng_key(_session.program), mean, std, shape, dtype)


def bernoulli(p, shape=None, dtype=None) -> Var:
    from .program import rng_key
    return L.bernoulli(rng_key(_session.program), p, shape, dtype)


def randint(low, high, shape=()) -> Var:
    from .program import rng_key
    return L.randint(rng_key(_session.program), low, high, shape)


# Collectives across the ranks of a data-parallel run (identities in one process): see
# flowml/ir/ops/collective.py and docs/distributed.md.
from .ir.ops.collective import allgather, allreduce, broadcast  # noqa: E402,F401


def rank() -> Var:
    """This process's rank in the default graph (0 without MPI)."""
    from .ir.ops.collective import rank as _rank
    return _rank(default_graph())


def world_size() -> Var:
    """The number of ranks in the default graph (1 without MPI)."""
    from .ir.ops.collective import world_size as _world_size
    return _world_size(default_graph())
