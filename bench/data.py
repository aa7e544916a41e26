"""The workloads' data, made the same way (seeded) in every peer's process."""

from __future__ import annotations

import numpy as np

MLP_SIZES = (784, 500, 10)


def w1(n: int) -> np.ndarray:
    return np.random.default_rng(1).standard_normal(n, dtype=np.float32)


def w2(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(2)
    return rng.standard_normal(n, dtype=np.float32), rng.standard_normal(n, dtype=np.float32)


def w2_reference(x: np.ndarray, y: np.ndarray) -> float:
    d = x.astype(np.float64) - y.astype(np.float64)
    return float(np.dot(d, d))


def w3() -> dict[str, np.ndarray]:
    """Theano's classic logistic regression data: RandomState(0), x, y, then w."""
    rng = np.random.RandomState(0)
    x = rng.randn(400, 784)
    y = rng.randint(0, 2, 400).astype(np.float64)
    w = rng.randn(784)
    return {"x": x, "y": y, "w": w, "b": np.float64(0.0)}


def mlp_params() -> dict[str, np.ndarray]:
    """Glorot-uniform weights (W2 too, so that the HVP is not trivial), zero biases, f32."""
    rng = np.random.default_rng(4)
    n_in, n_hid, n_out = MLP_SIZES

    def glorot(a, b):
        lim = np.sqrt(6.0 / (a + b))
        return rng.uniform(-lim, lim, size=(a, b)).astype(np.float32)

    return {"W1": glorot(n_in, n_hid), "b1": np.zeros(n_hid, np.float32),
            "W2": glorot(n_hid, n_out), "b2": np.zeros(n_out, np.float32)}


def w4(batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((batch, MLP_SIZES[0]), dtype=np.float32)
    y = rng.integers(0, MLP_SIZES[2], size=batch).astype(np.int64)
    return {"x": x, "y": y, **mlp_params()}


def w7(batch: int = 256) -> dict[str, np.ndarray]:
    """W4's data and params plus a direction (v1..v4) in the params' space."""
    d = w4(batch)
    rng = np.random.default_rng(7)
    for i, name in enumerate(("W1", "b1", "W2", "b2"), start=1):
        d[f"v{i}"] = rng.standard_normal(d[name].shape, dtype=np.float32)
    return d


W8_SIZES = (50, 32, 64, 128)  # steps, batch, input, hidden


def w8() -> dict[str, np.ndarray]:
    """W8's LSTM: sequences xs, targets ys, weights (gates i, f, o, g side by side), f32."""
    steps, batch, n_in, n_hid = W8_SIZES
    rng = np.random.default_rng(8)
    return {"xs": rng.standard_normal((steps, batch, n_in), dtype=np.float32),
            "ys": rng.uniform(-0.5, 0.5, (steps, batch, n_hid)).astype(np.float32),
            "Wx": (rng.standard_normal((n_in, 4 * n_hid)) / np.sqrt(n_in)).astype(np.float32),
            "Wh": (rng.standard_normal((n_hid, 4 * n_hid)) / np.sqrt(n_hid)).astype(np.float32),
            "b": np.zeros(4 * n_hid, np.float32)}


W11_N, W11_BATCH = 512, 1000


def w11() -> dict[str, np.ndarray]:
    """W11's matrices: a well-conditioned a [512, 512] with a right-hand side b, a symmetric
    positive definite s, and 1,000 small systems (a4 [1000, 4, 4], b4 [1000, 4, 1]), f64."""
    rng = np.random.default_rng(11)
    n = W11_N
    a = rng.standard_normal((n, n)) + np.sqrt(n) * np.eye(n)
    a4 = rng.standard_normal((W11_BATCH, 4, 4)) + 3 * np.eye(4)
    return {"a": a, "b": rng.standard_normal(n), "s": a @ a.T, "a4": a4,
            "b4": rng.standard_normal((W11_BATCH, 4, 1))}


PARAM_NAMES = ("W1", "b1", "W2", "b2")
