"""Backends: each compiles a function of a graph into something that runs it on numpy arrays.

A backend has `create_state(values) -> state` (where params live between calls; `get`/`set`
by name) and `compile(graph, outputs, updates) -> executable`, called as
`executable(inputs_by_name, state, dim_env) -> list of output arrays` (updates applied to state).
"""

from __future__ import annotations

import os

from ..errors import FlowError

DEFAULT_BACKEND = "llvm"


def backend_names() -> list[str]:
    return ["llvm", "reference", "opencl", "opencl:N"]


def get_backend(name: str | None = None):
    name = name or os.environ.get("FLOWML_BACKEND") or DEFAULT_BACKEND
    if name == "reference":
        from .reference import ReferenceBackend
        return ReferenceBackend()
    if name == "llvm":
        from .llvm.backend import LLVMBackend
        return LLVMBackend()
    if name == "opencl" or name.startswith("opencl:"):
        from .opencl.backend import OpenCLBackend
        return OpenCLBackend(name)
    raise FlowError(f"unknown backend {name!r}; available: {', '.join(backend_names())}")
