"""A compiled fn's CPython entry: argument checking, unboxing and the result's arrays as a
`METH_FASTCALL` function in LLVM IR (numba's approach), so that a call costs well under a
microsecond of overhead instead of the Python path's ~10.

`flowml_call(self, args, nargs, kwnames)` is compiled in a small module of its own, apart from
the entry points (which call no Python: tests/test_lowering_registry.py). Per call it:

- checks the arguments: an ndarray of exactly the declared dtype, C-contiguous and aligned,
  with the declared rank, its fixed dims and the dims of the binding it was built for; for a
  rank-0 input also a numpy scalar of that dtype, a Python float (f64; f32 when it does not
  overflow) or int (exact in the declared type), a Python bool for a bool input;
- takes one of a few call frames (a `_Frame` of the binding, claimed with an atomic flag), puts
  the input and param addresses in it and calls the entry point, with the GIL released when
  the binding's work is large;
- returns fresh arrays (0-d for scalar outputs): made before the entry point runs and written
  by it directly where an output is a value of its own (`LLVMExecutable.direct_outputs`), else
  copied out of the frame.

Anything else (keywords, other dims, other types, stale params, every frame in use) calls the
Python path with the same arguments: it raises the located error or does the full work, and
then installs the entry of the dims it bound (`Function.__call__`). An error code of the entry
point raises the node's located error through `on_error`. A fn with updates holds the model's
lock (`SharedState.lock`) around the call, as the Python path does.

The module's only addresses come from `self`, an int64 array (`_Config`) whose words the
layout below names: type objects, numpy's `PyArray_NewFromDescr` (its C-API table), the
binding's dims and output shapes, the frames. The IR embeds none, so the compile cache keeps it
across processes. The CPython and numpy struct offsets it reads are checked once at start-up
against real objects (`_layout_ok`); where they differ the Python path stays.
"""

from __future__ import annotations

import ctypes
import sys
import threading
import types

import numpy as np

from ...ir import ops as P
from ...ir.types import Sym
from . import cache
from .irfunc import IRFunction

FRAMES = 4  # calls of one binding that can run natively at once (then the Python path's pool)
RELEASE_GIL_WORK = 1 << 14  # elements computed per call above which the GIL is released
METH_FASTCALL_KEYWORDS = 0x80 | 0x02
NATIVE_DTYPES = ("float32", "float64", "int32", "int64", "bool")
MEM = {"float32": "float", "float64": "double", "int32": "i32", "int64": "i64", "bool": "i8"}
C_CONTIGUOUS, ALIGNED, WRITEABLE = 0x1, 0x100, 0x400
# CPython / numpy struct offsets (checked by _layout_ok)
OB_TYPE, VALUE = 8, 16  # PyObject.ob_type; PyFloatObject.ob_fval and a numpy scalar's obval
A_DATA, A_ND, A_DIMS, A_DESCR, A_FLAGS = 16, 24, 32, 56, 64  # PyArrayObject_fields
D_BYTEORDER, D_TYPENUM = 26, 28  # PyArray_Descr

HEADER = ("fallback", "on_error", "entry", "new_array", "array_type", "float_type", "long_type", "bool_type",
          "true", "none", "values", "stale", "states", "acquire", "release", "release_gil", "single",
          "want_frame")


def unavailable(ex) -> str | None:
    """Why executable `ex` has no CPython entry (its calls stay on the Python path), or None."""
    if ex.program is None:
        return ex._lazy_reason
    if any(s.host is not None for s in ex.program.segments):
        return "host steps run between its native segments"
    if any(ex.inplace.get(name) != n for name, n in ex.updates):
        return "an update that is not done in place"
    if ex.program.world_keys:
        return "collectives: the process group's slots are read on every call"
    g = ex.graph
    for n in ex.nodes:
        t = g.type(n)
        if g.op(n) in (P.input_, P.param) and t.dtype.name not in NATIVE_DTYPES:
            return f"a {t.dtype.name} {g.op(n).name}"
        if g.op(n) is P.input_ and not all(isinstance(d, int) or _plain(d) for d in t.shape):
            return "an input with a derived dim"
        if g.op(n) is P.param and not all(isinstance(d, int) for d in t.shape):
            return "a param with a symbolic dim"
    folded = {s.node for s in ex.program.steps if s.kind == "none"}
    if any(ex.alias.get(n, n) in folded for n in ex.outputs):
        return "an output read through a folded transpose"
    if not _layout_ok():
        return "this Python's or numpy's object layout is not the one the native entry reads"
    return None


def _plain(d) -> bool:
    return isinstance(d, Sym) and len(d.names) == 1 and d.coeff == 1


class _Config(np.ndarray):
    """The native entry's `self`: its words (an int64 array) and, as attributes, the objects
    whose addresses they hold (kept alive while the entry is)."""


class FastCall:
    """The CPython entries of one fn, one per binding of its dims (built on demand).

    `inputs`: the fn's inputs in call order, (name, TensorType); `fallback`: the Python path,
    called with the same arguments; `values`: the backend state's dict of param arrays;
    `stale`, `states`: the shared state's set of params stale here and its dict of backend
    states (the entry runs only while the first is empty and, for a fn with updates, the second
    has one entry); `lock`: held around calls of a fn with updates (None: no updates)."""

    def __init__(self, ex, inputs, fallback, values: dict, stale: set, states: dict, lock):
        self.ex = ex
        self.fallback, self.values, self.stale, self.states, self.lock = fallback, values, stale, states, lock
        g, program = ex.graph, ex.program
        slot = lambda n: program.slot_of(("ptr", n))  # (as `_Binding` finds them: views share their root's)
        by_name: dict[str, list[int]] = {}
        params: dict[str, tuple] = {}
        for n in ex.nodes:
            op = g.op(n)
            if op is P.input_:
                by_name.setdefault(g.attrs(n)["name"], []).append(slot(n))
            elif op is P.param:
                params.setdefault(g.attrs(n)["name"], (g.type(n), []))[1].append(slot(n))
            elif not op.leaf and n in ex._inplace_nodes:  # an update computed into its param's array
                params.setdefault(ex._inplace_nodes[n], (g.type(n), []))[1].append(slot(n))
        self.inputs = [(name, t, by_name.get(name, [])) for name, t in inputs]
        self.dims = list(dict.fromkeys(d.names[0] for _, t in inputs for d in t.shape if not isinstance(d, int)))
        self.params = [(name, t, slots) for name, (t, slots) in params.items()]
        direct = ex.direct_outputs()
        self.outputs = [(g.type(n), slot(n), o in direct) for o, n in enumerate(ex.outputs)]
        self.entry_name = next((s.name for s in program.segments if s.name), None)
        self.words = _Words(self)
        self._module = None
        self._address = 0
        self._entries: dict[tuple, types.BuiltinFunctionType] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------ per binding

    def entry(self, env: dict[str, int], single: bool, bound_only: bool = False):
        """The native callable for the dims `env` (which a call on the Python path just bound;
        `bound_only`: None unless the executable has set them up)."""
        key = (tuple(env.get(d) for d in self.dims), single)
        found = self._entries.get(key)
        if found is None and bound_only and tuple(sorted(env.items())) not in self.ex._bindings:
            return None
        if found is not None:
            cfg = found.__self__
            if cfg[self.words.at["want_frame"]]:
                cfg.add_frame()
            return found
        with self._lock:
            if self._module is None:
                text = module_text(self)
                self._module = cache.compile_cached(text, "llvm-pyentry-v1", name="flowml_pyentry")
                self._address = self._module.address("flowml_call")
            if len(self._entries) > 8:
                self._entries.clear()  # many shapes in turn: don't keep them all
            found = self._entries[key] = self._build(env, single)
        return found

    def _build(self, env: dict[str, int], single: bool):
        from .backend import _Frame
        ex, w = self.ex, self.words
        binding = ex._binding(env)
        cfg = np.zeros(w.size, dtype=np.int64).view(_Config)
        api = _api()
        refs = [self.fallback, self._on_error(cfg, binding), type(None), self.values, self.stale, self.states]
        put = {"fallback": id(self.fallback), "on_error": id(refs[1]), "new_array": api.new_from_descr,
               "array_type": id(np.ndarray), "float_type": id(float), "long_type": id(int),
               "bool_type": id(bool), "true": id(True), "none": id(None), "values": id(self.values),
               "stale": id(self.stale), "states": id(self.states), "single": int(single),
               "entry": ex.module.address(self.entry_name) if self.entry_name else 0}
        if self.lock is not None:
            refs += [self.lock.acquire, self.lock.release]
            put["acquire"], put["release"] = id(refs[-2]), id(refs[-1])
        work = sum(int(np.prod(binding.shapes[n], dtype=np.int64)) for n in ex.nodes if not ex.graph.op(n).leaf)
        put["release_gil"] = int(work >= RELEASE_GIL_WORK)
        for key, value in put.items():
            cfg[w.at[key]] = value
        for name in self.dims:
            cfg[w.at["dim", name]] = env[name]
        for i, (_, t, _) in enumerate(self.inputs):
            cfg[w.at["descr", i]] = id(t.dtype)
            for s, scalar in enumerate(_scalar_types(t.dtype)[:2] if t.ndim == 0 else ()):
                cfg[w.at["scalar", i] + s] = id(scalar)
        keys = []
        for j, (name, t, _) in enumerate(self.params):
            keys.append(sys.intern(name))
            cfg[w.at["key", j]] = id(keys[-1])
            cfg[w.at["pdescr", j]] = id(t.dtype)
        for o, (t, _, _) in enumerate(self.outputs):
            shape = t.concrete_shape(binding.env)
            cfg[w.at["odescr", o]] = id(t.dtype)
            cfg[w.at["odims", o]:w.at["odims", o] + len(shape)] = shape
            cfg[w.at["onbytes", o]] = int(np.prod(shape, dtype=np.int64)) * t.dtype.itemsize
        cfg.refs = refs + keys + [np.dtype(t.dtype) for _, t, _ in self.inputs]
        cfg.binding, cfg.frames, cfg.words, cfg.module = binding, [], w, self._module
        cfg.add_frame = lambda: _add_frame(cfg, _Frame)
        cfg.add_frame()
        f = _new_cfunction(self._address, cfg)
        return f

    def _on_error(self, cfg, binding):
        ex = self.ex

        def on_error(code: int):
            frame = cfg.frames[code >> 32]
            raise ex.native_error(code & 0xFFFFFFFF, frame.ctx, binding.env)
        return on_error


def _add_frame(cfg: _Config, frame_class) -> None:
    """One more frame for the native entry (up to FRAMES), when every one was in use."""
    w = cfg.words
    cfg[w.at["want_frame"]] = 0
    k = len(cfg.frames)
    if k < FRAMES:
        frame = frame_class(cfg.binding)
        cfg.frames.append(frame)
        cfg[w.at["frame", k] + 1] = frame.ctx_ptr  # (set last: a frame with an address is usable)


class _Words:
    """Where each thing lives in the entry's int64 config array."""

    def __init__(self, fc: FastCall):
        self.at: dict = {}
        self.size = 0
        for name in HEADER:
            self._add(name)
        for name in fc.dims:
            self._add(("dim", name))
        for i in range(len(fc.inputs)):
            self._add(("descr", i))
            self._add(("scalar", i), 2)
        for j in range(len(fc.params)):
            self._add(("key", j))
            self._add(("pdescr", j))
        for o, (t, _, _) in enumerate(fc.outputs):
            self._add(("odescr", o))
            self._add(("odims", o), max(t.ndim, 1))
            self._add(("onbytes", o))
        self.frame_words = 2 + len(fc.inputs)  # busy flag, ctx address, a scalar input's value
        for k in range(FRAMES):
            self._add(("frame", k), self.frame_words)

    def _add(self, key, n: int = 1) -> None:
        self.at[key] = self.size
        self.size += n


# ---------------------------------------------------------------- the IR

DECLARATIONS = """declare ptr @PyObject_Vectorcall(ptr, ptr, i64, ptr)
declare i64 @PySet_Size(ptr)
declare i64 @PyDict_Size(ptr)
declare ptr @PyDict_GetItem(ptr, ptr)
declare void @Py_IncRef(ptr)
declare void @Py_DecRef(ptr)
declare i64 @PyLong_AsLongLongAndOverflow(ptr, ptr)
declare ptr @PyLong_FromLongLong(i64)
declare ptr @PyEval_SaveThread()
declare void @PyEval_RestoreThread(ptr)
declare ptr @PyTuple_New(i64)
declare i32 @PyTuple_SetItem(ptr, i64, ptr)
declare void @PyErr_Fetch(ptr, ptr, ptr)
declare void @PyErr_Restore(ptr, ptr, ptr)
declare void @PyErr_Clear()
declare void @llvm.memcpy.p0.p0.i64(ptr, ptr, i64, i1)
declare double @llvm.fabs.f64(double)"""

UNLOCK = """define internal void @flowml_unlock(ptr %release) {
entry:
  %t = alloca ptr
  %v = alloca ptr
  %tb = alloca ptr
  call void @PyErr_Fetch(ptr %t, ptr %v, ptr %tb)
  %r = call ptr @PyObject_Vectorcall(ptr %release, ptr null, i64 0, ptr null)
  %ok = icmp ne ptr %r, null
  br i1 %ok, label %done, label %failed
done:
  call void @Py_DecRef(ptr %r)
  br label %restore
failed:
  call void @PyErr_Clear()
  br label %restore
restore:
  %t1 = load ptr, ptr %t
  %v1 = load ptr, ptr %v
  %tb1 = load ptr, ptr %tb
  call void @PyErr_Restore(ptr %t1, ptr %v1, ptr %tb1)
  ret void
}"""


class _Writer(IRFunction):
    """IRFunction over `%cfg` (the config words) with the loads the entry needs."""

    def __init__(self, words: _Words):
        super().__init__("flowml_call", None, "ptr", "ptr %self, ptr %args, i64 %nargs, ptr %kwnames")
        self.w = words

    def word(self, key, typ: str = "ptr", offset: int = 0) -> str:
        p = self.emit(f"getelementptr i64, ptr %cfg, i64 {self.w.at[key] + offset}", "wp")
        return self.emit(f"load {typ}, ptr {p}", "w")

    def field(self, obj: str, offset: int, typ: str) -> str:
        p = self.emit(f"getelementptr i8, ptr {obj}, i64 {offset}", "fp")
        return self.emit(f"load {typ}, ptr {p}", "f")

    def all_of(self, conds: list[str]) -> str:
        out = conds[0]
        for c in conds[1:]:
            out = self.emit(f"and i1 {out}, {c}", "c")
        return out

    def branch(self, cond: str, yes: str, no: str) -> None:
        self.line(f"br i1 {cond}, label %{yes}, label %{no}")

    def goto(self, label: str) -> None:
        self.line(f"br label %{label}")


def module_text(fc: FastCall) -> str:
    f = _Writer(fc.words)
    nin = len(fc.inputs)
    fallback, unlock_fallback, release_fallback = "fallback", "unlock_fallback", "release_fallback"
    f.line("%cfgp = getelementptr i8, ptr %self, i64 16")
    f.line("%cfg = load ptr, ptr %cfgp")
    f.branch(f.emit("icmp eq ptr %kwnames, null", "c"), "nokw", fallback)
    f.block("nokw")
    f.branch(f.emit(f"icmp eq i64 %nargs, {nin}", "c"), "nargs.ok", fallback)
    f.block("nargs.ok")
    if fc.lock is not None:  # a fn with updates: one call at a time per model
        r = f.emit(f"call ptr @PyObject_Vectorcall(ptr {f.word('acquire')}, ptr null, i64 0, ptr null)", "r")
        f.branch(f.emit(f"icmp eq ptr {r}, null", "c"), "ret.null", "locked")
        f.block("locked")
        f.line(f"call void @Py_DecRef(ptr {r})")
    fresh = f.emit(f"icmp eq i64 {f.emit('call i64 @PySet_Size(ptr ' + f.word('stale') + ')', 'n')}, 0", "c")
    if fc.lock is not None:  # (another backend's state would need the Python path's `wrote`)
        one = f.emit(f"icmp eq i64 {f.emit('call i64 @PyDict_Size(ptr ' + f.word('states') + ')', 'n')}, 1", "c")
        fresh = f.all_of([fresh, one])
    f.branch(fresh, "claim.0", unlock_fallback)
    # ---- a frame: the first of the allocated ones whose busy flag goes 0 -> 1
    kvar = f.var("i64")
    for k in range(FRAMES):
        f.block(f"claim.{k}")
        base = f.w.at["frame", k]
        ctx = f.word(("frame", k), "i64", 1)
        f.branch(f.emit(f"icmp ne i64 {ctx}, 0", "c"), f"try.{k}", "no.frame")
        f.block(f"try.{k}")
        busy = f.emit(f"getelementptr i64, ptr %cfg, i64 {base}", "b")
        got = f.emit(f"cmpxchg ptr {busy}, i64 0, i64 1 acquire monotonic", "x")
        ok = f.emit(f"extractvalue {{ i64, i1 }} {got}, 1", "c")
        f.branch(ok, f"got.{k}", f"claim.{k + 1}" if k + 1 < FRAMES else "no.frame")
        f.block(f"got.{k}")
        f.line(f"store i64 {k}, ptr {kvar}")
        f.goto("claimed")
    f.block("no.frame")
    p = f.emit(f"getelementptr i64, ptr %cfg, i64 {f.w.at['want_frame']}", "wp")
    f.line(f"store i64 1, ptr {p}")
    f.goto(unlock_fallback)
    f.block("claimed")
    k = f.emit(f"load i64, ptr {kvar}", "k")
    off = f.emit(f"mul i64 {k}, {f.w.frame_words}", "o")
    off = f.emit(f"add i64 {off}, {f.w.at['frame', 0]}", "o")
    fbase = f.emit(f"getelementptr i64, ptr %cfg, i64 {off}", "fb")
    ctx = f.emit(f"load ptr, ptr {f.emit(f'getelementptr i64, ptr {fbase}, i64 1', 'p')}", "ctx")

    def set_slots(ptr: str, slots) -> None:
        for s in slots:
            f.line(f"store ptr {ptr}, ptr {f.emit(f'getelementptr i64, ptr {ctx}, i64 {s}', 's')}")

    for i, (name, t, slots) in enumerate(fc.inputs):
        _input(f, i, t, slots, fbase, release_fallback, set_slots)
    held = []
    for j, (name, t, slots) in enumerate(fc.params):
        a = f.emit(f"call ptr @PyDict_GetItem(ptr {f.word('values')}, ptr {f.word(('key', j))})", "par")
        # (labels named apart from every register stem: "%par.152" is a register once 152 values exist)
        f.branch(f.emit(f"icmp ne ptr {a}, null", "c"), f"param{j}.found", release_fallback)
        f.block(f"param{j}.found")
        _array_check(f, a, t, ("pdescr", j), C_CONTIGUOUS | ALIGNED | WRITEABLE, f"param{j}.ok", release_fallback)
        f.block(f"param{j}.ok")
        set_slots(f.field(a, A_DATA, "ptr"), slots)
        held.append(a)
    for a in held:  # (kept alive while the GIL may be released: another thread may replace them)
        f.line(f"call void @Py_IncRef(ptr {a})")
    res = f.var("ptr", "null")
    made = _direct_outputs(f, fc, ctx)
    if fc.entry_name is not None:
        entry = f.word("entry")
        f.branch(f.emit(f"icmp ne i64 {f.word('release_gil', 'i64')}, 0", "c"), "nogil", "gil")
        f.block("nogil")
        ts = f.emit("call ptr @PyEval_SaveThread()", "ts")
        rc1 = f.emit(f"call i32 {entry}(ptr {ctx})", "rc")
        f.line(f"call void @PyEval_RestoreThread(ptr {ts})")
        f.goto("ran")
        f.block("gil")
        rc2 = f.emit(f"call i32 {entry}(ptr {ctx})", "rc")
        f.goto("ran")
        f.block("ran")
        rc = f.emit(f"phi i32 [{rc1}, %nogil], [{rc2}, %gil]", "rc")
        f.branch(f.emit(f"icmp eq i32 {rc}, 0", "c"), "outputs", "failed")
        f.block("failed")  # on_error((k << 32) | rc) raises the node's located error
        for a in made.values():
            f.line(f"call void @Py_DecRef(ptr {a})")
        code = f.emit(f"or i64 {f.emit(f'shl i64 {k}, 32', 'k')}, {f.emit(f'zext i32 {rc} to i64', 'rc')}", "code")
        lng = f.emit(f"call ptr @PyLong_FromLongLong(i64 {code})", "lng")
        f.branch(f.emit(f"icmp ne ptr {lng}, null", "c"), "raise", "cleanup")
        f.block("raise")
        argv = f.var("ptr", lng)
        r = f.emit(f"call ptr @PyObject_Vectorcall(ptr {f.word('on_error')}, ptr {argv}, i64 1, ptr null)", "r")
        f.line(f"call void @Py_DecRef(ptr {lng})")
        with f.if_(f.emit(f"icmp ne ptr {r}, null", "c")):
            f.line(f"call void @Py_DecRef(ptr {r})")  # (on_error always raises)
        f.goto("cleanup")
    else:
        f.goto("outputs")
    f.block("outputs")
    _outputs(f, fc, ctx, res, made)
    f.goto("cleanup")
    f.block("cleanup")
    for a in held:
        f.line(f"call void @Py_DecRef(ptr {a})")
    f.line(f"store atomic i64 0, ptr {fbase} release, align 8")
    if fc.lock is not None:
        f.line(f"call void @flowml_unlock(ptr {f.word('release')})")
    f.line(f"ret ptr {f.emit(f'load ptr, ptr {res}', 'res')}")
    # ---- the Python path, with the same arguments
    f.block(release_fallback)
    f.line(f"store atomic i64 0, ptr {fbase} release, align 8")
    f.goto(unlock_fallback)
    f.block(unlock_fallback)
    if fc.lock is not None:
        f.line(f"call void @flowml_unlock(ptr {f.word('release')})")
    f.goto(fallback)
    f.block(fallback)
    r = f.emit(f"call ptr @PyObject_Vectorcall(ptr {f.word('fallback')}, ptr %args, i64 %nargs, ptr %kwnames)", "r")
    f.line(f"ret ptr {r}")
    f.block("ret.null")
    f.line("ret ptr null")
    return "\n\n".join([f.text(), UNLOCK if fc.lock is not None else "", DECLARATIONS]) + "\n"


def _descr_ok(f: _Writer, obj: str, dtype: np.dtype, key) -> str:
    """An i1: the array's dtype is `dtype` (numpy's own descr, or an equal one in native order)."""
    descr = f.field(obj, A_DESCR, "ptr")
    same = f.emit(f"icmp eq ptr {descr}, {f.word(key)}", "c")
    num = f.field(descr, D_TYPENUM, "i32")
    nums = [f.emit(f"icmp eq i32 {num}, {n}", "c") for n in _type_nums(dtype)]
    any_num = nums[0]
    for c in nums[1:]:
        any_num = f.emit(f"or i1 {any_num}, {c}", "c")
    native = f.emit(f"icmp ne i8 {f.field(descr, D_BYTEORDER, 'i8')}, {ord('>')}", "c")
    return f.emit(f"or i1 {same}, {f.all_of([any_num, native])}", "c")


def _array_check(f: _Writer, obj: str, t, descr_key, flags: int, ok: str, fail: str,
                 known_array: bool = False) -> None:
    """Branch to `ok` when `obj` is an exact ndarray of t's dtype with `flags`, t's rank and
    dims (a named dim: the binding's size), else to `fail`."""
    more = f.label("arr")
    if known_array:
        f.goto(more)
    else:
        is_array = f.emit(f"icmp eq ptr {f.field(obj, OB_TYPE, 'ptr')}, {f.word('array_type')}", "c")
        f.branch(is_array, more, fail)
    f.block(more)
    conds = [_descr_ok(f, obj, t.dtype, descr_key)]
    fl = f.emit(f"and i32 {f.field(obj, A_FLAGS, 'i32')}, {flags}", "fl")
    conds.append(f.emit(f"icmp eq i32 {fl}, {flags}", "c"))
    conds.append(f.emit(f"icmp eq i32 {f.field(obj, A_ND, 'i32')}, {t.ndim}", "c"))
    f.branch(f.all_of(conds), more + ".rank", fail)
    f.block(more + ".rank")  # (dims read only once the rank is known)
    dims = f.field(obj, A_DIMS, "ptr")
    conds = []
    for axis, d in enumerate(t.shape):
        actual = f.emit(f"load i64, ptr {f.emit(f'getelementptr i64, ptr {dims}, i64 {axis}', 'p')}", "d")
        want = str(d) if isinstance(d, int) else f.word(("dim", d.names[0]), "i64")
        conds.append(f.emit(f"icmp eq i64 {actual}, {want}", "c"))
    f.branch(f.all_of(conds) if conds else "true", ok, fail)


def _input(f: _Writer, i: int, t, slots, fbase: str, fail: str, set_slots) -> None:
    """Input i: its data address into its slots (a converted scalar: the frame's word i), or
    to `fail`."""
    dt = t.dtype.name
    obj = f.emit(f"load ptr, ptr {f.emit(f'getelementptr ptr, ptr %args, i64 {i}', 'a')}", "in")
    data = f.var("ptr")
    done = f.label(f"in{i}.done")

    def unless(cond: str, target: str) -> None:  # branch to target when cond, else go on
        on = f.label(f"in{i}")
        f.branch(cond, target, on)
        f.block(on)

    def use(ptr: str, ok: str = "true") -> None:  # ptr holds the value: done (when ok)
        f.line(f"store ptr {ptr}, ptr {data}")
        f.branch(ok, done, fail)

    tp = f.field(obj, OB_TYPE, "ptr")
    array = f.label(f"in{i}.array")
    unless(f.emit(f"icmp eq ptr {tp}, {f.word('array_type')}", "c"), array)
    if t.ndim == 0:
        scratch = f.emit(f"getelementptr i64, ptr {fbase}, i64 {2 + i}", "scr")
        own = f.label(f"in{i}.own")  # a numpy scalar of the dtype (a float for f64): its own bytes
        for s in range(2):
            unless(f.emit(f"icmp eq ptr {tp}, {f.word(('scalar', i), 'ptr', s)}", "c"), own)
        is_float = f.emit(f"icmp eq ptr {tp}, {f.word('float_type')}", "c")
        if dt == "float64":
            unless(is_float, own)
        elif dt == "float32":  # numpy rounds a float to f32; one that overflows: the Python path
            to_f32 = f.label(f"in{i}.f32")
            unless(is_float, to_f32)
        if dt == "bool":
            to_bool = f.label(f"in{i}.bool")
            f.branch(f.emit(f"icmp eq ptr {tp}, {f.word('bool_type')}", "c"), to_bool, fail)
            f.block(to_bool)
            true = f.word("true")
            b = f.emit(f"zext i1 {f.emit(f'icmp eq ptr {obj}, {true}', 'c')} to i8", "b")
            f.line(f"store i8 {b}, ptr {scratch}")
            use(scratch)
        else:  # a Python int that the declared type holds exactly
            to_int = f.label(f"in{i}.int")
            f.branch(f.emit(f"icmp eq ptr {tp}, {f.word('long_type')}", "c"), to_int, fail)
            f.block(to_int)
            ovf = f.var("i32", "0")
            v = f.emit(f"call i64 @PyLong_AsLongLongAndOverflow(ptr {obj}, ptr {ovf})", "v")
            conds = [f.emit(f"icmp eq i32 {f.emit(f'load i32, ptr {ovf}', 'o')}, 0", "c")]
            bound = {"int32": 1 << 31, "float64": 1 << 53, "float32": 1 << 24}.get(dt)
            if bound is not None:
                high = bound - 1 if dt == "int32" else bound
                conds += [f.emit(f"icmp sge i64 {v}, {-bound}", "c"), f.emit(f"icmp sle i64 {v}, {high}", "c")]
            conv = {"int32": "trunc i64 {} to i32", "float64": "sitofp i64 {} to double",
                    "float32": "sitofp i64 {} to float"}.get(dt)
            x = v if conv is None else f.emit(conv.format(v), "x")
            f.line(f"store {MEM[dt]} {x}, ptr {scratch}")
            use(scratch, f.all_of(conds))
        if dt == "float32":
            f.block(to_f32)
            v = f.field(obj, VALUE, "double")
            r = f.emit(f"fptrunc double {v} to float", "r")
            big_r = f.emit(f"call double @llvm.fabs.f64(double {f.emit(f'fpext float {r} to double', 'x')})", "x")
            big_v = f.emit(f"call double @llvm.fabs.f64(double {v})", "x")
            inf_r = f.emit(f"fcmp oeq double {big_r}, 0x7FF0000000000000", "c")
            finite_v = f.emit(f"fcmp one double {big_v}, 0x7FF0000000000000", "c")
            f.line(f"store float {r}, ptr {scratch}")
            use(scratch, f.emit(f"xor i1 {f.all_of([inf_r, finite_v])}, true", "c"))
        f.block(own)
        use(f.emit(f"getelementptr i8, ptr {obj}, i64 {VALUE}", "val"))
    else:
        f.goto(fail)
    f.block(array)
    checked = f.label(f"in{i}.checked")
    _array_check(f, obj, t, ("descr", i), C_CONTIGUOUS | ALIGNED, checked, fail, known_array=True)
    f.block(checked)
    use(f.field(obj, A_DATA, "ptr"))
    f.block(done)
    set_slots(f.emit(f"load ptr, ptr {data}", "d"), slots)


def _new_output(f: _Writer, fc: FastCall, o: int, t, stem: str, made: list[str]) -> str:
    """A fresh array for output o; where numpy cannot make it (no memory: it set the error), the
    arrays already `made` are released and the call goes to cleanup."""
    descr = f.word(("odescr", o))
    f.line(f"call void @Py_IncRef(ptr {descr})")  # (PyArray_NewFromDescr steals it)
    dims = f.emit(f"getelementptr i64, ptr %cfg, i64 {fc.words.at['odims', o]}", "dims")
    arr = f.emit(f"call ptr {f.word('new_array')}(ptr {f.word('array_type')}, ptr {descr}, i32 {t.ndim}, "
                 "ptr {}, ptr null, ptr null, i32 0, ptr null)".format(dims), "out")
    ok, bad = f.label(f"{stem}{o}.ok"), f.label(f"{stem}{o}.bad")
    f.branch(f.emit(f"icmp ne ptr {arr}, null", "c"), ok, bad)
    f.block(bad)
    for a in made:
        f.line(f"call void @Py_DecRef(ptr {a})")
    f.goto("cleanup")
    f.block(ok)
    return arr


def _direct_outputs(f: _Writer, fc: FastCall, ctx: str) -> dict[int, str]:
    """The arrays of the outputs the entry point writes directly: made now, their addresses in
    the frame's slots of those values."""
    made: dict[int, str] = {}
    for o, (t, slot, direct) in enumerate(fc.outputs):
        if direct:
            arr = made[o] = _new_output(f, fc, o, t, "dout", list(made.values()))
            f.line(f"store ptr {f.field(arr, A_DATA, 'ptr')}, ptr {f.emit(f'getelementptr i64, ptr {ctx}, i64 {slot}', 's')}")
    return made


def _outputs(f: _Writer, fc: FastCall, ctx: str, res: str, direct: dict[int, str]) -> None:
    """The outputs (those not written directly: fresh arrays copied out of the frame); the fn's
    result into `res` (null: an error is set)."""
    made = []
    for o, (t, slot, _) in enumerate(fc.outputs):
        if o in direct:
            made.append(direct[o])
            continue
        arr = _new_output(f, fc, o, t, "out", made + [direct[p] for p in direct if p > o])
        src = f.emit(f"load ptr, ptr {f.emit(f'getelementptr i64, ptr {ctx}, i64 {slot}', 's')}", "src")
        nbytes = f.word(("onbytes", o), "i64")
        dst = f.field(arr, A_DATA, "ptr")
        f.line(f"call void @llvm.memcpy.p0.p0.i64(ptr {dst}, ptr {src}, i64 {nbytes}, i1 false)")
        made.append(arr)
    if not made:
        none = f.word("none")
        f.line(f"call void @Py_IncRef(ptr {none})")
        f.line(f"store ptr {none}, ptr {res}")
        return
    tuple_, done = f.label("tuple"), f.label("result")
    if len(made) == 1:
        single, other = f.label("single"), tuple_
        f.branch(f.emit(f"icmp ne i64 {f.word('single', 'i64')}, 0", "c"), single, other)
        f.block(single)
        f.line(f"store ptr {made[0]}, ptr {res}")
        f.goto(done)
    else:
        f.goto(tuple_)
    f.block(tuple_)
    tup = f.emit(f"call ptr @PyTuple_New(i64 {len(made)})", "tup")
    fine, bad = f.label("tuple.ok"), f.label("tuple.bad")
    f.branch(f.emit(f"icmp ne ptr {tup}, null", "c"), fine, bad)
    f.block(bad)
    for a in made:
        f.line(f"call void @Py_DecRef(ptr {a})")
    f.goto(done)
    f.block(fine)
    for o, a in enumerate(made):
        f.emit(f"call i32 @PyTuple_SetItem(ptr {tup}, i64 {o}, ptr {a})", "r")  # (steals the reference)
    f.line(f"store ptr {tup}, ptr {res}")
    f.goto(done)
    f.block(done)


# ---------------------------------------------------------------- the process


def _type_nums(dtype: np.dtype) -> list[int]:
    """numpy's type numbers of the dtypes equal to `dtype` (int64 is both `long` and `longlong`)."""
    return sorted({np.dtype(c).num for c in np.typecodes["All"] if np.dtype(c) == dtype})


def _scalar_types(dtype: np.dtype) -> list[type]:
    """The numpy scalar types whose values are `dtype`'s (np.int64 and np.longlong...)."""
    return sorted({np.dtype(c).type for c in np.typecodes["All"] if np.dtype(c) == dtype}, key=lambda t: t.__name__)


class _Api:
    new_from_descr = 0


_api_cache: _Api | None = None


def _api() -> _Api:
    """numpy's C-API table (`_ARRAY_API`): the address of PyArray_NewFromDescr (entry 94)."""
    global _api_cache
    if _api_cache is None:
        try:
            from numpy._core import _multiarray_umath as mu
        except ImportError:  # numpy 1.x
            from numpy.core import _multiarray_umath as mu
        get = ctypes.pythonapi.PyCapsule_GetPointer
        get.restype, get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
        table = get(mu._ARRAY_API, None)
        api = _Api()
        api.new_from_descr = ctypes.c_void_p.from_address(table + 94 * 8).value
        _api_cache = api
    return _api_cache


_layout_result: bool | None = None


def _layout_ok() -> bool:
    """Whether the offsets the native entry reads are this process's: checked on real objects
    (a debug build of Python, or another numpy, would differ)."""
    global _layout_result
    if _layout_result is None:
        _layout_result = _check_layout()
    return _layout_result


def _check_layout() -> bool:
    if hasattr(sys, "gettotalrefcount") or sys.getsizeof(object()) != 16 or ctypes.sizeof(ctypes.c_void_p) != 8:
        return False
    at = ctypes.c_int64.from_address
    a = np.zeros((3, 5))
    x = 1.5
    checks = [at(id(a) + OB_TYPE).value == id(np.ndarray), at(id(a) + A_DATA).value == a.ctypes.data,
              ctypes.c_int32.from_address(id(a) + A_ND).value == 2,
              [at(at(id(a) + A_DIMS).value + 8 * k).value for k in range(2)] == [3, 5],
              at(id(a) + A_DESCR).value == id(a.dtype),
              ctypes.c_int32.from_address(id(a) + A_FLAGS).value == a.flags.num,
              ctypes.c_double.from_address(id(x) + VALUE).value == 1.5]
    for name in NATIVE_DTYPES:
        d = np.dtype(name)
        checks.append(ctypes.c_int32.from_address(id(d) + D_TYPENUM).value == d.num)
        checks.append(ctypes.c_char.from_address(id(d) + D_BYTEORDER).value == d.byteorder.encode())
        for t in _scalar_types(d):
            s = t(1)
            raw = ctypes.string_at(id(s) + VALUE, d.itemsize)
            checks.append(raw == np.array(1, dtype=d).tobytes())
    if not all(checks):
        return False
    # PyArray_NewFromDescr (API entry 94) makes a (2, 3) f64 array
    new = ctypes.PYFUNCTYPE(ctypes.py_object, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,
                            ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,
                            ctypes.c_void_p)(_api().new_from_descr)
    d = np.dtype(np.float64)
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(d))
    dims = (ctypes.c_int64 * 2)(2, 3)
    made = new(id(np.ndarray), id(d), 2, ctypes.addressof(dims), None, None, 0, None)
    return type(made) is np.ndarray and made.shape == (2, 3) and made.dtype == d and made.flags.c_contiguous


class _MethodDef(ctypes.Structure):
    _fields_ = [("ml_name", ctypes.c_char_p), ("ml_meth", ctypes.c_void_p), ("ml_flags", ctypes.c_int),
                ("ml_doc", ctypes.c_char_p)]


_NAME = ctypes.c_char_p(b"flowml_call")
_defs: dict[int, _MethodDef] = {}  # one static PyMethodDef per module address (they must outlive the callables)


def _new_cfunction(address: int, cfg: _Config):
    """A builtin function calling `address` (METH_FASTCALL | METH_KEYWORDS) with `cfg` as self."""
    md = _defs.get(address)
    if md is None:
        md = _defs[address] = _MethodDef(_NAME.value, address, METH_FASTCALL_KEYWORDS, None)
    new = ctypes.pythonapi.PyCFunction_NewEx
    new.restype, new.argtypes = ctypes.py_object, [ctypes.c_void_p, ctypes.py_object, ctypes.c_void_p]
    cfg.methoddef = md
    return new(ctypes.addressof(md), cfg, None)
