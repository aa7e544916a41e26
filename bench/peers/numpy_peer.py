"""numpy, with hand-written gradients (and a hand-written R-op for the HVP)."""

from __future__ import annotations

import numpy as np

from .base import Peer, np_versions

LR, L2 = 0.01, 1e-4


def mlp_grads(x, y, W1, b1, W2, b2):
    """Cost and gradients of the MLP's loss, plus what the R-op needs."""
    n = x.shape[0]
    rows = np.arange(n)
    h = np.tanh(x @ W1 + b1)
    z = h @ W2 + b2
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    s = e.sum(axis=1, keepdims=True)
    cost = -(z[rows, y] - np.log(s[:, 0])).mean() + L2 * ((W1 * W1).sum() + (W2 * W2).sum())
    p = e / s
    dz = p.copy()
    dz[rows, y] -= 1
    dz /= n
    dh = dz @ W2.T
    da1 = dh * (1 - h * h)
    grads = (x.T @ da1 + 2 * L2 * W1, da1.sum(axis=0), h.T @ dz + 2 * L2 * W2, dz.sum(axis=0))
    return cost, grads, (h, p, dz, dh)


def mlp_hvp(x, y, W1, b1, W2, b2, V1, c1, V2, c2):
    """H·v by the R-op of the backward pass (Pearlmutter), forward over reverse."""
    n = x.shape[0]
    _, _, (h, p, dz, dh) = mlp_grads(x, y, W1, b1, W2, b2)
    g = 1 - h * h
    Rh = g * (x @ V1 + c1)
    Rz = Rh @ W2 + h @ V2 + c2
    Rdz = p * (Rz - (p * Rz).sum(axis=1, keepdims=True)) / n
    Rdh = Rdz @ W2.T + dz @ V2.T
    Rda1 = Rdh * g - 2 * dh * h * Rh
    return (x.T @ Rda1 + 2 * L2 * V1, Rda1.sum(axis=0),
            Rh.T @ dz + h.T @ Rdz + 2 * L2 * V2, Rdz.sum(axis=0))


def logreg_step(x, y, w, b):
    p_1 = 1 / (1 + np.exp(-(x @ w) - b))
    prediction = p_1 > 0.5
    xent = -y * np.log(p_1) - (1 - y) * np.log(1 - p_1)
    dz = (p_1 - y) / x.shape[0]                  # d mean(xent) / dz, simplified by hand
    gw = x.T @ dz + 0.02 * w
    gb = dz.sum()
    return w - 0.1 * gw, b - 0.1 * gb, prediction, xent


class NumpyPeer(Peer):
    name = "numpy"

    def __init__(self, threads=1, **opts):
        super().__init__(threads)
        np.seterr(all="ignore")                  # the naive logreg overflows by design

    def versions(self):
        return np_versions(np)

    def w1(self, x):
        return lambda: np.log(1 + np.exp(x)) * (1 / (1 + np.exp(-x))) + x * x

    def w2(self, x, y):
        return lambda: np.sum((x - y) ** 2)

    def w3(self, d):
        x, y, state = d["x"], d["y"], [d["w"].copy(), d["b"]]

        def step():
            state[0], state[1], prediction, xent = logreg_step(x, y, *state)
            return prediction, xent
        return step

    def w4(self, d):
        x, y = d["x"], d["y"]
        params = [d[k].copy() for k in ("W1", "b1", "W2", "b2")]

        def step():
            cost, grads, _ = mlp_grads(x, y, *params)
            for p, g in zip(params, grads):
                p -= LR * g
            return cost
        return step

    def w5(self):
        def f(a, b):
            return a + b
        return f, (np.float64(1.5), np.float64(2.5))

    def w7(self, d):
        args = [d[k] for k in ("x", "y", "W1", "b1", "W2", "b2", "v1", "v2", "v3", "v4")]
        return lambda: mlp_hvp(*args)

    def w11(self, d):
        """scipy.linalg for the big matrices (what the floor compares with), numpy's batched
        solve for the small ones."""
        import scipy.linalg
        a, b, s, a4, b4 = (d[k] for k in ("a", "b", "s", "a4", "b4"))
        return {"solve": lambda: scipy.linalg.solve(a, b, check_finite=False),
                "cholesky": lambda: scipy.linalg.cholesky(s, lower=True, check_finite=False),
                "slogdet": lambda: np.linalg.slogdet(a),
                "eigh": lambda: scipy.linalg.eigh(s, check_finite=False),
                "batch": lambda: np.linalg.solve(a4, b4)}
