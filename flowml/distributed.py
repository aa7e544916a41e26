"""The processes of a data-parallel run: which rank this is, and the collectives, over MPI.

`world()` is the process group a program runs in. Launched by `mpiexec` (MPICH's or Open MPI's
environment variables say so, or FLOWML_MPI=1), it is MPI_COMM_WORLD through mpi4py, imported
here and only here, on first use; otherwise it is one process, where every collective is the
identity — so a model with `allreduce` runs unchanged without MPI, and `import flowml` never
loads mpi4py.

No collective blocks blindly: each is started non-blocking and waited for while watching for
an error notice from another rank. A rank that raises sends one (`report_failure`), so the
others stop with an error naming it and its exception instead of waiting forever. A rank that
dies without raising (killed by a signal) cannot send one: mpiexec then stops the others at once
(MPICH's reports the dead process's pid and signal; `flowml train --distributed` prints each
rank's pid at start-up).
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

from .errors import FlowError

_LAUNCHER_VARS = ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK")
_ERROR_TAG, _ACK_TAG = 7701, 7702
_OPS = ("sum", "mean", "max")
SPIN_S = 0.001  # a collective's wait spins this long, then polls every 0.2 ms
ACK_WAIT_S = 10.0  # how long a failed rank waits for the others to have read its notice


class RankFailed(FlowError):
    """Another rank raised (or sent an error notice): this rank stops too."""

    def __init__(self, rank: int, what: str):
        super().__init__(f"rank {rank} failed: {what}")
        self.rank = rank


class MismatchError(FlowError):
    """The ranks disagree about the model or the data (every rank raises it, so none is left
    waiting)."""


def launched_by_mpi() -> bool:
    return os.environ.get("FLOWML_MPI") == "1" or any(v in os.environ for v in _LAUNCHER_VARS)


def _load_mpi():
    try:
        from mpi4py import MPI
    except ImportError as e:  # no mpi4py, or mpi4py without an MPI library to load
        raise FlowError(f"this process was started by mpiexec, but mpi4py cannot be loaded ({e})",
                        notes=["install the MPI extra: pip install 'flowml[mpi]' (mpi4py and MPICH)"]) from None
    return MPI


class World:
    """One process: rank 0 of 1, every collective the identity (a copy)."""

    rank = 0
    size = 1
    comm = None

    def allreduce(self, x: np.ndarray, op: str = "sum") -> np.ndarray:
        return np.array(x, copy=True)

    def allgather(self, x: np.ndarray) -> np.ndarray:
        return np.array(x)[None].copy()

    def broadcast(self, x: np.ndarray, root: int = 0) -> np.ndarray:
        _check_root(root, self.size)
        return np.array(x, copy=True)

    def gather_objects(self, obj) -> list:
        return [obj]

    def broadcast_object(self, obj, root: int = 0):
        return obj

    def report_failure(self, exc: BaseException) -> None:
        pass

    def exit(self, code: int) -> None:
        """End the process (after a failure); one process just returns."""

    def __repr__(self) -> str:
        return f"<flowml world: rank {self.rank} of {self.size}>"


def _check_root(root: int, size: int) -> None:
    if not 0 <= root < size:
        raise FlowError(f"broadcast from rank {root}, but there are {size} rank(s)")


class MPIWorld(World):
    """MPI_COMM_WORLD. Collectives take numpy arrays and return new ones."""

    def __init__(self):
        self.MPI = MPI = _load_mpi()
        self.comm = MPI.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self._failed_peer: RankFailed | None = None
        self._reported = False
        self._pending: list = []  # failure notices and acknowledgements on their way
        self._acks: list = []
        self.collective_seconds = 0.0  # time spent in collectives (for the benchmark)

    # ------------------------------------------------------------ waiting, with failure notices

    def _wait(self, request) -> None:
        """Wait for `request` while watching for another rank's error notice: spin for SPIN_S
        (a small allreduce takes microseconds), then poll every ~0.2 ms, giving the CPU to the
        ranks being waited for where there are more ranks than cores."""
        if self._failed_peer is not None:
            raise self._failed_peer
        status = self.MPI.Status()
        spin_until = time.perf_counter() + SPIN_S
        while not request.Test():
            if self.comm.Iprobe(source=self.MPI.ANY_SOURCE, tag=_ERROR_TAG, status=status):
                source = status.Get_source()
                what = self.comm.recv(source=source, tag=_ERROR_TAG)
                self._failed_peer = RankFailed(source, what)
                self._acknowledge(source)
                raise self._failed_peer
            if time.perf_counter() > spin_until:
                time.sleep(0.0002)

    def take_failure_notice(self) -> "RankFailed":
        """The failure notice native code saw waiting (`MPI_Iprobe` on the error tag): received,
        acknowledged and returned as the error to raise."""
        if self._failed_peer is None:
            status = self.MPI.Status()
            self.comm.probe(source=self.MPI.ANY_SOURCE, tag=_ERROR_TAG, status=status)
            source = status.Get_source()
            self._failed_peer = RankFailed(source, self.comm.recv(source=source, tag=_ERROR_TAG))
            self._acknowledge(source)
        return self._failed_peer

    def _acknowledge(self, source: int) -> None:
        try:
            self._pending.append(self.comm.isend(True, dest=source, tag=_ACK_TAG))
        except Exception:  # noqa: BLE001 - the failed rank may be gone already
            pass

    def _run(self, start) -> None:
        t0 = time.perf_counter()
        self._wait(start())
        self.collective_seconds += time.perf_counter() - t0

    # ------------------------------------------------------------ collectives

    def allreduce(self, x: np.ndarray, op: str = "sum") -> np.ndarray:
        if op not in _OPS:
            raise FlowError(f"allreduce op must be one of {', '.join(_OPS)}, not {op!r}")
        send = np.asarray(x, order="C")
        out = np.empty_like(send)
        mpi_op = self.MPI.MAX if op == "max" else self.MPI.SUM
        self._run(lambda: self.comm.Iallreduce(send, out, op=mpi_op))
        if op == "mean":
            out = (out / self.size).astype(send.dtype, copy=False)
        return out

    def allgather(self, x: np.ndarray) -> np.ndarray:
        send = np.asarray(x, order="C")
        shapes = self.gather_objects((send.shape, send.dtype.str))
        if any(s != shapes[0] for s in shapes):
            raise FlowError("allgather needs the same shape and dtype on every rank, got "
                            + ", ".join(f"rank {r}: {np.dtype(d)}{list(s)}" for r, (s, d) in enumerate(shapes)))
        out = np.empty((self.size,) + send.shape, dtype=send.dtype)
        self._run(lambda: self.comm.Iallgather(send, out))
        return out

    def broadcast(self, x: np.ndarray, root: int = 0) -> np.ndarray:
        _check_root(root, self.size)
        buf = np.array(x, copy=True, order="C")
        self._run(lambda: self.comm.Ibcast(buf, root=root))
        return buf

    def gather_objects(self, obj) -> list:
        """Every rank's `obj` (small, pickled), on every rank."""
        import pickle
        payload = np.frombuffer(pickle.dumps(obj), dtype=np.uint8)
        sizes = self.allgather_ints(len(payload))
        buf = np.zeros((self.size, max(sizes)), dtype=np.uint8)
        padded = np.zeros(max(sizes), dtype=np.uint8)
        padded[:len(payload)] = payload
        self._run(lambda: self.comm.Iallgather(padded, buf))
        return [pickle.loads(buf[r, :sizes[r]].tobytes()) for r in range(self.size)]

    def allgather_ints(self, value: int) -> list[int]:
        send = np.array([value], dtype=np.int64)
        out = np.empty(self.size, dtype=np.int64)
        self._run(lambda: self.comm.Iallgather(send, out))
        return [int(v) for v in out]

    def broadcast_object(self, obj, root: int = 0):
        return self.gather_objects(obj if self.rank == root else None)[root]

    # ------------------------------------------------------------ failures

    def report_failure(self, exc: BaseException) -> None:
        """Tell every other rank that this one failed with `exc` (once; not for a failure that
        came from another rank)."""
        if self._reported or isinstance(exc, (RankFailed, MismatchError)):
            return
        self._reported = True
        what = f"{type(exc).__name__}: {exc}".strip()
        for r in range(self.size):
            if r != self.rank:
                self._pending.append(self.comm.isend(what, dest=r, tag=_ERROR_TAG))
                self._acks.append(self.comm.irecv(source=r, tag=_ACK_TAG))

    def exit(self, code: int) -> None:
        """End this process after a failure without MPI_Finalize (which could wait for a rank
        that will never get there). A rank that failed first waits (a bounded time) until the
        others have read its notice, so they can say which rank failed and why."""
        sys.stdout.flush()
        sys.stderr.flush()
        deadline = time.monotonic() + (ACK_WAIT_S if self._reported else 1.0)
        pending = self._acks + self._pending
        while pending and time.monotonic() < deadline:
            pending = [r for r in pending if not r.Test()]
            time.sleep(0.01)
        os._exit(code)

    def __repr__(self) -> str:
        return f"<flowml world: rank {self.rank} of {self.size} (MPI)>"


_WORLD: World | None = None


def world() -> World:
    """The process group of this run (created on first use)."""
    global _WORLD
    if _WORLD is None:
        _WORLD = MPIWorld() if launched_by_mpi() else World()
    return _WORLD


def use_world(w: World | None) -> None:
    """Set the world (tests, embedding); None: decide again on next use."""
    global _WORLD
    _WORLD = w
