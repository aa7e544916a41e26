"""The Python API: loading .flow models, calling their functions, their params, and the
Theano-style graph builder (`tensor`, `param`, `grad`, `function`), plus the logistic
regression the project is measured by."""

from __future__ import annotations

import os
import re
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import flowml
from flowml import FlowCallError, FlowError, FlowGradError, FlowNameError, FlowRuntimeError, FlowTypeError
from flowml.ir import ops as P
from flowml.program import Model

from helpers import opencl_param

ROOT = Path(__file__).resolve().parent.parent
LOGREG = ROOT / "examples" / "logreg.flow"


@pytest.fixture(autouse=True)
def fresh_default_graph():
    """Every test starts (and leaves) the builder with an empty default graph."""
    flowml.reset_default_graph()
    yield
    flowml.reset_default_graph()


SMALL = """\
input x : f64[N, 3]
input y : f64[N]
param w : f64[3] = normal(0, 1)
param b : f64 = 0.5

z = x @ w + b
cost = mean((z - y) ** 2)
gw, gb = grad(cost, w, b)

fn predict(x) -> z
fn both(x, y) -> z, cost
fn step(x, y) -> cost {
    w <- w - 0.1 * gw
    b <- b - 0.1 * gb
}
fn nudge() { b <- b + 1 }
"""


@pytest.fixture
def small():
    return flowml.loads(SMALL, backend="reference", file="small.flow")


def data(n=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 3)), rng.standard_normal(n)


# ---------------------------------------------------------------- loading


def test_load_and_loads_give_the_same_model():
    a = flowml.load(LOGREG, backend="reference")
    b = flowml.loads(LOGREG.read_text(), backend="reference", file=str(LOGREG))
    c = flowml.loads(LOGREG.read_bytes(), backend="reference")
    assert isinstance(a, flowml.Model)
    assert list(a.functions) == list(b.functions) == list(c.functions) == ["train", "predict"]
    for m in (b, c):
        np.testing.assert_array_equal(a.params["w"], m.params["w"])
    assert a.program.file == str(LOGREG)
    assert c.program.file == "<string>"


def test_load_accepts_a_path_object_and_a_string():
    assert flowml.load(str(LOGREG)).train.signature == flowml.load(LOGREG).train.signature


def test_load_a_missing_file():
    with pytest.raises(FlowError, match=r"nope\.flow: cannot read the file \(No such file or directory\)"):
        flowml.load(ROOT / "nope.flow")


def test_unknown_backend():
    from flowml.backends import backend_names
    with pytest.raises(FlowError, match=r"^unknown backend 'nope'; available: (.*, )?reference(, .*)?$") as info:
        flowml.loads(SMALL, backend="nope")
    assert str(info.value) == f"unknown backend 'nope'; available: {', '.join(backend_names())}"


def test_build_errors_come_from_loads():
    with pytest.raises(FlowNameError, match=r"^m\.flow:2:5: unknown name 'q'"):
        flowml.loads("input x : f64\ny = q\n", file="m.flow")


# ---------------------------------------------------------------- calling functions


def test_functions_are_attributes(small):
    assert set(small.functions) == {"predict", "both", "step", "nudge"}
    assert small.predict is small.functions["predict"]
    assert isinstance(small.predict, flowml.Function)
    assert {"predict", "both", "step", "nudge"} <= set(dir(small))


def test_call_by_position_and_by_keyword(small):
    x, y = data()
    w, b = small.params["w"], small.params["b"]
    expected = x @ w + b
    np.testing.assert_allclose(small.predict(x), expected)
    np.testing.assert_allclose(small.predict(x=x), expected)
    z1, c1 = small.both(x, y)
    z2, c2 = small.both(y=y, x=x)
    z3, c3 = small.both(x, y=y)
    for z, c in ((z1, c1), (z2, c2), (z3, c3)):
        np.testing.assert_allclose(z, expected)
        np.testing.assert_allclose(c, np.mean((expected - y) ** 2))


def test_one_output_is_an_array_several_are_a_tuple(small):
    x, y = data()
    out = small.predict(x)
    assert isinstance(out, np.ndarray) and out.shape == (5,) and out.dtype == np.float64
    both = small.both(x, y)
    assert isinstance(both, tuple) and len(both) == 2
    assert all(isinstance(o, np.ndarray) for o in both)
    cost = small.step(x, y)
    assert isinstance(cost, np.ndarray) and cost.shape == () and cost.dtype == np.float64


def test_a_function_without_outputs_returns_none(small):
    assert small.nudge() is None
    assert small.params["b"] == 1.5


def test_outputs_are_fresh_arrays(small):
    x, _ = data()
    out = small.predict(x)
    out[:] = 0
    assert not np.all(small.predict(x) == 0)


def test_updates_are_simultaneous_and_persist(small):
    x, y = data()
    w0, b0 = small.params["w"], small.params["b"]
    z = x @ w0 + b0
    gw = 2 * x.T @ (z - y) / len(y)
    gb = 2 * np.mean(z - y)
    cost = small.step(x, y)
    np.testing.assert_allclose(cost, np.mean((z - y) ** 2))  # the output sees the old values
    np.testing.assert_allclose(small.params["w"], w0 - 0.1 * gw)
    np.testing.assert_allclose(small.params["b"], b0 - 0.1 * gb)
    costs = [float(small.step(x, y)) for _ in range(20)]
    assert costs == sorted(costs, reverse=True)


def test_the_caller_arrays_are_not_modified(small):
    x, y = data()
    x0, y0 = x.copy(), y.copy()
    small.step(x, y)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(y, y0)


def test_signature_and_ir(small):
    assert small.predict.signature == "fn predict(x: f64[N, 3]) -> (z: f64[N])"
    assert small.both.signature == "fn both(x: f64[N, 3], y: f64[N]) -> (z: f64[N], cost: f64)"
    assert small.step.signature == "fn step(x: f64[N, 3], y: f64[N]) -> (cost: f64)  updates w, b"
    assert small.nudge.signature == "fn nudge() -> ()  updates b"
    assert small.predict.input_names == ["x"]
    assert small.both.output_names == ["z", "cost"]
    ir = small.predict.ir().splitlines()
    assert ir[0] == "fn predict(x: f64[N, 3]) {"
    assert ir[1] == "  %0 = input x : f64[N, 3]  # small.flow:1:1 (x)"
    assert "  %3 = matmul %0, %1 : f64[N]  # small.flow:6:5" in ir
    assert ir[-2] == "  return %4 (z)"
    assert ir[-1] == "}"
    step = small.step.ir()
    assert "update w <- %" in step and "update b <- %" in step
    assert small.predict.dot().startswith('digraph "predict" {')
    assert "fn step(x: f64[N, 3], y: f64[N]) -> (cost: f64)  updates w, b" in repr(small)
    assert repr(small.predict) == "<flowml function fn predict(x: f64[N, 3]) -> (z: f64[N])>"


# ---------------------------------------------------------------- params


def test_params_get_returns_a_copy(small):
    w = small.params["w"]
    w[:] = 123.0
    assert not np.any(small.params["w"] == 123.0)
    assert small.params["b"].shape == () and small.params["b"] == 0.5


def test_params_behave_like_a_dict(small):
    assert list(small.params) == ["w", "b"] == small.params.keys()
    assert len(small.params) == 2
    assert "w" in small.params and "z" not in small.params
    d = small.params.to_dict()
    assert set(d) == {"w", "b"} and d["w"].shape == (3,)
    assert [k for k, _ in small.params.items()] == ["w", "b"]
    assert repr(small.params) == "Params(w: f64[3], b: f64)"


def test_params_set_checks_shape_and_dtype(small):
    small.params["w"] = [1, 2, 3]  # ints into f64: exact, accepted
    np.testing.assert_array_equal(small.params["w"], [1.0, 2.0, 3.0])
    assert small.params["w"].dtype == np.float64
    small.params["b"] = 2
    assert small.params["b"] == 2.0 and small.params["b"].dtype == np.float64
    with pytest.raises(FlowCallError, match=r"param 'w' expects f64\[3\] \(declared at small\.flow:3:1\), "
                                            r"got an array of dtype float64 and shape \(4,\): axis 0 must be 3"):
        small.params["w"] = np.zeros(4)
    with pytest.raises(FlowCallError, match=r"param 'w' expects f64\[3\] \(rank 1\)"):
        small.params["w"] = np.zeros((3, 1))
    with pytest.raises(FlowCallError, match="not numeric"):
        small.params["w"] = "abc"
    np.testing.assert_array_equal(small.params["w"], [1.0, 2.0, 3.0])  # failed sets changed nothing


def test_params_set_refuses_a_downcast():
    m = flowml.loads("input x : f64\nparam q : f32[2] = 0\nfn f(x) -> q\n")
    m.params["q"] = np.array([1.5, 2.5], np.float32)
    m.params["q"] = [0.5, 1.5]  # python floats convert like literals
    with pytest.raises(FlowCallError, match=r"param 'q' expects f32\[2\].*\.astype\(np\.float32\)"):
        m.params["q"] = np.array([1.0, 2.0])
    assert m.params["q"].dtype == np.float32


def test_params_set_is_seen_by_the_functions(small):
    small.params["w"] = np.zeros(3)
    small.params["b"] = 7.0
    np.testing.assert_array_equal(small.predict(np.ones((2, 3))), [7.0, 7.0])


def test_unknown_param_name(small):
    with pytest.raises(FlowNameError, match=r"the model has no param 'ww'; did you mean 'w'\? \(params: w, b\)"):
        small.params["ww"]
    with pytest.raises(FlowNameError, match="the model has no param 'bias'"):
        small.params["bias"] = 1.0
    with pytest.raises(FlowNameError):
        small.params.update({"w": np.zeros(3), "nope": 1})


def test_save_and_load_params(tmp_path, small):
    path = tmp_path / "p.npz"
    small.params["w"] = [1.0, 2.0, 3.0]
    small.save_params(str(path))
    with np.load(path, allow_pickle=False) as f:
        assert sorted(f.files) == ["b", "w"]
        np.testing.assert_array_equal(f["w"], [1.0, 2.0, 3.0])
        assert f["b"].shape == () and f["b"] == 0.5
    other = flowml.loads(SMALL, file="small.flow", seed=99)
    assert not np.array_equal(other.params["w"], small.params["w"])
    other.load_params(str(path))
    np.testing.assert_array_equal(other.params["w"], small.params["w"])
    np.testing.assert_array_equal(other.params["b"], small.params["b"])
    assert not [p for p in os.listdir(tmp_path) if p != "p.npz"], "a temporary file was left behind"


def test_save_params_replaces_atomically(tmp_path, small, monkeypatch):
    """A failure while writing leaves the old file whole, and no temporary file behind."""
    path = tmp_path / "p.npz"
    small.save_params(str(path))
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    small.params["b"] = 42.0
    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        small.save_params(str(path))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["p.npz"]
    small.save_params(str(path))
    with np.load(path) as f:
        assert f["b"] == 42.0


def test_save_params_to_an_unwritable_place_is_a_flow_error(tmp_path, small):
    with pytest.raises(FlowError, match="cannot write"):
        small.save_params(str(tmp_path))  # a directory


def test_load_params_errors(tmp_path, small):
    w0 = small.params["w"]
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04 this is not a zip file")
    with pytest.raises(FlowError, match=r"corrupt\.npz: not a readable \.npz file"):
        small.load_params(str(corrupt))
    text = tmp_path / "text.npz"
    text.write_text("hello")
    with pytest.raises(FlowError, match=r"text\.npz: not a readable \.npz file"):
        small.load_params(str(text))
    with pytest.raises(FlowError, match=r"missing\.npz: no such file"):
        small.load_params(str(tmp_path / "missing.npz"))
    unknown = tmp_path / "unknown.npz"
    np.savez(unknown, w=np.zeros(3), q=np.zeros(2))
    with pytest.raises(FlowError, match=r"unknown\.npz: has arrays for unknown params q \(params: w, b\)"):
        small.load_params(str(unknown))
    np.testing.assert_array_equal(small.params["w"], w0)


def test_load_params_never_unpickles(tmp_path, small):
    path = tmp_path / "evil.npz"
    np.savez(path, w=np.array([object(), object(), object()]))
    with pytest.raises(FlowError, match="not a readable .npz file"):
        small.load_params(str(path))


def test_load_params_is_all_or_nothing(tmp_path, small):
    """A file with a good `w` and a bad `b` changes neither."""
    w0, b0 = small.params["w"], small.params["b"]
    path = tmp_path / "half.npz"
    np.savez(path, w=np.zeros(3), b=np.zeros(2))
    with pytest.raises(FlowCallError, match=r"param 'b' expects f64"):
        small.load_params(str(path))
    np.testing.assert_array_equal(small.params["w"], w0)
    np.testing.assert_array_equal(small.params["b"], b0)


def test_load_params_may_hold_a_subset(tmp_path, small):
    path = tmp_path / "w.npz"
    np.savez(path, w=np.arange(3.0))
    small.load_params(str(path))
    np.testing.assert_array_equal(small.params["w"], [0.0, 1.0, 2.0])
    assert small.params["b"] == 0.5


def test_a_saved_file_is_a_plain_zip_of_npy(tmp_path, small):
    path = tmp_path / "p.npz"
    small.save_params(str(path))
    with zipfile.ZipFile(path) as z:
        assert sorted(z.namelist()) == ["b.npy", "w.npy"]


# ---------------------------------------------------------------- seeded initializers

SEEDED = """\
input x : f64
param a : f64[50] = normal(0, 1)
param c : f64[4, 5] = uniform(-2, 3)
param s : f64[1000] = normal(1, 0.01)
param z : f64[3] = zeros
param o : f32[3] = ones
param k : f64[2] = 7
fn f(x) -> x
"""


def test_same_seed_same_params():
    m1, m2 = flowml.loads(SEEDED, seed=5), flowml.loads(SEEDED, seed=5)
    for name in m1.params:
        np.testing.assert_array_equal(m1.params[name], m2.params[name])


def test_different_seed_different_draws():
    m1, m2 = flowml.loads(SEEDED, seed=5), flowml.loads(SEEDED, seed=6)
    for name in ("a", "c", "s"):
        assert not np.array_equal(m1.params[name], m2.params[name])
    for name in ("z", "o", "k"):  # constant initializers don't depend on the seed
        np.testing.assert_array_equal(m1.params[name], m2.params[name])


def test_different_params_get_different_streams():
    m = flowml.loads("input x : f64\nparam p : f64[8] = normal(0, 1)\nparam q : f64[8] = normal(0, 1)\nfn f(x) -> x\n")
    assert not np.array_equal(m.params["p"], m.params["q"])


def test_the_seed_statement_is_the_default_seed():
    with_stmt = flowml.loads("seed 5\n" + SEEDED)
    np.testing.assert_array_equal(with_stmt.params["a"], flowml.loads(SEEDED, seed=5).params["a"])
    assert not np.array_equal(with_stmt.params["a"], flowml.loads(SEEDED).params["a"])
    # an explicit seed= wins over the statement
    np.testing.assert_array_equal(flowml.loads("seed 5\n" + SEEDED, seed=9).params["a"],
                                  flowml.loads(SEEDED, seed=9).params["a"])


def test_adding_or_moving_a_param_leaves_the_others_unchanged():
    base = flowml.loads(SEEDED, seed=3)
    added = flowml.loads(SEEDED.replace("param a :", "param new : f64[100] = normal(0, 1)\nparam a :"), seed=3)
    lines = SEEDED.splitlines()
    moved = flowml.loads("\n".join([lines[0]] + lines[1:7][::-1] + lines[7:]) + "\n", seed=3)
    for m in (added, moved):
        for name in base.params:
            np.testing.assert_array_equal(m.params[name], base.params[name])


def test_initializers_draw_what_they_say():
    m = flowml.loads(SEEDED, seed=1)
    c = m.params["c"]
    assert c.shape == (4, 5) and c.min() >= -2 and c.max() < 3
    s = m.params["s"]
    assert abs(s.mean() - 1) < 0.005 and 0.008 < s.std() < 0.012
    np.testing.assert_array_equal(m.params["z"], np.zeros(3))
    assert m.params["o"].dtype == np.float32
    np.testing.assert_array_equal(m.params["o"], np.ones(3))
    np.testing.assert_array_equal(m.params["k"], [7.0, 7.0])


# ---------------------------------------------------------------- the lazy conditional


LAZY = """\
input v : f64[3]
input i : i64
input t : f64
fn pick(v, i) -> if i < 3 then v[i] else -1.0
fn safe_log(t) -> if t > 0 then log(t) else 0.0
"""


def test_the_untaken_branch_is_not_computed():
    """v[7] would fail at run time (index out of bounds): `if` never evaluates it."""
    m = flowml.loads(LAZY, file="lazy.flow")
    assert m.pick(np.array([10.0, 20.0, 30.0]), 2) == 30.0
    assert m.pick(np.array([10.0, 20.0, 30.0]), 7) == -1.0
    eager = flowml.loads("input v : f64[3]\ninput i : i64\nfn pick(v, i) -> where(i < 3, v[i], -1.0)\n")
    with pytest.raises(FlowRuntimeError, match="index i = 7 is out of range"):
        eager.pick(np.array([10.0, 20.0, 30.0]), 7)


def test_the_untaken_branch_is_not_computed_even_when_it_would_only_give_nan(monkeypatch):
    """log(-1) is NaN without raising; count the calls of log's implementation to see that the
    else-branch of `if t > 0` keeps it from running."""
    m = flowml.loads(LAZY, file="lazy.flow")
    calls = []
    impl = P.log.impl
    monkeypatch.setattr(P.log, "impl", lambda *a, **k: calls.append(a) or impl(*a, **k))
    assert m.safe_log(-1.0) == 0.0
    assert calls == []
    assert m.safe_log(np.e) == pytest.approx(1.0)
    assert len(calls) == 1


def test_the_lazy_conditional_in_the_builder():
    v = flowml.tensor("v", "f64[3]")
    i = flowml.tensor("i", "i64")
    f = flowml.function([v, i], flowml.ifelse(i < 3, v[i], -1.0))
    assert f(np.array([1.0, 2.0, 3.0]), 0) == 1.0
    assert f(np.array([1.0, 2.0, 3.0]), 9) == -1.0


# ---------------------------------------------------------------- the Theano-style builder


def test_builder_linear_regression():
    x = flowml.tensor("x", "f64[N, 3]")
    y = flowml.tensor("y", "f64[N]")
    w = flowml.param("w", np.zeros(3))
    cost = flowml.mean((x @ w - y) ** 2)
    gw = flowml.grad(cost, w)
    assert isinstance(gw, flowml.Var)
    train = flowml.function([x, y], cost, updates={w: w - 0.1 * gw})
    predict = flowml.function([x], x @ w)
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((50, 3))
    true_w = np.array([1.0, -2.0, 0.5])
    ys = xs @ true_w
    for _ in range(300):
        cost_value = train(xs, ys)
    assert isinstance(cost_value, np.ndarray) and cost_value.shape == ()
    assert cost_value < 1e-10
    np.testing.assert_allclose(flowml.get_value(w), true_w, atol=1e-5)
    np.testing.assert_allclose(predict(xs), ys, atol=1e-4)


def test_builder_types_and_names():
    x = flowml.tensor("x", "f64[N, 3]")
    assert str(x.type) == "f64[N, 3]" and x.name == "x"
    w = flowml.param("w", np.zeros((3, 2), np.float32))
    assert str(w.type) == "f32[3, 2]"
    k = flowml.param("k", np.arange(3, dtype=np.uint8))
    assert str(k.type) == "i64[3]"  # integer values become i64
    t = flowml.param("t", type="f64[2, 2]", init=lambda rng: rng.normal(size=(2, 2)))
    assert str(t.type) == "f64[2, 2]"
    assert flowml.shared is flowml.param


def test_function_outputs_array_or_tuple():
    x = flowml.tensor("x", "f64[N]")
    single = flowml.function([x], x * 2)
    one_in_list = flowml.function([x], [x * 2])
    two = flowml.function([x], [x * 2, flowml.sum(x)])
    nothing = flowml.function([x], [])
    a = np.arange(3.0)
    assert isinstance(single(a), np.ndarray)
    assert isinstance(one_in_list(a), tuple) and len(one_in_list(a)) == 1
    out = two(a)
    assert isinstance(out, tuple) and len(out) == 2 and out[1] == 3.0
    assert nothing(a) is None


def test_grad_of_a_list_is_a_list():
    x = flowml.tensor("x", "f64[N]")
    a = flowml.param("a", 2.0)
    b = flowml.param("b", 3.0)
    cost = flowml.sum(a * x + b)
    grads = flowml.grad(cost, [a, b])
    assert isinstance(grads, list) and len(grads) == 2
    ga, gb = flowml.function([x], grads)(np.array([1.0, 2.0, 3.0]))
    assert (ga, gb) == (6.0, 3.0)


def test_two_functions_share_params():
    """Theano's shared variables: functions compiled from one graph see each other's updates."""
    x = flowml.tensor("x", "f64")
    count = flowml.param("count", 0.0)
    inc = flowml.function([x], count, updates={count: count + x})
    read = flowml.function([], count)
    assert read() == 0.0
    assert inc(2.0) == 0.0  # outputs see the value before the update
    assert read() == 2.0
    inc(3.0)
    assert read() == 5.0
    assert flowml.get_value(count) == 5.0
    flowml.set_value(count, 10.0)
    assert read() == 10.0
    assert inc(1.0) == 10.0 and flowml.get_value(count) == 11.0
    # a function compiled later still shares the state
    assert flowml.function([], count * 2)() == 22.0


def _trainer(backends):
    """y = 3 x fitted by w on one backend; the same graph's read-out compiled on the others."""
    x = flowml.tensor("x", "f64[N]")
    w = flowml.param("w", 0.0)
    cost = flowml.mean((w * x - 3 * x) ** 2)
    train = flowml.function([x], cost, updates={w: w - 0.05 * flowml.grad(cost, w)}, backend=backends[0])
    reads = [flowml.function([x], w * x, backend=b, name=f"read_{b}") for b in backends]
    return w, train, reads


@pytest.mark.parametrize("other", ["llvm", opencl_param()])
def test_params_are_shared_across_backends(other):
    """One state per graph: an update on one backend is what get_value and every other
    backend's functions see, and set_value reaches all of them."""
    w, train, (read_ref, read_other) = _trainer(["reference", other])
    x = np.array([1.0, 2.0])
    for _ in range(3):
        train(x)
    trained = flowml.get_value(w)
    assert 0 < trained < 3
    np.testing.assert_array_equal(read_other(x), trained * x)
    np.testing.assert_array_equal(read_ref(x), trained * x)
    flowml.set_value(w, 5.0)
    np.testing.assert_array_equal(read_other(x), [5.0, 10.0])
    np.testing.assert_array_equal(read_ref(x), [5.0, 10.0])
    # an update made on the other backend comes back too
    step = flowml.function([], None, updates={w: w + 1}, backend=other, name="step")
    step()
    assert flowml.get_value(w) == 6.0
    np.testing.assert_array_equal(read_ref(x), [6.0, 12.0])
    train(x)  # the reference function trains from 6, not from its own old copy
    assert flowml.get_value(w) == pytest.approx(6 - 0.05 * 5 * (6 - 3))  # d cost/dw = 5 (w - 3)


def test_a_function_compiled_later_on_another_backend_sees_the_trained_value():
    w, train, _ = _trainer(["llvm"])
    train(np.array([1.0, 2.0]))
    trained = flowml.get_value(w)
    assert trained != 0.0
    assert flowml.function([], w, backend="reference")() == trained


def test_a_typed_init_is_drawn_in_f64_and_converted_on_every_path():
    """Like a .flow initializer: the draws are converted to the param's dtype, whether the value
    is first read by get_value or by a compiled function."""
    a = flowml.param("a", type="f32[2]", init=lambda rng: np.array([0.5, 1.5]))
    b = flowml.param("b", type="f32[2]", init=lambda rng: np.array([2.5, 3.5]))
    assert flowml.function([], b)().dtype == np.float32      # a function first
    assert flowml.get_value(a).dtype == np.float32            # get_value first
    np.testing.assert_array_equal(flowml.get_value(b), [2.5, 3.5])
    bad = flowml.param("bad", type="f32[2]", init=lambda rng: "abc")
    with pytest.raises(FlowTypeError, match=r"param 'bad': init returned str 'abc', not an array for f32\[2\]"):
        flowml.get_value(bad)


def test_get_and_set_value():
    w = flowml.param("w", np.array([1.0, 2.0]))
    got = flowml.get_value(w)
    np.testing.assert_array_equal(got, [1.0, 2.0])
    got[:] = 0  # a copy
    np.testing.assert_array_equal(flowml.get_value(w), [1.0, 2.0])
    flowml.set_value(w, [3, 4])
    np.testing.assert_array_equal(flowml.get_value(w), [3.0, 4.0])
    with pytest.raises(FlowCallError, match=r"param 'w' expects f64\[2\].*axis 0 must be 2"):
        flowml.set_value(w, np.zeros(3))
    q = flowml.param("q", np.zeros(2, np.float32))
    with pytest.raises(FlowCallError, match=r"param 'q' expects f32\[2\]"):
        flowml.set_value(q, np.zeros(2))


def test_get_and_set_value_of_something_else():
    x = flowml.tensor("x", "f64")
    with pytest.raises(FlowTypeError, match="is not a param"):
        flowml.get_value(x)
    with pytest.raises(FlowTypeError, match="is not a param"):
        flowml.set_value(x, 1.0)
    with pytest.raises(FlowTypeError, match="is not a param"):
        flowml.set_value(np.zeros(2), 1.0)


def test_reset_default_graph_forgets_everything():
    w = flowml.param("w", 1.0)
    x = flowml.tensor("x", "f64")
    flowml.function([x], x * w)
    flowml.reset_default_graph()
    w2 = flowml.param("w", 5.0)  # the name is free again
    assert flowml.get_value(w2) == 5.0
    assert flowml.default_graph() is w2.graph
    with pytest.raises(FlowTypeError, match="function\\(\\) takes Vars of the default graph"):
        flowml.function([x], x * 2)
    with pytest.raises(FlowError, match="not a param of the default graph"):
        flowml.get_value(w)
    with pytest.raises(FlowError, match="not a param of the default graph"):
        flowml.set_value(w, 2.0)


def test_builder_errors_point_at_the_users_line():
    x = flowml.tensor("x", "f64[N, 784]")
    v = flowml.tensor("v", "f64[10]")
    with pytest.raises(FlowTypeError) as info:
        x + v  # noqa: B018
    err = info.value
    assert err.message == "cannot add f64[N, 784] and f64[10]: shapes do not broadcast"
    assert err.loc.file == __file__
    with open(__file__) as f:
        lines = f.read().splitlines()
    assert "x + v" in lines[err.loc.line - 1]
    if sys.version_info >= (3, 11):  # the column of the expression, from the code's position table
        assert lines[err.loc.line - 1][err.loc.col - 1:].startswith("x + v")
        assert str(err).startswith(f"{__file__}:{err.loc.line}:{err.loc.col}: cannot add")
    else:
        assert err.loc.col == 1


@pytest.mark.skipif(sys.version_info < (3, 11), reason="column positions need Python 3.11's co_positions")
def test_builder_errors_point_at_the_call_column():
    x = flowml.tensor("x", "f64[N, 3]")
    w = flowml.param("w", np.zeros(3))
    with pytest.raises(FlowError) as info:
        y = 2 * flowml.sum(x, axis=5)  # noqa: F841
    with open(__file__) as f:
        lines = f.read().splitlines()
    at = lines[info.value.loc.line - 1][info.value.loc.col - 1:]
    assert at.startswith("flowml.sum(x, axis=5)"), at
    with pytest.raises(FlowTypeError) as info:
        f = flowml.function([x], x @ w, updates={x: x})  # noqa: F841
    at = lines[info.value.loc.line - 1][info.value.loc.col - 1:]
    assert at.startswith("flowml.function([x]"), at
    with pytest.raises(FlowTypeError) as info:
        é = [w, x + flowml.tensor("q", "f64[7]")]  # noqa: F841  (columns count characters, not UTF-8 bytes)
    at = lines[info.value.loc.line - 1][info.value.loc.col - 1:]
    assert at.startswith('x + flowml.tensor("q"'), at


def test_builder_errors():
    x = flowml.tensor("x", "f64[N, 3]")
    w = flowml.param("w", np.zeros(3))
    with pytest.raises(FlowNameError, match="'x' is already defined"):
        flowml.tensor("x", "f64")
    with pytest.raises(FlowNameError, match="'w' is already defined"):
        flowml.param("w", 1.0)
    with pytest.raises(FlowTypeError, match=r"a param needs a fixed shape, not f64\[N\]"):
        flowml.param("p", type="f64[N]", init=lambda rng: np.zeros(3))
    with pytest.raises(FlowTypeError, match="param 'p' needs a value, or a type and an init function"):
        flowml.param("p")
    with pytest.raises(FlowGradError, match=r"grad needs a scalar cost, but the matmul value has type f64\[N\]"):
        flowml.grad(x @ w, w)
    with pytest.raises(FlowTypeError, match="only params can be updated"):
        flowml.function([x], x @ w, updates={x: x})
    with pytest.raises(FlowTypeError, match=r"the update of param 'w' has type f64, but 'w' is f64\[3\]"):
        flowml.function([x], x @ w, updates={w: flowml.sum(x @ w)})
    with pytest.raises(FlowNameError, match=r"fn f uses input 'x' \(declared at .*\) but does not take it"):
        flowml.function([], x @ w)
    with pytest.raises(FlowTypeError, match="inputs must be tensors made with flowml.tensor"):
        flowml.function([w], w * 2)


def test_builder_bad_arguments_are_flow_errors():
    x = flowml.tensor("x", "f64[N, 3]")
    with pytest.raises(FlowError):
        flowml.tensor("a", "f64[N, 3")
    with pytest.raises(FlowError, match="unknown dtype 'f16'"):
        flowml.tensor("b", "f16[3]")
    with pytest.raises(FlowTypeError, match="type"):
        flowml.tensor("c", 3)
    with pytest.raises(FlowTypeError, match="function\\(\\) takes Vars of the default graph"):
        flowml.function([x], 3)
    for bad in (np.array([object()]), "abc", np.zeros(3, np.float16), np.zeros(2, complex)):
        with pytest.raises(FlowTypeError, match="param 'o'"):
            flowml.param("o", bad)


def test_builder_call_errors_are_checked_like_loaded_ones():
    x = flowml.tensor("x", "f32[N, 3]")
    f = flowml.function([x], flowml.sum(x), name="total")
    assert f(np.ones((2, 3), np.float32)) == 6.0
    with pytest.raises(FlowCallError, match=r"total\(\): input 'x' expects f32\[N, 3\] \(declared at .*test_api\.py"):
        f(np.ones((2, 3)))
    with pytest.raises(FlowCallError, match=r"total\(\) is missing input\(s\) 'x'"):
        f()
    assert f.signature == "fn total(x: f32[N, 3]) -> (out0: f32)"
    assert "%0 = input x : f32[N, 3]" in f.ir()


# ---------------------------------------------------------------- logistic regression, the done-when


def logreg_data():
    rng = np.random.RandomState(0)
    x = rng.randn(400, 784)
    y = rng.randint(0, 2, 400)
    w = rng.randn(784)
    return x, y, w


def stable_logreg_source() -> str:
    src = LOGREG.read_text()
    naive_p = "p_1        = sigmoid(x @ w + b)"
    naive_xent = "xent       = -y * log(p_1) - (1 - y) * log(1 - p_1)"
    assert naive_p in src and naive_xent in src
    src = src.replace(naive_p, "z          = x @ w + b\np_1        = sigmoid(z)")
    return src.replace(naive_xent, "xent       = y * softplus(-z) + (1 - y) * softplus(z)")


def train_theano_classic(src: str, steps: int = 10_000):
    m = flowml.loads(src + "fn cost_of(x, y) -> cost\n", backend="reference", file="logreg.flow")
    x, y, w = logreg_data()
    m.params["w"] = w
    m.params["b"] = 0.0
    for _ in range(steps):
        m.train(x, y)  # y is an int array: exact in f64, accepted
    return m, x, y


@pytest.mark.slow  # 10,000 steps: the default suite runs the first 200 (test_logistic_regression_steps_...)
def test_logistic_regression_done_when():
    """Theano's classic run, with the cross-entropy written stably: 10,000 steps of lr 0.1 end
    at cost 0.11705355 (mean xent + 0.01 * sum(w**2) at the final params) with every training
    example classified correctly."""
    m, x, y = train_theano_classic(stable_logreg_source())
    cost = float(m.cost_of(x, y))
    assert cost == pytest.approx(0.11705355, abs=1e-7)
    prediction = m.predict(x)
    assert prediction.dtype == bool
    assert np.mean(prediction == y) == 1.0
    # the cost is what it says: recompute it from the final params with numpy
    w, b = m.params["w"], m.params["b"]
    z = x @ w + b
    xent = y * np.logaddexp(0, -z) + (1 - y) * np.logaddexp(0, z)
    assert np.mean(xent) + 0.01 * np.sum(w ** 2) == pytest.approx(cost, rel=1e-12)


@pytest.mark.slow  # 10,000 steps: the default suite runs the first 200 (test_logistic_regression_steps_...)
def test_logistic_regression_naive_example_done_when():
    """examples/logreg.flow as shipped writes the cross-entropy naively, as Theano's example
    does: -y * log(p_1) - (1 - y) * log(1 - p_1). The optimizer's stability rewrites turn it
    into y * softplus(-z) + (1 - y) * softplus(z) and its gradient into sigmoid(z) - y, so the
    naive model ends exactly where the stable one does: cost 0.11705355, every example right."""
    m, x, y = train_theano_classic(LOGREG.read_text())
    cost = float(m.cost_of(x, y))
    assert cost == pytest.approx(0.11705355, abs=1e-7)
    assert np.mean(m.predict(x) == y) == 1.0
    w, b = m.params["w"], m.params["b"]
    z = x @ w + b
    xent = y * np.logaddexp(0, -z) + (1 - y) * np.logaddexp(0, z)
    assert np.mean(xent) + 0.01 * np.sum(w ** 2) == pytest.approx(cost, rel=1e-12)
    text = m.train.ir()
    assert "softplus" in text and not re.search(r"\blog\(|= log ", text)  # no log of a probability is left


def test_logistic_regression_steps_match_numpy_stable_or_naive():
    """The default suite's share of the two 10,000-step runs (marked slow): 200 steps of the
    naive example and of the stable rewrite give numpy's gradient descent on the stable
    cross-entropy (including where the naive log would saturate), params and all."""
    x, y, w = logreg_data()
    b = 0.0
    for _ in range(200):
        z = x @ w + b
        g = (1 / (1 + np.exp(-z)) - y) / len(y)  # d mean(xent) / dz
        w, b = w - 0.1 * (x.T @ g + 0.02 * w), b - 0.1 * g.sum()
    want = np.mean(y * np.logaddexp(0, -(x @ w + b)) + (1 - y) * np.logaddexp(0, x @ w + b)) + 0.01 * np.sum(w ** 2)
    for src in (stable_logreg_source(), LOGREG.read_text()):
        m, _, _ = train_theano_classic(src, steps=200)
        np.testing.assert_allclose(m.params["w"], w, rtol=1e-9, atol=1e-12)
        assert float(m.params["b"]) == pytest.approx(b, rel=1e-9, abs=1e-12)
        assert float(m.cost_of(x, y)) == pytest.approx(want, rel=1e-10)


def test_logistic_regression_naive_example_without_the_optimizer_ends_in_nan():
    """Why the rewrite matters: compiled with opt_level=0 (the graph as written), the sigmoid
    of x @ w saturates on this data (|x @ w| is about 28), 1 - p_1 is exactly 0, log(0) = -inf
    and 0 * -inf = NaN: the cost is NaN before the first step, the first step's gradient is NaN,
    and NaN params stay NaN — so the 10,000-step run ends in NaN, as it does in JAX and PyTorch."""
    program = flowml.parse_program(LOGREG.read_text() + "fn cost_of(x, y) -> cost\n", "logreg.flow")
    m = Model(program, backend="reference", opt_level=0)
    x, y, w = logreg_data()
    m.params["w"] = w
    m.params["b"] = 0.0
    assert np.isnan(float(m.cost_of(x, y)))
    for _ in range(3):
        m.train(x, y)
        assert np.isnan(m.params["w"]).all() and np.isnan(m.params["b"])
    assert np.isnan(float(m.cost_of(x, y)))
    # the optimized model is finite from the same start
    opt = flowml.loads(LOGREG.read_text() + "fn cost_of(x, y) -> cost\n", backend="reference")
    opt.params["w"], opt.params["b"] = w, 0.0
    assert np.isfinite(float(opt.cost_of(x, y)))
