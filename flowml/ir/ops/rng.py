"""Random numbers: the `random` op, drawn from a counter-based Philox stream."""

from __future__ import annotations

import numpy as np

from ..graph import ShapeError
from ..types import DTYPES, TensorType
from .core import Op, env_shape


class Random(Op):
    """Standard random numbers: `dist` "uniform" (in [0, 1)) or "normal", of `shape` and float
    `dtype`, from the counter-based Philox stream of operand `key` (i64[2]: the model's seed and
    call counter) at this op's `site`. No derivative: the key is an integer."""

    needs_env = True

    def __init__(self):
        super().__init__("random", jvp=lambda ts, y, key, **attrs: None, verb="draw")

    def infer(self, types, attrs):
        (key,) = types
        if key.shape != (2,) or key.dtype != DTYPES["i64"]:
            raise ShapeError(f"a random op's key is i64[2], not {key}")
        if attrs["dtype"] not in (DTYPES["f32"], DTYPES["f64"]):
            raise ShapeError(f"random numbers are f32 or f64, not {attrs['dtype']}")
        return TensorType(attrs["dtype"], tuple(attrs["shape"]))

    def impl(self, key, dist, shape, dtype, site, env):
        from .. import philox
        concrete = env_shape(shape, env)
        size = int(np.prod(concrete, dtype=np.int64))
        w0, w1, w2, w3 = philox.words(size, int(key[0]), site, int(key[1]))
        out = philox.uniform(w0, w1, dtype) if dist == "uniform" else philox.normal(w2, w3, dtype)
        return out.reshape(concrete)


random = Random()
