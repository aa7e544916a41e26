"""Registry of the peers: name -> (module, class, options), and which workloads each runs.

The registry is static so that the orchestrator needs no peer library to plan a run; the peer's
module is imported only inside its own worker process."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

ALL = ("W1", "W2", "W3", "W4", "W5", "W6", "W7", "R")
W8 = ("W8",)  # the LSTM: the peers with a scan and reverse mode through it (or eager autograd)
W11 = ("W11",)  # linear algebra: the peers with LAPACK-backed solves and decompositions


@dataclass(frozen=True)
class PeerSpec:
    module: str
    cls: str
    workloads: tuple[str, ...]
    opts: dict = field(default_factory=dict)


REGISTRY: dict[str, PeerSpec] = {
    "numpy": PeerSpec("numpy_peer", "NumpyPeer", ALL + W11),
    "numexpr": PeerSpec("numexpr_peer", "NumexprPeer", ("W1", "W2")),
    "numba": PeerSpec("numba_peer", "NumbaPeer", ALL),
    "pytensor": PeerSpec("pytensor_peer", "PytensorPeer", ALL),
    "pytensor.numba": PeerSpec("pytensor_peer", "PytensorPeer", ALL, {"linker": "numba"}),
    "jax": PeerSpec("jax_peer", "JaxPeer", ALL + W8 + W11),
    "torch": PeerSpec("torch_peer", "TorchPeer", ALL + W8 + W11),
    "torch.compile": PeerSpec("torch_peer", "TorchCompilePeer", ("W4", "R")),
    "flowml": PeerSpec("flowml_peer", "FlowmlPeer", ALL + W8 + W11),
    "machine": PeerSpec("machine", "MachinePeer", ("M",)),
}

DEFAULT_PEERS = ["numpy", "numexpr", "numba", "pytensor", "jax", "torch", "torch.compile"]


def create(name: str, threads: int, **opts):
    """Import the peer's module (and so its library) and make the peer."""
    spec = REGISTRY[name]
    module = importlib.import_module(f"bench.peers.{spec.module}")
    return getattr(module, spec.cls)(threads=threads, **{**spec.opts, **opts})
