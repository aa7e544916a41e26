"""The profiler (flowml/profiling.py, docs/inspect.md "Profiling"): the LLVM backend's profiling
build times each native step with clock reads compiled into it; host steps and the reference
backend are timed from Python; the call boundary is the rest of the call's wall time."""

from __future__ import annotations

import json

import numpy as np
import pytest

import flowml
from flowml.backends.llvm.profiling import ProfilingExecutable
from flowml.ir.dump import dump_nodes
from helpers import run_cli
from test_lowering_registry import _ALLOWED, PROFILING_EXTERNALS, _externals

MLP = "examples/mlp.flow"
ROW_KEYS = {"fn", "id", "node", "op", "kind", "detail", "name", "calls", "total_s", "mean_s", "share", "bytes",
            "gbps", "gflops", "source", "line"}

# a loop (one native step), a wrapped op (a host step) and a matmul
MIXED = """
input xs : f64[T, 3]
param W : f64[3, 3] = normal(0, 0.5)
def rnn(h, x) = tanh(x + h @ W)
hs = scan(rnn, zeros(3), xs)
fn f(xs) -> twice(hs) @ W, sum(hs)
"""


def _twice():
    return flowml.op(lambda a: 2 * a, lambda t: t, name="twice")


def _batch(n=20, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 64)), rng.integers(0, 10, n)


def _native_steps(fn) -> list[int]:
    """The nodes of the fn's entry points' top-level steps, as `--emit plan` lists them."""
    program = fn._executable.program
    loops = {s.node for s in program.steps if s.detail.startswith("computed by the loop")}
    return [s.node for s in program.steps if s.kind == "native" and s.node not in loops]


def test_one_row_per_native_step_and_the_call_boundary():
    model = flowml.load(MLP, backend="llvm", seed=1)
    p = model.train.profile(*_batch())
    rows = p.rows
    assert [r.kind for r in rows] == ["native"] * (len(rows) - 1) + ["boundary"]
    assert [r.node for r in rows[:-1]] == _native_steps(model.train)
    _, ids = dump_nodes(model.train.compiled.graph, list(model.train.compiled.outputs)
                       + [n for _, n in model.train.compiled.updates])
    by_op = {r.op: r for r in rows}
    gemm = by_op["gemm"]
    assert gemm.id == ids[gemm.node] and gemm.detail.startswith("BLAS dgemm") and gemm.gflops > 0
    assert gemm.source.startswith("examples/mlp.flow:") and "<-" in gemm.line
    assert by_op["matmul"].line == "h      = tanh(x @ W1 + b1)" or by_op["matmul"].line.startswith("log_p")
    first = rows[0]  # x = X / 16: reads and writes 20 x 64 f64
    assert first.name == "x" and first.bytes == 2 * 20 * 64 * 8 and first.gbps > 0
    assert all(r.calls == 1 for r in rows)


def test_calls_add_up_and_the_steps_plus_the_boundary_are_the_call_time():
    model = flowml.load(MLP, backend="llvm", seed=1)
    X, y = _batch()
    with flowml.profile() as p:
        for _ in range(5):
            model.train(X, y)
        model.error(X, y)
        model.error(X=X, y=y)  # (keywords: the Python path)
    train, error = p.functions
    assert (train.calls, error.calls) == (5, 2)
    for f, calls in ((train, 5), (error, 2)):
        rows = f.rows()
        assert all(r.calls == calls for r in rows)
        total = f.to_json()["total_s"]
        assert sum(r.total_s for r in rows) == pytest.approx(total, rel=1e-9)
        assert rows[-1].total_s > 0 and all(r.total_s > 0 for r in rows)
        assert sum(r.share for r in rows) == pytest.approx(1.0)


def test_a_profiled_call_gives_the_results_of_an_ordinary_one():
    X, y = _batch()
    ordinary, profiled = flowml.load(MLP, backend="llvm", seed=3), flowml.load(MLP, backend="llvm", seed=3)
    for _ in range(3):
        expected = ordinary.train(X, y)
        assert profiled.train.profile(X, y).result == expected  # bit for bit: the same code, timed
    with flowml.profile():
        got = profiled.train(X, y)
    assert got == ordinary.train(X, y)
    for name in ordinary.params:
        np.testing.assert_array_equal(profiled.params[name], ordinary.params[name])


def test_ordinary_calls_run_the_ordinary_build():
    model = flowml.load(MLP, backend="llvm", seed=1)
    X, y = _batch()
    for _ in range(3):  # (the CPython entry is installed from the third call)
        model.train(X, y)
    native_call = type(model.train).__call__
    with flowml.profile() as p:
        model.train(X, y)
    assert type(model.train).__call__ is native_call  # the fn's own entry again after the block
    build = model.train._profile_build.executable
    assert isinstance(build, ProfilingExecutable) and build is not model.train._executable
    assert "clock_gettime" in build.llvm_ir() and "clock_gettime" not in model.train._executable.llvm_ir()
    before = build.counters.copy()
    model.train(X, y)
    np.testing.assert_array_equal(build.counters, before)  # not counted: the ordinary build ran
    assert p.functions[0].calls == 1
    # the profiling build calls only what the ordinary one may, and the clock
    extra = build.program.external_symbols() - model.train._executable.program.external_symbols()
    assert extra == PROFILING_EXTERNALS and all(_ALLOWED.match(s) for s in _externals(model))


def test_a_loop_is_one_step_and_a_host_step_is_timed_around_its_call():
    src = MIXED
    ordinary = flowml.loads(src, backend="llvm", ops={"twice": _twice()})
    model = flowml.loads(src, backend="llvm", ops={"twice": _twice()})
    xs = np.random.default_rng(0).normal(size=(6, 3))
    p = model.f.profile(xs)
    rows = {r.op: r for r in p.rows}
    assert rows["scan"].kind == "native" and rows["scan"].detail.startswith("native loop")
    assert rows["twice"].kind == "host" and "wrapped Python function" in rows["twice"].detail
    assert [r.kind for r in p.rows].count("host") == 1 and p.rows[-1].kind == "boundary"
    assert sum(1 for r in p.rows if r.op == "scan") == 1
    for a, b in zip(p.result, ordinary.f(xs)):
        np.testing.assert_array_equal(a, b)


def test_an_llvm_fn_on_the_reference_evaluator_is_one_host_timed_step():
    src = "input xs : f64[T, 3]\ninput t : f64\nfn pick(xs, t) -> if t > 0 then twice(xs) else xs\n"
    model = flowml.loads(src, backend="llvm", ops={"twice": _twice()})
    xs = np.random.default_rng(0).normal(size=(4, 3))
    p = model.pick.profile(xs, 1.0)
    np.testing.assert_array_equal(p.result, 2 * xs)
    (whole, boundary) = p.rows
    assert whole.kind == "host" and whole.id is None and "reference evaluator" in whole.detail
    assert whole.calls == boundary.calls == 1 and "host timers" in p.to_json()["functions"][0]["timing"]


def test_the_reference_backend_is_timed_from_the_host():
    model = flowml.load(MLP, backend="reference", seed=1)
    ordinary = flowml.load(MLP, backend="reference", seed=1)
    X, y = _batch()
    p = model.train.profile(X, y)
    assert p.result == ordinary.train(X, y)
    data = p.to_json()["functions"][0]
    assert data["backend"] == "reference" and data["timing"].startswith("host timers")
    graph = model.train.compiled.graph
    computed = [n for n in graph.topo(graph.ancestors(model.train.compiled.outputs
                                                       + [n for _, n in model.train.compiled.updates]))
                if not graph.op(n).leaf]
    assert sorted(r["node"] for r in data["rows"][:-1]) == sorted(computed)
    assert {r["kind"] for r in data["rows"]} == {"host", "boundary"}


def test_the_json_schema_and_the_explorer_reads_it(tmp_path):
    model = flowml.load(MLP, backend="llvm", seed=1)
    p = model.train.profile(*_batch())
    path = tmp_path / "p.json"
    p.save(path)
    data = json.loads(path.read_text())
    assert data["flowml_profile"] == 1
    (fn,) = data["functions"]
    assert {"fn", "file", "backend", "timing", "calls", "total_s", "compile", "rows"} <= set(fn)
    assert set(fn["compile"]) >= {"optimize_s", "backend_s", "phases_s", "model_cache", "object_cache",
                                  "profiling_build_s"}
    assert list(fn["compile"]["phases_s"]) == ["canonicalize", "stabilize", "specialize", "fuse", "memory"]
    assert all(set(r) == ROW_KEYS for r in fn["rows"])
    page = model.train.explore(profile=str(path), backend="reference")
    assert len(page.data["fns"][0]["profile"]) == len(fn["rows"])
    text = str(p)
    assert "call boundary" in text and "BLAS dgemm" in text and "fn train" in text


def test_check_mode_is_not_profiled():
    model = flowml.load(MLP, backend="llvm", check=True)
    with pytest.raises(flowml.FlowError, match="check mode"):
        model.train.profile(*_batch())


def test_profile_blocks_do_not_nest_and_take_fns_made_inside_them():
    with flowml.profile() as p:
        with pytest.raises(flowml.FlowError, match="already being collected"):
            with flowml.profile():
                pass
        flowml.reset_default_graph()
        x = flowml.tensor("x", "f64[N]")
        f = flowml.function([x], flowml.sum(flowml.exp(x)), backend="llvm", name="g")
        assert f(np.zeros(3)) == 3.0
    assert [(fp.function.name, fp.calls) for fp in p.functions] == [("g", 1)]
    for _ in range(3):
        assert f(np.zeros(4)) == 4.0  # (ordinary calls again, the native entry from the third)
    assert p.functions[0].calls == 1


def test_cli_run_and_train_profile(tmp_path):
    out = tmp_path / "p.json"
    r = run_cli("run", MLP, "train", "--random", "N=20,y=10", "--steps", "4", "--profile", "--profile-json", str(out))
    assert r.returncode == 0, r.stderr
    assert "call boundary" in r.stdout and "BLAS dgemm" in r.stdout and "timed by native timers" in r.stdout
    data = json.loads(out.read_text())
    (fn,) = data["functions"]
    assert fn["fn"] == "train" and fn["calls"] == 4 and all(r["calls"] == 4 for r in fn["rows"])
    html = tmp_path / "mlp.html"
    r = run_cli("compile", MLP, "--emit", "html", "--fn", "train", "--backend", "reference",
                "--profile-json", str(out), "-o", str(html))
    assert r.returncode == 0, r.stderr
    assert '"profile":[{"k":' in html.read_text()
    r = run_cli("train", MLP, "--data", "examples/data/digits.npz", "--split", "1200", "--epochs", "1",
                "--profile-json", str(out))
    assert r.returncode == 0, r.stderr
    calls = {f["fn"]: f["calls"] for f in json.loads(out.read_text())["functions"]}
    assert calls == {"train": 60, "error": 1}
    r = run_cli("run", MLP, "train", "--random", "N=20,y=10", "--check", "--profile")
    assert r.returncode == 2 and "drop --check" in r.stderr


def test_the_opencl_backend_is_timed_step_by_step_from_the_host():
    src = "input x : f64[N, 4]\nparam w : f64[4] = normal(0, 1)\nfn f(x) -> sum(log(1 + exp(x @ w)))\n"
    model, ordinary = flowml.loads(src, backend="opencl"), flowml.loads(src, backend="opencl")
    x = np.random.default_rng(0).normal(size=(5, 4))
    with flowml.profile() as p:
        for _ in range(2):
            got = model.f(x)
    np.testing.assert_array_equal(got, ordinary.f(x))
    (f,) = p.functions
    data = f.to_json()
    assert data["timing"].startswith("host timers") and data["backend"] == "opencl"
    graph = model.f.compiled.graph
    computed = [n for n in graph.ancestors(model.f.compiled.outputs) if not graph.op(n).leaf]
    assert sorted(r["node"] for r in data["rows"][:-1]) == sorted(computed)
    assert all(r["calls"] == 2 for r in data["rows"]) and "matmul" in {r["op"] for r in data["rows"]}
