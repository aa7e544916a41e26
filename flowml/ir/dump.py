"""Text and DOT views of a graph: one SSA line per node, readable like a jaxpr.

    %7 = matmul %3, %5 : f64[N]  # logreg.flow:8:14 (p_1)

Nodes are numbered afresh in each dump, in topological order.
"""

from __future__ import annotations

import os

import numpy as np

from . import ops as P
from .graph import Graph
from .types import DTYPE_NAMES

_LEAF_ATTR = {"input": "name", "param": "name"}


def _fmt_value(v, bodies: dict | None = None) -> str:
    if isinstance(v, Graph):  # a loop body: named here, listed after the function (`bodies`)
        if bodies is None:
            return f"<graph of {len(v)} nodes>"
        return bodies.setdefault(id(v), (f"@body{len(bodies)}", v))[0]
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
        inner = ", ".join(_fmt_value(x, bodies) for x in v)
        return f"({inner},)" if len(v) == 1 else f"({inner})"
    if v is None:
        return "none"
    return str(v)


def _fmt_loc(loc) -> str:
    if loc is None:
        return ""
    return f"{os.path.basename(loc.file)}:{loc.line}:{loc.col}"


def node_line(graph, n: int, ids: dict[int, str], bodies: dict | None = None) -> str:
    op = graph.op(n)
    attrs = graph.attrs(n)
    args = ", ".join(ids[o] for o in graph.operands(n))
    if op.name in _LEAF_ATTR:
        body = f"{op.name} {attrs[_LEAF_ATTR[op.name]]}"
    elif op.name == "const":
        body = f"const {_fmt_value(attrs['value'])}"
    elif op.name == "dim":
        body = f"dim {attrs['dim']}"
    elif op.name == "fused":
        body = f"fused[{fused_formula(attrs['body'], attrs['reduce'], [ids[o] for o in graph.operands(n)])}]"
    else:
        # (a wrapped op's result_type is the node's type, shown anyway)
        shown = ", ".join(f"{k}={_fmt_value(v, bodies)}" for k, v in attrs.items()
                          if not (op.wrapped and k == "result_type"))
        body = op.name + (f" {args}" if args else "") + (f" {{{shown}}}" if shown else "")
    line = f"{ids[n]} = {body} : {graph.type(n)}"
    comment = " ".join(x for x in (_fmt_loc(graph.loc(n)), f"({graph.name(n)})" if graph.name(n) else "") if x)
    return line + (f"  # {comment}" if comment else "")


_INFIX = {"add": "+", "sub": "-", "mul": "*", "div": "/", "pow": "**", "floordiv": "//", "mod": "%",
          "eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">=", "and": "and", "or": "or"}


def fused_formula(body, reduce, inputs: list[str]) -> str:
    """A fused node's body as one scalar formula: `softplus(%3) * sigmoid(%3) + %3 * %3`.
    A value used twice is named once (`t1 = exp(%3); t1 / (1 + t1)`)."""
    uses: dict[int, int] = {}
    for ins in body:
        for a in ins.args:
            uses[a] = uses.get(a, 0) + 1
    nin = len(inputs)
    text: dict[int, str] = {i: name for i, name in enumerate(inputs)}
    lets: list[str] = []
    for i, ins in enumerate(body):
        k = nin + i
        args = [text[a] for a in ins.args]
        if ins.op == "const":
            expr = _fmt_value(ins.attr("value"))
        elif ins.op in _INFIX and len(args) == 2:
            expr = f"({args[0]} {_INFIX[ins.op]} {args[1]})"
        elif ins.op == "neg":
            expr = f"-{args[0]}"
        elif ins.op == "not":
            expr = f"not {args[0]}"
        elif P.OPS[ins.op].kernel_identity:
            expr = args[0]  # the identity on each element
        elif ins.op == "cast":
            expr = f"cast({_strip(args[0])}, {_fmt_value(ins.attr('dtype'))})"
        else:  # a call's parentheses delimit its arguments: sigmoid(%4 + %3), not sigmoid((%4 + %3))
            expr = f"{ins.op}({', '.join(_strip(a) for a in args)})"
        if uses.get(k, 0) > 1 and ins.op != "const":
            name = f"t{i}"
            lets.append(f"{name} = {_strip(expr)}")
            expr = name
        text[k] = expr
    result = _strip(text[nin + len(body) - 1] if body else inputs[0])
    if reduce is not None:
        name, axis, keepdims = reduce
        result = f"{name}({result}, axis={_fmt_value(tuple(axis))}" + (", keepdims=true)" if keepdims else ")")
    return "; ".join(lets + [result])


def _strip(expr: str) -> str:
    if expr.startswith("(") and expr.endswith(")"):
        depth = 0
        for i, c in enumerate(expr):
            depth += c == "("
            depth -= c == ")"
            if depth == 0 and i < len(expr) - 1:
                return expr
        return expr[1:-1]
    return expr


def dump_nodes(graph, roots: list[int], bodies: dict | None = None) -> tuple[list[str], dict[int, str]]:
    nodes = graph.topo(graph.ancestors(roots))
    ids = {n: f"%{i}" for i, n in enumerate(nodes)}
    return [node_line(graph, n, ids, bodies) for n in nodes], ids


def _dump_bodies(bodies: dict) -> list[str]:
    """The loop bodies a dump named (`@body0 = graph { ... }`), nested ones after their parent.
    A body's nodes keep their own ids (`%9`), which its loop's attrs (`outputs=(9, 13)`) name."""
    lines, done = [], 0
    while done < len(bodies):
        name, body = list(bodies.values())[done]
        done += 1
        nodes = body.topo(body.nodes())
        ids = {n: f"%{n}" for n in nodes}
        lines.append(f"{name} = graph {{")
        lines += ["  " + node_line(body, n, ids, bodies) for n in nodes]
        lines.append("}")
    return lines


def dump_function(program, fn, graph=None, outputs=None, updates=None) -> str:
    """One function as SSA text; `graph`/`outputs`/`updates` give an optimized version of it
    (outputs as node ids in the order of fn.outputs, updates as (param, node id) pairs)."""
    graph = graph or program.graph
    outputs = outputs if outputs is not None else [v.id for _, v in fn.outputs]
    updates = updates if updates is not None else [(u.param, u.value.id) for u in fn.updates]
    bodies: dict = {}
    lines, ids = dump_nodes(graph, list(outputs) + [n for _, n in updates], bodies)
    header = f"fn {fn.name}({', '.join(f'{n}: {program.inputs[n].var.type}' for n in fn.inputs)}) {{"
    body = ["  " + line for line in lines]
    if outputs:
        body.append("  return " + ", ".join(f"{ids[n]} ({name})" for (name, _), n in zip(fn.outputs, outputs)))
    for param, n in updates:
        body.append(f"  update {param} <- {ids[n]}")
    return "\n".join([header] + body + ["}"] + _dump_bodies(bodies))


def node_label(graph, n: int, ids: dict[int, str]) -> str:
    """A node in a few words, for a drawing: its op and what tells it apart (`param w`,
    `const 0.5`, a fused node's formula over its operands named by `ids`)."""
    op = graph.op(n)
    if op.name in _LEAF_ATTR:
        return f"{op.name} {graph.attrs(n)[_LEAF_ATTR[op.name]]}"
    if op.name == "const":
        return f"const {_fmt_value(graph.attrs(n)['value'])}"
    if op.name == "fused":
        a = graph.attrs(n)
        return f"fused {fused_formula(a['body'], a['reduce'], [ids[o] for o in graph.operands(n)])}"
    return op.name


def _dot_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def to_dot(program, fn, graph=None, outputs=None, updates=None) -> str:
    """Graphviz DOT for one function: nodes labelled with op and type, edges with operand index
    (`graph`/`outputs`/`updates`: an optimized version, as for `dump_function`)."""
    graph = graph or program.graph
    outputs = outputs if outputs is not None else [v.id for _, v in fn.outputs]
    updates = updates if updates is not None else [(u.param, u.value.id) for u in fn.updates]
    roots = list(outputs) + [n for _, n in updates]
    nodes = graph.topo(graph.ancestors(roots))
    lines = [f'digraph "{_dot_escape(fn.name)}" {{', "  rankdir=TB;", '  node [shape=box, fontname="monospace"];']
    for i, n in enumerate(nodes):
        op = graph.op(n)
        label = node_label(graph, n, {o: f"%{o}" for o in graph.operands(n)})
        label = _dot_escape(label) + "\\n" + _dot_escape(str(graph.type(n)))
        shape = ', shape=ellipse' if op.name in ("input", "param") else ""
        lines.append(f'  n{n} [label="{label}"{shape}];')
    for n in nodes:
        for k, o in enumerate(graph.operands(n)):
            lines.append(f'  n{o} -> n{n} [label="{k}"];')
    for (name, _), n in zip(fn.outputs, outputs):
        lines.append(f'  out_{_safe(name)} [label="{_dot_escape(name)}", shape=plaintext];')
        lines.append(f"  n{n} -> out_{_safe(name)};")
    for param, n in updates:
        lines.append(f'  upd_{_safe(param)} [label="{_dot_escape(param)} <-", shape=plaintext];')
        lines.append(f"  n{n} -> upd_{_safe(param)};")
    lines.append("}")
    return "\n".join(lines)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)
