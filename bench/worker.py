"""One peer in one process: run the selected workloads, print the results as JSON on stdout.

Every workload runs under its own try/except (and an alarm), so one that fails is recorded and
the next one runs. With --partial FILE the results so far are also written to FILE after each
workload (and the workload in progress is named), so that the orchestrator keeps them if the
process dies.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np

from . import config, data
from .timing import median, per_call, single_calls

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class WorkloadTimeout(Exception):
    pass


def _metric(value, unit, samples=None, note=None):
    out = {"value": float(value), "unit": unit}
    if samples is not None:
        out["samples"] = [float(s) for s in samples]
    if note:
        out["note"] = note
    return out


def _key(key: str, threads: int) -> str:
    return key if threads == 1 else f"{key}@{threads}t"


# --- one function per workload: (peer, sizes, args) -> {metric key: metric} ----------------

def run_w1(peer, sizes, args):
    fn = peer.w1(data.w1(sizes.n_elem))
    samples, _ = single_calls(fn, sizes.repeats, block=peer.block)
    ms = [s * 1e3 for s in samples]
    return {_key("W1", peer.threads): _metric(median(ms), "ms", ms)}


def run_w2(peer, sizes, args):
    x, y = data.w2(sizes.n_elem)
    samples, out = single_calls(peer.w2(x, y), sizes.repeats, block=peer.block)
    ms = [s * 1e3 for s in samples]
    res = {_key("W2", peer.threads): _metric(median(ms), "ms", ms)}
    if peer.threads == 1:
        ref = data.w2_reference(x, y)
        res["W2.relerr"] = _metric(abs(float(np.asarray(out)) - ref) / abs(ref), "")
    return res


def run_w3(peer, sizes, args):
    steps = args.steps or sizes.w3_steps
    step = peer.w3(data.w3())
    peer.block(step())                                  # build / compile, warm-up

    def run(n):
        t0 = time.perf_counter()
        out = None
        for _ in range(n):
            out = step()
        peer.block(out)
        return time.perf_counter() - t0

    pilot = min(20, steps)
    per_step = run(pilot) / pilot
    if not args.steps and per_step * steps > sizes.w3_budget_s:
        steps = max(pilot, int(sizes.w3_budget_s / per_step))
    total = run(steps)
    note = None
    if steps != config.W3_REPORT_STEPS:
        note = f"extrapolated from {steps} steps ({total:.3g} s)"
    return {"W3": _metric(total * config.W3_REPORT_STEPS / steps, "s", note=note)}


def run_w4(peer, sizes, args):
    res = {}
    for batch in (20, 256):
        step = peer.w4(data.w4(batch))
        secs = per_call(step, min_time=sizes.min_time_s, repeats=sizes.rate_repeats,
                        block=peer.block)
        rates = [1 / s for s in secs]
        res[f"W4.b{batch}"] = _metric(median(rates), "steps/s", rates)
    return res


def run_w5(peer, sizes, args):
    fn, fargs = peer.w5()
    secs = per_call(fn, fargs, min_time=sizes.min_time_s, repeats=sizes.rate_repeats,
                    block=peer.block)
    us = [s * 1e6 for s in secs]
    return {"W5": _metric(median(us), "µs/call", us)}


def run_w7(peer, sizes, args):
    fn = peer.w7(data.w7(256))
    secs = per_call(fn, min_time=sizes.min_time_s, repeats=sizes.rate_repeats,
                    block=peer.block)
    ms = [s * 1e3 for s in secs]
    return {"W7": _metric(median(ms), "ms", ms)}


def run_w8(peer, sizes, args):
    fn = peer.w8(data.w8())
    secs = per_call(fn, min_time=sizes.min_time_s, repeats=sizes.rate_repeats, block=peer.block)
    ms = [s * 1e3 for s in secs]
    return {"W8": _metric(median(ms), "ms", ms)}


def run_w11(peer, sizes, args):
    """Each of W11's operations (a peer's `w11(d)` gives {name: callable}), timed per call."""
    res = {}
    for name, fn in peer.w11(data.w11()).items():
        secs = per_call(fn, min_time=sizes.min_time_s, repeats=sizes.rate_repeats, block=peer.block)
        ms = [s * 1e3 for s in secs]
        res[f"W11.{name}"] = _metric(median(ms), "ms", ms)
    return res


def run_w6(peer, sizes, args):
    """Two fresh processes with the same (initially empty) cache folder: cold, then warm."""
    res = {}
    with tempfile.TemporaryDirectory(prefix="bench-w6-") as cache:
        env = dict(os.environ, XDG_CACHE_HOME=os.path.join(cache, "xdg"))
        cache_env = peer.cache_env(cache)
        env.update(cache_env or {})
        cmd = [sys.executable, os.path.join(REPO, "bench", "run.py"), "--w6-child", args.peer,
               "--threads", str(peer.threads)] + _peer_opts_argv(peer)
        runs = ["cold"] + (["warm"] if cache_env is not None else [])
        for kind in runs:
            if kind == "warm" and not _has_files(cache):
                res["W6.warm"] = {"value": None, "unit": "s", "note": "no cache was written"}
                break
            p = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True,
                               timeout=sizes.workload_timeout_s)
            if p.returncode != 0:
                raise RuntimeError(f"W6 {kind} child failed (rc {p.returncode}): "
                                   + _tail(p.stderr))
            child = json.loads(p.stdout.strip().splitlines()[-1])
            res[f"W6.{kind}"] = _metric(child["build_s"], "s")
            if kind == "cold":
                res["W6.import"] = _metric(child["import_s"], "s")
    if "W6.warm" not in res:
        res["W6.warm"] = {"value": None, "unit": "s", "note": "no persistent compile cache"}
    return res


def run_r(peer, sizes, args):
    """Peak memory of W4's batch-256 training in a fresh process: its peak RSS, and the peak
    above the RSS right after the imports (what the model itself costs)."""
    cmd = [sys.executable, os.path.join(REPO, "bench", "run.py"), "--rss-child", args.peer,
           "--threads", str(peer.threads)] + _peer_opts_argv(peer)
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=sizes.workload_timeout_s)
    if p.returncode != 0:
        raise RuntimeError(f"memory child failed (rc {p.returncode}): " + _tail(p.stderr))
    child = json.loads(p.stdout.strip().splitlines()[-1])
    return {"R": _metric(child["peak_mb"], "MB"),
            "R.model": _metric(child["peak_mb"] - child["imported_mb"], "MB")}


def _rss_mb(field: str = "VmRSS") -> float:
    """This process's resident set (VmRSS) or its peak (VmHWM), in MB. (Not ru_maxrss: Linux
    carries it over fork and exec, so a child started by a big worker reports the worker's peak.)"""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def rss_child(args) -> int:
    """Import the peer, then build and run 20 steps of W4 at batch 256; report RSS in MB."""
    from . import peers
    peer = peers.create(args.rss_child, threads=args.threads, **_peer_opts(args.rss_child, args))
    imported = _rss_mb()
    step = peer.w4(data.w4(256))
    for _ in range(20):
        peer.block(step())
    peak = _rss_mb("VmHWM")
    print(json.dumps({"imported_mb": imported, "peak_mb": peak}))
    return 0


def run_m(peer, sizes, args):
    return {_key(k, peer.threads): v for k, v in peer.machine(sizes).items()}


RUNNERS = {"W1": run_w1, "W2": run_w2, "W3": run_w3, "W4": run_w4, "W5": run_w5,
           "W6": run_w6, "W7": run_w7, "W8": run_w8, "W11": run_w11, "R": run_r,
           "M": run_m}


# --- helpers ----------------------------------------------------------------------------

def _has_files(folder):
    return any(files for _, _, files in os.walk(folder))


def _tail(text, n=1500):
    text = (text or "").strip()
    return text[-n:]


def _peer_opts_argv(peer):
    backend = getattr(peer, "backend", None)          # flowml: the backend actually in use
    return ["--backend", backend] if backend else []


def _peer_opts(name, args):
    if name != "flowml":
        return {}
    return {"backend": args.backend or "llvm", "fallback": args.fallback}


def _on_alarm(signum, frame):
    raise WorkloadTimeout("workload timed out")


def _error_text(exc: BaseException) -> str:
    lines = traceback.format_exception_only(type(exc), exc)
    return "".join(lines).strip()[-2000:]


def _write(path, result):
    if not path:
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, path)


def main(args) -> int:
    from . import peers

    sizes = config.QUICK if args.quick else config.FULL
    if args.timeout:
        sizes = dataclasses.replace(sizes, workload_timeout_s=args.timeout)
    result = {"peer": args.peer, "column": args.peer, "threads": args.threads, "metrics": {},
              "errors": {}, "skipped": {}, "notes": [], "versions": {}, "done": [],
              "current": None, "started": None}
    try:
        peer = peers.create(args.peer, threads=args.threads, **_peer_opts(args.peer, args))
    except Exception as exc:                       # not installed, or a backend unavailable
        result["unavailable"] = _error_text(exc)
        _write(args.partial, result)
        print(json.dumps(result))
        return 0
    result["column"] = peer.name
    result["versions"] = peer.versions()
    result["notes"] = list(peer.notes)
    signal.signal(signal.SIGALRM, _on_alarm)
    for wl in args.only:
        if not peer.supports(wl):
            result["skipped"][wl] = "not applicable"
            continue
        result["current"], result["started"] = wl, time.time()
        _write(args.partial, result)
        print(f"[bench] {peer.name} {args.threads}t: {wl} ...", file=sys.stderr, flush=True)
        signal.alarm(int(sizes.workload_timeout_s * (2 if wl == "W6" else 1)))
        try:
            result["metrics"].update(RUNNERS[wl](peer, sizes, args))
        except Exception as exc:
            result["errors"][wl] = _error_text(exc)
            traceback.print_exc(file=sys.stderr)
        finally:
            signal.alarm(0)
        result["done"].append(wl)
        result["notes"] = list(peer.notes)
    result["current"] = None
    _write(args.partial, result)
    print(json.dumps(result))
    return 0


def w6_child(args) -> int:
    """Time import, then build + first call of W3's train step, in this fresh process."""
    t0 = time.perf_counter()
    from . import peers
    opts = _peer_opts(args.w6_child, args)
    if args.w6_child == "flowml":
        opts["probe"] = False  # import = `import flowml`; loading and compiling count in the build
    peer = peers.create(args.w6_child, threads=args.threads, **opts)
    t1 = time.perf_counter()
    d = data.w3()
    t2 = time.perf_counter()
    peer.block(peer.w3(d)())
    t3 = time.perf_counter()
    print(json.dumps({"import_s": t1 - t0, "build_s": t3 - t2}))
    return 0
