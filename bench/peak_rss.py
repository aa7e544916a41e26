"""Peak memory (RSS) of W8 (the LSTM, bench/run.py's peers) and W9 (LeNet, bench/w9.py's
peers), each peer in a fresh process running 20 W8 calls or 60 W9 steps:

    /work/benchvenv/bin/python bench/peak_rss.py                 # flowml, jax, torch(.compile)
    FLOWML_NUM_THREADS=1 python bench/peak_rss.py --peers flowml

The peak is the process's VmHWM (not ru_maxrss, which Linux carries over fork and exec)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _hwm_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(workload: str, peer: str) -> None:
    sys.path.insert(0, REPO)
    if workload == "W8":
        from bench import data, peers
        p = peers.create(peer, threads=1)
        f = p.w8(data.w8())
        for _ in range(20):
            p.block(f())
    else:
        from bench import w9
        batches, params = w9.batches(), w9.initial_params()
        p = w9.PEERS[peer](params, batches, "llvm")
        for i in range(60):
            c = p.step(i)
        getattr(p, "sync", float)(c)
    print(f"{_hwm_mb():.0f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peers", default="flowml,jax,torch")
    ap.add_argument("--child", nargs=2, metavar=("WORKLOAD", "PEER"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(*args.child)
    print(f"{'workload':8s} {'peer':14s} {'peak RSS (MB)':>14s}")
    for workload in ("W8", "W9"):
        for peer in args.peers.split(","):
            names = [peer] + (["torch.compile"] if peer == "torch" and workload == "W9" else [])
            for name in names:
                r = subprocess.run([sys.executable, __file__, "--child", workload, name], capture_output=True,
                                   text=True, cwd=REPO)
                value = r.stdout.strip().splitlines()[-1] if r.returncode == 0 else f"failed: {r.stderr[-200:]!r}"
                print(f"{workload:8s} {name:14s} {value:>14s}")


if __name__ == "__main__":
    main()
