"""Provenance: which rule built each node of a phase's result, and from which nodes.

Every rewrite of the optimizer copies a graph into a new one and records two things
(`rewrite.Rebuild`, `fuse.fuse`): its `map` (node of the old graph -> the node of the new graph
that stands for it: a copy, a merged common subexpression, or what a rule replaced it by) and
its `fires`, one `(rule, replaced, start, end)` per rule that fired: the rule named `rule`
replaced the old nodes `replaced` and built the new nodes `range(start, end)`. Only ids and
names are recorded, so an ordinary compile pays a tuple per rule that fired.

A phase is several rewrites in a row (a rewrite phase reruns until no rule fires); `compose`
follows a node of the phase's result back through all of them to the nodes of the phase's
input graph it stands for, and gathers the rules on the way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable


@dataclass
class Changes:
    """What one phase did, in the ids of its input graph and of its result graph."""

    sources: dict[int, tuple[int, ...]]  # result node -> the input nodes it stands for
    rules: dict[int, tuple[str, ...]]    # result node -> the rules that built it (absent: a copy)

    def fate(self, nodes: Iterable[int]) -> dict[int, list[int]]:
        """Input node -> the result nodes (among `nodes`) that stand for it; an input node
        absent from the answer was dropped (no result needs it any more)."""
        out: dict[int, list[int]] = {}
        for y in sorted(nodes):
            for u in self.sources.get(y, ()):
                out.setdefault(u, []).append(y)
        return out


def _union(parts: Iterable[tuple[int, ...]]) -> tuple[int, ...]:
    merged: set[int] = set()
    for p in parts:
        merged.update(p)
    return tuple(sorted(merged))


def _chain(parts: Iterable[tuple[str, ...]]) -> tuple[str, ...]:
    """The rules of several chains, in order, each once."""
    out: list[str] = []
    for p in parts:
        out.extend(r for r in p if r not in out)
    return tuple(out)


def compose(steps: list[tuple[dict[int, int], list[tuple[str, tuple[int, ...], int, int]]]],
            nodes: Iterable[int] = ()) -> Changes:
    """The `Changes` of a phase made of these rewrites (each a (map, fires) pair, in order);
    with no rewrite (the memory phase plans buffers and keeps the graph), each of `nodes` is
    itself."""
    sources: dict[int, tuple[int, ...]] | None = None  # None: the input graph itself
    rules: dict[int, tuple[str, ...]] = {}
    for mapping, fires in steps:
        def src(o: int) -> tuple[int, ...]:
            return (o,) if sources is None else sources.get(o, ())
        new_sources: dict[int, tuple[int, ...]] = {}
        new_rules: dict[int, tuple[str, ...]] = {}
        replaced_by: dict[int, tuple[str, ...]] = {}  # old node -> the rules that replaced it
        for rule, replaced, start, end in fires:
            s = _union(src(o) for o in replaced)
            r = _chain([rules.get(o, ()) for o in replaced] + [(rule,)])
            for y in range(start, end):
                new_sources[y], new_rules[y] = s, r
            for o in replaced:
                replaced_by[o] = r
        for o, y in mapping.items():
            r = replaced_by.get(o) or rules.get(o, ())
            if y in new_sources:  # a merge, or what a rule replaced o by
                new_sources[y] = _union((new_sources[y], src(o)))
                if r:
                    new_rules[y] = _chain((new_rules.get(y, ()), r))
            else:
                new_sources[y] = src(o)
                if r:
                    new_rules[y] = r
        sources, rules = new_sources, new_rules
    if sources is None:
        sources = {n: (n,) for n in nodes}
    return Changes(sources, rules)
