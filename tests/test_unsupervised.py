"""The unsupervised examples (examples/rbm.flow, examples/dae.flow) with their driver
(examples/train_unsupervised.py) and numpy references (examples/reference/): a few epochs on a
subset of the training rows learn, the reference and LLVM backends give the same losses, and one
update equals the numpy reference's formula given the same random numbers (for the RBM: given
the same chain end). The full runs (100 / 200 epochs) are the driver's job; see the examples'
headers."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

import flowml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
DATA = os.path.join(EXAMPLES, "data", "digits.npz")


def _module(relpath: str):
    name = "_" + os.path.basename(relpath)[:-3]
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXAMPLES, relpath))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


driver = _module("train_unsupervised.py")

CASES = [("rbm", "train_cd"), ("rbm", "train_pcd"), ("dae", "train")]
MONITOR = {"train_cd": "recon", "train_pcd": "recon", "train": "cost"}


def _run(model, fn, backend, epochs, n_train=200, n_test=100):
    return driver.train(model, fn, backend, epochs=epochs, n_train=n_train, n_test=n_test, log=lambda s: None)


def _digits(rows):
    return np.load(DATA)["X"][rows].astype(np.float64)


@pytest.mark.parametrize("model, fn", CASES, ids=[f"{m}-{f}" for m, f in CASES])
def test_a_few_epochs_on_a_subset_learn(model, fn):
    r = _run(model, fn, "reference", epochs=3)
    monitor = [h[0][r["names"].index(MONITOR[fn])] for h in r["history"]]
    tests = [h[1] for h in r["history"]]
    assert all(np.isfinite(monitor)) and all(np.isfinite(tests))
    assert monitor[-1] < monitor[0]               # the training loss falls ...
    assert tests[-1] < r["initial"]               # ... and so does the test reconstruction error
    assert tests[-1] < 25                         # nats per 64-pixel row (untrained: about 70)


@pytest.mark.parametrize("model, fn", CASES, ids=[f"{m}-{f}" for m, f in CASES])
def test_reference_and_llvm_give_the_same_first_epoch(model, fn):
    ref = _run(model, fn, "reference", epochs=1)
    nat = _run(model, fn, "llvm", epochs=1)
    (ref_means, ref_test, *_), = ref["history"]
    (nat_means, nat_test, *_), = nat["history"]
    np.testing.assert_allclose(nat_means, ref_means, rtol=1e-10)
    np.testing.assert_allclose(nat_test, ref_test, rtol=1e-10)
    for name, value in ref["model"].params.items():
        np.testing.assert_allclose(nat["model"].params[name], value, rtol=1e-9, atol=1e-12, err_msg=name)


def _sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def test_rbm_update_is_the_tutorials_given_the_chain_end():
    """CD-1 and PCD-15: the gradients are <v σ(vW + c)>_data - <v σ(vW + c)>_chain end, the chain
    is binary, and train_pcd moves the persistent chain to its last hidden sample. With weights of
    ±30 the units are almost deterministic, so each sample must follow the one before it in the
    chain wherever the unit's input is far from 0."""
    with open(os.path.join(EXAMPLES, "rbm.flow")) as f:
        src = f.read() + "\nfn debug(X) -> h_data, cd_end, cd_gW, cd_ghbias, cd_gvbias, pcd_end, pcd_h, pcd_gW\n"
    m = flowml.loads(src, backend="reference")
    rs = np.random.RandomState(0)
    W = 30 * np.sign(rs.randn(64, 100))
    m.params["W"] = W
    m.params["chain"] = (rs.rand(20, 100) < 0.5).astype(np.float64)
    X = _digits(slice(0, 20))
    v = X / 16
    key = m.params["__rng__"]                             # the random streams' position
    h0, cd_end, gW, ghb, gvb, pcd_end, pcd_h, pcd_gW = m.debug(X)
    for sample in (h0, cd_end, pcd_end, pcd_h):
        assert set(np.unique(sample)) == {0.0, 1.0}
    sure = np.abs(h0 @ W.T) >= 30                         # P(v = 1 | h0) is σ(±30) or closer to 0/1
    np.testing.assert_array_equal(cd_end[sure], (h0 @ W.T > 0)[sure])
    sure = np.abs(pcd_end @ W) >= 30
    np.testing.assert_array_equal(pcd_h[sure], (pcd_end @ W > 0)[sure])
    ph0, phk = _sigmoid(v @ W), _sigmoid(cd_end @ W)
    np.testing.assert_allclose(gW, -(v.T @ ph0 - cd_end.T @ phk) / 20, atol=1e-12)
    np.testing.assert_allclose(ghb, -(ph0.mean(0) - phk.mean(0)), atol=1e-12)
    np.testing.assert_allclose(gvb, -(v.mean(0) - cd_end.mean(0)), atol=1e-12)
    np.testing.assert_allclose(pcd_gW, -(v.T @ ph0) / 20 + (pcd_end.T @ _sigmoid(pcd_end @ W)) / 20, atol=1e-12)
    # train_pcd, drawing the same numbers, moves the persistent chain to the chain's last hidden
    # sample
    m.params["__rng__"] = key
    m.train_pcd(X)
    np.testing.assert_array_equal(m.params["chain"], pcd_h)


def test_dae_update_is_the_tutorials_given_the_same_corruption():
    with open(os.path.join(EXAMPLES, "dae.flow")) as f:
        src = f.read() + "\nfn debug(X) -> tilde_x, cost, gW, gb, gb_prime\n"
    m = flowml.loads(src, backend="reference")
    X = _digits(slice(0, 200))
    x = X / 16
    W, b, bp = (m.params[k] for k in ("W", "b", "b_prime"))
    tilde, cost, gW, gb, gbp = m.debug(X)
    kept = tilde[x != 0] / x[x != 0]
    assert set(np.unique(kept)) <= {0.0, 1.0} and abs((kept == 0).mean() - 0.3) < 0.05
    y = _sigmoid(tilde @ W + b)
    a = y @ W.T + bp
    z = _sigmoid(a)
    np.testing.assert_allclose(cost, np.mean(np.sum(np.logaddexp(0, a) - x * a, axis=1)), rtol=1e-12)
    da = (z - x) / len(x)
    dy = (da @ W) * y * (1 - y)
    np.testing.assert_allclose(gW, da.T @ y + tilde.T @ dy, atol=1e-12)
    np.testing.assert_allclose(gb, dy.sum(0), atol=1e-12)
    np.testing.assert_allclose(gbp, da.sum(0), atol=1e-12)


def test_numpy_references_run_and_learn():
    rbm, dae = _module("reference/rbm_numpy.py"), _module("reference/dae_numpy.py")
    X = np.load(DATA)["X"].astype(np.float64) / 16
    train_x, test_x = X[:200], X[1200:1300]
    for method, k in (("cd", 1), ("pcd", 3)):
        hist, _ = rbm.train(method, k, epochs=3, train_x=train_x, test_x=test_x, verbose=False)
        assert hist[-1][0] < hist[0][0] and hist[-1][1] < 25
    hist, _ = dae.train(epochs=3, train_x=train_x, test_x=test_x, verbose=False)
    assert hist[-1][0] < hist[0][0] and hist[-1][1] < 25
