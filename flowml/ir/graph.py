"""The IR graph: typed op nodes with their operands stored on each node.

Nodes are ints; a node's data is `op` (an `Op`), `attrs` (a dict of static arguments), `type`
(a `TensorType`), `loc` (the source `Loc` it came from) and `name` (the user's name for it, if
any). Each node keeps its operands as an ordered tuple (`x * x` has operands `(x, x)`) and
each node the list of its users, so walking the graph is a dict lookup per step: the passes
read operands tens of thousands of times per compile, which networkx's edge views made the
largest cost of a compile. `Graph.nx` builds a networkx MultiDiGraph (edge `u -> v` with key
`i`: `u` is operand `i` of `v`) on demand, for analysis and drawing. Node ids grow as nodes are
added and a node only ever consumes nodes that existed before it, so ascending ids are a
topological order.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
import linecache
import os
import sys
from typing import Collection, Iterable

from ..errors import FlowInternalError, FlowTypeError, Loc
from .types import TensorType

_loc_stack: list[Loc | None] = []


class at:
    """`with at(loc):` nodes created inside the block get `loc` as their source location.
    (A class, not a generator context manager: the rewrite engine enters one per node.)"""

    __slots__ = ("loc",)

    def __init__(self, loc: Loc | None):
        self.loc = loc

    def __enter__(self) -> None:
        _loc_stack.append(self.loc)

    def __exit__(self, *exc) -> None:
        _loc_stack.pop()


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def current_loc() -> Loc | None:
    """The innermost `at(...)` location; else the first Python frame outside flowml (so graphs
    built from Python point at the user's line)."""
    if _loc_stack:
        return _loc_stack[-1]
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame = frame.f_back
    if frame is None or frame.f_code.co_filename.startswith("<frozen"):
        return None  # flowml called from its own CLI: no user Python line to point at
    line, col = _position(frame)
    return Loc(frame.f_code.co_filename, line, col)


@functools.lru_cache(maxsize=64)
def _positions(code) -> tuple:
    """The position table of a code object (a script builds many nodes from one)."""
    return tuple(code.co_positions())


def _position(frame) -> tuple[int, int]:
    """(line, 1-based column) of the expression `frame` is running — the call or operator that
    reached flowml — from the code's position table (Python 3.11+); column 1 without one."""
    line = frame.f_lineno
    code = frame.f_code
    if not hasattr(code, "co_positions") or frame.f_lasti < 0:
        return line, 1
    positions = _positions(code)
    i = frame.f_lasti // 2  # one entry per 2-byte code unit
    if i >= len(positions):
        return line, 1
    start, _, col, _ = positions[i]
    if start is None or col is None:
        return line, 1
    # col is a UTF-8 byte offset: count characters, so the caret lines up under non-ASCII text
    text = linecache.getline(frame.f_code.co_filename, start)
    if not text:  # (no file to read, as for `python -c`: bytes are the best guess)
        return start, col + 1
    return start, len(text.encode("utf-8")[:col].decode("utf-8", "replace")) + 1


class ShapeError(Exception):
    """Raised by an op's type rule; the graph turns it into a located FlowTypeError."""


@dataclass
class DerivativeRecord:
    """A derivative taken in this graph: `results` = vjp(ys, xs, directions) (kind "vjp": the
    directions are the cotangent seeds of ys) or jvp (kind "jvp": tangents of xs). The optimizer
    takes derivatives again after the stability rewrites, so the gradient of log(1 + exp(x)) is
    sigmoid(x) and not exp(x) / (1 + exp(x))."""

    kind: str
    ys: tuple[int, ...]
    xs: tuple[int, ...]
    directions: tuple[int, ...]
    results: tuple[int, ...]


class Graph:
    def __init__(self) -> None:
        self._data: dict[int, dict] = {}  # insertion order is ascending ids
        self._operands: dict[int, tuple[int, ...]] = {}
        self._users: dict[int, list[int]] = {}  # one entry per use: x * x lists the product twice
        self._next_id = 0
        self.derivatives: list[DerivativeRecord] = []

    # ------------------------------------------------------------ building

    def add(self, op, operands: Iterable[int] = (), attrs: dict | None = None,
            loc: Loc | None = None, name: str | None = None, type: TensorType | None = None) -> int:
        """Add a node applying `op`; infers its type (raising a located FlowTypeError)."""
        operands = tuple(operands)
        attrs = dict(attrs) if attrs else {}
        if loc is None:
            loc = current_loc()
        data = self._data
        if type is None:
            try:
                type = op.infer([data[o]["type"] for o in operands], attrs)
            except ShapeError as e:
                raise FlowTypeError(str(e), loc) from None
        n = self._next_id
        self._next_id += 1
        users = self._users
        for o in operands:
            users[o].append(n)  # (a KeyError here: an operand that is not a node)
        data[n] = {"op": op, "attrs": attrs, "type": type, "loc": loc, "name": name}
        self._operands[n] = operands
        users[n] = []
        return n

    def remove(self, n: int) -> None:
        """Remove node `n`, which nothing may use (a duplicate a rebuild merged away)."""
        if self._users[n]:
            raise FlowInternalError(f"cannot remove %{n}: it has users {self.users(n)}")
        for o in self._operands.pop(n):
            self._users[o].remove(n)
        del self._data[n], self._users[n]

    def set_operands(self, n: int, operands: Iterable[int]) -> None:
        """Replace `n`'s operands (its type is not inferred again: the caller keeps it right)."""
        for o in self._operands[n]:
            self._users[o].remove(n)
        self._operands[n] = tuple(operands)
        for o in self._operands[n]:
            self._users[o].append(n)

    # ------------------------------------------------------------ reading

    def __contains__(self, n: int) -> bool:
        return n in self._data

    def __len__(self) -> int:
        return len(self._data)

    def data(self, n: int) -> dict:
        return self._data[n]

    def op(self, n: int):
        return self._data[n]["op"]

    def type(self, n: int) -> TensorType:
        return self._data[n]["type"]

    def attrs(self, n: int) -> dict:
        return self._data[n]["attrs"]

    def loc(self, n: int) -> Loc | None:
        return self._data[n]["loc"]

    def name(self, n: int) -> str | None:
        return self._data[n]["name"]

    def set_name(self, n: int, name: str) -> None:
        if self._data[n]["name"] is None:
            self._data[n]["name"] = name

    def operands(self, n: int) -> tuple[int, ...]:
        return self._operands[n]

    def users(self, n: int) -> list[int]:
        return sorted(set(self._users[n]))

    @property
    def next_id(self) -> int:
        """The id the next node added gets (nodes added since `k = g.next_id` are range(k, g.next_id))."""
        return self._next_id

    def nodes(self) -> list[int]:
        return list(self._data)  # ascending: nodes are only ever appended

    def ancestors(self, roots: Iterable[int], stop: Collection[int] = ()) -> set[int]:
        """`roots` and every node they depend on (iterative: graphs can be deep); a node of `stop`
        is included but not looked through."""
        operands = self._operands
        seen: set[int] = set()
        stack = list(roots)
        while stack:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            if n not in stop:
                stack.extend(operands[n])
        return seen

    def descendants(self, roots: Iterable[int]) -> set[int]:
        users = self._users
        seen: set[int] = set()
        stack = list(roots)
        while stack:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            stack.extend(users[n])
        return seen

    def topo(self, nodes: Iterable[int]) -> list[int]:
        """`nodes` in an order where operands come first."""
        return sorted(nodes)

    def find(self, opname: str) -> list[int]:
        return [n for n, d in self._data.items() if d["op"].name == opname]

    @property
    def nx(self):
        """A networkx MultiDiGraph of this graph (built on each access: a copy for analysis and
        drawing; changing it does not change the graph)."""
        import networkx as nx
        g = nx.MultiDiGraph()
        for n, d in self._data.items():
            g.add_node(n, **d)
        for n, ops in self._operands.items():
            for i, o in enumerate(ops):
                g.add_edge(o, n, key=i)
        return g
