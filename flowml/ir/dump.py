"""Text and DOT views of a graph: one SSA line per node, readable like a jaxpr.

    %7 = matmul %3, %5 : f64[N]  # logreg.flow:8:14 (p_1)

Nodes are numbered afresh in each dump, in topological order.
"""

from __future__ import annotations

import os

import numpy as np

from .types import DTYPE_NAMES

_LEAF_ATTR = {"input": "name", "param": "name"}


def _fmt_value(v) -> str:
    if isinstance(v, bool) or isinstance(v, np.bool_):
        return "true" if v else "false"
    if isinstance(v, np.dtype):
        return DTYPE_NAMES.get(v, str(v))
    if isinstance(v, np.ndarray):
        if v.ndim == 0:
            return _fmt_value(v.item())
        if v.size <= 6:
            return np.array2string(v, separator=", ").replace("\n", "")
        return f"<array {DTYPE_NAMES.get(v.dtype, v.dtype)}{list(v.shape)}>"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, tuple):
        inner = ", ".join(_fmt_value(x) for x in v)
        return f"({inner},)" if len(v) == 1 else f"({inner})"
    if v is None:
        return "none"
    return str(v)


def _fmt_loc(loc) -> str:
    if loc is None:
        return ""
    return f"{os.path.basename(loc.file)}:{loc.line}:{loc.col}"


def node_line(graph, n: int, ids: dict[int, str]) -> str:
    op = graph.op(n)
    attrs = graph.attrs(n)
    args = ", ".join(ids[o] for o in graph.operands(n))
    if op.name in _LEAF_ATTR:
        body = f"{op.name} {attrs[_LEAF_ATTR[op.name]]}"
    elif op.name == "const":
        body = f"const {_fmt_value(attrs['value'])}"
    elif op.name == "dim":
        body = f"dim {attrs['dim']}"
    else:
        shown = ", ".join(f"{k}={_fmt_value(v)}" for k, v in attrs.items())
        body = op.name + (f" {args}" if args else "") + (f" {{{shown}}}" if shown else "")
    line = f"{ids[n]} = {body} : {graph.type(n)}"
    comment = " ".join(x for x in (_fmt_loc(graph.loc(n)), f"({graph.name(n)})" if graph.name(n) else "") if x)
    return line + (f"  # {comment}" if comment else "")


def dump_nodes(graph, roots: list[int]) -> tuple[list[str], dict[int, str]]:
    nodes = graph.topo(graph.ancestors(roots))
    ids = {n: f"%{i}" for i, n in enumerate(nodes)}
    return [node_line(graph, n, ids) for n in nodes], ids


def dump_function(program, fn) -> str:
    roots = [v.id for _, v in fn.outputs] + [u.value.id for u in fn.updates]
    lines, ids = dump_nodes(program.graph, roots)
    header = f"fn {fn.name}({', '.join(f'{n}: {program.inputs[n].var.type}' for n in fn.inputs)}) {{"
    body = ["  " + line for line in lines]
    if fn.outputs:
        body.append("  return " + ", ".join(f"{ids[v.id]} ({name})" for name, v in fn.outputs))
    for u in fn.updates:
        body.append(f"  update {u.param} <- {ids[u.value.id]}")
    return "\n".join([header] + body + ["}"])


def dump_program(program, fn_name: str | None = None) -> str:
    fns = [program.functions[fn_name]] if fn_name else list(program.functions.values())
    return "\n\n".join(dump_function(program, fn) for fn in fns)


def _dot_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def to_dot(program, fn) -> str:
    """Graphviz DOT for one function: nodes labelled with op and type, edges with operand index."""
    graph = program.graph
    roots = [v.id for _, v in fn.outputs] + [u.value.id for u in fn.updates]
    nodes = graph.topo(graph.ancestors(roots))
    lines = [f'digraph "{_dot_escape(fn.name)}" {{', "  rankdir=TB;", '  node [shape=box, fontname="monospace"];']
    for i, n in enumerate(nodes):
        op = graph.op(n)
        label = op.name
        if op.name in _LEAF_ATTR:
            label += f" {graph.attrs(n)['name']}"
        elif op.name == "const":
            label += f" {_fmt_value(graph.attrs(n)['value'])}"
        label = _dot_escape(label) + "\\n" + _dot_escape(str(graph.type(n)))
        shape = ', shape=ellipse' if op.name in ("input", "param") else ""
        lines.append(f'  n{n} [label="{label}"{shape}];')
    for n in nodes:
        for k, o in enumerate(graph.operands(n)):
            lines.append(f'  n{o} -> n{n} [label="{k}"];')
    for name, v in fn.outputs:
        lines.append(f'  out_{_safe(name)} [label="{_dot_escape(name)}", shape=plaintext];')
        lines.append(f"  n{v.id} -> out_{_safe(name)};")
    for u in fn.updates:
        lines.append(f'  upd_{_safe(u.param)} [label="{_dot_escape(u.param)} <-", shape=plaintext];')
        lines.append(f"  n{u.value.id} -> upd_{_safe(u.param)};")
    lines.append("}")
    return "\n".join(lines)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)
