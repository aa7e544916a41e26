"""PyTensor, the Theano fork: symbolic gradients, compiled with its C backend (the "cvm" linker
and fast_run rewrites: Theano's FAST_RUN; PyTensor 3's own default is numba), or with
linker="numba" for the pytensor.numba column."""

from __future__ import annotations

import ctypes.util
import os

# PyTensor's C backend calls BLAS directly only when it can link one; pip installs leave
# blas__ldflags empty (and fall back to slow NumPy C-API calls). Link the system OpenBLAS
# (Debian: libopenblas-dev) when there is one and the user has not chosen.
if "blas__ldflags" not in os.environ.get("PYTENSOR_FLAGS", "") and ctypes.util.find_library("openblas"):
    os.environ["PYTENSOR_FLAGS"] = ",".join(
        f for f in (os.environ.get("PYTENSOR_FLAGS"), "blas__ldflags=-lopenblas") if f)

import numpy as np  # noqa: E402
import pytensor  # noqa: E402
import pytensor.tensor as pt  # noqa: E402
from pytensor.compile.mode import Mode  # noqa: E402
from pytensor.gradient import hessian_vector_product  # noqa: E402

from .base import Peer, np_versions  # noqa: E402

LR, L2 = np.float32(0.01), np.float32(1e-4)


def mlp_cost(x, y, W1, b1, W2, b2):
    h = pt.tanh(x @ W1 + b1)
    logp = pt.special.log_softmax(h @ W2 + b2, axis=1)
    return -logp[pt.arange(x.shape[0]), y].mean() + L2 * ((W1 ** 2).sum() + (W2 ** 2).sum())


class PytensorPeer(Peer):
    def __init__(self, threads=1, linker="cvm", **opts):
        super().__init__(threads)
        self.linker = linker
        self.name = "pytensor" if linker == "cvm" else f"pytensor.{linker}"
        self.mode = Mode(linker=linker, optimizer="fast_run")
        if linker == "cvm":
            ldflags = pytensor.config.blas__ldflags
            self.notes.append(f"C backend BLAS: {ldflags}" if ldflags else
                              "C backend without BLAS (NumPy C-API fallback): install libopenblas-dev")

    def versions(self):
        return {**np_versions(pytensor, np), "linker": self.linker}

    def cache_env(self, cache_dir):
        flags = os.environ.get("PYTENSOR_FLAGS", "")
        return {"PYTENSOR_FLAGS": ",".join(f for f in (flags, f"compiledir={cache_dir}") if f),
                "NUMBA_CACHE_DIR": os.path.join(cache_dir, "numba")}

    def function(self, *args, **kw):
        return pytensor.function(*args, mode=self.mode, **kw)

    def w1(self, x):
        v = pt.vector("x", dtype="float32")
        f = self.function([v], pt.log(1 + pt.exp(v)) * (1 / (1 + pt.exp(-v))) + v * v)
        return lambda: f(x)

    def w2(self, x, y):
        a, b = pt.vector("x", dtype="float32"), pt.vector("y", dtype="float32")
        f = self.function([a, b], pt.sum((a - b) ** 2))
        return lambda: f(x, y)

    def w3(self, d):
        # Theano's tutorial, line for line.
        x, y = pt.dmatrix("x"), pt.dvector("y")
        w = pytensor.shared(d["w"].copy(), name="w")
        b = pytensor.shared(np.float64(d["b"]), name="b")
        p_1 = 1 / (1 + pt.exp(-pt.dot(x, w) - b))
        prediction = p_1 > 0.5
        xent = -y * pt.log(p_1) - (1 - y) * pt.log(1 - p_1)
        cost = xent.mean() + 0.01 * (w ** 2).sum()
        gw, gb = pytensor.grad(cost, [w, b])
        train = self.function([x, y], [prediction, xent],
                              updates=((w, w - 0.1 * gw), (b, b - 0.1 * gb)))
        return lambda: train(d["x"], d["y"])

    def _mlp(self, d):
        x, y = pt.matrix("x", dtype="float32"), pt.vector("y", dtype="int64")
        params = [pytensor.shared(d[k].copy(), name=k) for k in ("W1", "b1", "W2", "b2")]
        return x, y, params, mlp_cost(x, y, *params)

    def w4(self, d):
        x, y, params, cost = self._mlp(d)
        grads = pytensor.grad(cost, params)
        train = self.function([x, y], cost, updates=[(p, p - LR * g) for p, g in zip(params, grads)])
        return lambda: train(d["x"], d["y"])

    def w5(self):
        a, b = pt.dscalar("a"), pt.dscalar("b")
        return self.function([a, b], a + b), (np.float64(1.5), np.float64(2.5))

    def w7(self, d):
        x, y, params, cost = self._mlp(d)
        vs = [pt.tensor(f"v{i}", dtype="float32", shape=p.type.shape) for i, p in enumerate(params, 1)]
        f = self.function([x, y, *vs], hessian_vector_product(cost, params, vs))
        args = [d[k] for k in ("x", "y", "v1", "v2", "v3", "v4")]
        return lambda: f(*args)
