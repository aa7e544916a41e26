"""What the explorer page shows of one fn, as JSON-able data, and the DOT text of its graphs.

A fn is shown after each phase the optimizer ran (`pipeline.optimize(trace=...)`), its nodes
numbered as `flowml compile --emit ir --after PHASE` numbers them (`%k`, afresh per phase). A
node's `from` and `rules` say which nodes of the phase before it stands for and which rules
built it (`passes.provenance`); `removed` lists the nodes of the phase before that no node of
this one stands for as it was (dropped, or replaced by a rule's result).
"""

from __future__ import annotations

from ..ir.dump import _dump_bodies, _dot_escape, _fmt_loc, dump_nodes, fused_formula, node_label
from ..ir.types import Sym, TensorType
from ..passes.pipeline import PIPELINE, Snapshot
from ..passes.provenance import compose

PHASE_DOCS = {"parse": "the graph as built from the source: derivatives expanded, nothing optimized"}
PHASE_DOCS.update({p.name: p.doc for p in PIPELINE})
LABEL_CHARS = 44  # a fused node's formula is cut to this many characters in the drawing


class Sources:
    """The source files the nodes point at: each file's text, and an index per file."""

    def __init__(self):
        self.files: list[dict] = []
        self._index: dict[str, int | None] = {}  # (None: a file that cannot be read)

    def index(self, loc) -> int | None:
        file = loc.file
        if file not in self._index:
            text = loc.source if loc.source is not None else _read(file)
            if text is None:
                self._index[file] = None
                return None
            self._index[file] = len(self.files)
            self.files.append({"file": file, "lines": text.splitlines()})
        return self._index[file]


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _roots(s: Snapshot) -> list[int]:
    return list(s.outputs) + [n for _, n in s.updates]


def _number(k: str) -> int:
    return int(k[1:])  # "%12" -> 12


def phase_data(s: Snapshot, prev: Snapshot | None, prev_ids: dict[int, str] | None, sources: Sources,
               stats: dict, out_names: list[str]) -> tuple[dict, dict[int, str], str]:
    """(the phase's data, its node numbering, its DOT text); `out_names`: the fn's outputs."""
    roots = _roots(s)
    g = s.graph
    bodies: dict = {}
    lines, ids = dump_nodes(g, roots, bodies)
    nodes = sorted(ids)
    changes = compose(s.steps, nodes) if prev is not None else None
    users: dict[int, list[int]] = {}
    for n in nodes:
        for o in g.operands(n):
            users.setdefault(o, []).append(n)
    out_nodes = []
    for n, line in zip(nodes, lines):
        op = g.op(n)
        d = {"k": _number(ids[n]), "op": op.name, "type": str(g.type(n)), "ir": line,
             "operands": [_number(ids[o]) for o in g.operands(n)],
             "users": sorted({_number(ids[u]) for u in users.get(n, [])})}
        if g.name(n):
            d["name"] = g.name(n)
        loc = g.loc(n)
        if loc is not None:  # [source file's index (None: no text), line, column, "file:line:col"]
            d["loc"] = [sources.index(loc), loc.line, loc.col, _fmt_loc(loc)]
        if op.name == "fused":
            a = g.attrs(n)
            d["formula"] = fused_formula(a["body"], a["reduce"], [ids[o] for o in g.operands(n)])
        if op.leaf:
            d["leaf"] = True
        if changes is not None:
            d["from"] = sorted(_number(prev_ids[u]) for u in changes.sources.get(n, ()) if u in prev_ids)
            if n in changes.rules:
                d["rules"] = list(changes.rules[n])
        out_nodes.append(d)
    data = {"phase": s.phase, "doc": PHASE_DOCS.get(s.phase, ""), "nodes": out_nodes,
            "outputs": [_number(ids[n]) for n in s.outputs],
            "updates": [[p, _number(ids[n])] for p, n in s.updates],
            "stats": [[k.split(": ", 1)[1], v] for k, v in stats.items() if k.startswith(s.phase + ": ")]}
    if bodies:
        data["bodies"] = "\n".join(_dump_bodies(bodies))
    if changes is not None:
        fate = changes.fate(nodes)
        removed = []
        for u in sorted(prev_ids):
            to = fate.get(u, [])
            if to and any(y not in changes.rules for y in to):
                continue  # kept (copied, or merged with its twin)
            entry = {"k": _number(prev_ids[u]), "op": prev.graph.op(u).name, "to": [_number(ids[y]) for y in to]}
            if to:
                entry["rules"] = list(dict.fromkeys(r for y in to for r in changes.rules[y]))
            removed.append(entry)
        data["removed"] = removed
    if s.plan is not None:
        data["memory"] = _memory(s, ids)
    return data, ids, to_dot(g, nodes, ids, s, out_names)


def _memory(s: Snapshot, ids: dict[int, str]) -> dict:
    plan = s.plan
    members: dict[int, list[int]] = {}
    for n, b in plan.assign.items():
        members.setdefault(b, []).append(_number(ids[n]))
    buffers = []
    for b, buf in enumerate(plan.buffers):
        symbolic = any(isinstance(d, Sym) for d in buf.shape)  # (its bytes depend on the dims)
        buffers.append({"b": b, "type": str(TensorType(buf.dtype, buf.shape)), "itemsize": buf.dtype.itemsize,
                        "bytes": None if symbolic else buf.nbytes({}), "nodes": sorted(members.get(b, []))})
    return {"buffers": buffers,
            "inplace": [[p, _number(ids[n])] for p, n in plan.inplace.items() if n in ids],
            "views": [[_number(ids[v]), _number(ids[src])] for v, src in plan.alias.items() if v in ids and src in ids],
            "assign": {str(_number(ids[n])): b for n, b in plan.assign.items() if n in ids}}


def _short(text: str) -> str:
    return text if len(text) <= LABEL_CHARS else text[:LABEL_CHARS - 3] + "..."  # (ASCII: Graphviz measures it)


def to_dot(g, nodes: list[int], ids: dict[int, str], s: Snapshot, out_names: list[str]) -> str:
    """The phase's graph in DOT: node `n{k}` per node (`%k`), operand -> user edges, and the
    fn's outputs and updates as plain text nodes. No styling (the page styles nodes by class) and
    no font (`layout` sets the one its program measures)."""
    lines = ["digraph {", "  rankdir=TB; nodesep=0.25; ranksep=0.35;",
             '  node [shape=box, fontsize=10, height=0.3, margin="0.08,0.03"];',
             "  edge [arrowsize=0.6];"]
    for n in nodes:
        k = _number(ids[n])
        head = _short(node_label(g, n, ids))
        name = g.name(n)
        label = f"%{k} {head}" + (f"  ({name})" if name and not g.op(n).leaf else "")
        shape = ", shape=ellipse" if g.op(n).leaf else ""
        lines.append(f'  n{k} [label="{_dot_escape(label)}\\n{_dot_escape(str(g.type(n)))}"{shape}];')
    for n in nodes:
        for o in g.operands(n):
            lines.append(f"  n{_number(ids[o])} -> n{_number(ids[n])};")
    for i, (name, n) in enumerate(zip(out_names, s.outputs)):
        lines.append(f'  out{i} [label="return {_dot_escape(name)}", shape=plaintext];  n{_number(ids[n])} -> out{i};')
    for i, (p, n) in enumerate(s.updates):
        lines.append(f'  upd{i} [label="{_dot_escape(p)} <-", shape=plaintext];  n{_number(ids[n])} -> upd{i};')
    lines.append("}")
    return "\n".join(lines)
