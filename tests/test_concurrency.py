"""Calling one compiled function from several threads at once.

A fn without updates runs concurrently with no lock around the call: 4 threads x 200 calls
with distinct inputs give exactly the serial results. A fn with updates is serialized per
model (docs/backends.md, "Threads"): concurrent calls end in the state of some serial order.
The switch interval is cut to a microsecond so that threads interleave inside a call (the
native kernels also release the GIL), which is where shared buffers went wrong.
"""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest

import flowml
from helpers import opencl_param

THREADS = 4

MLP = """
input X : f64[N, 16]
param W1 : f64[16, 24] = normal(0, 0.5)
param b1 : f64[24] = uniform(-0.1, 0.1)
param W2 : f64[24, 5] = normal(0, 0.5)
param b2 : f64[5] = uniform(-0.1, 0.1)
h = tanh(X @ W1 + b1)
p = softmax(h @ W2 + b2)
fn predict(X) -> (p, argmax(p, axis=1), sum(h * h, axis=1), max(h), mean(p))
fn hidden(X) -> sum(h * h, axis=1)
"""

COUNTER = """
input x : f64[N]
param calls : f64 = zeros
param total : f64 = zeros
param v : f64[3] = zeros
fn bump(x) -> total {
    calls <- calls + 1
    total <- total + sum(x)
    v <- v + x[0]
}
"""


@pytest.fixture
def interleave():
    """Threads switch (at the next bytecode boundary) every microsecond."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def _run_threads(work, n_threads=THREADS):
    """Run `work(t)` on `n_threads` threads started together; their results, and the first error."""
    barrier = threading.Barrier(n_threads)
    results, errors = [None] * n_threads, []

    def body(t):
        try:
            barrier.wait()
            results[t] = work(t)
        except BaseException as e:  # noqa: BLE001 - re-raised on the main thread
            errors.append(e)

    threads = [threading.Thread(target=body, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]
    return results


def _inputs(t, i, shapes=5):
    rows = 3 + (t * 7 + i) % shapes  # a few sizes of N in turn (on LLVM, each its own buffers)
    return np.random.default_rng(1000 * t + i).normal(size=(rows, 16))


@pytest.mark.parametrize("backend", ["reference", "llvm", opencl_param()])
def test_concurrent_calls_equal_the_serial_results(backend, interleave):
    # OpenCL: a smaller fn (a matmul, a fused kernel, a reduction), fewer calls, one size (PoCL
    # compiles each kernel at its first launch of a work-group size, ~0.3 s a kernel)
    calls, shapes, fn = (200, 5, "predict") if backend != "opencl" else (40, 1, "hidden")
    model = flowml.loads(MLP, backend=backend, seed=3)
    f = model.functions[fn]

    def call(x):  # the outputs as a tuple
        out = f(x)
        return out if isinstance(out, tuple) else (out,)

    inputs = [[_inputs(t, i, shapes) for i in range(calls)] for t in range(THREADS)]
    serial = [[call(x) for x in xs] for xs in inputs]
    concurrent = _run_threads(lambda t: [call(x) for x in inputs[t]])
    for t in range(THREADS):
        for i in range(calls):
            for got, want in zip(concurrent[t][i], serial[t][i]):
                np.testing.assert_array_equal(got, want, err_msg=f"{backend}: thread {t}, call {i}")


@pytest.mark.parametrize("backend", ["reference", "llvm", opencl_param()])
def test_concurrent_updates_end_in_a_serial_state(backend, interleave):
    calls = 200 if backend != "opencl" else 40
    model = flowml.loads(COUNTER, backend=backend)
    # small integers: every order of the additions gives the same float sums exactly
    xs = [[np.full(1 + (t + i) % 4, float(t + 1)) for i in range(calls)] for t in range(THREADS)]
    totals = _run_threads(lambda t: [float(model.bump(x)) for x in xs[t]])
    n = THREADS * calls
    assert float(model.params["calls"]) == n
    assert float(model.params["total"]) == sum(x.sum() for row in xs for x in row)
    np.testing.assert_array_equal(model.params["v"], np.full(3, sum(x[0] for row in xs for x in row)))
    # each call saw the state of some serial order: the totals it returned are all different
    assert len({v for row in totals for v in row}) == n
