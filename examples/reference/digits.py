"""The data protocol every numpy reference shares (see examples/data/README.md): the pixel counts
over 16 (values in [0, 1]), train = rows [0, 1200), test = the other 597 rows, no shuffling of
the split."""

from __future__ import annotations

import os

import numpy as np

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "digits.npz")
SPLIT = 1200


def load_digits(path=DATA, split=SPLIT):
    """(X_train, y_train, X_test, y_test): X / 16 as float64, the labels as int64."""
    d = np.load(path)
    X = d["X"].astype(np.float64) / 16.0
    y = d["y"].astype(np.int64)
    return X[:split], y[:split], X[split:], y[split:]


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))
