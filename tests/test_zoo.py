"""The model zoo (examples/mlp.flow, examples/sda.flow, examples/dbn.flow, and examples/lenet.flow
when it exists) through `flowml.train.train`, the function behind `flowml train`: a couple of
epochs of every phase on a subset of the digits' training rows make each phase's loss fall on
the LLVM backend, and for the two stacked models (whose pretraining draws random numbers:
corruption masks, Gibbs samples) the reference and OpenCL backends give the same losses and test
errors as LLVM, epoch for epoch, from the same seed — as do the others.

The full trainings (examples/zoo.py) take minutes; their results are in the examples' headers.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import flowml
from flowml.io import load_npz
from flowml.train import Phase, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
DATA = os.path.join(EXAMPLES, "data", "digits.npz")

TRAIN_ROWS, TEST_ROWS, BATCH, EPOCHS = 100, 100, 10, 2
STACKED = ("pretrain1", "pretrain2", "finetune")
ZOO = {  # example: the step fns it trains, in order
    "softmax": ("sgd",),
    "mlp": ("train",),
    "sda": STACKED,
    "dbn": STACKED,
    "lenet": ("train",),
}


def _path(name: str) -> str:
    return os.path.join(EXAMPLES, f"{name}.flow")


def _data() -> dict[str, np.ndarray]:
    data = load_npz(DATA)
    return {k: v[:TRAIN_ROWS + TEST_ROWS] for k, v in data.items()}


def _run(name: str, backend: str):
    if not os.path.exists(_path(name)):
        pytest.skip(f"examples/{name}.flow does not exist")
    model = flowml.load(_path(name), backend=backend)
    phases = [Phase(fn, EPOCHS) for fn in ZOO[name]]
    history = train(model, _data(), phases, BATCH, TRAIN_ROWS, "error" if "error" in model.functions else None,
                    seed=0, progress=False)
    return model, history


_LLVM: dict[str, tuple] = {}


def _llvm(name: str):
    if name not in _LLVM:
        _LLVM[name] = _run(name, "llvm")
    return _LLVM[name]


@pytest.mark.parametrize("name", list(ZOO))
def test_each_phase_loss_falls_on_llvm(name):
    _, h = _llvm(name)
    assert len(h.loss) == EPOCHS * len(ZOO[name]) and all(np.isfinite(h.loss))
    for fn in ZOO[name]:
        losses = [loss for loss, phase in zip(h.loss, h.phase) if phase == fn]
        assert losses[-1] < losses[0], f"{name}: the loss of {fn} does not fall: {losses}"


@pytest.mark.parametrize("name", ["sda", "dbn"])
def test_stacked_models_fine_tune_to_better_than_chance(name):
    _, h = _llvm(name)
    pretrain_errors = [t for t, phase in zip(h.test, h.phase) if phase != "finetune"]
    assert all(t > 0.8 for t in pretrain_errors)    # the logistic layer is still zero: one class
    assert h.test[-1] < 0.85                         # 4 fine-tuning epochs of 10 batches


@pytest.mark.parametrize("backend", ["reference", "opencl"])
@pytest.mark.parametrize("name", list(ZOO))
def test_backends_give_the_same_losses_as_llvm(name, backend):
    if backend == "opencl":
        pytest.importorskip("pyopencl")
        try:
            flowml.loads("input x : f64[N]\nfn f(x) -> x", backend="opencl")
        except flowml.FlowError as e:
            pytest.skip(f"no OpenCL device: {e}")
    llvm_model, want = _llvm(name)
    model, got = _run(name, backend)
    np.testing.assert_allclose(got.loss, want.loss, rtol=1e-6)
    np.testing.assert_allclose(got.test, want.test, rtol=1e-6)
    for param, value in llvm_model.params.items():
        np.testing.assert_allclose(model.params[param], value, rtol=1e-6, atol=1e-9, err_msg=param)


def test_patience_stops_only_the_last_phase():
    """Pretraining leaves the test error where it is (the logistic layer is still zero), so early
    stopping must not cut it short, nor go back to its first epoch's params."""
    model = flowml.load(_path("sda"), backend="reference")
    data = {k: v[:60] for k, v in load_npz(DATA).items()}
    phases = [Phase("pretrain1", 3), Phase("finetune", 3)]
    h = train(model, data, phases, 10, 40, "error", seed=0, patience=1, progress=False)
    assert h.phase[:3] == ["pretrain1"] * 3                   # all three pretraining epochs ran
    assert len(set(h.test[:3])) == 1                          # ... though the test error stood still
    assert not np.array_equal(model.params["c1"], np.zeros(64))   # and their updates were kept
