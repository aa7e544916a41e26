"""Timing helpers: medians of single calls, and per-call times of calibrated loops."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

Block = Callable[[Any], Any]


def _noblock(out):
    return out


def single_calls(fn: Callable[[], Any], repeats: int, warmup: int = 2,
                 block: Block = _noblock) -> tuple[list[float], Any]:
    """Time `repeats` single calls of fn() after `warmup` calls; return (seconds, last output)."""
    out = None
    for _ in range(warmup):
        out = block(fn())
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = block(fn())
        samples.append(time.perf_counter() - t0)
    return samples, out


def _loop(fn, args, n, block):
    out = None
    t0 = time.perf_counter()
    for _ in range(n):
        out = fn(*args)
    block(out)
    return time.perf_counter() - t0


def per_call(fn: Callable, args: tuple = (), *, min_time: float, repeats: int, warmup: int = 3,
             block: Block = _noblock) -> list[float]:
    """Seconds per call of fn(*args): loops of n calls (n calibrated so a loop lasts about
    min_time), `repeats` loops. Only the last output of a loop is blocked on; callers whose
    calls are independent and asynchronous (JAX) should block inside fn."""
    _loop(fn, args, warmup, block)
    n, t = 1, _loop(fn, args, 1, block)
    while t < min_time / 10 and n < 10**7:
        n *= 10
        t = _loop(fn, args, n, block)
    n = max(1, int(n * min_time / max(t, 1e-9)))
    return [_loop(fn, args, n, block) / n for _ in range(repeats)]


def median(xs: list[float]) -> float:
    return statistics.median(xs)
