"""Which ops the LLVM backend lowers is an explicit, tested fact, and what native code calls is
a closed list.

- Every op in the registry has an LLVM lowering, except user-wrapped Python ops (host steps
  that `--emit plan` names).
- `flowml/ir` imports no backend.
- An entry point's module declares only BLAS routines, vector math / libm, the thread pool and
  LLVM intrinsics: no Python C-API, nothing else (checked on every example in
  test_examples_native.py, with the patterns here).
"""

from __future__ import annotations

import ast
import pathlib
import re

import flowml
import flowml.ir.fused  # noqa: F401  (registers `fused`)
import flowml.ir.scan  # noqa: F401  (registers `scan`, `rng_fold`)
from flowml.backends.llvm.lowering import LOWERINGS
from flowml.ir import ops as P


def _handled_by_the_entry(op) -> bool:
    return op.leaf or op.view  # leaves and views are frame slots, not steps


def test_every_op_but_wrapped_ones_has_an_llvm_lowering():
    missing = {name for name, op in P.OPS.items()
               if name not in LOWERINGS and not _handled_by_the_entry(op) and not getattr(op, "wrapped", False)}
    assert not missing, f"ops without an LLVM lowering: {sorted(missing)}"
    assert not set(LOWERINGS) - set(P.OPS), "a lowering for an op that does not exist"


def _imports(path: pathlib.Path, package_root: pathlib.Path):
    """The absolute names of the modules `path` imports (relative imports resolved)."""
    parts = list(path.relative_to(package_root.parent).with_suffix("").parts)
    package = parts if parts[-1] == "__init__" else parts[:-1]
    package = [p for p in package if p != "__init__"]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            yield ".".join(base + ([node.module] if node.module else []))
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names)


# the loop op's run and its derivative transforms, which the native-loops issue moves to
# flowml/passes and the backends
LOOPS_TO_MOVE = {"scan.py"}


def test_the_ir_package_imports_no_backend_and_no_pass():
    root = pathlib.Path(flowml.__file__).parent
    for path in (root / "ir").rglob("*.py"):
        if path.name in LOOPS_TO_MOVE:
            continue
        for name in _imports(path, root):
            assert not name.startswith(("flowml.backends", "flowml.passes")), f"{path.name} imports {name}"


_ALLOWED = re.compile(r"^(llvm\..*|flowml_(mvec_)?\w+|_ZGV\w+|pthread_create|pthread_join|"
                      r"(exp|log|log1p|expm1|sin|cos|tanh|erf|erfc|pow|fmod)f?)$")


# what a fn's profiling build (flowml/backends/llvm/profiling.py, tests/test_profiler.py) calls
# beyond its ordinary build: the monotonic clock, read around each step
PROFILING_EXTERNALS = {"clock_gettime"}


def _externals(model) -> set[str]:
    names = set()
    for fn in model.functions.values():
        program = fn._executable.program
        if program is not None:
            names |= program.external_symbols()
    return names
