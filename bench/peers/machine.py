"""Machine context, measured with numpy and scipy: copy bandwidth and BLAS GFLOP/s."""

from __future__ import annotations

import numpy as np

from ..timing import median, single_calls
from .base import Peer, np_versions


class MachinePeer(Peer):
    name = "machine"

    def versions(self):
        import scipy
        out = np_versions(np, scipy)
        try:
            from threadpoolctl import threadpool_info
            for lib in threadpool_info():
                if lib.get("user_api") == "blas":
                    out[f"blas:{lib['prefix']}"] = f"{lib['version']} {lib.get('architecture', '')}"
        except ImportError:
            pass
        return out

    def machine(self, sizes):
        from contextlib import nullcontext

        from scipy.linalg import blas
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:                        # the workers' environment pins threads too
            threadpool_limits = lambda n: nullcontext()  # noqa: E731

        src = np.ones(2**24, np.float32)            # 64 MiB
        dst = np.empty_like(src)
        t, _ = single_calls(lambda: np.copyto(dst, src), sizes.repeats)
        out = {"copy": {"value": 2 * src.nbytes / median(t) / 1e9, "unit": "GB/s",
                        "note": "bytes read + written"}}
        n = sizes.gemm_n
        rng = np.random.default_rng(0)
        with threadpool_limits(self.threads):
            for name, fn, dt in (("dgemm", blas.dgemm, np.float64), ("sgemm", blas.sgemm, np.float32)):
                a = np.asfortranarray(rng.standard_normal((n, n)).astype(dt))
                b = np.asfortranarray(rng.standard_normal((n, n)).astype(dt))
                t, _ = single_calls(lambda: fn(1.0, a, b), sizes.repeats)
                out[name] = {"value": 2 * n**3 / median(t) / 1e9, "unit": "GFLOP/s"}
        return out

    def supports(self, workload):
        return workload == "M"
