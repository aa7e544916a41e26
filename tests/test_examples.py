"""Every shipped example builds, runs, and has derivatives that pass `flowml gradcheck`."""

import glob
import os

import numpy as np
import pytest

import flowml
from helpers import run_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = sorted(glob.glob(os.path.join(ROOT, "examples", "*.flow")))


def test_there_are_examples():
    assert {"logreg.flow", "softmax.flow", "hvp.flow"} <= {os.path.basename(p) for p in EXAMPLES}


def test_gradcheck_passes_for_every_example():
    result = run_cli("gradcheck", *EXAMPLES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAIL" not in result.stdout
    assert result.stdout.count("pass") >= 7


@pytest.mark.parametrize("path", EXAMPLES, ids=os.path.basename)
def test_example_builds(path):
    model = flowml.load(path)
    assert model.functions


def test_softmax_example_learns_the_digits():
    data = np.load(os.path.join(ROOT, "examples", "data", "digits.npz"))
    model = flowml.load(os.path.join(ROOT, "examples", "softmax.flow"))
    X, y = data["X"][:1200].astype(np.float64), data["y"][:1200].astype(np.int64)
    first, _ = model.train(X, y)
    for _ in range(100):
        cost, error = model.train(X, y)
    assert cost < 0.5 * first
    _, test_error = model.evaluate(data["X"][1200:].astype(np.float64), data["y"][1200:].astype(np.int64))
    assert test_error < 0.15


def test_hvp_example_curvatures():
    """The Gauss-Newton curvature is never negative; the Hessian's along v is close to it here."""
    data = np.load(os.path.join(ROOT, "examples", "data", "digits.npz"))
    model = flowml.load(os.path.join(ROOT, "examples", "hvp.flow"))
    loss, vHv, vGv = model.curvature(data["X"][:200].astype(np.float64), data["y"][:200].astype(np.int64))
    assert np.isfinite(loss) and vGv >= 0
    assert abs(vHv - vGv) < 0.5 * abs(vGv)
