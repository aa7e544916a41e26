"""Compile time that scales (issue 21, docs/compile_time.md): the graph's cheap operand tuples,
rewrites that only retry what changed, derivatives and optimized graphs that grow linearly with
depth, and LLVM modules split into their distinct kernels (compiled and cached once each).
Work is counted (nodes, rule tries, kernels compiled), not timed: a loaded machine makes
timings noisy, counts are exact."""

from __future__ import annotations

import ctypes
from collections import Counter

import numpy as np
import pytest

import flowml
from flowml.backends.llvm import cache
from flowml.backends.llvm.jit import JitModule
from flowml.backends.llvm.split import split_kernels
from flowml.ir import lib as L
from flowml.ir import ops as P
from flowml.ir.graph import Graph
from flowml.ir.types import DTYPES, TensorType
from flowml.lang.build import build
from flowml.lang.parser import parse
from flowml.passes import rewrite
from flowml.passes.pipeline import optimize
from flowml.passes.rewrite import Rule, run_phase

F64 = TensorType(DTYPES["f64"], (3,))


def deep_mlp(layers: int) -> str:
    """An L-layer tanh MLP with its gradient and SGD updates (bench/w10.py's model, smaller)."""
    lines = ["input x : f64[N, 4]", "input y : f64[N, 4]"]
    lines += [f"param W{i} : f64[4, 4] = uniform(-0.5, 0.5)\nparam b{i} : f64[4] = zeros" for i in range(layers)]
    lines += ["h0 = x"] + [f"h{i + 1} = tanh(h{i} @ W{i} + b{i})" for i in range(layers)]
    lines.append(f"cost = mean((h{layers} - y) ** 2)")
    ps = ", ".join(f"W{i}, b{i}" for i in range(layers))
    lines.append(", ".join(f"gW{i}, gb{i}" for i in range(layers)) + f" = grad(cost, {ps})")
    lines.append("fn train(x, y) -> cost {")
    lines += [f"    W{i} <- W{i} - 0.1 * gW{i}\n    b{i} <- b{i} - 0.1 * gb{i}" for i in range(layers)]
    return "\n".join(lines + ["}"]) + "\n"


def _optimized(layers: int):
    prog = build(parse(deep_mlp(layers)))
    fn = prog.functions["train"]
    opt = optimize(prog.graph, [v.id for _, v in fn.outputs], [(u.param, u.value.id) for u in fn.updates])
    return prog, opt


def _nodes(opt) -> int:
    return len(opt.graph.ancestors(opt.outputs + [n for _, n in opt.updates]))


# ---------------------------------------------------------------------------------------------
# the graph


def test_operands_are_an_ordered_tuple_and_users_count_every_use():
    g = Graph()
    x = L.input(g, "x", F64)
    sq = x * x
    y = sq - x
    assert g.operands(sq.id) == (x.id, x.id)
    assert g.operands(y.id) == (sq.id, x.id)
    assert g.users(x.id) == [sq.id, y.id]  # distinct users, ascending
    assert g.descendants([x.id]) == {x.id, sq.id, y.id}
    assert g.ancestors([y.id]) == {x.id, sq.id, y.id}
    assert g.nodes() == sorted(g.nodes()) == [x.id, sq.id, y.id]


def test_networkx_view_is_built_on_demand_with_keyed_edges():
    g = Graph()
    x = L.input(g, "x", F64)
    sq = x * x
    view = g.nx
    assert sorted(view.in_edges(sq.id, keys=True)) == [(x.id, sq.id, 0), (x.id, sq.id, 1)]
    assert view.nodes[sq.id]["op"] is P.mul
    view.remove_node(sq.id)  # a copy: the graph is untouched
    assert sq.id in g and g.operands(sq.id) == (x.id, x.id)


def test_remove_and_set_operands_keep_users_consistent():
    g = Graph()
    x, z = L.input(g, "x", F64), L.input(g, "z", F64)
    a = x + z
    b = L.exp(x)
    g.set_operands(a.id, [z.id, z.id])
    assert g.users(x.id) == [b.id] and g.users(z.id) == [a.id]
    g.remove(b.id)
    assert b.id not in g and g.users(x.id) == []
    with pytest.raises(flowml.FlowInternalError, match="has users"):
        g.remove(z.id)


# ---------------------------------------------------------------------------------------------
# linear growth: nodes, derivatives, rule tries


def test_graph_and_derivative_node_counts_grow_linearly_with_depth():
    built, optimized = {}, {}
    for n in (8, 16, 32):
        prog, opt = _optimized(n)
        built[n], optimized[n] = len(prog.graph), _nodes(opt)
    for counts in (built, optimized):
        per_layer = (counts[16] - counts[8]) / 8
        assert per_layer == (counts[32] - counts[16]) / 16  # the same cost for every added layer
        assert per_layer < 40  # forward, backward and update of one layer: a few dozen nodes
    assert optimized[32] < built[32]


def test_rule_tries_per_node_do_not_grow_with_depth(monkeypatch):
    tries = Counter()
    apply = Rule.apply

    def counting(self, graph, n):
        tries[0] += 1
        return apply(self, graph, n)

    monkeypatch.setattr(Rule, "apply", counting)
    per_node = {}
    for n in (8, 32):
        tries.clear()
        _, opt = _optimized(n)
        per_node[n] = tries[0] / _nodes(opt)
    assert per_node[32] <= 1.1 * per_node[8]


def test_a_rerun_tries_rules_only_above_what_changed():
    """A chain of 40 exps under a log: the first round rewrites log(exp(.)) at the top; the
    round that confirms nothing else fires tries the rules on no node below it."""
    g = Graph()
    v = L.input(g, "x", F64)
    for _ in range(40):
        v = L.exp(v)
    top = L.log(v)
    seen: list[int] = []

    def spy(graph, n):
        seen.append(n)
        return None

    rules = [Rule("log(exp(x)) -> x"), Rule("anything", fn=spy, ident="spy")]
    new, roots = run_phase(g, [top.id], rules, Counter())
    assert new.op(roots[0]) is P.exp  # log(exp(v)) -> v
    # round 1 tries the spy on the 40 exps (at the log, the first rule fired); round 2 on none
    # of them: each was tried last round below the same subgraph (without that: 80)
    assert len(seen) == 40


def test_rules_that_did_not_fire_carry_to_the_next_phase():
    g = Graph()
    v = L.input(g, "x", F64)
    for _ in range(20):
        v = L.tanh(v)
    seen: list[int] = []

    def spy(graph, n):
        seen.append(n)
        return None

    spy_rule = Rule("anything", fn=spy, ident="spy")
    carry: dict = {}
    g1, r1 = run_phase(g, [v.id], [spy_rule], Counter(), carry=carry)
    assert len(seen) == 20
    run_phase(g1, r1, [spy_rule, Rule("log(exp(x)) -> x")], Counter(), carry=carry)
    assert len(seen) == 20  # the next phase starts from g1: spy already did not fire there
    run_phase(g, [v.id], [spy_rule], Counter(), carry=carry)
    assert len(seen) == 40  # another graph: nothing carried


# ---------------------------------------------------------------------------------------------
# LLVM: one module per distinct kernel


def _kernel(name: str, slots: tuple[int, int, int], scale: str = "2.0") -> str:
    """The backend's kernel shape: out[i] = in[i] * scale, addresses and length from ctx slots."""
    a, b, n = slots
    return f"""define void @{name}(ptr noalias %ctx, i64 %start, i64 %end) {{
entry:
  %c1 = getelementptr i64, ptr %ctx, i64 {a}
  %c2 = load ptr, ptr %c1
  %c3 = getelementptr i64, ptr %ctx, i64 {b}
  %c4 = load ptr, ptr %c3
  %c5 = getelementptr i64, ptr %ctx, i64 {n}
  %c6 = load i64, ptr %c5
  br label %head
head:
  %i = phi i64 [%start, %entry], [%i.next, %body]
  %more = icmp slt i64 %i, %end
  br i1 %more, label %body, label %exit
body:
  %p = getelementptr double, ptr %c2, i64 %i
  %x = load double, ptr %p
  %y = fmul double %x, {scale}
  %q = getelementptr double, ptr %c4, i64 %i
  store double %y, ptr %q
  %i.next = add nsw i64 %i, 1
  br label %head
exit:
  ret void
}}
"""


KERNEL = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64)


def _run(jm, name: str, ctx: np.ndarray, n: int) -> None:
    KERNEL(jm.address(name))(ctx.ctypes.data, 0, n)


def _table(*arrays, n):
    return np.array([a.ctypes.data for a in arrays] + [n], dtype=np.int64)


def test_kernels_differing_only_in_slots_are_compiled_once(tmp_path):
    text = _kernel("k1", (0, 1, 4)) + _kernel("k2", (1, 2, 4)) + _kernel("k3", (2, 3, 4), scale="3.0")
    split = split_kernels(text)
    assert split is not None and len(split.kernels) == 2  # k1 and k2 share a body
    jm = cache.compile_cached(text, cache=cache.CompileCache(tmp_path))
    x = np.arange(5.0)
    bufs = [x, np.zeros(5), np.zeros(5), np.zeros(5)]
    ctx = np.array([b.ctypes.data for b in bufs] + [5], dtype=np.int64)
    for k in ("k1", "k2", "k3"):
        _run(jm, k, ctx, 5)
    np.testing.assert_array_equal(bufs[1], 2 * x)
    np.testing.assert_array_equal(bufs[2], 4 * x)
    np.testing.assert_array_equal(bufs[3], 12 * x)
    assert jm.optimized_ir().count("define void @k") == 3  # the module as written, optimized


def test_a_kernel_seen_before_is_loaded_not_compiled(tmp_path):
    store = cache.CompileCache(tmp_path)
    first = cache.compile_cached(_kernel("k1", (0, 1, 2)) + _kernel("k2", (1, 0, 2)), cache=store)
    assert not any(p.cached_object for p in first.parts)
    # another module: the same kernel at other slots, and a new one (an edited layer)
    second = cache.compile_cached(_kernel("k7", (3, 4, 2)) + _kernel("k8", (4, 3, 2)) + _kernel("k9", (3, 5, 2), "5.0"),
                                  cache=store)
    loaded = {p.name: p.cached_object is not None for p in second.parts}
    assert sum(loaded.values()) == 1 and len(loaded) == 3  # 2 kernels (1 loaded) + the wrappers
    a, b, c = np.arange(4.0), np.zeros(4), np.zeros(4)
    ctx = np.array([0, 0, 2, a.ctypes.data, b.ctypes.data, c.ctypes.data], dtype=np.int64)
    ctx[2] = 4
    _run(second, "k7", ctx, 4)
    _run(second, "k9", ctx, 4)
    np.testing.assert_array_equal(b, 2 * a)
    np.testing.assert_array_equal(c, 5 * a)


def test_functions_of_another_shape_stay_whole():
    passed_on = """define void @k3(ptr noalias %ctx, i64 %start, i64 %end) {
entry:
  call void @helper(ptr %ctx)
  ret void
}
declare void @helper(ptr)
"""
    assert split_kernels(_kernel("k1", (0, 1, 2)) + _kernel("k2", (2, 3, 4)) + passed_on) is None
    shared = "@table = global [2 x i64] zeroinitializer\n"
    assert split_kernels(shared + _kernel("k1", (0, 1, 2)) + _kernel("k2", (2, 3, 4))) is None
    assert split_kernels(_kernel("k1", (0, 1, 2)) + _kernel("k2", (0, 1, 2), "3.0")) is None  # nothing repeats


def test_an_entry_that_calls_the_kernels_reaches_their_wrappers(tmp_path):
    """The backend's entry function calls every kernel: it stays whole, in the last engine,
    and calls the wrappers through the aliases they export."""
    entry = """define void @entry(ptr noalias %ctx) {
entry:
  call void @k1(ptr %ctx, i64 0, i64 4)
  call void @k2(ptr %ctx, i64 0, i64 4)
  ret void
}
"""
    text = _kernel("k1", (0, 1, 3)) + _kernel("k2", (1, 2, 3)) + entry
    split = split_kernels(text)
    assert len(split.kernels) == 1 and "@entry(" in split.rest and len(split.exports) == 2
    jm = cache.compile_cached(text, cache=cache.CompileCache(tmp_path))
    x, y, z = np.arange(4.0), np.zeros(4), np.zeros(4)
    ctx = np.array([x.ctypes.data, y.ctypes.data, z.ctypes.data, 4], dtype=np.int64)
    ctypes.CFUNCTYPE(None, ctypes.c_void_p)(jm.address("entry"))(ctx.ctypes.data)
    np.testing.assert_array_equal(z, 4 * x)


def test_a_deep_model_compiles_a_fixed_number_of_distinct_kernels():
    from flowml.backends.llvm.backend import LLVMBackend
    counts = {}
    for n in (4, 12):
        _, opt = _optimized(n)
        ex = LLVMBackend().compile(opt.graph, opt.outputs, opt.updates, plan=opt.plan)
        counts[n] = len(split_kernels(ex.llvm_ir()).kernels)
    assert counts[4] == counts[12]


def test_a_deep_model_on_llvm_matches_the_reference():
    src = deep_mlp(12)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(7, 4)), rng.normal(size=(7, 4))
    a, b = flowml.loads(src, backend="llvm"), flowml.loads(src, backend="reference")
    for _ in range(3):
        np.testing.assert_allclose(a.train(x, y), b.train(x, y), rtol=1e-12)
    for k, v in b.params.to_dict().items():
        np.testing.assert_allclose(a.params[k], v, rtol=1e-12, atol=1e-15)
