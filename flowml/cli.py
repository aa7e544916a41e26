"""The `flowml` command line: check, compile and run .flow models.

Thin by design: every command calls the Python API. Errors print as `file:line:col: message`
with the source line, never a traceback; they exit 1 (2 for usage errors).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from .errors import FlowError


def _print_error(err: BaseException) -> None:
    print(f"error: {err}" if not getattr(err, "loc", None) else f"{err}", file=sys.stderr)


def _read_program(path: str):
    from .api import parse_program
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise FlowError(f"{path}: cannot read the file ({e.strerror})") from None
    return parse_program(data, path)


def cmd_check(args) -> int:
    from .program import Model
    program = _read_program(args.file)
    model = Model(program, backend="reference")
    print(f"{args.file}: ok")
    for fn in model.functions.values():
        print(f"  {fn.signature}")
    if program.params:
        print("  params: " + ", ".join(f"{n}: {d.var.type}" for n, d in program.params.items()))
    return 0


def cmd_compile(args) -> int:
    from .ir.dump import dump_function, to_dot
    from .passes.pipeline import check_exclude, check_phase, optimize
    from .program import check_function
    check_phase(args.after)
    exclude = check_exclude(args.exclude)
    program = _read_program(args.file)
    fns = _select_functions(program, args.fn)
    if args.distributed:  # show the step as `train --distributed` runs it: gradients allreduced
        from .passes.distribute import distribute
        fns = [distribute(program, fn.name).fn for fn in fns]
    if args.emit == "html":
        return _explore(args, program, fns, exclude)
    if args.profile_json:
        raise UsageError("--profile-json colours the nodes of --emit html's page: add --emit html")
    dims = parse_random_spec(args.dims, "--dims") if args.dims else {}
    native = args.emit in ("llvm", "asm", "opencl", "plan")
    if native:
        wanted = "opencl" if args.emit == "opencl" else "llvm"
        backend = args.backend or wanted
        if backend.split(":")[0] != wanted:
            raise UsageError(f"--emit {args.emit} shows the {wanted} backend's code: use --backend {wanted}, "
                             f"not {backend}")
        if args.after not in (None, "memory") or args.O == 0:
            raise UsageError(f"--emit {args.emit} compiles the fully optimized graph: drop --after/-O0")
    elif args.backend is not None:
        from .backends import get_backend
        get_backend(args.backend)  # an unknown name is an error; the graph is the same for all
    texts = []
    for fn in fns:
        check_function(program, fn)
        opt = optimize(program.graph, [v.id for _, v in fn.outputs], [(u.param, u.value.id) for u in fn.updates],
                       level=args.O, after=args.after, exclude=exclude)
        if args.emit == "opencl":
            text = _opencl_code(fn, opt, backend)
        elif args.emit == "plan":
            text = _plan(program, fn, opt)
        elif native:
            text = _native_code(fn, opt, args.emit)
        elif args.emit == "ir":
            text = dump_function(program, fn, opt.graph, opt.outputs, opt.updates)
        else:
            text = to_dot(program, fn, opt.graph, opt.outputs, opt.updates)
        if args.stats:
            text += "\n" + format_stats(program, fn, opt, dims)
        texts.append(text)
    _write(("\n" if args.emit == "dot" else "\n\n").join(texts), args.output)
    return 0


def _explore(args, program, fns, exclude) -> int:
    """`--emit html`: the IR explorer, one page for the fn(s) (flowml/explore, docs/inspect.md)."""
    from .explore import explore, load_profile
    from .program import check_function
    if args.stats:
        raise UsageError("--emit html: the page shows every phase's rule counts; drop --stats")
    backend = args.backend or "llvm"
    if backend != "reference":
        from .backends import get_backend
        get_backend(backend)  # an unknown name, or no OpenCL device, is an error before any work
    profile = load_profile(args.profile_json) if args.profile_json else None
    for fn in fns:
        check_function(program, fn)
    page = explore(program, fns, backend=backend, level=args.O, after=args.after, exclude=exclude, profile=profile)
    _write(page.html, args.output)
    return 0


def _native_code(fn, opt, emit: str) -> str:
    """`--emit llvm|asm`: the LLVM IR (as generated, before LLVM's optimizer) or the assembly of
    one fn's native kernels, one per fused node; other steps (matmul, reference ops) run numpy."""
    from .backends.llvm.backend import LLVMExecutable
    ex = LLVMExecutable(opt.graph, opt.outputs, opt.updates, opt.plan, compile=emit == "asm")
    comment = "; " if emit == "llvm" else "# "
    head = f"{comment}fn {fn.name}: {len(ex.kernels)} native kernel(s), {ex.summary()}"
    code = ex.llvm_ir() if emit == "llvm" else ex.assembly()
    return head + ("\n" + code.rstrip() if code else "")


def _plan(program, fn, opt) -> str:
    """`--emit plan`: the steps of one fn on the LLVM backend, in the order they run: what each
    node became (kernel, BLAS call, view...) and, for every host step, why it is one."""
    from .backends.llvm.backend import LLVMExecutable
    from .ir.dump import dump_nodes
    ex = LLVMExecutable(opt.graph, opt.outputs, opt.updates, opt.plan, compile=False)
    _, ids = dump_nodes(opt.graph, list(opt.outputs) + [n for _, n in opt.updates])
    return "\n".join([f"fn {fn.name}: {ex.summary()}"] + ex.plan_text(ids))


def _opencl_code(fn, opt, backend: str) -> str:
    """`--emit opencl`: the OpenCL C of one fn's kernels (one per fused node)."""
    from .backends.opencl.backend import OpenCLBackend
    ex = OpenCLBackend(backend).compile(opt.graph, opt.outputs, opt.updates, opt.plan)
    head = f"// fn {fn.name}: {len(ex.kernels)} OpenCL kernel(s) on {ex.device.name.strip()}"
    code = ex.sources()
    return head + ("\n" + code.rstrip() if code else "")


DEFAULT_STATS_DIM = 1000


def format_stats(program, fn, opt, dims: dict[str, int]) -> str:
    """`--stats`: rule counts by phase, kernels, and the memory plan's peak bytes."""
    lines = [f"# stats for fn {fn.name} (after {opt.phase})"]
    width = max((len(k) for k in opt.stats), default=0)
    for key, count in opt.stats.items():
        lines.append(f"#   {key:<{width}}  {count}")
    lines.append(f"#   kernels: {opt.kernels()} ({opt.fused_kernels()} fused)")
    if opt.plan is not None:
        symbols = sorted({s for n in opt.graph.nodes() for s in opt.graph.type(n).symbols() if s.isidentifier()})
        env = {s: dims.get(s, DEFAULT_STATS_DIM) for s in symbols}
        try:
            before, after = opt.plan.bytes_before(opt.graph, env), opt.plan.bytes_after(env)
        except KeyError:  # a derived dim (N-1) is known only at run time
            lines.append("#   peak bytes: depend on dims known only at run time")
        else:
            binding = ", ".join(f"{k}={v}" for k, v in env.items()) or "no symbolic dims"
            lines.append(f"#   intermediate bytes ({binding}): {before:,} unplanned, {after:,} planned "
                         f"({len(opt.plan.buffers)} buffers, {len(opt.plan.inplace)} in-place updates)")
    return "\n".join(lines)


def _select_functions(program, name):
    if name is None:
        if not program.functions:
            raise FlowError(f"{program.file}: declares no fn")
        return list(program.functions.values())
    if name not in program.functions:
        from .errors import did_you_mean
        hint = did_you_mean(name, program.functions)
        raise FlowError(f"{program.file}: no fn named '{name}'" + (f"; {hint}" if hint else "")
                        + f" (functions: {', '.join(program.functions) or 'none'})")
    return [program.functions[name]]


def _write(text: str, output: str | None) -> None:
    if output:
        try:
            with open(output, "w") as f:
                f.write(text + "\n")
        except OSError as e:
            raise FlowError(f"{output}: cannot write the file ({e.strerror or e})") from None
    else:
        print(text)


def parse_random_spec(spec: str | None, option: str = "--random") -> dict[str, int]:
    """`N=400,y=2` → {"N": 400, "y": 2}: dim sizes, and class counts for named inputs."""
    out: dict[str, int] = {}
    if not spec:
        return out
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, value = part.partition("=")
        if not sep or not name.strip() or not value.strip().isdigit():
            raise UsageError(f"{option} expects NAME=INT pairs (sizes of 0 or more) like N=400,y=2, "
                             f"not {part!r}")
        out[name.strip()] = int(value)
    return out


class UsageError(Exception):
    pass


def synthesize_inputs(fn, program, spec: dict[str, int], given: dict, rng: np.random.RandomState) -> dict:
    """Random arrays of the declared shapes for the inputs not in `given`: normal floats, and
    integers in [0, K) (K from `name=K` in the spec, else 2)."""
    from .ir.types import Sym
    out = {}
    for name in fn.input_names:
        if name in given:
            continue
        t = program.inputs[name].var.type
        shape = []
        for d in t.shape:
            if isinstance(d, Sym):
                missing = [s for s in d.names if s not in spec]
                if missing:
                    raise UsageError(f"input '{name}' has the dim {missing[0]}: give its size with "
                                     f"--random {missing[0]}=SIZE")
                shape.append(d.resolve(spec))
            else:
                shape.append(d)
        if t.dtype.kind == "f" and name not in spec:
            out[name] = rng.randn(*shape).astype(t.dtype)
        else:  # integer inputs, and any input given as NAME=K: integers in [0, K)
            out[name] = rng.randint(0, spec.get(name, 2), size=shape).astype(t.dtype)
    return out


def cmd_export(args) -> int:
    from .api import load
    model = load(args.file, backend="reference", seed=args.seed, exclude=args.exclude)
    if args.fn not in model.functions:
        _select_functions(model.program, args.fn)  # raises the helpful error
    if args.load_params:
        model.load_params(args.load_params)
    from .interop.onnx_export import OPSET
    onnx_model = model.functions[args.fn].to_onnx(args.output)
    graph = onnx_model.graph
    print(f"{args.output}: fn {args.fn}, ONNX opset {OPSET}, {len(graph.node)} nodes, "
          f"{len(graph.initializer)} initializers")
    return 0


def cmd_import(args) -> int:
    import os

    from .interop.flow_writer import write_flow
    from .interop.onnx_import import from_onnx
    from .io import save_npz
    model = from_onnx(args.file, backend="reference", name=args.fn)
    text, arrays = write_flow(model)
    (fn,) = model.functions.values()
    params = os.path.splitext(args.output)[0] + ".npz"
    header = (f"# {fn.name} of {os.path.basename(args.file)}, imported from ONNX by `flowml import`; the params'\n"
              f"# values are in {os.path.basename(params)}: run with --load-params {os.path.basename(params)}\n")
    try:
        with open(args.output, "w") as f:
            f.write(header + text)
    except OSError as e:
        raise FlowError(f"{args.output}: cannot write the program ({e.strerror or e})") from None
    if arrays:
        try:
            save_npz(params, arrays)
        except OSError as e:
            raise FlowError(f"{params}: cannot write the params ({e.strerror or e})") from None
    print(f"{args.output}: fn {fn.signature[3:]}, {len(arrays)} params" + (f" in {params}" if arrays else ""))
    return 0


def cmd_run(args) -> int:
    from .api import load
    from .io import load_npz
    if args.steps < 1:
        raise UsageError(f"--steps must be at least 1, not {args.steps}")
    model = load(args.file, backend=args.backend, seed=args.seed, check=args.check, exclude=args.exclude)
    if args.fn not in model.functions:
        _select_functions(model.program, args.fn)  # raises the helpful error
    fn = model.functions[args.fn]
    if args.load_params:
        model.load_params(args.load_params)
    inputs = {}
    if args.data:
        data = load_npz(args.data)
        inputs = {k: v for k, v in data.items() if k in fn.input_names}
    spec = parse_random_spec(args.random)
    missing = [n for n in fn.input_names if n not in inputs]
    if missing and args.random is None:
        raise UsageError(f"fn {fn.name} needs input(s) {', '.join(missing)}: give them with --data FILE.npz "
                         "or synthesize them with --random N=SIZE,...")
    inputs.update(synthesize_inputs(fn, model.program, spec, inputs, np.random.RandomState(args.seed or 0)))
    with _profiling(args) as profile:
        outputs = _run_steps(fn, inputs, args.steps)
    _print_outputs(fn, outputs)
    _report_profile(args, profile)
    if args.save_params:
        model.save_params(args.save_params)
        print(f"params saved to {args.save_params}")
    return 0


def _profiling(args):
    """`--profile`, `--profile-json`: a `flowml.profile()` block around the calls (else none)."""
    import contextlib
    if not (args.profile or args.profile_json):
        return contextlib.nullcontext()
    if getattr(args, "check", False):
        raise UsageError("--profile times the fn's profiling build; check mode runs every call on the reference "
                         "backend too: drop --check")
    from .profiling import profile
    return profile()


def _report_profile(args, profile) -> None:
    if profile is None:
        return
    if args.profile:
        from rich.console import Console
        Console(width=None if sys.stdout.isatty() else 160).print(profile)  # (a pipe: rows of their full width)
    if args.profile_json:
        profile.save(args.profile_json)
        print(f"profile written to {args.profile_json}")


def cmd_train(args) -> int:
    from .api import load
    from .io import load_npz
    from .train import parse_phases
    phases = parse_phases(args.phases, args.fn, args.epochs)
    if args.distributed:
        if args.profile or args.profile_json:
            raise UsageError("--profile profiles one process: drop --distributed")
        return _train_distributed(args, phases)
    model = load(args.file, backend=args.backend, seed=args.seed, exclude=args.exclude)
    if args.load_params:
        model.load_params(args.load_params)
    data = load_npz(args.data)
    evaluate = args.evaluate if args.evaluate in model.functions or args.evaluate != "error" else None
    with _profiling(args) as profile:
        code = _train_and_report(args, model, data, phases, evaluate)
    _report_profile(args, profile)
    return code


def _train_distributed(args, phases) -> int:
    """`--distributed` under `mpiexec -n K`: every rank runs this; see flowml/dataparallel.py."""
    from . import dataparallel as dp
    from .distributed import world
    from .io import load_npz
    w = world()

    def body():
        model, _ = dp.prepare(_read_program(args.file), [ph.fn for ph in phases], w, backend=args.backend,
                              seed=args.seed, exclude=args.exclude)
        if args.load_params:
            model.load_params(args.load_params)
        data = load_npz(args.data)
        evaluate = args.evaluate if args.evaluate in model.functions or args.evaluate != "error" else None
        pids = dp.check_agreement(w, model, data, {k: getattr(args, k) for k in (
            "fn", "phases", "epochs", "batch", "split", "patience", "seed", "evaluate")})
        dp.check_evaluate(model, evaluate)
        dp.sync_params(model, w)
        if w.rank == 0:
            print(dp.describe(w, pids, args.batch), flush=True)
        return _train_and_report(args, model, data, phases, evaluate, w)
    return dp.run_guarded(w, body)


def _train_and_report(args, model, data, phases, evaluate, world=None) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .train import plot, train
    if world is not None and world.rank != 0:  # the other ranks train quietly
        train(model, data, phases, args.batch, args.split, evaluate, seed=args.seed or 0, patience=args.patience,
              path=args.data, progress=False, world=world)
        return 0
    total = sum(ph.epochs for ph in phases)
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[status]}")]
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task("train", total=total, status="")

        def log(line: str) -> None:
            if line.startswith("epoch"):
                progress.update(task, advance=1, status=" ".join(line.split()[2:]))
            else:
                progress.console.print(line)
        history = train(model, data, phases, args.batch, args.split, evaluate, seed=args.seed or 0,
                        patience=args.patience, save_params=args.save_params, path=args.data, log=log,
                        world=world)
    last = len(history.epochs) - 1
    if last >= 0:
        best = min((t for t in history.test if t == t), default=None)
        print(f"{len(history.epochs)} epochs, {sum(history.seconds):.1f} s: final loss {history.loss[last]:.6g}"
              + (f", final test {evaluate} {history.test[last]:.6g}, best {best:.6g}" if evaluate and best is not None
                 else ""))
    if args.save_params:
        print(f"params saved to {args.save_params}")
    if args.plot:
        plot(history, args.plot, evaluate)
        print(f"learning curves written to {args.plot}")
    return 0


def _as_tuple(result) -> tuple:
    if result is None:
        return ()
    return result if isinstance(result, tuple) else (result,)


def _summary(value: np.ndarray) -> str:
    if value.ndim == 0:
        return f"{value.item():.8g}" if value.dtype.kind == "f" else str(value.item())
    if value.size == 0:
        return "(empty)"
    return f"mean {np.mean(value):.6g}"


def _run_steps(fn, inputs: dict, steps: int) -> tuple:
    if steps <= 1:
        return _as_tuple(fn(**inputs))
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    label = fn.output_names[0] if fn.output_names else None
    columns = [TextColumn(f"[bold]{fn.name}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    if label:
        columns.append(TextColumn("{task.fields[value]}"))
    result: tuple = ()
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task(fn.name, total=steps, value="")
        for i in range(steps):
            result = _as_tuple(fn(**inputs))
            if i % 50 == 0 or i == steps - 1:
                value = f"{label}: {_summary(result[0])}" if label else ""
                progress.update(task, completed=i + 1, value=value)
    return result


def _print_outputs(fn, outputs: tuple) -> None:
    from rich.console import Console
    from rich.table import Table

    from .ir.types import DTYPE_NAMES
    if not outputs:
        print(f"{fn.name}: done (no outputs)")
        return
    table = Table(title=f"{fn.name} outputs")
    for col in ("output", "type", "value"):
        table.add_column(col)
    for name, value in zip(fn.output_names, outputs):
        dtype = DTYPE_NAMES.get(value.dtype, value.dtype.name)
        table.add_row(name, f"{dtype}{list(value.shape) if value.ndim else ''}", _summary(value))
    Console().print(table)


def cmd_gradcheck(args) -> int:
    from rich.console import Console
    from rich.table import Table
    from .gradcheck import check_model
    failed = False
    for path in args.file:
        program = _read_program(path)
        if args.fn is not None:
            _select_functions(program, args.fn)
        report = check_model(program, args.fn, parse_random_spec(args.random), seed=args.seed)
        if not report.rows:
            print(f"{path}: no derivative to check" + (f" in fn {args.fn}" if args.fn else ""))
            continue
        scale = "" if report.scale == 1 else f"; float inputs scaled by {report.scale:g} to keep values finite"
        table = Table(title=f"gradcheck {path} (central differences{scale})")
        for col in ("expression", "max abs err", "max rel err", "result"):
            table.add_column(col)
        for r in report.rows:
            table.add_row(r.expression, f"{r.max_abs:.2e}", f"{r.max_rel:.2e}",
                          "[green]pass[/]" if r.passed else f"[red]FAIL[/] ({r.worst})")
        Console(width=160).print(table)
        failed = failed or not report.passed
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flowml", description="Compile and run .flow models.")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("check", help="parse and type-check a model; print its functions' signatures")
    c.add_argument("file")
    c.set_defaults(func=cmd_check)

    c = sub.add_parser("compile", help="print a model's graph (IR text or Graphviz DOT), or its native code")
    c.add_argument("file")
    c.add_argument("--emit", choices=["ir", "dot", "llvm", "asm", "opencl", "plan", "html"], default="ir",
                   help="what to print: the graph as IR text or DOT, the LLVM backend's code as LLVM IR "
                   "or assembly, its plan (each step: kernel, BLAS call, or host step and why), the "
                   "OpenCL kernels, or the IR explorer, an HTML page of every phase (default: ir)")
    c.add_argument("--backend", default=None, help="the backend whose code --emit shows: llvm for "
                   "llvm|asm, opencl or opencl:N for opencl (the defaults); for html, llvm (default), "
                   "opencl[:N] or reference (no native code)")
    c.add_argument("--profile-json", metavar="PROFILE.json", help="with --emit html: colour the nodes "
                   "by their time in this profile (flowml run --profile-json)")
    c.add_argument("--fn", help="only this function (default: all)")
    c.add_argument("-o", "--output", help="write to this file instead of stdout")
    c.add_argument("--after", metavar="PHASE", help="show the graph after this optimizer phase "
                   "(canonicalize, stabilize, specialize, fuse, memory; default: all)")
    c.add_argument("--stats", action="store_true", help="how often each rewrite rule fired, kernels, "
                   "and the memory plan's bytes")
    c.add_argument("-O", type=int, default=1, choices=[0, 1], help="-O0: no optimization (the graph "
                   "as built); -O1: all phases (default)")
    c.add_argument("--distributed", action="store_true", help="rewrite the fn(s) as `flowml train "
                   "--distributed` does: each grad(...) result allreduced across the ranks")
    c.add_argument("--dims", metavar="N=400,...", help=f"sizes of symbolic dims for --stats' byte counts "
                   f"(default {DEFAULT_STATS_DIM})")
    _add_exclude(c)
    c.set_defaults(func=cmd_compile)

    c = sub.add_parser("gradcheck", help="check every derivative of models (grad, rop, lop, jacobian, hessian, "
                       "hessian_vector) against finite differences")
    c.add_argument("file", nargs="+")
    c.add_argument("--fn", help="only the derivatives this fn uses")
    c.add_argument("--random", metavar="N=3,...", help="sizes of symbolic dims (default 3) and NAME=K "
                   "class counts for integer inputs")
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(func=cmd_gradcheck)

    c = sub.add_parser("run", help="run one function of a model, once or for several steps")
    c.add_argument("file")
    c.add_argument("fn", help="the fn to call")
    c.add_argument("--data", help=".npz file whose arrays are matched to the fn's inputs by name")
    c.add_argument("--random", metavar="N=400,...", help="synthesize missing inputs: dim sizes, and "
                   "NAME=K to draw an integer input from [0, K)")
    c.add_argument("--steps", type=int, default=1, help="call the fn this many times (default 1)")
    c.add_argument("--seed", type=int, default=None, help="seed for param initializers and --random")
    c.add_argument("--load-params", metavar="P.npz")
    c.add_argument("--save-params", metavar="P.npz")
    c.add_argument("--backend", default=None, help="llvm (default; or FLOWML_BACKEND), reference, opencl")
    c.add_argument("--check", action="store_true", help="check mode: also run every call on the reference "
                   "backend and stop at the first node whose values differ")
    _add_profile(c)
    _add_exclude(c)
    c.set_defaults(func=cmd_run)

    c = sub.add_parser("export", help="write a fn (without updates) as an ONNX model, its params' current "
                       "values as initializers (docs/onnx.md)")
    c.add_argument("file")
    c.add_argument("--fn", required=True, help="the fn to export")
    c.add_argument("-o", "--output", required=True, metavar="MODEL.onnx")
    c.add_argument("--load-params", metavar="P.npz", help="the trained params to export (default: the initial ones)")
    c.add_argument("--seed", type=int, default=None, help="seed for param initializers")
    _add_exclude(c)
    c.set_defaults(func=cmd_export)

    c = sub.add_parser("import", help="write an ONNX model as a .flow program, its initializers as params in an "
                       ".npz beside it (docs/onnx.md)")
    c.add_argument("file", metavar="MODEL.onnx")
    c.add_argument("-o", "--output", required=True, metavar="MODEL.flow")
    c.add_argument("--fn", default=None, help="the fn's name (default: the graph's, or predict)")
    c.set_defaults(func=cmd_import)

    c = sub.add_parser("train", help="train a model with mini-batches over the rows of a data file, "
                       "evaluating on the held-out rows each epoch")
    c.add_argument("file")
    c.add_argument("--data", required=True, help=".npz file whose arrays are matched to the fns' inputs by name")
    c.add_argument("--fn", default="train", help="the step fn (default: train)")
    c.add_argument("--evaluate", default="error", help="the fn evaluated on the test rows each epoch "
                   "(default: error, if the model has one)")
    c.add_argument("--phases", metavar="FN:EPOCHS,...", help="train several step fns in turn, e.g. "
                   "pretrain1:50,pretrain2:50,finetune:100 (instead of --fn/--epochs)")
    c.add_argument("--epochs", type=int, default=10, help="epochs (default 10)")
    c.add_argument("--batch", type=int, default=20, help="mini-batch rows (default 20)")
    c.add_argument("--split", type=int, default=None, help="rows [0, SPLIT) train, the rest test "
                   "(default: all rows train)")
    c.add_argument("--patience", type=int, default=None, help="early stopping: stop after this many "
                   "epochs without a better test result and keep the best params")
    c.add_argument("--seed", type=int, default=None, help="seed for param initializers, random streams "
                   "and shuffling")
    c.add_argument("--backend", default=None, help="llvm (default; or FLOWML_BACKEND), reference, opencl")
    c.add_argument("--load-params", metavar="P.npz")
    c.add_argument("--save-params", metavar="P.npz", help="save the (best) params atomically")
    c.add_argument("--plot", metavar="CURVE.png", help="write the learning curves (matplotlib)")
    c.add_argument("--distributed", action="store_true", help="data-parallel training: run under "
                   "`mpiexec -n K`; each rank takes --batch rows of every global mini-batch and the "
                   "gradients are averaged or summed across ranks (docs/distributed.md)")
    _add_profile(c)
    _add_exclude(c)
    c.set_defaults(func=cmd_train)
    return p


def _add_profile(c) -> None:
    c.add_argument("--profile", action="store_true", help="profile the calls: print a table of each fn's "
                   "steps (kernels, BLAS calls, loops, host steps) with their calls, time, share, GB/s and "
                   "source line, timed in the fn's profiling build (docs/inspect.md)")
    c.add_argument("--profile-json", metavar="PROFILE.json", help="write the profile as JSON (for tools and "
                   "`flowml compile --emit html --profile-json`)")


def _add_exclude(c) -> None:
    c.add_argument("--exclude", metavar="NAME", action="append", default=None,
                   help="switch off an optimizer phase (canonicalize, stabilize, specialize, fuse, memory) "
                   "or a rewrite rule, by its name or its text as --stats shows it; repeatable")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UsageError as e:
        print(f"flowml {args.command}: {e}", file=sys.stderr)
        return 2
    except FlowError as e:
        _print_error(e)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`flowml compile ... | head`): stop quietly, as Unix tools do
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0


if __name__ == "__main__":
    sys.exit(main())
