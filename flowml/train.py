"""`flowml train`: mini-batch training of a model's step function over the rows of a data file.

The data file's arrays are matched to the step's inputs by name; all of them are split into the
same rows: the first `split` rows train, the rest test (the digits protocol: 1200). Each epoch
shuffles the training rows with the seed, calls the step fn on each mini-batch (the last,
shorter batch included), then evaluates the `evaluate` fn on the test rows. With `patience`,
the last phase stops after that many epochs without a better test result, and the params of its
best epoch are kept (and saved atomically with `save_params`); earlier phases (pretraining) run
all their epochs. With `--distributed` (flowml/dataparallel.py) each of K ranks takes its part
of every global mini-batch of K·batch rows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .errors import FlowError
from .program import Model


@dataclass
class Phase:
    fn: str         # the step fn
    epochs: int


@dataclass
class History:
    epochs: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)        # mean of the step's first output
    test: list[float] = field(default_factory=list)        # the evaluate fn's first output
    seconds: list[float] = field(default_factory=list)
    phase: list[str] = field(default_factory=list)


def parse_phases(spec: str | None, default_fn: str, epochs: int) -> list[Phase]:
    """`pretrain1:50,pretrain2:50,finetune:100` -> phases (`fn` alone takes --epochs)."""
    if not spec:
        return [Phase(default_fn, epochs)]
    phases = []
    for part in spec.split(","):
        name, _, n = part.strip().partition(":")
        if not name or (n and not n.isdigit()):
            raise FlowError(f"--phases expects FN:EPOCHS pairs like pretrain:50,finetune:100, not {part!r}")
        phases.append(Phase(name, int(n) if n else epochs))
    return phases


def _rows(data: dict[str, np.ndarray], names: list[str], fn: str, path: str) -> dict[str, np.ndarray]:
    missing = [n for n in names if n not in data]
    if missing:
        raise FlowError(f"{path}: has no array for input(s) {', '.join(missing)} of fn {fn} "
                        f"(arrays: {', '.join(data) or 'none'})")
    return {n: data[n] for n in names}


def _as_inputs(fn, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays converted once, as the call boundary would (losslessly, or a FlowCallError), to
    the dtypes `fn`'s inputs declare: the digits come as uint8, and a mini-batch of another
    dtype than its input's would be converted on every call, on the Python path."""
    from .program import coerce_array
    decls = fn.model.program.inputs
    return {k: coerce_array(a, decls[k].var.type, f"{fn.name}(): input '{k}'", decls[k].loc, {})
            for k, a in arrays.items()}


def _batch_count(arrays: dict[str, np.ndarray], fn: str, path: str) -> int:
    sizes = {n: len(a) for n, a in arrays.items() if np.ndim(a) > 0}
    if len(set(sizes.values())) > 1:
        raise FlowError(f"{path}: the inputs of fn {fn} have different numbers of rows: "
                        + ", ".join(f"{n}: {s}" for n, s in sizes.items()))
    return next(iter(sizes.values()), 0)


def train(model: Model, data: dict[str, np.ndarray], phases: list[Phase], batch: int, split: int | None,
          evaluate: str | None, seed: int = 0, patience: int | None = None, save_params: str | None = None,
          path: str = "data", progress: bool = True, log=print, world=None) -> History:
    """Train `model` through `phases`; returns the learning curves. With a `world` of several
    ranks (`--distributed`; see flowml/dataparallel.py) each rank trains on its share of every
    global mini-batch of `batch` rows per rank; rank 0 alone logs, evaluates and saves."""
    from .dataparallel import epoch_loss, shard
    from .distributed import World
    world = world or World()
    lead = world.rank == 0
    for ph in phases:
        if ph.fn not in model.functions:
            raise FlowError(f"the model has no fn '{ph.fn}' to train (functions: {', '.join(model.functions)})")
    if evaluate is not None and evaluate not in model.functions:
        raise FlowError(f"the model has no fn '{evaluate}' to evaluate with (functions: {', '.join(model.functions)})")
    if batch < 1:
        raise FlowError("--batch must be at least 1")
    n_rows = max((len(a) for a in data.values() if np.ndim(a) > 0), default=0)
    split = n_rows if split is None else split
    if not 0 < split <= n_rows:
        raise FlowError(f"--split {split}: the data has {n_rows} rows")
    train_data = {k: (v[:split] if np.ndim(v) > 0 else v) for k, v in data.items()}
    test_data = {k: (v[split:] if np.ndim(v) > 0 else v) for k, v in data.items()}
    rng = np.random.RandomState(seed)
    history = History()
    best, best_params, waited = None, None, 0
    epoch_no = 0
    test_inputs: dict[str, dict[str, np.ndarray]] = {}  # the evaluating fn's inputs, converted once
    for i_phase, ph in enumerate(phases):
        fn = model.functions[ph.fn]
        arrays = _as_inputs(fn, _rows(train_data, fn.input_names, ph.fn, path))
        n = _batch_count(arrays, ph.fn, path)
        best, best_params, waited = None, None, 0
        # Early stopping watches the last phase only: before it (a stacked model's layer-wise
        # pretraining) the test result need not move at all, and stopping there -- or going back
        # to the first epoch's params -- would undo the pretraining.
        stops = patience is not None and i_phase == len(phases) - 1
        for _ in range(ph.epochs):
            epoch_no += 1
            t0 = time.perf_counter()
            order = rng.permutation(n)
            losses = []
            step = batch * world.size  # the global mini-batch
            for start in range(0, n, step):
                idx = shard(order[start:start + step], world)
                if idx is None:
                    continue
                # (by position, in the fn's input order: the native call path; a call by keyword
                # takes the Python one, ~40 us, which batch 1 pays on every row)
                out = fn(*[(a[idx] if np.ndim(a) > 0 else a) for a in arrays.values()])
                first = out[0] if isinstance(out, tuple) else out
                if first is not None:
                    losses.append((len(idx), float(np.mean(first))))
            loss = epoch_loss(losses, world)
            test = float("nan")
            if evaluate is not None and split < n_rows and lead:
                ev = model.functions[evaluate]
                if evaluate not in test_inputs:
                    test_inputs[evaluate] = _as_inputs(ev, _rows(test_data, ev.input_names, evaluate, path))
                out = ev(*test_inputs[evaluate].values())
                test = float(np.mean(out[0] if isinstance(out, tuple) else out))
            seconds = time.perf_counter() - t0
            history.epochs.append(epoch_no)
            history.loss.append(loss)
            history.test.append(test)
            history.seconds.append(seconds)
            history.phase.append(ph.fn)
            if progress and lead:
                log(f"epoch {epoch_no:4d}  {ph.fn}  loss {loss:.6g}"
                    + (f"  {evaluate} {test:.6g}" if evaluate else "") + f"  ({seconds:.2f} s)")
            if stops and evaluate is not None and np.isfinite(test):
                if best is None or test < best:
                    best, waited = test, 0
                    best_params = model.params.to_dict()
                else:
                    waited += 1
            if stops and world.broadcast_object(waited >= patience, 0):  # rank 0 decides for all
                if lead:
                    log(f"early stop: no better {evaluate} for {patience} epochs (best {best:.6g})")
                break
        if best_params is not None and stops:
            model.params.update(best_params)  # keep the best epoch's params
    if save_params and lead:
        model.save_params(save_params)
    return history


def plot(history: History, path: str, evaluate: str | None) -> None:
    """Learning curves as a PNG (matplotlib, without a display)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(history.epochs, history.loss, label="training loss (mean over batches)")
    if evaluate and any(np.isfinite(history.test)):
        ax2 = ax.twinx()
        ax2.plot(history.epochs, history.test, color="tab:orange", label=f"test {evaluate}")
        ax2.set_ylabel(f"test {evaluate}")
        ax2.legend(loc="upper center")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
