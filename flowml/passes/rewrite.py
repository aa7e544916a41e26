"""The rewrite engine: rules written as `before -> after` and a rebuild that applies them.

A rule is a pattern and a replacement, both written as expressions in numpy's spelling:

    Rule("log(1 + x) -> log1p(x)")

The pattern is matched against a node and its operands (`+` and `*` in either order; a number
matches a constant of that value of any shape; a name captures a node, and a name used twice
must capture the same node; keyword arguments match or capture attrs). The replacement is
built with `flowml.ir.lib`, so it gets the same types, promotion and broadcasting as user code.
A rule may add a `when` condition on the captures, or be a plain function for what a pattern
can't say.

`rebuild` copies the part of a graph the roots need into a new graph, node by node in
topological order: each copied node is merged with an identical one if it exists (common
subexpressions), then the phase's rules are tried on it; the first that fires replaces it.
What no root needs is never copied (dead code). A phase reruns `rebuild` until no rule fires.

A rerun only tries the rules where something changed. Whether a rule fires on a node depends
only on the node and what lies below it (ops, attrs, types, operands: rules never look up at
users), so a node the last round tried without a rule firing, whose operands come through this
round unchanged (copied, not rewritten), cannot fire now either: the round copies it and moves
on. A phase over a deep model thus matches every node once, then only the nodes above a change.

Each rebuild records what its rules did, by ids and names only (`Rebuild.fires`: the rule, the
node it replaced, the nodes it built), for the IR explorer's provenance (`provenance.py`).
"""

from __future__ import annotations

import ast
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import FlowInternalError
from ..ir import lib as L
from ..ir import ops as P
from ..ir.graph import DerivativeRecord, Graph, at
from ..ir.lib import Var

_BINOPS = {ast.Add: "add", ast.Sub: "sub", ast.Mult: "mul", ast.Div: "div", ast.Pow: "pow", ast.MatMult: "matmul"}
_CALL_NAMES = {"abs": "abs", "max": "max", "min": "min", "sum": "sum", "not_": "not"}


class _Match:
    def __init__(self, graph: Graph):
        self.graph = graph
        self.nodes: dict[str, int] = {}
        self.attrs: dict[str, object] = {}


def _const_equals(graph: Graph, n: int, value) -> bool:
    if graph.op(n) is not P.const:
        return False
    arr = graph.attrs(n)["value"]
    if arr.size == 1:
        return arr.item() == value  # (as np.all(arr == value), without numpy's per-call cost)
    return arr.size > 0 and bool(np.all(arr == value))


def _compile(pat: ast.expr):
    """`pat` as a matcher `f(graph, n, m) -> bool`, the pattern's syntax decided
    once, when the rule is made, instead of at every node it is tried on. Captures are bound
    in `m` directly; only a commutative op's first order binds into a trial copy (a failed
    match is thrown away whole by its caller, or by the nearest commutative op above it)."""
    if isinstance(pat, ast.Name):
        name = pat.id

        def capture(graph, n, m):
            bound = m.nodes.get(name)
            if bound is None:
                m.nodes[name] = n
                return True
            return bound == n
        return capture
    if isinstance(pat, ast.Constant):
        value = pat.value
        return lambda graph, n, m: _const_equals(graph, n, value)
    if isinstance(pat, ast.UnaryOp) and isinstance(pat.op, ast.USub):
        if isinstance(pat.operand, ast.Constant):
            value = -pat.operand.value
            return lambda graph, n, m: _const_equals(graph, n, value)
        inner = _compile(pat.operand)

        def negation(graph, n, m):
            return graph.op(n) is P.neg and inner(graph, graph.operands(n)[0], m)
        return negation
    if isinstance(pat, ast.BinOp):
        return _compile_op(_BINOPS[type(pat.op)], pat.left, pat.right)
    if isinstance(pat, ast.Call):
        return _compile_op(_CALL_NAMES.get(pat.func.id, pat.func.id), *pat.args, keywords=pat.keywords)
    raise FlowInternalError(f"unsupported pattern syntax: {ast.dump(pat)}")


def _compile_op(opname: str, *args: ast.expr, keywords=()):
    subs = tuple(_compile(a) for a in args)
    arity = len(subs)

    def match(graph, n, m):
        op = graph.op(n)
        if op.name != opname or op.wrapped:  # (no pattern is about a user's function)
            return False
        operands = graph.operands(n)
        if len(operands) != arity:
            return False
        if op.commutative and arity == 2:
            trial = _Match(graph)
            trial.nodes, trial.attrs = dict(m.nodes), dict(m.attrs)
            if all(f(graph, o, trial) for f, o in zip(subs, operands)) and _match_attrs(keywords, graph, n, trial):
                m.nodes, m.attrs = trial.nodes, trial.attrs
                return True
            operands = operands[::-1]
        return all(f(graph, o, m) for f, o in zip(subs, operands)) and _match_attrs(keywords, graph, n, m)
    return match


def _match_attrs(keywords, graph, n, m) -> bool:
    attrs = graph.attrs(n)
    for kw in keywords:
        value = attrs.get(kw.arg)
        if isinstance(kw.value, ast.Name):
            if kw.value.id in m.attrs and m.attrs[kw.value.id] != value:
                return False
            m.attrs[kw.value.id] = value
        elif ast.literal_eval(kw.value) != value:
            return False
    return True


# Names a replacement may use, besides the captures: every function of the library (so a new
# op's wrapper is usable in rules without being listed here).
_NAMESPACE = {name: fn for name, fn in vars(L).items() if not name.startswith("_") and callable(fn)}


@dataclass
class Rule:
    """`before -> after` (a string), optionally with a condition `when(**captures) -> bool`.
    Or give `fn(graph, node) -> Var | None` with a `name` describing it."""

    text: str
    when: Callable[..., bool] | None = None
    fn: Callable[[Graph, int], Var | None] | None = None
    env: dict | None = None  # extra functions the replacement may call
    ident: str | None = None  # a short name to switch the rule off by (a function rule's name)
    roots: tuple[str, ...] | None = None  # the ops a node must be for the rule to fire (None: any)
    _pattern: ast.expr | None = field(default=None, init=False, repr=False)
    _matcher: Callable | None = field(default=None, init=False, repr=False)
    _replacement: object = field(default=None, init=False, repr=False)

    def __post_init__(self):
        if self.fn is None:
            before, after = (s.strip() for s in self.text.split("->"))
            self._pattern = ast.parse(before, mode="eval").body
            self._matcher = _compile(self._pattern)
            replacement = ast.parse(after, mode="eval")
            self._check_names(replacement)
            self._replacement = compile(replacement, f"<rule {self.text}>", "eval")
            root = _root_op(self._pattern)
            self.roots = None if root is None else (root,)

    def _check_names(self, replacement: ast.Expression) -> None:
        """Every function the replacement calls must exist: a rule naming one that doesn't is a
        bug in flowml, reported when the rule is made, not when it first fires."""
        captured = {n.id for n in ast.walk(self._pattern) if isinstance(n, ast.Name)}
        known = captured | set(_NAMESPACE) | set(self.env or {})
        unknown = sorted({n.id for n in ast.walk(replacement) if isinstance(n, ast.Name)} - known)
        if unknown:
            raise FlowInternalError(f"rewrite rule `{self.text}` uses unknown name(s) {', '.join(unknown)}")

    @property
    def name(self) -> str:
        """How `--stats` names the rule: its text."""
        return self.text

    @property
    def key(self) -> str:
        """The rule's shortest name: its function's name, else its text."""
        return self.ident or self.text

    def names(self) -> set[str]:
        """The names that switch the rule off (see `pipeline.optimize`'s `exclude`)."""
        return {self.text} | ({self.ident} if self.ident else set())

    def apply(self, graph: Graph, n: int) -> Var | None:
        if self.fn is not None:
            return self.fn(graph, n)
        m = _Match(graph)
        if not self._matcher(graph, n, m):
            return None
        captures = {k: Var(graph, v) for k, v in m.nodes.items()}
        captures.update(m.attrs)
        if self.when is not None and not self.when(**captures):
            return None
        return eval(self._replacement, {**_NAMESPACE, **(self.env or {})}, captures)  # noqa: S307 - our own rule text


def _root_op(pat: ast.expr) -> str | None:
    """The op name a pattern's root matches, so a rebuild only tries the rules that can fire."""
    if isinstance(pat, ast.BinOp):
        return _BINOPS[type(pat.op)]
    if isinstance(pat, ast.UnaryOp) and isinstance(pat.op, ast.USub) and not isinstance(pat.operand, ast.Constant):
        return "neg"
    if isinstance(pat, ast.Call):
        return _CALL_NAMES.get(pat.func.id, pat.func.id)
    return None


def rule(text: str, roots: tuple[str, ...] | None = None):
    """Decorator form: a function rule named by its `before -> after` text. `roots`: the op
    names it can fire on (the rebuild tries it on no other node); None: any op."""
    def wrap(fn):
        return Rule(text, fn=fn, ident=fn.__name__, roots=roots)
    return wrap


# ----------------------------------------------------------------- rebuilding


def _freeze(v):
    if isinstance(v, np.ndarray):
        return ("nd", v.dtype.str, v.shape, v.tobytes())
    if isinstance(v, np.dtype):
        return ("dtype", v.str)
    if isinstance(v, dict):
        return tuple(sorted((k, _freeze(x)) for k, x in v.items()))
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(x) for x in v)
    return v


def node_sig(graph: Graph, n: int) -> tuple:
    """What, besides its operands, makes two nodes compute the same value: nodes with equal
    signatures and operands are merged (common subexpressions)."""
    t = graph.type(n)
    return (_op_key(graph.op(n)), _freeze(graph.attrs(n)), t.dtype.str, t.shape, t.weak)


def _op_key(op):
    """An op as common-subexpression merging knows it: by name; a wrapped op by itself (two
    users' functions may share a name)."""
    return op if op.wrapped else op.name


_NONE: frozenset = frozenset()  # (no rule known not to fire)


class Rebuild:
    """One copy of `old` into a fresh graph, applying `rules` at each node. `settled`: for nodes
    of `old`, the ids of rules tried on them without firing (the previous round's, or phase's,
    `settled_new`)."""

    def __init__(self, old: Graph, rules: list[Rule], stats: Counter, settled: dict[int, frozenset] | None = None,
                 old_sigs: dict[int, tuple] | None = None):
        self.old = old
        self.new = Graph()
        self.rules = rules
        self.stats = stats
        self.fired = 0
        self.map: dict[int, int] = {}
        self._keys: dict[tuple, int] = {}
        self._by_op: dict[tuple, list[Rule]] = {}  # (op name, rules known not to fire) -> rules to try
        self._all = frozenset(id(r) for r in rules)
        self._unions: dict[int, frozenset] = {}  # id(known) -> known | self._all
        self._settled = settled or {}
        self._old_sigs = old_sigs or {}  # node of `old` -> its key without operands (attrs frozen once)
        self.sigs: dict[int, tuple] = {}  # the same for `new`
        self._unchanged: set[int] = set()  # nodes of `old` copied as they were, all the way down
        self.settled_new: dict[int, frozenset] = {}  # node of `new` -> ids of rules that don't fire on it
        # provenance, one entry per rule that fired: (rule name, the nodes of `old` it replaced,
        # start, end): it built the nodes range(start, end) of `new` (flowml/passes/provenance.py)
        self.fires: list[tuple[str, tuple[int, ...], int, int]] = []
        self._rule = ""  # the name of the last rule that fired

    def add(self, op, operands, attrs, type, loc=None, name=None, sig=None) -> int:
        """Add a node to the new graph, or return the identical one already there."""
        operands = tuple(operands)
        if sig is None:
            sig = (_op_key(op), _freeze(attrs), type.dtype.str, type.shape, type.weak)
        key = (sig, operands)
        found = None if op.lazy else self._keys.get(key)
        if found is not None:
            if name:
                self.new.set_name(found, name)
            return found
        n = self.new.add(op, operands, attrs, loc=loc, name=name, type=type)
        self._keys[key] = n
        self.sigs[n] = sig
        return n

    def copy(self, n: int) -> int:
        old = self.old
        old_operands = old.operands(n)
        operands = [self.map[o] for o in old_operands]
        d = old.data(n)
        m = self.add(d["op"], operands, d["attrs"], d["type"], d["loc"], d["name"], self._old_sigs.get(n))
        unchanged = all(o in self._unchanged for o in old_operands)
        if self.rules and not (d["op"].leaf or d["op"].wrapped):  # (nothing is known of a user's function)
            # rules tried on n below an identical subgraph need not be tried again
            known = self._settled.get(n, _NONE) if unchanged else _NONE
            if self._all <= known:
                self.settled_new.setdefault(m, known)
            else:
                fired, start = self.fired, self.new.next_id
                m = self.rewrite(m, d["type"], d["loc"], d["name"], self._rules_for(d["op"].name, known))
                if self.fired != fired:
                    self.fires.append((self._rule, (n,), start, self.new.next_id))
                    return m
                union = self._unions.get(id(known))
                if union is None:
                    union = self._unions[id(known)] = known | self._all
                self.settled_new[m] = union
        if unchanged:
            self._unchanged.add(n)
        return m

    def _rules_for(self, opname: str, known: frozenset = frozenset()) -> list[Rule]:
        """The rules whose root can match `opname`, less those in `known`, in their order (the
        first that fires wins, and a rule left out would not have fired)."""
        rules = self._by_op.get((opname, known))
        if rules is None:
            rules = self._by_op[opname, known] = [r for r in self.rules if (r.roots is None or opname in r.roots)
                                                  and id(r) not in known]
        return rules

    def rewrite(self, m: int, type, loc, name, rules: list[Rule] | None = None) -> int:
        opname = self.new.op(m).name
        with at(loc):
            for r in self._rules_for(opname) if rules is None else rules:
                try:
                    out = r.apply(self.new, m)
                except Exception as e:  # a rule that crashes is a bug in flowml: say which
                    raise FlowInternalError(f"rewrite rule `{r.name}` failed on %{m}: {e}", loc) from e
                if out is None or out.id == m:
                    continue
                out = _fit_type(out, type)
                if out is not None:
                    break
            else:
                return m  # no rule fired
            self.stats[r.name] += 1
            self.fired += 1
            self._rule = r.name
            if name:
                self.new.set_name(out.id, name)
            return self._canonical_id(out.id)
        return m

    def _canonical_id(self, n: int) -> int:
        """A node a rule built may duplicate an existing one: merge it."""
        sig = self.sigs.get(n) or node_sig(self.new, n)
        key = (sig, self.new.operands(n))
        found = self._keys.get(key)
        if found is not None and found != n and not self.new.op(n).lazy:
            return found
        if self._keys.setdefault(key, n) == n:
            self.sigs[n] = sig
        return n

    def run(self, roots: list[int], rederive: bool = False) -> None:
        old = self.old
        records = old.derivatives if rederive else []
        by_result = {res: r for r in records for res in r.results}
        needed = _needed(old, roots, by_result)
        done_records: set[int] = set()
        for n in sorted(needed):
            if n in self.map:
                continue
            rec = by_result.get(n)
            if rec is not None and id(rec) not in done_records:
                done_records.add(id(rec))
                if self._rederive(rec, needed):
                    continue
            self.map[n] = self.copy(n)
        # keep the derivative records whose nodes all survived (for a later rederive)
        for r in [] if rederive else old.derivatives:
            ids = r.ys + r.xs + r.directions + r.results
            if all(i in self.map for i in ids):
                copied = DerivativeRecord(
                    r.kind, *(tuple(self.map[i] for i in part) for part in (r.ys, r.xs, r.directions, r.results)))
                copied.connected = _connected(old, r)  # as in the graph as built, before any rewrite
                self.new.derivatives.append(copied)

    def _rederive(self, rec: DerivativeRecord, needed: set[int]) -> bool:
        """Take the derivative again from the rewritten ys; False (copy as is) when a rewrite
        absorbed one of the xs, so the new graph can't be differentiated by it."""
        from .grad import vjp
        from .rop import rop
        for part in (rec.ys, rec.xs, rec.directions):
            for i in part:
                if i not in self.map:
                    return False
        new = self.new
        ys = [Var(new, self.map[i]) for i in rec.ys]
        xs = [Var(new, self.map[i]) for i in rec.xs]
        dirs = [Var(new, self.map[i]) for i in rec.directions]
        anc = new.ancestors([y.id for y in ys])
        for connected_before, x in zip(_connected(self.old, rec), xs):
            if connected_before != (x.id in anc):
                return False
        start = new.next_id
        with at(self.old.loc(rec.results[0])):
            if rec.kind == "vjp":
                results = vjp(ys, xs, dirs, disconnected="zero")
            else:
                results = rop(ys, xs, dirs, disconnected="zero")
                results = results if isinstance(results, list) else [results]
        new.derivatives.clear()  # records are only needed until this rederive
        for old_id, r in zip(rec.results, results):
            t = self.old.type(old_id)
            r = _fit_type(r, t)
            if r is None:
                raise FlowInternalError(f"rederived derivative has type {r} instead of {t}")
            self.map[old_id] = r.id
        self.fires.append((REDERIVE, tuple(rec.results), start, new.next_id))
        # the old naive derivative nodes are no longer needed unless something else uses them
        return True


REDERIVE = "derivative taken again, of the stable forms"  # (how provenance names `_rederive`)


def _connected(graph: Graph, rec: DerivativeRecord) -> tuple[bool, ...]:
    """Which of the record's xs its ys depend on, as first recorded: a rewrite in an earlier
    phase may have absorbed an x since (-(-h) -> x drops h), and the derivative by h is not zero."""
    known = getattr(rec, "connected", None)
    if known is not None:
        return known
    anc = graph.ancestors(list(rec.ys))
    return tuple(x in anc for x in rec.xs)


def _needed(graph: Graph, roots: list[int], cut: dict[int, DerivativeRecord]) -> set[int]:
    """The ancestors of `roots`, and for a needed node in `cut` (a derivative result to be
    re-derived) the ancestors of its record's ys, xs and directions too. (The naive derivative
    stays needed as well: it is copied instead when re-deriving is not possible.)"""
    needed = graph.ancestors(roots)
    while True:
        extra = {i for n in needed if n in cut for i in cut[n].ys + cut[n].xs + cut[n].directions} - needed
        if not extra:
            return needed
        needed |= graph.ancestors(extra)


def _fit_type(v: Var, t) -> Var | None:
    """`v` made to have type `t` exactly (a rule's result may be a broadcastable smaller
    shape or a weak literal); None if it can't be."""
    if v.type.shape != t.shape:
        try:
            v = L.broadcast_to(v, t.shape)
        except Exception:  # noqa: BLE001 - a rule result of the wrong shape: do not apply it
            return None
    if v.dtype != t.dtype:
        v = L.cast(v, t.dtype)
    return v


MAX_ROUNDS = 30


def run_phase(graph: Graph, roots: list[int], rules: list[Rule], stats: Counter,
              rederive_first: bool = False, carry: dict | None = None,
              steps: list | None = None) -> tuple[Graph, list[int]]:
    """Rebuild until no rule fires (at most MAX_ROUNDS times); returns the graph and the roots.
    `carry` (a dict, updated): what one phase knows of its result graph for the next one that
    starts from it (the rules that did not fire on each node, the node signatures). `steps` (a
    list): gets each round's (map, fires), for provenance (flowml/passes/provenance.py)."""
    settled: dict[int, frozenset] = {}
    sigs: dict[int, tuple] = {}
    if carry and carry.get("graph") is graph:
        settled, sigs = carry["settled"], carry["sigs"]
    for round_ in range(MAX_ROUNDS):
        rb = Rebuild(graph, rules, stats, settled, sigs)
        rb.run(roots + _record_nodes(graph), rederive=rederive_first and round_ == 0)
        if steps is not None:
            steps.append((rb.map, rb.fires))
        graph, roots, settled, sigs = rb.new, [rb.map[r] for r in roots], rb.settled_new, rb.sigs
        if rb.fired == 0 and not (rederive_first and round_ == 0):
            break
    if carry is not None:
        carry.update(graph=graph, settled=settled, sigs=sigs)
    return graph, roots


def _record_nodes(graph: Graph) -> list[int]:
    out: list[int] = []
    for r in graph.derivatives:
        out.extend(r.ys + r.xs + r.directions + r.results)
    return out
