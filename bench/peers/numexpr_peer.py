"""numexpr: the two pure array expressions (W1, W2) only."""

from __future__ import annotations

import numexpr as ne
import numpy as np

from .base import Peer, np_versions


class NumexprPeer(Peer):
    name = "numexpr"

    def __init__(self, threads=1, **opts):
        super().__init__(threads)
        ne.set_num_threads(threads)

    def versions(self):
        return np_versions(ne, np)

    def w1(self, x):
        return lambda: ne.evaluate("log(1 + exp(x)) * (1 / (1 + exp(-x))) + x * x",
                                   local_dict={"x": x})

    def w2(self, x, y):
        return lambda: ne.evaluate("sum((x - y) ** 2)", local_dict={"x": x, "y": y})
