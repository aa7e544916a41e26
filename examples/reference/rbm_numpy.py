"""Numpy reference for examples/rbm.flow: a binary RBM trained with CD-1 or persistent CD-k,
after Theano's DeepLearningTutorials rbm.py, on the 8x8 digits.

Hyperparameters (the issue's): 64 visible, 100 hidden, learning rate 0.1, batch 20, 100 epochs.
Protocol: X / 16 (values in [0, 1]); train = rows [0, 1200), test = rows [1200, 1797), no
shuffling of the split; the training rows are visited in a fresh random order every epoch
(numpy RandomState(seed).permutation), 60 mini-batches of 20 per epoch.

As in the tutorial:
* W ~ uniform(±4·sqrt(6 / (n_visible + n_hidden))) (numpy RandomState(123), after the
  tutorial's one `rng.randint(2 ** 30)` that seeds its sampling stream), zero biases;
* units are sampled as binomial(1, p) (here: uniform < p);
* CD-k: the chain starts at h ~ P(h | v = batch) (CD) or at the persistent chain's last hidden
  sample (PCD; the chain holds `batch` particles and starts at h = 0), runs k Gibbs steps
  h -> v -> h, and the chain end is the last visible *sample*;
* the update is the gradient of mean(F(v_batch)) - mean(F(v_chain_end)) with the chain end a
  constant (free energy F(v) = -v·vbias - Σ_j softplus(v W + hbias)_j), i.e.
  dW = <v σ(vW + c)>_data - <v σ(vW + c)>_chain end, one plain SGD step of lr.

Evaluation: the test reconstruction cross-entropy, mean over test rows of
-Σ_i [v_i log p_i + (1 - v_i) log(1 - p_i)] with p = σ(h Wᵀ + vbias), h = σ(v W + hbias)
(mean field, no sampling), in nats.

    python examples/reference/rbm_numpy.py --method cd --k 1
    python examples/reference/rbm_numpy.py --method pcd --k 15

Results after 100 epochs (test reconstruction cross-entropy, nats; the issue's reference: 19.47):
CD-1 19.39, PCD-15 19.38 with shuffled batches (order seed 0); 19.45 / 19.45 visiting the
training rows in order (--no-shuffle, as the tutorial does). Over 4 seeds (order and init)
CD-1 gives 19.31-19.41 and PCD-15 19.27-19.47: the error plateaus after about 2 epochs and then
moves by about ±0.1 from epoch to epoch. About 18 ms (CD-1) and 85 ms (PCD-15) per epoch on 2
CPU cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # digits.py beside it, however it is loaded
from digits import load_digits, sigmoid  # noqa: E402


def recon_xent(v, W, hbias, vbias):
    """Mean over rows of the mean-field reconstruction cross-entropy (nats)."""
    h = sigmoid(v @ W + hbias)
    a = h @ W.T + vbias
    # -[v log σ(a) + (1 - v) log(1 - σ(a))] = softplus(a) - v a, computed stably
    return float(np.mean(np.sum(np.logaddexp(0.0, a) - v * a, axis=1)))


def train(method="cd", k=1, n_hidden=100, lr=0.1, batch=20, epochs=100, seed=0, init_seed=123,
          shuffle=True, train_x=None, test_x=None, verbose=True):
    if train_x is None:
        train_x, _, test_x, _ = load_digits()
    n_visible = train_x.shape[1]
    rng = np.random.RandomState(init_seed)
    sample_rng = np.random.RandomState(rng.randint(2 ** 30))   # the tutorial's theano_rng seed
    bound = 4 * np.sqrt(6.0 / (n_hidden + n_visible))
    W = rng.uniform(-bound, bound, size=(n_visible, n_hidden))
    hbias, vbias = np.zeros(n_hidden), np.zeros(n_visible)
    persistent = np.zeros((batch, n_hidden))
    order_rng = np.random.RandomState(seed)
    history = []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        order = order_rng.permutation(len(train_x)) if shuffle else np.arange(len(train_x))
        costs = []
        for start in range(0, len(order), batch):
            v0 = train_x[order[start:start + batch]]
            ph0 = sigmoid(v0 @ W + hbias)
            if method == "cd":
                h = (sample_rng.uniform(size=ph0.shape) < ph0).astype(np.float64)
            else:
                h = persistent
            for _ in range(k):
                pv = sigmoid(h @ W.T + vbias)
                v = (sample_rng.uniform(size=pv.shape) < pv).astype(np.float64)
                ph = sigmoid(v @ W + hbias)
                h = (sample_rng.uniform(size=ph.shape) < ph).astype(np.float64)
            if method == "pcd":
                persistent = h
            phk = sigmoid(v @ W + hbias)          # chain end: the last visible sample
            gW = (v0.T @ ph0) / len(v0) - (v.T @ phk) / len(v)
            ghb = ph0.mean(0) - phk.mean(0)
            gvb = v0.mean(0) - v.mean(0)
            costs.append(recon_xent(v0, W, hbias, vbias))   # monitor: before this step's update
            W = W + lr * gW
            hbias = hbias + lr * ghb
            vbias = vbias + lr * gvb
        dt = time.perf_counter() - t0
        test = recon_xent(test_x, W, hbias, vbias)
        history.append((float(np.mean(costs)), test, dt))
        if verbose:
            print(f"epoch {epoch + 1:3d}  train recon xent {np.mean(costs):8.4f}  test recon xent "
                  f"{test:8.4f}  {dt * 1000:7.1f} ms", flush=True)
    return history, (W, hbias, vbias)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--method", choices=["cd", "pcd"], default="cd")
    p.add_argument("--k", type=int, default=None, help="Gibbs steps (default 1 for cd, 15 for pcd)")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--seed", type=int, default=0, help="seed of the mini-batch order")
    p.add_argument("--init-seed", type=int, default=123)
    p.add_argument("--no-shuffle", action="store_true", help="visit the training rows in order (as the tutorial does)")
    a = p.parse_args(argv)
    k = a.k if a.k is not None else (1 if a.method == "cd" else 15)
    hist, _ = train(a.method, k, epochs=a.epochs, seed=a.seed, init_seed=a.init_seed, shuffle=not a.no_shuffle)
    times = [h[2] for h in hist]
    print(f"final test reconstruction cross-entropy ({a.method.upper()}-{k}): {hist[-1][1]:.4f} nats; "
          f"{np.mean(times) * 1000:.1f} ms per epoch (mean)")


if __name__ == "__main__":
    main()
