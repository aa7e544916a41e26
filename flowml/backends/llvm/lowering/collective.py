"""Collectives (allreduce, allgather, broadcast, rank, world_size) in the entry point.

With one process (no MPI) they are copies. Under MPI the entry point starts the nonblocking
collective (`MPI_Iallreduce`, `MPI_Iallgather`, `MPI_Ibcast`) and waits for it with `MPI_Test`,
watching, as `flowml.distributed` does, for another rank's failure notice (`MPI_Iprobe` on its
error tag): one seen makes the entry point stop with an error code, and the caller raises that
rank's error. MPI's functions and handles (MPICH's are ints) are not symbols of the module —
libmpi is loaded only in runs launched by mpiexec — but frame slots the caller fills from
mpi4py on every call (`world_slots`), zero without MPI, where they are never called.

allgather and broadcast first check (one tiny allreduce of [count, -count] with MAX) that every
rank brings as many elements, so a rank whose batch differs is an error, not garbage.
"""

from __future__ import annotations

import ctypes
import functools
import re

from ....errors import FlowError, FlowRuntimeError
from ....ir.types import resolve_dim
from . import lowers

_MPI_FUNCTIONS = ("Iallreduce", "Iallgather", "Ibcast", "Test", "Iprobe")
_MPI_TYPES = {"float32": "FLOAT", "float64": "DOUBLE", "int32": "INT32_T", "int64": "INT64_T", "byte": "BYTE"}
_MPI_OPS = {"sum": "SUM", "mean": "SUM", "max": "MAX"}
_PEER_FAILED, _MISMATCH = 1, 2


@functools.lru_cache(maxsize=None)
def _libmpi():
    from mpi4py import MPI  # noqa: F401  (loads libmpi into the process)
    with open("/proc/self/maps") as f:
        paths = sorted(set(re.findall(r"(/\S*libmpi[^/\s]*\.so[^/\s]*)", f.read())))
    if not paths:
        raise FlowError("MPI is loaded but its library (libmpi) was not found in the process")
    return ctypes.CDLL(paths[0])


def world_slots(keys) -> dict:
    """The values of the frame's world slots for this call: size, rank, the communicator's
    handle, MPI's function addresses, datatype and op handles (zeros without MPI)."""
    from ....distributed import world
    w = world()
    out = {}
    mpi = getattr(w, "MPI", None)
    for key in keys:
        kind, name = key[1], key[2]
        if kind == "size":
            out[key] = w.size
        elif kind == "rank":
            out[key] = w.rank
        elif mpi is None:
            out[key] = 0
        elif kind == "comm":
            out[key] = mpi._handleof(w.comm)
        elif kind == "fn":
            out[key] = ctypes.cast(getattr(_libmpi(), "MPI_" + name), ctypes.c_void_p).value
        elif kind == "type":
            out[key] = mpi._handleof(getattr(mpi, _MPI_TYPES[name]))
        elif kind == "op":
            out[key] = mpi._handleof(getattr(mpi, _MPI_OPS[name]))
    return out


def _world(w, kind, name=""):
    key = ("world", kind, name)
    w.program.world_keys.add(key)
    return key


def _i32(fn, value):
    return fn.emit(f"trunc i64 {value} to i32", "w")


def _wait_helper(w) -> str:
    """`i32 @flowml.mpi.wait(ptr ctx, ptr request)`: 0 when the request completed, 1 when another
    rank's failure notice arrived first."""
    test = w.program.slot_of(_world(w, "fn", "Test"))
    probe = w.program.slot_of(_world(w, "fn", "Iprobe"))
    comm = w.program.slot_of(_world(w, "comm"))
    from ....distributed import _ERROR_TAG
    w.helper("flowml.mpi.wait", f"""define internal i32 @flowml.mpi.wait(ptr %ctx, ptr %req) {{
entry:
  %flag = alloca i32, align 4
  %status = alloca [16 x i64], align 8
  %ptest = getelementptr i64, ptr %ctx, i64 {test}
  %test = load ptr, ptr %ptest
  %pprobe = getelementptr i64, ptr %ctx, i64 {probe}
  %probe = load ptr, ptr %pprobe
  %pcomm = getelementptr i64, ptr %ctx, i64 {comm}
  %comm64 = load i64, ptr %pcomm
  %comm = trunc i64 %comm64 to i32
  br label %loop
loop:
  %t = call i32 %test(ptr %req, ptr %flag, ptr %status)
  %done = load i32, ptr %flag
  %ok = icmp ne i32 %done, 0
  br i1 %ok, label %finished, label %probe.notice
probe.notice:
  %p = call i32 %probe(i32 -2, i32 {_ERROR_TAG}, i32 %comm, ptr %flag, ptr %status)
  %notice = load i32, ptr %flag
  %failed = icmp ne i32 %notice, 0
  br i1 %failed, label %peer, label %loop
peer:
  ret i32 1
finished:
  ret i32 0
}}""")
    return "@flowml.mpi.wait"


def _peer_failed(graph, node, info, env):
    from ....distributed import world
    return world().take_failure_notice()


def _wait(w, n, start_call) -> None:
    """Start a collective (`start_call(request_ptr)` emits the call) and wait for it."""
    fn = w.fn
    req = fn.var("[4 x i64]")
    start_call(req)
    rc = fn.emit(f"call i32 {_wait_helper(w)}(ptr %ctx, ptr {req})", "rc")
    w.fail_if(fn.emit(f"icmp ne i32 {rc}, 0", "c"), n, _peer_failed)


def _mpi(fn, w, name):
    return fn.load_slot(_world(w, "fn", name))


def _copy(w, dst, src, nbytes):
    w.helper("llvm.memcpy", "declare void @llvm.memcpy.p0.p0.i64(ptr, ptr, i64, i1)")
    w.fn.line(f"call void @llvm.memcpy.p0.p0.i64(ptr {dst}, ptr {src}, i64 {nbytes}, i1 false)")


def _branch_on_world(w):
    """(then-label code for one process, MPI code): emits `if size == 1 ... else ...` blocks and
    returns a context: the caller emits the one-process code, then calls `mpi()`, then `end()`."""
    fn = w.fn
    size = fn.load_slot(_world(w, "size"), "i64")
    alone = fn.emit(f"icmp eq i64 {size}, 1", "c")
    one, many, done = fn.label("one"), fn.label("mpi"), fn.label("coll")
    fn.line(f"br i1 {alone}, label %{one}, label %{many}")
    fn.block(one)

    def mpi():
        fn.line(f"br label %{done}")
        fn.block(many)

    def end():
        fn.line(f"br label %{done}")
        fn.block(done)
    return size, mpi, end


def _mpi_dtype(t) -> str:
    """The dtype's name, which MPI has a datatype for (else the node is a host step)."""
    if t.dtype.name not in _MPI_TYPES:
        from . import HostStep
        raise HostStep(f"no MPI datatype for {t.dtype}")
    return t.dtype.name


def _iallreduce(w, n, send, recv, count, dt, reduction) -> None:
    """`MPI_Iallreduce(send, recv, count, dt, reduction)` on the run's communicator, waited for."""
    fn = w.fn
    dtype = _i32(fn, fn.load_slot(_world(w, "type", dt), "i64"))
    op = _i32(fn, fn.load_slot(_world(w, "op", reduction), "i64"))
    comm = _i32(fn, fn.load_slot(_world(w, "comm"), "i64"))
    f = _mpi(fn, w, "Iallreduce")
    _wait(w, n, lambda req: fn.line(f"call i32 {f}(ptr {send}, ptr {recv}, i32 {count}, i32 {dtype}, "
                                    f"i32 {op}, i32 {comm}, ptr {req})"))


@lowers("allreduce")
def lower_allreduce(w, n):
    (x,) = w.operands(n)
    t = w.type(n)
    dt = _mpi_dtype(t)
    reduction = w.attrs(n)["reduction"]
    fn = w.fn
    count = w.size(t.shape)
    src, out = w.ptr(x), w.ptr(n)
    size, mpi, end = _branch_on_world(w)
    _copy(w, out, src, fn.mul(count, str(t.dtype.itemsize)))
    mpi()
    _iallreduce(w, n, src, out, _i32(fn, count), dt, reduction)
    if reduction == "mean":
        ft = {"float32": "float", "float64": "double"}[dt]
        denom = fn.emit(f"sitofp i64 {size} to {ft}", "m")
        with fn.loop("0", count, "mean") as i:
            v = fn.load(ft, out, i)
            fn.store(ft, fn.emit(f"fdiv {ft} {v}, {denom}", "m"), out, i)
    end()
    w.note("copy (one process) / MPI_Iallreduce")


def _same_count(w, n, count, describe):
    """All ranks bring `count` elements: an allreduce MAX of [count, -count] (on the stack)."""
    fn = w.fn
    send, pair = fn.var("[2 x i64]"), fn.var("[2 x i64]")
    fn.store("i64", count, send, "0")
    fn.store("i64", fn.emit(f"sub i64 0, {count}", "neg"), send, "1")
    _iallreduce(w, n, send, pair, "2", "int64", "max")
    most = fn.load("i64", pair, "0")
    least = fn.emit(f"sub i64 0, {fn.load('i64', pair, '1')}", "neg")
    w.fail_if(fn.emit(f"icmp ne i64 {most}, {least}", "c"), n, describe)


# (Error describers are module-level functions or their partials: a lowered program pickles for
# the warm model cache.)
def _shape_mismatch(what, graph, node, info, env):
    from ....distributed import world
    x = graph.operands(node)[0]
    t = graph.type(x)
    shape = tuple(resolve_dim(d, env) for d in t.shape)
    shapes = world().gather_objects(shape)
    return FlowRuntimeError(f"{what} needs the same shape on every rank, got "
                            + ", ".join(f"rank {r}: {t.dtype}{list(s)}" for r, s in enumerate(shapes)),
                            graph.loc(node))


def _wrong_world_size(built_for, graph, node, info, env):
    return FlowRuntimeError(f"allgather failed: the graph was built for {built_for} rank(s) but runs on {info[0]}",
                            graph.loc(node))


def _bad_root(root, graph, node, info, env):
    return FlowRuntimeError(f"broadcast failed: root {root} is not a rank of a run with {info[0]} rank(s)",
                            graph.loc(node))


@lowers("allgather")
def lower_allgather(w, n):
    (x,) = w.operands(n)
    tx = w.type(x)
    dt = _mpi_dtype(tx)
    fn = w.fn
    built_for = w.attrs(n)["size"]
    size = fn.load_slot(_world(w, "size"), "i64")
    w.fail_if(fn.emit(f"icmp ne i64 {size}, {built_for}", "c"), n, functools.partial(_wrong_world_size, built_for),
              size)
    count = w.size(tx.shape)
    src, out = w.ptr(x), w.ptr(n)
    _, mpi, end = _branch_on_world(w)
    _copy(w, out, src, fn.mul(count, str(tx.dtype.itemsize)))
    mpi()
    _same_count(w, n, count, functools.partial(_shape_mismatch, "allgather"))
    dtype = _i32(fn, fn.load_slot(_world(w, "type", dt), "i64"))
    comm = _i32(fn, fn.load_slot(_world(w, "comm"), "i64"))
    c32 = _i32(fn, count)
    f = _mpi(fn, w, "Iallgather")
    _wait(w, n, lambda req: fn.line(f"call i32 {f}(ptr {src}, i32 {c32}, i32 {dtype}, ptr {out}, i32 {c32}, "
                                    f"i32 {dtype}, i32 {comm}, ptr {req})"))
    end()
    w.note("copy (one process) / MPI_Iallgather")


@lowers("broadcast")
def lower_broadcast(w, n):
    (x,) = w.operands(n)
    t = w.type(n)
    fn = w.fn
    root = int(w.attrs(n)["root"])
    size = fn.load_slot(_world(w, "size"), "i64")
    w.fail_if(fn.emit(f"icmp sle i64 {size}, {root}", "c"), n, functools.partial(_bad_root, root), size)
    count = w.size(t.shape)
    nbytes = fn.mul(count, str(t.dtype.itemsize))
    src, out = w.ptr(x), w.ptr(n)
    _copy(w, out, src, nbytes)
    _, mpi, end = _branch_on_world(w)
    mpi()
    _same_count(w, n, count, functools.partial(_shape_mismatch, "broadcast"))
    byte = _i32(fn, fn.load_slot(_world(w, "type", "byte"), "i64"))
    comm = _i32(fn, fn.load_slot(_world(w, "comm"), "i64"))
    f = _mpi(fn, w, "Ibcast")
    _wait(w, n, lambda req: fn.line(f"call i32 {f}(ptr {out}, i32 {_i32(fn, nbytes)}, i32 {byte}, i32 {root}, "
                                    f"i32 {comm}, ptr {req})"))
    end()
    w.note("copy (one process) / MPI_Ibcast")


@lowers("rank", "world_size")
def lower_world_fact(w, n):
    fn = w.fn
    v = fn.load_slot(_world(w, "rank" if w.graph.op(n).name == "rank" else "size"), "i64")
    fn.store("i64", v, w.ptr(n), "0")
    w.note("read from the frame")

