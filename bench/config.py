"""What the benchmark measures: workloads, their sizes (full and quick), and the reported metrics."""

from __future__ import annotations

from dataclasses import dataclass

WORKLOADS = ["W1", "W2", "W3", "W4", "W5", "W6", "W7", "W8", "W11", "R", "M"]
THREADED = ["W1", "W2"]          # also run at every extra thread count (--threads 1,2)

DESCRIPTIONS = {
    "W1": "log(1+exp(x)) * (1/(1+exp(-x))) + x*x, f32",
    "W2": "sum((x-y)**2), f32",
    "W3": "logistic regression train step (400x784 f64), total for 10,000 steps",
    "W4": "MLP 784-500-10 tanh/softmax, NLL + L2, SGD lr 0.01, f32",
    "W5": "f(a, b) = a + b on f64 scalars, per call",
    "W6": "build + first call of W3's train, fresh process (cold / warm cache)",
    "W7": "Hessian-vector product of W4's loss w.r.t. all params, batch 256",
    "W8": "LSTM 64-128, 50 steps, batch 32, f32: loss + gradients of all weights (BPTT)",
    "W11": "linear algebra, f64: solve / cholesky / slogdet / eigh of 512 x 512, and 1,000 solves of 4 x 4",
    "R": "peak RSS of W4's batch-256 training in a fresh process (and above the imports)",
    "M": "machine context: copy bandwidth, BLAS dgemm/sgemm 1024x1024",
}

W3_REPORT_STEPS = 10_000         # W3 is always reported as seconds per 10,000 steps


@dataclass(frozen=True)
class Sizes:
    n_elem: int          # W1, W2 vector length
    repeats: int         # W1, W2 timed single calls (median)
    w3_steps: int        # W3 steps actually run (extrapolated to 10,000 when fewer)
    w3_budget_s: float   # W3: run fewer steps (and extrapolate) when 10,000 would take longer
    min_time_s: float    # W4, W5, W7: each repeat runs calls for at least this long
    rate_repeats: int    # W4, W5, W7: repeats (median)
    gemm_n: int          # M: square matrix size for dgemm/sgemm
    workload_timeout_s: float


FULL = Sizes(n_elem=2**24, repeats=7, w3_steps=10_000, w3_budget_s=90.0, min_time_s=0.5,
             rate_repeats=5, gemm_n=1024, workload_timeout_s=300.0)
QUICK = Sizes(n_elem=2**16, repeats=3, w3_steps=200, w3_budget_s=10.0, min_time_s=0.05,
              rate_repeats=3, gemm_n=256, workload_timeout_s=120.0)


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    better: str          # "lower" or "higher"
    ratio: bool = True   # show a ratio against the best column


METRICS = [
    Metric("W1", "W1 elementwise", "ms", "lower"),
    Metric("W1@2t", "W1 elementwise, 2 threads", "ms", "lower"),
    Metric("W2", "W2 sum of squares", "ms", "lower"),
    Metric("W2@2t", "W2 sum of squares, 2 threads", "ms", "lower"),
    Metric("W2.relerr", "W2 rel. error vs f64", "", "lower", ratio=False),
    Metric("W3", "W3 logreg 10k steps", "s", "lower"),
    Metric("W4.b20", "W4 MLP batch 20", "steps/s", "higher"),
    Metric("W4.b256", "W4 MLP batch 256", "steps/s", "higher"),
    Metric("W5", "W5 scalar a+b", "µs/call", "lower"),
    Metric("W6.import", "W6 import", "s", "lower", ratio=False),
    Metric("W6.cold", "W6 build+1st call, cold", "s", "lower"),
    Metric("W6.warm", "W6 build+1st call, warm cache", "s", "lower"),
    Metric("W7", "W7 MLP HVP batch 256", "ms", "lower"),
    Metric("W8", "W8 LSTM loss+grads (BPTT)", "ms", "lower"),
    Metric("W11.solve", "W11 solve 512 (one rhs)", "ms", "lower"),
    Metric("W11.cholesky", "W11 cholesky 512", "ms", "lower"),
    Metric("W11.slogdet", "W11 slogdet 512", "ms", "lower"),
    Metric("W11.eigh", "W11 eigh 512 (values + vectors)", "ms", "lower"),
    Metric("W11.batch", "W11 1,000 solves of 4 x 4", "ms", "lower"),
    Metric("R", "W4 b256 peak RSS", "MB", "lower"),
    Metric("R.model", "W4 b256 peak RSS above imports", "MB", "lower"),
]
MACHINE_METRICS = [
    Metric("copy", "np.copyto 64 MB (read+write)", "GB/s", "higher", ratio=False),
    Metric("dgemm", "scipy dgemm", "GFLOP/s", "higher", ratio=False),
    Metric("sgemm", "scipy sgemm", "GFLOP/s", "higher", ratio=False),
]

def workload_of(key: str) -> str:
    """The workload a metric key belongs to: "W4.b20" -> "W4", "W1@2t" -> "W1", "copy@2t" -> "M"."""
    base = key.split("@")[0].split(".")[0]
    return "M" if base in {m.key for m in MACHINE_METRICS} else base


# Environment that pins thread pools to `n` threads (set before the worker starts).
def thread_env(n: int) -> dict[str, str]:
    env = {name: str(n) for name in (
        "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "BLIS_NUM_THREADS",
        "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS", "NUMEXPR_MAX_THREADS", "NUMBA_NUM_THREADS",
        "FLOWML_NUM_THREADS")}
    eigen = "false" if n == 1 else "true"
    env["XLA_FLAGS"] = f"--xla_cpu_multi_thread_eigen={eigen} intra_op_parallelism_threads={n}"
    return env
