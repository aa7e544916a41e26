"""The LLVM backend's lowering table: for each op, by name, the function that writes its native
code into a function's entry point (JAX's `register_lowering`, kept inside the backend: the op
definitions in `flowml.ir.ops` never import a backend).

A lowering is `lower(w: Lowerer, n: int) -> None` (see `flowml.backends.llvm.entry.Lowerer` for
what it may emit: code in the entry point, kernels beside it, BLAS calls, error checks). It may
raise `HostStep(reason)` before emitting anything when it cannot lower this particular node
(an unsupported dtype, say): the node then runs as a named host step, shown by
`flowml compile --emit plan`. An op with no lowering at all is a host step too, for the reason
"no LLVM lowering". Which ops have one is a tested fact (tests/test_lowering_registry.py).

The families live in the modules below, one per family of `flowml.ir.ops`.
"""

from __future__ import annotations

LOWERINGS: dict[str, object] = {}


class HostStep(Exception):
    """This node runs on the host (its numpy implementation), for `reason`."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def lowers(*names: str):
    """Register the decorated function as the lowering of the ops `names`."""
    def register(fn):
        for name in names:
            if name in LOWERINGS:
                raise ValueError(f"two LLVM lowerings for {name!r}")
            LOWERINGS[name] = fn
        return fn
    return register


from . import collective, control, conv, core, cumulative, decomp, indexing, linalg, reduce, rng, shape, sorting  # noqa: E402,F401,E501
