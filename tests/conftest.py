"""The suite checks semantics on the reference backend by default (each test compiles models, and
native compiles cost tenths of a second each); the native backends have their own suites that
compare them with the reference (tests/test_llvm_*.py, tests/test_opencl_*.py).

Compile caches: one fresh directory per test run, shared by every pytest-xdist worker (they
inherit the environment of the process that starts them), holds both flowml's LLVM object cache
(FLOWML_CACHE_DIR) and PoCL's kernel cache (POCL_CACHE_DIR). Each run starts cold, as on a fresh
CI machine, and never reads or fills the user's ~/.cache/flowml; a model compiled by one test is
a cache hit for every later test of the run, on either worker. Set FLOWML_TEST_CACHE_DIR to keep
the caches in that directory across runs instead.

Long end-to-end runs are marked `slow` and deselected by default (pyproject's addopts);
`python -m pytest -m slow` runs only them, `python -m pytest -m ""` everything.
"""

import os
import shutil
import tempfile

import pytest

os.environ.setdefault("FLOWML_BACKEND", "reference")

_OWN_CACHE = None  # the directory this process made (and removes at the end), if any


def _share_one_cache_dir() -> None:
    global _OWN_CACHE
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return  # a worker: the controller already set the variables it inherited
    base = os.environ.get("FLOWML_TEST_CACHE_DIR")
    if base:
        os.makedirs(base, exist_ok=True)
    else:
        base = _OWN_CACHE = tempfile.mkdtemp(prefix="flowml-test-cache-")
    os.environ["FLOWML_CACHE_DIR"] = base
    os.environ["POCL_CACHE_DIR"] = os.path.join(base, "pocl")


# At import, before any test module imports flowml (the OpenCL device module reads
# POCL_CACHE_DIR when it is imported, PoCL when the platform starts) and before xdist starts
# its workers.
_share_one_cache_dir()


def pytest_unconfigure(config):
    if _OWN_CACHE is not None:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


@pytest.fixture
def verify_ir(monkeypatch):
    """The IR verifier after every optimizer phase (flowml/ir/verify.py): on for the optimizer's
    own tests (`pytestmark = pytest.mark.usefixtures("verify_ir")`)."""
    monkeypatch.setenv("FLOWML_VERIFY", "1")
