"""Data-parallel training over MPI (docs/distributed.md).

In this process (one rank, no MPI): the collectives are identities, `import flowml` does not
load mpi4py, and the distribute pass classifies costs, buckets gradients and reports what it
cannot rewrite. Under `mpiexec -n 2` (the test extra installs mpi4py and MPICH): the collectives
and their derivatives against numpy, 2 ranks × B rows against 1 process × 2B rows for four
models, a rank that raises or is killed, mismatched data, and `flowml train --distributed`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import flowml
from flowml.api import parse_program
from flowml.distributed import World
from flowml.errors import FlowError
from flowml.passes.distribute import distribute

from helpers import opencl_available

ROOT = Path(__file__).resolve().parents[1]
MLP = (ROOT / "examples" / "mlp.flow").read_text()
DIGITS = ROOT / "examples" / "data" / "digits.npz"


def mpiexec() -> str:
    exe = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
    assert exe, "mpiexec not found: install the test extra (pip install -e '.[test]' pulls in flowml[mpi])"
    return exe


def launch(*args: str, n: int = 2, timeout: float = 120, mpmd=None) -> tuple[subprocess.CompletedProcess, float]:
    """`mpiexec -n n python args...` (or an MPMD line `mpmd`: a list of argument lists, one rank
    each) with this checkout's flowml first on the path; returns the result and the seconds."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if mpmd is None:
        cmd = [mpiexec(), "-n", str(n), sys.executable, *args]
    else:
        cmd = [mpiexec()]
        for i, a in enumerate(mpmd):
            cmd += ([":"] if i else []) + ["-n", "1", sys.executable, *a]
    t0 = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    return done, time.monotonic() - t0


# ----------------------------------------------------------------- one process


COLLECTIVE_MODEL = """
input x : f64[N, 3]
param w : f64[3] = ones
s = allreduce(sum(x @ w), op="mean") + allreduce(sum(w), op="max")
gw = grad(s + sum(broadcast(w, root=0)) + sum(allgather(w * w)), w)
fn f(x) -> s, gw, rank(), world_size()
"""


def test_collectives_are_identities_in_one_process_and_mpi4py_is_not_loaded():
    assert "mpi4py" not in sys.modules
    model = flowml.loads(COLLECTIVE_MODEL)
    model.params["w"] = np.array([1.0, 2.0, 3.0])
    s, gw, r, k = model.f(np.ones((2, 3)))
    assert s == 12.0 + 6.0 and r == 0 and k == 1
    np.testing.assert_allclose(gw, 2 + 1 + 1 + 2 * np.array([1.0, 2.0, 3.0]))
    assert "mpi4py" not in sys.modules  # only a run launched by mpiexec loads it


def test_collectives_from_python_and_bad_arguments():
    flowml.reset_default_graph()
    x = flowml.tensor("x", "f64[N]")
    f = flowml.function([x], [flowml.allreduce(x, "max"), flowml.world_size()])
    np.testing.assert_array_equal(f(np.arange(3.0))[0], np.arange(3.0))
    with pytest.raises(FlowError, match="op must be one of"):
        flowml.allreduce(x, "prod")
    with pytest.raises(FlowError, match=r"test\.flow:3:5: .*allreduce.*bools"):
        parse_program("input x : f64[N]\nb = x > 0\nc = allreduce(b)\nfn f(x) -> c\n", "test.flow")


def test_constant_collectives_are_not_folded():
    model = flowml.loads("param w : f64 = 1\nc = allreduce(3.0 * ones((2,)))\nfn f() -> c\n")
    assert "allreduce" in model.f.ir()


def _plan(source, **kw):
    program = parse_program(source, "model.flow")
    return program, distribute(program, "train", **kw)


def test_mlp_gradients_are_averaged_in_one_bucket():
    program, plan = _plan(MLP)
    assert plan.kinds == {"W1": "mean", "b1": "mean", "W2": "mean", "b2": "mean"}
    assert plan.buckets == [["W1", "b1", "W2", "b2"]]
    model = flowml.Model(program)
    ir = model.train.ir()
    assert ir.count("allreduce") == 1
    # the updates read the reduced gradients: the params after an update are never reduced
    opt = model.train.compiled
    g = opt.graph
    reduce_nodes = [n for n in g.nodes() if g.op(n).name == "allreduce"]
    assert all(not any(g.op(a).name == "allreduce" for a in g.ancestors([n]) - {n}) for n in reduce_nodes)


def test_small_buckets_make_one_allreduce_each():
    program, plan = _plan(MLP, bucket_bytes=8 * 1100)  # W1 alone; b1 + W2 = 8800 bytes; b2
    assert plan.buckets == [["W1"], ["b1", "W2"], ["b2"]]
    assert flowml.Model(program).train.ir().count("= allreduce") == 3


SUM_COST = """
input X : f64[N, 2]
input t : f64[N]
param w : f64[2] = zeros
cost = sum((X @ w - t) ** 2) + 0.5 * sum(w ** 2)
gw = grad(cost, w)
fn train(X, t) -> cost { w <- w - 0.01 * gw }
"""


def test_a_sum_cost_sums_and_keeps_the_penalty_once():
    program, plan = _plan(SUM_COST)
    assert plan.kinds == {"w": "sum"}
    # in one process the rewrite changes nothing: the step is the original one
    X, t = np.array([[1.0, 2.0], [3.0, -1.0]]), np.array([1.0, 2.0])
    a, b = flowml.Model(program), flowml.loads(SUM_COST)
    a.params["w"] = b.params["w"] = np.array([0.5, -0.25])
    a.train(X, t), b.train(X, t)
    np.testing.assert_allclose(a.params["w"], b.params["w"], rtol=1e-15)


@pytest.mark.parametrize("cost, where", [
    ("log(mean((X @ w - t) ** 2))", "5:8"),        # a log of a mean
    ("max((X @ w - t) ** 2)", "5:8"),              # a max over the rows
    ("sum((X @ w - mean(X @ w)) ** 2)", "5:8"),    # a batch statistic inside
])
def test_a_cost_it_cannot_classify_is_a_located_error(cost, where):
    source = SUM_COST.replace("sum((X @ w - t) ** 2) + 0.5 * sum(w ** 2)", cost)
    with pytest.raises(FlowError, match=rf"model\.flow:{where}: --distributed cannot tell") as e:
        _plan(source)
    assert "allreduce" in str(e.value)


def test_gradients_the_model_reduces_itself_are_left_alone():
    source = SUM_COST.replace("sum((X @ w - t) ** 2) + 0.5 * sum(w ** 2)", "log(mean((X @ w - t) ** 2))") \
        .replace("gw = grad(cost, w)", 'gw = allreduce(grad(cost, w), op="mean")')
    program, plan = _plan(source)
    assert plan.kinds == {} and plan.buckets == []
    assert flowml.Model(program).train.ir().count("= allreduce") == 1


def test_an_update_that_depends_on_the_rows_is_an_error():
    source = SUM_COST.replace("param w : f64[2] = zeros", "param w : f64[2] = zeros\nparam m : f64 = 0") \
        .replace("{ w <- w - 0.01 * gw }", "{\n    w <- w - 0.01 * gw\n    m <- mean(t)\n}")
    with pytest.raises(FlowError, match=r"model\.flow:10:5: the update of param 'm' depends on this rank's rows"):
        _plan(source)


def test_inputs_without_a_shared_symbolic_row_dim_are_an_error():
    source = SUM_COST.replace("f64[N, 2]", "f64[4, 2]").replace("f64[N]", "f64[4]")
    with pytest.raises(FlowError, match="first axis must be one symbolic dim"):
        _plan(source)


def test_random_draws_read_a_key_offset_by_the_rank():
    source = ("input X : f64[N, 4]\nparam w : f64[4] = ones\nmask = bernoulli(0.5, shape=(N, 4))\n"
              "gw = grad(mean(sum(X * mask * w, axis=1) ** 2), w)\nfn train(X) -> mask { w <- w - 0.1 * gw }\n")
    program, plan = _plan(source)
    a, b = flowml.Model(program), flowml.loads(source)
    assert "= rank" in a.train.ir() and "= rank" not in b.train.ir()
    X = np.random.RandomState(0).rand(6, 4)
    for _ in range(3):  # rank 0's key is the model's own: in one process nothing changes
        np.testing.assert_array_equal(a.train(X), b.train(X))
    np.testing.assert_allclose(a.params["w"], b.params["w"], rtol=1e-15)


def test_compile_shows_the_rewritten_step(capsys):
    from flowml.cli import main
    assert main(["compile", "examples/mlp.flow", "--fn", "train", "--distributed"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"= allreduce %\d+ \{reduction=sum\} : f64\[7511\]", out), out


def test_the_evaluate_fn_must_not_use_collectives():
    from flowml.dataparallel import check_evaluate
    model = flowml.loads(MLP.replace("fn error(X, y) -> error", "fn error(X, y) -> allreduce(error, op=\"mean\")"),
                         file="mlp.flow")
    with pytest.raises(FlowError, match=r"mlp\.flow:29:19: fn error uses allreduce, but with --distributed rank 0"):
        check_evaluate(model, "error")
    check_evaluate(flowml.loads(MLP), "error")


def test_shards_of_a_global_batch():
    from flowml.dataparallel import shard

    class Two(World):
        size = 2

        def __init__(self, rank):
            self.rank = rank
    rows = np.arange(7)
    assert [shard(rows, Two(r)).tolist() for r in (0, 1)] == [[0, 1, 2, 3], [4, 5, 6]]
    assert shard(np.arange(1), Two(1)) is None  # fewer rows than ranks: dropped on every rank
    assert shard(rows, World()) is rows


# ----------------------------------------------------------------- under mpiexec -n 2


@pytest.fixture(scope="module")
def equivalence():
    models = ["collectives", "streams", "mlp", "lenet", "sum", "adam"] + (["softmax-opencl"] if opencl_available() else [])
    done, _ = launch("tests/mpi/equivalence.py", *models)
    assert done.returncode == 0, done.stdout + done.stderr
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def test_collectives_and_their_derivatives_on_two_ranks(equivalence):
    assert equivalence["collectives"] == {"wrong outputs by rank": [[], []]}


def test_each_rank_draws_its_own_random_numbers(equivalence):
    assert equivalence["streams"] == {"masks differ": True, "params equal": True, "keys equal": True}


@pytest.mark.parametrize("model", ["mlp", "lenet", "sum", "adam"])
def test_two_ranks_of_b_rows_equal_one_process_of_2b(equivalence, model):
    assert equivalence[model]["relative"] <= 1e-12, equivalence[model]


@pytest.mark.skipif(not opencl_available(), reason="no OpenCL device")
def test_two_ranks_on_opencl(equivalence):
    """The gradients are read back to the host for MPI, reduced, and written back."""
    assert equivalence["softmax-opencl"]["relative"] <= 1e-12, equivalence["softmax-opencl"]


@pytest.mark.parametrize("how", ["raise", "kill"])
def test_a_failed_rank_stops_the_others(how):
    done, seconds = launch("tests/mpi/fault.py", how, timeout=90)
    out = done.stdout + done.stderr
    assert done.returncode != 0 and seconds < 60, out
    assert "finished training" not in out
    if how == "raise":
        assert "error (rank 0): rank 1 failed: ValueError: injected fault on the third step" in out
    else:  # no Python error to send: mpiexec stops rank 0 and names the pid, which rank 0 mapped to rank 1
        pid = re.search(r"pids 0: \d+, 1: (\d+)", out).group(1)
        assert re.search(rf"PID {pid} .*\n.*EXIT CODE: 9", out), out


def test_flowml_train_distributed(tmp_path):
    """The README's command: rank 0 alone reports and saves, and the params are those of one
    process with the global batch."""
    saved = tmp_path / "p.npz"
    args = ["-m", "flowml.cli", "train", "examples/mlp.flow", "--data", str(DIGITS), "--split", "1200",
            "--batch", "30", "--epochs", "1", "--distributed", "--save-params", str(saved),
            "--plot", str(tmp_path / "c.png"), "--backend", "reference"]
    done, _ = launch(*args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("1 epochs,") == 1 and done.stdout.count("params saved") == 1, done.stdout
    assert "distributed: 2 rank(s)" in done.stdout and (tmp_path / "c.png").exists()
    from flowml.io import load_npz
    from flowml.train import Phase, train
    single = flowml.load(ROOT / "examples" / "mlp.flow", backend="reference")
    data = load_npz(str(DIGITS))
    train(single, data, [Phase("train", 1)], 60, 1200, None, progress=False)
    got = load_npz(str(saved))
    for k, v in single.params.items():
        np.testing.assert_allclose(got[k], v, rtol=0, atol=1e-12 * np.max(np.abs(v)))


def test_mismatched_data_is_reported_at_start_up(tmp_path):
    short = tmp_path / "short.npz"
    with np.load(DIGITS) as d:
        np.savez(short, X=d["X"][:1500], y=d["y"][:1500])
    base = ["-m", "flowml.cli", "train", "examples/mlp.flow", "--split", "1200", "--epochs", "1", "--distributed",
            "--backend", "reference", "--data"]
    done, seconds = launch(mpmd=[base + [str(DIGITS)], base + [str(short)]], timeout=90)
    assert done.returncode == 1 and seconds < 60, done.stdout + done.stderr
    assert done.stderr.count("error: rank 1 does not agree with rank 0 about the data: X: uint8[1797, 64] on rank 0, "
                             "uint8[1500, 64] on rank 1; y: ") == 2, done.stderr


def test_native_collectives_on_two_ranks():
    done, _ = launch("tests/mpi/native_collectives.py")
    results = [json.loads(line[len("RESULT "):]) for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(results) == 2, done.stdout + done.stderr
    for r in results:
        assert r["host steps"] == 0 and r["wrong"] == [], r
        assert r["mismatch"] == ("collectives.flow:3:76: allgather needs the same shape on every rank, "
                                 "got rank 0: float64[2], rank 1: float64[3]"), r
