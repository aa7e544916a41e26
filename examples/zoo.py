"""Run the full training of every example in the model zoo and print one table: each example's
result, the bar it is measured against, whether it passes, and the wall time.

    python examples/zoo.py                        # everything, LLVM backend (about 15 minutes on 2 cores)
    python examples/zoo.py --only sda,dbn         # some of them
    python examples/zoo.py --quick                # a smoke run: a few epochs each, no verdicts
    python examples/zoo.py --backend reference

Every run follows the digits protocol (examples/data/README.md): X / 16, train = rows [0, 1200),
test = rows [1200, 1797), mini-batches drawn in a fresh order every epoch from
numpy RandomState(0) (`flowml train --seed 0`), the params and random streams seeded by each
file's `seed`. The supervised models are trained with `flowml.train.train`, the function behind
`flowml train` (the command each row is equivalent to is in ZOO below); the unsupervised ones
with examples/train_unsupervised.py.

The bars: Theano's tutorial numbers re-made on the digits by the issues that added each example
(mean ± std over seeds of a numpy reference, examples/reference/). A test error passes within
2 std or 1 percentage point of its bar, whichever is larger; a reconstruction cross-entropy
within 2 std; logistic regression's final cost must equal numpy's (and PyTensor's, JAX's,
PyTorch's) to 8 digits; softmax regression's test error must equal the one numpy computes here,
with the same full-batch steps.

Wall time: loading (parsing, optimizing, compiling) plus training plus the per-epoch
evaluations, as `flowml train` spends it.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data", "digits.npz")
SPLIT = 1200


@dataclass
class Result:
    value: float            # the number compared with the bar
    text: str               # how to print it
    detail: str = ""
    bar: float | None = None  # a bar the run computes itself (softmax: numpy's)


@dataclass
class Example:
    name: str
    command: str                                  # the equivalent command line
    run: Callable[[str, bool], Result]            # (backend, quick) -> Result
    bar: float | None                             # None: the bar is computed by the run
    std: float = 0.0
    kind: str = "error"                           # error (fraction), nats, exact
    bar_text: str = ""


def _digits():
    d = np.load(DATA)
    return {"X": d["X"].astype(np.float64), "y": d["y"].astype(np.int64)}


def _module(relpath: str):
    name = "_zoo_" + os.path.basename(relpath)[:-3]
    spec = importlib.util.spec_from_file_location(name, os.path.join(HERE, relpath))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ---- the supervised models: `flowml train`
def _flowml_train(file: str, phases: list[tuple[str, int]], batch: int):
    def run(backend: str, quick: bool) -> Result:
        import flowml
        from flowml.train import Phase, train
        model = flowml.load(os.path.join(HERE, file), backend=backend)
        plan = [Phase(fn, min(epochs, 2) if quick else epochs) for fn, epochs in phases]
        h = train(model, _digits(), plan, batch, SPLIT, "error", seed=0, progress=False)
        final = h.test[-1]
        best = min(t for t, p in zip(h.test, h.phase) if p == plan[-1].fn)
        return Result(final, f"{final * 100:.2f}%", f"best epoch {best * 100:.2f}%, final loss {h.loss[-1]:.4g}")
    return run


# ---- logistic regression: Theano's classic run (README.md)
def _logreg(backend: str, quick: bool) -> Result:
    import flowml
    with open(os.path.join(HERE, "logreg.flow")) as f:
        model = flowml.loads(f.read() + "fn cost_of(x, y) -> cost\n", backend=backend)
    rng = np.random.RandomState(0)
    x, y = rng.randn(400, 784), rng.randint(0, 2, 400).astype(np.float64)
    model.params["w"], model.params["b"] = rng.randn(784), 0.0
    for _ in range(100 if quick else 10_000):
        model.train(x, y)
    cost = float(model.cost_of(x, y))
    return Result(cost, f"cost {cost:.8f}", f"training accuracy {np.mean(model.predict(x) == y):.3f}")


# ---- the unsupervised models: examples/train_unsupervised.py
def _unsupervised(model: str, fn: str):
    def run(backend: str, quick: bool) -> Result:
        driver = _module("train_unsupervised.py")
        r = driver.train(model, fn, backend, epochs=2 if quick else None, log=lambda s: None)
        final = r["history"][-1][1]
        return Result(final, f"{final:.2f} nats", f"initial {r['initial']:.2f} nats")
    return run


TRAIN = "flowml train examples/{} --data examples/data/digits.npz --split 1200 "
ZOO = [
    Example("logreg", "flowml run examples/logreg.flow train --random N=400,y=2 --steps 10000 "
            "(README's seeding)", _logreg, 0.11705355, kind="exact", bar_text="0.11705355 (numpy)"),
    Example("softmax", TRAIN.format("softmax.flow") + "--fn sgd --batch 20 --epochs 200",
            _flowml_train("softmax.flow", [("sgd", 200)], 20), 0.0771, 0.0),
    Example("mlp", TRAIN.format("mlp.flow") + "--batch 20 --epochs 1000",
            _flowml_train("mlp.flow", [("train", 1000)], 20), 0.071, 0.0025),
    Example("dae", "python examples/train_unsupervised.py dae", _unsupervised("dae", "train"),
            16.69, 0.3, kind="nats"),
    Example("rbm-cd1", "python examples/train_unsupervised.py rbm --fn train_cd",
            _unsupervised("rbm", "train_cd"), 19.47, 0.3, kind="nats"),
    Example("rbm-pcd15", "python examples/train_unsupervised.py rbm --fn train_pcd",
            _unsupervised("rbm", "train_pcd"), 19.47, 0.3, kind="nats"),
    Example("sda", TRAIN.format("sda.flow") + "--phases pretrain1:50,pretrain2:50,finetune:100 --batch 1",
            _flowml_train("sda.flow", [("pretrain1", 50), ("pretrain2", 50), ("finetune", 100)], 1),
            0.0600, 0.0022),
    Example("dbn", TRAIN.format("dbn.flow") + "--phases pretrain1:100,pretrain2:100,finetune:200 --batch 10",
            _flowml_train("dbn.flow", [("pretrain1", 100), ("pretrain2", 100), ("finetune", 200)], 10),
            0.0757, 0.0018),
    Example("lenet", TRAIN.format("lenet.flow") + "--batch 20 --epochs 200",
            _flowml_train("lenet.flow", [("train", 200)], 20), 0.0663, 0.0070),
]


def verdict(ex: Example, r: Result) -> tuple[str, str]:
    """(bar as text, pass/FAIL)."""
    if ex.kind == "exact":
        return ex.bar_text, "pass" if abs(r.value - ex.bar) < 5e-9 else "FAIL"
    if ex.kind == "same":
        want = r.bar
        return f"{want * 100:.2f}% (numpy)", "pass" if abs(r.value - want) < 1e-12 else "FAIL"
    if ex.kind == "nats":
        tol = 2 * ex.std
        return f"{ex.bar:.2f} ± {ex.std:.2f} nats", "pass" if abs(r.value - ex.bar) <= tol else "FAIL"
    tol = max(2 * ex.std, 0.01)
    return (f"{ex.bar * 100:.2f}% ± {ex.std * 100:.2f}",
            "pass" if abs(r.value - ex.bar) <= tol + 1e-12 else "FAIL")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", help="comma-separated names: " + ", ".join(e.name for e in ZOO))
    p.add_argument("--backend", default="llvm")
    p.add_argument("--quick", action="store_true", help="a few epochs each (a smoke run; no verdicts)")
    a = p.parse_args(argv)
    chosen = ZOO if not a.only else [e for e in ZOO if e.name in a.only.split(",")]
    rows = []
    for ex in chosen:
        if ex.name == "lenet" and not os.path.exists(os.path.join(HERE, "lenet.flow")):
            continue
        print(f"# {ex.name}: {ex.command}", flush=True)
        t0 = time.perf_counter()
        r = ex.run(a.backend, a.quick)
        seconds = time.perf_counter() - t0
        bar, ok = verdict(ex, r)
        rows.append((ex.name, r.text, bar, "-" if a.quick else ok, f"{seconds:.1f} s", r.detail))
        print(f"#   {r.text}  (bar {bar}; {r.detail})  {seconds:.1f} s", flush=True)
    head = ("example", "result", "bar", "verdict", "wall time", "detail")
    widths = [max(len(str(row[i])) for row in [head, *rows]) for i in range(len(head))]
    print()
    print(f"model zoo on {a.backend}" + (" (--quick: a few epochs each)" if a.quick else ""))
    for row in [head, tuple("-" * w for w in widths), *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    return 0 if a.quick or all(r[3] == "pass" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
