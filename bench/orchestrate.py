"""Plan the worker processes (one per peer and thread count), run them, merge their results.

A worker that dies or hangs loses only the workload it was running: the orchestrator records
an error for it and starts a new worker for the workloads left.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from rich.markup import escape

from . import config
from .peers import REGISTRY

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_PY = os.path.join(REPO, "bench", "run.py")


@dataclass
class Job:
    peer: str
    threads: int
    workloads: list[str]
    backend: str | None = None
    fallback: str | None = None

    @property
    def label(self) -> str:
        name = f"flowml[{self.backend}]" if self.peer == "flowml" else self.peer
        return f"{name} ({self.threads} thread{'s' if self.threads > 1 else ''})"


def plan(args) -> list[Job]:
    """Every peer at the first thread count; W1/W2 again at each further thread count."""
    first, *more = args.threads
    wanted = [w for w in args.only if w != "M"]
    peers = [(p, None, None) for p in args.peers]
    if not args.no_flowml:
        if args.backends:
            peers += [("flowml", b, None) for b in args.backends]
        else:
            peers += [("flowml", "llvm", "reference")]
    jobs = []
    for n in [first] + more:
        for name, backend, fallback in peers:
            todo = [w for w in wanted if w in REGISTRY[name].workloads
                    and (n == first or w in config.THREADED)]
            if todo:
                jobs.append(Job(name, n, todo, backend, fallback))
        if "M" in args.only:
            jobs.append(Job("machine", n, ["M"]))
    return jobs


def worker_env(threads: int, args, scratch: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(config.thread_env(threads))
    if not args.keep_openblas_env:      # set on this machine for old OpenBLAS builds; they slow a
        env.pop("OPENBLAS_CORETYPE", None)      # current one (see bench/README.md)
        env.pop("OPENBLAS_L2_SIZE", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    env["NUMBA_CACHE_DIR"] = os.path.join(scratch, "numba-cache")
    return env


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _last_json_line(path):
    try:
        with open(path) as f:
            lines = [ln for ln in f.read().splitlines() if ln.startswith("{")]
        return json.loads(lines[-1]) if lines else None
    except (OSError, ValueError):
        return None


def _tail(path, n=1200):
    try:
        with open(path, errors="replace") as f:
            return f.read()[-n:].strip()
    except OSError:
        return ""


class Runner:
    def __init__(self, args, console, log_path: str):
        self.args, self.console, self.log_path = args, console, log_path
        self.sizes = config.QUICK if args.quick else config.FULL
        if args.timeout:
            self.sizes = dataclasses.replace(self.sizes, workload_timeout_s=args.timeout)
        self.scratch = tempfile.mkdtemp(prefix="flowml-bench-")

    def command(self, job: Job, todo: list[str], partial: str) -> list[str]:
        cmd = [self.args.python, RUN_PY, "--peer", job.peer, "--threads", str(job.threads),
               "--only", ",".join(todo), "--partial", partial,
               "--timeout", str(self.sizes.workload_timeout_s)]
        if self.args.quick:
            cmd.append("--quick")
        if self.args.steps:
            cmd += ["--steps", str(self.args.steps)]
        if job.backend:
            cmd += ["--backend", job.backend]
        if job.fallback:
            cmd += ["--fallback", job.fallback]
        return cmd

    def run_job(self, job: Job) -> dict:
        self.console.print(f"[bold]{escape(job.label)}[/]: {', '.join(job.workloads)}")
        merged: dict | None = None
        todo = list(job.workloads)
        env = worker_env(job.threads, self.args, self.scratch)
        while todo:
            res, died = self._one_process(job, todo, env)
            if res is None:
                res = {"column": job.label, "metrics": {}, "errors": {}, "skipped": {},
                       "notes": [], "versions": {}, "done": [], "current": todo[0]}
            merged = res if merged is None else _merge(merged, res)
            if res.get("unavailable"):
                self.console.print(f"  [yellow]not run[/]: {escape(res['unavailable'].splitlines()[-1])}")
                break
            # (a workload the peer skipped is finished too: relaunching would skip it again)
            todo = [w for w in todo if w not in res["done"] and w not in res["skipped"]]
            if todo and died:
                current = res.get("current") or todo[0]
                merged["errors"][current] = died
                self.console.print(f"  [red]{current}: {escape(died.splitlines()[0])}[/]")
                todo.remove(current)
        return merged

    def _one_process(self, job, todo, env):
        fd, partial = tempfile.mkstemp(suffix=".json", dir=self.scratch)
        os.close(fd)
        out_path, err_path = partial + ".out", partial + ".err"
        with open(out_path, "w") as out, open(err_path, "w") as err:
            proc = subprocess.Popen(self.command(job, todo, partial), stdout=out, stderr=err,
                                    env=env, cwd=REPO)
            shown, killed = set(), None
            while proc.poll() is None:
                time.sleep(0.25)
                state = _read_json(partial)
                if state:
                    self._progress(state, shown)
                    killed = killed or self._check_timeout(state, proc)
        res = _last_json_line(out_path) or _read_json(partial)
        if res:
            self._progress(res, shown)
        with open(self.log_path, "a") as log:
            log.write(f"=== {job.label}: {' '.join(self.command(job, todo, partial))}\n")
            log.write(_tail(err_path, 200_000) + "\n")
        died = None
        if killed:
            died = f"killed: {killed} ran longer than the time limit"
        elif proc.returncode != 0 or res is None or res.get("current"):
            died = f"worker died (exit status {proc.returncode}): {_tail(err_path)}"
        return res, died

    def _check_timeout(self, state, proc):
        current, started = state.get("current"), state.get("started")
        limit = self.sizes.workload_timeout_s * (2 if current == "W6" else 1) + 60
        if current and started and time.time() - started > limit:
            proc.kill()
            proc.wait()
            return current
        return None

    def _progress(self, state, shown):
        """Print each newly finished workload with its metrics (`shown`: those printed)."""
        for wl in state.get("done", []):
            if wl in shown:
                continue
            shown.add(wl)
            if wl in state.get("errors", {}):
                msg = state["errors"][wl].splitlines()[-1][:150]
                self.console.print(f"  {wl}: [red]error[/] {escape(msg)}")
            elif wl not in state.get("skipped", {}):
                self.console.print(f"  {wl}: " + escape(", ".join(
                    f"{k} {_short(m)}" for k, m in state.get("metrics", {}).items()
                    if config.workload_of(k) == wl)))


def _short(m):
    if m.get("value") is None:
        return "n/a"
    v = m["value"]
    return f"{v:.3g} {m['unit']}".strip() + (" (extrapolated)" if "extrapolated" in m.get("note", "") else "")


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for key in ("metrics", "errors", "skipped", "versions"):
        out[key] = {**a.get(key, {}), **b.get(key, {})}
    out["notes"] = list(dict.fromkeys(a.get("notes", []) + b.get("notes", [])))
    out["done"] = a.get("done", []) + b.get("done", [])
    if b.get("unavailable"):
        out["unavailable"] = b["unavailable"]
    return out


def machine_info() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
            "host_python": sys.version.split()[0], "loadavg": list(os.getloadavg())}


def run_all(args, console, log_path) -> dict:
    runner = Runner(args, console, log_path)
    t0, load0 = time.time(), list(os.getloadavg())
    columns, machine, unavailable = {}, {}, {}
    try:
        _run_jobs(args, runner, columns, machine, unavailable)
    finally:
        shutil.rmtree(runner.scratch, ignore_errors=True)
    return {
        "meta": {"mode": "quick" if args.quick else "full", "argv": sys.argv[1:],
                 "python": args.python, "threads": args.threads,
                 "openblas_env_unset": not args.keep_openblas_env,
                 "sizes": runner.sizes.__dict__, "steps_override": args.steps,
                 "wall_s": round(time.time() - t0, 1), **machine_info(),
                 "loadavg_start": load0},
        "columns": columns, "machine": machine, "unavailable": unavailable,
    }


def _run_jobs(args, runner, columns, machine, unavailable):
    """Run every planned job, filling the three dicts in place."""
    for job in plan(args):
        name = f"flowml[{job.backend}]" if job.peer == "flowml" else job.peer
        if name in unavailable:                     # no second try at another thread count
            continue
        res = runner.run_job(job)
        if res.get("unavailable"):
            unavailable[name] = res["unavailable"].splitlines()[-1]
            continue
        if job.peer == "machine":
            machine.update(_merge(machine, res) if machine else res)
            continue
        col = res.get("column") or job.label
        columns[col] = _merge(columns[col], res) if col in columns else res
