"""The functions a .flow program can call, and the param initializers.

Built-ins are the library functions of `flowml.ir.lib` under numpy's names; the ones that make
new arrays from nothing (zeros, arange, ...) are marked `needs_graph` and get the graph first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..ir.ops import collective as C
from ..ir import lib as L


def _with_graph(fn):
    fn.needs_graph = True
    return fn


@_with_graph
def zeros(graph, shape, dtype="f64"):
    return L.zeros(graph, shape, dtype)


@_with_graph
def ones(graph, shape, dtype="f64"):
    return L.ones(graph, shape, dtype)


@_with_graph
def full(graph, shape, value, dtype=None):
    return L.full(graph, shape, value, dtype)


@_with_graph
def arange(graph, start, stop=None, step=1):
    return L.arange(graph, start, stop, step)


@_with_graph
def eye(graph, N, M=None, k=0, dtype="f64"):
    return L.eye(graph, N, M, k, dtype)


@_with_graph
def linspace(graph, start, stop, num=50, endpoint=True, dtype=None):
    return L.linspace(graph, start, stop, num, endpoint, dtype)


def _with_rng(fn):
    """Random builtins get the model's random-stream key first (see flowml/program.py)."""
    fn.needs_rng = True
    return fn


@_with_rng
def uniform(key, low=0.0, high=1.0, shape=(), dtype="f64"):
    return L.uniform(key, low, high, shape, dtype)


@_with_rng
def normal(key, mean=0.0, std=1.0, shape=(), dtype="f64"):
    return L.normal(key, mean, std, shape, dtype)


@_with_rng
def bernoulli(key, p, shape=None, dtype=None):
    return L.bernoulli(key, p, shape, dtype)


@_with_rng
def randint(key, low, high, shape=()):
    return L.randint(key, low, high, shape)


def concatenate(*xs, axis=0):
    """concatenate((a, b), axis=0) as in numpy, or concatenate(a, b, axis=0)."""
    return L.concatenate(xs[0] if len(xs) == 1 and isinstance(xs[0], tuple) else xs, axis)


def stack(*xs, axis=0):
    return L.stack(xs[0] if len(xs) == 1 and isinstance(xs[0], tuple) else xs, axis)


BUILTINS = {name: getattr(L, name) for name in L.__all__ if name != "Var"}
BUILTINS.update(zeros=zeros, ones=ones, full=full, arange=arange, eye=eye, linspace=linspace,
                concatenate=concatenate, stack=stack,
                uniform=uniform, normal=normal, bernoulli=bernoulli, randint=randint)
# Collectives across the ranks of a data-parallel run (identities in one process).
BUILTINS.update(allreduce=C.allreduce, allgather=C.allgather, broadcast=C.broadcast,
                rank=_with_graph(C.rank), world_size=_with_graph(C.world_size))
# numpy's, C's and JAX's other names for built-ins, suggested for an unknown name
ALIASES = {"amax": "max", "amin": "min", "absolute": "abs", "fabs": "abs", "clamp": "clip", "concat": "concatenate",
           "around": "round", "asin": "arcsin", "acos": "arccos", "atan": "arctan", "atan2": "arctan2",
           "asinh": "arcsinh", "acosh": "arccosh", "atanh": "arctanh", "pow": "power", "isneginf": "isinf",
           "isposinf": "isinf", "average": "mean", "variance": "var", "stddev": "std"}
# Derivatives are handled by the builder (they transform the graph).
for _name in ("grad", "rop", "lop", "jacobian", "hessian", "hessian_vector", "scan", "iterate"):
    BUILTINS[_name] = None


def _normal(rng, shape, mean=0.0, std=1.0):
    return rng.normal(mean, std, size=shape)


def _uniform(rng, shape, low=0.0, high=1.0):
    return rng.uniform(low, high, size=shape)


def _zeros(rng, shape):
    return np.zeros(shape)


def _ones(rng, shape):
    return np.ones(shape)


# `param w : f64[784, 10] = normal(0, 0.01)`: each draws the param's shape from its seeded stream.
INITIALIZERS = {"normal": _normal, "uniform": _uniform, "zeros": _zeros, "ones": _ones}


@dataclass(frozen=True)
class Draw:
    """A param's initializer `normal(...)` / `uniform(...)` / `zeros` / `ones`: rng -> its value.
    (Data, not a closure: a built program is pickled by the warm model cache, flowml/modelcache.py,
    and unpickling it imports this light module, not the builder.)"""
    kind: str
    shape: tuple
    kwargs: dict
    dtype: Any

    def __call__(self, rng) -> np.ndarray:
        return np.asarray(INITIALIZERS[self.kind](rng, self.shape, **self.kwargs), dtype=self.dtype)


@dataclass(frozen=True)
class Constant:
    """A param's constant initial value, broadcast to its shape."""
    value: np.ndarray
    dtype: Any

    def __call__(self, rng) -> np.ndarray:
        return np.array(self.value, dtype=self.dtype)
