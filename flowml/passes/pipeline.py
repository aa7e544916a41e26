"""The optimizer: a list of named phases, run in order by one loop.

    canonicalize → stabilize → specialize → fuse → memory

Each of the first three is a set of rewrite rules run to a fixpoint (`rewrite.run_phase`);
canonical rules run in the later phases too, to clean up what their rules build. Derivatives
are taken again right after `stabilize` (so they are derivatives of the stable forms), and
`stabilize` runs once more over them. `fuse` groups elementwise work into kernels; `memory`
plans buffers. `optimize(..., level=0)` returns the graph as built (only the dead code cut).

`exclude` switches off phases and rules by name (PyTensor's `exclude=`): a phase's name skips
the phase and drops its rules from the phases that reuse them; a rule is named by its text as
`--stats` shows it (`"log(1 + x) -> log1p(x)"`) or, for a rule written as a function, by the
function's name too (`fold_constants`). With `verify=True` or `FLOWML_VERIFY=1` the IR verifier
(`verify.verify_graph`) checks the graph after every phase. `trace=[]` collects the graph after
every phase with what the phase did (`Snapshot`s, for the IR explorer: flowml/explore).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable

from ..errors import FlowError, did_you_mean
from ..ir.graph import Graph
from . import canonicalize, specialize, stabilize
from .fuse import fuse
from .gemm import gemm_updates
from .loops import hoist_loops
from .memory import MemoryPlan, plan_memory
from .optimized import Optimized
from .rewrite import Rebuild, Rule, run_phase
from ..ir.verify import verify_graph


@dataclass
class Snapshot:
    """The graph after one phase ("parse": the graph as built, before any), and `steps`: what the
    phase did, each rewrite's (map, fires) (see `rewrite.Rebuild.fires`, flowml/passes/provenance.py)."""

    phase: str
    graph: Graph
    outputs: list[int]
    updates: list[tuple[str, int]]
    steps: list
    plan: MemoryPlan | None = None


class _Run:
    """One optimization in progress: the graph, its roots, the counts and what is switched off."""

    def __init__(self, graph: Graph, roots: list[int], n_outputs: int, update_names: list[str], stats: Counter,
                 exclude: frozenset[str]):
        self.graph, self.roots, self.stats, self.exclude = graph, roots, stats, exclude
        self.n_outputs, self.update_names = n_outputs, update_names
        self.plan: MemoryPlan | None = None
        self.carry: dict = {}  # what a rewrite phase knows of its result, for the next (run_phase)
        self.steps: list | None = None  # when tracing: the running phase's rewrites (Snapshot.steps)

    @property
    def outputs(self) -> list[int]:
        return self.roots[:self.n_outputs]

    @property
    def updates(self) -> list[tuple[str, int]]:
        return list(zip(self.update_names, self.roots[self.n_outputs:]))

    def rules(self, *sets: str) -> list[Rule]:
        """The rules of these rule sets (named by the phases that own them) not switched off."""
        return [r for s in sets if s not in self.exclude for r in RULE_SETS[s]
                if not (r.names() & self.exclude)]

    def rewrite(self, phase: str, rules: list[Rule], rederive: bool = False) -> None:
        counts: Counter = Counter()
        self.graph, self.roots = run_phase(self.graph, self.roots, rules, counts, rederive_first=rederive,
                                           carry=self.carry, steps=self.steps)
        for rule_name, count in counts.items():
            self.stats[f"{phase}: {rule_name}"] += count


@dataclass(frozen=True)
class Phase:
    """A named step of the optimizer: `run` transforms the `_Run` in place."""

    name: str
    doc: str
    run: Callable[[_Run], None]


def _canonicalize(r: _Run) -> None:
    r.rewrite("canonicalize", r.rules("canonicalize"))


def _stabilize(r: _Run) -> None:
    rules = r.rules("canonicalize", "stabilize")
    r.rewrite("stabilize", rules)
    r.rewrite("stabilize", rules, rederive=True)  # derivatives of the stable forms, stabilized too


def _specialize(r: _Run) -> None:
    r.rewrite("specialize", r.rules("canonicalize", "specialize"))


def _fuse(r: _Run) -> None:
    if "hoist_loops" not in r.exclude:  # (first: the products it builds become gemms too)
        r.graph, r.roots = hoist_loops(r.graph, r.roots, r.stats, r.steps)
    if "gemm" not in r.exclude:  # (before the kernels take the adds)
        r.graph, r.roots = gemm_updates(r.graph, r.roots, r.stats, r.steps)
    r.graph, r.roots = fuse(r.graph, r.roots, r.stats, r.steps)


def _memory(r: _Run) -> None:
    r.plan = plan_memory(r.graph, r.outputs, r.updates)
    r.stats["memory: buffers"] = len(r.plan.buffers)
    r.stats["memory: in-place param updates"] = len(r.plan.inplace)


PIPELINE: list[Phase] = [
    Phase("canonicalize", "fold constants and apply exact algebraic identities", _canonicalize),
    Phase("stabilize", "rewrite formulas that overflow or cancel; derivatives taken again", _stabilize),
    Phase("specialize", "drop what only mattered to differentiation; cheaper spellings", _specialize),
    Phase("fuse", "products with what is added to them as gemm calls; elementwise work (and a reduction) "
                  "into kernels", _fuse),
    Phase("memory", "plan buffers: reuse and in-place param updates", _memory),
]
PHASES = tuple(p.name for p in PIPELINE)
# the fuse phase's passes over the whole graph, each switched off by its name
GRAPH_PASSES = ("hoist_loops", "gemm")
RULE_SETS: dict[str, list[Rule]] = {"canonicalize": canonicalize.RULES, "stabilize": stabilize.RULES,
                                    "specialize": specialize.RULES}


def rule_names() -> list[str]:
    """Every name a rule can be switched off by, in the order the rule sets list them."""
    names: list[str] = []
    for rules in RULE_SETS.values():
        for r in rules:
            names.extend(n for n in sorted(r.names(), key=lambda n: n != r.key) if n not in names)
    return names


def check_phase(after: str | None) -> None:
    if after is not None and after not in PHASES:
        raise FlowError(f"unknown phase {after!r}; the phases are {', '.join(PHASES)}")


def check_exclude(exclude: Iterable[str] | None) -> frozenset[str]:
    """The names to switch off, each checked: an unknown one is an error listing the valid names."""
    if exclude is None:
        return frozenset()
    if isinstance(exclude, str):
        exclude = [exclude]
    names = frozenset(exclude)
    valid = set(PHASES) | set(GRAPH_PASSES) | set(rule_names())
    unknown = sorted(n for n in names if n not in valid)
    if unknown:
        rules = rule_names()
        hint = did_you_mean(unknown[0], sorted(valid))
        raise FlowError(f"cannot exclude {', '.join(repr(n) for n in unknown)}: not an optimizer phase or "
                        f"rule{' (' + hint + ')' if hint else ''}. The phases are {', '.join(PHASES)}; the fuse phase's "
                        f"graph passes are {', '.join(GRAPH_PASSES)}; the rules are "
                        + "; ".join(rules) + " (rules by their text as `flowml compile --stats` "
                        "shows it, or by the name of the function that implements them)")
    return names


def verify_requested(verify: bool | None) -> bool:
    return bool(verify) if verify is not None else os.environ.get("FLOWML_VERIFY", "") not in ("", "0")


def optimize(graph: Graph, outputs: list[int], updates: list[tuple[str, int]], level: int = 1,
             after: str | None = None, exclude: Iterable[str] | None = None,
             verify: bool | None = None, trace: list | None = None) -> Optimized:
    """The function (outputs, param updates) of `graph`, optimized through phase `after`
    (default: all), without the phases and rules named in `exclude`. `verify` (default: the
    FLOWML_VERIFY environment variable) checks the IR after every phase. `trace` (a list) gets
    a `Snapshot` of the graph as built and after each phase that ran. The input graph is not
    changed."""
    check_phase(after)
    excluded = check_exclude(exclude)
    check = verify_requested(verify)
    names = [name for name, _ in updates]
    roots = list(outputs) + [n for _, n in updates]
    stats: Counter = Counter()
    if level <= 0:
        rb = Rebuild(graph, [], stats)
        rb.run(roots)
        g, rs = rb.new, [rb.map[r] for r in roots]
    else:
        g, rs = _extract(graph, roots)
    run = _Run(g, rs, len(outputs), names, stats, excluded)
    if check:
        verify_graph(run.graph, run.roots, "the graph as built")
    if trace is not None:
        trace.append(Snapshot("parse", run.graph, run.outputs, run.updates, []))
    last = "none"
    seconds: dict[str, float] = {}
    for phase in PIPELINE if level > 0 else []:
        if phase.name not in excluded:
            run.steps = None if trace is None else []
            start = time.perf_counter()
            phase.run(run)
            seconds[phase.name] = time.perf_counter() - start
            last = phase.name
            if check:
                verify_graph(run.graph, run.roots, f"phase {phase.name}")
            if trace is not None:
                trace.append(Snapshot(phase.name, run.graph, run.outputs, run.updates, run.steps, run.plan))
        if phase.name == after:
            break
    return Optimized(run.graph, run.outputs, run.updates, stats, run.plan, last, seconds)


def _extract(graph: Graph, roots: list[int]) -> tuple[Graph, list[int]]:
    """A copy of what the roots need, keeping the derivative records that are still whole."""
    needed = graph.ancestors(roots)
    records = [r for r in graph.derivatives if any(i in needed for i in r.results)]
    rb = Rebuild(graph, [], Counter())
    rb.run(roots + [i for r in records for i in r.ys + r.xs + r.directions + r.results])
    return rb.new, [rb.map[r] for r in roots]
