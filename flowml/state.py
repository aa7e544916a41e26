"""The params' values of one graph, shared by every function compiled from it, on any backend.

Each backend keeps params its own way between calls (numpy arrays that LLVM kernels update in
place, device buffers for OpenCL), so a `SharedState` holds one backend state per backend and
remembers, per param, which of them wrote it last. Before a function runs, its backend's state
is brought up to date (`acquire`: only the params another backend changed are copied); after, the
params it updated are marked as changed there (`wrote`). A `.flow` model has one backend, and
both are then a dict lookup.
"""

from __future__ import annotations

import threading

import numpy as np


class SharedState:
    def __init__(self) -> None:
        self._states: dict[str, object] = {}   # backend name -> that backend's state
        self._holder: dict[str, str] = {}      # param -> the backend whose copy is current
        self._stale: dict[str, set[str]] = {}  # backend name -> params whose current value is elsewhere
        # held by every call that updates params (or checks a call): such calls run one at a time
        self.lock = threading.RLock()

    def state(self, backend):
        """`backend`'s state, created on first use (it starts stale in every param held so far)."""
        key = backend.name
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = backend.create_state({})
            self._stale[key] = set(self._holder)
        return state

    def stale(self, key: str) -> set[str]:
        """The params whose current value backend `key` lacks (the set itself, kept up to date)."""
        return self._stale[key]

    def acquire(self, key: str):
        """The state of backend `key` with the current value of every param, for a call there."""
        state = self._states[key]
        stale = self._stale[key]
        if stale:
            for name in stale:
                state.set(name, self._states[self._holder[name]].get(name))
            stale.clear()
        return state

    def wrote(self, key: str, names) -> None:
        """Backend `key` changed params `names` (a call's updates): the other copies are stale."""
        if len(self._states) == 1:
            return
        for name in names:
            self._holder[name] = key
            for other, stale in self._stale.items():
                if other != key:
                    stale.add(name)

    def has(self, name: str) -> bool:
        return name in self._holder

    def get(self, name: str) -> np.ndarray:
        """A copy of the param's current value (read back from the device where it lives there)."""
        return self._states[self._holder[name]].get(name)

    def set(self, name: str, value: np.ndarray, key: str) -> None:
        """Set the param in backend `key`'s state; the other backends' copies become stale."""
        self._states[key].set(name, value)
        self._stale[key].discard(name)
        self._holder[name] = key
        for other, stale in self._stale.items():
            if other != key:
                stale.add(name)
