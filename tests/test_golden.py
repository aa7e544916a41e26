"""Golden IR: `flowml compile examples/X.flow --emit ir` (every fn, fully optimized) is frozen in
tests/golden/X.ir, so a change of the IR's data structures or of the passes' bookkeeping
(issue 21's compile-time work, refactors) cannot change the optimized graphs by accident.

A change that alters a dump on purpose (a new rewrite rule, a better fusion) regenerates the
goldens and says why in its commit message:

    FLOWML_REGEN_GOLDEN=1 python -m pytest tests/test_golden.py
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import run_cli

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).resolve().parent / "golden"
EXAMPLES = sorted((ROOT / "examples").glob("*.flow"))


def test_every_example_has_a_golden():
    assert EXAMPLES and {p.stem for p in EXAMPLES} == {p.stem for p in GOLDEN.glob("*.ir")}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_optimized_ir_is_unchanged(path):
    r = run_cli("compile", path.relative_to(ROOT), "--emit", "ir")
    assert r.returncode == 0, r.stderr
    golden = GOLDEN / f"{path.stem}.ir"
    if os.environ.get("FLOWML_REGEN_GOLDEN"):
        golden.write_text(r.stdout, encoding="utf-8")
    assert r.stdout == golden.read_text(encoding="utf-8"), (
        f"the optimized IR of {path.name} changed; if on purpose, regenerate (see this module's docstring)")
