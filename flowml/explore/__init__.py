"""The IR explorer: one self-contained HTML page that shows what the compiler did to each fn
(`flowml compile FILE --emit html -o out.html`, `Function.explore()`; docs/inspect.md).

For each fn: the graph as built and after each optimizer phase, laid out by Graphviz
(`layout`), each node linked to its source line and to the nodes of the phase before that it
stands for, with the rules that built it (`model`); fused kernels with their formula and the
native code they became (`native`); the memory plan's buffers; and, given a profile, the time
of each node as colour. The page's script and style are inlined: opening it needs no network.
"""

from __future__ import annotations

import html
import json
import re
from importlib import resources

from ..errors import FlowError
from ..passes.pipeline import optimize
from ..program import fn_signature
from . import layout, model, native


class Explorer:
    """An explorer page: `html` is its text, `data` what it shows (the JSON the page's script
    reads); a notebook shows it inline (`_repr_html_`)."""

    def __init__(self, text: str, title: str, data: dict):
        self.html = text
        self.title = title
        self.data = data

    def save(self, path) -> None:
        try:
            with open(path, "w", encoding="utf-8") as f:
                f.write(self.html)
        except OSError as e:
            raise FlowError(f"{path}: cannot write the file ({e.strerror or e})") from None

    def _repr_html_(self) -> str:
        # in a frame of its own, so that the page's style and script stay out of the notebook's
        return (f'<iframe srcdoc="{html.escape(self.html, quote=True)}" title="{html.escape(self.title)}" '
                'style="width: 100%; height: 720px; border: 1px solid #ccc"></iframe>')

    def __repr__(self) -> str:
        return f"<flowml explorer page of {self.title}, {len(self.html):,} characters>"


def load_profile(path: str) -> dict:
    """A profile JSON file, as the profiler writes it (`--profile-json`; its schema is in
    docs/inspect.md, "Profiling"): {"functions": [{"fn": name, "rows": [{"id": "%7", "total_s":
    seconds, "calls": n, ...}, ...]}, ...]}, a row's `id` naming the node as `flowml compile
    --emit ir` numbers the optimized graph (null for the call boundary)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise FlowError(f"{path}: cannot read the profile ({e.strerror or e})") from None
    except ValueError as e:
        raise FlowError(f"{path}: not a JSON file ({e})") from None
    check_profile(data, path)
    return data


def check_profile(data, where: str = "the profile") -> None:
    fns = data.get("functions") if isinstance(data, dict) else None
    if not isinstance(fns, list):
        raise FlowError(f'{where}: not a flowml profile (expected {{"functions": [...]}}, as --profile-json writes)')
    for i, fn in enumerate(fns):
        if not (isinstance(fn, dict) and isinstance(fn.get("fn"), str) and isinstance(fn.get("rows"), list)):
            raise FlowError(f"{where}: functions[{i}] has no fn name and list of rows")
        for j, r in enumerate(fn["rows"]):
            ok = isinstance(r, dict) and isinstance(r.get("total_s"), (int, float)) and \
                (r.get("id") is None or (isinstance(r.get("id"), str) and re.fullmatch(r"%\d+", r["id"])))
            if not ok:
                raise FlowError(f"{where}: fn {fn['fn']}, row {j}: expected an id (\"%7\", or null) and total_s")


_PROFILE_KEYS = ("op", "name", "kind", "detail", "calls", "total_s", "mean_s", "share", "gbps", "gflops")


def _profile_rows(profile: dict, name: str) -> list[dict] | None:
    """The rows of fn `name` in the profile (its first entry), with what the page shows of them:
    `k`, the node's number (None for the call boundary)."""
    for f in profile["functions"]:
        if f["fn"] == name:
            return [{"k": None if r.get("id") is None else int(r["id"][1:]),
                     **{key: r[key] for key in _PROFILE_KEYS if r.get(key) is not None}} for r in f["rows"]]
    return None


def _check_rows(rows: list[dict], final: dict, fn: str) -> None:
    """A profile's rows must name the nodes of this optimized graph (the same model, compiled
    with the same options), else its colours would be of other nodes."""
    ops = {n["k"]: n["op"] for n in final["nodes"]}
    for r in rows:
        k = r["k"]
        if k is not None and (k not in ops or ("op" in r and r["op"] != ops[k])):
            here = f"is {ops[k]} here" if k in ops else "does not exist here"
            raise FlowError(f"the profile of fn {fn} is of another graph: its node %{k} ({r.get('op', '?')}) {here}; "
                            "profile the same model, compiled with the same options")


def explore(program, fns, *, backend: str = "llvm", asm: bool = True, level: int = 1, after: str | None = None,
            exclude=None, profile: dict | None = None, executables: dict | None = None,
            title: str | None = None) -> Explorer:
    """The explorer page of these fns (FnDecls of `program`). `backend`: whose native code the
    fused kernels show (llvm: LLVM IR, and the assembly with `asm`; opencl[:N]: OpenCL C;
    reference: none). `level`, `after`, `exclude`: as `pipeline.optimize`. `profile`: as
    `load_profile` gives it. `executables`: fn name -> its compiled executable, to reuse."""
    sources = model.Sources()
    fn_data, dots = [], []
    for fn in fns:
        trace: list = []
        opt = optimize(program.graph, [v.id for _, v in fn.outputs], [(u.param, u.value.id) for u in fn.updates],
                       level=level, after=after, exclude=exclude, trace=trace)
        phases, prev, prev_ids = [], None, None
        for s in trace:
            data, ids, dot = model.phase_data(s, prev, prev_ids, sources, opt.stats, [n for n, _ in fn.outputs])
            data["final"] = s.graph is opt.graph
            data["svg"] = len(dots)
            dots.append(dot)
            phases.append(data)
            prev, prev_ids = s, ids
        d = {"name": fn.name, "signature": fn_signature(program, fn), "phases": phases}
        code = None
        if level > 0 and after in (None, "memory") and backend != "reference":  # (code of the optimized graph)
            code = _native(opt, backend, asm, (executables or {}).get(fn.name))
        if code is not None:  # (keyed by the graph's ids: by the page's %k, like every node)
            k = {n: int(ids[n][1:]) for n in ids}
            d["backend"], d["summary"] = code.backend, code.summary
            d["code"] = {k[n]: c for n, c in code.code.items() if n in k}
            d["plan"] = {k[n]: p for n, p in code.plan.items() if n in k}
        rows = _profile_rows(profile, fn.name) if profile is not None else None
        if rows is not None:
            _check_rows(rows, phases[-1], fn.name)
            d["profile"] = rows
        fn_data.append(d)
    svgs = layout.layout(dots)
    index: dict[str, int] = {}  # (each SVG once: a phase that changed nothing has its phase before's)
    for fn in fn_data:
        for p in fn["phases"]:
            p["svg"] = index.setdefault(svgs[p["svg"]], len(index))
    title = title or program.file
    page = {"title": title, "sources": sources.files, "fns": fn_data, "svgs": list(index)}
    return Explorer(render(page), title, page)


def _native(opt, backend: str, asm: bool, executable):
    if backend == "llvm":
        return native.llvm_code(opt, asm, executable)
    if backend.split(":")[0] == "opencl":
        return native.opencl_code(opt, backend, executable)
    raise FlowError(f"the explorer shows the native code of the llvm or opencl backend, not {backend!r}")


def render(page: dict) -> str:
    """The page: the template with its style, script and data inlined."""
    files = resources.files(__package__)
    template = files.joinpath("page.html").read_text(encoding="utf-8")
    style = files.joinpath("explorer.css").read_text(encoding="utf-8")
    script = files.joinpath("explorer.js").read_text(encoding="utf-8")
    # (no "<" at all in the data: inside <script>, "</script" or "<!--" would end or change it)
    data = json.dumps(page, separators=(",", ":"), ensure_ascii=False).replace("<", "\\u003c")
    parts = {"TITLE": html.escape(page["title"]), "STYLE": style, "DATA": data, "SCRIPT": script}
    return re.sub(r"\{\{(\w+)\}\}", lambda m: parts[m.group(1)], template)
