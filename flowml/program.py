"""A program (inputs, params and entry functions over one graph) and the model that runs it.

The language builder and the Python builder API both produce a `Program`; `Model` compiles its
functions with a backend, owns the params' state, and checks every call at the boundary: no
array reaches a backend without its dtype and shape checked against the declaration.
"""

from __future__ import annotations

import os
import time
import types
import weakref
import zlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .backends import get_backend
from .errors import (FlowCallError, FlowError, FlowNameError, FlowRuntimeError, FlowTypeError, Loc,
                     did_you_mean)
from .ir.graph import Graph
from .ir.indices import first_true
from .ir.lib import Var
from .ir.philox import RNG_PARAM
from .ir.types import Sym, TensorType


@dataclass
class InputDecl:
    name: str
    var: Var
    loc: Loc | None


@dataclass
class ParamDecl:
    name: str
    var: Var
    loc: Loc | None
    init: Callable[[np.random.Generator], np.ndarray]  # the initial value, from a seeded generator


@dataclass
class UpdateDecl:
    param: str
    value: Var
    loc: Loc | None


@dataclass
class FnDecl:
    name: str
    inputs: list[str]
    outputs: list[tuple[str, Var]]
    updates: list[UpdateDecl] = field(default_factory=list)
    loc: Loc | None = None


@dataclass
class Derivative:
    """A derivative expression of a model (grad, rop, lop, jacobian, hessian or
    hessian_vector), kept for `flowml gradcheck`."""

    kind: str
    text: str
    loc: Loc | None
    ys: list[Var]
    xs: list[Var]
    directions: list  # rop's v / lop's u / hessian_vector's v (a Var, or a number broadcast to x)
    results: list[Var]


@dataclass
class Program:
    graph: Graph
    file: str = "<python>"
    inputs: dict[str, InputDecl] = field(default_factory=dict)
    params: dict[str, ParamDecl] = field(default_factory=dict)
    functions: dict[str, FnDecl] = field(default_factory=dict)
    seed: int = 0
    derivatives: list[Derivative] = field(default_factory=list)


class _RngStart:
    """The random streams' initial key: (the program's seed, no calls yet). (An object, not a
    lambda: a built program is pickled by the warm model cache.)"""

    def __init__(self, program: Program):
        self.program = program

    def __call__(self, rng) -> np.ndarray:
        return np.array([self.program.seed, 0], dtype=np.int64)


def rng_key(program: Program) -> Var:
    """The key of the model's random streams: the hidden param `__rng__` = (seed, calls so far),
    i64[2], created on first use. Every fn that draws random numbers also advances its call
    counter (see `add_rng_updates`), so each call draws fresh numbers; saving the params saves
    the stream's position."""
    decl = program.params.get(RNG_PARAM)
    if decl is None:
        from .ir import lib as L
        var = L.param(program.graph, RNG_PARAM, TensorType(np.dtype(np.int64), (2,)))
        decl = program.params[RNG_PARAM] = ParamDecl(RNG_PARAM, var, None, _RngStart(program))
    return decl.var


def add_rng_updates(program: Program) -> None:
    """`__rng__ <- __rng__ + [0, 1]` in every fn that draws random numbers (once)."""
    decl = program.params.get(RNG_PARAM)
    if decl is None:
        return
    from .ir import lib as L
    for fn in program.functions.values():
        if any(u.param == RNG_PARAM for u in fn.updates):
            continue
        targets = [v.id for _, v in fn.outputs] + [u.value.id for u in fn.updates]
        if decl.var.id in program.graph.ancestors(targets):
            step = L.constant(np.array([0, 1], dtype=np.int64), program.graph)
            fn.updates.append(UpdateDecl(RNG_PARAM, decl.var + step, fn.loc))


def _is_declared_symbol(name: str) -> bool:
    return name.isidentifier()


def check_function(program: Program, fn: FnDecl) -> None:
    """Static checks of an entry function: what it uses it takes, updates fit their params."""
    graph = program.graph
    targets = [v.id for _, v in fn.outputs] + [u.value.id for u in fn.updates]
    used = graph.ancestors(targets)
    takes = set(fn.inputs)
    for n in sorted(used):
        if graph.op(n).name == "input" and graph.name(n) not in takes:
            name = graph.name(n)
            decl = program.inputs[name]
            raise FlowNameError(
                f"fn {fn.name} uses input '{name}' (declared at {decl.loc}) but does not take it; "
                f"write fn {fn.name}({', '.join(fn.inputs + [name])})", fn.loc)
    bound = {n for name in fn.inputs for n in program.inputs[name].var.type.symbols()}
    for n in sorted(used):
        for s in graph.type(n).symbols() | _attr_symbols(graph.attrs(n)):
            if _is_declared_symbol(s) and s not in bound:
                raise FlowNameError(f"fn {fn.name} uses the dim {s}, but none of its inputs "
                                    f"({', '.join(fn.inputs) or 'none'}) has a dim {s}", graph.loc(n) or fn.loc)
    seen: set[str] = set()
    for u in fn.updates:
        if u.param in seen:
            raise FlowNameError(f"param '{u.param}' is updated twice in fn {fn.name}", u.loc)
        seen.add(u.param)
        ptype = program.params[u.param].var.type
        if u.value.type.shape != ptype.shape or u.value.type.dtype != ptype.dtype:
            raise FlowTypeError(f"the update of param '{u.param}' has type {u.value.type}, "
                                f"but '{u.param}' is {ptype}", u.loc)


def _attr_symbols(attrs: dict) -> set[str]:
    out: set[str] = set()
    stack = list(attrs.values())
    while stack:
        v = stack.pop()
        if isinstance(v, Sym):
            out.update(v.names)
        elif isinstance(v, (tuple, list)):
            stack.extend(v)
    return out


def param_rng(seed: int, name: str) -> np.random.Generator:
    """Each param draws from its own stream, so adding a param leaves the others unchanged."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def initial_value(decl: ParamDecl, seed: int) -> np.ndarray:
    """The param's initial value, drawn from its stream; a param too big for the machine is an
    error at its declaration (not numpy's MemoryError)."""
    from .sizes import check_param, human_bytes, nbytes
    t = decl.var.type
    check_param(decl.name, t, decl.loc)
    try:
        value = decl.init(param_rng(seed, decl.name))
    except MemoryError:
        raise FlowError(f"param '{decl.name}' ({t}) needs {human_bytes(nbytes(t.shape, t.dtype.itemsize))}, "
                        "more memory than was free", decl.loc) from None
    return coerce_array(value, t, f"the initial value of param '{decl.name}'", decl.loc, {})


class Params:
    """`model.params`: read (a copy) and write params by name, like a dict."""

    def __init__(self, model: "Model"):
        self._model = model

    def _decl(self, name: str) -> ParamDecl:
        decls = self._model.program.params
        if name not in decls:
            hint = did_you_mean(name, decls)
            raise FlowNameError(f"the model has no param '{name}'" + (f"; {hint}" if hint else "")
                                + f" (params: {', '.join(decls) or 'none'})")
        return decls[name]

    def __getitem__(self, name: str) -> np.ndarray:
        self._decl(name)
        return self._model._shared.get(name)

    def __setitem__(self, name: str, value) -> None:
        decl = self._decl(name)
        self._model._set_param(name, coerce_array(value, decl.var.type, f"param '{name}'", decl.loc, {}))

    def __contains__(self, name: str) -> bool:
        return name in self._model.program.params

    def __iter__(self):
        return iter(self._model.program.params)

    def __len__(self) -> int:
        return len(self._model.program.params)

    def keys(self):
        return list(self._model.program.params)

    def items(self):
        return [(k, self[k]) for k in self.keys()]

    def to_dict(self) -> dict[str, np.ndarray]:
        return dict(self.items())

    def update(self, values: dict) -> None:
        for k, v in values.items():
            self[k] = v

    def __repr__(self) -> str:
        return "Params(" + ", ".join(f"{k}: {self._model.program.params[k].var.type}" for k in self.keys()) + ")"


def _given(value) -> str:
    if isinstance(value, np.ndarray):
        return f"an array of dtype {value.dtype} and shape {value.shape}"
    return f"a {type(value).__name__}"


_EXACT_LIMIT: dict = {}  # (integer dtype, float dtype) -> 2**p, or 0 when every value converts exactly


def _first_inexact_in_float(arr: np.ndarray, dtype: np.dtype) -> tuple | None:
    """The position of the first integer of `arr` that the float `dtype` cannot hold exactly,
    or None. Every |v| <= 2**p converts (p = 53 for f64, 24 for f32); a larger v only when its
    odd part v / 2**k fits in p bits."""
    key = (arr.dtype, dtype)
    limit = _EXACT_LIMIT.get(key)
    if limit is None:
        limit = 1 << (np.finfo(dtype).nmant + 1)
        info = np.iinfo(arr.dtype)
        limit = _EXACT_LIMIT[key] = 0 if info.min >= -limit and info.max <= limit else limit  # 0: always exact
    if not limit or arr.size == 0 or (arr.min() >= -limit and arr.max() <= limit):
        return None
    # |v| as uint64 (np.abs(INT64_MIN) is INT64_MIN, whose uint64 bits are 2**63), then its odd part
    mag = (np.abs(arr.astype(np.int64)) if arr.dtype.kind == "i" else arr).astype(np.uint64)
    lowest_bit = mag & (~mag + np.uint64(1))
    return first_true(mag // np.maximum(lowest_bit, np.uint64(1)) >= np.uint64(limit))


def _first_out_of_int_range(arr: np.ndarray, dtype: np.dtype) -> tuple | None:
    info = np.iinfo(dtype)
    if arr.size == 0 or (arr.min() >= info.min and arr.max() <= info.max):
        return None
    return first_true((arr < info.min) | (arr > info.max))


def _lossy_conversion(arr: np.ndarray, t: TensorType, what: str, where: str, pos: tuple) -> FlowCallError:
    at = f" at index [{', '.join(map(str, pos))}]" if pos else ""
    v = arr[pos].item()
    becomes = arr[pos].astype(t.dtype).item()
    shown = int(becomes) if t.dtype.kind == "f" else becomes
    return FlowCallError(f"{what} expects {t}{where}, got {_given(arr)}: the value {v}{at} would become {shown} "
                         f"as {t.dtype.name}; convert it explicitly (e.g. .astype(np.{t.dtype.name})) if that "
                         "is meant — flowml converts only without loss")


def coerce_array(value, t: TensorType, what: str, loc: Loc | None, env: dict[str, int]) -> np.ndarray:
    """`value` as an array of type `t`, binding t's symbols in `env`; a FlowCallError naming
    `what` and its declaration otherwise. Arrays convert only without loss: safe casts, and
    integers to a float type when that float holds every value exactly (labels from
    `randint` feed an f64 input; 2**53 + 1 does not); python scalars and lists convert like
    literals, integers only within the declared integer type's range."""
    where = f" (declared at {loc})" if loc else ""
    try:
        arr = np.asarray(value)
    except Exception:  # noqa: BLE001 - any object numpy can't take is a user error here
        raise FlowCallError(f"{what} expects {t}{where}, got {_given(value)}") from None
    if arr.dtype.kind not in "biuf":
        raise FlowCallError(f"{what} expects {t}{where}, got {_given(value)} (not numeric)")
    if arr.dtype != t.dtype:
        is_array = isinstance(value, np.ndarray) or isinstance(value, np.generic)
        # numpy's can_cast is not value-aware (int64 -> float64 counts as "safe"): integers
        # to floats, and python ints to a narrower integer type, are checked value by value
        if arr.dtype.kind in "iu" and t.dtype.kind == "f":
            pos = _first_inexact_in_float(arr, t.dtype)
        elif arr.dtype.kind in "iu" and t.dtype.kind in "iu" and not is_array:
            pos = _first_out_of_int_range(arr, t.dtype)
        elif np.can_cast(arr.dtype, t.dtype, "safe" if is_array else "same_kind"):
            pos = None
        else:
            raise FlowCallError(f"{what} expects {t}{where}, got {_given(arr)}; convert it explicitly "
                                f"(e.g. .astype(np.{t.dtype.name})) — flowml does not downcast silently")
        if pos is not None:
            raise _lossy_conversion(arr, t, what, where, pos)
        arr = arr.astype(t.dtype)
    if arr.ndim != t.ndim:
        raise FlowCallError(f"{what} expects {t} (rank {t.ndim}){where}, got {_given(arr)} (rank {arr.ndim})")
    for axis, (d, actual) in enumerate(zip(t.shape, arr.shape)):
        if isinstance(d, int):
            if d != actual:
                raise FlowCallError(f"{what} expects {t}{where}, got {_given(arr)}: axis {axis} must be {d}")
        elif len(d.names) == 1 and d.coeff == 1:
            name = d.names[0]
            if name in env and env[name] != actual:
                raise FlowCallError(f"{what} expects {t}{where}, got {_given(arr)}: axis {axis} is {name}, "
                                    f"which is {env[name]} from an earlier input")
            env[name] = actual
    return np.asarray(arr, order="C")  # (ascontiguousarray would turn a scalar into shape (1,))


def fn_signature(program: Program, decl: FnDecl) -> str:
    """`fn NAME(input: type, ...) -> (output: type, ...)  updates p, ...`"""
    ins = ", ".join(f"{n}: {program.inputs[n].var.type}" for n in decl.inputs)
    outs = ", ".join(f"{n}: {v.type}" for n, v in decl.outputs)
    ups = ", ".join(u.param for u in decl.updates)
    return f"fn {decl.name}({ins}) -> ({outs})" + (f"  updates {ups}" if ups else "")


# The native entry (its own small LLVM module) is built once a fn has been called this often on
# the Python path: a fn called once or twice (a script's evaluation, most tests) never pays its
# compile; a fn called in a loop goes native from its third call.
NATIVE_AFTER = int(os.environ.get("FLOWML_NATIVE_AFTER", "2"))


def _object_cache_counts() -> dict[str, int]:
    """The LLVM object-code cache's hits and misses so far (empty before the backend loaded)."""
    import sys
    cache = sys.modules.get("flowml.backends.llvm.cache")
    return dict(cache.COUNTS) if cache is not None else {}


# The live fns, and while a `flowml.profile()` block is open, what a fn made inside it is given
# (flowml/profiling.py): only built or changed when profiling, never on a call.
_LIVE: "weakref.WeakSet[Function]" = weakref.WeakSet()
_PROFILING = None


class Function:
    """A compiled entry function, called with numpy arrays by position or keyword."""

    def __init__(self, model: "Model", decl: FnDecl, compiled=None):
        self.model = model
        self.decl = decl
        self.name = decl.name
        self.input_names = list(decl.inputs)
        self.output_names = [n for n, _ in decl.outputs]
        self._single_output: bool | None = None
        self._native = None
        self.python_calls = 0  # calls that took the Python path (every call but the native entry's)
        # (given by the warm model cache: the optimized graph and, on a backend that keeps them,
        # the compiled fn, whose machine code comes from the backend's own cache)
        start = time.perf_counter()
        self.compiled, executable = compiled if compiled is not None else (self.optimized(), None)
        optimized_at = time.perf_counter()
        self._updated = [u.param for u in decl.updates]
        self._stale = model._shared.stale(model.backend.name)  # (a live set: empty while up to date)
        objects = _object_cache_counts()
        self._executable = executable or model.backend.compile(self.compiled.graph, self.compiled.outputs,
                                                               self.compiled.updates, plan=self.compiled.plan)
        # what compiling this fn took (the profiler reports it): the optimizer's phases, the
        # backend, whether the model cache gave the fn, the object-code cache's hits and misses
        self.compile_info = {"optimize_s": optimized_at - start, "backend_s": time.perf_counter() - optimized_at,
                             "phases_s": dict(getattr(self.compiled, "seconds", {})),
                             "model_cache": compiled is not None,
                             "object_cache": {k: v - objects.get(k, 0) for k, v in _object_cache_counts().items()}}
        # (an executable whose outputs are fresh arrays the caller may keep says so: no second copy)
        self._owns_outputs = getattr(self._executable, "owns_outputs", False)
        # the LLVM backend's CPython entries (backends/llvm/pyentry.py), None where calls stay here
        fastcall = getattr(self._executable, "fastcall", None)
        if fastcall is not None and not model.check and os.environ.get("FLOWML_FASTCALL", "1") != "0":
            inputs = [(n, model.program.inputs[n].var.type) for n in self.input_names]
            self._native = fastcall(inputs, types.MethodType(Function.__call__, self), model._state.values,
                                    self._stale, model._shared._states, model._shared.lock if self._updated else None)
        _LIVE.add(self)  # (for `flowml.profile()`, which profiles every fn called while it is open)
        if _PROFILING is not None:
            _PROFILING(self)

    @property
    def single_output(self) -> bool | None:
        """False: a call always returns a tuple (the outputs were given as a list)."""
        return self._single_output

    @single_output.setter
    def single_output(self, value: bool | None) -> None:
        self._single_output = value
        if type(self) is not Function:  # a native entry built for the old value: the next call rebuilds
            from .profiling import forget_entry
            if not forget_entry(self):  # (inside a `flowml.profile()` block: the class it gets back)
                type(self).__call__ = Function.__call__

    def optimized(self, after: str | None = None, level: int | None = None):
        """This function through the optimizer's phases up to `after` (all by default) at
        `level` (the model's by default; 0 = as built): an `Optimized` (graph, stats, plan)."""
        from .passes.pipeline import optimize
        level = self.model.opt_level if level is None else level
        if after is None and level == self.model.opt_level and getattr(self, "compiled", None) is not None:
            return self.compiled
        return optimize(self.model.program.graph, [v.id for _, v in self.decl.outputs],
                        [(u.param, u.value.id) for u in self.decl.updates], level=level, after=after,
                        exclude=self.model.exclude)

    @property
    def signature(self) -> str:
        return fn_signature(self.model.program, self.decl)

    def __repr__(self) -> str:
        return f"<flowml function {self.signature}>"

    def ir(self, after: str | None = None, level: int | None = None) -> str:
        """The function's IR as SSA text: optimized (through phase `after`, default all) at
        `level` (the model's; 0 shows the graph as built)."""
        from .ir.dump import dump_function
        opt = self.optimized(after, level)
        return dump_function(self.model.program, self.decl, opt.graph, opt.outputs, opt.updates)

    def stats(self, after: str | None = None, level: int | None = None) -> dict[str, int]:
        """How often each rewrite rule fired (keys "phase: rule"), kernels, buffers."""
        opt = self.optimized(after, level)
        out = dict(opt.stats)
        out["kernels"] = opt.kernels()
        return out

    def to_onnx(self, path=None):
        """This fn as an ONNX model (opset 18; docs/onnx.md): its optimized-but-unfused graph,
        the params' current values as initializers; written to `path` when given."""
        from .interop.onnx_export import export
        return export(self, path)

    def explore(self, path=None, profile=None, backend: str | None = None):
        """The IR explorer page of this fn (docs/inspect.md): its graph after each phase, what
        each rule did, the source, its kernels' native code (of `backend`: this model's, or
        llvm for the reference backend) and, given a `profile` (a dict or a JSON file, as
        `flowml run --profile-json` writes it), each node's time. Written to `path` when given;
        the result shows itself in a notebook."""
        from .explore import check_profile, explore, load_profile
        if isinstance(profile, (str, os.PathLike)):
            profile = load_profile(os.fspath(profile))
        elif profile is not None:
            check_profile(profile)
        name = backend or self.model.backend.name
        if name == "reference":
            name = "llvm"
        reuse = {self.name: self._executable} if name == self.model.backend.name else None
        page = explore(self.model.program, [self.decl], backend=name, level=self.model.opt_level,
                       exclude=self.model.exclude, profile=profile, executables=reuse,
                       title=f"{self.model.program.file}: fn {self.name}")
        if path is not None:
            page.save(path)
        return page

    def profile(self, *args, **kwargs):
        """Call the fn once, with these arguments, in its profiling build (docs/inspect.md,
        "Profiling"): a `flowml.profiling.Profile` of the call, one row per step with its time
        and the call boundary's; `.result` is what the call returned. The fn's ordinary calls
        keep running its ordinary build."""
        from .profiling import Profile
        p = Profile()
        p.call(self, args, kwargs)
        return p

    def dot(self) -> str:
        from .ir.dump import to_dot
        return to_dot(self.model.program, self.decl)

    def _bind(self, args, kwargs) -> dict:
        names = self.input_names
        if len(args) > len(names):
            raise FlowCallError(f"{self.name}() takes {len(names)} input(s) ({', '.join(names) or 'none'}), "
                                f"got {len(args)} positional arguments")
        bound = dict(zip(names, args))
        for k, v in kwargs.items():
            if k not in names:
                hint = did_you_mean(k, names)
                raise FlowCallError(f"{self.name}() has no input '{k}'" + (f"; {hint}" if hint else "")
                                    + f" (inputs: {', '.join(names) or 'none'})")
            if k in bound:
                raise FlowCallError(f"{self.name}() got input '{k}' twice")
            bound[k] = v
        missing = [n for n in names if n not in bound]
        if missing:
            decls = self.model.program.inputs
            raise FlowCallError(f"{self.name}() is missing input(s) " + ", ".join(
                f"'{n}' ({decls[n].var.type}, declared at {decls[n].loc})" for n in missing))
        return bound

    def _fast_inputs(self, args) -> tuple[dict, dict] | None:
        """The common call — every input positional, an ndarray of exactly its declared dtype,
        C-contiguous and aligned, with fixed dims equal — checked with few Python steps; None
        sends the call through the full checks (and their error messages)."""
        specs = self.__dict__.get("_specs")
        if specs is None:
            prog = self.model.program
            specs = self._specs = [(n, prog.inputs[n].var.type.dtype, prog.inputs[n].var.type.shape)
                                   for n in self.input_names]
        if len(args) != len(specs):
            return None
        env: dict[str, int] = {}
        arrays = {}
        for (name, dtype, shape), a in zip(specs, args):
            if isinstance(a, np.generic):
                a = np.asarray(a)
            if type(a) is not np.ndarray or a.dtype != dtype or len(a.shape) != len(shape) \
                    or not (a.flags.c_contiguous and a.flags.aligned):
                return None
            for d, actual in zip(shape, a.shape):
                if type(d) is int:
                    if d != actual:
                        return None
                elif len(d.names) == 1 and d.coeff == 1:
                    if env.setdefault(d.names[0], actual) != actual:
                        return None
                else:
                    return None
            arrays[name] = a
        return arrays, env

    def __call__(self, *args, **kwargs):
        """The Python path of a call. On the LLVM backend, once calls have bound the dims
        (NATIVE_AFTER of them), a native entry checking and unboxing the arguments becomes the fn's `__call__` (its own
        class's): it takes the calls it can and passes the others (keywords, other dims, other
        types, errors to report) back here with the same arguments."""
        self.python_calls += 1
        fast = None if kwargs else self._fast_inputs(args)
        if fast is not None:
            arrays, env = fast
        else:
            bound = self._bind(args, kwargs)
            env = {}
            arrays = {}
            for name in self.input_names:
                decl = self.model.program.inputs[name]
                arrays[name] = coerce_array(bound[name], decl.var.type, f"{self.name}(): input '{name}'", decl.loc,
                                            env)
        model = self.model
        try:
            if self._updated or model.check:  # one at a time per state (docs/backends.md, "Threads")
                with model._shared.lock:
                    outs = self._run(arrays, env)
            else:
                if self._stale:
                    with model._shared.lock:
                        model._shared.acquire(model.backend.name)
                outs = self._executable(arrays, model._state, env)
        except FlowRuntimeError:  # (the inputs were right: the next calls of these dims go native too)
            self._use_native(env, bound_only=True)
            raise
        if not self._owns_outputs:
            outs = [np.array(o) for o in outs]
        self._use_native(env)
        if not outs:
            return None
        if len(outs) == 1 and self.single_output is not False:
            return outs[0]
        return tuple(outs)

    def _use_native(self, env: dict[str, int], bound_only: bool = False) -> None:
        """Make the native entry for the dims `env` this fn's `__call__` (on a class of its own),
        once the fn has made NATIVE_AFTER calls here; `bound_only`: only if the executable has
        set up these dims already."""
        if self._native is None or self.python_calls < NATIVE_AFTER:
            return
        entry = self._native.entry(env, self.single_output is not False, bound_only)
        if entry is None:
            return
        cls = type(self)
        if cls is Function:
            cls = self.__class__ = type("Function", (Function,), {"__module__": __name__, "__qualname__": "Function"})
        if cls.__dict__.get("__call__") is not entry:
            cls.__call__ = entry

    def _run(self, arrays, env):
        model = self.model
        if self._stale:  # params another backend changed since: copied over first
            model._shared.acquire(model.backend.name)
        try:
            if model.check:
                from .checkmode import checked_call
                return checked_call(self, arrays, env)
            return self._executable(arrays, model._state, env)
        finally:
            if self._updated:
                model._shared.wrote(model.backend.name, self._updated)


class Model:
    """A program compiled for a backend: its functions are attributes; `params` holds state.

    `state` (a `flowml.state.SharedState`) shares the params' values with other models of the
    same graph, on any backend (the Python builder compiles each function as one such model).

    `check=True` (check mode, Theano's DebugMode): every call also runs the reference backend on
    the same optimized graph, inputs and params, and raises a FlowRuntimeError at the first node
    whose values differ (see `flowml.checkmode`). `exclude`: optimizer phases and rules to switch
    off, by name (see `flowml.passes.pipeline`)."""

    def __init__(self, program: Program, backend: str | None = None, seed: int | None = None, state=None,
                 opt_level: int = 1, check: bool = False, exclude=None, compiled: dict | None = None):
        self.program = program
        self.opt_level = opt_level
        if exclude:
            from .passes.pipeline import check_exclude
            exclude = check_exclude(exclude)
        self.exclude = frozenset(exclude or ())
        self.check = bool(check)  # check mode: every call is also run on the reference backend
        self.backend = get_backend(backend) if not hasattr(backend, "compile") else backend
        self.seed = program.seed if seed is None else seed
        add_rng_updates(program)
        for fn in program.functions.values():
            check_function(program, fn)
        from .state import SharedState
        self._shared = state if state is not None else SharedState()
        self._state = self._shared.state(self.backend)  # this backend's copy (checkmode runs on it)
        for name, decl in program.params.items():
            if not self._shared.has(name):  # a shared state may already hold it
                if name == RNG_PARAM:  # the random streams start at the model's seed
                    self._set_param(name, np.array([self.seed, 0], dtype=np.int64))
                    continue
                self._set_param(name, initial_value(decl, self.seed))
        self.params = Params(self)
        self.functions: dict[str, Function] = {
            name: Function(self, fn, (compiled or {}).get(name)) for name, fn in program.functions.items()}
        for name, f in self.functions.items():  # found by one dict lookup, not through __getattr__
            if not hasattr(type(self), name):
                self.__dict__.setdefault(name, f)

    def _set_param(self, name: str, value: np.ndarray) -> None:
        self._shared.set(name, value, self.backend.name)

    def __getattr__(self, name: str) -> Function:
        functions = self.__dict__.get("functions", {})
        if name in functions:
            return functions[name]
        hint = did_you_mean(name, functions)
        raise AttributeError(f"the model has no function '{name}'" + (f"; {hint}" if hint else "")
                             + f" (functions: {', '.join(functions) or 'none'})")

    def __dir__(self):
        return list(super().__dir__()) + list(self.functions)

    def save_params(self, path: str) -> None:
        from .io import save_npz
        try:
            save_npz(path, self.params.to_dict())
        except OSError as e:
            raise FlowError(f"{path}: cannot write the params ({e.strerror or e})") from None

    def load_params(self, path: str) -> None:
        from .io import load_npz
        values = load_npz(path)
        unknown = [k for k in values if k not in self.program.params]
        if unknown:
            raise FlowError(f"{path}: has arrays for unknown params {', '.join(unknown)} "
                            f"(params: {', '.join(self.program.params) or 'none'})")
        checked = {}  # all or nothing: check every array before changing any param
        for name, value in values.items():
            decl = self.program.params[name]
            checked[name] = coerce_array(value, decl.var.type, f"param '{name}'", decl.loc, {})
        for name, value in checked.items():
            self._set_param(name, value)

    def __repr__(self) -> str:
        fns = "\n  ".join(f.signature for f in self.functions.values())
        return f"<flowml model {self.program.file} on {self.backend.name}>\n  {fns}"
