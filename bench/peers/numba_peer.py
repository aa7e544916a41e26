"""numba: @njit kernels, hand-written gradients. One thread: parallel=False; two threads (W1,
W2 only): parallel=True with prange. cache=True so that W6 has a warm-cache number."""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange

from .base import Peer, np_versions

LR, L2, TWO_L2 = np.float32(0.01), np.float32(1e-4), np.float32(2e-4)   # f32: numba
# has no weak Python scalars, and 2 * f32 would be f64


def _w1(x):
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        v = x[i]
        out[i] = math.log(1 + math.exp(v)) * (1 / (1 + math.exp(-v))) + v * v
    return out


def _w1_par(x):
    out = np.empty_like(x)
    for i in prange(x.shape[0]):
        v = x[i]
        out[i] = math.log(1 + math.exp(v)) * (1 / (1 + math.exp(-v))) + v * v
    return out


def _w2(x, y):
    s = np.float32(0)                          # an f32 accumulator, as an f32 workload asks
    for i in range(x.shape[0]):
        d = x[i] - y[i]
        s += d * d
    return s


def _w2_par(x, y):
    s = np.float32(0)
    for i in prange(x.shape[0]):
        d = x[i] - y[i]
        s += d * d
    return s


# fastmath lets LLVM vectorize the f32 reduction (reassociation), as a hand-tuned loop would.
w1_seq, w2_seq = njit(_w1), njit(fastmath=True)(_w2)
w1_par, w2_par = njit(parallel=True)(_w1_par), njit(parallel=True, fastmath=True)(_w2_par)


@njit(cache=True)
def logreg_step(x, y, w, b):
    n = x.shape[0]
    p_1 = 1 / (1 + np.exp(-(x @ w) - b))
    prediction = p_1 > 0.5
    xent = -y * np.log(p_1) - (1 - y) * np.log(1 - p_1)
    dz = (p_1 - y) / n
    gw = x.T @ dz + 0.02 * w
    gb = dz.sum()
    return w - 0.1 * gw, b - 0.1 * gb, prediction, xent


@njit(cache=True)
def mlp_grads(x, y, W1, b1, W2, b2):
    """Cost, gradients and the intermediates that the R-op needs."""
    n, k = x.shape[0], W2.shape[1]
    h = np.tanh(x @ W1 + b1)
    z = h @ W2 + b2
    p = np.empty_like(z)
    nll = 0.0
    for i in range(n):
        m = z[i].max()
        s = 0.0
        for j in range(k):
            p[i, j] = math.exp(z[i, j] - m)
            s += p[i, j]
        for j in range(k):
            p[i, j] /= s
        nll -= z[i, y[i]] - m - math.log(s)
    cost = np.float32(nll / n) + L2 * ((W1 * W1).sum() + (W2 * W2).sum())
    dz = p.copy()
    for i in range(n):
        dz[i, y[i]] -= 1
    dz /= np.float32(n)
    dh = dz @ W2.T
    da1 = dh * (1 - h * h)
    gW1 = x.T @ da1 + TWO_L2 * W1
    gW2 = h.T @ dz + TWO_L2 * W2
    return cost, gW1, da1.sum(axis=0), gW2, dz.sum(axis=0), h, p, dz, dh


@njit(cache=True)
def mlp_step(x, y, W1, b1, W2, b2):
    cost, gW1, gb1, gW2, gb2, _, _, _, _ = mlp_grads(x, y, W1, b1, W2, b2)
    W1 -= LR * gW1
    b1 -= LR * gb1
    W2 -= LR * gW2
    b2 -= LR * gb2
    return cost


@njit(cache=True)
def mlp_hvp(x, y, W1, b1, W2, b2, V1, c1, V2, c2):
    n = x.shape[0]
    _, _, _, _, _, h, p, dz, dh = mlp_grads(x, y, W1, b1, W2, b2)
    g = 1 - h * h
    Rh = g * (x @ V1 + c1)
    Rz = Rh @ W2 + h @ V2 + c2
    Rdz = p * (Rz - (p * Rz).sum(axis=1).reshape((n, 1))) / np.float32(n)
    Rdh = Rdz @ W2.T + dz @ V2.T
    Rda1 = Rdh * g - np.float32(2) * dh * h * Rh
    return (x.T @ Rda1 + TWO_L2 * V1, Rda1.sum(axis=0),
            Rh.T @ dz + h.T @ Rdz + TWO_L2 * V2, Rdz.sum(axis=0))


@njit
def add(a, b):
    return a + b


class NumbaPeer(Peer):
    name = "numba"

    def __init__(self, threads=1, **opts):
        super().__init__(threads)
        numba.set_num_threads(threads)
        np.seterr(all="ignore")

    def versions(self):
        return np_versions(numba, np)

    def cache_env(self, cache_dir):
        return {"NUMBA_CACHE_DIR": cache_dir}

    def w1(self, x):
        f = w1_seq if self.threads == 1 else w1_par
        return lambda: f(x)

    def w2(self, x, y):
        f = w2_seq if self.threads == 1 else w2_par
        return lambda: f(x, y)

    def w3(self, d):
        x, y, state = d["x"], d["y"], [d["w"].copy(), d["b"]]

        def step():
            state[0], state[1], prediction, xent = logreg_step(x, y, *state)
            return prediction, xent
        return step

    def w4(self, d):
        args = [d[k].copy() for k in ("x", "y", "W1", "b1", "W2", "b2")]
        return lambda: mlp_step(*args)

    def w5(self):
        return add, (np.float64(1.5), np.float64(2.5))

    def w7(self, d):
        args = [d[k] for k in ("x", "y", "W1", "b1", "W2", "b2", "v1", "v2", "v3", "v4")]
        return lambda: mlp_hvp(*args)
