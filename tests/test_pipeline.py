"""The optimizer's structure: op properties as attributes of the ops (what the passes and
backends read instead of tables of op names), the phase list run by one loop, the IR verifier
between phases, and switching phases and rules off by name (`exclude=`)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import flowml
from flowml.cli import main as cli_main
from flowml.errors import FlowError, FlowInternalError
from flowml.ir import lib as L
from flowml.ir import ops as P
from flowml.ir.fused import Instr, fused
from flowml.ir.graph import Graph
from flowml.ir.types import DTYPES, TensorType, is_float, sym
from flowml.ir.verify import verify_graph
from flowml.passes import pipeline
from flowml.passes.pipeline import PHASES, PIPELINE, Phase, optimize, rule_names
from flowml.passes.rewrite import Rebuild, Rule

F64N = TensorType(DTYPES["f64"], (sym("N"),))


def _ops_with(prop: str) -> set[str]:
    return {name for name, op in P.OPS.items() if getattr(op, prop)}


# ---------------------------------------------------------------- op properties


def test_op_properties_are_attributes_of_the_ops():
    """The sets the passes used to spell out (rewrite's _COMMUTATIVE, fuse's _CHEAP, scalar's
    _BOOL_RESULT, fused's REDUCTIONS, checkmode's _LEAVES, memory's _VIEWS) are now what the ops
    say of themselves."""
    assert _ops_with("commutative") == {"add", "mul", "maximum", "minimum", "eq", "ne", "and", "or"}
    assert _ops_with("cheap") == {"add", "sub", "mul", "neg", "cast", "eq", "ne", "lt", "le", "gt", "ge", "and",
                                  "or", "not", "where", "maximum", "minimum", "abs", "broadcast_to", "reshape",
                                  "floor", "ceil", "trunc", "rint", "isnan", "isinf", "isfinite"}
    assert _ops_with("bool_result") == {"eq", "ne", "lt", "le", "gt", "ge", "and", "or", "not", "isnan", "isinf",
                                        "isfinite"}
    assert _ops_with("logical") == {"and", "or", "not"}
    assert _ops_with("kernel_reduce") == {"sum", "prod", "max", "min"}
    assert {n for n in _ops_with("kernel_reduce") if not P.OPS[n].has_identity} == {"max", "min"}
    assert _ops_with("leaf") == {"input", "param", "const", "dim"}
    assert _ops_with("view") == {"reshape"}


def test_an_unknown_op_property_is_an_error():
    with pytest.raises(TypeError, match="unknown property 'comutative'"):
        P.Elementwise("test_typo_op", np.add, comutative=True)
    assert "test_typo_op" not in P.OPS


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-5, 5) | st.sampled_from([0.0, np.inf, -np.inf, np.nan]), min_size=2, max_size=6))
def test_commutative_ops_commute(values):
    """What `commutative` promises the rewrite engine (patterns match both operand orders)."""
    a = np.array(values)
    b = a[::-1].copy()
    for name in _ops_with("commutative"):
        op = P.OPS[name]
        x, y = (a > 0, b > 0) if op.logical else (a, b)
        with np.errstate(invalid="ignore"):
            np.testing.assert_array_equal(op.impl(x, y), op.impl(y, x), err_msg=name)


def test_bool_result_ops_give_bools():
    t = TensorType(DTYPES["f64"], (3,))
    for name in _ops_with("bool_result"):
        op = P.OPS[name]
        assert op.infer([t] * op.nin, {}).dtype == DTYPES["bool"], name


def test_a_new_op_is_used_by_the_passes_through_its_properties():
    """An op defined with `commutative=True, cheap=True` is matched in both operand orders by
    a rule and recomputed inside each kernel by fuse — without naming it in either pass."""
    op = P.Elementwise("test_hypot_sq", lambda a, b: a * a + b * b, commutative=True, cheap=True)
    try:
        g = Graph()
        x = L.input(g, "x", F64N)
        y = L.apply(op, [x, L.constant(2.0, g, dtype="f64")])
        rule = Rule("test_hypot_sq(2.0, x) -> x * x + 4.0")  # written with the operands swapped
        out = rule.apply(g, y.id)
        assert out is not None and out.op is P.add
        # fuse: a cheap op feeding two kernels of different shapes is computed in both
        g = Graph()
        x = L.input(g, "x", F64N)
        h = L.apply(op, [x, x])
        opt = optimize(g, [L.exp(h).id, L.sum(h).id], [])
        bodies = [opt.graph.attrs(n)["body"] for n in opt.graph.nodes() if opt.graph.op(n) is fused]
        assert len(bodies) == 2 and all(any(i.op == op.name for i in b) for b in bodies)
    finally:
        del P.OPS[op.name]


def test_is_float_takes_every_spelling_of_a_dtype():
    for dt in (np.dtype(np.float32), "float64", "f32", DTYPES["f64"]):
        assert is_float(dt)
    for dt in (np.dtype(np.int64), "int32", "i64", "bool"):
        assert not is_float(dt)


def test_a_rule_calling_an_unknown_function_fails_when_made():
    """(The old rule namespace listed "square", which lib did not have, and `hasattr` dropped it
    silently: a rule using it would only have failed when it fired.)"""
    with pytest.raises(FlowInternalError, match="unknown name.*cube"):
        Rule("x * x * x -> cube(x)")
    assert Rule("x * 1 -> clip(x, 0, 1)") is not None  # any lib function may be used


# ---------------------------------------------------------------- the phase list


def test_the_phases_are_a_list_of_phase_objects():
    assert [p.name for p in PIPELINE] == list(PHASES) == ["canonicalize", "stabilize", "specialize", "fuse", "memory"]
    assert all(isinstance(p, Phase) and p.doc for p in PIPELINE)


def _softplus_graph():
    g = Graph()
    x = L.input(g, "x", F64N)
    y = L.log(1 + L.exp(x)) * 1
    return g, x, y


def _op_names(opt) -> set[str]:
    return {opt.graph.op(n).name for n in opt.graph.ancestors(opt.outputs)}


def test_a_phase_added_to_the_list_runs_in_order(monkeypatch):
    seen = []
    extra = Phase("test_probe", "records the phase order", lambda r: seen.append([p for p in r.stats]))
    monkeypatch.setattr(pipeline, "PIPELINE", PIPELINE[:3] + [extra] + PIPELINE[3:])
    g, x, y = _softplus_graph()
    optimize(g, [y.id], [])
    assert len(seen) == 1 and any(k.startswith("stabilize:") for k in seen[0])
    assert not any(k.startswith("fuse:") for k in seen[0])


# ---------------------------------------------------------------- exclude


def test_exclude_a_phase():
    g, x, y = _softplus_graph()
    full = optimize(g, [y.id], [])
    assert "fused" in _op_names(full) and full.plan is not None
    no_stab = optimize(g, [y.id], [], after="specialize", exclude=["stabilize"])
    assert "softplus" not in _op_names(no_stab) and "log" in _op_names(no_stab)
    assert not any(k.startswith("stabilize:") for k in no_stab.stats)
    assert no_stab.stats["canonicalize: x * 1 -> x"] == 1
    no_fuse = optimize(g, [y.id], [], exclude=["fuse", "memory"])
    assert "fused" not in _op_names(no_fuse) and "softplus" in _op_names(no_fuse)
    assert no_fuse.plan is None and no_fuse.phase == "specialize"


def test_excluding_canonicalize_drops_its_rules_from_every_phase():
    g, x, y = _softplus_graph()
    opt = optimize(g, [y.id], [], exclude=["canonicalize"], after="specialize")
    assert "mul" in _op_names(opt) and not any("x * 1 -> x" in k for k in opt.stats)


def test_exclude_a_rule_by_its_text_or_its_function_name():
    g, x, y = _softplus_graph()
    opt = optimize(g, [y.id], [], after="stabilize", exclude=["log(1 + x) -> log1p(x)"])
    assert "softplus" not in _op_names(opt) and "log" in _op_names(opt)
    g = Graph()
    c = L.exp(L.constant(np.arange(3.0), g))
    x = L.input(g, "x", TensorType(DTYPES["f64"], (3,)))
    out = (x + c).id
    assert "exp" not in _op_names(optimize(g, [out], [], after="canonicalize"))
    assert "exp" in _op_names(optimize(g, [out], [], after="canonicalize", exclude=["fold_constants"]))
    assert "exp" in _op_names(optimize(g, [out], [], after="canonicalize",
                                        exclude=["op(constants...) -> constant"]))


def test_exclude_keeps_the_values():
    src = "input x : f64[N]\nfn f(x) -> log(1 + exp(x)) * 1, grad(sum(log(1 + exp(x))), x)\n"
    x = np.array([-3.0, 0.0, 0.5, 3.0])
    want = flowml.loads(src, backend="reference").f(x)
    for exclude in (["stabilize"], ["fuse"], ["canonicalize", "memory"], ["log1p(exp(x)) -> softplus(x)"]):
        got = flowml.loads(src, backend="reference", exclude=exclude).f(x)
        for g_, w in zip(got, want):
            np.testing.assert_allclose(g_, w, rtol=1e-12, err_msg=str(exclude))


def test_an_unknown_name_lists_the_valid_ones():
    with pytest.raises(FlowError) as info:
        flowml.loads("input x : f64[N]\nfn f(x) -> x\n", backend="reference", exclude=["stabilise"])
    msg = str(info.value)
    assert "'stabilise'" in msg and "did you mean 'stabilize'?" in msg
    for name in PHASES + ("fold_constants", "log(1 + x) -> log1p(x)"):
        assert name in msg
    assert set(rule_names()) >= {"fold_constants", "categorical_crossentropy", "x * 1 -> x"}


def test_exclude_from_the_builder_api():
    flowml.reset_default_graph()
    x = flowml.tensor("x", "f64[N]")
    y = flowml.log(1 + x)
    f = flowml.function([x], y, backend="reference", exclude=["log(1 + x) -> log1p(x)"])
    assert "log1p" not in f.ir() and "log1p" in flowml.function([x], y, backend="reference").ir()
    with pytest.raises(FlowError, match="cannot exclude 'nope'"):
        flowml.function([x], y, backend="reference", exclude=["nope"])
    flowml.reset_default_graph()


def test_exclude_on_a_native_backend():
    """Without fuse, the LLVM backend runs the unfused graph (as at -O0), to the same values."""
    src = "input x : f64[N]\nfn f(x) -> sum(exp(x) * 2)\n"
    x = np.linspace(-1, 1, 7)
    got = flowml.loads(src, backend="llvm", exclude=["fuse"]).f(x)
    np.testing.assert_allclose(got, np.sum(np.exp(x) * 2), rtol=1e-12)


def test_exclude_from_the_cli(tmp_path, capsys):
    f = tmp_path / "m.flow"
    f.write_text("input x : f64[N]\nfn f(x) -> log(1 + exp(x))\n")
    assert cli_main(["compile", str(f)]) == 0
    assert "softplus" in capsys.readouterr().out
    assert cli_main(["compile", str(f), "--exclude", "stabilize", "--exclude", "fuse"]) == 0
    out = capsys.readouterr().out
    assert "softplus" not in out and "= log1p" not in out and "= log " in out
    assert cli_main(["run", str(f), "f", "--random", "N=3", "--backend", "reference",
                     "--exclude", "log1p(exp(x)) -> softplus(x)"]) == 0
    capsys.readouterr()
    assert cli_main(["compile", str(f), "--exclude", "fuze"]) == 1
    err = capsys.readouterr().err
    assert "cannot exclude 'fuze'" in err and "did you mean 'fuse'?" in err and "Traceback" not in err


# ---------------------------------------------------------------- the IR verifier


def _small_graph():
    g = Graph()
    x = L.input(g, "x", F64N)
    y = L.exp(x) + 1.0
    return g, x, y


def test_the_verifier_accepts_what_the_optimizer_makes():
    g, x, y = _softplus_graph()
    for after in PHASES:
        opt = optimize(g, [y.id], [], after=after, verify=True)
        verify_graph(opt.graph, opt.outputs, after)


def test_the_verifier_finds_a_wrong_stored_type():
    g, x, y = _small_graph()
    g.data(y.id)["type"] = TensorType(DTYPES["f32"], (sym("N"),))
    with pytest.raises(FlowInternalError, match=r"after phase x: %\d+ \(add\): stored type f32\[N\], but its "
                                                 r"operands give f64\[N\]"):
        verify_graph(g, [y.id], "phase x")


def test_the_verifier_finds_a_cycle_and_a_missing_root():
    g, x, y = _small_graph()
    g.set_operands(x.id, [y.id])  # x now "consumes" y: a cycle
    with pytest.raises(FlowInternalError, match="does not come before it|a leaf with operands"):
        verify_graph(g, [y.id], "phase x")
    g, x, y = _small_graph()
    with pytest.raises(FlowInternalError, match="root %99 is not a node"):
        verify_graph(g, [y.id, 99], "phase x")


def test_the_verifier_finds_a_broken_fused_body():
    g = Graph()
    x = L.input(g, "x", F64N)
    body = (Instr("exp", (0,), (), "float64"), Instr("add", (1, 5), (), "float64"))
    n = g.add(fused, [x.id], {"body": body, "reduce": None, "shape": (sym("N"),)}, type=F64N)
    with pytest.raises(FlowInternalError, match=r"body\[1\] \(add\) reads value 5"):
        verify_graph(g, [n], "phase fuse")


def test_a_phase_that_breaks_the_graph_is_caught_at_that_phase(monkeypatch):
    def corrupt(r):
        out = r.roots[0]
        r.graph.data(out)["type"] = TensorType(DTYPES["i64"], r.graph.type(out).shape)
    broken = Phase("breaker", "sets a wrong type", corrupt)
    monkeypatch.setattr(pipeline, "PIPELINE", PIPELINE[:2] + [broken])
    g, x, y = _softplus_graph()
    optimize(g, [y.id], [])  # unchecked: goes unnoticed
    with pytest.raises(FlowInternalError, match="IR verifier, after phase breaker"):
        optimize(g, [y.id], [], verify=True)
    monkeypatch.setenv("FLOWML_VERIFY", "1")
    with pytest.raises(FlowInternalError, match="IR verifier, after phase breaker"):
        optimize(g, [y.id], [])


def test_rebuild_keeps_graphs_verifiable():
    g, x, y = _small_graph()
    rb = Rebuild(g, [], Counter())
    rb.run([y.id])
    verify_graph(rb.new, [rb.map[y.id]], "rebuild")


def test_one_empty_reduction_error_for_every_native_backend():
    """max / min over an empty axis: the error of `fused.empty_reduction_error` (sum and prod
    have an identity), raised by the LLVM backend at the node's source line."""
    from flowml.ir.fused import empty_reduction_error
    assert empty_reduction_error(("sum", (0,), False), (0, 3)) is None
    assert empty_reduction_error(("max", (1,), False), (0, 3)) is None
    err = empty_reduction_error(("max", (0,), False), (0, 3))
    model = flowml.loads("input x : f64[N, M]\nfn f(x) -> max(x, axis=0)\n", backend="llvm")
    with pytest.raises(flowml.FlowRuntimeError) as info:
        model.f(np.zeros((0, 3)))
    assert str(err) in str(info.value) and info.value.loc.line == 2
