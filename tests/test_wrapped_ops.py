"""Wrapped ops (`flowml.op`): a numpy/scipy function as an op of the graph, from Python and from
.flow (only when the host passes it in), with and without derivatives, inside loops, under
threads, on every backend — against numpy and against finite differences."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest
import scipy.special
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import flowml
from flowml.ir.types import DTYPES, TensorType
from helpers import BACKENDS, opencl_param

HERE = __file__.rsplit("/", 1)[-1]


@pytest.fixture(autouse=True)
def fresh_graph():
    flowml.reset_default_graph()


def _line_of(text: str) -> int:
    """The line of this file that holds `text` (where an error must point)."""
    with open(__file__) as f:
        for i, line in enumerate(f, 1):
            if text in line:
                return i
    raise AssertionError(text)


# ---------------------------------------------------------------- ops with derivatives

def _sin_op():
    """sin through numpy, with a VJP and a JVP written with flowml's functions."""
    return flowml.op(np.sin, lambda t: t, name="np_sin", vjp=lambda g, y, x: g * flowml.cos(x),
                     jvp=lambda ts, y, x: ts[0] * flowml.cos(x))


def _chained_trig():
    """sin and cos wrapped, each differentiated by the other: every order of derivative is a
    wrapped op again."""
    ops = {}
    ops["sin"] = flowml.op(np.sin, lambda t: t, name="w_sin", vjp=lambda g, y, x: g * ops["cos"](x),
                           jvp=lambda ts, y, x: ts[0] * ops["cos"](x))
    ops["cos"] = flowml.op(np.cos, lambda t: t, name="w_cos", vjp=lambda g, y, x: -g * ops["sin"](x),
                           jvp=lambda ts, y, x: -ts[0] * ops["sin"](x))
    return ops["sin"], ops["cos"]


def _gammaln_op():
    """scipy's gammaln, its VJP another wrapped scipy function (digamma), which has its own
    (polygamma(1)): second derivatives are wrapped ops all the way."""
    trigamma = flowml.op(lambda x: scipy.special.polygamma(1, x), lambda t: t, name="trigamma")
    digamma = flowml.op(scipy.special.digamma, lambda t: t, vjp=lambda g, y, x: g * trigamma(x))
    return flowml.op(scipy.special.gammaln, lambda t: t, vjp=lambda g, y, x: g * digamma(x))


# ---------------------------------------------------------------- values, every backend

@pytest.mark.parametrize("backend", BACKENDS)
def test_wrapped_numpy_and_scipy_functions_match_numpy(backend):
    x = flowml.tensor("x", "f64[N, 3]")
    cumsum = flowml.op(np.cumsum, lambda t, axis: t, name="running_sum")            # a rule, with a kwarg
    det = flowml.op(np.linalg.det, "f64", name="np_det")                             # a fixed type
    erfcx = flowml.op(scipy.special.erfcx, TensorType(DTYPES["f64"], (3,)))          # a TensorType
    y = cumsum(x, axis=0) * 2 + 1                                                    # fused around it
    f = flowml.function([x], [y, det(x.T @ x), erfcx(x[0])], backend=backend)
    X = np.random.default_rng(0).normal(size=(5, 3))
    got = f(X)
    np.testing.assert_allclose(got[0], np.cumsum(X, axis=0) * 2 + 1, rtol=1e-13)
    np.testing.assert_allclose(got[1], np.linalg.det(X.T @ X), rtol=1e-12)
    np.testing.assert_allclose(got[2], scipy.special.erfcx(X[0]), rtol=1e-13)


@settings(max_examples=25, deadline=None)
@given(hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=3, max_side=5),
                  elements=st.floats(-1e3, 1e3)))
def test_any_shape_round_trips_through_a_wrapped_op(a):
    flowml.reset_default_graph()
    x = flowml.tensor("x", TensorType(DTYPES["f64"], a.shape))
    sort = flowml.op(np.sort, lambda t: t, name="sort_last")
    f = flowml.function([x], sort(x) - x.sum())
    np.testing.assert_array_equal(f(a), np.sort(a) - a.sum())


def test_several_operands_of_several_dtypes():
    x = flowml.tensor("x", "f32[N]")
    k = flowml.tensor("k", "i64[N]")
    repeat = flowml.op(lambda a, r: np.repeat(a, r).sum(dtype=np.float32), "f32", name="repeat_sum")
    f = flowml.function([x, k], repeat(x, k))
    X, K = np.arange(4, dtype=np.float32), np.array([0, 1, 2, 3])
    out = f(X, K)
    assert out.dtype == np.float32 and out == np.repeat(X, K).sum()


def test_type_rule_sees_types_and_keyword_arguments():
    seen = []

    def rule(t, n):
        seen.append((str(t), n))
        return f"{t.dtype_name}[{t.shape[0]}, {n}]"
    tile = flowml.op(lambda a, n: np.tile(a[:, None], (1, n)), rule, name="tile")
    x = flowml.tensor("x", "f64[N]")
    y = tile(x, n=3)
    assert str(y.type) == "f64[N, 3]" and seen == [("f64[N]", 3)]
    np.testing.assert_array_equal(flowml.function([x], y)(np.arange(2.0)), [[0, 0, 0], [1, 1, 1]])


# ---------------------------------------------------------------- purity: CSE, no folding

def test_equal_calls_merge_distinct_ops_of_one_name_do_not():
    calls = []

    def counted(a):
        calls.append(1)
        return np.sin(a)
    f_op = flowml.op(counted, lambda t: t, name="f")
    g_op = flowml.op(np.cos, lambda t: t, name="f")  # the same name, another function
    x = flowml.tensor("x", "f64[N]")
    fn = flowml.function([x], [f_op(x) + f_op(x), f_op(x) - g_op(x)])
    assert calls == []  # compiling runs nothing
    two, diff = fn(np.array([0.5, 1.0]))
    assert len(calls) == 1  # the equal calls are one node: pure functions are merged
    np.testing.assert_allclose(two, 2 * np.sin([0.5, 1.0]))
    np.testing.assert_allclose(diff, np.sin([0.5, 1.0]) - np.cos([0.5, 1.0]))


def test_a_wrapped_op_of_constants_is_not_folded():
    calls = []

    def counted(a):
        calls.append(1)
        return a + 1
    inc = flowml.op(counted, lambda t: t, name="inc")
    x = flowml.tensor("x", "f64")
    fn = flowml.function([x], x + inc(flowml.full((3,), 2.0)))
    assert calls == [] and "inc" in fn.ir()
    for _ in range(3):
        np.testing.assert_array_equal(fn(1.0), [4.0, 4.0, 4.0])
    assert len(calls) == 3  # once per call


def test_the_ir_verifier_accepts_wrapped_ops(verify_ir):
    sin = _sin_op()
    x = flowml.tensor("x", "f64[N]")
    fn = flowml.function([x], flowml.grad(flowml.sum(sin(x) ** 2), x), backend="llvm")
    X = np.linspace(-1, 1, 7)
    np.testing.assert_allclose(fn(X), np.sin(2 * X), rtol=1e-13)


def test_check_mode_compares_the_host_step_with_the_reference():
    sin = _sin_op()
    m = flowml.loads("input x : f64[N]\nfn f(x) -> exp(s(x)) * 2", ops={"s": sin}, backend="llvm", check=True)
    np.testing.assert_allclose(m.f(np.arange(3.0)), np.exp(np.sin(np.arange(3.0))) * 2)


# ---------------------------------------------------------------- derivatives

def test_grad_without_a_vjp_is_a_located_error_naming_the_op():
    x = flowml.tensor("x", "f64[N]")
    nodiff = flowml.op(np.sin, lambda t: t, name="nodiff")
    y = flowml.sum(nodiff(x) * 2)
    with pytest.raises(flowml.FlowGradError) as e:
        flowml.grad(y, x)
    assert "only through nodiff" in e.value.message and "which has no derivative" in e.value.message
    assert e.value.loc.line == _line_of("y = flowml.sum(nodiff(x) * 2)")
    assert any("without vjp=" in n for n in e.value.notes)


def test_first_and_second_derivatives_match_finite_differences():
    sin = _sin_op()
    point = [np.random.default_rng(1).normal(size=(4,))]
    assert flowml.verify_grad(lambda x: flowml.sum(sin(x) * x), point, rng=0).passed
    # the gradient's own gradient: a second derivative through the VJP's graph
    assert flowml.verify_grad(lambda x: flowml.grad(flowml.sum(sin(x) ** 3), x), point, rng=0).passed
    x = flowml.tensor("x", "f64[4]")
    h = flowml.function([x], flowml.hessian(flowml.sum(sin(x) ** 2), x))(point[0])
    np.testing.assert_allclose(h, np.diag(2 * np.cos(2 * point[0])), atol=1e-12)


def test_derivatives_written_as_wrapped_ops_compose_to_any_order():
    sin, _ = _chained_trig()
    x = flowml.tensor("x", "f64[N]")
    d1 = flowml.grad(flowml.sum(sin(x)), x)
    d2 = flowml.grad(flowml.sum(d1), x)
    d3 = flowml.grad(flowml.sum(d2), x)
    X = np.linspace(-2, 2, 9)
    for backend in ("reference", "llvm"):
        got = flowml.function([x], [d1, d2, d3], backend=backend)(X)
        np.testing.assert_allclose(got, [np.cos(X), -np.sin(X), -np.cos(X)], atol=1e-15)
    assert flowml.verify_grad(lambda v: flowml.grad(flowml.sum(sin(v) * v), v), [X], rng=0).passed


@settings(max_examples=20, deadline=None)
@given(hnp.arrays(np.float64, st.integers(1, 6), elements=st.floats(-3, 3)))
def test_a_vjp_that_uses_the_result_matches_finite_differences(a):
    tanh = flowml.op(np.tanh, lambda t: t, name="np_tanh", vjp=lambda g, out, x: g * (1 - out * out))
    report = flowml.verify_grad(lambda v: tanh(v * 2) * v, [a], rng=0)
    assert report.passed, str(report)


def test_scipy_functions_as_their_own_derivatives():
    gammaln = _gammaln_op()
    X = np.array([0.5, 1.5, 3.0, 7.25])
    assert flowml.verify_grad(lambda v: gammaln(v) * v, [X], rng=0).passed
    assert flowml.verify_grad(lambda v: flowml.grad(flowml.sum(gammaln(v)), v), [X], rng=0).passed
    x = flowml.tensor("x", "f64[N]")
    d2 = flowml.grad(flowml.sum(flowml.grad(flowml.sum(gammaln(x)), x)), x)
    np.testing.assert_allclose(flowml.function([x], d2)(X), scipy.special.polygamma(1, X), rtol=1e-14)


def test_a_vjp_per_operand_with_none_for_an_integer_operand():
    def vjp(g, out, a, k):
        return [g * flowml.cast(k, "f64"), None]
    scale = flowml.op(lambda a, k: a * k, lambda a, k: a, name="scale", vjp=vjp)
    x = flowml.tensor("x", "f64[N]")
    k = flowml.tensor("k", "i64[N]")
    gx = flowml.grad(flowml.sum(scale(x, k) ** 2), x)
    X, K = np.array([1.0, -2.0, 3.0]), np.array([2, 3, -1])
    np.testing.assert_allclose(flowml.function([x, k], gx)(X, K), 2 * X * K * K)


def test_a_vjp_of_the_wrong_shape_or_count_is_a_located_error():
    x = flowml.tensor("x", "f64[N]")
    y = flowml.tensor("y", "f64[N]")
    wrong = flowml.op(np.sin, lambda t: t, name="wrong", vjp=lambda g, out, a: flowml.sum(g) * flowml.ones((2,)))
    with pytest.raises(flowml.FlowGradError, match=r"the VJP of wrong returned f64\[2\] for operand 0 of type f64\[N\]"):
        flowml.grad(flowml.sum(wrong(x)), x)
    pair = flowml.op(np.add, lambda a, b: a, name="pair", vjp=lambda g, out, a, b: g)
    with pytest.raises(flowml.FlowGradError, match="returned one value for 2 operands"):
        flowml.grad(flowml.sum(pair(x, y)), x)


def test_forward_mode_rop_and_hessian_vector():
    sin = _sin_op()
    x = flowml.tensor("x", "f64[N]")
    v = flowml.tensor("v", "f64[N]")
    cost = flowml.sum(sin(x) ** 2)
    jv = flowml.rop(sin(x) * x, x, v)
    hv = flowml.hessian_vector(cost, x, v)
    X, V = np.array([0.3, -1.2, 2.0]), np.array([1.0, 0.5, -2.0])
    for backend in BACKENDS[:2]:
        got_jv, got_hv = flowml.function([x, v], [jv, hv], backend=backend)(X, V)
        np.testing.assert_allclose(got_jv, (np.cos(X) * X + np.sin(X)) * V, rtol=1e-13)
        np.testing.assert_allclose(got_hv, 2 * np.cos(2 * X) * V, rtol=1e-13)
    # finite differences of the function itself along V
    eps = 1e-6
    f = flowml.function([x], sin(x) * x)
    np.testing.assert_allclose((f(X + eps * V) - f(X - eps * V)) / (2 * eps), got_jv, rtol=1e-7)


def test_forward_mode_through_an_op_without_a_jvp_is_a_located_error():
    x = flowml.tensor("x", "f64[N]")
    only_vjp = flowml.op(np.exp, lambda t: t, name="only_vjp", vjp=lambda g, out, a: g * out)
    y = only_vjp(x)
    with pytest.raises(flowml.FlowGradError, match="only through only_vjp") as e:
        flowml.rop(y, x, flowml.ones_like(x))
    assert any("without jvp=" in n for n in e.value.notes)
    # hessian_vector is forward over reverse: its VJP uses `out`, whose tangent is needed
    with pytest.raises(flowml.FlowGradError, match="only_vjp has no forward-mode derivative") as e:
        flowml.hessian_vector(flowml.sum(y), x, flowml.ones_like(x))
    assert e.value.loc.line == _line_of("y = only_vjp(x)")
    # an op with a JVP but no VJP: forward mode works, reverse mode is refused
    only_jvp = flowml.op(np.exp, lambda t: t, name="only_jvp", jvp=lambda ts, out, a: ts[0] * out)
    jv = flowml.rop(only_jvp(x), x, flowml.ones_like(x))
    np.testing.assert_allclose(flowml.function([x], jv)(np.zeros(2)), [1.0, 1.0])
    with pytest.raises(flowml.FlowGradError, match="only through only_jvp"):
        flowml.grad(flowml.sum(only_jvp(x)), x)


# ---------------------------------------------------------------- run-time checks

@pytest.mark.parametrize("backend", BACKENDS)
def test_a_result_that_does_not_fit_its_type_is_a_located_runtime_error(backend):
    x = flowml.tensor("x", "f64[N]")
    as_f32 = flowml.op(lambda a: a.astype(np.float32), lambda t: t, name="as_f32")
    shorter = flowml.op(lambda a: a[1:], lambda t: t, name="shorter")
    f = flowml.function([x], as_f32(x) * 2, backend=backend)
    with pytest.raises(flowml.FlowRuntimeError) as e:
        f(np.ones(3))
    assert e.value.message == ("as_f32 failed: returned float32 of shape (3,), but its declared type is f64[N] "
                               "with N=3; convert it (.astype(np.float64))")
    assert e.value.loc.line == _line_of("f = flowml.function([x], as_f32(x) * 2")
    g = flowml.function([x], shorter(x), backend=backend)
    with pytest.raises(flowml.FlowRuntimeError, match=r"shorter failed: returned float64 of shape \(2,\), "
                                                      r"but its declared type is f64\[N\] with N=3$"):
        g(np.ones(3))


def test_an_exception_in_the_function_is_a_located_runtime_error():
    def broken(a):
        return a / 0 if a.size > 100 else {}["missing"]  # the line the error points at
    x = flowml.tensor("x", "f64[N]")
    f = flowml.function([x], flowml.op(broken, lambda t: t)(x))
    with pytest.raises(flowml.FlowRuntimeError) as e:
        f(np.ones(2))
    assert e.value.message == f"broken failed: KeyError: 'missing' (at {HERE}:{_line_of('the line the error')})"
    assert e.value.loc.line == _line_of("f = flowml.function([x], flowml.op(broken")


def test_the_function_gets_read_only_operands_and_its_aliases_are_copied():
    def scribble(a):
        a[0] = 1.0
        return a
    x = flowml.tensor("x", "f64[N]")
    f = flowml.function([x], flowml.op(scribble, lambda t: t)(x))
    with pytest.raises(flowml.FlowRuntimeError, match="scribble failed: ValueError: assignment destination is "
                                                      "read-only"):
        f(np.zeros(2))
    same = flowml.op(lambda a: a, lambda t: t, name="same")
    for backend in ("reference", "llvm"):
        g = flowml.function([x], [same(x * 2) + 1, x * 3], backend=backend)
        X = np.arange(4.0)
        for _ in range(2):
            out = g(X)
            np.testing.assert_array_equal(out[0], X * 2 + 1)
            np.testing.assert_array_equal(out[1], X * 3)


def test_build_time_errors_are_located():
    x = flowml.tensor("x", "f64[N]")
    with pytest.raises(flowml.FlowTypeError, match="'sin' is the name of a built-in op; pass another name="):
        flowml.op(np.sin, lambda t: t)
    with pytest.raises(flowml.FlowTypeError, match="has no usable name"):
        flowml.op(lambda a: a, lambda t: t, name=None)
    with pytest.raises(flowml.FlowTypeError, match="a type is written as a string"):
        flowml.op(np.tanh, 3, name="th")
    picky = flowml.op(np.sort, lambda t: t if t.ndim == 2 else 1 / 0, name="picky")
    with pytest.raises(flowml.FlowTypeError) as e:
        picky(x)  # the rule raises
    assert e.value.message == "the type rule of picky fails on f64[N]: ZeroDivisionError: division by zero"
    assert e.value.loc.line == _line_of("picky(x)  # the rule raises")
    junk = flowml.op(np.sort, lambda t: 42, name="junk")
    with pytest.raises(flowml.FlowTypeError, match="a type is written as a string"):
        junk(x)
    with pytest.raises(flowml.FlowTypeError, match="keyword argument 'axis' must be a static value"):
        flowml.op(np.cumsum, lambda t, axis: t, name="cs")(x, axis=x)


def test_an_unknown_dim_in_a_fixed_type_is_an_error_when_compiling():
    x = flowml.tensor("x", "f64[N]")
    f = flowml.op(np.sort, "f64[K]", name="sorted_k")
    with pytest.raises(flowml.FlowNameError, match="uses the dim K, but none of its inputs"):
        flowml.function([x], f(x))


# ---------------------------------------------------------------- .flow programs

PROGRAM = """
input x : f64[N]
param w : f64[N2] = ones
cost = sum(w[0] * softish(x) ** 2)
fn f(x) -> softish(x), grad(cost, x), grad(cost, w)
"""


def _softish():
    """log(1 + exp(x)) by numpy, with its derivative by flowml (sigmoid)."""
    return flowml.op(lambda a: np.logaddexp(0, a), lambda t: t, name="softish",
                     vjp=lambda g, out, a: g * flowml.sigmoid(a))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_flow_program_calls_the_ops_the_host_passes(backend):
    src = PROGRAM.replace("N2", "1")
    m = flowml.loads(src, ops={"softish": _softish()}, backend=backend)
    X = np.array([-3.0, 0.0, 2.5])
    y, gx, gw = m.f(X)
    np.testing.assert_allclose(y, np.logaddexp(0, X), rtol=1e-14)
    sig = 1 / (1 + np.exp(-X))
    np.testing.assert_allclose(gx, 2 * y * sig, rtol=1e-13)
    np.testing.assert_allclose(gw, [np.sum(y ** 2)], rtol=1e-13)


def test_load_takes_ops_and_verify_grad_checks_them(tmp_path):
    path = tmp_path / "model.flow"
    path.write_text(PROGRAM.replace("N2", "1"))
    m = flowml.load(path, ops={"softish": _softish()})
    assert m.f(np.zeros(2))[0].tolist() == [np.log(2)] * 2
    src = "input x : f64[N]\nparam w : f64 = 2\nfn f(x) -> sum(w * softish(x * w))\n"
    assert flowml.verify_grad(src, {"x": [0.5, -1.0]}, ops={"softish": _softish()}).passed


def test_without_ops_a_program_cannot_call_code():
    with pytest.raises(flowml.FlowNameError) as e:
        flowml.loads(PROGRAM.replace("N2", "1"))
    assert e.value.message == "unknown function 'softish'; did you mean 'softplus'?"  # as without flowml.op
    assert (e.value.loc.line, e.value.loc.col) == (4, 19)


def test_ops_that_are_not_wrapped_or_shadow_names_are_refused():
    src = PROGRAM.replace("N2", "1")
    with pytest.raises(flowml.FlowTypeError, match=r"ops\['softish'\] is .*not an op: wrap the function with "
                                                   r"flowml.op\(fn, out_type\) first"):
        flowml.loads(src, ops={"softish": np.sin})
    with pytest.raises(flowml.FlowNameError, match="ops=: 'exp' is the name of a built-in"):
        flowml.loads(src, ops={"exp": _softish(), "softish": _softish()})
    with pytest.raises(flowml.FlowNameError, match="'softish' is the name of an op the host passes in"):
        flowml.loads("input x : f64\ndef softish(a) = a\nfn f(x) -> softish(x)", ops={"softish": _softish()})
    with pytest.raises(flowml.FlowNameError, match="'softish' is a function; call it"):
        flowml.loads("input x : f64\nfn f(x) -> softish + x", ops={"softish": _softish()})
    with pytest.raises(flowml.FlowNameError, match="did you mean 'softish'"):
        flowml.loads("input x : f64\nfn f(x) -> sofish(x)", ops={"softish": _softish()})


def test_flow_keyword_arguments_are_static_and_numbers_become_constants():
    cumsum = flowml.op(np.cumsum, lambda t, axis: t, name="running_sum")
    add = flowml.op(np.add, lambda a, b: a, name="plus")
    m = flowml.loads("input x : f64[N, 2]\nfn f(x) -> plus(running_sum(x, axis=1), 2.5)",
                     ops={"running_sum": cumsum, "plus": add})
    X = np.arange(6.0).reshape(3, 2)
    np.testing.assert_array_equal(m.f(X), np.cumsum(X, axis=1) + 2.5)
    with pytest.raises(flowml.FlowTypeError, match="keyword argument 'axis' must be a constant"):
        flowml.loads("input x : f64[N, 2]\nfn f(x) -> running_sum(x, axis=x)", ops={"running_sum": cumsum})


# ---------------------------------------------------------------- loops

LOOP = """
input xs : f64[T, 3]
param w : f64[3] = uniform(0.5, 1.5)
def step(h, x) = s(h * w + x)
hs = scan(step, zeros((3,)), xs)
def step2(h) = s(h) * 2
fn f(xs) -> hs, grad(sum(hs[-1] ** 2), w), iterate(step2, xs[0], 4)
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_wrapped_op_inside_scan_and_iterate(backend):
    m = flowml.loads(LOOP, ops={"s": _sin_op()}, backend=backend, seed=1)
    xs = np.random.default_rng(2).normal(size=(5, 3))
    hs, gw, it = m.f(xs)
    w = m.params["w"]
    h, want = np.zeros(3), []
    for x in xs:
        h = np.sin(h * w + x)
        want.append(h)
    np.testing.assert_allclose(hs, want, rtol=1e-13)
    h = xs[0]
    for _ in range(4):
        h = np.sin(h) * 2
    np.testing.assert_allclose(it, h, rtol=1e-13)
    eps, fd = 1e-6, []
    for i in range(3):
        e = np.zeros(3)
        e[i] = eps
        m.params["w"] = w + e
        plus = np.sum(m.f(xs)[0][-1] ** 2)
        m.params["w"] = w - e
        minus = np.sum(m.f(xs)[0][-1] ** 2)
        fd.append((plus - minus) / (2 * eps))
    np.testing.assert_allclose(gw, fd, rtol=1e-6)


def test_loop_gradients_through_a_wrapped_op_pass_verify_grad():
    src = "input xs : f64[T, 2]\nparam w : f64[2] = ones\ndef step(h, x) = s(h * w + x)\n" \
          "fn f(xs) -> sum(scan(step, zeros((2,)), xs)[-1])\n"
    assert flowml.verify_grad(src, {"xs": np.random.default_rng(3).normal(size=(4, 2))}, ops={"s": _sin_op()}).passed


# ---------------------------------------------------------------- threads

@pytest.mark.parametrize("backend", ["reference", "llvm", opencl_param()])
def test_threads_calling_a_wrapped_op_get_the_serial_results(backend):
    calls = 100 if backend != "opencl" else 20
    m = flowml.loads("input x : f64[N, 4]\nparam w : f64[4] = normal(0, 1)\n"
                     "fn f(x) -> s(x @ w) * 2, sum(s(x) * w)", ops={"s": _sin_op()}, backend=backend, seed=4)
    inputs = [[np.random.default_rng(100 * t + i).normal(size=(2 + (t + i) % 3, 4)) for i in range(calls)]
              for t in range(4)]
    serial = [[m.f(x) for x in xs] for xs in inputs]
    results, errors = [None] * 4, []
    barrier = threading.Barrier(4)

    def work(t):
        try:
            barrier.wait()
            results[t] = [m.f(x) for x in inputs[t]]
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)
    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch inside a call (and inside the host step)
    try:
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    finally:
        sys.setswitchinterval(old)
    assert not errors, errors
    for t in range(4):
        for got, want in zip(results[t], serial[t]):
            for a, b in zip(got, want):
                np.testing.assert_array_equal(a, b)


def test_onnx_export_refuses_a_wrapped_op():
    x = flowml.tensor("x", "f64[3]")
    f = flowml.function([x], _sin_op()(x))
    with pytest.raises(flowml.FlowError, match="op 'np_sin' has no ONNX converter"):
        f.to_onnx()
