"""The LLVM backend's native entry points: matmul through BLAS by pointer (batched, broadcast,
vectors, transpose flags, integer and mixed dtypes on a loop kernel), the plan, error codes
from native code, determinism."""

from __future__ import annotations

import numpy as np
import pytest

import flowml
from helpers import run_cli

MATMULS = """
input a : f64[B, M, K]
input b : f64[K, N]
input c : f64[B, K, N]
input u : f64[K]
input s : f32[M, K]
input t : f32[N, K]
input i : i64[M, K]
input j : i64[K, N]
input one : f64[1, K, N]
fn batched(a, c) -> a @ c
fn broadcast(a, b) -> a @ b
fn broadcast_one(a, one) -> a @ one
fn vectors(a, u, b) -> (a @ u, u @ b, u @ u)
fn flags(s, t) -> (s @ t.T, t @ s.T, s.T @ s)
fn ints(i, j) -> i @ j
fn mixed(i, b) -> i @ b
"""


def _models(src):
    return flowml.loads(src, backend="llvm"), flowml.loads(src, backend="reference")


@pytest.mark.parametrize("sizes", [(2, 3, 4, 5), (1, 1, 1, 1), (3, 7, 1, 2), (2, 0, 3, 4), (2, 3, 0, 4)])
def test_matmuls_through_blas_and_loops_equal_the_reference(sizes):
    B, M, K, N = sizes
    rng = np.random.default_rng(0)
    args = {"a": rng.standard_normal((B, M, K)), "b": rng.standard_normal((K, N)),
            "c": rng.standard_normal((B, K, N)), "u": rng.standard_normal(K),
            "s": rng.standard_normal((M, K)).astype(np.float32), "t": rng.standard_normal((N, K)).astype(np.float32),
            "i": rng.integers(-5, 5, (M, K)), "j": rng.integers(-5, 5, (K, N)), "one": rng.standard_normal((1, K, N))}
    model, ref = _models(MATMULS)
    for name, f in model.functions.items():
        inputs = [args[n] for n in f.input_names]
        got, want = f(*inputs), ref.functions[name](*inputs)
        got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
        for g, w in zip(got, want):
            assert g.dtype == w.dtype and g.shape == w.shape, name
            np.testing.assert_allclose(g, w, rtol=1e-5 if g.dtype == np.float32 else 1e-12, atol=1e-5, err_msg=name)
        assert not f._executable.host_steps(), (name, f._executable.host_steps())


def test_transposes_read_by_matmul_are_folded_into_gemm_flags():
    model = flowml.loads(MATMULS, backend="llvm")
    ex = model.flags._executable
    details = [s.detail for s in ex.program.steps if s.kind == "native"]
    assert {"BLAS sgemm (NT)", "BLAS sgemm (TN)"} <= set(details), details
    transposes = [s for s in ex.program.steps if ex.graph.op(s.node).name == "transpose"]
    assert transposes and all(s.kind == "none" for s in transposes)  # no transpose is copied
    assert model.ints._executable.program.steps[-1].detail.startswith("native loop")


def test_emit_plan_lists_every_step_and_names_host_steps(tmp_path):
    r = run_cli("compile", "examples/mlp.flow", "--emit", "plan", "--fn", "train")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("fn train: ") and "native call" in lines[0]
    assert lines[0] == "fn train: 1 native call, nothing on the host"  # every op of mlp.flow is lowered
    lenet = run_cli("compile", "examples/lenet.flow", "--emit", "plan", "--fn", "train").stdout.splitlines()[0]
    assert lenet == "fn train: 1 native call, nothing on the host"  # convolutions and pooling too
    # the weight updates are gemm calls (flowml/passes/gemm.py), the backward products matmuls
    assert any("gemm" in line and "BLAS dgemm (TN) adding beta * c" in line for line in lines)
    assert any("matmul" in line and "BLAS dgemm (NT)" in line for line in lines)
    assert any("transpose" in line and "folded" in line for line in lines)
    for line in lines[1:]:
        if " HOST " in line:
            assert line.split(" HOST ")[1].strip(), f"a host step without its reason: {line}"
        assert "mlp.flow:" in line  # every step has its source line


def test_the_plan_names_a_wrapped_op_as_a_host_step():
    running_sum = flowml.op(np.cumsum, lambda t, axis: t, name="running_sum")
    model = flowml.loads("input x : f64[N]\nfn f(x) -> running_sum(exp(x), axis=0) * 2\n", backend="llvm",
                         ops={"running_sum": running_sum})
    ex = model.f._executable
    assert {ex.graph.op(n).name: why for n, why in ex.host_steps().items()} == \
        {"running_sum": "a wrapped Python function (flowml.op)"}
    np.testing.assert_allclose(model.f(np.arange(3.0)), np.cumsum(np.exp(np.arange(3.0))) * 2)


def test_a_max_over_an_empty_axis_is_a_located_error_from_native_code():
    src = "input x : f64[N, M]\nfn f(x) -> max(x * 2, axis=1)\n"
    model = flowml.loads(src, backend="llvm", file="empty.flow")
    np.testing.assert_array_equal(model.f(np.ones((2, 3))), [2, 2])
    with pytest.raises(flowml.FlowRuntimeError) as info:
        model.f(np.ones((2, 0)))
    assert "empty" in str(info.value) and info.value.loc.line == 2
    assert model.f(np.ones((0, 3))).shape == (0,)  # no rows: nothing to reduce, no error (as numpy)


def test_full_sums_give_the_same_bits_on_every_call_and_thread_count(monkeypatch):
    src = "input x : f32[N]\nfn f(x) -> sum(x * x)\n"
    x = np.random.default_rng(1).standard_normal(1 << 20).astype(np.float32)
    results = set()
    for threads in ("1", "2"):
        monkeypatch.setenv("FLOWML_NUM_THREADS", threads)
        model = flowml.loads(src, backend="llvm")
        results |= {model.f(x).tobytes() for _ in range(3)}
    assert len(results) == 1


def test_random_draws_are_native_and_bit_identical_with_the_reference():
    src = """
input x : f64[N]
fn f(x) -> (normal(shape=(N, 3)), uniform(shape=(N,)), normal(shape=(N,), dtype=f32),
            uniform(-1, 2, shape=(7,), dtype=f32))
"""
    native, ref = flowml.loads(src, backend="llvm", seed=5), flowml.loads(src, backend="reference", seed=5)
    x = np.zeros(70001)  # large enough to split across threads
    for _ in range(2):  # fresh numbers each call, the same on both
        for got, want in zip(native.f(x), ref.f(x)):
            assert got.dtype == want.dtype and np.array_equal(got, want)
    assert not native.f._executable.host_steps()


def test_derived_dims_are_computed_from_the_dims_they_come_from():
    """`N-1` of a slice, `arange(1,N,2)`, `K+K` of a concatenation: known once N and K are, on
    the reference backend (even where a gradient needs one before any value has it) and natively."""
    src = """
input x : f64[N, 4]
input i : i64[K]
input v : f64[K]
fn g(x, i) -> grad(sum(x[1:, i] ** 2), x)
fn a(x) -> arange(1, N, 2) * 2
fn c(v) -> grad(sum(concatenate(v, v * v) * 1.5), v)
"""
    x, i = np.arange(20.0).reshape(5, 4), np.array([0, 2, 2])
    want_g = np.zeros_like(x)
    np.add.at(want_g, (slice(1, None), i), 2 * x[1:][:, i])
    for backend in ("reference", "llvm"):
        m = flowml.loads(src, backend=backend)
        np.testing.assert_array_equal(m.g(x, i), want_g)
        np.testing.assert_array_equal(m.a(x), [2, 6])
        np.testing.assert_allclose(m.c(np.array([1.0, 2.0, 3.0])), 1.5 + 3.0 * np.array([1.0, 2.0, 3.0]))
