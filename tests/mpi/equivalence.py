"""Run by tests/test_distributed.py under `mpiexec -n 2`: K = 2 ranks with B rows each against one
process with 2B rows, for 20 steps (the last global batch is shorter and split 4 + 3), on the
MLP, LeNet, a model with a `sum` cost and one trained by Adam (and softmax regression on OpenCL,
when asked by name). Rank 0 prints one RESULT line (JSON): per model, max |difference| / max
|param|."""

import json
import sys
import time
from pathlib import Path

import numpy as np

from flowml import dataparallel as dp
from flowml.api import parse_program
from flowml.distributed import world
from flowml.program import Model
from flowml.train import Phase, train

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

SUM_COST = """
input X : f64[N, 8]
input t : f64[N]
param w : f64[8] = normal(0, 0.1)
param c : f64 = 0
cost = sum((X @ w + c - t) ** 2) + 0.5 * sum(w ** 2)    # a sum over the rows, and a penalty
gw, gc = grad(cost, w, c)
fn train(X, t) -> cost {
    w <- w - 0.002 * gw
    c <- c - 0.002 * gc
}
"""

ADAM = """
input X : f64[N, 64]
input y : i64[N]
param W : f64[64, 10] = normal(0, 0.01)
param b : f64[10] = zeros
param mW : f64[64, 10] = zeros
param vW : f64[64, 10] = zeros
param mb : f64[10] = zeros
param vb : f64[10] = zeros
param t : f64 = 0
const lr = 0.01
const b1 = 0.9
const b2 = 0.999
cost = mean(categorical_crossentropy((X / 16) @ W + b, y)) + 0.001 * sum(W ** 2)
gW, gb = grad(cost, W, b)
t1 = t + 1
mW1 = b1 * mW + (1 - b1) * gW
vW1 = b2 * vW + (1 - b2) * gW ** 2
mb1 = b1 * mb + (1 - b1) * gb
vb1 = b2 * vb + (1 - b2) * gb ** 2
fn train(X, y) -> cost {
    t <- t1
    mW <- mW1
    vW <- vW1
    mb <- mb1
    vb <- vb1
    W <- W - lr * (mW1 / (1 - b1 ** t1)) / (sqrt(vW1 / (1 - b2 ** t1)) + 1e-8)
    b <- b - lr * (mb1 / (1 - b1 ** t1)) / (sqrt(vb1 / (1 - b2 ** t1)) + 1e-8)
}
"""


COLLECTIVES = """
input x : f64[N, 3]
param w : f64[3] = ones
s  = allreduce(sum(x @ w), op="sum")
a  = allreduce(w * w, op="mean")
mx = allreduce(w, op="max")
g  = allgather(w)
b  = broadcast(2 * w, root=1)
gw = grad(s + sum(a) + sum(mx * mx) + sum(g * g) + sum(b), w)
r  = rank()
k  = world_size()
fn f(x) -> s, a, mx, g, b, gw, r, k
"""


def collectives(backend):
    """The collectives' values and VJPs on 2 ranks against numpy. Rank r holds w_r = [0, 1, 2] + r
    and x_r = (r + 1) * ones(2, 3); every rank's cost C is the same, and grad on rank r is
    d(Σ_s C_s)/dw_r = K dC/dw_r (the psum convention)."""
    w = world()
    K, r = w.size, w.rank
    model = Model(parse_program(COLLECTIVES, "collectives"), backend=backend)
    model.params["w"] = np.arange(3.0) + r
    out = model.f(np.full((2, 3), r + 1.0))
    ws = [np.arange(3.0) + q for q in range(K)]
    mx = np.max(ws, axis=0)
    expected = [sum(2 * (q + 1) * ws[q].sum() for q in range(K)), np.mean([v * v for v in ws], axis=0), mx,
                np.stack(ws), 2 * ws[1],
                K * (2 * (r + 1) + 2 * ws[r] / K + 2 * mx * (ws[r] == mx) + 2 * ws[r] + 2 * (r == 1)), r, K]
    bad = [i for i, (o, e) in enumerate(zip(out, expected)) if not np.allclose(o, e, rtol=1e-14, atol=0)]
    oks = w.gather_objects(bad)
    return None if r else {"wrong outputs by rank": oks}


DROPOUT = """
input X : f64[N, 4]
param w : f64[4] = ones
mask = bernoulli(0.5, shape=(N, 4))
cost = mean(sum(X * mask * w, axis=1) ** 2)
gw = grad(cost, w)
fn train(X) -> mask { w <- w - 0.1 * gw }
"""


def streams(backend):
    """Each rank draws its own dropout masks; the params and the shared stream key stay equal."""
    w = world()
    model, _ = dp.prepare(parse_program(DROPOUT, "dropout"), ["train"], w, backend=backend)
    dp.sync_params(model, w)
    X = np.linspace(0, 1, 32).reshape(8, 4)
    masks = [model.train(X) for _ in range(3)]
    everyone = w.gather_objects((masks, model.params["w"], model.params["__rng__"]))
    if w.rank:
        return None
    (m0, w0, k0), (m1, w1, k1) = everyone
    return {"masks differ": all(not np.array_equal(a, b) for a, b in zip(m0, m1)),
            "params equal": bool(np.array_equal(w0, w1)), "keys equal": bool(np.array_equal(k0, k1))}


def digits():
    with np.load(EXAMPLES / "data" / "digits.npz") as d:
        return {"X": d["X"].astype(np.float64), "y": d["y"].astype(np.int64)}


def regression():
    rng = np.random.RandomState(1)
    X = rng.randn(400, 8)
    return {"X": X, "t": X @ rng.randn(8) + 0.1 * rng.randn(400)}


def compare(name, source, data, B, backend, steps=20):
    w = world()
    n = 2 * B * (steps - 1) + 7  # 20 global batches; the last has 7 rows (4 + 3)
    data = {k: v[:n] for k, v in data.items()}
    t0 = time.perf_counter()
    model, _ = dp.prepare(parse_program(source, name), ["train"], w, backend=backend)
    dp.sync_params(model, w)
    train(model, data, [Phase("train", 1)], B, None, None, seed=3, progress=False, world=w)
    if w.rank != 0:
        return None
    single = Model(parse_program(source, name), backend=backend)
    train(single, data, [Phase("train", 1)], 2 * B, None, None, seed=3, progress=False)
    diff = scale = 0.0
    for k, v in single.params.items():
        if v.dtype.kind == "f":
            diff = max(diff, float(np.max(np.abs(model.params[k] - v))))
            scale = max(scale, float(np.max(np.abs(v))))
    return {"relative": diff / scale, "seconds": round(time.perf_counter() - t0, 2)}


def main():
    models = {
        "mlp": (open(EXAMPLES / "mlp.flow").read(), digits(), 10, "llvm"),
        "lenet": (open(EXAMPLES / "lenet.flow").read(), digits(), 5, "reference"),
        "sum": (SUM_COST, regression(), 10, "reference"),
        "adam": (ADAM, digits(), 10, "llvm"),
        "softmax-opencl": (open(EXAMPLES / "softmax.flow").read(), digits(), 10, "opencl"),  # (only if asked)
    }
    wanted = sys.argv[1:] or ["collectives", "streams", "mlp", "lenet", "sum", "adam"]
    checks = {"collectives": collectives, "streams": streams}
    results = {name: checks[name]("llvm") if name in checks else compare(name, *models[name]) for name in wanted}
    if world().rank == 0:
        print("RESULT " + json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
