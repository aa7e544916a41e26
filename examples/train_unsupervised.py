"""Train the unsupervised examples (examples/rbm.flow, examples/dae.flow) on the 8x8 digits with
mini-batch SGD, and report every epoch's training loss, test evaluation and wall time.

Protocol (examples/data/README.md): X / 16 (the .flow files divide), train = rows [0, 1200),
test = rows [1200, 1797), no shuffling of the split; each epoch visits the training rows in a
fresh random order (numpy RandomState(--seed).permutation; --no-shuffle: in order) in
mini-batches of --batch rows, calling the model's train fn once per batch, then calls its
`evaluate` fn on the test rows (the reconstruction cross-entropy, nats, mean over rows).

    python examples/train_unsupervised.py rbm --fn train_cd            # CD-1, 100 epochs, llvm
    python examples/train_unsupervised.py rbm --fn train_pcd           # PCD-15
    python examples/train_unsupervised.py dae                          # 200 epochs
    python examples/train_unsupervised.py dae --backend opencl --epochs 2

The columns: the mean over the epoch's batches of each output of the train fn (computed before
each batch's update), the test evaluation after the epoch, and the epoch's wall time (training
calls only; the first epoch includes compiling the functions on first call, if the backend
compiles lazily) and the evaluation's.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data", "digits.npz")   # = shared/data/digits_u8.npz (byte for byte)
MODELS = {  # name: (file, default train fn, default epochs)
    "rbm": ("rbm.flow", "train_cd", 100),
    "dae": ("dae.flow", "train", 200),
}


def load_split(path=DATA, train_rows=1200):
    """(train, test) raw pixel counts as float64 (the models divide by 16)."""
    X = np.load(path)["X"].astype(np.float64)
    return X[:train_rows], X[train_rows:]


def train(model="dae", fn=None, backend="llvm", epochs=None, batch=20, seed=0, model_seed=None,
          shuffle=True, data=DATA, n_train=None, n_test=None, log=print):
    """Train a model; returns a dict with the model, the train fn's output names, `initial` (the
    test evaluation before training) and `history`, one (train outputs' means, test evaluation,
    train seconds, eval seconds) per epoch."""
    import flowml

    path, default_fn, default_epochs = MODELS.get(model, (model, "train", 10))
    path = path if os.path.isabs(path) or os.path.exists(path) else os.path.join(HERE, path)
    fn = fn or default_fn
    epochs = default_epochs if epochs is None else epochs
    train_x, test_x = load_split(data)
    if n_train is not None:
        train_x = train_x[:n_train]
    if n_test is not None:
        test_x = test_x[:n_test]
    t0 = time.perf_counter()
    m = flowml.load(path, backend=backend, seed=model_seed)
    step, evaluate = getattr(m, fn), m.evaluate
    build_s = time.perf_counter() - t0
    names = step.output_names
    log(f"# {os.path.relpath(path)} {fn} on {backend}: {len(train_x)} train / {len(test_x)} test rows, "
        f"batch {batch}, {epochs} epochs, order seed {seed if shuffle else 'none (in order)'}; "
        f"built in {build_s:.2f} s")
    log("# epoch  " + "  ".join(f"{n:>10s}" for n in names) + "   test_eval   train_ms   eval_ms")
    initial = float(evaluate(test_x))
    log(f"      0  " + "  ".join(f"{'':10s}" for _ in names) + f"  {initial:10.5f}")
    order_rng = np.random.RandomState(seed)
    history = []
    for epoch in range(epochs):
        order = order_rng.permutation(len(train_x)) if shuffle else np.arange(len(train_x))
        sums = np.zeros(len(names))
        n_batches = 0
        t0 = time.perf_counter()
        for start in range(0, len(order), batch):
            outs = step(train_x[order[start:start + batch]])
            outs = outs if isinstance(outs, tuple) else (outs,)
            sums += [float(o) for o in outs]
            n_batches += 1
        t1 = time.perf_counter()
        test = float(evaluate(test_x))
        t2 = time.perf_counter()
        means = sums / max(n_batches, 1)
        history.append((means, test, t1 - t0, t2 - t1))
        log(f"{epoch + 1:7d}  " + "  ".join(f"{v:10.5f}" for v in means)
            + f"  {test:10.5f}  {(t1 - t0) * 1000:9.1f}  {(t2 - t1) * 1000:8.1f}")
    if history:
        times = [h[2] for h in history]
        steady = times[1:] if len(times) > 1 else times
        log(f"# final test eval {history[-1][1]:.4f} nats; train time per epoch: "
            f"first {times[0] * 1000:.1f} ms, then mean {np.mean(steady) * 1000:.1f} ms "
            f"(median {np.median(steady) * 1000:.1f} ms); total {sum(times):.1f} s")
    return {"model": m, "names": names, "history": history, "initial": initial, "build_s": build_s}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="rbm, dae, or a .flow file with a train fn and evaluate(X)")
    p.add_argument("--fn", help="the train fn (rbm: train_cd or train_pcd; dae: train)")
    p.add_argument("--backend", default="llvm", help="reference, llvm (default) or opencl")
    p.add_argument("--epochs", type=int, help="default: rbm 100, dae 200")
    p.add_argument("--batch", type=int, default=20)
    p.add_argument("--seed", type=int, default=0, help="seed of the mini-batch order (default 0)")
    p.add_argument("--model-seed", type=int, help="override the .flow file's seed (initial params, "
                                                  "random streams)")
    p.add_argument("--no-shuffle", action="store_true", help="visit the training rows in order")
    p.add_argument("--data", default=DATA)
    p.add_argument("--train-rows", type=int, help="use only the first N training rows")
    p.add_argument("--test-rows", type=int, help="use only the first N test rows")
    a = p.parse_args(argv)
    train(a.model, a.fn, a.backend, a.epochs, a.batch, a.seed, a.model_seed, not a.no_shuffle, a.data,
          a.train_rows, a.test_rows, log=lambda s: print(s, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
