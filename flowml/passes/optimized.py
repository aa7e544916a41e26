"""`Optimized`: what the optimizer gives a backend for one fn. (Its own light module: the warm
model cache, flowml/modelcache.py, unpickles these without importing the optimizer.)"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ..ir.graph import Graph
from .memory import MemoryPlan


@dataclass
class Optimized:
    graph: Graph
    outputs: list[int]
    updates: list[tuple[str, int]]
    stats: Counter = field(default_factory=Counter)
    plan: MemoryPlan | None = None
    phase: str = "memory"  # the last phase that ran
    seconds: dict = field(default_factory=dict)  # phase -> its wall time (the profiler's compile times)

    def kernels(self) -> int:
        """Nodes that compute (each a kernel of a native backend): all but leaves and views."""
        nodes = self.graph.ancestors(self.outputs + [n for _, n in self.updates])
        return sum(1 for n in nodes if not (self.graph.op(n).leaf or self.graph.op(n).view))

    def fused_kernels(self) -> int:
        nodes = self.graph.ancestors(self.outputs + [n for _, n in self.updates])
        return sum(1 for n in nodes if self.graph.op(n).name == "fused")
