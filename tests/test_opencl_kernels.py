"""OpenCL kernels (flowml/backends/opencl) against the numpy reference of each construct.

Fused bodies are built by hand and compared with `flowml.ir.fused.fused.impl`; argmax, gather,
scatter-add and matmul with numpy. Tolerances: exact for arithmetic, comparisons, selects and
casts (division and sqrt are built correctly rounded); for library calls, the ulp bounds OpenCL
guarantees (OpenCL C spec, "relative error as ulp": exp/log ≤ 3, log1p ≤ 2, expm1 ≤ 3, tanh ≤ 5,
sin/cos ≤ 4, erf/erfc/pow ≤ 16) plus 1 for numpy's own rounding, and a few more for formulas
that chain calls (sigmoid, softplus).

PoCL builds cost ~0.1-0.8 s and each kernel's first launch per work-group size another ~50 ms,
so cases are batched: all ops of a dtype are kernels of one program (`compile_fused_many`).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from flowml.backends import scalar
from helpers import ulp_distance
from flowml.errors import FlowError, FlowInternalError, FlowRuntimeError
from flowml.ir import ops as P
from flowml.ir.fused import Instr, fused
from flowml.ir.types import TensorType, dtype_of

cl = pytest.importorskip("pyopencl")

from flowml.backends.opencl import build, clc, codegen, device as D  # noqa: E402
from flowml.backends.opencl import runtime as R  # noqa: E402


@pytest.fixture(scope="module")
def dev():
    try:
        return D.select_device()
    except FlowError as e:  # no OpenCL driver at all: nothing here can run
        pytest.skip(f"no OpenCL device: {e}")


RNG = np.random.default_rng(1234)
F32, F64, I32, I64, B = "float32", "float64", "int32", "int64", "bool"


def _t(a) -> TensorType:
    return TensorType(dtype_of(a.dtype), tuple(a.shape))


def reference(arrays, body, reduce=None, shape=None):
    if shape is None:
        shape = np.broadcast_shapes(*(a.shape for a in arrays))
    with np.errstate(all="ignore"):
        return fused.impl(*arrays, body=tuple(body), reduce=reduce, shape=tuple(shape))


def out_type(body, arrays, reduce=None):
    dt = clc.dtype_name(body[-1].dtype) if body else arrays[0].dtype.name
    if reduce is not None:
        dt = codegen.acc_dtype(reduce[0], dt)
    return TensorType(dtype_of(dt), ())


def run_batch(dev, cases, prefix):
    """cases: (arrays, body, reduce) -> list of (device result as numpy, reference)."""
    nodes = [([_t(a) for a in arrays], out_type(body, arrays, reduce), tuple(body), reduce)
             for arrays, body, reduce in cases]
    kernels = R.compile_fused_many(nodes, dev, prefix=prefix)
    results = []
    for k, (arrays, body, reduce) in zip(kernels, cases):
        results.append((k(*arrays).get(), reference(arrays, body, reduce)))
    return results


# ----------------------------------------------------------------- comparing


def check(label, got, want, ulps=0, inputs=()):
    """Problems found (a list of strings) comparing a kernel result with the reference."""
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape or got.dtype != want.dtype:
        return [f"{label}: got {got.dtype}{got.shape}, want {want.dtype}{want.shape}"]
    if got.size == 0:
        return []
    if got.dtype.kind == "f":
        d = ulp_distance(got, want)
        # both below the smallest normal: a formula that keeps a denormal (sigmoid(-100) in
        # float32 is 3.8e-44) where numpy's float32 rounding flushed it to 0 is not an error
        tiny = np.finfo(got.dtype).tiny
        bad = (d > ulps) & ~((np.abs(got) < tiny) & (np.abs(want) < tiny))
    else:
        bad = got != want
        d = bad.astype(float)
    if not bad.any():
        return []
    i = np.unravel_index(np.argmax(np.where(bad, d, -1)), got.shape)
    at = ", ".join(f"{np.broadcast_to(x, got.shape)[i]!r}" for x in inputs)
    return [f"{label}: {int(bad.sum())} of {got.size} differ (allowed {ulps} ulp); worst at inputs ({at}): "
            f"got {got[i]!r}, want {want[i]!r}, {d[i]} ulp"]


# ----------------------------------------------------------------- literals (no device)


def test_literals_are_typed_and_exact():
    assert clc.literal(1, F32) == "1.0f"
    assert clc.literal(1, F64) == "1.0"
    assert clc.literal(-0.0, F32) == "(-0.0f)"
    assert clc.literal(float("nan"), F32) == "((float)NAN)"
    assert clc.literal(float("-inf"), F64) == "(-(double)INFINITY)"
    assert clc.literal(0.1, F32) == "0.10000000149011612f"  # the float32 nearest 0.1, exactly
    assert clc.literal(-(2 ** 63), I64) == "(-9223372036854775807L-1L)"
    assert clc.literal(-(2 ** 31), I32) == "(-2147483647-1)"
    assert clc.literal(5, I64) == "5L"
    assert clc.literal(True, B) == "1"


# ----------------------------------------------------------------- elementwise ops

FLOAT_SPECIALS = [0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 2.0, -2.0, 3.0, -3.0, 0.1, -0.1, 1e-3, 1e-7, 7.25, -7.25,
                  20.0, -20.0, 88.0, -88.0, 100.0, -100.0, 710.0, -745.0, 1e10, -1e10, 1e30, -1e30,
                  np.inf, -np.inf, np.nan]
BINARY_SPECIALS = [0.0, -0.0, 1.0, -1.0, 0.5, -2.0, 3.0, -7.25, 1e-3, 100.0, 1e30, np.inf, -np.inf, np.nan]

# max ulp against numpy per op (see the module docstring); absent: exact
ULPS = {"exp": 4, "log": 4, "log1p": 3, "expm1": 4, "tanh": 6, "sin": 5, "cos": 5, "erf": 17, "erfc": 17,
        "pow": 17, "sigmoid": 8, "softplus": 8, "log2": 4, "log10": 4, "tan": 6, "arcsin": 5, "arccos": 5,
        "arctan": 6, "sinh": 5, "cosh": 5, "arcsinh": 5, "arccosh": 5, "arctanh": 6, "arctan2": 7, "hypot": 5}
UNARY_FLOAT = ["neg", "exp", "log", "log1p", "expm1", "sqrt", "tanh", "sin", "cos", "erf", "erfc", "sigmoid",
               "softplus", "abs", "sign", "relu", "not", "stop_gradient", "log2", "log10", "tan", "arcsin",
               "arccos", "arctan", "sinh", "cosh", "arcsinh", "arccosh", "arctanh", "floor", "ceil", "trunc",
               "rint", "isnan", "isinf", "isfinite"]
BINARY = ["add", "sub", "mul", "div", "floordiv", "mod", "pow", "maximum", "minimum",
          "eq", "ne", "lt", "le", "gt", "ge", "and", "or", "arctan2", "hypot"]


def _float_inputs(dt):
    tiny = 1e-40 if dt == F32 else 1e-310  # subnormal
    base = np.array(FLOAT_SPECIALS + [tiny, -tiny], dtype=dt)
    rnd = np.concatenate([RNG.standard_normal(48) * 4, RNG.uniform(-30, 30, 48)]).astype(dt)
    return np.concatenate([base, rnd])


def _pairs(dt, specials, n_random=200):
    s = np.array(specials, dtype=dt)
    x, y = np.meshgrid(s, s, indexing="ij")
    rx = (RNG.standard_normal(n_random) * 10).astype(dt)
    ry = (RNG.standard_normal(n_random) * 3).astype(dt)
    return np.concatenate([x.ravel(), rx]), np.concatenate([y.ravel(), ry])


def _infer(op, arrays):
    return P.OPS[op].infer([_t(a) for a in arrays], {}).dtype.name


def _op_cases(dt):
    cases, labels = [], []
    x = _float_inputs(dt)
    for op in UNARY_FLOAT:
        cases.append(([x], [Instr(op, (0,), (), _infer(op, [x]))], None))
        labels.append((op, x))
    a, b = _pairs(dt, BINARY_SPECIALS)
    for op in BINARY:
        cases.append(([a, b], [Instr(op, (0, 1), (), _infer(op, [a, b]))], None))
        labels.append((op, a, b))
    return cases, labels


# PoCL 3.0's double erfc misses the spec's 16 ulp in the tail: 57 ulp for x in [5, 10), ~490
# near x = 25 (relative error ~1e-13; measured on a linspace, float32 stays within 1 ulp).
ERFC_F64_TAIL = (5.0, 512)


@pytest.mark.parametrize("dt", [F32, F64])
def test_every_float_op(dev, dt):
    cases, labels = _op_cases(dt)
    problems = []
    for (got, want), (op, *inputs) in zip(run_batch(dev, cases, f"op_{dt}_"), labels):
        if op == "erfc" and dt == F64:
            tail = inputs[0] >= ERFC_F64_TAIL[0]
            problems += check(f"{op}[{dt}] tail", got[tail], want[tail], ERFC_F64_TAIL[1], [inputs[0][tail]])
            got, want, inputs = got[~tail], want[~tail], [inputs[0][~tail]]
        problems += check(f"{op}[{dt}]", got, want, ULPS.get(op, 0), inputs)
    assert not problems, "\n".join(problems)


def test_every_formula_is_covered():
    covered = set(UNARY_FLOAT) | set(BINARY) | {"cast", "where", "broadcast_to", "reshape"}
    assert set(scalar.FORMULAS) | {"cast", "where"} <= covered


INT_SPECIALS = {I32: [0, 1, -1, 2, -2, 3, -3, 7, -7, 100, -100, 12345, -54321, 2 ** 31 - 1, -(2 ** 31)],
                I64: [0, 1, -1, 2, -2, 3, -3, 7, -7, 100, -100, 12345, -54321, 2 ** 31, 2 ** 63 - 1, -(2 ** 63)]}
INT_BINARY = ["add", "sub", "mul", "div", "floordiv", "mod", "maximum", "minimum", "eq", "ne", "lt", "le",
              "gt", "ge", "and", "or"]
INT_UNARY = ["neg", "abs", "sign", "relu", "not", "exp", "sqrt"]  # exp / sqrt of ints compute in f64
# int32 differs from int64 only in types and wrap-around: the ops where that shows
INT32_ONLY = {"add", "sub", "mul", "floordiv", "mod", "neg", "abs", "maximum", "lt"}
EXPONENTS = [0, 1, 2, 3, 5, 7, 30, 31, 32, 33, 62, 63, 64, 65, 100, 12345]
BOOL_BINARY = ["add", "mul", "div", "floordiv", "mod", "pow", "maximum", "minimum", "eq", "ne", "lt", "le",
               "gt", "ge", "and", "or"]


def test_integer_and_bool_ops(dev):
    cases, labels = [], []
    for dt in (I32, I64):
        s = np.array(INT_SPECIALS[dt], dtype=dt)
        a, b = (m.ravel() for m in np.meshgrid(s, s, indexing="ij"))
        for op in INT_BINARY:
            if dt == I32 and op not in INT32_ONLY:
                continue
            cases.append(([a, b], [Instr(op, (0, 1), (), _infer(op, [a, b]))], None))
            labels.append((f"{op}[{dt}]", a, b))
        base, ex = (m.ravel() for m in np.meshgrid(s, np.array(EXPONENTS, dtype=dt), indexing="ij"))
        cases.append(([base, ex], [Instr("pow", (0, 1), (), dt)], None))
        labels.append((f"pow[{dt}]", base, ex))
        for op in INT_UNARY:
            if dt == I32 and op not in INT32_ONLY:
                continue
            cases.append(([s], [Instr(op, (0,), (), _infer(op, [s]))], None))
            labels.append((f"{op}[{dt}]", s))
    t = np.array([False, True])
    a, b = (m.ravel() for m in np.meshgrid(t, t, indexing="ij"))
    for op in BOOL_BINARY:
        cases.append(([a, b], [Instr(op, (0, 1), (), _infer(op, [a, b]))], None))
        labels.append((f"{op}[bool]", a, b))
    for op in ("not", "abs", "relu", "exp"):
        cases.append(([t], [Instr(op, (0,), (), _infer(op, [t]))], None))
        labels.append((f"{op}[bool]", t))
    problems = []
    for (got, want), (label, *inputs) in zip(run_batch(dev, cases, "intop"), labels):
        problems += check(label, got, want, ULPS.get(label.split("[")[0], 0), inputs)
    assert not problems, "\n".join(problems)


def test_casts_where_consts_and_mixed_dtypes(dev):
    f32 = np.array([0.0, -0.0, 1.5, -1.5, 2.5, -2.75, 1e6, -3e9, 7.0, 0.1], dtype=F32)
    f64 = f32.astype(F64) * 1.0000001
    i32 = np.array([0, 1, -1, 7, -7, 2 ** 31 - 1, -(2 ** 31), 3, 100, -5], dtype=I32)
    i64 = np.array([0, 1, -1, 2 ** 40 + 1, -(2 ** 53) - 1, 2 ** 63 - 1, -(2 ** 63), 3, 100, -5], dtype=I64)
    bo = np.array([True, False] * 5)
    arrays = {F32: f32, F64: f64, I32: i32, I64: i64, B: bo}
    cases, labels = [], []
    for src, x in arrays.items():
        for dst in arrays:
            if src in (F32, F64) and dst in (I32, I64):
                x = np.trunc(np.clip(x, -1e9, 1e9)).astype(src)  # in range: C and numpy agree
            cases.append(([x], [Instr("cast", (0,), (("dtype", dst),), dst)], None))
            labels.append((f"cast {src}->{dst}", x))
    # where: a bool condition, and a non-bool one (nonzero is true), values of mixed dtypes
    cases.append(([bo, f32, i32], [Instr("where", (0, 1, 2), (), F64)], None))
    labels.append(("where bool", bo, f32, i32))
    cases.append(([f32, i64, i64], [Instr("cast", (0,), (("dtype", B),), B), Instr("where", (3, 1, 2), (), I64)], None))
    labels.append(("where cast", f32, i64))
    # consts of every kind, NaN / inf / -0.0 included, and promotion inside the body
    specials = [0.1, -0.0, float("nan"), float("inf"), float("-inf"), 3.0]
    for dt in (F32, F64):
        for v in specials:
            body = [Instr("const", (), (("value", v),), dt), Instr("add", (0, 1), (), dt)]
            x = arrays[dt]
            cases.append(([x], body, None))
            labels.append((f"{x.dtype}+const {v}", x))
    body = [Instr("const", (), (("value", -(2 ** 63)),), I64), Instr("sub", (0, 1), (), I64)]
    cases.append(([i64], body, None))
    labels.append(("int64 - INT64_MIN", i64))
    body = [Instr("add", (0, 1), (), F64), Instr("mul", (2, 1), (), F64)]  # i32 + f32 -> f64
    cases.append(([i32, f32], body, None))
    labels.append(("i32+f32 in f64", i32, f32))
    body = [Instr("div", (0, 1), (), F64)]  # true division of ints
    cases.append(([i64, i32], body, None))
    labels.append(("i64/i32", i64, i32))
    problems = []
    for (got, want), (label, *inputs) in zip(run_batch(dev, cases, "cast"), labels):
        problems += check(label, got, want, 0, inputs)
        if got.dtype.kind == "f":  # signed zeros too (e.g. -0.0 + const)
            same = (np.signbit(got) == np.signbit(want)) | np.isnan(want)
            if not same.all():
                problems.append(f"{label}: sign of zero differs")
    assert not problems, "\n".join(problems)


def test_signed_zeros_of_mod_floordiv_sign(dev):
    x = np.array([-0.0, 0.0, 6.0, -6.0, 1.0, -1.0, 5.5, -0.0], dtype=F32)
    y = np.array([3.0, -3.0, -3.0, 3.0, np.inf, np.inf, -np.inf, -2.0], dtype=F32)
    cases = [([x, y], [Instr(op, (0, 1), (), F32)], None) for op in ("mod", "floordiv")]
    cases.append(([x], [Instr("sign", (0,), (), F32)], None))
    for got, want in run_batch(dev, cases, "zeros"):
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(np.signbit(got), np.signbit(want))


# ----------------------------------------------------------------- sizes, broadcasting, views


def test_sizes_and_broadcasting(dev):
    body = [Instr("exp", (0,), (), F32), Instr("mul", (2, 1), (), F32), Instr("add", (3, 0), (), F32)]
    cases = []
    for n in (0, 1, 7, 8, 9, 1023):
        cases.append(([RNG.standard_normal(n).astype(F32), RNG.standard_normal(n).astype(F32)], body, None))
    shapes = [((3, 1), (1, 4)), ((), (5,)), ((5,), ()), ((), ()), ((2, 3, 4), (3, 1)), ((2, 3, 4), (4,)),
              ((2, 1, 4, 5), (1, 3, 1, 5)), ((2, 3, 4, 5, 2), (3, 1, 5, 1)), ((0, 3), (1, 3)), ((3, 0), (3, 1)),
              ((1, 1), (7, 1)), ((65, 3), (1, 3)), ((3, 65), (3, 1))]
    for sa, sb in shapes:
        cases.append(([RNG.standard_normal(sa).astype(F32), RNG.standard_normal(sb).astype(F32)], body, None))
    for i, ((got, want), (arrays, _, _)) in enumerate(zip(run_batch(dev, cases, "sizes"), cases)):
        # x + y * exp(x) cancels: an ulp of exp's result is many of the sum's, so a tolerance
        # relative to the terms
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, err_msg=f"case {i} {[a.shape for a in arrays]}")


def test_device_views_and_iteration_shape(dev):
    q = D.queue(dev)
    x = RNG.standard_normal((6, 8)).astype(F32)
    y = RNG.standard_normal((8, 6)).astype(F32)
    xd, yd = R.to_device(x, dev), R.to_device(y, dev)
    body = [Instr("sub", (0, 1), (), F32)]
    k = R.compile_fused([_t(x), _t(x)], TensorType(dtype_of(F32), ()), body, None, dev)
    got = k(xd, yd.transpose()).get()  # a transposed view: strides, no copy
    np.testing.assert_array_equal(got, x - y.T)
    got = k(xd[2:5], yd.transpose()[1:4]).get()  # views with offsets
    np.testing.assert_array_equal(got, x[2:5] - y.T[1:4])
    # the iteration space may be larger than the operands' broadcast (a broadcast_to in the body)
    s = np.array(2.5, dtype=F32)
    body = [Instr("broadcast_to", (0,), (("shape", (3, 4)),), F32), Instr("neg", (1,), (), F32)]
    got = R.run_fused(s, body=body, shape=(3, 4), device=dev).get()
    np.testing.assert_array_equal(got, reference([s], body, shape=(3, 4)))
    q.finish()


def test_copy_and_transpose(dev):
    x = RNG.standard_normal((3, 4, 5))
    np.testing.assert_array_equal(R.transpose(x, device=dev).get(), x.T)
    np.testing.assert_array_equal(R.transpose(x, (1, 0, 2), device=dev).get(), x.transpose(1, 0, 2))
    xd = R.to_device(x, dev)
    np.testing.assert_array_equal(R.copy(xd[1:, ::2], device=dev).get(), x[1:, ::2])
    b = np.array([[True, False, True]])
    np.testing.assert_array_equal(R.transpose(b, device=dev).get(), b.T)


# ----------------------------------------------------------------- reductions


def _reduction_cases():
    cases = []
    # every (reduction, dtype): its combine function and identity, on one (kept, reduced) split
    for red in ("sum", "prod", "max", "min"):
        for dt in (F32, F64, I32, B):
            if dt == B:
                x = RNG.random((3, 4, 5)) < 0.5
            elif dt == I32:
                x = RNG.integers(-3, 4, (3, 4, 5)).astype(dt)
            else:
                x = RNG.uniform(0.5, 1.5, (3, 4, 5)).astype(dt)
            for axis, keepdims in (((1,), False), ((2,), True), ((0,), False)):
                cases.append(([x], [], (red, axis, keepdims)))
    # every axis pattern (each (kept, reduced) split is its own kernel, and PoCL's first launch
    # of a kernel with barriers costs ~0.3 s cold, so the splits are tested on one reduction)
    x = RNG.uniform(0.5, 1.5, (3, 4, 5)).astype(F32)
    for axis in ((0, 2), (1, 2), (0, 1, 2), ()):
        for keepdims in (False, True):
            cases.append(([x], [], ("sum", axis, keepdims)))
    for n in (0, 1, 7, 1023):
        cases.append(([RNG.uniform(0.9, 1.1, n).astype(F32)], [], ("sum", (0,), False)))
    cases.append(([np.zeros((0, 3), F32)], [], ("prod", (0,), False)))  # empty: the identity
    cases.append(([np.zeros((0, 3), F32)], [], ("sum", (0,), True)))
    cases.append(([np.zeros((0, 3), F32)], [], ("max", (1,), False)))  # no outputs at all
    # NaN propagates through every reduction, in any position
    x = RNG.standard_normal((4, 6)).astype(F64)
    x[1, 2] = np.nan
    x[3, 0] = np.nan
    for red in ("sum", "prod", "max", "min"):
        cases.append(([x], [], (red, (1,), False)))
        cases.append(([x], [], (red, (0,), True)))
    # a body feeding a reduction, with broadcasting: sum((x - y)**2, axis=1), max(exp(x)) ...
    x = RNG.standard_normal((5, 7)).astype(F32)
    y = RNG.standard_normal((1, 7)).astype(F32)
    sq = [Instr("sub", (0, 1), (), F32), Instr("mul", (2, 2), (), F32)]
    cases.append(([x, y], sq, ("sum", (1,), False)))
    cases.append(([x, y], sq, ("sum", (0,), True)))
    cases.append(([x, y], [Instr("gt", (0, 1), (), B)], ("sum", (0, 1), False)))  # count: bools -> i64
    cases.append(([x], [Instr("exp", (0,), (), F32)], ("max", (1,), False)))
    return cases


def test_reductions(dev):
    cases = _reduction_cases()
    problems = []
    for i, ((got, want), (arrays, body, red)) in enumerate(zip(run_batch(dev, cases, "red"), cases)):
        # float sums and products: another order of rounding (a product's error grows with
        # its length in any order)
        m = int(np.prod([arrays[0].shape[a] for a in red[1]])) if arrays[0].ndim else 1
        ulps = (max(8, m // 2) if red[0] == "prod" else 8) if red[0] in ("sum", "prod") or body else 0
        problems += check(f"case {i}: {red} of {arrays[0].dtype}{arrays[0].shape} body {len(body)}", got, want, ulps)
    assert not problems, "\n".join(problems)


def test_empty_max_raises(dev):
    with pytest.raises(FlowRuntimeError, match="empty"):
        R.run_fused(np.zeros((0, 3), F32), body=(), reduce=("max", (0,), False), device=dev)


def test_large_float32_sum_is_accurate(dev):
    # 2**21 values: the two-pass path (chunks, then the partials) and pairwise-like accuracy
    x = RNG.random(2 ** 21).astype(F32)
    exact = x.astype(np.float64).sum()
    got = R.run_fused(x, body=(), reduce=("sum", (0,), False), device=dev).get()
    assert got.dtype == np.float32
    assert abs(float(got) - exact) / exact < 1e-6, (float(got), exact)
    rows = x.reshape(8, -1)  # many outputs, long rows
    got = R.run_fused(rows, body=(), reduce=("sum", (1,), False), device=dev).get()
    np.testing.assert_allclose(got, rows.astype(np.float64).sum(axis=1), rtol=1e-6)
    cols = x.reshape(-1, 4)  # reductions over the slow axis: the "columns" kernel, chunked
    got = R.run_fused(cols, body=(), reduce=("max", (0,), True), device=dev).get()
    np.testing.assert_array_equal(got, cols.max(axis=0, keepdims=True))
    got = R.run_fused(cols, body=(), reduce=("sum", (0,), False), device=dev).get()
    np.testing.assert_allclose(got, cols.astype(np.float64).sum(axis=0), rtol=1e-6)
    x3 = x[:300 * 7 * 5].reshape(300, 7, 5)
    got = R.run_fused(x3, body=(), reduce=("sum", (0, 1), False), device=dev).get()
    np.testing.assert_allclose(got, x3.astype(np.float64).sum(axis=(0, 1)), rtol=1e-6)


# ----------------------------------------------------------------- argmax / argmin


def test_argmax_argmin(dev):
    x = RNG.standard_normal((5, 9)).astype(F32)
    x[1, 3] = x[1, 7] = x[1].max() + 1  # a tie: the first index wins
    x[2, 4], x[2, 6] = np.nan, np.nan   # NaN wins, the first one
    x[3, :] = 0.0
    big = RNG.standard_normal(3000)
    ints = RNG.integers(-5, 5, (4, 6)).astype(I32)
    for kind, fn in (("argmax", np.argmax), ("argmin", np.argmin)):
        for axis in (0, 1, None):
            for keepdims in (False, True):
                got = R.argreduce(x, kind, axis, keepdims, device=dev).get()
                want = fn(x, axis=axis, keepdims=keepdims)
                np.testing.assert_array_equal(got, want, err_msg=f"{kind} axis={axis} keepdims={keepdims}")
                assert got.dtype == np.int64
        np.testing.assert_array_equal(R.argreduce(big, kind, device=dev).get(), fn(big))
        np.testing.assert_array_equal(R.argreduce(ints, kind, 1, device=dev).get(), fn(ints, axis=1))
        np.testing.assert_array_equal(R.argreduce(x.T, kind, 0, device=dev).get(), fn(x.T, axis=0))
    with pytest.raises(FlowRuntimeError, match="empty"):
        R.argmax(np.zeros((3, 0)), axis=1, device=dev)


# ----------------------------------------------------------------- gather / scatter-add


def test_gather(dev):
    x = RNG.standard_normal((6, 5)).astype(F32)
    idx = np.array([[0, 5], [-1, 2], [3, 3]])
    np.testing.assert_array_equal(R.take(x, idx, 0, device=dev).get(), np.take(x, idx, axis=0))
    idx1 = np.array([4, 0, -2, 4], dtype=np.int32)
    np.testing.assert_array_equal(R.take(x, idx1, 1, device=dev).get(), x[:, idx1])
    y = RNG.integers(0, 5, 6)
    got = R.take_along_axis(x, y[:, None], 1, device=dev).get()[:, 0]
    np.testing.assert_array_equal(got, x[np.arange(6), y])  # x[arange(N), y]
    x3 = RNG.standard_normal((2, 3, 4))
    i3 = RNG.integers(0, 3, (2, 5, 1))
    np.testing.assert_array_equal(R.take_along_axis(x3, i3, 1, device=dev).get(), np.take_along_axis(x3, i3, 1))
    xd = R.to_device(x, dev)
    np.testing.assert_array_equal(R.take(xd.transpose(), idx1, 0, device=dev).get(), x.T[idx1])
    with pytest.raises(FlowRuntimeError, match=r"gather: index array\[1\] = 6 is out of range for axis 0 of size 6"):
        R.take(x, np.array([0, 6]), 0, device=dev)
    with pytest.raises(FlowRuntimeError, match=r"array\[1, 0\] = -6 is out of range for axis 1 of size 5"):
        R.take(x, np.array([[0, 1], [-6, 1]]), 1, device=dev)


@pytest.mark.parametrize("dt", [F32, F64, I32, I64])
def test_scatter_add_repeated_indices(dev, dt):
    idx = np.array([1, 3, 1, 1, 0, -1, 3])
    g = (RNG.integers(-4, 5, (7, 3)) if dt in (I32, I64) else RNG.standard_normal((7, 3))).astype(dt)
    want = np.zeros((5, 3), dt)
    np.add.at(want, idx, g)
    got = R.index_add((5, 3), idx, g, 0, device=dev).get()
    if dt in (F32, F64):  # atomic adds run in any order
        np.testing.assert_allclose(got, want, rtol=1e-6 if dt == F32 else 1e-13, atol=1e-6)
    else:
        np.testing.assert_array_equal(got, want)
    # along axis 1 with a 2-D index, and the transpose of take_along_axis
    idx2 = RNG.integers(0, 4, (3, 6))
    g2 = np.ones((2, 3, 6, 6), dt)
    want2 = np.zeros((2, 4, 6), dt)
    np.add.at(want2, (slice(None), idx2), g2)
    np.testing.assert_array_equal(R.index_add((2, 4, 6), idx2, g2, 1, device=dev).get(), want2)
    y = RNG.integers(0, 4, 6)
    g3 = np.ones((6, 1), dt)
    want3 = np.zeros((6, 4), dt)
    np.add.at(want3, (np.arange(6), y), 1)
    np.testing.assert_array_equal(R.index_add_along_axis((6, 4), y[:, None], g3, 1, device=dev).get(), want3)


def test_scatter_add_serial_fallback_and_errors(dev):
    # the kernel used when a device lacks 64-bit atomics, run here on purpose
    idx = np.array([2, 2, 0, 2])
    g = np.array([1.5, 2.25, -1.0, 4.0])
    gen = codegen.scatter_add_kernel("scatter_serial_test", F64, I64, 1, atomic=False)
    assert "atom_cmpxchg" not in gen.source
    k = R.Compiled(gen, dev)
    out = R.cla.zeros(D.queue(dev), (3,), np.float64)
    err = R.cla.zeros(D.queue(dev), (1,), np.int32)
    gd, idd = R.to_device(g, dev), R.to_device(idx, dev)
    args = [gd.base_data, np.int64(0), idd.base_data, np.int64(0), out.base_data, err.base_data]
    # n, axis_len, out_axis_stride, dim, g stride, out stride (0: the dim is the index's), idx stride
    args += [np.int64(v) for v in (4, 3, 1, 4, 1, 0, 1)]
    R._launch(k.kernel, dev, (1,), (1,), args)
    np.testing.assert_array_equal(out.get(), [-1.0, 0.0, 7.75])
    with pytest.raises(FlowRuntimeError, match=r"scatter-add: index array\[1\] = 3 is out of range for axis 0 of size 3"):
        R.index_add((3,), np.array([0, 3]), np.ones(2), 0, device=dev)
    bools = R.index_add((3,), np.array([1, 1]), np.array([True, False]), 0, device=dev).get()
    np.testing.assert_array_equal(bools, [False, True, False])


# ----------------------------------------------------------------- matmul


@pytest.mark.parametrize("dt", [F32, F64])
def test_matmul(dev, dt):
    tol = dict(rtol=2e-5, atol=1e-5) if dt == F32 else dict(rtol=1e-12, atol=1e-12)
    shapes = [((1, 1), (1, 1)), ((7, 5), (5, 3)), ((65, 17), (17, 129)), ((64, 64), (64, 64)),
              ((3, 0), (0, 4)), ((2, 3, 4), (4, 5)), ((2, 1, 3, 4), (1, 5, 4, 2)), ((4,), (4, 3)),
              ((3, 4), (4,)), ((4,), (4,)), ((0, 3), (3, 2)), ((2, 2, 3), (2, 3, 1))]
    for sa, sb in shapes:
        a = RNG.standard_normal(sa).astype(dt)
        b = RNG.standard_normal(sb).astype(dt)
        got = R.matmul(a, b, device=dev).get()
        want = a @ b
        assert got.shape == want.shape, (sa, sb)
        np.testing.assert_allclose(got, want, **tol, err_msg=f"{sa} @ {sb}")
    a = RNG.standard_normal((33, 20)).astype(dt)
    b = RNG.standard_normal((19, 20)).astype(dt)
    bd = R.to_device(b, dev)
    np.testing.assert_allclose(R.matmul(a, bd.transpose(), device=dev).get(), a @ b.T, **tol)  # strided B


# ----------------------------------------------------------------- build errors and caching


def test_build_error_is_an_internal_error_with_source(dev):
    src = "__kernel void broken(__global float* x)\n{\n    x[0] = undefined_name;\n}\n"
    with pytest.raises(FlowInternalError) as e:
        build.build_program(src, dev, what="test kernel")
    text = str(e.value)
    assert "bug in flowml" in text
    assert "undefined_name" in text  # in the log and in the quoted source
    assert ">    3 |" in text  # the error line is marked


def test_build_cache_returns_the_same_program(dev):
    src = "__kernel void cached_k(__global float* x) { x[get_global_id(0)] *= 2.0f; }\n"
    assert build.build_program(src, dev) is build.build_program(src, dev)
    assert build.get_kernel(build.build_program(src, dev), "cached_k") is \
        build.get_kernel(build.build_program(src, dev), "cached_k")


def test_identical_kernels_share_one_program_entry(dev):
    x = np.ones((2, 3), F32)
    nodes = [([_t(x)], TensorType(dtype_of(F32), ()), (), ("sum", (1,), keep)) for keep in (False, True)]
    nodes.append(([_t(x)], TensorType(dtype_of(F32), ()), (), ("sum", (0,), False)))  # columns: another kernel
    k0, k1, k2 = R.compile_fused_many(nodes, dev, prefix="share")
    assert k0.gen.name == k1.gen.name != k2.gen.name and k0.gen.reduce != k1.gen.reduce
    np.testing.assert_array_equal(k0(x).get(), [3, 3])
    np.testing.assert_array_equal(k1(x).get(), [[3], [3]])
    np.testing.assert_array_equal(k2(x).get(), [2, 2, 2])


# ----------------------------------------------------------------- devices


def test_device_selection(dev, monkeypatch):
    devices = D.all_devices()
    assert D.select_device("opencl:0") == devices[0]
    with pytest.raises(FlowError, match="no OpenCL device 99"):
        D.select_device("opencl:99")
    monkeypatch.setenv("FLOWML_OPENCL_DEVICE", devices[0].name[:4])
    assert D.select_device("opencl") == devices[0]
    monkeypatch.setenv("FLOWML_OPENCL_DEVICE", "no-such-device-name")
    with pytest.raises(FlowError, match="no OpenCL device name contains"):
        D.select_device()
    with pytest.raises(FlowError, match="not an OpenCL device name"):
        D.select_device("cuda")
    assert D.supports_fp64(dev) == ("cl_khr_fp64" in dev.extensions)
    assert D.queue(dev) is D.queue(dev) and D.context(dev) is D.context(dev)


def test_no_platform_is_a_flow_error(monkeypatch):
    def no_platforms():
        raise cl.LogicError(cl._cl._ErrorRecord("clGetPlatformIDs failed: PLATFORM_NOT_FOUND_KHR", -1001,
                                                "clGetPlatformIDs"))
    monkeypatch.setattr(D, "_DEVICES", None)
    monkeypatch.setattr(D.cl, "get_platforms", no_platforms)
    with pytest.raises(FlowError, match="no OpenCL platform") as e:
        D.select_device()
    assert "pocl-binary-distribution" in str(e.value)


def test_pocl_cache_dir_follows_flowml_cache_dir(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "POCL_CACHE_DIR"}
    env["FLOWML_CACHE_DIR"] = str(tmp_path)
    code = "import os, flowml.backends.opencl; print(os.environ['POCL_CACHE_DIR'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(tmp_path / "pocl")
    env["POCL_CACHE_DIR"] = "/somewhere/else"  # a user's choice is kept
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "/somewhere/else"


def test_pocl_cpu_name_follows_pocls_kernel_library_choice(monkeypatch):
    # the CPU name given to a PoCL whose LLVM can't name this CPU (see device.py)
    haswell = {"sse2", "avx", "avx2", "cx16", "popcnt", "abm", "f16c", "fma", "bmi1", "bmi2"}
    for flags, want in ((haswell | {"avx512f"}, "skylake-avx512"), (haswell, "haswell"),
                        ({"sse2", "ssse3", "cx16"}, "core2"), (set(), None)):
        monkeypatch.setattr(D, "_host_cpu_flags", lambda flags=flags: flags)
        assert D._pocl_cpu_name() == want
