"""flowml: the workloads are the .flow programs in bench/workloads/, run on one backend."""

from __future__ import annotations

import os

import numpy as np

from .base import Peer, np_versions

WORKLOADS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "workloads")
PROBE = "input a : f64\nfn f(a) -> a + 1\n"


class FlowmlPeer(Peer):
    def __init__(self, threads=1, backend="llvm", fallback=None, probe=True, **opts):
        super().__init__(threads)
        import flowml
        self.flowml = flowml
        try:
            if probe:  # (W6's child skips it: its backend was probed by its parent, and the probe
                # would do in "import" what W6 times as the build)
                flowml.loads(PROBE, backend=backend).f(1.0)
        except Exception as exc:
            if not fallback:
                raise RuntimeError(f"flowml backend {backend!r} unavailable: {exc}") from exc
            first = str(exc).splitlines()[0]
            self.notes.append(f"backend {backend!r} unavailable ({first}); fell back to {fallback!r}")
            backend = fallback
        self.backend = backend
        self.name = f"flowml[{backend}]"

    def versions(self):
        return {"flowml": self.flowml.__version__, "backend": self.backend, **np_versions(np)}

    def cache_env(self, cache_dir):
        # The llvm backend's object-code cache (flowml/backends/llvm/cache.py); W6 reports no
        # warm number when a backend writes nothing there.
        return {"FLOWML_CACHE_DIR": cache_dir}

    def load(self, name, **params):
        model = self.flowml.load(os.path.join(WORKLOADS, name), backend=self.backend)
        model.params.update(params)
        return model

    def w1(self, x):
        f = self.load("w1.flow").w1
        return lambda: f(x)

    def w2(self, x, y):
        f = self.load("w2.flow").w2
        return lambda: f(x, y)

    def w3(self, d):
        train, x, y = self.load("logreg.flow", w=d["w"], b=d["b"]).train, d["x"], d["y"]
        return lambda: train(x, y)

    def _mlp(self, d):
        return self.load("mlp.flow", **{k: d[k] for k in ("W1", "b1", "W2", "b2")})

    def w4(self, d):
        train, x, y = self._mlp(d).train, d["x"], d["y"]
        return lambda: train(x, y)

    def w5(self):
        return self.load("w5.flow").f, (np.float64(1.5), np.float64(2.5))

    def w7(self, d):
        hvp = self._mlp(d).hvp
        args = [d[k] for k in ("x", "y", "v1", "v2", "v3", "v4")]
        return lambda: hvp(*args)

    def w8(self, d):
        f = self.load("lstm.flow", **{k: d[k] for k in ("Wx", "Wh", "b")}).value_and_grad
        xs, ys = d["xs"], d["ys"]
        return lambda: f(xs, ys)

    def w11(self, d):
        m = self.load("linalg.flow")
        a, b, s, a4, b4 = (d[k] for k in ("a", "b", "s", "a4", "b4"))
        return {"solve": lambda: m.solve(a, b), "cholesky": lambda: m.cholesky(s),
                "slogdet": lambda: m.slogdet(a), "eigh": lambda: m.eigh(s), "batch": lambda: m.batch(a4, b4)}
