"""Every example on the LLVM backend: its entry points declare only the allowed externals, and
the examples without loops, a lazy `if` or convolutions run with zero host steps."""

from __future__ import annotations

import pathlib

import pytest

import flowml
from flowml.backends.llvm import blas
from test_lowering_registry import _ALLOWED, LATER, _externals


@pytest.fixture(scope="module")
def examples():
    """Every example, compiled on LLVM (once for the tests below)."""
    return {p.name: flowml.load(str(p), backend="llvm") for p in sorted(pathlib.Path("examples").glob("*.flow"))}


def test_entry_points_call_only_blas_math_and_the_thread_pool(examples):
    for example, model in examples.items():
        externals = _externals(model)
        bad = {s for s in externals if not _ALLOWED.match(s)}
        assert not bad, f"{example}: entry points declare {sorted(bad)}"
        blas_names = {s for s in externals if s.startswith(blas.PREFIX) and s[len(blas.PREFIX):] in blas.SIGNATURES}
        for s in externals - blas_names:
            assert not s.startswith("Py") and not s.startswith("_Py"), s



# examples whose fns have convolutions: their host steps are the next issue's (loops and the
# lazy `if` are native: tests/test_llvm_loops.py)
WITH_LATER_OPS = {"lenet.flow"}


def test_examples_without_loops_if_or_conv_have_zero_host_steps(examples):
    for example, model in examples.items():
        host = {f"{name}: {fn._executable.graph.op(n).name} ({why})"
                for name, fn in model.functions.items() for n, why in fn._executable.host_steps().items()}
        later = {h for h in host if any(f": {op} (" in h for op in LATER)}
        if example in WITH_LATER_OPS:
            assert later, f"{example} has no loop/if/conv host step any more: drop it from WITH_LATER_OPS"
            host -= later
        assert not host, f"{example}: host steps {sorted(host)}"
