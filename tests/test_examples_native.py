"""Every example on the LLVM backend: its entry points declare only the allowed externals, and
every example runs with zero host steps (loops, the lazy `if` and convolutions included)."""

from __future__ import annotations

import pathlib

import pytest

import flowml
from flowml.backends.llvm import blas
from test_lowering_registry import _ALLOWED, _externals


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


def test_every_example_has_zero_host_steps(examples):
    for example, model in examples.items():
        host = {f"{name}: {fn._executable.graph.op(n).name} ({why})"
                for name, fn in model.functions.items() for n, why in fn._executable.host_steps().items()}
        assert not host, f"{example}: host steps {sorted(host)}"
