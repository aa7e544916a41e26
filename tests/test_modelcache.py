"""The warm model cache (flowml/modelcache.py): a model loaded again finds its built program,
optimized graphs and (on LLVM) lowered fns, and gives the same results and the same located
errors; a new process does it without importing the parser; every option that changes the
result is part of the key; what cannot be cached is not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import flowml
from flowml import modelcache
from flowml.errors import FlowRuntimeError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOGREG = os.path.join(ROOT, "examples", "logreg.flow")
SRC = """
input x : f64[N, 3]
input i : i64[K]
param w : f64[3] = normal(0, 1)
fn f(x, i) -> (sum(exp(x @ w)), x[i] * 2.0)
fn step(x) -> sum(x @ w) {
    w <- w - 0.1 * sum(x, axis=0)
}
"""


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWML_CACHE_DIR", str(tmp_path))
    return tmp_path


def _entries(cache_dir):
    return sorted(p.name for p in (cache_dir / "models").glob("*.pkl")) if (cache_dir / "models").exists() else []


def _no_parser(monkeypatch):
    """Loading must not parse or build: both raise if called."""
    import flowml.lang.build
    import flowml.lang.parser

    def refuse(*a, **k):
        raise AssertionError("parsed although the model cache had the model")
    monkeypatch.setattr(flowml.lang.parser, "parse", refuse)
    monkeypatch.setattr(flowml.lang.build, "build", refuse)


@pytest.mark.parametrize("backend", ["reference", "llvm"])
def test_a_second_load_uses_the_cache_and_gives_the_same_results(cache_dir, monkeypatch, backend):
    x = np.random.RandomState(0).rand(5, 3)
    i = np.array([4, 0, -1])
    first = flowml.loads(SRC, backend=backend, file="m.flow", seed=3)
    want = first.f(x, i)
    assert len(_entries(cache_dir)) == 1
    with monkeypatch.context() as m:
        _no_parser(m)
        again = flowml.loads(SRC, backend=backend, file="m.flow", seed=3)
        got = again.f(x, i)
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(again.params["w"], first.params["w"])  # (the same seed, the same draws)
        # updates and a second shape binding work on the cached fns
        again.step(x)
        first.step(x)
        np.testing.assert_array_equal(again.params["w"], first.params["w"])
        np.testing.assert_array_equal(again.f(x[:2], i[1:2])[0], first.f(x[:2], i[1:2])[0])
        # the cached model is its own: a third load starts from the initial params again
        third = flowml.loads(SRC, backend=backend, file="m.flow", seed=3)
        np.testing.assert_array_equal(third.params["w"], flowml.loads(SRC, backend=backend, file="m.flow",
                                                                      seed=3).params["w"])
        assert not np.array_equal(third.params["w"], again.params["w"])
    assert len(_entries(cache_dir)) == 1


def test_a_cached_llvm_fn_reports_its_errors_located(cache_dir):
    x = np.ones((4, 3))
    first = flowml.loads(SRC, backend="llvm", file="m.flow")
    with pytest.raises(FlowRuntimeError) as want:
        first.f(x, np.array([0, 9]))
    again = flowml.loads(SRC, backend="llvm", file="m.flow")
    assert again.f._executable.host_steps() == {}
    with pytest.raises(FlowRuntimeError) as got:
        again.f(x, np.array([0, 9]))
    assert str(got.value) == str(want.value) and "m.flow:" in str(got.value) and "out of range" in str(got.value)


LOOP_SRC = """
input xs : f64[T, 3]
input i : i64
param w : f64[3] = normal(0, 1)
def step(h, x) = if sum(h) > 100 then h else tanh(h + x * w) + x[i]
hs = scan(step, w, xs)
g = grad(sum(hs), w)
fn f(xs, i) -> hs, g
"""


def test_a_cached_llvm_fn_with_a_loop_and_an_if_runs_natively_and_fails_located(cache_dir):
    xs = np.random.RandomState(1).rand(4, 3)
    first = flowml.loads(LOOP_SRC, backend="llvm", file="m.flow")
    want = first.f(xs, 1)
    with pytest.raises(FlowRuntimeError) as want_error:  # in the loop's body, on the taken side
        first.f(xs, 5)
    again = flowml.loads(LOOP_SRC, backend="llvm", file="m.flow")
    assert again.f._executable.host_steps() == {}
    for a, b in zip(again.f(xs, 1), want):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(FlowRuntimeError) as got:
        again.f(xs, 5)
    assert str(got.value) == str(want_error.value) and "m.flow:5:" in str(got.value)


def test_the_key_covers_source_file_options_and_backend(cache_dir):
    flowml.loads(SRC, backend="reference", file="m.flow")
    flowml.loads(SRC, backend="reference", file="m.flow")
    assert len(_entries(cache_dir)) == 1
    flowml.loads(SRC + "\n", backend="reference", file="m.flow")
    flowml.loads(SRC, backend="reference", file="other.flow")
    flowml.loads(SRC, backend="reference", file="m.flow", opt_level=0)
    flowml.loads(SRC, backend="reference", file="m.flow", exclude=["stabilize"])
    flowml.loads(SRC, backend="llvm", file="m.flow")
    assert len(_entries(cache_dir)) == 6
    # a different file name is in the errors: the cached model names its own file
    m = flowml.loads(SRC, backend="reference", file="other.flow")
    with pytest.raises(FlowRuntimeError, match="other.flow:"):
        m.f(np.ones((4, 3)), np.array([9]))


def test_check_mode_wrapped_ops_and_caching_off_write_nothing(cache_dir, monkeypatch):
    flowml.loads(SRC, backend="reference", check=True)
    twice = flowml.op(lambda a: a * 2, lambda t: t, name="twice")
    flowml.loads("input a : f64[3]\nfn g(a) -> twice(a)\n", backend="reference", ops={"twice": twice})
    assert _entries(cache_dir) == []
    monkeypatch.setenv("FLOWML_CACHE", "0")
    flowml.loads(SRC, backend="reference")
    assert _entries(cache_dir) == []


def test_a_corrupt_entry_is_a_miss(cache_dir):
    want = flowml.loads(SRC, backend="reference", file="m.flow").step(np.ones((2, 3)))
    (entry,) = (cache_dir / "models").glob("*.pkl")
    entry.write_bytes(entry.read_bytes()[:-10] + b"0123456789")
    got = flowml.loads(SRC, backend="reference", file="m.flow").step(np.ones((2, 3)))
    np.testing.assert_array_equal(got, want)


def test_a_new_process_loads_a_cached_model_without_the_parser(cache_dir):
    """The W6 path: a second process neither imports lark nor the builder, nor compiles."""
    script = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        import flowml
        m = flowml.load({LOGREG!r}, backend="llvm")
        x = np.random.RandomState(0).rand(7, m.params["w"].shape[0])
        y = (x[:, 0] > 0.5).astype(np.float64)
        out = m.train(x, y)
        print(json.dumps({{"lark": "lark" in sys.modules, "builder": "flowml.lang.build" in sys.modules,
                          "optimizer": "flowml.passes.pipeline" in sys.modules,
                          "lowerings": "flowml.backends.llvm.lowering" in sys.modules,
                          "out": [np.asarray(o, dtype=float).tolist() for o in out]}}))
    """)
    env = dict(os.environ, FLOWML_CACHE_DIR=str(cache_dir), PYTHONPATH=ROOT)
    runs = [json.loads(subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                                      check=True).stdout.strip().splitlines()[-1]) for _ in range(2)]
    cold, warm = runs
    assert cold["lark"] and cold["builder"]
    assert not (warm["lark"] or warm["builder"] or warm["optimizer"] or warm["lowerings"]), warm
    assert warm["out"] == cold["out"]
