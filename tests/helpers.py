"""Shared helpers for the op and gradient tests.

`run(fn, *arrays)` builds `fn` on inputs typed like `arrays` in a fresh default graph and runs
it on the reference backend; `check(fn, np_fn, *arrays)` compares the result (values, dtype and
shape, both the static type and the computed array) with numpy; `check_grad(fn, *arrays)`
compares flowml's symbolic gradient of the random projection `sum(fn(...) * r)` with central
finite differences.
"""

from __future__ import annotations

import os

import hypothesis.extra.numpy as hnp
import numpy as np
from hypothesis import strategies as st

import flowml
from flowml.ir.types import TensorType

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
INT_DTYPES = (np.dtype(np.int32), np.dtype(np.int64))
NUMERIC_DTYPES = INT_DTYPES + FLOAT_DTYPES
ALL_DTYPES = (np.dtype(bool),) + NUMERIC_DTYPES


def typed(a) -> TensorType:
    a = np.asarray(a)
    return TensorType(np.dtype(a.dtype), tuple(a.shape))


def build(fn, arrays):
    """A fresh default graph with one input per array (typed like it) and `fn` applied to them."""
    flowml.reset_default_graph()
    xs = [flowml.tensor(f"x{i}", typed(a)) for i, a in enumerate(arrays)]
    return xs, fn(*xs)


def run(fn, *arrays):
    """(the computed value(s), the output Var(s)) of `fn` on `arrays`."""
    arrays = [np.asarray(a) for a in arrays]
    xs, out = build(fn, arrays)
    f = flowml.function(xs, out)
    return f(*arrays), out


def tolerance(dtype) -> dict:
    if np.dtype(dtype) == np.float32:
        return {"rtol": 2e-6, "atol": 1e-6}
    return {"rtol": 1e-12, "atol": 1e-12}


def assert_same(got, want, var=None, **tol) -> None:
    """`got` (a flowml result) equals numpy's `want` in dtype, shape and value; the static type
    of `var` (the output Var) says the same dtype and shape."""
    want = np.asarray(want)
    got = np.asarray(got)
    assert got.dtype == want.dtype, f"dtype {got.dtype}, numpy gives {want.dtype}"
    assert got.shape == want.shape, f"shape {got.shape}, numpy gives {want.shape}"
    if var is not None:
        assert var.dtype == want.dtype, f"static dtype {var.type}, numpy gives {want.dtype}"
        assert tuple(var.shape) == want.shape, f"static shape {var.type}, numpy gives {want.shape}"
    if want.dtype.kind == "f":
        np.testing.assert_allclose(got, want, equal_nan=True, **(tol or tolerance(want.dtype)))
    else:
        np.testing.assert_array_equal(got, want)


def check(fn, np_fn, *arrays, **tol):
    """flowml's `fn` and numpy's `np_fn` agree on `arrays` (value, dtype and shape)."""
    arrays = [np.asarray(a) for a in arrays]
    got, out = run(fn, *arrays)
    with np.errstate(all="ignore"):
        want = np_fn(*arrays)
    if isinstance(out, (list, tuple)):
        for g, w, v in zip(got, want, out):
            assert_same(g, w, v, **tol)
    else:
        assert_same(got, want, out, **tol)
    return got


# ----------------------------------------------------------------- finite differences


def numeric_grad(f, arrays, i, eps=1e-6):
    """Central differences of the scalar function `f(*arrays)` with respect to arrays[i]."""
    args = [np.array(a) for a in arrays]
    x = args[i]
    g = np.zeros(x.shape, dtype=np.float64)
    flat = x.reshape(-1)  # a view: x is a fresh contiguous copy
    gflat = g.reshape(-1)
    for k in range(flat.size):
        orig = flat[k]
        flat[k] = orig + eps
        plus = float(f(*args))
        flat[k] = orig - eps
        minus = float(f(*args))
        flat[k] = orig
        gflat[k] = (plus - minus) / (2 * eps)
    return g


def projection(shape, seed=0):
    """A fixed random array r: the tests differentiate the scalar sum(out * r)."""
    return np.random.default_rng(seed).standard_normal(shape)


def check_grad(fn, *arrays, wrt=None, eps=1e-6, rtol=1e-5, atol=1e-6, seed=0):
    """flowml's gradient of sum(fn(*arrays) * r) with respect to arrays[wrt] (default: every
    float array) matches central finite differences; returns the analytic gradients."""
    arrays = [np.asarray(a) for a in arrays]
    if wrt is None:
        wrt = [i for i, a in enumerate(arrays) if a.dtype.kind == "f"]
    xs, out = build(fn, arrays)
    r = projection(out.shape, seed)
    cost = flowml.sum(out * r)
    grads = flowml.grad(cost, [xs[i] for i in wrt])
    f_cost = flowml.function(xs, cost)
    f_grads = flowml.function(xs, grads)
    analytic = f_grads(*arrays)
    scale = max(1.0, abs(float(f_cost(*arrays))))
    for i, g in zip(wrt, analytic):
        assert g.dtype == arrays[i].dtype, f"gradient dtype {g.dtype} for an input of {arrays[i].dtype}"
        assert g.shape == arrays[i].shape, f"gradient shape {g.shape} for an input of shape {arrays[i].shape}"
        numeric = numeric_grad(f_cost, arrays, i, eps)
        np.testing.assert_allclose(g, numeric, rtol=rtol, atol=atol * scale,
                                   err_msg=f"gradient with respect to input {i}")
    return analytic


def node_count(var) -> int:
    return len(var.graph)


@st.composite
def axis_args(draw, ndim):
    """axis: None, an int (maybe negative) or a tuple of distinct axes (maybe negative)."""
    kind = draw(st.sampled_from(["none", "int", "tuple"] if ndim else ["none", "tuple"]))
    if kind == "none":
        return None
    if kind == "int":
        return draw(st.integers(-ndim, ndim - 1))
    return draw(hnp.valid_tuple_axes(ndim))


@st.composite
def matmul_shapes(draw, max_batch_dims=2, max_side=4):
    """Operand shapes for matmul: 1-D or matrices, with batch dims that broadcast."""
    n, k, m = (draw(st.integers(1, max_side)) for _ in range(3))
    batch = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=max_batch_dims,
                                                   min_side=1, max_side=3))
    a_vec, b_vec = draw(st.booleans()), draw(st.booleans())
    a = (k,) if a_vec else batch.input_shapes[0] + (n, k)
    b = (k,) if b_vec else batch.input_shapes[1] + (k, m)
    return a, b


def opencl_available() -> bool:
    """Whether an OpenCL device is there (PoCL's CPU device in CI)."""
    try:
        from flowml.backends.opencl import device as D
        D.select_device()
        return True
    except Exception:  # noqa: BLE001 - no pyopencl, no driver, no device: skip those tests
        return False


def opencl_param():
    """"opencl" as a pytest parameter, skipped (and saying why) where there is no device."""
    import pytest
    return pytest.param("opencl", marks=pytest.mark.skipif(not opencl_available(), reason="no OpenCL device"))


# Every backend, for tests that compare them.
BACKENDS = ["reference", "llvm", opencl_param()]


def ulp_distance(got, want):
    """|got - want| in units in the last place (0 where both are NaN, inf where one is)."""
    got, want = np.asarray(got), np.asarray(want)
    it, lo = (np.int32, -(2 ** 31)) if got.dtype == np.float32 else (np.int64, -(2 ** 63))

    def ordered(x):  # float bits -> integers in float order; -0.0 and 0.0 -> 0
        i = x.view(it).astype(np.int64)
        return np.where(i < 0, np.int64(lo) - i, i).astype(object)  # exact (float64 would round)

    d = np.abs(ordered(got) - ordered(want)).astype(np.float64)
    both_nan = np.isnan(got) & np.isnan(want)
    one_nan = np.isnan(got) ^ np.isnan(want)
    inf_mismatch = (np.isinf(got) | np.isinf(want)) & (got != want) & ~both_nan
    return np.where(both_nan, 0, np.where(one_nan | inf_mismatch, np.inf, d))


# ----------------------------------------------------------------- the command line

CLI_ENV = {"COLUMNS": "120", "NO_COLOR": "1", "PYTHONIOENCODING": "utf-8"}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args, env: dict | None = None, process: bool = False, timeout: float = 120):
    """`flowml ARGS` run from the repository root with FLOWML_BACKEND unset (then `env` added):
    a CompletedProcess with the exit status, stdout and stderr.

    By default `flowml.cli.main` runs in this process, with the environment, working directory
    and streams a subprocess would have (a fresh interpreter costs about a second of imports);
    `process=True` runs `python -m flowml.cli` for tests about the process itself (crashes,
    pipes)."""
    import contextlib
    import io
    import subprocess
    import sys
    import traceback

    args = [str(a) for a in args]
    extra = dict(CLI_ENV, **(env or {}))
    if process:
        full = dict(os.environ, **CLI_ENV)
        full.pop("FLOWML_BACKEND", None)
        full.update(env or {})
        return subprocess.run([sys.executable, "-m", "flowml.cli", *args], cwd=REPO, env=full, capture_output=True,
                              text=True, encoding="utf-8", errors="replace", timeout=timeout)
    from flowml.cli import main
    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    os.environ.pop("FLOWML_BACKEND", None)
    os.environ.update(extra)
    try:
        os.chdir(REPO)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(args)
            except SystemExit as e:  # argparse's usage errors and --help
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except Exception:  # what a subprocess would show: a traceback and exit 1
                traceback.print_exc()
                code = 1
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    return subprocess.CompletedProcess(["flowml", *args], code, out.getvalue(), err.getvalue())
