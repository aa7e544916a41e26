"""The optimizer: named phases in a fixed order.

    canonicalize → stabilize → specialize → fuse → memory

Each of the first three is a list of rewrite rules run to a fixpoint (`rewrite.run_phase`);
canonical rules run in the later phases too, to clean up what their rules build. Derivatives
are taken again right after `stabilize` (so they are derivatives of the stable forms), and
`stabilize` runs once more over them. `fuse` groups elementwise work into kernels; `memory`
plans buffers. `optimize(..., level=0)` returns the graph as built (only the dead code cut).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ..errors import FlowError
from ..ir.graph import Graph
from . import canonicalize, specialize, stabilize
from .fuse import fuse
from .memory import MemoryPlan, plan_memory
from .rewrite import Rebuild, run_phase

PHASES = ("canonicalize", "stabilize", "specialize", "fuse", "memory")


@dataclass
class Optimized:
    graph: Graph
    outputs: list[int]
    updates: list[tuple[str, int]]
    stats: Counter = field(default_factory=Counter)
    plan: MemoryPlan | None = None
    phase: str = "memory"  # the last phase that ran

    def kernels(self) -> int:
        """Nodes that compute (each a kernel of a native backend): all but leaves and views."""
        nodes = self.graph.ancestors(self.outputs + [n for _, n in self.updates])
        return sum(1 for n in nodes if not (self.graph.op(n).leaf or self.graph.op(n).view))

    def fused_kernels(self) -> int:
        nodes = self.graph.ancestors(self.outputs + [n for _, n in self.updates])
        return sum(1 for n in nodes if self.graph.op(n).name == "fused")


def check_phase(after: str | None) -> None:
    if after is not None and after not in PHASES:
        raise FlowError(f"unknown phase {after!r}; the phases are {', '.join(PHASES)}")


def optimize(graph: Graph, outputs: list[int], updates: list[tuple[str, int]], level: int = 1,
             after: str | None = None) -> Optimized:
    """The function (outputs, param updates) of `graph`, optimized through phase `after`
    (default: all). The input graph is not changed."""
    check_phase(after)
    names = [name for name, _ in updates]
    roots = list(outputs) + [n for _, n in updates]
    stats: Counter = Counter()

    def done(g, rs, phase, plan=None):
        k = len(outputs)
        return Optimized(g, rs[:k], list(zip(names, rs[k:])), stats, plan, phase)

    if level <= 0:
        rb = Rebuild(graph, [], stats)
        rb.run(roots)
        return done(rb.new, [rb.map[r] for r in roots], "none")
    canonical = canonicalize.RULES
    g, rs = _extract(graph, roots)
    g, rs = _phase(g, rs, canonical, stats, "canonicalize")
    if after == "canonicalize":
        return done(g, rs, after)
    stable = canonical + stabilize.RULES
    g, rs = _phase(g, rs, stable, stats, "stabilize")
    g, rs = _phase(g, rs, stable, stats, "stabilize", rederive=True)
    if after == "stabilize":
        return done(g, rs, after)
    g, rs = _phase(g, rs, canonical + specialize.RULES, stats, "specialize")
    if after == "specialize":
        return done(g, rs, after)
    g, rs = fuse(g, rs, stats)
    if after == "fuse":
        return done(g, rs, after)
    result = done(g, rs, "memory")
    result.plan = plan_memory(g, result.outputs, result.updates)
    stats["memory: buffers"] = len(result.plan.buffers)
    stats["memory: in-place param updates"] = len(result.plan.inplace)
    return result


def _extract(graph: Graph, roots: list[int]) -> tuple[Graph, list[int]]:
    """A copy of what the roots need, keeping the derivative records that are still whole."""
    needed = graph.ancestors(roots)
    records = [r for r in graph.derivatives if any(i in needed for i in r.results)]
    rb = Rebuild(graph, [], Counter())
    rb.run(roots + [i for r in records for i in r.ys + r.xs + r.directions + r.results])
    return rb.new, [rb.map[r] for r in roots]


def _phase(graph, roots, rules, stats, name, rederive=False):
    phase_stats: Counter = Counter()
    graph, roots = run_phase(graph, roots, rules, phase_stats, rederive_first=rederive)
    for rule_name, count in phase_stats.items():
        stats[f"{name}: {rule_name}"] += count
    return graph, roots
