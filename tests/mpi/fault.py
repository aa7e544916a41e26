"""Run by tests/test_distributed.py under `mpiexec -n 2`: rank 1 fails on its third step, by
raising (`raise`) or by being killed (`kill`, SIGKILL: no Python error at all); rank 0 must stop."""

import os
import signal
import sys
from pathlib import Path

import numpy as np

from flowml import dataparallel as dp
from flowml.api import parse_program
from flowml.distributed import world
from flowml.train import Phase, train

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


class Faulty:
    """The step fn, failing on rank 1's third call."""

    def __init__(self, fn, how):
        self.fn, self.how, self.calls = fn, how, 0
        self.input_names, self.model, self.name = fn.input_names, fn.model, fn.name

    def __call__(self, *args, **inputs):
        self.calls += 1
        if world().rank == 1 and self.calls == 3:
            if self.how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise ValueError("injected fault on the third step")
        return self.fn(*args, **inputs)


def main():
    w = world()
    with np.load(EXAMPLES / "data" / "digits.npz") as d:
        data = {"X": d["X"][:400].astype(np.float64), "y": d["y"][:400].astype(np.int64)}

    def body():
        model, _ = dp.prepare(parse_program(open(EXAMPLES / "mlp.flow").read(), "mlp.flow"), ["train"], w,
                              backend="reference")
        pids = dp.check_agreement(w, model, data, {})
        if w.rank == 0:
            print(dp.describe(w, pids, 10), flush=True)
        model.functions["train"] = Faulty(model.functions["train"], sys.argv[1])
        train(model, data, [Phase("train", 5)], 10, None, None, progress=False, world=w)
        print(f"rank {w.rank} finished training", flush=True)
    dp.run_guarded(w, body)


if __name__ == "__main__":
    main()
