"""Every installed peer computes the same thing as numpy's hand-written version (and numpy's
hand-written HVP matches finite differences of its gradient). Run from the repository root:

    /work/benchvenv/bin/python -m pytest bench/tests -q
"""

from __future__ import annotations

import numpy as np
import pytest

from bench import data, peers
from bench.peers import numpy_peer

NAMES = ["numpy", "numexpr", "numba", "pytensor", "jax", "torch", "flowml"]


def make(name):
    try:
        opts = {"backend": "reference"} if name == "flowml" else {}
        return peers.create(name, threads=1, **opts)
    except ImportError as exc:
        pytest.skip(f"{name} not installed: {exc}")


def close(a, b, rtol):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape
    scale = max(np.abs(b).max(), 1e-30)
    assert np.abs(a - b).max() <= rtol * scale, np.abs(a - b).max() / scale


@pytest.fixture(scope="module")
def ref():
    return make("numpy")


@pytest.mark.parametrize("name", NAMES)
def test_w1_w2(name, ref):
    peer = make(name)
    x, y = data.w2(1000)
    close(peer.block(peer.w1(x)()), ref.w1(x)(), 1e-5)
    close(peer.block(peer.w2(x, y)()), data.w2_reference(x, y), 1e-5)


@pytest.mark.parametrize("name", [n for n in NAMES if n != "numexpr"])
def test_w3_two_steps(name, ref):
    peer, d = make(name), data.w3()
    d["x"], d["w"] = d["x"] * 0.01, d["w"] * 0.1          # stay away from saturation (NaN)
    mine, theirs = peer.w3(d), ref.w3(d)
    for _ in range(2):
        (p1, x1), (p2, x2) = peer.block(mine()), theirs()
        assert np.array_equal(np.asarray(p1), p2)
        close(x1, x2, 1e-9)


@pytest.mark.parametrize("name", [n for n in NAMES if n != "numexpr"])
def test_w4_two_steps(name, ref):
    peer, d = make(name), data.w4(8)
    mine, theirs = peer.w4(d), ref.w4(d)
    for _ in range(2):
        close(peer.block(mine()), theirs(), 1e-5)


@pytest.mark.parametrize("name", [n for n in NAMES if n != "numexpr"])
def test_w7_hvp(name, ref):
    peer, d = make(name), data.w7(8)
    for a, b in zip(peer.block(peer.w7(d)()), ref.w7(d)()):
        close(a, b, 2e-3)


def test_numpy_hvp_matches_finite_differences():
    d = {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in data.w7(8).items()}
    params = [d[k] for k in data.PARAM_NAMES]
    vs = [d[f"v{i}"] for i in range(1, 5)]
    eps = 1e-6
    plus = numpy_peer.mlp_grads(d["x"], d["y"], *[p + eps * v for p, v in zip(params, vs)])[1]
    minus = numpy_peer.mlp_grads(d["x"], d["y"], *[p - eps * v for p, v in zip(params, vs)])[1]
    hv = numpy_peer.mlp_hvp(d["x"], d["y"], *params, *vs)
    for h, gp, gm in zip(hv, plus, minus):
        close(h, (gp - gm) / (2 * eps), 1e-5)


@pytest.mark.parametrize("name", ["jax", "torch"])
def test_w8_lstm_loss_and_gradients(name):
    """The peers with W8 give flowml's (reference backend) loss and BPTT gradients."""
    peer, d = make(name), data.w8()
    want = make("flowml").w8(d)()
    got = peer.block(peer.w8(d)())
    if name == "jax":
        got = (got[0], *got[1])  # (value, (the gradients))
    got = [np.asarray(g.detach() if hasattr(g, "detach") else g) for g in got]
    assert len(got) == len(want) == 4
    for a, b in zip(got, want):
        close(a, b, 1e-4)


@pytest.mark.parametrize("name", ["jax", "torch", "flowml"])
def test_w11_linear_algebra(name, ref):
    """The peers with W11 compute numpy/scipy's solve, cholesky, log|det|, eigenvalues (and
    eigenvectors up to sign) and the small batched solves."""
    d = data.w11()
    want = {k: f() for k, f in ref.w11(d).items()}
    peer = make(name)
    got = {k: peer.block(f()) for k, f in peer.w11(d).items()}
    as_np = lambda v: np.asarray(v.detach() if hasattr(v, "detach") else v)  # noqa: E731
    for k in ("solve", "cholesky", "batch"):
        close(as_np(got[k]), want[k], 1e-9)
    close(as_np(got["slogdet"]), want["slogdet"][1], 1e-12)
    w, v = (as_np(x) for x in got["eigh"])
    close(w, want["eigh"][0], 1e-10)
    close(np.abs(v), np.abs(want["eigh"][1]), 1e-6)
