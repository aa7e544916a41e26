"""The profiler's floors, measured (issue 20; docs/inspect.md, "Profiling").

    python bench/profile_check.py [--calls 5000] [--rounds 9]

For examples/mlp.flow's train step (batch 20) and W3 (bench/workloads/logreg.flow's train,
400 x 784): the sum of the per-step rows of a profiled call against the time of a call with
profiling off (floor: within 10%), and the time of an ordinary call of a model that was never
profiled against one of a model after a profiled run in the same process (floor: within 2%).
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
    return "MLP train, batch 20", lambda: flowml.load("examples/mlp.flow", backend="llvm", seed=0), args


def w3():
    d = data.w3()

    def load():
        m = flowml.load("bench/workloads/logreg.flow", backend="llvm")
        m.params["w"], m.params["b"] = d["w"], d["b"]
        return m
    return "W3 logreg train, 400 x 784", load, (d["x"], d["y"])


def per_call(fn, args, calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn(*args)
    return (time.perf_counter() - t0) / calls


def check(name, load, args, calls: int, rounds: int) -> dict:
    never, profiled = load(), load()
    for m in (never, profiled):
        for _ in range(5):  # warm: the native entry is installed from the third call
            m.train(*args)
    off, after, steps, total = [], [], [], []
    for _ in range(rounds):
        off.append(per_call(never.train, args, calls))
        with flowml.profile() as p:
            per_call(profiled.train, args, calls)
        (f,) = p.functions
        rows = f.rows()
        steps.append(sum(r.total_s for r in rows if r.kind != "boundary") / f.calls)
        total.append(f.total_ns / 1e9 / f.calls)
        after.append(per_call(profiled.train, args, calls))
    result = {"workload": name, "off_s": min(off), "steps_s": min(steps), "profiled_total_s": min(total),
              "after_profile_s": min(after)}
    result["steps_vs_off"] = result["steps_s"] / result["off_s"] - 1
    result["after_vs_never"] = result["after_profile_s"] / result["off_s"] - 1
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=5000, help="calls per round (default 5000; W3 a tenth)")
    ap.add_argument("--rounds", type=int, default=9, help="rounds (default 9; the best is reported)")
    a = ap.parse_args(argv)
    ok = True
    for name, load, args in (mlp(), w3()):
        r = check(name, load, args, a.calls if "MLP" in name else max(a.calls // 10, 20), a.rounds)
        floor = abs(r["steps_vs_off"]) <= 0.10
        free = abs(r["after_vs_never"]) <= 0.02
        ok = ok and floor and free
        print(f"{r['workload']}:")
        print(f"  call, profiling off           {r['off_s'] * 1e6:10.2f} µs")
        print(f"  sum of the step rows          {r['steps_s'] * 1e6:10.2f} µs  ({100 * r['steps_vs_off']:+.1f}% of off; "
              f"floor ±10%: {'ok' if floor else 'MISSED'})")
        print(f"  profiled call, total          {r['profiled_total_s'] * 1e6:10.2f} µs")
        print(f"  ordinary call after profiling {r['after_profile_s'] * 1e6:10.2f} µs  "
              f"({100 * r['after_vs_never']:+.1f}%; floor ±2%: {'ok' if free else 'MISSED'})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
