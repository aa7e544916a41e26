"""numpy's rule for integer indices and class labels, shared by every op that takes them
(indexing and its scatter-add, onehot, categorical_crossentropy) so values and gradients agree:
an index in [-n, n) wraps once (-1 is the last), anything else is an error that names the
operand and the first bad position (ONNX's Gather and OneHot use the same rule)."""

from __future__ import annotations

import numpy as np


class IndexOutOfRange(IndexError):
    """An index outside [-size, size). `operand` is the position of the index array among the
    node's operands; the backend that catches this names that operand and locates the node."""

    def __init__(self, operand: int, position: tuple, value: int, size: int, what: str, axis: int | None):
        self.operand, self.position, self.value, self.size, self.what, self.axis = \
            operand, position, value, size, what, axis
        super().__init__(self.describe(None))

    def describe(self, name: str | None) -> str:
        """The message, naming the index array `name` (None: an unnamed value, by operand)."""
        at = "[" + ", ".join(map(str, self.position)) + "]" if self.position else ""
        subject = f"{self.what} {name}{at}" if name else f"{self.what}{at} (operand {self.operand + 1})"
        of = f"axis {self.axis} of size {self.size}" if self.axis is not None else f"{self.size} classes"
        return (f"{subject} = {self.value} is out of range for {of} "
                f"(valid: {-self.size} to {self.size - 1}; negative ones count from the end)")


def first_true(mask: np.ndarray) -> tuple | None:
    """The position (a tuple of ints) of the first true entry of `mask`, or None."""
    if not mask.any():
        return None
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(mask)), mask.shape))


def first_bad(idx: np.ndarray, size: int) -> tuple | None:
    """The position of the first index outside [-size, size), or None."""
    return first_true((idx < -size) | (idx >= size))


def wrap(idx, size: int, operand: int, what: str = "index", axis: int | None = None) -> np.ndarray:
    """`idx` with negative entries wrapped once (idx + size); IndexOutOfRange for an entry
    outside [-size, size). Returns `idx` itself when nothing needs wrapping."""
    idx = np.asarray(idx)
    if idx.size == 0:
        return idx
    lo, hi = idx.min(), idx.max()
    if lo >= 0 and hi < size:
        return idx
    if lo < -size or hi >= size:
        pos = first_bad(idx, size)
        raise IndexOutOfRange(operand, pos, int(idx[pos]), size, what, axis)
    return np.where(idx < 0, idx + size, idx)
