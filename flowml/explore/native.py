"""The native code of each node of an optimized fn, for the explorer: what `flowml compile
--emit llvm|asm|opencl|plan` prints for the whole fn, cut into the pieces each node became.

LLVM: a fused node n is the function `@k{n}` of the fn's module; other native steps are
functions named after their op and node (`@softmax26.3`); a BLAS call or a host step has no
function of its own (the plan says what it is). OpenCL: each fused node's kernel source.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field


@dataclass
class NativeCode:
    backend: str
    summary: str = ""
    code: dict[int, dict[str, str]] = field(default_factory=dict)  # node -> {"LLVM IR": text, ...}
    plan: dict[int, str] = field(default_factory=dict)  # node -> what it runs as ("native: kernel k8 ...")


def _llvm_functions(text: str) -> dict[str, str]:
    """The `define`s of an LLVM module: name -> its text."""
    out, name, body = {}, None, []
    for line in text.splitlines():
        if name is None:
            m = re.match(r"define [^@]*@([\w.$]+)\(", line)
            if m:
                name, body = m.group(1), [line]
        else:
            body.append(line)
            if line == "}":
                out[name], name = "\n".join(body), None
    return out


def _asm_functions(text: str) -> dict[str, str]:
    """The functions of an assembly listing: name -> from its label to its `.Lfunc_end`."""
    out, name, body = {}, None, []
    for line in text.splitlines():
        if name is None:
            m = re.match(r"([\w.$]+):", line)
            if m and not m.group(1).startswith("."):
                name, body = m.group(1), [line]
        else:
            body.append(line)
            if line.startswith(".Lfunc_end"):
                out[name], name = "\n".join(body), None
    return out


def _functions_of(n: int, names) -> list[str]:
    """The module's functions that node n became: k{n}, or an op's `{stem}{n}.{i}`."""
    pattern = re.compile(rf"(?:k|.*\D){n}(?:\.\d+)?")
    return [name for name in names if pattern.fullmatch(name) and not name.startswith("flowml_")]


def llvm_code(opt, asm: bool, executable=None) -> NativeCode:
    """The LLVM backend's code of the optimized fn `opt`; `executable`: its compiled LLVMExecutable
    when there is one (else the module is generated, and compiled only for `asm`)."""
    from ..backends.llvm.backend import LLVMExecutable
    ex = executable or LLVMExecutable(opt.graph, opt.outputs, opt.updates, opt.plan, compile=asm)
    out = NativeCode("llvm", ex.summary())
    if ex.program is None:
        return out
    kinds = {"native": "native", "host": "host step", "view": "view", "none": "folded"}
    for s in ex.program.steps:
        if s.kind != "leaf":
            detail = s.detail if s.kind != "none" else "read by its matmuls with a transpose flag"
            out.plan[s.node] = f"{kinds[s.kind]}: {detail}" if detail else kinds[s.kind]
    ir = _llvm_functions(ex.llvm_ir())
    assembly = _asm_functions(ex.assembly()) if asm else {}
    for n in ex.nodes:
        names = _functions_of(n, ir)
        if names:
            code = {"LLVM IR": "\n\n".join(ir[f] for f in names)}
            if assembly:
                code["assembly"] = "\n\n".join(assembly[f] for f in names if f in assembly)
            out.code[n] = code
    return out


def opencl_code(opt, spec: str, executable=None) -> NativeCode:
    """The OpenCL backend's kernel of each fused node (device `spec`: opencl or opencl:N)."""
    if executable is None:
        from ..backends.opencl.backend import OpenCLBackend
        executable = OpenCLBackend(spec).compile(opt.graph, opt.outputs, opt.updates, opt.plan)
    out = NativeCode("opencl", f"{len(executable.kernels)} OpenCL kernel(s) on {executable.device.name.strip()}")
    for n, k in executable.kernels.items():
        out.code[n] = {"OpenCL C": k.gen.source}
        out.plan[n] = "native: OpenCL kernel"
    return out
