"""Reading and writing .npz files (params, data): atomically, and never unpickling."""

from __future__ import annotations

import os
import tempfile
import zipfile

import numpy as np

from .errors import FlowError


def save_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    """Write `arrays` to `path` atomically: a temporary file in the same folder, then rename,
    so a reader never sees half a file and a crash leaves the old file intact."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".flowml-", suffix=".npz.tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_npz(path: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise FlowError(f"{path}: no such file") from None
    except (ValueError, OSError, zipfile.BadZipFile, EOFError):
        # (numpy's own message suggests allow_pickle=True: never, for a file from elsewhere)
        raise FlowError(f"{path}: not a readable .npz file of plain arrays") from None
