"""flowml's benchmark harness: `python bench/run.py --help` (or `python -m bench --help`).

Without --peer it is the orchestrator: it starts one worker process per peer (and thread count),
prints a table and writes bench/results/<timestamp>.{json,md}. With --peer NAME it is that
worker: it runs one peer's workloads and prints their results as JSON on stdout.
"""

from __future__ import annotations

import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if __package__ in (None, ""):                      # run as a script: bench/ must not shadow
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.join(REPO, "bench")]
    sys.path.insert(0, REPO)

from bench import config  # noqa: E402
from bench.peers import DEFAULT_PEERS, REGISTRY  # noqa: E402


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="bench/run.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="small sizes and few repeats, for smoke testing")
    p.add_argument("--only", type=_csv, default=list(config.WORKLOADS),
                   help="workloads to run, e.g. W1,W2 (default: all: %(default)s; M = machine context)")
    p.add_argument("--peers", type=_csv, default=list(DEFAULT_PEERS),
                   help="peers besides flowml (default: %(default)s; also: pytensor.numba)")
    p.add_argument("--backends", type=_csv, default=None,
                   help="flowml backends, one column each (default: llvm, or reference with a note "
                        "when llvm is unavailable)")
    p.add_argument("--no-flowml", action="store_true", help="run the peers only")
    p.add_argument("--threads", type=lambda s: [int(t) for t in _csv(s)], default=[1, 2],
                   help="thread counts: everything runs at the first, W1/W2 also at the others "
                        "(default: 1,2)")
    p.add_argument("--steps", type=int, default=None,
                   help="W3 steps to run (the result is extrapolated to 10,000 and marked ~)")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds per workload before it is abandoned (default 300, quick 120)")
    p.add_argument("--python", default=sys.executable,
                   help="interpreter for the workers (default: this one)")
    p.add_argument("--out", default=os.path.join(REPO, "bench", "results"),
                   help="folder for <timestamp>.json/.md/.log (default: bench/results)")
    p.add_argument("--keep-openblas-env", action="store_true",
                   help="keep OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE for the workers (unset by default)")
    w = p.add_argument_group("worker mode (used by the orchestrator)")
    w.add_argument("--peer", choices=sorted(REGISTRY), help="run this one peer, print JSON")
    w.add_argument("--backend", help="flowml backend of this worker")
    w.add_argument("--fallback", help="flowml backend to use when --backend is unavailable")
    w.add_argument("--partial", help="write the results so far to this file after each workload")
    w.add_argument("--w6-child", choices=sorted(REGISTRY), help=argparse.SUPPRESS)
    w.add_argument("--rss-child", choices=sorted(REGISTRY), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    bad = [w for w in args.only if w not in config.WORKLOADS]
    bad += [x for x in args.peers if x not in REGISTRY or x in ("flowml", "machine")]
    if bad:
        p.error(f"unknown workload or peer: {', '.join(bad)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.w6_child or args.rss_child or args.peer:
        args.threads = args.threads[0]
    if args.w6_child:
        from bench.worker import w6_child
        return w6_child(args)
    if args.rss_child:
        from bench.worker import rss_child
        return rss_child(args)
    if args.peer:
        from bench.worker import main as worker_main
        return worker_main(args)
    return orchestrate(args)


def _byte_compile(python: str) -> None:
    """Write flowml's bytecode, as installing a package does: with PYTHONDONTWRITEBYTECODE set
    (or an unwritable tree), every fresh process -- W6's above all -- would compile flowml's
    sources again, while every peer comes from site-packages with its bytecode."""
    import subprocess
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([python, "-m", "compileall", "-q", os.path.join(root, "flowml")], check=False,
                   stdout=subprocess.DEVNULL)


def orchestrate(args) -> int:
    import time

    from rich.console import Console

    from bench import orchestrate as orch
    from bench import report

    console = Console()
    if not console.is_terminal:                     # piped: don't squeeze the table into 80
        console = Console(width=200)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    os.makedirs(args.out, exist_ok=True)
    log_path = os.path.join(args.out, f"{stamp}.log")
    console.print(f"workers: {args.python}; log: {os.path.relpath(log_path)}")
    _byte_compile(args.python)
    results = orch.run_all(args, console, log_path)
    console.print()
    report.render_rich(results, console)
    paths = report.write(results, args.out, stamp)
    console.print("written: " + ", ".join(os.path.relpath(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
