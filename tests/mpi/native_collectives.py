"""Run under `mpiexec -n 2`: the LLVM backend's native collectives (no host steps) against
numpy, and a rank whose batch differs from the other's is a located error on both ranks."""

import json
import sys

import numpy as np

import flowml
from flowml.distributed import world

SRC = """
input x : f64[N]
fn f(x) -> (allreduce(x), allreduce(x, op="mean"), allreduce(x, op="max"), allgather(x), broadcast(x, root=1),
            rank(), world_size())
"""

model = flowml.loads(SRC, backend="llvm", file="collectives.flow")
w = world()
x = np.arange(3.0) + 10 * w.rank
rows = [np.arange(3.0) + 10 * r for r in range(w.size)]
want = [sum(rows), sum(rows) / w.size, np.max(rows, axis=0), np.stack(rows), rows[1], w.rank, w.size]
got = model.f(x)
result = {"host steps": len(model.f._executable.host_steps()),
          "wrong": [i for i, (g, e) in enumerate(zip(got, want)) if not np.array_equal(g, e)]}
try:
    model.f(np.arange(2.0 + w.rank))
except flowml.FlowRuntimeError as e:
    result["mismatch"] = str(e).splitlines()[0]
# one write of the whole line: the ranks share mpiexec's stdout, and a print's text and its
# newline written apart can interleave with the other rank's line
sys.stdout.write("RESULT " + json.dumps(result) + "\n")
sys.stdout.flush()
