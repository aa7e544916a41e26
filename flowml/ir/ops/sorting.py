"""argsort: the indices that sort each row along one axis. `flowml.ir.lib` builds sort (a gather
of x at argsort(x): differentiable through the gather) on it.

The order is numpy's stable one (kind="stable"): ascending, NaNs last, equal elements in the
order they come, so every backend gives the same indices whatever sort it runs."""

from __future__ import annotations

import numpy as np

from ..graph import ShapeError
from ..types import DTYPES, TensorType
from .core import Op


class Argsort(Op):
    """The indices (i64) sorting x along `axis` (a non-negative int). No derivative: indices are
    piecewise constant."""

    def __init__(self):
        super().__init__("argsort", impl=lambda x, axis: np.argsort(x, axis=axis, kind="stable"),
                         verb="sort")

    def infer(self, types, attrs):
        (t,) = types
        if t.ndim == 0 or not 0 <= attrs["axis"] < t.ndim:
            raise ShapeError(f"argsort: axis {attrs['axis']} is out of range for {t}")
        return TensorType(DTYPES["i64"], t.shape)


argsort = Argsort()
