"""Building OpenCL programs from generated source.

Built programs are kept in memory, keyed by (source hash, options, device): the same fused
node compiled twice in a process builds once. Across processes PoCL's own disk cache (see
device.py) makes a rebuild of identical source cheap; pyopencl skips its own binary cache when
the driver caches (`has_src_build_cache`), so we do not add a third one.

A build failure is always a bug in flowml (we generated the source), so it becomes a
FlowInternalError that quotes the build log and the source lines around the first error.
"""

from __future__ import annotations

import collections
import hashlib
import re
import threading
import time
import warnings

from ...errors import FlowInternalError
from .device import context, require_cl

# Precision options, and why: division and sqrt in float32 may be off by 2.5-3 ulp in OpenCL
# unless this flag asks for IEEE rounding; flowml computes what numpy computes. No fast-math:
# it would break the NaN/inf semantics the formulas rely on.
DEFAULT_OPTIONS = ("-cl-fp32-correctly-rounded-divide-sqrt",)

_LOCK = threading.Lock()
_PROGRAMS: dict = {}
_KERNELS: dict = {}

# (what, seconds) of the last real builds (not in-memory hits), for diagnostics and benchmarks
build_times: collections.deque = collections.deque(maxlen=256)


def source_key(source: str, options=DEFAULT_OPTIONS) -> str:
    h = hashlib.sha256(source.encode())
    h.update(b"\0" + " ".join(options).encode())
    return h.hexdigest()


def build_program(source: str, device, options=DEFAULT_OPTIONS, what: str = "kernel"):
    """The built `cl.Program` of `source` for `device` (cached in memory)."""
    cl = require_cl()
    key = (source_key(source, options), device.int_ptr)
    with _LOCK:
        prg = _PROGRAMS.get(key)
        if prg is not None:
            return prg
    t0 = time.perf_counter()
    prg = cl.Program(context(device), source)
    try:
        with warnings.catch_warnings():
            # A non-empty log on success (warnings) is pyopencl's CompilerWarning; the text is
            # kept on the program (get_build_info) for whoever debugs the generated code.
            warnings.simplefilter("ignore", cl.CompilerWarning)
            prg.build(options=list(options), devices=[device])
    except cl.RuntimeError as e:
        try:
            log = prg.get_build_info(device, cl.program_build_info.LOG)
        except cl.Error:
            log = str(e)
        raise build_error(what, source, log or str(e)) from None
    build_times.append((what, time.perf_counter() - t0))
    with _LOCK:
        _PROGRAMS.setdefault(key, prg)
        return _PROGRAMS[key]


def get_kernel(program, name: str):
    """One `cl.Kernel` per (program, name): `program.name` would build a new kernel object on
    every access (and pyopencl warns about it)."""
    cl = require_cl()
    key = (program.int_ptr, name)
    with _LOCK:
        k = _KERNELS.get(key)
        if k is None:
            k = _KERNELS[key] = cl.Kernel(program, name)
        return k


# "error: /tmp/x.cl:3:12: ..." (PoCL) or "<source>:3:12: error: ..." (other clang-based drivers)
_LOC = re.compile(r"error: \S*?:(\d+):(\d+):|:(\d+):(\d+):\s*(?:fatal )?error")


def build_error(what: str, source: str, log: str) -> FlowInternalError:
    """The error for a failed build: the log plus the generated lines around the first error."""
    lines = source.splitlines()
    notes = [f"OpenCL build log:\n{log.strip()}"]
    m = _LOC.search(log)
    if m:
        line, col = (int(g) for g in (m.groups()[:2] if m.group(1) else m.groups()[2:]))
        lo, hi = max(line - 4, 1), min(line + 3, len(lines))
        excerpt = []
        for i in range(lo, hi + 1):
            excerpt.append(f"{'>' if i == line else ' '}{i:5d} | {lines[i - 1]}")
            if i == line:
                excerpt.append(" " * 9 + " " * max(col - 1, 0) + "^")
        notes.append("generated source near the error:\n" + "\n".join(excerpt))
    else:
        notes.append("generated source:\n" + "\n".join(f"{i + 1:5d} | {s}" for i, s in enumerate(lines)))
    if "unknown target CPU" in log:
        notes.append("PoCL's LLVM does not know this CPU; set FLOWML_POCL_CPU to an LLVM CPU name it knows "
                     "(e.g. haswell, skylake-avx512) or install a newer PoCL")
    return FlowInternalError(
        f"the OpenCL C that flowml generated for {what} does not compile; this is a bug in flowml, "
        "please report it with the model that triggered it", notes=notes)
