"""Numpy reference for examples/dae.flow: a denoising autoencoder after Theano's
DeepLearningTutorials dA.py, on the 8x8 digits.

Hyperparameters (the issue's): 64 visible, 100 hidden, tied weights, sigmoid units, binomial
(masking) corruption level 0.3, learning rate 0.1, batch 20, 200 epochs.
Protocol: X / 16 (values in [0, 1]); train = rows [0, 1200), test = rows [1200, 1797), no
shuffling of the split; the training rows are visited in a fresh random order every epoch
(numpy RandomState(seed).permutation), 60 mini-batches of 20 per epoch.

As in the tutorial:
* W ~ uniform(±4·sqrt(6 / (n_visible + n_hidden))) (numpy RandomState(123), after the
  tutorial's one `rng.randint(2 ** 30)` that seeds its corruption stream), zero biases;
* x̃ = x · binomial(1, 1 - 0.3) (each input zeroed with probability 0.3);
  y = σ(x̃ W + b), z = σ(y Wᵀ + b');
* cost = mean over the batch of -Σ_i [x_i log z_i + (1 - x_i) log(1 - z_i)] (the clean x is
  the target), one plain SGD step of lr on W, b, b'.

Evaluation: the clean test reconstruction cross-entropy (no corruption), mean over test rows of
-Σ_i [x_i log z_i + (1 - x_i) log(1 - z_i)], z = σ(σ(x W + b) Wᵀ + b'), in nats.

    python examples/reference/dae_numpy.py

Results after 200 epochs (clean test reconstruction cross-entropy, nats; the issue's reference:
16.69): 16.87 with shuffled batches (order seed 0; 16.77-16.87 over 4 seeds of order and init),
16.70 visiting the training rows in order (--no-shuffle, as the tutorial does; 16.70-16.78 over
3 init seeds) -- the issue's number was most likely made in that order. About 10 ms per epoch
on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # digits.py beside it, however it is loaded
from digits import load_digits, sigmoid  # noqa: E402


def recon_xent(x, W, b, b_prime):
    """Mean over rows of the clean reconstruction cross-entropy (nats)."""
    a = sigmoid(x @ W + b) @ W.T + b_prime
    return float(np.mean(np.sum(np.logaddexp(0.0, a) - x * a, axis=1)))


def train(n_hidden=100, corruption=0.3, lr=0.1, batch=20, epochs=200, seed=0, init_seed=123,
          shuffle=True, train_x=None, test_x=None, verbose=True):
    if train_x is None:
        train_x, _, test_x, _ = load_digits()
    n_visible = train_x.shape[1]
    rng = np.random.RandomState(init_seed)
    noise_rng = np.random.RandomState(rng.randint(2 ** 30))   # the tutorial's theano_rng seed
    bound = 4 * np.sqrt(6.0 / (n_hidden + n_visible))
    W = rng.uniform(-bound, bound, size=(n_visible, n_hidden))
    b, b_prime = np.zeros(n_hidden), np.zeros(n_visible)
    order_rng = np.random.RandomState(seed)
    history = []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        order = order_rng.permutation(len(train_x)) if shuffle else np.arange(len(train_x))
        costs = []
        for start in range(0, len(order), batch):
            x = train_x[order[start:start + batch]]
            n = len(x)
            tilde = x * (noise_rng.uniform(size=x.shape) < 1 - corruption)
            y = sigmoid(tilde @ W + b)
            a = y @ W.T + b_prime
            z = sigmoid(a)
            costs.append(float(np.mean(np.sum(np.logaddexp(0.0, a) - x * a, axis=1))))
            da = (z - x) / n                      # d cost / d a
            dy = (da @ W) * y * (1 - y)           # back through the encoder
            gW = da.T @ y + tilde.T @ dy          # tied weights: decoder + encoder parts
            W = W - lr * gW
            b = b - lr * dy.sum(0)
            b_prime = b_prime - lr * da.sum(0)
        dt = time.perf_counter() - t0
        test = recon_xent(test_x, W, b, b_prime)
        history.append((float(np.mean(costs)), test, dt))
        if verbose:
            print(f"epoch {epoch + 1:3d}  train cost {np.mean(costs):8.4f}  test recon xent {test:8.4f}  "
                  f"{dt * 1000:7.1f} ms", flush=True)
    return history, (W, b, b_prime)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--corruption", type=float, default=0.3)
    p.add_argument("--hidden", type=int, default=100)
    p.add_argument("--seed", type=int, default=0, help="seed of the mini-batch order")
    p.add_argument("--init-seed", type=int, default=123)
    p.add_argument("--no-shuffle", action="store_true", help="visit the training rows in order (as the tutorial does)")
    a = p.parse_args(argv)
    hist, _ = train(a.hidden, a.corruption, epochs=a.epochs, seed=a.seed, init_seed=a.init_seed, shuffle=not a.no_shuffle)
    times = [h[2] for h in hist]
    print(f"final clean test reconstruction cross-entropy: {hist[-1][1]:.4f} nats; "
          f"{np.mean(times) * 1000:.1f} ms per epoch (mean)")


if __name__ == "__main__":
    main()
