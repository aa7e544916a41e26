"""`flowml train --distributed`: what each rank does around the rewritten step fns.

    model = prepare(program, step_fns, world)   rewrite the step fns (passes/distribute.py),
                                                compile, check the ranks agree, sync the params
    shard(global_batch, world)                  this rank's rows of one global mini-batch
    run_guarded(world, body)                    a rank that fails tells the others, then ends

Every rank draws the same permutation of the rows (the same seed); global mini-batch j is rows
order[j·K·B : (j+1)·K·B] (K ranks, B = --batch, the per-rank batch) and rank r takes the r-th of
its K nearly equal parts (np.array_split: the last, shorter batch is split as evenly as it goes;
one with fewer rows than ranks is dropped on every rank). Params start identical: rank 0's
values (initializers, --load-params, the random streams' key) are broadcast to all.
"""

from __future__ import annotations

import hashlib
import sys
import traceback

import numpy as np

from .distributed import MismatchError, World
from .ir.ops.collective import Collective
from .passes.distribute import BUCKET_BYTES, distribute
from .program import Model, Program


def prepare(program: Program, step_fns: list[str], world: World, backend=None, seed=None,
            bucket_bytes: int = BUCKET_BYTES, exclude=()) -> tuple[Model, dict]:
    """The model with its step fns rewritten for data parallelism; returns (model, plans)."""
    plans = {}
    for name in dict.fromkeys(step_fns):
        if name in program.functions:  # (an unknown fn is reported by train)
            plans[name] = distribute(program, name, bucket_bytes)
    model = Model(program, backend=backend, seed=seed, exclude=exclude)
    return model, plans


def check_agreement(world: World, model: Model, data: dict[str, np.ndarray], options: dict) -> list[int]:
    """Every rank must run the same model on data of the same shapes with the same options:
    compared at start-up (one small message), reported on every rank. Returns the ranks' pids."""
    h = hashlib.sha256()
    for name, fn in model.functions.items():
        h.update(fn.ir().encode())
    facts = {"model": h.hexdigest()[:16],
             "params": {k: str(v.var.type) for k, v in model.program.params.items()},
             "data": {k: f"{v.dtype}[{', '.join(map(str, v.shape))}]" for k, v in data.items()},
             "options": options}
    import os
    everyone = world.gather_objects((facts, os.getpid()))
    pids = [e[1] for e in everyone]
    everyone = [e[0] for e in everyone]
    for r, other in enumerate(everyone):
        for key in facts:
            if other[key] != everyone[0][key]:
                raise MismatchError(f"rank {r} does not agree with rank 0 about the {key}: "
                                    f"{_diff(everyone[0][key], other[key], r)}")
    return pids


def describe(world: World, pids: list[int], batch: int) -> str:
    """The start-up line rank 0 prints (the pids let a launcher's report be read by rank)."""
    return (f"distributed: {world.size} rank(s) (pids " + ", ".join(f"{r}: {p}" for r, p in enumerate(pids))
            + f"), {batch} rows per rank, global mini-batch {batch * world.size}")


def _diff(a, b, rank: int) -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = [k for k in sorted(set(a) | set(b), key=str) if a.get(k) != b.get(k)]
        return "; ".join(f"{k}: {a.get(k, 'missing')} on rank 0, {b.get(k, 'missing')} on rank {rank}" for k in keys)
    return f"{a} on rank 0, {b} on rank {rank}"


def check_evaluate(model: Model, evaluate: str | None) -> None:
    """Rank 0 alone evaluates: the evaluate fn must not talk to the other ranks."""
    if evaluate is None or evaluate not in model.functions:
        return
    opt = model.functions[evaluate].compiled
    g = opt.graph
    for n in g.ancestors(opt.outputs):
        if isinstance(g.op(n), Collective):
            raise MismatchError(f"fn {evaluate} uses {g.op(n).name}, but with --distributed rank 0 evaluates "
                                "alone; evaluate without collectives", g.loc(n))


def sync_params(model: Model, world: World) -> None:
    """Rank 0's params (and random streams' key) on every rank."""
    for name in model.program.params:
        model._state.set(name, world.broadcast(model._state.get(name), 0))


def shard(rows: np.ndarray, world: World) -> np.ndarray | None:
    """This rank's part of one global mini-batch (None: too few rows for every rank, dropped)."""
    if world.size == 1:
        return rows
    if len(rows) < world.size:
        return None
    return np.array_split(rows, world.size)[world.rank]


def epoch_loss(losses: list[tuple[int, float]], world: World) -> float:
    """The mean over global batches of each batch's loss (per-rank means weighted by rows)."""
    if not losses:
        return float("nan")
    rows = np.array([n for n, _ in losses], dtype=np.float64)
    means = np.array([m for _, m in losses], dtype=np.float64)
    if world.size == 1:
        return float(np.mean(means))
    both = world.allreduce(np.stack([rows * means, rows]), "sum")
    return float(np.mean(both[0] / both[1]))


def run_guarded(world: World, body, log=None):
    """Run `body()`; if it raises on this rank, tell the other ranks (so they stop, naming this
    rank and its exception), print the error and end the process non-zero. A disagreement found
    at start-up (by every rank) returns 1, to end normally. One process simply re-raises."""
    try:
        return body()
    except BaseException as e:  # noqa: BLE001 - every failure must reach the other ranks
        if world.size == 1:
            raise
        world.report_failure(e)
        from .errors import FlowError
        from .distributed import RankFailed
        if isinstance(e, RankFailed):
            print(f"error (rank {world.rank}): {e}", file=sys.stderr)
        elif isinstance(e, MismatchError):  # every rank found it: no one is left waiting
            print(f"error: {e}", file=sys.stderr, flush=True)
            return 1
        elif isinstance(e, FlowError):
            print(f"error: rank {world.rank} failed: {e}", file=sys.stderr)
        else:
            traceback.print_exc()
            print(f"error: rank {world.rank} failed: {type(e).__name__}: {e}", file=sys.stderr)
        world.exit(1)
        raise
