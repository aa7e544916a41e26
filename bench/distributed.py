"""Data-parallel scaling of `flowml train --distributed` (a benchmark, not a test).

    python bench/distributed.py            # runs itself under mpiexec -n 1 and -n 2, prints the table

Each rank runs one thread (FLOWML_NUM_THREADS=1, BLAS at 1 thread) with 256 rows per step on the
LLVM backend. Measured: steps/s of the MLP (and LeNet) with 1 and 2 ranks, the time per step in
the gradient allreduce and its share, the local MPI's latency (half a ping-pong of 8 bytes) and
bandwidth (of 16 MiB), and one bucket's allreduce through the IR host step against a bare
mpi4py Allreduce (what a native call of MPI_Allreduce would cost at best). Then the ring-
allreduce model `2(K-1)/K · bytes / bandwidth + 2(K-1) · latency` for 8, 64 and 512 nodes on
a 100 Gb/s network, with the compute time per step measured on one rank.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BATCH = 256
NETWORK = 100e9 / 8  # bytes/s: 100 Gb/s
ONE_THREAD = {"FLOWML_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
              "MKL_NUM_THREADS": "1"}


def _steps_per_second(model, data, world, steps):
    rng = np.random.RandomState(world.rank)
    rows = [rng.randint(0, len(data["X"]), BATCH) for _ in range(8)]
    batches = [(np.ascontiguousarray(data["X"][i]), data["y"][i]) for i in rows]
    for X, y in batches[:3]:
        model.train(X, y)  # warm up (compile, buffers)
    before = getattr(world, "collective_seconds", 0.0)
    world.broadcast(np.zeros(1))
    t0 = time.perf_counter()
    for k in range(steps):
        model.train(*batches[k % len(batches)])
    seconds = time.perf_counter() - t0
    reduce_s = getattr(world, "collective_seconds", 0.0) - before
    return steps / seconds, reduce_s / steps


def worker(steps: int) -> None:
    sys.path.insert(0, str(ROOT))
    from flowml import dataparallel as dp
    from flowml.api import parse_program
    from flowml.distributed import world
    w = world()
    with np.load(ROOT / "examples" / "data" / "digits.npz") as d:
        data = {"X": d["X"].astype(np.float64), "y": d["y"].astype(np.int64)}
    out = {"ranks": w.size}
    for name in ("mlp", "lenet"):
        source = (ROOT / "examples" / f"{name}.flow").read_text()
        model, plans = dp.prepare(parse_program(source, f"{name}.flow"), ["train"], w, backend="llvm")
        dp.sync_params(model, w)
        n_params = sum(int(np.prod(p.var.type.shape)) for k, p in model.program.params.items())
        sps, reduce_s = _steps_per_second(model, data, w, steps if name == "mlp" else steps // 4)
        out[name] = {"steps_per_s": sps, "allreduce_s": reduce_s, "bytes": 8 * (n_params + 1),
                     "buckets": len(plans["train"].buckets)}
        if w.size == 1:  # the same step without the rewrite: the pass's own cost on one rank
            from flowml.program import Model
            plain = Model(parse_program(source, f"{name}.flow"), backend="llvm")
            out[name]["plain_steps_per_s"] = _steps_per_second(plain, data, w, steps if name == "mlp" else steps // 4)[0]
    if w.size == 2:
        out["mpi"] = _mpi_facts(w, out["mlp"]["bytes"])
    if w.rank == 0:
        print("RESULT " + json.dumps(out), flush=True)


def _mpi_facts(w, bucket_bytes: int) -> dict:
    comm = w.comm
    other = 1 - w.rank

    def pingpong(nbytes, reps):
        """Half of each round trip (seconds), one sample per trip: the machine is shared, so
        the low percentiles are the MPI's own cost and the median what this load gives."""
        buf = np.zeros(nbytes, dtype=np.uint8)
        comm.Barrier()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            if w.rank == 0:
                comm.Send(buf, dest=other)
                comm.Recv(buf, source=other)
            else:
                comm.Recv(buf, source=other)
                comm.Send(buf, dest=other)
            times.append((time.perf_counter() - t0) / 2)
        return np.array(times)
    small = pingpong(8, 5000)
    big = 16 << 20
    large = pingpong(big, 20)
    latency, latency_median = float(np.percentile(small, 5)), float(np.median(small))
    bandwidth = big / float(np.percentile(large, 5))
    # one MLP bucket: through the IR host step (flowml's allreduce) and bare mpi4py
    # (each call after a barrier, so that it times the exchange and not a late rank)
    bucket = np.random.rand(bucket_bytes // 8)
    out = np.empty_like(bucket)
    from flowml.ir.ops import collective as C
    host, bare = [], []
    for _ in range(600):
        comm.Barrier()
        t0 = time.perf_counter()
        C.allreduce_op.impl(bucket, "sum")
        host.append(time.perf_counter() - t0)
        comm.Barrier()
        t0 = time.perf_counter()
        comm.Allreduce(bucket, out)
        bare.append(time.perf_counter() - t0)
    return {"latency_s": latency, "latency_median_s": latency_median, "bandwidth_Bps": bandwidth,
            "bucket_host_step_s": float(np.median(host)), "bucket_bare_mpi4py_s": float(np.median(bare))}


def ring(k: int, nbytes: int, latency: float, bandwidth: float) -> float:
    return 2 * (k - 1) / k * nbytes / bandwidth + 2 * (k - 1) * latency


def main() -> None:
    if "--worker" in sys.argv:
        worker(int(sys.argv[sys.argv.index("--worker") + 1]))
        return
    steps = 400
    exe = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
    env = dict(os.environ, **ONE_THREAD, PYTHONPATH=str(ROOT))
    runs = {}
    for k in (1, 2):
        done = subprocess.run([exe, "-n", str(k), sys.executable, __file__, "--worker", str(steps)],
                              capture_output=True, text=True, env=env, timeout=900)
        line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"mpiexec -n {k} failed:\n{done.stdout}\n{done.stderr}")
        runs[k] = json.loads(line[7:])
    report(runs)


def report(runs: dict) -> None:
    mpi = runs[2]["mpi"]
    lat, bw = mpi["latency_s"], mpi["bandwidth_Bps"]
    print(f"local MPI (MPICH, shared memory, 2 ranks on this machine): latency {lat * 1e6:.2f} µs "
          f"(5th percentile; median {mpi['latency_median_s'] * 1e6:.2f} µs), bandwidth {bw / 1e9:.2f} GB/s")
    print(f"one MLP bucket ({runs[1]['mlp']['bytes']:,} B) allreduce: {mpi['bucket_host_step_s'] * 1e6:.1f} µs "
          f"through the IR host step, {mpi['bucket_bare_mpi4py_s'] * 1e6:.1f} µs bare mpi4py (medians)\n")
    print("| model | ranks | steps/s | rows/s | allreduce per step | share | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for name in ("mlp", "lenet"):
        base = runs[1][name]["steps_per_s"]
        for k in (1, 2):
            r = runs[k][name]
            share = r["allreduce_s"] * r["steps_per_s"]
            print(f"| {name} | {k} | {r['steps_per_s']:.0f} | {r['steps_per_s'] * k * BATCH:,.0f} | "
                  f"{r['allreduce_s'] * 1e6:.0f} µs | {share:.1%} | {r['steps_per_s'] * k / base:.2f}× |")
        print(f"| {name} | 1, no rewrite | {runs[1][name]['plain_steps_per_s']:.0f} | | | | |")
    print(f"\nring allreduce on 100 Gb/s, latency {lat * 1e6:.2f} µs (the local one: a lower bound for a "
          "network), compute per step as measured on 1 rank:")
    print("| model | bytes | compute/step | nodes | allreduce | step | efficiency | rows/s |")
    print("|---|---|---|---|---|---|---|---|")
    for name in ("mlp", "lenet"):
        r1 = runs[1][name]
        compute = 1 / r1["steps_per_s"] - r1["allreduce_s"]
        for k in (2, 8, 64, 512):
            t = ring(k, r1["bytes"], lat, NETWORK)
            print(f"| {name} | {r1['bytes']:,} | {compute * 1e3:.2f} ms | {k} | {t * 1e6:.0f} µs | "
                  f"{(compute + t) * 1e3:.2f} ms | {compute / (compute + t):.0%} | {k * BATCH / (compute + t):,.0f} |")
        half = 1 + compute / (2 * lat)  # where 2(K-1)·latency equals the compute: efficiency 50%
        print(f"| {name} | | | 50% efficiency at K ≈ {half:,.0f} (latency-bound) | | | | |")


if __name__ == "__main__":
    main()
