"""W10: compile time of a deep model. An L-layer tanh MLP (width 16), its squared-error cost,
the gradient by all 2L params and their SGD updates: build + compile + first call of the train
step, in a fresh process, with an empty compile cache (cold) and then again with the cache the
cold run left (warm), side by side with jax.jit, PyTensor (FAST_RUN, C backend) and
torch.compile (inductor, CPU).

    /work/benchvenv/bin/python bench/w10.py                      # L = 10, 40, 160, 640, 3 repeats
    /work/benchvenv/bin/python bench/w10.py --flowml-python "$(python -c 'import sys; print(sys.executable)')"
    /work/benchvenv/bin/python bench/w10.py --layers 10,40 --peers flowml,jax --repeats 1
    python bench/w10.py --peers flowml                           # flowml alone, this interpreter

Every child process imports its library first (reported as `import`; for flowml that includes
the modules `flowml.loads` imports lazily: parser, optimizer, LLVM backend), then the clock
starts; it stops when the first call's result is in hand. Cold = empty caches for everyone:
flowml's FLOWML_CACHE_DIR (object code and the parser's tables), JAX's persistent compilation
cache, PyTensor's compiledir, inductor's cache dir (and XDG_CACHE_HOME). The table gives the
median over the repeats (wall clock, and the process's CPU time: on a shared machine the
second is the steadier), and per optimized node (flowml's node count: the optimized graph of
the train step) for every column, so that the columns compare on the same scale.
Results: bench/results/w10-<timestamp>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if __package__ in (None, ""):  # run as a script: this checkout's flowml, not an installed one
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.join(REPO, "bench")]
    sys.path.insert(0, REPO)
WIDTH, BATCH, LR = 16, 32, 0.01
PEERS = ("flowml", "jax", "pytensor", "torch.compile")


def flow_source(layers: int, width: int = WIDTH) -> str:
    """flowml's side: the model as a .flow program (written out: the language has no loops over
    layers, and a deep model's text is part of what a compile reads)."""
    lines = [f"# W10: {layers}-layer tanh MLP, width {width}, squared error, SGD",
             f"input x : f32[N, {width}]", f"input y : f32[N, {width}]"]
    for i in range(layers):
        lines += [f"param W{i} : f32[{width}, {width}] = uniform(-0.25, 0.25)", f"param b{i} : f32[{width}] = zeros"]
    lines += [f"const lr = {LR}", "h0 = x"]
    lines += [f"h{i + 1} = tanh(h{i} @ W{i} + b{i})" for i in range(layers)]
    lines.append(f"cost = mean((h{layers} - y) ** 2)")
    params = ", ".join(f"W{i}, b{i}" for i in range(layers))
    grads = ", ".join(f"gW{i}, gb{i}" for i in range(layers))
    lines += [f"{grads} = grad(cost, {params})", "fn train(x, y) -> cost {"]
    for i in range(layers):
        lines += [f"    W{i} <- W{i} - lr * gW{i}", f"    b{i} <- b{i} - lr * gb{i}"]
    return "\n".join(lines + ["}"]) + "\n"


def data(layers: int, seed: int = 0):
    """Params and a batch, the same for every peer (numpy, f32)."""
    import numpy as np
    rng = np.random.default_rng(seed)
    params = [(rng.uniform(-0.5, 0.5, (WIDTH, WIDTH)).astype(np.float32),
               rng.uniform(-0.1, 0.1, WIDTH).astype(np.float32)) for _ in range(layers)]
    x = rng.normal(size=(BATCH, WIDTH)).astype(np.float32)
    y = rng.normal(size=(BATCH, WIDTH)).astype(np.float32)
    return params, x, y


def reference_cost(layers: int) -> float:
    """numpy's cost at the starting params (what every peer's first call returns)."""
    import numpy as np
    params, x, y = data(layers)
    h = x
    for W, b in params:
        h = np.tanh(h @ W + b)
    return float(np.mean((h - y) ** 2))


# --- one builder per peer: (import, build_and_first_call) ------------------------------------

def _flowml_import():
    import flowml  # noqa: F401
    import flowml.backends.llvm.backend  # noqa: F401 - what loads() imports on first use
    import flowml.lang.build  # noqa: F401
    import flowml.lang.parser  # noqa: F401
    import flowml.passes.pipeline  # noqa: F401


def _flowml_build(layers):
    import flowml
    params, x, y = data(layers)
    model = flowml.loads(flow_source(layers), backend="llvm")
    model.params.update({f"{k}{i}": v for i, (W, b) in enumerate(params) for k, v in (("W", W), ("b", b))})
    return lambda: float(model.train(x, y)), lambda: _flowml_nodes(model)


def _flowml_nodes(model) -> int:
    c = model.train.compiled
    return len(c.graph.ancestors(c.outputs + [n for _, n in c.updates]))


def _jax_import():
    import jax
    jax.config.update("jax_platforms", "cpu")
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    import jax.numpy  # noqa: F401


def _jax_build(layers):
    import jax
    import jax.numpy as jnp
    params, x, y = data(layers)

    def loss(ps, x, y):
        h = x
        for W, b in ps:
            h = jnp.tanh(h @ W + b)
        return jnp.mean((h - y) ** 2)

    @jax.jit
    def train(ps, x, y):
        c, g = jax.value_and_grad(loss)(ps, x, y)
        return [(W - LR * gW, b - LR * gb) for (W, b), (gW, gb) in zip(ps, g)], c

    def first():
        new, c = train(params, x, y)
        jax.block_until_ready(new)
        return float(c)
    return first, None


def _pytensor_import():
    import pytensor  # noqa: F401
    import pytensor.tensor  # noqa: F401


def _pytensor_build(layers):
    import numpy as np
    import pytensor
    import pytensor.tensor as pt
    from pytensor.compile.mode import Mode
    params, x, y = data(layers)
    xs, ys = pt.matrix("x", dtype="float32"), pt.matrix("y", dtype="float32")
    shared = [pytensor.shared(a) for W, b in params for a in (W, b)]
    h = xs
    for i in range(layers):
        h = pt.tanh(h @ shared[2 * i] + shared[2 * i + 1])
    cost = pt.mean((h - ys) ** 2)
    grads = pytensor.grad(cost, shared)
    lr = np.float32(LR)
    f = pytensor.function([xs, ys], cost, updates=[(p, p - lr * g) for p, g in zip(shared, grads)],
                          mode=Mode(linker="cvm", optimizer="fast_run"))
    return lambda: float(f(x, y)), None


def _torch_import():
    import torch
    import torch._inductor.config as inductor
    torch.set_num_threads(1)
    inductor.compile_threads = 1


def _torch_build(layers):
    import torch
    params, x, y = data(layers)
    ps = [torch.tensor(a, requires_grad=True) for W, b in params for a in (W, b)]
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def loss(ps, x, y):
        h = x
        for i in range(0, len(ps), 2):
            h = torch.tanh(h @ ps[i] + ps[i + 1])
        return torch.mean((h - y) ** 2)

    compiled = torch.compile(loss, dynamic=False)

    def first():
        c = compiled(ps, xt, yt)
        c.backward()
        with torch.no_grad():
            for p in ps:
                p -= LR * p.grad
        return float(c)
    return first, None


BUILDERS = {"flowml": (_flowml_import, _flowml_build), "jax": (_jax_import, _jax_build),
            "pytensor": (_pytensor_import, _pytensor_build), "torch.compile": (_torch_import, _torch_build)}


def cache_env(peer: str, cache: str) -> dict[str, str]:
    """Point every cache the peer (and its compilers) keeps at `cache`."""
    env = {"XDG_CACHE_HOME": os.path.join(cache, "xdg")}
    if peer == "flowml":
        env["FLOWML_CACHE_DIR"] = cache
    elif peer == "jax":
        env["JAX_COMPILATION_CACHE_DIR"] = cache
    elif peer == "pytensor":
        env["PYTENSOR_FLAGS"] = ",".join(f for f in (os.environ.get("PYTENSOR_FLAGS"), f"compiledir={cache}") if f)
    elif peer == "torch.compile":
        env["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(cache, "inductor")
        env["TRITON_CACHE_DIR"] = os.path.join(cache, "triton")
    return env


def child(peer: str, layers: int) -> int:
    """In this fresh process: import, then build + first call; print one line of JSON."""
    t0 = time.perf_counter()
    imp, build = BUILDERS[peer]
    imp()
    t1, c1 = time.perf_counter(), time.process_time()
    first, nodes = build(layers)
    cost = first()
    t2, c2 = time.perf_counter(), time.process_time()
    print(json.dumps({"import_s": t1 - t0, "build_s": t2 - t1, "cpu_s": c2 - c1, "cost": cost,
                      "nodes": nodes() if nodes else None}))
    return 0


def run_peer(peer, layers, python, timeout) -> dict:
    """Cold then warm, each a fresh process, sharing a cache folder that starts empty."""
    out = {}
    with tempfile.TemporaryDirectory(prefix="bench-w10-") as cache:
        env = dict(os.environ, **cache_env(peer, cache), OMP_NUM_THREADS="1", FLOWML_NUM_THREADS="1",
                   OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
        cmd = [python, os.path.abspath(__file__), "--child", peer, "--layers", str(layers)]
        for kind in ("cold", "warm"):
            try:
                p = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
            except subprocess.TimeoutExpired:
                out[kind] = {"error": f"timeout ({timeout:.0f} s)"}
                break
            if p.returncode != 0:
                out[kind] = {"error": (p.stderr.strip().splitlines() or ["?"])[-1][:300]}
                break
            out[kind] = json.loads(p.stdout.strip().splitlines()[-1])
    return out


def _median(runs, kind, key):
    vals = [r[kind][key] for r in runs if kind in r and key in r[kind]]
    return statistics.median(vals) if vals else None


def table(results: dict, layers: list[int], peers: list[str], key: str = "build_s") -> str:
    """Markdown: per L, each peer's cold and warm seconds (`key`: wall clock "build_s", or the
    process's CPU time "cpu_s", which a busy machine inflates less), and ms per flowml
    optimized node."""
    rows = ["| L | optimized nodes | " + " | ".join(f"{p} cold | {p} warm" for p in peers) + " |",
            "|---|---|" + "---|---|" * len(peers)]
    for n in layers:
        nodes = _median(results.get(("flowml", n), []), "cold", "nodes")
        cells = []
        for p in peers:
            runs = results.get((p, n), [])
            for kind in ("cold", "warm"):
                v = _median(runs, kind, key)
                err = next((r[kind]["error"] for r in runs if kind in r and "error" in r[kind]), None)
                if v is None:
                    cells.append(err or "n/a")
                else:
                    cells.append(f"{v:.2f} s" + (f" ({1e3 * v / nodes:.2f} ms/node)" if nodes else ""))
        rows.append(f"| {n} | {int(nodes) if nodes else '?'} | " + " | ".join(cells) + " |")
    imports = {p: statistics.median(v) for p in peers
               if (v := [r["cold"]["import_s"] for n in layers for r in results.get((p, n), [])
                         if "import_s" in r.get("cold", {})])}
    rows.append("")
    rows.append("import (median, not in the times above): " + ", ".join(f"{p} {s:.2f} s" for p, s in imports.items()))
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bench/w10.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", default="10,40,160,640")
    ap.add_argument("--peers", default=",".join(PEERS))
    ap.add_argument("--repeats", type=int, default=3, help="cold+warm pairs per cell (median)")
    ap.add_argument("--python", default=sys.executable, help="the peers' interpreter")
    ap.add_argument("--flowml-python", default=None,
                    help="flowml's interpreter (default: --python; e.g. the project's own, with its llvmlite)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per child process")
    ap.add_argument("--out", default=os.path.join(REPO, "bench", "results"))
    ap.add_argument("--child", choices=PEERS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    layers = [int(s) for s in args.layers.split(",") if s]
    if args.child:
        return child(args.child, layers[0])
    peers = [p for p in args.peers.split(",") if p]
    results: dict = {}
    for _ in range(args.repeats):  # repeats outermost: a burst of load hits every cell alike
        for n in layers:
            for p in peers:
                python = args.flowml_python or args.python if p == "flowml" else args.python
                r = run_peer(p, n, python, args.timeout)
                results.setdefault((p, n), []).append(r)
                ref = reference_cost(n)
                for kind in ("cold", "warm"):
                    c = r.get(kind, {}).get("cost")
                    if c is not None and abs(c - ref) > 1e-4 * max(abs(ref), 1e-6):
                        r[kind] = {"error": f"wrong cost {c} (numpy: {ref})"}
                print(f"[w10] {p} L={n}: " + ", ".join(
                    f"{k} {v['build_s']:.2f} s" if "build_s" in v else f"{k} {v.get('error')}"
                    for k, v in r.items()), file=sys.stderr, flush=True)
    md = ("Wall clock:\n\n" + table(results, layers, peers) + "\n\nCPU time of the process (all its threads):\n\n"
          + table(results, layers, peers, "cpu_s"))
    print(md)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    os.makedirs(args.out, exist_ok=True)
    load = os.getloadavg()
    with open(os.path.join(args.out, f"w10-{stamp}.md"), "w") as f:
        f.write(f"# W10 {stamp}\n\nload average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
                f"repeats: {args.repeats}\n\n{md}\n")
    with open(os.path.join(args.out, f"w10-{stamp}.json"), "w") as f:
        json.dump({f"{p}/{n}": v for (p, n), v in results.items()}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
