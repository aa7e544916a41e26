"""W9: the zoo's LeNet training step (examples/lenet.flow: two conv + max-pool + tanh layers, a
tanh layer, softmax; f64), batch 20, SGD lr 0.1: flowml against jax.jit of the same step
(`value_and_grad` and the updates in one jitted function), torch eager and torch.compile (the
loss and its gradients compiled, the updates eager).

    python bench/w9.py                            # every peer importable here (flowml, jax, torch)
    python bench/w9.py --peers flowml --backend reference
    /work/benchvenv/bin/python bench/w9.py --steps 500 --repeats 7
    FLOWML_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 \\
      XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" python bench/w9.py

Every peer starts from the same params (flowml's initializers, seed 0) and walks the same
mini-batches (rows of examples/data/digits.npz in order, 20 at a time). Each peer is checked
first: its costs and params after three steps equal flowml's (rtol 1e-9). Then `--steps` steps
are timed, best of `--repeats`; reported in µs per step (wall clock, and the process's CPU time:
on a shared machine the second is the steadier) and steps/s. Not a `bench/run.py` workload yet.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if __package__ in (None, ""):  # run as a script: this checkout's flowml, not an installed one
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.join(REPO, "bench")]
    sys.path.insert(0, REPO)
LENET = os.path.join(REPO, "examples", "lenet.flow")
DATA = os.path.join(REPO, "examples", "data", "digits.npz")
BATCH, LR, ROWS = 20, 0.1, 1200


def batches():
    d = np.load(DATA)
    X, y = d["X"].astype(np.float64)[:ROWS], d["y"].astype(np.int64)[:ROWS]
    return [(X[j:j + BATCH], y[j:j + BATCH]) for j in range(0, ROWS, BATCH)]


def initial_params() -> dict[str, np.ndarray]:
    import flowml
    model = flowml.load(LENET, backend="reference", seed=0)
    return {name: np.array(model.params[name]) for name in model.params}


class FlowmlPeer:
    def __init__(self, params, data, backend):
        import flowml
        self.model = flowml.load(LENET, backend=backend, seed=0)
        for name, value in params.items():
            self.model.params[name] = value
        self.data = data

    def step(self, i) -> float:
        return float(self.model.train(*self.data[i % len(self.data)]))

    def params(self):
        return {name: np.array(self.model.params[name]) for name in self.model.params}


class JaxPeer:
    def __init__(self, params, data, backend):
        import jax
        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp
        from jax import lax

        def conv(x, w):
            return lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=("NCHW", "OIHW", "NCHW"))

        def pool(h):
            return lax.reduce_window(h, -jnp.inf, lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")

        def cost(p, X, y):  # lenet.flow, line by line
            x = (X / 16).reshape(-1, 1, 8, 8)
            h0 = jnp.tanh(pool(conv(x, p["W0"])) + p["c0"])
            h1 = jnp.tanh(pool(conv(h0, p["W1"])) + p["c1"])
            h2 = jnp.tanh(h1.reshape(-1, 50) @ p["W2"] + p["c2"])
            logits = h2 @ p["W3"] + p["c3"]
            picked = jnp.take_along_axis(logits, y[:, None], axis=1)[:, 0]
            return jnp.mean(jax.nn.logsumexp(logits, axis=1) - picked)

        @jax.jit
        def train(p, X, y):
            c, g = jax.value_and_grad(cost)(p, X, y)
            return c, {k: p[k] - LR * g[k] for k in p}

        self.train = train
        self.p = {k: jnp.asarray(v) for k, v in params.items()}
        self.data = [(jnp.asarray(X), jnp.asarray(y)) for X, y in data]

    def step(self, i) -> float:
        c, self.p = self.train(self.p, *self.data[i % len(self.data)])
        return c

    def sync(self, c):
        return float(c.block_until_ready())

    def params(self):
        return {k: np.asarray(v) for k, v in self.p.items()}


class TorchPeer:
    """torch, eager (autograd), or with `compiled` the loss and its gradients under torch.compile
    (inductor's C++ code for the CPU); the SGD updates in place under no_grad."""

    compiled = False

    def __init__(self, params, data, backend):
        import torch
        import torch.nn.functional as F
        torch.set_num_threads(int(os.environ.get("FLOWML_NUM_THREADS", torch.get_num_threads())))
        self.torch = torch
        self.p = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
        self.data = [(torch.from_numpy(X), torch.from_numpy(y)) for X, y in data]

        def cost(p, X, y):  # lenet.flow, line by line
            x = (X / 16).reshape(-1, 1, 8, 8)
            h0 = torch.tanh(F.max_pool2d(F.conv2d(x, p["W0"]), 2) + p["c0"])
            h1 = torch.tanh(F.max_pool2d(F.conv2d(h0, p["W1"]), 2) + p["c1"])
            h2 = torch.tanh(h1.reshape(-1, 50) @ p["W2"] + p["c2"])
            return F.cross_entropy(h2 @ p["W3"] + p["c3"], y)

        def loss_and_grads(p, X, y):
            c = cost(p, X, y)
            return c, torch.autograd.grad(c, list(p.values()))
        self.loss_and_grads = torch.compile(loss_and_grads, dynamic=False) if self.compiled else loss_and_grads

    def step(self, i) -> float:
        c, grads = self.loss_and_grads(self.p, *self.data[i % len(self.data)])
        with self.torch.no_grad():
            for v, g in zip(self.p.values(), grads):
                v -= LR * g
        return c

    def sync(self, c):
        return float(c.detach())

    def params(self):
        return {k: v.detach().numpy().copy() for k, v in self.p.items()}


class TorchCompilePeer(TorchPeer):
    compiled = True


PEERS = {"flowml": FlowmlPeer, "jax": JaxPeer, "torch": TorchPeer, "torch.compile": TorchCompilePeer}


def available(name) -> bool:
    try:
        __import__({"flowml": "flowml", "jax": "jax", "torch": "torch", "torch.compile": "torch"}[name])
        return True
    except ImportError:
        return False


def check(peer, reference_costs, reference_params, name) -> None:
    costs = [float(getattr(peer, "sync", float)(peer.step(i))) for i in range(3)]
    np.testing.assert_allclose(costs, reference_costs, rtol=1e-9, err_msg=f"{name}: costs")
    for k, v in peer.params().items():
        np.testing.assert_allclose(v, reference_params[k], rtol=1e-9, atol=1e-12, err_msg=f"{name}: param {k}")


def timed(peer, steps, repeats):
    sync = getattr(peer, "sync", float)
    for i in range(10):
        sync(peer.step(i))
    walls, cpus = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        for i in range(steps):
            last = peer.step(i)
        sync(last)
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    return min(walls) / steps * 1e6, min(cpus) / steps * 1e6


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peers", default="flowml,jax,torch,torch.compile")
    ap.add_argument("--backend", default="llvm", help="flowml's backend")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    data, params = batches(), initial_params()
    reference = FlowmlPeer(params, data, "reference")
    ref_costs = [reference.step(i) for i in range(3)]
    ref_params = reference.params()
    rows = []
    for name in args.peers.split(","):
        if not available(name):
            print(f"{name}: not installed, skipped", file=sys.stderr)
            continue
        check(PEERS[name](params, data, args.backend), ref_costs, ref_params, name)
        wall, cpu = timed(PEERS[name](params, data, args.backend), args.steps, args.repeats)
        rows.append((name + (f" ({args.backend})" if name == "flowml" else ""), wall, cpu))
    print(f"W9: LeNet train step, batch {BATCH}, f64; {args.steps} steps, best of {args.repeats}")
    print(f"{'peer':18s} {'us/step':>9s} {'CPU us/step':>12s} {'steps/s':>9s}")
    for name, wall, cpu in rows:
        print(f"{name:18s} {wall:9.0f} {cpu:12.0f} {1e6 / wall:9.0f}")


if __name__ == "__main__":
    main()
