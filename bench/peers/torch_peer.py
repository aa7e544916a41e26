"""PyTorch: eager mode with autograd; torch.func (jvp of grad) for the HVP; and, as its own
column, torch.compile (inductor) for the MLP training step."""

from __future__ import annotations

import numpy as np
import torch

from .base import Peer, np_versions

LR, L2 = 0.01, 1e-4


def mlp_loss(params, x, y):
    W1, b1, W2, b2 = params
    h = torch.tanh(x @ W1 + b1)
    logp = torch.log_softmax(h @ W2 + b2, dim=1)
    return -logp[torch.arange(x.shape[0]), y].mean() + L2 * ((W1 ** 2).sum() + (W2 ** 2).sum())


class TorchPeer(Peer):
    name = "torch"

    def __init__(self, threads=1, **opts):
        super().__init__(threads)
        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:                       # already set in this process
            pass

    def versions(self):
        return np_versions(torch, np)

    def w1(self, x):
        t = torch.from_numpy(x)
        return lambda: torch.log(1 + torch.exp(t)) * (1 / (1 + torch.exp(-t))) + t * t

    def w2(self, x, y):
        a, b = torch.from_numpy(x), torch.from_numpy(y)
        return lambda: torch.sum((a - b) ** 2)

    def w3(self, d):
        x, y = torch.from_numpy(d["x"]), torch.from_numpy(d["y"])
        w = torch.tensor(d["w"], requires_grad=True)
        b = torch.tensor(float(d["b"]), dtype=torch.float64, requires_grad=True)

        def step():
            p_1 = 1 / (1 + torch.exp(-(x @ w) - b))
            prediction = p_1 > 0.5
            xent = -y * torch.log(p_1) - (1 - y) * torch.log(1 - p_1)
            cost = xent.mean() + 0.01 * (w ** 2).sum()
            gw, gb = torch.autograd.grad(cost, (w, b))
            with torch.no_grad():
                w.sub_(0.1 * gw)
                b.sub_(0.1 * gb)
            return prediction, xent.detach()
        return step

    def _params(self, d, requires_grad=True):
        return [torch.tensor(d[k], requires_grad=requires_grad) for k in ("W1", "b1", "W2", "b2")]

    def _step(self, loss, d):
        x, y, params = torch.from_numpy(d["x"]), torch.from_numpy(d["y"]), self._params(d)

        def step():
            cost = loss(params, x, y)
            grads = torch.autograd.grad(cost, params)
            with torch.no_grad():
                for p, g in zip(params, grads):
                    p.sub_(LR * g)
            return cost.detach()
        return step

    def w4(self, d):
        return self._step(mlp_loss, d)

    def w5(self):
        def f(a, b):
            return a + b
        return f, (torch.tensor(1.5, dtype=torch.float64), torch.tensor(2.5, dtype=torch.float64))

    def w7(self, d):
        from torch.func import grad, jvp
        params = tuple(self._params(d, requires_grad=False))
        vs = tuple(torch.from_numpy(d[k]) for k in ("v1", "v2", "v3", "v4"))
        x, y = torch.from_numpy(d["x"]), torch.from_numpy(d["y"])
        g = grad(mlp_loss)
        return lambda: jvp(lambda p: g(p, x, y), (params,), (vs,))[1]


    def w8(self, d):
        """The LSTM unrolled eagerly (autograd records the 50 steps), then backward."""
        Wx, Wh, b = (torch.from_numpy(d[k]).requires_grad_() for k in ("Wx", "Wh", "b"))
        xs, ys = torch.from_numpy(d["xs"]), torch.from_numpy(d["ys"])
        n = Wh.shape[0]

        def step():
            h = c = torch.zeros(xs.shape[1], n)
            hs = []
            for x in xs:
                z = x @ Wx + h @ Wh + b
                i, f, o = (torch.sigmoid(z[:, k * n:(k + 1) * n]) for k in range(3))
                c = f * c + i * torch.tanh(z[:, 3 * n:])
                h = o * torch.tanh(c)
                hs.append(h)
            loss = ((torch.stack(hs) - ys) ** 2).mean()
            return (loss, *torch.autograd.grad(loss, (Wx, Wh, b)))
        return step


    def w11(self, d):
        a, b, s, a4, b4 = (torch.from_numpy(d[k]) for k in ("a", "b", "s", "a4", "b4"))
        return {"solve": lambda: torch.linalg.solve(a, b), "cholesky": lambda: torch.linalg.cholesky(s),
                "slogdet": lambda: torch.linalg.slogdet(a)[1], "eigh": lambda: torch.linalg.eigh(s),
                "batch": lambda: torch.linalg.solve(a4, b4)}


class TorchCompilePeer(TorchPeer):
    """torch.compile(mlp_loss) (inductor, CPU C++ codegen): forward and backward compiled,
    the four SGD updates eager. Compiling happens in the warm-up calls."""

    name = "torch.compile"

    def __init__(self, threads=1, **opts):
        super().__init__(threads)
        import torch._inductor.config as inductor
        inductor.compile_threads = 1

    def w4(self, d):
        return self._step(torch.compile(mlp_loss, dynamic=False), d)

    def supports(self, workload):
        return workload in ("W4", "R")  # R: W4's memory
