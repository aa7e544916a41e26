"""JAX: jit, grad, and jvp-of-grad for the HVP (forward over reverse). Float64 is enabled for
W3/W5; the f32 workloads pass f32 arrays (Python scalars are weak, so they stay f32)."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from .base import Peer, np_versions

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_platforms", "cpu")
if os.environ.get("JAX_COMPILATION_CACHE_DIR"):     # W6: the persistent cache, for every entry
    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)

LR, L2 = 0.01, 1e-4


def logreg_loss(w, b, x, y):
    p_1 = 1 / (1 + jnp.exp(-(x @ w) - b))
    xent = -y * jnp.log(p_1) - (1 - y) * jnp.log(1 - p_1)
    return xent.mean() + 0.01 * (w ** 2).sum(), (p_1 > 0.5, xent)


@jax.jit
def logreg_train(w, b, x, y):
    (_, (prediction, xent)), (gw, gb) = jax.value_and_grad(
        logreg_loss, argnums=(0, 1), has_aux=True)(w, b, x, y)
    return w - 0.1 * gw, b - 0.1 * gb, prediction, xent


def mlp_loss(params, x, y):
    W1, b1, W2, b2 = params
    h = jnp.tanh(x @ W1 + b1)
    logp = jax.nn.log_softmax(h @ W2 + b2, axis=1)
    return -logp[jnp.arange(x.shape[0]), y].mean() + L2 * ((W1 ** 2).sum() + (W2 ** 2).sum())


@jax.jit
def mlp_train(params, x, y):
    cost, grads = jax.value_and_grad(mlp_loss)(params, x, y)
    return tuple(p - LR * g for p, g in zip(params, grads)), cost


@jax.jit
def mlp_hvp(params, vs, x, y):
    return jax.jvp(lambda p: jax.grad(mlp_loss)(p, x, y), (params,), (vs,))[1]


def lstm_loss(params, xs, ys):
    Wx, Wh, b = params
    n = Wh.shape[0]

    def cell(carry, x):
        h, c = carry
        z = x @ Wx + h @ Wh + b
        i, f, o = (jax.nn.sigmoid(z[:, k * n:(k + 1) * n]) for k in range(3))
        c1 = f * c + i * jnp.tanh(z[:, 3 * n:])
        h1 = o * jnp.tanh(c1)
        return (h1, c1), h1
    h0 = jnp.zeros((xs.shape[1], n), xs.dtype)
    _, hs = jax.lax.scan(cell, (h0, h0), xs)
    return ((hs - ys) ** 2).mean()


lstm_value_and_grad = jax.jit(jax.value_and_grad(lstm_loss))


class JaxPeer(Peer):
    name = "jax"

    def versions(self):
        import jaxlib
        return np_versions(jax, jaxlib, np)

    def block(self, out):
        return jax.block_until_ready(out)

    def cache_env(self, cache_dir):
        return {"JAX_COMPILATION_CACHE_DIR": cache_dir}

    def w1(self, x):
        f = jax.jit(lambda x: jnp.log(1 + jnp.exp(x)) * (1 / (1 + jnp.exp(-x))) + x * x)
        xj = jnp.asarray(x)
        return lambda: f(xj)

    def w2(self, x, y):
        f = jax.jit(lambda x, y: jnp.sum((x - y) ** 2))
        xj, yj = jnp.asarray(x), jnp.asarray(y)
        return lambda: f(xj, yj)

    def w3(self, d):
        x, y = jnp.asarray(d["x"]), jnp.asarray(d["y"])
        state = [jnp.asarray(d["w"]), jnp.asarray(d["b"])]

        def step():
            state[0], state[1], prediction, xent = logreg_train(state[0], state[1], x, y)
            return prediction, xent
        return step

    def w4(self, d):
        x, y = jnp.asarray(d["x"]), jnp.asarray(d["y"])
        state = [tuple(jnp.asarray(d[k]) for k in ("W1", "b1", "W2", "b2"))]

        def step():
            state[0], cost = mlp_train(state[0], x, y)
            return cost
        return step

    def w5(self):
        f = jax.jit(lambda a, b: a + b)

        def call(a, b):                        # calls are independent: wait for each
            return f(a, b).block_until_ready()
        return call, (jnp.asarray(np.float64(1.5)), jnp.asarray(np.float64(2.5)))

    def w7(self, d):
        params = tuple(jnp.asarray(d[k]) for k in ("W1", "b1", "W2", "b2"))
        vs = tuple(jnp.asarray(d[k]) for k in ("v1", "v2", "v3", "v4"))
        x, y = jnp.asarray(d["x"]), jnp.asarray(d["y"])
        return lambda: jax.block_until_ready(mlp_hvp(params, vs, x, y))

    def w8(self, d):
        params = tuple(jnp.asarray(d[k]) for k in ("Wx", "Wh", "b"))
        xs, ys = jnp.asarray(d["xs"]), jnp.asarray(d["ys"])
        return lambda: jax.block_until_ready(lstm_value_and_grad(params, xs, ys))

    def w11(self, d):
        a, b, s, a4, b4 = (jnp.asarray(d[k]) for k in ("a", "b", "s", "a4", "b4"))
        ops = {"solve": (jax.jit(jnp.linalg.solve), (a, b)), "cholesky": (jax.jit(jnp.linalg.cholesky), (s,)),
               "slogdet": (jax.jit(lambda m: jnp.linalg.slogdet(m)[1]), (a,)),
               "eigh": (jax.jit(jnp.linalg.eigh), (s,)), "batch": (jax.jit(jnp.linalg.solve), (a4, b4))}
        return {k: (lambda f=f, args=args: jax.block_until_ready(f(*args))) for k, (f, args) in ops.items()}
