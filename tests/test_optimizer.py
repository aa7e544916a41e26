"""The optimizer as a whole (flowml/passes/pipeline.py, rewrite.py, memory.py): the phases and
their order, the rule engine (patterns, conditions, fixpoint, common subexpressions, dead
code), derivatives taken again after stabilize, every phase keeping the values of random
graphs and their gradients, the memory plan (reuse, in-place updates, liveness), and the
Python surface (`Function.ir/optimized/stats`, `Model(opt_level=)`).

Rule-by-rule tests are in tests/test_rules.py, fusion in tests/test_fusion.py, the CLI's
`compile --after/--stats/-O` in tests/test_cli.py.
"""

from __future__ import annotations

from collections import Counter

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import flowml
from flowml.errors import FlowError, FlowInternalError
from flowml.ir import lib as L
from flowml.ir import ops as P
from flowml.ir.graph import Graph
from flowml.ir.types import Sym
from flowml.passes import canonicalize, specialize, stabilize
from flowml.passes.grad import grad
from flowml.passes.memory import plan_memory
from flowml.passes.pipeline import PHASES, optimize
from flowml.passes.rewrite import MAX_ROUNDS, Rule, rule, run_phase
from flowml.passes.rop import rop
from flowml.program import Model
from optimizer_helpers import T, assert_same_values, build_program, ops_of, random_program, values

pytestmark = pytest.mark.usefixtures("verify_ir")  # the IR verifier after every phase

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent
LOGREG = ROOT / "examples" / "logreg.flow"
RANDOM = settings(max_examples=20, deadline=None)


def _graph_x(shape=(3,), dtype="f64"):
    g = Graph()
    return g, L.input(g, "x", T(dtype, *shape))


# ---------------------------------------------------------------- phases


def test_the_phases_in_order():
    assert PHASES == ("canonicalize", "stabilize", "specialize", "fuse", "memory")
    g, x = _graph_x()
    y = L.log(1 + L.exp(x)) / 2.0
    for phase in PHASES:
        opt = optimize(g, [y.id], [], after=phase)
        assert opt.phase == phase
        assert (opt.plan is not None) == (phase == "memory")
    assert optimize(g, [y.id], []).phase == "memory"
    ops = {p: set(ops_of(*_opt_graph(g, y, p))) for p in PHASES}
    assert {"log", "exp", "add", "div"} <= ops["canonicalize"]          # nothing to canonicalize here
    assert ops["stabilize"] == {"input", "softplus", "const", "div"}    # log(1 + exp(x)) -> softplus(x)
    assert ops["specialize"] == {"input", "softplus", "const", "mul"}   # / 2 -> * 0.5
    assert ops["fuse"] == ops["memory"] == {"input", "fused"}


def _opt_graph(g, y, phase):
    opt = optimize(g, [y.id], [], after=phase)
    return opt.graph, opt.outputs


def test_an_unknown_phase_is_an_error():
    g, x = _graph_x()
    with pytest.raises(FlowError, match=r"^unknown phase 'fusion'; the phases are canonicalize, stabilize, "
                                        r"specialize, fuse, memory$"):
        optimize(g, [x.id], [], after="fusion")


def test_level_zero_is_the_graph_as_built():
    """-O0: no rule runs; only what no output needs is cut (and identical nodes are merged)."""
    g, x = _graph_x()
    unused = L.exp(x)  # noqa: F841 - dead code
    y = L.log(1 + L.exp(x)) * 1.0
    opt = optimize(g, [y.id], [], level=0)
    assert opt.phase == "none" and opt.plan is None and not opt.stats
    assert ops_of(opt.graph, opt.outputs) == Counter(input=1, exp=1, const=1, add=1, log=1, mul=1)  # 1 == 1.0


def test_the_input_graph_is_not_changed():
    g, x = _graph_x()
    y = L.sum(L.log(1 + L.exp(x)))
    (gx,) = grad(y, x)
    before = (len(g), [g.op(n).name for n in g.nodes()], len(g.derivatives))
    optimize(g, [y.id, gx.id], [])
    assert (len(g), [g.op(n).name for n in g.nodes()], len(g.derivatives)) == before


@RANDOM
@given(data=st.data())
def test_each_phase_reaches_a_fixpoint(data):
    """Rerunning a phase's rules on its own result fires nothing."""
    arrays, steps = random_program(data.draw, st, hnp)
    graph, roots = build_program(arrays, steps)
    canonical = canonicalize.RULES
    for phase, rules in (("canonicalize", canonical), ("stabilize", canonical + stabilize.RULES),
                         ("specialize", canonical + specialize.RULES)):
        opt = optimize(graph, roots, [], after=phase)
        stats: Counter = Counter()
        run_phase(opt.graph, opt.outputs, rules, stats)
        assert not stats, f"after {phase}: {dict(stats)}"


@RANDOM
@given(data=st.data(), phase=st.sampled_from(PHASES))
def test_every_phase_keeps_values_and_gradients(data, phase):
    """The graph through any phase computes what the graph as built computes: outputs and the
    gradients of the outputs w.r.t. every input (re-taken after stabilize), on random inputs."""
    arrays, steps = random_program(data.draw, st, hnp)
    graph, roots = build_program(arrays, steps)
    feed = {f"x{i}": a for i, a in enumerate(arrays)}
    base = optimize(graph, roots, [], level=0)
    opt = optimize(graph, roots, [], after=phase)
    assert_same_values(values(base.graph, base.outputs, feed), values(opt.graph, opt.outputs, feed),
                       rtol=1e-9, atol=1e-12, what=phase)


# ---------------------------------------------------------------- the rule engine


def _rewrite(rules, y, roots=None):
    stats: Counter = Counter()
    new, new_roots = run_phase(y.graph, roots or [y.id], rules, stats)
    return new, new_roots, stats


def test_patterns_match_add_and_mul_in_either_order():
    r = Rule("log(1 + x) -> log1p(x)")
    for build in (lambda x: L.log(1 + x), lambda x: L.log(x + 1)):
        g, x = _graph_x()
        new, roots, stats = _rewrite([r], build(x))
        assert stats[r.name] == 1 and ops_of(new, roots)["log1p"] == 1
    g, x = _graph_x()
    _, _, stats = _rewrite([Rule("x - 1 -> x")], 1 - x)  # sub is not commutative
    assert not stats


def test_a_name_used_twice_must_capture_the_same_node():
    r = Rule("exp(x) / (1 + exp(x)) -> sigmoid(x)")
    g = Graph()
    x, z = L.input(g, "x", T("f64", 3)), L.input(g, "z", T("f64", 3))
    assert not _rewrite([r], L.exp(x) / (1 + L.exp(z)))[2]
    assert _rewrite([r], L.exp(x) / (1 + L.exp(x)))[2][r.name] == 1


def test_a_number_matches_a_constant_of_that_value_and_any_shape():
    r = Rule("x * 1 -> x")
    g, x = _graph_x()
    new, roots, stats = _rewrite([r], x * L.constant(np.ones((2, 3)), g))
    assert stats[r.name] == 1
    assert new.type(roots[0]) == T("f64", 2, 3)  # the result keeps the product's broadcast shape
    assert ops_of(new, roots)["broadcast_to"] == 1
    assert not _rewrite([r], x * L.constant(np.array([1.0, 1.0, 2.0]), g))[2]


def test_keywords_match_and_capture_attrs():
    g, x = _graph_x((2, 3))
    r = Rule("log(softmax(x, axis=a)) -> log_softmax(x, axis=a)")
    new, roots, stats = _rewrite([r], L.log(L.softmax(x, axis=0)))
    (n,) = [n for n in new.ancestors(roots) if new.op(n) is P.log_softmax]
    assert new.attrs(n)["axis"] == 0
    only_axis1 = Rule("log(softmax(x, axis=1)) -> log_softmax(x, axis=1)")
    assert not _rewrite([only_axis1], L.log(L.softmax(x, axis=0)))[2]
    assert _rewrite([only_axis1], L.log(L.softmax(x, axis=1)))[2][only_axis1.name] == 1


def test_a_condition_and_an_environment():
    r = Rule("exp(x) -> twice(x)", when=lambda x: x.dtype.kind == "f", env={"twice": lambda v: v + v})
    g, x = _graph_x()
    new, roots, stats = _rewrite([r], L.exp(x))
    assert stats[r.name] == 1 and ops_of(new, roots)["add"] == 1
    g, i = _graph_x(dtype="i64")
    assert not _rewrite([r], L.exp(i))[2]


def test_function_rules():
    @rule("sin(x) ** 2 + cos(x) ** 2 -> 1")
    def pythagoras(graph, n):
        if graph.op(n) is not P.add:
            return None
        a, b = graph.operands(n)
        if graph.op(a) is P.sin and graph.op(b) is P.cos and graph.operands(a) == graph.operands(b):
            return L.ones_like(L.Var(graph, a))
        return None
    g, x = _graph_x()
    new, roots, stats = _rewrite([pythagoras], L.sin(x) + L.cos(x))
    assert stats["sin(x) ** 2 + cos(x) ** 2 -> 1"] == 1 and pythagoras.name.startswith("sin(x)")


def test_a_rule_that_crashes_is_an_internal_error_naming_it():
    @rule("boom -> bang")
    def boom(graph, n):
        raise ValueError("kaput")
    g, x = _graph_x()
    with pytest.raises(FlowInternalError, match=r"rewrite rule `boom -> bang` failed on %\d+: kaput"):
        _rewrite([boom], L.exp(x))


def test_a_rule_that_never_settles_stops_after_max_rounds():
    swap = Rule("a + b -> b + a")
    g = Graph()
    x, z = L.input(g, "x", T("f64", 3)), L.input(g, "z", T("f64", 3))
    new, roots, stats = _rewrite([swap], x + z)
    assert stats[swap.name] == MAX_ROUNDS
    np.testing.assert_array_equal(values(new, roots, {"x": np.ones(3), "z": np.arange(3.0)})[0], np.arange(3.0) + 1)


def test_common_subexpressions_are_merged_and_dead_code_cut():
    g = Graph()
    x, z = L.input(g, "x", T("f64", 3)), L.input(g, "z", T("f64", 3))
    L.exp(x * z)  # dead
    y = L.tanh(x * z) + L.tanh(x * z)
    new, roots, _ = _rewrite(canonicalize.RULES, y)
    assert ops_of(new, roots) == Counter(input=2, mul=1, tanh=1, add=1)


def test_constant_folding_folds_what_is_computed_from_constants():
    g, x = _graph_x()
    c = L.constant(np.array([1.0, 2.0, 3.0]), g)
    y = x + (L.exp(c) * 2.0 - L.sum(c))
    opt = optimize(g, [y.id], [], after="canonicalize")
    assert ops_of(opt.graph, opt.outputs) == Counter(input=1, const=1, add=1)
    assert opt.stats["canonicalize: op(constants...) -> constant"] == 4  # exp, mul, sum, sub
    v = np.array([0.5, -1.0, 2.0])
    np.testing.assert_allclose(values(opt.graph, opt.outputs, {"x": v})[0], v + np.exp([1, 2, 3]) * 2 - 6)


def test_names_and_locations_survive_rewrites():
    model = flowml.loads("input x : f64[N]\np = log(1 + exp(x))\nfn f(x) -> p\n", backend="reference")
    line = model.f.ir(after="stabilize").splitlines()[2]
    assert line == "  %1 = softplus %0 : f64[N]  # <string>:2:5 (p)"


# ---------------------------------------------------------------- derivatives, taken again


def test_the_gradient_is_of_the_stable_form():
    """grad(log(1 + exp(x))) is built as exp(x) / (1 + exp(x)) — NaN at 800; re-taken after
    stabilize it is the derivative of softplus: sigmoid(x)."""
    g, x = _graph_x()
    (gx,) = grad(L.sum(L.log(1 + L.exp(x))), x)
    opt = optimize(g, [gx.id], [], after="stabilize")
    assert ops_of(opt.graph, opt.outputs) == Counter(input=1, sigmoid=1)
    v = np.array([-800.0, 0.0, 800.0])
    np.testing.assert_array_equal(values(opt.graph, opt.outputs, {"x": v})[0], [0.0, 0.5, 1.0])
    naive = optimize(g, [gx.id], [], level=0)
    assert np.isnan(values(naive.graph, naive.outputs, {"x": v})[0][2])


def test_higher_derivatives_and_forward_mode_are_taken_again_too():
    g, x = _graph_x()
    v = L.input(g, "v", T("f64", 3))
    f = L.log(1 + L.exp(x))
    (g1,) = grad(L.sum(f), x)
    (g2,) = grad(L.sum(g1), x)
    jv = rop(f, x, v)
    opt = optimize(g, [g1.id, g2.id, jv.id], [])
    xs = np.array([-800.0, 0.0, 800.0])
    got = values(opt.graph, opt.outputs, {"x": xs, "v": np.array([2.0, 2.0, 2.0])})
    np.testing.assert_array_equal(got[0], [0.0, 0.5, 1.0])
    np.testing.assert_array_equal(got[1], [0.0, 0.25, 0.0])
    np.testing.assert_array_equal(got[2], [0.0, 1.0, 2.0])


@pytest.mark.parametrize("absorbed", ["stabilize", "canonicalize"])
def test_the_derivative_by_a_value_a_rewrite_absorbed(absorbed):
    """grad(cost, h) for an intermediate h that a rewrite removes from the cost's graph
    (log(1 + h) with h = exp(x) becomes softplus(x); -h with h = -x becomes x) cannot be taken
    again: the derivative as built is kept (it is not zero)."""
    g, x = _graph_x()
    if absorbed == "stabilize":
        h = L.exp(x)
        cost = L.sum(L.log(1 + h))
        want = lambda v: 1 / (1 + np.exp(v))  # noqa: E731
    else:
        h = -x
        cost = L.sum(-h * L.constant(np.array([1.0, 2.0, 3.0]), g))
        want = lambda v: -np.array([1.0, 2.0, 3.0])  # noqa: E731
    (gh,) = grad(cost, h)
    v = np.array([-1.0, 0.0, 2.0])
    for level in (0, 1):
        opt = optimize(g, [cost.id, gh.id], [], level=level)
        np.testing.assert_allclose(values(opt.graph, opt.outputs, {"x": v})[1], want(v), rtol=1e-15)


def test_stop_gradient_and_disconnected_derivatives_stay_zero():
    g = Graph()
    x, z = L.input(g, "x", T("f64", 3)), L.input(g, "z", T("f64", 3))
    cost = L.sum(L.log(1 + L.exp(L.stop_gradient(x))) * z)
    gx, gz = grad(cost, x, z)
    opt = optimize(g, [gx.id, gz.id], [])
    got = values(opt.graph, opt.outputs, {"x": np.array([800.0, 0.0, -800.0]), "z": np.ones(3)})
    np.testing.assert_array_equal(got[0], np.zeros(3))
    np.testing.assert_allclose(got[1], [800.0, np.log(2), 0.0])


# ---------------------------------------------------------------- memory planning


def _plan_of(source: str, fn: str):
    model = flowml.loads(source, backend="reference")
    return model, model.functions[fn].optimized()


CHAIN = """input x : f64[N, 8]
param A : f64[8, 8] = normal(0, 1)
fn f(x) -> sum(tanh(tanh(tanh(x @ A) @ A) @ A) @ A)
"""


def test_buffers_are_reused_along_a_chain():
    model, opt = _plan_of(CHAIN, "f")
    plan = opt.plan
    assert len(plan.buffers) < len(plan.values)
    counts = Counter(plan.assign.values())
    assert max(counts.values()) >= 3  # one buffer holds several values, one after another
    env = {"N": 100}
    assert plan.bytes_after(env) < plan.bytes_before(opt.graph, env)
    _check_liveness(opt)


def test_param_updates_are_in_place():
    model = flowml.load(LOGREG, backend="reference")
    opt = model.train.optimized()
    assert set(opt.plan.inplace) == {"w", "b"}
    assert opt.plan.inplace == dict(opt.updates)
    for v in opt.plan.inplace.values():
        assert v not in opt.plan.assign  # written into the param's storage, no buffer of its own
    assert model.train.stats()["memory: in-place param updates"] == 2


NOT_IN_PLACE = """input x : f64[N, 3]
param w : f64[3] = normal(0, 1)
param b : f64[3] = normal(0, 1)
early = x @ w
new_w = w - 0.1 * b
score = x @ w + 0
fn late_reader(x) -> score { w <- new_w }
fn returns_old(x) -> w { w <- new_w }
fn swap(x) { w <- b
             b <- new_w }
fn early_reader(x) -> early { w <- new_w }
"""


@pytest.mark.parametrize("fn, inplace", [("late_reader", set()), ("returns_old", set()), ("swap", set()),
                                         ("early_reader", {"w"})])
def test_in_place_only_when_nothing_reads_the_old_value_after(fn, inplace):
    """`w <- w - 0.1 * b` is written into w's storage unless the old w is still read after the
    update kernel runs: by a matmul later in the schedule (late_reader), as an output
    (returns_old), or as another param's new value (swap: b <- ..., w <- b)."""
    model, opt = _plan_of(NOT_IN_PLACE, fn)
    assert set(opt.plan.inplace) == inplace
    # and the function computes what it says (on the reference backend, which ignores the plan)
    x = np.arange(6.0).reshape(2, 3)
    w0, b0 = model.params["w"], model.params["b"]
    out = model.functions[fn](x)
    if fn in ("late_reader", "early_reader"):
        np.testing.assert_allclose(out, x @ w0)
    elif fn == "returns_old":
        np.testing.assert_array_equal(out, w0)
    np.testing.assert_allclose(model.params["w"], b0 if fn == "swap" else w0 - 0.1 * b0)


def _check_liveness(opt, env_size: int = 3):
    """No two values that are alive at once share a buffer; a buffer holds values of its size."""
    g, plan = opt.graph, opt.plan
    roots = opt.outputs + [n for _, n in opt.updates]
    order = sorted(g.ancestors(roots))
    pos = {n: i for i, n in enumerate(order)}

    def owner(n):
        while n in plan.alias:
            n = plan.alias[n]
        return n
    last = {}
    for n in order:
        for o in g.operands(n):
            last[owner(o)] = max(last.get(owner(o), -1), pos[n])
    for n in roots:
        last[owner(n)] = len(order)
    for n in order:
        if g.op(n).leaf:
            assert n not in plan.assign
        elif n in plan.alias:
            assert g.op(n).name == "reshape" and n not in plan.assign
        elif n in plan.inplace.values():
            assert n not in plan.assign
        else:
            assert n in plan.assign, f"%{n} ({g.op(n).name}) has no buffer"
    env = {s: env_size for n in order for s in g.type(n).symbols()}
    by_buffer: dict[int, list[int]] = {}
    for n, b in plan.assign.items():
        by_buffer.setdefault(b, []).append(n)
        buf = plan.buffers[b]
        assert buf.dtype == g.type(n).dtype
        from flowml.passes.memory import _nbytes
        assert _nbytes(g.type(n), env) == buf.nbytes(env)
    for b, ns in by_buffer.items():
        spans = sorted((pos[n], last.get(n, pos[n])) for n in ns)
        for (s1, e1), (s2, e2) in zip(spans, spans[1:]):
            assert e1 < s2, f"buffer {b}: a value alive over {s1}..{e1} and one written at {s2}"
    # in place: nothing after the update kernel reads the param, and the param is not returned
    params = {g.attrs(n)["name"]: n for n in order if g.op(n) is P.param}
    for name, v in plan.inplace.items():
        p = params.get(name)
        if p is None:
            continue
        assert last.get(p, -1) <= pos[v]
        assert all(owner(r) != p for r in roots)


@RANDOM
@given(data=st.data())
def test_plans_never_share_a_buffer_between_live_values(data):
    arrays, steps = random_program(data.draw, st, hnp)
    graph, roots = build_program(arrays, steps)
    # a param updated from the result, to plan an update too
    last = L.Var(graph, roots[0])
    p = L.param(graph, "p", last.type)
    update = p - 0.1 * L.tanh(last) * p
    opt = optimize(graph, roots[:2], [("p", update.id)])
    _check_liveness(opt)
    assert opt.plan.bytes_after({}) <= opt.plan.bytes_before(opt.graph, {})


def test_plans_of_the_examples():
    for path in ("logreg.flow", "softmax.flow", "hvp.flow"):
        model = flowml.load(ROOT / "examples" / path, backend="reference")
        for f in model.functions.values():
            _check_liveness(f.optimized())


def test_plan_of_a_reshape_view_keeps_its_source_alive():
    """reshape is a view: it has no buffer, and its readers keep its source's buffer alive."""
    g, x = _graph_x((2, 3))
    a = x @ L.constant(np.full((3, 3), 0.5), g)
    r = L.reshape(a, (3, 2)) @ L.constant(np.ones((2, 3)), g)
    y = L.transpose(x) @ L.constant(np.ones((2, 3)), g)  # the same size as a
    out = r @ y
    opt = optimize(g, [out.id], [])
    plan = plan_memory(opt.graph, opt.outputs, [])
    (view,) = [n for n in opt.graph.ancestors(opt.outputs) if opt.graph.op(n).name == "reshape"]
    assert view in plan.alias and view not in plan.assign
    _check_liveness(opt)


# ---------------------------------------------------------------- the Python surface


def test_function_ir_after_each_phase_and_at_level_zero():
    model = flowml.load(LOGREG, backend="reference")
    assert "softplus" in model.train.ir(after="stabilize")
    assert "softplus" not in model.train.ir(after="canonicalize")
    assert "fused[" not in model.train.ir(after="specialize") and "fused[" in model.train.ir()
    built = model.predict.ir(level=0).splitlines()
    assert built[4:8] == ["  %3 = matmul %0, %1 : f64[N]  # logreg.flow:13:22",
                          "  %4 = add %3, %2 : f64[N]  # logreg.flow:13:22",
                          "  %5 = sigmoid %4 : f64[N]  # logreg.flow:13:14 (p_1)",
                          "  %6 = const 0.5 : f64  # logreg.flow:14:14"]
    with pytest.raises(FlowError, match="unknown phase 'fusing'"):
        model.train.ir(after="fusing")


def test_function_stats():
    model = flowml.load(LOGREG, backend="reference")
    stats = model.train.stats()
    assert stats["kernels"] == 10
    assert stats["stabilize: log(sigmoid(x)) -> -softplus(-x)"] >= 1
    assert stats["stabilize: 1 - sigmoid(x) -> sigmoid(-x)"] >= 1
    # w's update, w - 0.1 * (x.T @ g + 0.02 * w), is one gemm (flowml/passes/gemm.py)
    assert stats["fuse: products with their updates as one gemm"] == 1
    assert stats["fuse: kernels"] == 7 and stats["memory: buffers"] >= 1
    assert all(k == "kernels" or k.split(": ", 1)[0] in PHASES for k in stats)
    assert model.train.stats(after="stabilize").get("fuse: kernels") is None


def test_opt_level_zero_model():
    program = flowml.parse_program(LOGREG.read_text(), "logreg.flow")
    model = Model(program, backend="reference", opt_level=0)
    assert model.train.optimized().phase == "none"
    assert model.train.ir() == model.train.ir(level=0)
    assert "fused[" not in model.train.ir() and "fused[" in model.train.ir(level=1)


def test_symbolic_dims_in_the_optimized_graph():
    """sum(broadcast_to(x, (N, 3)), axis=0) becomes x * N, N read at run time."""
    g = Graph()
    x = L.input(g, "x", T("f64", 3))
    m = L.input(g, "m", T("f64", "N", 3))
    y = L.sum(L.broadcast_to(x, m.type.shape), axis=0)
    opt = optimize(g, [y.id], [], after="canonicalize")
    assert "sum" not in ops_of(opt.graph, opt.outputs) and "dim" in ops_of(opt.graph, opt.outputs)
    dims = [opt.graph.attrs(n)["dim"] for n in opt.graph.ancestors(opt.outputs) if opt.graph.op(n).name == "dim"]
    assert dims == [Sym(("N",), 1)]
    v = np.array([1.0, -2.0, 0.5])
    np.testing.assert_array_equal(values(opt.graph, opt.outputs, {"x": v}, env={"N": 7})[0], v * 7)
