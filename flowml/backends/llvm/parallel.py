"""A native parallel-for over pthreads, and the thread-count policy.

`flowml_parallel_for(ptr fn, ptr ctx, i64 n, i64 nthreads)` splits [0, n) into
t = clamp(nthreads, 1, min(n, MAX_THREADS)) contiguous chunks whose sizes differ by at most one,
starts t-1 pthreads running `fn(ctx, start, end)` on chunks 1..t-1, runs chunk 0 on the calling
thread, and joins. `fn` must be `void (ptr, i64, i64)` with the C calling convention. If
pthread_create fails, that chunk runs on the calling thread instead (slower, still correct).

Threads are created per call (tens of microseconds each): callers should only go parallel for
work well above that, e.g. by choosing nthreads with `threads_for`.

pthread_create/pthread_join are in libc.so.6 itself since glibc 2.34 (2.36 here), so they resolve
in the Python process with no extra library.

Generated modules either `declare void @flowml_parallel_for(ptr, ptr, i64, i64)` and call
`ensure_symbols()` (one shared copy, compiled once per process), or embed
`parallel_for_ir(linkage="internal")` so that their cached object code is self-contained.
"""

from __future__ import annotations

import ctypes
import os
import threading

import llvmlite.binding as llvm

from ...errors import FlowInternalError

NAME = "flowml_parallel_for"
MAX_THREADS = 256  # bounds the stack arrays; far above any sensible thread count
DECLARATION = f"declare void @{NAME}(ptr, ptr, i64, i64)"


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask, which containers and taskset narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def num_threads() -> int:
    """Threads to use: `FLOWML_NUM_THREADS` when it is a positive integer, else `cpu_count()`."""
    env = os.environ.get("FLOWML_NUM_THREADS", "").strip()
    if env:
        try:
            n = int(env)
            if n >= 1:
                return min(n, MAX_THREADS)
        except ValueError:
            pass
    return cpu_count()


def threads_for(n_items: int, min_items_per_thread: int = 1 << 16) -> int:
    """How many threads to use for `n_items` units of work: num_threads(), but never so many
    that a thread gets fewer than `min_items_per_thread` (thread start-up costs ~10-50 us)."""
    return max(1, min(num_threads(), n_items // max(1, min_items_per_thread)))


def parallel_for_ir(linkage: str = "") -> str:
    """LLVM IR text defining `flowml_parallel_for` (and its internal thread entry point)."""
    lk = f"{linkage} " if linkage else ""
    return f"""
%flowml.pf.task = type {{ ptr, ptr, i64, i64 }}

declare i32 @pthread_create(ptr, ptr, ptr, ptr)
declare i32 @pthread_join(i64, ptr)

; thread entry point: runs task->fn(task->ctx, task->start, task->end)
define internal ptr @{NAME}.thunk(ptr %task) {{
entry:
  %fn = load ptr, ptr %task, align 8
  %pctx = getelementptr inbounds %flowml.pf.task, ptr %task, i32 0, i32 1
  %ctx = load ptr, ptr %pctx, align 8
  %pstart = getelementptr inbounds %flowml.pf.task, ptr %task, i32 0, i32 2
  %start = load i64, ptr %pstart, align 8
  %pend = getelementptr inbounds %flowml.pf.task, ptr %task, i32 0, i32 3
  %end = load i64, ptr %pend, align 8
  call void %fn(ptr %ctx, i64 %start, i64 %end)
  ret ptr null
}}

define {lk}void @{NAME}(ptr %fn, ptr %ctx, i64 %n, i64 %nthreads) {{
entry:
  %empty = icmp sle i64 %n, 0
  br i1 %empty, label %done, label %setup

setup:
  %lt1 = icmp slt i64 %nthreads, 1
  %t0 = select i1 %lt1, i64 1, i64 %nthreads
  %ltn = icmp slt i64 %n, %t0
  %t1 = select i1 %ltn, i64 %n, i64 %t0
  %big = icmp sgt i64 %t1, {MAX_THREADS}
  %t = select i1 %big, i64 {MAX_THREADS}, i64 %t1
  ; chunk i is [i*q + min(i, r), (i+1)*q + min(i+1, r)): sizes differ by at most one, no overflow
  %q = udiv i64 %n, %t
  %r = urem i64 %n, %t
  %tasks = alloca %flowml.pf.task, i64 %t, align 8
  %tids = alloca i64, i64 %t, align 8
  %ok = alloca i8, i64 %t, align 1
  br label %spawn.head

spawn.head:
  %i = phi i64 [ 1, %setup ], [ %i.next, %spawn.next ]
  %more = icmp slt i64 %i, %t
  br i1 %more, label %spawn, label %main

spawn:
  %i.q = mul i64 %i, %q
  %i.lt = icmp slt i64 %i, %r
  %i.min = select i1 %i.lt, i64 %i, i64 %r
  %start = add i64 %i.q, %i.min
  %i1 = add i64 %i, 1
  %i1.q = mul i64 %i1, %q
  %i1.lt = icmp slt i64 %i1, %r
  %i1.min = select i1 %i1.lt, i64 %i1, i64 %r
  %end = add i64 %i1.q, %i1.min
  %task = getelementptr inbounds %flowml.pf.task, ptr %tasks, i64 %i
  store ptr %fn, ptr %task, align 8
  %tctx = getelementptr inbounds %flowml.pf.task, ptr %task, i32 0, i32 1
  store ptr %ctx, ptr %tctx, align 8
  %tstart = getelementptr inbounds %flowml.pf.task, ptr %task, i32 0, i32 2
  store i64 %start, ptr %tstart, align 8
  %tend = getelementptr inbounds %flowml.pf.task, ptr %task, i32 0, i32 3
  store i64 %end, ptr %tend, align 8
  %tid = getelementptr inbounds i64, ptr %tids, i64 %i
  %rc = call i32 @pthread_create(ptr %tid, ptr null, ptr @{NAME}.thunk, ptr %task)
  %created = icmp eq i32 %rc, 0
  %okp = getelementptr inbounds i8, ptr %ok, i64 %i
  %created8 = zext i1 %created to i8
  store i8 %created8, ptr %okp, align 1
  br i1 %created, label %spawn.next, label %spawn.failed

spawn.failed:                          ; no thread: run this chunk here
  %unused = call ptr @{NAME}.thunk(ptr %task)
  br label %spawn.next

spawn.next:
  %i.next = add i64 %i, 1
  br label %spawn.head

main:                                  ; chunk 0 on the calling thread
  %r.pos = icmp sgt i64 %r, 0
  %extra = zext i1 %r.pos to i64
  %end0 = add i64 %q, %extra
  call void %fn(ptr %ctx, i64 0, i64 %end0)
  br label %join.head

join.head:
  %j = phi i64 [ 1, %main ], [ %j.next, %join.next ]
  %jmore = icmp slt i64 %j, %t
  br i1 %jmore, label %join.check, label %done

join.check:
  %jokp = getelementptr inbounds i8, ptr %ok, i64 %j
  %jok = load i8, ptr %jokp, align 1
  %jcreated = icmp ne i8 %jok, 0
  br i1 %jcreated, label %join, label %join.next

join:
  %jtidp = getelementptr inbounds i64, ptr %tids, i64 %j
  %jtid = load i64, ptr %jtidp, align 8
  %jrc = call i32 @pthread_join(i64 %jtid, ptr null)
  br label %join.next

join.next:
  %j.next = add i64 %j, 1
  br label %join.head

done:
  ret void
}}
"""


_lock = threading.Lock()
_runtime = None


def ensure_symbols() -> int:
    """Compile the shared `flowml_parallel_for` once per process and bind its name for the JIT.
    Returns its address."""
    global _runtime
    from .cache import compile_cached
    with _lock:
        if _runtime is None:
            _runtime = compile_cached(parallel_for_ir(), "parallel-runtime", name="flowml_parallel_runtime")
            llvm.add_symbol(NAME, _runtime.address(NAME))
        return _runtime.address(NAME)


_PF_TYPE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64)
_pf = None


def parallel_for(fn_address: int, ctx_address: int, n: int, nthreads: int | None = None) -> None:
    """Run native `fn(ctx, start, end)` over [0, n) from Python (GIL released while it runs)."""
    global _pf
    if not fn_address:
        raise FlowInternalError("parallel_for: null function pointer")
    if _pf is None:
        _pf = _PF_TYPE(ensure_symbols())
    _pf(fn_address, ctx_address, n, num_threads() if nthreads is None else nthreads)
