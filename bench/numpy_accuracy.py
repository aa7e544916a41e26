"""The accuracy of flowml's native math functions of issue 15 (log2 ... logaddexp) against numpy
and against the exact value, on 1M random inputs per function and dtype.

    python bench/numpy_accuracy.py [--backend llvm] [--n 1000000]

For each function: the largest relative difference from numpy's result, and the largest error
in ulp against the exact value (numpy evaluated in float64 for f32 inputs, in long double for
f64), beside numpy's own. Results print as a table; nothing is written.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

import flowml  # noqa: E402
from helpers import ulp_distance  # noqa: E402

# name -> (its inputs: x, y in [-20, 20], u in [-1, 1], w in [1, 100], p in [e^-30, e^30]; numpy's)
FUNCTIONS = {"log2": ("p", np.log2), "log10": ("p", np.log10), "tan": ("u", np.tan), "arcsin": ("u", np.arcsin),
             "arccos": ("u", np.arccos), "arctan": ("x", np.arctan), "sinh": ("x", np.sinh), "cosh": ("x", np.cosh),
             "arcsinh": ("x", np.arcsinh), "arccosh": ("w", np.arccosh), "arctanh": ("u", np.arctanh),
             "arctan2": ("xy", np.arctan2), "hypot": ("xy", np.hypot), "logaddexp": ("xy", np.logaddexp)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="llvm")
    ap.add_argument("--n", type=int, default=1_000_000)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    n = args.n
    domain = {"x": rng.uniform(-20, 20, n), "y": rng.uniform(-20, 20, n), "u": rng.uniform(-1, 1, n),
              "w": rng.uniform(1, 100, n), "p": np.exp(rng.uniform(-30, 30, n))}
    print(f"{'dtype':5} {'function':10} {'max rel vs numpy':>17} {'max ulp vs exact':>17} {'numpy own':>10}")
    for dt, npdt, exact_dt in (("f64", np.float64, np.longdouble), ("f32", np.float32, np.float64)):
        exprs = [f"{name}({', '.join(ins)})" for name, (ins, _) in FUNCTIONS.items()]
        src = "".join(f"input {k} : {dt}[N]\n" for k in "xyuwp") + f"fn f(x, y, u, w, p) -> {', '.join(exprs)}\n"
        values = {k: v.astype(npdt) for k, v in domain.items()}
        outs = flowml.loads(src, backend=args.backend).f(*(values[k] for k in "xyuwp"))
        for (name, (ins, fn)), got in zip(FUNCTIONS.items(), outs):
            with np.errstate(all="ignore"):
                want = fn(*(values[c] for c in ins))
                exact = fn(*(values[c].astype(exact_dt) for c in ins)).astype(npdt)
                rel = np.nanmax(np.abs(got.astype(np.float64) - want) / np.maximum(np.abs(want), np.finfo(npdt).tiny))
            print(f"{dt:5} {name:10} {rel:17.2e} {np.max(ulp_distance(got, exact)):17.0f} "
                  f"{np.max(ulp_distance(want, exact)):10.0f}")


if __name__ == "__main__":
    main()
