"""The IR explorer (flowml/explore, docs/inspect.md) without a browser: the rewrite engine's
provenance (which rule built which node, from which), the page's data, `flowml compile --emit
html` and `Function.explore`. tests/test_explore_browser.py opens the pages in Chromium."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import flowml
from flowml.errors import FlowError
from flowml.explore import explore, layout
from flowml.ir import lib as L
from flowml.ir.dump import dump_function
from flowml.ir.graph import Graph
from flowml.ir.types import DTYPES, TensorType
from flowml.passes.pipeline import optimize
from flowml.passes.provenance import compose
from flowml.passes.rewrite import REDERIVE, Rule, run_phase
from helpers import run_cli

ROOT = Path(__file__).resolve().parent.parent
SOFTPLUS = """\
input x : f64[N]
y = log(1 + exp(x))
z = tanh(x) * 2 + y
fn f(x) -> z
"""


def _program(text: str):
    return flowml.api.parse_program(text, "model.flow")


def _phase(page: dict, name: str, fn: int = 0) -> dict:
    return next(p for p in page["fns"][fn]["phases"] if p["phase"] == name)


def _by_op(phase: dict, op: str) -> list[dict]:
    return [n for n in phase["nodes"] if n["op"] == op]


# ---------------------------------------------------------------- provenance


def test_a_rule_records_the_node_it_replaced_and_the_nodes_it_built():
    g = Graph()
    x = L.input(g, "x", TensorType(DTYPES["f64"], (3,)))
    y = L.exp(x * 1.0)
    steps: list = []
    new, (root,) = run_phase(g, [y.id], [Rule("x * 1 -> x")], Counter(), steps=steps)
    (mapping, fires), (_, again) = steps  # the round that fired, then the one that found nothing
    assert again == []
    ((rule, replaced, start, end),) = fires
    mul = g.operands(y.id)[0]
    assert rule == "x * 1 -> x" and replaced == (mul,)
    assert mapping[mul] == mapping[x.id]  # replaced by x itself: no new node
    changes = compose(steps)
    assert new.op(root).name == "exp" and root not in changes.rules and changes.sources[root] == (y.id,)
    x_new = new.operands(root)[0]
    assert set(changes.sources[x_new]) == {x.id, mul} and changes.rules[x_new] == ("x * 1 -> x",)


def test_a_chain_of_rules_is_followed_back_to_the_node_it_replaced():
    page = explore(_program(SOFTPLUS), [_program(SOFTPLUS).functions["f"]], backend="reference").data
    canon, stable = _phase(page, "canonicalize"), _phase(page, "stabilize")
    (softplus,) = _by_op(stable, "softplus")
    assert softplus["rules"] == ["log(1 + x) -> log1p(x)", "log1p(exp(x)) -> softplus(x)"]
    (log,) = _by_op(canon, "log")
    assert softplus["from"] == [log["k"]]
    gone = {r["k"]: r for r in stable["removed"]}
    assert gone[log["k"]]["to"] == [softplus["k"]]  # replaced, by both rules
    assert gone[log["k"]]["rules"] == softplus["rules"]
    (exp,) = _by_op(canon, "exp")
    (add,) = [n for n in _by_op(canon, "add") if exp["k"] in n["operands"]]
    assert gone[add["k"]]["to"] == []  # 1 + exp(x): no longer needed
    # a node no rule touched is its twin of the phase before
    (x_stable,) = _by_op(stable, "input")
    assert x_stable["from"] == [_by_op(canon, "input")[0]["k"]] and "rules" not in x_stable


def test_fused_nodes_stand_for_the_ops_they_absorbed():
    page = explore(_program(SOFTPLUS), list(_program(SOFTPLUS).functions.values()), backend="reference").data
    spec, fused = _phase(page, "specialize"), _phase(page, "fuse")
    (kernel,) = _by_op(fused, "fused")
    assert kernel["rules"] == ["fuse: elementwise ops (and a reduction) into one kernel"]
    absorbed = {spec["nodes"][k]["op"] for k in kernel["from"]}
    assert absorbed == {"tanh", "mul", "add", "softplus", "const"}  # (2 became a literal of the body)
    assert kernel["formula"] == "(tanh(%0) * 2.0) + softplus(%0)"
    assert {r["k"] for r in fused["removed"]} == set(kernel["from"])


def test_tracing_changes_nothing_it_traces():
    """The optimized graph, its numbering and the rule counts are the same with and without a trace."""
    prog = flowml.api.parse_program((ROOT / "examples/mlp.flow").read_bytes(), "examples/mlp.flow")
    fn = prog.functions["train"]
    args = (prog.graph, [v.id for _, v in fn.outputs], [(u.param, u.value.id) for u in fn.updates])
    trace: list = []
    plain, traced = optimize(*args), optimize(*args, trace=trace)
    assert dump_function(prog, fn, plain.graph, plain.outputs, plain.updates) == \
        dump_function(prog, fn, traced.graph, traced.outputs, traced.updates)
    assert plain.stats == traced.stats
    assert [s.phase for s in trace] == ["parse", "canonicalize", "stabilize", "specialize", "fuse", "memory"]
    assert trace[-1].graph is traced.graph and trace[-1].plan is traced.plan
    for phase in ("canonicalize", "stabilize", "fuse"):
        after = optimize(*args, after=phase)
        snap = next(s for s in trace if s.phase == phase)
        assert dump_function(prog, fn, after.graph, after.outputs, after.updates) == \
            dump_function(prog, fn, snap.graph, snap.outputs, snap.updates)


# ---------------------------------------------------------------- the page


@pytest.fixture(scope="module")
def mlp_page():
    prog = flowml.api.parse_program((ROOT / "examples/mlp.flow").read_bytes(), "examples/mlp.flow")
    return prog, explore(prog, list(prog.functions.values()), asm=True)


def test_the_page_has_every_phase_of_every_fn_and_links_nodes_to_their_lines(mlp_page):
    prog, page = mlp_page
    data = page.data
    assert [f["name"] for f in data["fns"]] == ["train", "error"]
    (source,) = data["sources"]
    assert source["file"] == "examples/mlp.flow"
    assert source["lines"] == (ROOT / "examples/mlp.flow").read_text().splitlines()
    for fn in data["fns"]:
        assert [p["phase"] for p in fn["phases"]] == ["parse", "canonicalize", "stabilize", "specialize", "fuse",
                                                      "memory"]
        for p in fn["phases"]:
            svg = data["svgs"][p["svg"]]
            assert svg.startswith("<svg") and svg.count('class="node"') == len(p["nodes"]) + len(p["outputs"]) \
                + len(p["updates"])
            assert all(f"<title>n{n['k']}</title>" in svg for n in p["nodes"])
            located = [n for n in p["nodes"] if "loc" in n]
            assert len(located) > 0.9 * len(p["nodes"])
            for n in located:
                f, line, col, text = n["loc"]
                assert f == 0 and 1 <= line <= len(source["lines"]) and text == f"mlp.flow:{line}:{col}"
    # the gradient is taken again in stabilize: its nodes say so
    stable = _phase(data, "stabilize")
    assert any(REDERIVE in n.get("rules", []) for n in stable["nodes"])
    # h = tanh(x @ W1 + b1) is line 16, and the tanh of the train step comes from it
    train = _phase(data, "parse")
    (tanh,) = _by_op(train, "tanh")
    assert tanh["loc"][1] == 16 and source["lines"][15].startswith("h      = tanh(")


def test_fused_kernels_show_formula_llvm_ir_and_assembly(mlp_page):
    _, page = mlp_page
    fn = page.data["fns"][0]
    memory = _phase(page.data, "memory")
    kernels = _by_op(memory, "fused")
    assert kernels and all(n["formula"] for n in kernels)
    for n in kernels:
        code, plan = fn["code"][n["k"]], fn["plan"][n["k"]]
        name = re.search(r"kernel (k\d+)", plan).group(1)  # "native: kernel k10, ..."
        assert code["LLVM IR"].startswith(f"define void @{name}(") and code["LLVM IR"].rstrip().endswith("}")
        assert code["assembly"].startswith(f"{name}:") and "ret" in code["assembly"]
    assert fn["backend"] == "llvm" and "native call" in fn["summary"]
    matmuls = _by_op(memory, "matmul")
    assert matmuls and all(fn["plan"][n["k"]].startswith("native: BLAS dgemm") for n in matmuls)


def test_the_memory_phase_lists_the_plans_buffers(mlp_page):
    prog, page = mlp_page
    fn = prog.functions["train"]
    opt = optimize(prog.graph, [v.id for _, v in fn.outputs], [(u.param, u.value.id) for u in fn.updates])
    memory = _phase(page.data, "memory")["memory"]
    assert len(memory["buffers"]) == len(opt.plan.buffers)
    assert sorted(p for p, _ in memory["inplace"]) == sorted(opt.plan.inplace) == ["W1", "W2", "b1", "b2"]
    held = [k for b in memory["buffers"] for k in b["nodes"]]
    assert sorted(held) == sorted(int(k) for k in memory["assign"]) and len(held) == len(opt.plan.assign)
    assert memory["buffers"][0]["type"].startswith("f64[")
    assert "memory" not in _phase(page.data, "fuse")


def test_the_page_is_self_contained_and_its_data_cannot_end_the_script(mlp_page):
    _, page = mlp_page
    text = page.html
    assert "http://" not in text.replace("http://www.w3.org", "") and "https://" not in text
    assert "<script src" not in text and "<link rel=\"stylesheet\"" not in text
    start = text.index('<script type="application/json" id="flowml-data">')
    end = text.index("</script>", start)
    data = json.loads(text[text.index(">", start) + 1:end])
    assert data["fns"][0]["name"] == "train" and data == json.loads(json.dumps(page.data))
    tricky = _program("# </script><!-- {{DATA}}\ninput x : f64[3]\nfn f(x) -> x\n")
    page = explore(tricky, list(tricky.functions.values()), backend="reference")
    body = page.html.split('id="flowml-data">', 1)[1]
    assert body.index("</script>") > body.index("\\u003c/script>")
    assert page.html.count("{{") == 1 and "# \\u003c/script>\\u003c!-- {{DATA}}" in page.html  # the source's, as is


def _row(k, op, seconds, **more) -> dict:
    """A row as the profiler's JSON has it (docs/inspect.md, "Profiling")."""
    return {"id": None if k is None else f"%{k}", "node": None, "op": op, "kind": "native" if op else "boundary",
            "calls": 10, "total_s": seconds, "mean_s": seconds / 10, **more}


def test_a_profile_gives_the_nodes_of_the_optimized_graph_their_times(tmp_path):
    prog = _program(SOFTPLUS)
    fns = list(prog.functions.values())
    (kernel,) = _by_op(_phase(explore(prog, fns, backend="reference").data, "memory"), "fused")
    profile = {"flowml_profile": 1, "functions": [
        {"fn": "f", "rows": [_row(kernel["k"], "fused", 0.25, detail="kernel k9", gbps=1.5), _row(None, None, 0.01)]}]}
    (fn,) = explore(prog, fns, backend="reference", profile=profile).data["fns"]
    assert fn["profile"] == [{"k": kernel["k"], "op": "fused", "kind": "native", "detail": "kernel k9", "calls": 10,
                              "total_s": 0.25, "mean_s": 0.025, "gbps": 1.5},
                             {"k": None, "kind": "boundary", "calls": 10, "total_s": 0.01, "mean_s": 0.001}]
    other = {"functions": [{"fn": "f", "rows": [_row(0, "fused", 0.25)]}]}  # %0 is the input x here
    with pytest.raises(FlowError, match="the profile of fn f is of another graph: its node %0 \\(fused\\) is input"):
        explore(prog, fns, backend="reference", profile=other)
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"functions": [{"fn": "f", "rows": [{"id": 3, "total_s": 1}]}]}))
    with pytest.raises(FlowError, match="fn f, row 0: expected an id"):
        flowml.explore.load_profile(str(path))
    path.write_text(json.dumps({"functions": {"f": []}}))
    with pytest.raises(FlowError, match="not a flowml profile"):
        flowml.explore.load_profile(str(path))


# ---------------------------------------------------------------- CLI and API


def test_cli_writes_the_page(tmp_path):
    out = tmp_path / "logreg.html"
    r = run_cli("compile", "examples/logreg.flow", "--emit", "html", "--backend", "reference", "-o", str(out))
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    assert text.startswith("<!DOCTYPE html>") and "flowml explorer" in text and '"name":"predict"' in text
    profile = tmp_path / "p.json"
    profile.write_text(json.dumps({"functions": [{"fn": "predict", "rows": [_row(3, "matmul", 0.5)]}]}))
    r = run_cli("compile", "examples/logreg.flow", "--emit", "html", "--fn", "predict", "-O0",
                "--profile-json", str(profile), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert '"profile":[{"k":3,"op":"matmul"' in out.read_text() and out.read_text().count('"phase":') == 1


def test_cli_shows_the_opencl_kernels(tmp_path):
    out = tmp_path / "cl.html"
    r = run_cli("compile", "examples/logreg.flow", "--fn", "predict", "--emit", "html", "--backend", "opencl",
                "-o", str(out))
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    data = json.loads(text.split('id="flowml-data">', 1)[1].split("</script>", 1)[0])
    (fn,) = data["fns"]
    assert fn["backend"] == "opencl" and "OpenCL kernel(s) on" in fn["summary"]
    memory = _phase(data, "memory")
    fused = [n["k"] for n in memory["nodes"] if n["op"] == "fused"]
    assert fused and sorted(int(k) for k in fn["code"]) == fused
    assert all("__kernel void" in c["OpenCL C"] for c in fn["code"].values())


@pytest.mark.parametrize("args, code, message", [
    (["--emit", "html", "--stats"], 2, "drop --stats"),
    (["--profile-json", "p.json"], 2, "add --emit html"),
    (["--emit", "html", "--profile-json", "missing.json"], 1, "missing.json: cannot read the profile"),
    (["--emit", "html", "--backend", "cuda"], 1, "unknown backend 'cuda'"),
])
def test_cli_errors(args, code, message, tmp_path):
    r = run_cli("compile", "examples/logreg.flow", "-o", str(tmp_path / "x.html"), *args)
    assert r.returncode == code and message in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_function_explore_writes_the_page_and_shows_in_a_notebook(tmp_path):
    model = flowml.load(ROOT / "examples/logreg.flow", backend="reference")
    page = model.predict.explore(tmp_path / "p.html")
    assert (tmp_path / "p.html").read_text() == page.html
    assert [f["name"] for f in page.data["fns"]] == ["predict"]
    assert page.data["fns"][0]["backend"] == "llvm"  # the reference backend has no code: LLVM's is shown
    frame = page._repr_html_()
    assert frame.startswith("<iframe srcdoc=\"&lt;!DOCTYPE html&gt;") and "<script" not in frame
    flowml.reset_default_graph()
    x = flowml.tensor("x", "f64[N, 3]")
    w = flowml.param("w", np.zeros(3))
    cost = flowml.mean((x @ w - 1) ** 2)
    (gw,) = flowml.grad(cost, [w])
    step = flowml.function([x], cost, updates={w: w - 0.1 * gw}, name="step")
    data = step.explore().data
    (source,) = data["sources"]
    assert source["file"] == __file__ and any("flowml.mean((x @ w - 1) ** 2)" in line for line in source["lines"])
    assert any(n.get("loc", [None])[0] == 0 for n in _phase(data, "parse")["nodes"])


def test_without_graphviz_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setattr(layout.shutil, "which", lambda *a, **k: None)
    with pytest.raises(FlowError, match=r"pip install 'flowml\[explore\]'"):
        layout.layout(["digraph { a }"])
