"""The model zoo (examples/softmax.flow, mlp.flow, sda.flow, dbn.flow, lenet.flow) through
`flowml.train.train`, the function behind `flowml train`, on a subset of the digits, each phase
run as its own `train` call (batch order seed 0):

- every deterministic phase (softmax's and the MLP's SGD, LeNet's, the stacked models'
  fine-tuning) gives numpy's losses, test errors and final params, replayed from the params the
  phase started with (examples/reference/lenet_numpy.py for LeNet, a few lines here for the rest);
- the stacked models' pretraining phases (which draw random numbers: corruption masks, Gibbs
  samples) train only their own layer, and leave the test error at the zero logistic layer's
  (every row predicted as class 0);
- the reference and OpenCL backends give the LLVM backend's losses, test errors and params,
  epoch for epoch.

The full trainings (examples/zoo.py) take minutes; their results are in the examples' headers.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

import flowml
from flowml.io import load_npz
from flowml.train import Phase, train
from helpers import opencl_param

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
DATA = os.path.join(EXAMPLES, "data", "digits.npz")
sys.path.insert(0, os.path.join(EXAMPLES, "reference"))
import lenet_numpy  # noqa: E402

TRAIN_ROWS, TEST_ROWS, BATCH, EPOCHS = 60, 60, 10, 2
STACKED = ("pretrain1", "pretrain2", "finetune")
ZOO = {  # example: the step fns it trains, in order
    "softmax": ("sgd",),
    "mlp": ("train",),
    "sda": STACKED,
    "dbn": STACKED,
    "lenet": ("train",),
}
# What each pretraining phase changes: its layer's params, and the RNG state its draws advance.
PRETRAINED = {"pretrain1": {"W1", "b1", "c1", "__rng__"}, "pretrain2": {"W2", "b2", "c2", "__rng__"}}


def _data() -> dict[str, np.ndarray]:
    return {k: v[:TRAIN_ROWS + TEST_ROWS] for k, v in load_npz(DATA).items()}


def _run(name: str, backend: str):
    """(model, [(phase, params before it, its History)]) after every phase of `name`."""
    model = flowml.load(os.path.join(EXAMPLES, f"{name}.flow"), backend=backend)
    runs = []
    for fn in ZOO[name]:
        before = {k: np.array(v) for k, v in model.params.to_dict().items()}
        h = train(model, _data(), [Phase(fn, EPOCHS)], BATCH, TRAIN_ROWS, "error", seed=0, progress=False)
        runs.append((fn, before, h))
    return model, runs


_LLVM: dict[str, tuple] = {}


def _llvm(name: str):
    if name not in _LLVM:
        _LLVM[name] = _run(name, "llvm")
    return _LLVM[name]


def _params_after(name: str, i: int) -> dict:
    """The LLVM run's params after phase i of `name`."""
    model, runs = _llvm(name)
    return runs[i + 1][1] if i + 1 < len(runs) else model.params.to_dict()


# ---------------------------------------------------------------- numpy replays


def _log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _dlogits(logits, y):
    """(mean NLL, its gradient with respect to the logits)."""
    lp = _log_softmax(logits)
    n = len(y)
    d = np.exp(lp)
    d[np.arange(n), y] -= 1
    return -lp[np.arange(n), y].mean(), d / n


def _softmax_step(p, x, y):
    cost, d = _dlogits(x @ p["W"] + p["b"], y)
    p["W"] -= 0.13 * x.T @ d
    p["b"] -= 0.13 * d.sum(0)
    return cost


def _softmax_logits(p, x):
    return x @ p["W"] + p["b"]


def _mlp_step(p, x, y):
    h = np.tanh(x @ p["W1"] + p["b1"])
    nll, d2 = _dlogits(h @ p["W2"] + p["b2"], y)
    cost = nll + 1e-4 * (np.sum(p["W1"] ** 2) + np.sum(p["W2"] ** 2))
    dh = (d2 @ p["W2"].T) * (1 - h ** 2)
    g = {"W2": h.T @ d2 + 2e-4 * p["W2"], "b2": d2.sum(0), "W1": x.T @ dh + 2e-4 * p["W1"], "b1": dh.sum(0)}
    for k in g:
        p[k] -= 0.01 * g[k]
    return cost


def _mlp_logits(p, x):
    return np.tanh(x @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"]


def _sigmoid(v):
    return 1 / (1 + np.exp(-v))


def _finetune_step(p, x, y):
    """sda's and dbn's fine-tuning: two sigmoid layers and a softmax layer, lr 0.1."""
    h1 = _sigmoid(x @ p["W1"] + p["b1"])
    h2 = _sigmoid(h1 @ p["W2"] + p["b2"])
    cost, d3 = _dlogits(h2 @ p["W3"] + p["b3"], y)
    d2 = (d3 @ p["W3"].T) * h2 * (1 - h2)
    d1 = (d2 @ p["W2"].T) * h1 * (1 - h1)
    g = {"W3": h2.T @ d3, "b3": d3.sum(0), "W2": h1.T @ d2, "b2": d2.sum(0), "W1": x.T @ d1, "b1": d1.sum(0)}
    for k in g:
        p[k] -= 0.1 * g[k]
    return cost


def _stacked_logits(p, x):
    return _sigmoid(_sigmoid(x @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"]) @ p["W3"] + p["b3"]


def _lenet_step(p, x, y):
    return lenet_numpy.train_step(p, x, y, lr=0.1)


def _lenet_logits(p, x):
    return lenet_numpy.forward(p, x)[0]


NUMPY = {  # (example, phase): (numpy's SGD step on X / 16, numpy's logits)
    ("softmax", "sgd"): (_softmax_step, _softmax_logits),
    ("mlp", "train"): (_mlp_step, _mlp_logits),
    ("sda", "finetune"): (_finetune_step, _stacked_logits),
    ("dbn", "finetune"): (_finetune_step, _stacked_logits),
    ("lenet", "train"): (_lenet_step, _lenet_logits),
}


def _numpy_replay(step, logits, params: dict):
    """`train`'s loop in numpy: per epoch a permutation of RandomState(0), SGD on each batch,
    then the test error. Returns (losses, test errors, final params)."""
    d = _data()
    x, y = d["X"] / 16.0, d["y"].astype(np.int64)
    xtr, ytr, xte, yte = x[:TRAIN_ROWS], y[:TRAIN_ROWS], x[TRAIN_ROWS:], y[TRAIN_ROWS:]
    p = {k: np.array(v, dtype=np.float64) for k, v in params.items()}
    rng = np.random.RandomState(0)
    losses, errors = [], []
    for _ in range(EPOCHS):
        order = rng.permutation(TRAIN_ROWS)
        costs = [step(p, xtr[idx], ytr[idx]) for idx in (order[s:s + BATCH] for s in range(0, TRAIN_ROWS, BATCH))]
        losses.append(float(np.mean(costs)))
        errors.append(float(np.mean(logits(p, xte).argmax(axis=1) != yte)))
    return losses, errors, p


@pytest.mark.parametrize("name, phase", list(NUMPY), ids=[f"{n}-{f}" for n, f in NUMPY])
def test_deterministic_phases_match_numpy_on_llvm(name, phase):
    _, runs = _llvm(name)
    i = ZOO[name].index(phase)
    _, before, h = runs[i]
    losses, errors, want = _numpy_replay(*NUMPY[name, phase], before)
    assert h.phase == [phase] * EPOCHS
    np.testing.assert_allclose(h.loss, losses, rtol=1e-9, err_msg=f"{name} {phase}: training losses")
    assert h.test == errors, f"{name} {phase}: test errors"
    after = _params_after(name, i)
    for k, v in want.items():
        np.testing.assert_allclose(after[k], v, rtol=1e-8, atol=1e-12, err_msg=f"{name} {phase}: param {k}")


@pytest.mark.parametrize("name", ["sda", "dbn"])
def test_pretraining_trains_its_own_layer_and_leaves_the_prediction(name):
    """Each pretraining phase changes exactly its layer's params (W, hidden and visible bias; and
    the random stream's state) and its losses are finite; the logistic layer is still zero, so every test row is predicted as
    class 0 and the test error is the fraction of test rows that are not 0."""
    _, runs = _llvm(name)
    y_test = _data()["y"][TRAIN_ROWS:]
    for i, (phase, before, h) in enumerate(runs[:-1]):
        after = _params_after(name, i)
        changed = {k for k in before if not np.array_equal(before[k], after[k])}
        assert changed == PRETRAINED[phase], f"{name} {phase} changed {sorted(changed)}"
        assert len(h.loss) == EPOCHS and all(np.isfinite(h.loss))
        assert h.test == [float(np.mean(y_test != 0))] * EPOCHS


@pytest.mark.parametrize("backend", ["reference", opencl_param()])
@pytest.mark.parametrize("name", list(ZOO))
def test_backends_give_the_same_losses_as_llvm(name, backend):
    llvm_model, want = _llvm(name)
    model, got = _run(name, backend)
    for (phase, _, w), (_, _, g) in zip(want, got):
        np.testing.assert_allclose(g.loss, w.loss, rtol=1e-6, err_msg=f"{phase} losses")
        np.testing.assert_allclose(g.test, w.test, rtol=1e-6, err_msg=f"{phase} test errors")
    for param, value in llvm_model.params.items():
        np.testing.assert_allclose(model.params[param], value, rtol=1e-6, atol=1e-9, err_msg=param)


def test_patience_stops_only_the_last_phase():
    """Pretraining leaves the test error where it is (the logistic layer is still zero), so early
    stopping must not cut it short, nor go back to its first epoch's params."""
    model = flowml.load(os.path.join(EXAMPLES, "sda.flow"), backend="reference")
    data = {k: v[:60] for k, v in load_npz(DATA).items()}
    phases = [Phase("pretrain1", 3), Phase("finetune", 3)]
    h = train(model, data, phases, 10, 40, "error", seed=0, patience=1, progress=False)
    assert h.phase[:3] == ["pretrain1"] * 3                   # all three pretraining epochs ran
    assert len(set(h.test[:3])) == 1                          # ... though the test error stood still
    assert not np.array_equal(model.params["c1"], np.zeros(64))   # and their updates were kept
