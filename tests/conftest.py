"""The suite checks semantics on the reference backend by default (each test compiles models, and
native compiles cost tenths of a second each); the native backends have their own suites that
compare them with the reference (tests/test_llvm_*.py, tests/test_opencl_*.py)."""

import os

os.environ.setdefault("FLOWML_BACKEND", "reference")


import pytest  # noqa: E402


@pytest.fixture
def verify_ir(monkeypatch):
    """The IR verifier after every optimizer phase (flowml/ir/verify.py): on for the optimizer's
    own tests (`pytestmark = pytest.mark.usefixtures("verify_ir")`)."""
    monkeypatch.setenv("FLOWML_VERIFY", "1")
