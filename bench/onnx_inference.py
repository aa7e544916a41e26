"""Issue 18's inference benchmark: the PyTorch-exported MLP and LeNet (tests/data/onnx/, made by
tests/data/onnx/make_torch_models.py: `torch.onnx.export`, opset 17, a dynamic batch axis) run by
onnxruntime and, imported with `flowml.from_onnx`, by flowml's LLVM backend, at batch 1 and 256,
with 1 and then 2 threads for both (each thread count in a fresh process: flowml reads
FLOWML_NUM_THREADS when a function first runs). Outputs are checked equal first.

    python bench/onnx_inference.py [--calls-1 2000] [--calls-256 200] [--repeats 5]

Prints µs per call, the best of `--repeats` runs of the given number of calls, and the ratio
onnxruntime / flowml (above 1: flowml is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = {"MLP": "torch_mlp.onnx", "LeNet": "torch_lenet.onnx"}


def _best(fn, x, calls, repeats):
    fn(x)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(calls):
            fn(x)
        best = min(best, (time.perf_counter() - t) / calls)
    return best * 1e6


def child(threads: int, calls: dict, repeats: int) -> None:
    sys.path.insert(0, REPO)
    import onnxruntime as ort

    import flowml
    out = {}
    for name, file in MODELS.items():
        path = os.path.join(REPO, "tests", "data", "onnx", file)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        feed = sess.get_inputs()[0].name
        model = flowml.from_onnx(path, backend="llvm")
        fn = next(iter(model.functions.values()))
        rng = np.random.default_rng(0)
        for batch in (1, 256):
            x = rng.uniform(0, 1, size=(batch, 1, 8, 8)).astype(np.float32)
            want = sess.run(None, {feed: x})[0]
            got = fn(x)
            np.testing.assert_allclose(got[0] if isinstance(got, tuple) else got, want, rtol=1e-4, atol=1e-5)
            ort_us = _best(lambda v: sess.run(None, {feed: v}), x, calls[batch], repeats)
            flowml_us = _best(fn, x, calls[batch], repeats)
            out[f"{name} batch {batch}"] = (ort_us, flowml_us)
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls-1", type=int, default=2000)
    ap.add_argument("--calls-256", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    calls = {1: args.calls_1, 256: args.calls_256}
    if args.child:
        return child(args.child, calls, args.repeats)
    print(f"load average: {' '.join(open('/proc/loadavg').read().split()[:3])}")
    print("| model | threads | onnxruntime (µs) | flowml llvm (µs) | ort / flowml |")
    print("|---|---:|---:|---:|---:|")
    for threads in (1, 2):
        env = dict(os.environ, FLOWML_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))
        r = subprocess.run([sys.executable, __file__, "--child", str(threads), "--calls-1", str(args.calls_1),
                            "--calls-256", str(args.calls_256), "--repeats", str(args.repeats)],
                           env=env, capture_output=True, text=True, check=True)
        for key, (ort_us, flowml_us) in json.loads(r.stdout.strip().splitlines()[-1]).items():
            model, _, batch = key.partition(" batch ")
            print(f"| {model}, batch {batch} | {threads} | {ort_us:.1f} | {flowml_us:.1f} | {ort_us / flowml_us:.2f}x |")


if __name__ == "__main__":
    main()
