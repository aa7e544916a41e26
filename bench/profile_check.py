"""The profiler's floors, measured (issue 20; docs/inspect.md, "Profiling").

    python bench/profile_check.py [--calls 2000] [--rounds 15]

For examples/mlp.flow's train step (batch 20), W3 (bench/workloads/logreg.flow's train, 400 x
784), W4 batch 20 (bench/workloads/mlp.flow, f32) and W5 (a + b on scalars): the sum of the
per-step rows of a profiled call against the time of a call with profiling off (floor, for the
MLP and W3: within 10%), and the time of an ordinary call of a model that was never profiled
against one of a model after a profiled run in the same process (floor, for W4 and W5: within 2%).
Rounds alternate between the three so that a noisy machine disturbs them alike; each number is
the best round's (per call).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flowml  # noqa: E402
from bench import data  # noqa: E402


def mlp():
    rng = np.random.default_rng(0)
    args = (rng.normal(size=(20, 64)), rng.integers(0, 10, 20))
    return "MLP train, batch 20", lambda: flowml.load("examples/mlp.flow", backend="llvm", seed=0).train, args


def _loader(path, params, fn):
    def load():
        m = flowml.load(path, backend="llvm")
        for k, v in params.items():
            m.params[k] = v
        return m.functions[fn]
    return load


def w3():
    d = data.w3()
    return ("W3 logreg train, 400 x 784", _loader("bench/workloads/logreg.flow", {"w": d["w"], "b": d["b"]}, "train"),
            (d["x"], d["y"]))


def w4():
    d = data.w4(20)
    params = {k: d[k] for k in ("W1", "b1", "W2", "b2")}
    return ("W4 MLP 784-500-10 f32 train, batch 20", _loader("bench/workloads/mlp.flow", params, "train"),
            (d["x"], d["y"]))


def w5():
    return "W5 a + b on f64 scalars", _loader("bench/workloads/w5.flow", {}, "f"), (np.float64(1.5), np.float64(2.5))


def per_call(fn, args, calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn(*args)
    return (time.perf_counter() - t0) / calls


def check(name, load, args, calls: int, rounds: int) -> dict:
    never, profiled = load(), load()
    for fn in (never, profiled):
        for _ in range(5):  # warm: the native entry is installed from the third call
            fn(*args)
    off, after, steps, total = [], [], [], []
    for _ in range(rounds):
        off.append(per_call(never, args, calls))
        with flowml.profile() as p:
            per_call(profiled, args, calls)
        (f,) = p.functions
        rows = f.rows()
        steps.append(sum(r.total_s for r in rows if r.kind != "boundary") / f.calls)
        total.append(f.total_ns / 1e9 / f.calls)
        after.append(per_call(profiled, args, calls))
    result = {"workload": name, "off_s": min(off), "steps_s": min(steps), "profiled_total_s": min(total),
              "after_profile_s": min(after)}
    result["steps_vs_off"] = result["steps_s"] / result["off_s"] - 1
    result["after_vs_never"] = result["after_profile_s"] / result["off_s"] - 1
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=2000,
                    help="calls per round (default 2000; W3 and W4 a tenth, W5 ten times more)")
    ap.add_argument("--rounds", type=int, default=15, help="rounds (default 15; the best is reported)")
    a = ap.parse_args(argv)
    ok = True
    for (name, load, args), scale in ((mlp(), 1), (w3(), 10), (w4(), 10), (w5(), 0.1)):
        r = check(name, load, args, max(int(a.calls / scale), 20), a.rounds)
        # the floors: steps ~ a call for the MLP and W3, no cost when off for W4 and W5
        floor = abs(r["steps_vs_off"]) <= 0.10 or "W4" in name or "W5" in name
        free = abs(r["after_vs_never"]) <= 0.02 or not ("W4" in name or "W5" in name)
        ok = ok and floor and free
        print(f"{r['workload']}:")
        print(f"  call, profiling off           {r['off_s'] * 1e6:10.2f} µs")
        print(f"  sum of the step rows          {r['steps_s'] * 1e6:10.2f} µs  "
              f"({100 * r['steps_vs_off']:+.1f}% of off" + (f"; floor ±10%: {'ok' if floor else 'MISSED'})" if not
                                                            ("W4" in name or "W5" in name) else ")"))
        print(f"  profiled call, total          {r['profiled_total_s'] * 1e6:10.2f} µs")
        print(f"  ordinary call after profiling {r['after_profile_s'] * 1e6:10.2f} µs  "
              f"({100 * r['after_vs_never']:+.1f}% of off" + (f"; floor ±2%: {'ok' if free else 'MISSED'})" if
                                                             ("W4" in name or "W5" in name) else ")"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
