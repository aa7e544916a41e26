"""The interface every peer implements (one subclass per library)."""

from __future__ import annotations

from typing import Any, Callable


class Peer:
    """A library under test. Each `wN` method builds the workload and returns what to time:

    - w1(x) / w2(x, y): a zero-argument callable doing one evaluation (w2's returns the sum);
    - w3(d): a zero-argument callable doing one training step (keeps its own state);
    - w4(d): the same for the MLP (returns the cost);
    - w5(): (f, args) with args already in the library's own types; per call is f(*args);
    - w7(d): a zero-argument callable returning the four H·v blocks;
    - w8(d): a zero-argument callable returning W8's loss and its gradients (Wx, Wh, b).

    Missing methods mean "not applicable". Building (compiling) happens in wN or on the first
    call; the harness always makes warm-up calls first, except for W6 which times exactly that.
    """

    name = "?"
    threads = 1

    def __init__(self, threads: int = 1, **opts: Any):
        self.threads = threads
        self.notes: list[str] = []

    def versions(self) -> dict[str, str]:
        return {}

    def block(self, out: Any) -> Any:
        """Wait for an asynchronous result (JAX); the identity elsewhere."""
        return out

    def cache_env(self, cache_dir: str) -> dict[str, str] | None:
        """Environment that points the library's persistent compile cache at cache_dir, or None
        when it has none (then W6 has no warm-cache number)."""
        return None

    def supports(self, workload: str) -> bool:
        if workload == "W6":                      # W6 times building W3's step
            return hasattr(self, "w3")
        if workload == "R":                       # R measures W4's training memory
            return hasattr(self, "w4")
        return hasattr(self, workload.lower())


def np_versions(*modules) -> dict[str, str]:
    return {m.__name__: getattr(m, "__version__", "?") for m in modules}


Callable0 = Callable[[], Any]
