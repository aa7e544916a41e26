"""The IR graph: a networkx MultiDiGraph of typed op nodes.

Nodes are ints; a node's data is `op` (an `Op`), `attrs` (a dict of static arguments), `type`
(a `TensorType`), `loc` (the source `Loc` it came from) and `name` (the user's name for it, if
any). An edge `u -> v` with key `i` says that `u` is operand `i` of `v`; a MultiDiGraph keeps
both edges of `x * x`. Node ids grow as nodes are added and a node only ever consumes nodes that
existed before it, so ascending ids are a topological order.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
import linecache
import os
import sys
from typing import Iterable

import networkx as nx

from ..errors import FlowInternalError, FlowTypeError, Loc
from .types import TensorType

_loc_stack: list[Loc | None] = []


@contextlib.contextmanager
def at(loc: Loc | None):
    """Nodes created inside this block get `loc` as their source location."""
    _loc_stack.append(loc)
    try:
        yield
    finally:
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
        self.nx = nx.MultiDiGraph()
        self._next_id = 0
        self.derivatives: list[DerivativeRecord] = []

    # ------------------------------------------------------------ building

    def add(self, op, operands: Iterable[int] = (), attrs: dict | None = None,
            loc: Loc | None = None, name: str | None = None, type: TensorType | None = None) -> int:
        """Add a node applying `op`; infers its type (raising a located FlowTypeError)."""
        operands = list(operands)
        attrs = dict(attrs or {})
        if loc is None:
            loc = current_loc()
        if type is None:
            try:
                type = op.infer([self.type(o) for o in operands], attrs)
            except ShapeError as e:
                raise FlowTypeError(str(e), loc) from None
        n = self._next_id
        self._next_id += 1
        self.nx.add_node(n, op=op, attrs=attrs, type=type, loc=loc, name=name)
        for i, o in enumerate(operands):
            self.nx.add_edge(o, n, key=i)
        return n

    # ------------------------------------------------------------ reading

    def __contains__(self, n: int) -> bool:
        return n in self.nx

    def __len__(self) -> int:
        return self.nx.number_of_nodes()

    def data(self, n: int) -> dict:
        return self.nx.nodes[n]

    def op(self, n: int):
        return self.nx.nodes[n]["op"]

    def type(self, n: int) -> TensorType:
        return self.nx.nodes[n]["type"]

    def attrs(self, n: int) -> dict:
        return self.nx.nodes[n]["attrs"]

    def loc(self, n: int) -> Loc | None:
        return self.nx.nodes[n]["loc"]

    def name(self, n: int) -> str | None:
        return self.nx.nodes[n]["name"]

    def set_name(self, n: int, name: str) -> None:
        if self.nx.nodes[n]["name"] is None:
            self.nx.nodes[n]["name"] = name

    def operands(self, n: int) -> list[int]:
        edges = sorted(self.nx.in_edges(n, keys=True), key=lambda e: e[2])
        ops = [u for u, _, _ in edges]
        if [k for _, _, k in edges] != list(range(len(ops))):
            raise FlowInternalError(f"node %{n} has broken operand edges")
        return ops

    def users(self, n: int) -> list[int]:
        return sorted({v for _, v in self.nx.out_edges(n)})

    def nodes(self) -> list[int]:
        return sorted(self.nx.nodes)

    def ancestors(self, roots: Iterable[int]) -> set[int]:
        """`roots` and every node they depend on (iterative: graphs can be deep)."""
        seen: set[int] = set()
        stack = list(roots)
        while stack:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            stack.extend(u for u, _ in self.nx.in_edges(n))
        return seen

    def descendants(self, roots: Iterable[int]) -> set[int]:
        seen: set[int] = set()
        stack = list(roots)
        while stack:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            stack.extend(v for _, v in self.nx.out_edges(n))
        return seen

    def topo(self, nodes: Iterable[int]) -> list[int]:
        """`nodes` in an order where operands come first."""
        return sorted(nodes)

    def find(self, opname: str) -> list[int]:
        return [n for n in self.nodes() if self.op(n).name == opname]
