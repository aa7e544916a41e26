"""Array sizes checked before they are allocated, so an array too big for the machine is a
located error saying how many bytes it needs, not numpy's MemoryError or its 'array is too big'.

Sizes are Python ints (no overflow); a shape bigger than the memory there is (the host's
physical memory, or what one OpenCL buffer may hold on the device) cannot be allocated.
"""

from __future__ import annotations

import functools
import os
import sys

from .errors import FlowError, FlowRuntimeError, Loc
from .ir.types import Sym, TensorType

_UNITS = ("B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB", "RB", "QB")


def human_bytes(n: int) -> str:
    """`n` bytes in decimal units to two significant figures or more: 8 PB, 1.2 GB, 800 B."""
    value, unit = float(n), 0
    while value >= 999.5 and unit < len(_UNITS) - 1:
        value /= 1000
        unit += 1
    if unit == 0:
        return f"{n} B"
    return f"{value:.2g} {_UNITS[unit]}" if value < 10 else f"{value:.0f} {_UNITS[unit]}"


@functools.cache
def host_memory() -> int:
    """The host's physical memory in bytes (numpy's largest array where it cannot be read)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return sys.maxsize


def nbytes(shape, itemsize: int) -> int:
    size = itemsize
    for d in shape:
        size *= int(d)
    return size


def _dims(t: TensorType, env: dict[str, int]) -> tuple[int, ...] | None:
    """`t`'s shape in `env`, or None while a dim is not bound yet (a derived dim such as a
    data-dependent length is bound when its value is computed)."""
    try:
        return tuple(d.resolve(env) if isinstance(d, Sym) else d for d in t.shape)
    except KeyError:
        return None


def check_param(name: str, t: TensorType, loc: Loc | None) -> None:
    """A param's value is made when the model loads: one larger than the host's memory is an
    error at its declaration."""
    need = nbytes(t.shape, t.dtype.itemsize)
    limit = host_memory()
    if need > limit:
        raise FlowError(f"param '{name}' ({t}) needs {human_bytes(need)}, more than this machine's "
                        f"memory ({human_bytes(limit)})", loc)


def check_value(graph, n: int, env: dict[str, int], limit: int | None = None, where: str | None = None) -> None:
    """Node `n`'s value, about to be allocated, must fit in `limit` bytes: the host's memory by
    default, else what `where` (a phrase such as "one buffer of the OpenCL device X") holds."""
    t = graph.type(n)
    dims = _dims(t, env)
    if dims is None:
        return
    need = nbytes(dims, t.dtype.itemsize)
    if limit is None:
        limit, where = host_memory(), "this machine's memory"
    if need > limit:
        a, b = human_bytes(need), human_bytes(limit)
        if a == b:  # (just over: the exact counts say which is bigger)
            a, b = f"{need:,} bytes", f"{limit:,} bytes"
        raise too_big(graph, n, env, f"needs {a}, more than {where} ({b})")


def too_big(graph, n: int, env: dict[str, int], needs: str) -> FlowRuntimeError:
    """The located error for node `n`'s value: what it is (its name, or the expression the
    caret points at), its type with the dims of this call, and `needs`."""
    t = graph.type(n)
    name = graph.name(n)
    what = f"'{name}'" if name else "the value computed here"
    bound = ", ".join(f"{s}={env[s]}" for s in sorted(t.symbols()) if s in env)
    return FlowRuntimeError(f"{what} ({t}{' with ' + bound if bound else ''}) {needs}", graph.loc(n))


def allocation_failed(graph, n: int, env: dict[str, int]) -> FlowRuntimeError:
    """A MemoryError while computing node `n` (its value fitted in memory, but not in what was
    free): the same located error with the bytes it needed."""
    t = graph.type(n)
    dims = _dims(t, env)
    need = f"{human_bytes(nbytes(dims, t.dtype.itemsize))}, " if dims is not None else ""
    return too_big(graph, n, env, f"needs {need}more memory than was free")
