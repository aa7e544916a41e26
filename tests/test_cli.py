"""The `flowml` command line, end to end: each test runs a `flowml` command from the repository
root, as a user would, and checks its output and exit status. Errors print `file:line:col:
message` (plus the source line and a caret) and exit 1, with no traceback; usage errors exit 2.

Most commands run `flowml.cli.main` in this process (stdout, stderr and the environment as a
subprocess would have them): a fresh interpreter costs a second of imports each, the largest
share of this file's time. The tests about the process itself -- pathological inputs that must
not crash it, a closed pipe -- run `python -m flowml.cli` in a subprocess (`process=True`)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import flowml
from helpers import run_cli

ROOT = Path(__file__).resolve().parent.parent
LOGREG = "examples/logreg.flow"


def cli(*args, timeout: float = 120, process: bool = False) -> subprocess.CompletedProcess:
    """`flowml ARGS` from the repository root, the backend variable unset."""
    return run_cli(*args, timeout=timeout, process=process)


def ok(*args) -> str:
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    return r.stdout


def fails(*args, code: int = 1) -> str:
    """Runs a command that must fail cleanly with `code`; returns its stderr."""
    r = cli(*args)
    assert r.returncode == code, f"exit {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr
    return r.stderr


def table_values(stdout: str) -> dict[str, tuple[str, str]]:
    """{output: (type, value)} from the rich table `run` prints."""
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃]", line)]
        if len(cells) == 5 and cells[1] and cells[1] != "output":
            rows[cells[1]] = (cells[2], cells[3])
    return rows


# ---------------------------------------------------------------- check


def test_check_prints_signatures():
    assert ok("check", LOGREG).splitlines() == [
        "examples/logreg.flow: ok",
        "  fn train(x: f64[N, 784], y: f64[N]) -> (prediction: bool[N], xent: f64[N])  updates w, b",
        "  fn predict(x: f64[N, 784]) -> (prediction: bool[N])",
        "  params: w: f64[784], b: f64",
    ]


# ---------------------------------------------------------------- compile

# `%k = op operands {attrs} : type  # file:line:col (name)`; a fused node is `%k = fused[formula] : type`
SSA = re.compile(r"  (%\d+) = (\w+)(?:\[.*\])?(?: [^:]*)? : (bool|[fi](?:32|64))(\[[^\]]*\])?"
                 r"(?:  # (\S+):(\d+):(\d+)(?: \((\w+)\))?)?")


def check_ssa(out: str) -> list[str]:
    """Every fn block of `compile --emit ir` output is SSA: each name assigned once, before use,
    every node located in logreg.flow. Returns the blocks."""
    blocks = out.strip().split("\n\n")
    for block in blocks:
        lines = block.splitlines()
        assert lines[-1] == "}"
        defined: set[str] = set()
        for line in lines[1:-1]:
            if line.startswith("  return ") or line.startswith("  update "):
                for ref in re.findall(r"%\d+", line):
                    assert ref in defined, line
                continue
            m = SSA.fullmatch(line)
            assert m, f"not an SSA line: {line!r}"
            target = m.group(1)
            assert target not in defined, f"{target} assigned twice"
            for ref in re.findall(r"%\d+", line.split(" = ", 1)[1].split("  #")[0]):
                assert ref in defined, f"{ref} used before it is defined: {line}"
            defined.add(target)
            assert m.group(5) == "logreg.flow", line  # every node says where it comes from
    return blocks


def test_compile_emits_ssa_ir():
    """The IR is the optimized graph: fused kernels print as their scalar formula."""
    out = ok("compile", LOGREG)
    blocks = check_ssa(out)
    assert [b.splitlines()[0] for b in blocks] == [
        "fn train(x: f64[N, 784], y: f64[N]) {",
        "fn predict(x: f64[N, 784]) {",
    ]
    train = blocks[0]
    assert re.search(r"^  %\d+ = matmul %0, %\d+ : f64\[N\]  # logreg\.flow:13:22$", train, re.M)
    assert re.search(r"^  update w <- %\d+$", train, re.M) and re.search(r"^  update b <- %\d+$", train, re.M)
    assert re.search(r"^  return %\d+ \(prediction\), %\d+ \(xent\)$", train, re.M)
    # the naive cross-entropy is gone: softplus of the logit, no log of a probability
    xent = re.search(r"^  %\d+ = fused\[(.*)\] : f64\[N\]  # logreg\.flow:15:14 \(xent\)$", train, re.M)
    assert xent and "softplus" in xent.group(1) and "log(" not in xent.group(1)
    # -O0: the graph as built, one op per line
    built = check_ssa(ok("compile", LOGREG, "-O0"))
    assert "fused" not in "".join(built) and re.search(r"= log %\d+ : f64\[N\]", built[0])


PREDICT_AS_BUILT = [
    "fn predict(x: f64[N, 784]) {",
    "  %0 = input x : f64[N, 784]  # logreg.flow:8:1 (x)",
    "  %1 = param w : f64[784]  # logreg.flow:10:1 (w)",
    "  %2 = param b : f64  # logreg.flow:11:1 (b)",
    "  %3 = matmul %0, %1 : f64[N]  # logreg.flow:13:22",
    "  %4 = add %3, %2 : f64[N]  # logreg.flow:13:22",
    "  %5 = sigmoid %4 : f64[N]  # logreg.flow:13:14 (p_1)",
    "  %6 = const 0.5 : f64  # logreg.flow:14:14",
    "  %7 = gt %5, %6 : bool[N]  # logreg.flow:14:14 (prediction)",
    "  return %7 (prediction)",
    "}",
]


def test_compile_one_fn_matches_the_api():
    out = ok("compile", LOGREG, "--fn", "predict")
    model = flowml.load(ROOT / LOGREG)
    assert out == model.predict.ir() + "\n"
    assert out.splitlines() == [
        "fn predict(x: f64[N, 784]) {",
        "  %0 = input x : f64[N, 784]  # logreg.flow:8:1 (x)",
        "  %1 = param w : f64[784]  # logreg.flow:10:1 (w)",
        "  %2 = param b : f64  # logreg.flow:11:1 (b)",
        "  %3 = matmul %0, %1 : f64[N]  # logreg.flow:13:22",
        "  %4 = fused[sigmoid(%3 + %2) > 0.5] : bool[N]  # logreg.flow:14:14 (prediction)",
        "  return %4 (prediction)",
        "}",
    ]
    built = ok("compile", LOGREG, "--fn", "predict", "-O0")
    assert built == model.predict.ir(level=0) + "\n"
    assert built.splitlines() == PREDICT_AS_BUILT


def test_compile_emits_dot():
    out = ok("compile", LOGREG, "--emit", "dot")
    graphs = re.findall(r'^digraph "(\w+)" \{$', out, re.M)
    assert graphs == ["train", "predict"]
    assert out.count("{") == out.count("}")
    for args, n_nodes, n_edges in ((("--fn", "predict"), 6, 5), (("--fn", "predict", "-O0"), 9, 8)):
        one = ok("compile", LOGREG, "--emit", "dot", *args)
        assert one.startswith('digraph "predict" {\n') and one.rstrip().endswith("}")
        assert one.count("digraph") == 1
        nodes = set(re.findall(r"^  (\w+) \[label=", one, re.M))
        edges = re.findall(r"^  (\w+) -> (\w+)", one, re.M)
        # the nodes of its IR and its output; their operands + 1 output edge
        assert (len(nodes), len(edges)) == (n_nodes, n_edges), args
        for a, b in edges:
            assert a in nodes and b in nodes, (a, b)
        assert '[label="matmul\\nf64[N]"];' in one
        assert '[label="input x\\nf64[N, 784]", shape=ellipse];' in one
    one = ok("compile", LOGREG, "--emit", "dot", "--fn", "predict")
    assert re.search(r'\[label="fused sigmoid\(%\d+ \+ %\d+\) > 0\.5\\nbool\[N\]"\];', one)


@pytest.mark.parametrize("phase", ["canonicalize", "stabilize", "specialize", "fuse", "memory"])
def test_compile_after_a_phase_matches_the_api(phase):
    out = ok("compile", LOGREG, "--fn", "train", "--after", phase)
    model = flowml.load(ROOT / LOGREG)
    assert out == model.train.ir(after=phase) + "\n"
    check_ssa(out)
    assert ("softplus" in out) == (phase != "canonicalize")
    assert ("fused[" in out) == (phase in ("fuse", "memory"))


def test_compile_unknown_phase():
    err = fails("compile", LOGREG, "--after", "fusion")
    assert err.strip() == ("error: unknown phase 'fusion'; the phases are canonicalize, stabilize, "
                           "specialize, fuse, memory")


def _stats(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("#")]


def test_compile_stats():
    """--stats: how often each rule fired (by phase), kernels, and the memory plan's bytes for
    N=1000 (or --dims), the same numbers the Python API gives."""
    out = ok("compile", LOGREG, "--fn", "train", "--stats")
    model = flowml.load(ROOT / LOGREG)
    opt = model.train.optimized()
    assert out.startswith(model.train.ir() + "\n# stats for fn train (after memory)\n")
    stats = _stats(out)
    rows = {line[4:].rsplit(None, 1)[0].strip(): int(line.rsplit(None, 1)[1]) for line in stats[1:-2]}
    assert rows == dict(opt.stats)
    assert rows["stabilize: log(sigmoid(x)) -> -softplus(-x)"] == 2
    assert rows["stabilize: 1 - sigmoid(x) -> sigmoid(-x)"] == 1
    assert rows["memory: in-place param updates"] == 2
    assert stats[-2] == "#   kernels: 10 (7 fused)"
    for dims, n in (((), 1000), (("--dims", "N=400"), 400)):
        text = _stats(ok("compile", LOGREG, "--fn", "train", "--stats", *dims))[-1]
        before, after = opt.plan.bytes_before(opt.graph, {"N": n}), opt.plan.bytes_after({"N": n})
        assert text == (f"#   intermediate bytes (N={n}): {before:,} unplanned, {after:,} planned "
                        f"({len(opt.plan.buffers)} buffers, 2 in-place updates)")
        assert after <= before


def test_compile_stats_of_the_unoptimized_and_partial_graphs():
    stats = _stats(ok("compile", LOGREG, "--fn", "predict", "--stats", "-O0"))
    assert stats == ["# stats for fn predict (after none)", "#   kernels: 4 (0 fused)"]
    stats = _stats(ok("compile", LOGREG, "--fn", "train", "--stats", "--after", "stabilize"))
    assert stats[0] == "# stats for fn train (after stabilize)"
    assert not any("fuse:" in s or "bytes" in s for s in stats)


def test_compile_bad_dims_is_a_usage_error():
    r = cli("compile", LOGREG, "--stats", "--dims", "N=x")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == "flowml compile: --dims expects NAME=INT pairs (sizes of 0 or more) like N=400,y=2, not 'N=x'"


def test_compile_to_a_file(tmp_path):
    target = tmp_path / "out.ir"
    assert ok("compile", LOGREG, "--fn", "predict", "-o", target) == ""
    assert target.read_text() == ok("compile", LOGREG, "--fn", "predict")


def test_compile_unknown_fn():
    err = fails("compile", LOGREG, "--fn", "predcit")
    assert err.strip() == ("error: examples/logreg.flow: no fn named 'predcit'; did you mean 'predict'? "
                           "(functions: train, predict)")


def test_compile_to_an_unwritable_place(tmp_path):
    err = fails("compile", LOGREG, "-o", tmp_path)
    assert err.strip() == f"error: {tmp_path}: cannot write the file (Is a directory)"


# ---------------------------------------------------------------- run


def test_run_random_steps_prints_a_table():
    r = cli("run", LOGREG, "train", "--random", "N=40,y=2", "--steps", "5")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert "train outputs" in r.stdout
    assert "5/5" in r.stdout  # the progress line
    rows = table_values(r.stdout)
    assert set(rows) == {"prediction", "xent"}
    assert rows["prediction"][0] == "bool[40]"
    assert rows["xent"][0] == "f64[40]"
    assert rows["prediction"][1].startswith("mean ")


def test_run_once():
    rows = table_values(ok("run", LOGREG, "predict", "--random", "N=7"))
    assert rows["prediction"][0] == "bool[7]"


def test_run_with_data_and_params(tmp_path):
    """--data feeds arrays by name; with w = 0 and b = 1 every prediction is sigmoid(1) > 0.5."""
    data = tmp_path / "d.npz"
    np.savez(data, x=np.random.default_rng(0).standard_normal((6, 784)), unused=np.zeros(2))
    params = tmp_path / "p.npz"
    np.savez(params, w=np.zeros(784), b=np.array(1.0))
    rows = table_values(ok("run", LOGREG, "predict", "--data", data, "--load-params", params))
    assert rows == {"prediction": ("bool[6]", "mean 1")}


def test_run_with_data_matches_the_api(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((9, 784))
    data = tmp_path / "d.npz"
    np.savez(data, x=x)
    rows = table_values(ok("run", LOGREG, "predict", "--data", data, "--seed", 4))
    expected = flowml.load(ROOT / LOGREG, seed=4).predict(x)
    assert rows["prediction"] == ("bool[9]", f"mean {np.mean(expected):.6g}")


def test_save_and_load_params_round_trip(tmp_path):
    """Train 3 steps and save; load, train 2 more and save again: the files hold exactly what
    5 steps through the Python API give."""
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((20, 784)) * 0.1, rng.integers(0, 2, 20).astype(np.float64)
    data = tmp_path / "d.npz"
    np.savez(data, x=x, y=y)
    first, second = tmp_path / "p1.npz", tmp_path / "p2.npz"
    # (one backend for both sides: the comparison is bit for bit)
    out = ok("run", LOGREG, "train", "--data", data, "--steps", 3, "--seed", 7, "--save-params", first,
             "--backend", "reference")
    assert f"params saved to {first}" in out
    ok("run", LOGREG, "train", "--data", data, "--steps", 2, "--seed", 123, "--load-params", first,
       "--save-params", second, "--backend", "reference")

    model = flowml.load(ROOT / LOGREG, seed=7, backend="reference")
    for _ in range(3):
        model.train(x, y)
    with np.load(first, allow_pickle=False) as f:
        assert sorted(f.files) == ["b", "w"]
        np.testing.assert_array_equal(f["w"], model.params["w"])
        np.testing.assert_array_equal(f["b"], model.params["b"])
    for _ in range(2):
        model.train(x, y)
    with np.load(second, allow_pickle=False) as f:
        np.testing.assert_array_equal(f["w"], model.params["w"])
        np.testing.assert_array_equal(f["b"], model.params["b"])
    # the writes were atomic: nothing but the two files (and the data) is left in the folder
    assert sorted(os.listdir(tmp_path)) == ["d.npz", "p1.npz", "p2.npz"]


def test_save_params_overwrites(tmp_path):
    target = tmp_path / "p.npz"
    target.write_bytes(b"old contents")
    ok("run", LOGREG, "predict", "--random", "N=2", "--save-params", target)
    with np.load(target, allow_pickle=False) as f:
        assert f["w"].shape == (784,)
    assert os.listdir(tmp_path) == ["p.npz"]


def test_save_params_to_an_unwritable_place(tmp_path):
    err = fails("run", LOGREG, "predict", "--random", "N=2", "--save-params", tmp_path)
    assert err.strip() == f"error: {tmp_path}: cannot write the params (Is a directory)"
    assert os.listdir(tmp_path) == []


def test_corrupt_params_file(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04garbage")
    err = fails("run", LOGREG, "predict", "--random", "N=2", "--load-params", bad)
    assert err.startswith(f"error: {bad}: not a readable .npz file")
    text = tmp_path / "text.npz"
    text.write_text("just text\n")
    err = fails("run", LOGREG, "predict", "--random", "N=2", "--load-params", text)
    assert err.startswith(f"error: {text}: not a readable .npz file")


def test_params_file_with_pickled_objects_is_refused(tmp_path):
    evil = tmp_path / "evil.npz"
    np.savez(evil, w=np.array([object()] * 784))
    err = fails("run", LOGREG, "predict", "--random", "N=2", "--load-params", evil)
    assert err.startswith(f"error: {evil}: not a readable .npz file")


def test_missing_params_file(tmp_path):
    err = fails("run", LOGREG, "predict", "--random", "N=2", "--load-params", tmp_path / "none.npz")
    assert err.strip() == f"error: {tmp_path / 'none.npz'}: no such file"


def test_params_file_of_the_wrong_shape(tmp_path):
    p = tmp_path / "p.npz"
    np.savez(p, w=np.zeros(10))
    err = fails("run", LOGREG, "predict", "--random", "N=2", "--load-params", p)
    assert err.strip() == ("error: param 'w' expects f64[784] (declared at examples/logreg.flow:10:1), "
                           "got an array of dtype float64 and shape (10,): axis 0 must be 784")


def test_data_of_the_wrong_shape(tmp_path):
    data = tmp_path / "d.npz"
    np.savez(data, x=np.zeros((3, 10)))
    err = fails("run", LOGREG, "predict", "--data", data)
    assert err.strip() == ("error: predict(): input 'x' expects f64[N, 784] (declared at examples/logreg.flow:8:1), "
                           "got an array of dtype float64 and shape (3, 10): axis 1 must be 784")


def test_data_of_the_wrong_dtype(tmp_path):
    src = tmp_path / "m.flow"
    src.write_text("input x : f32[N]\nfn f(x) -> sum(x)\n")
    data = tmp_path / "d.npz"
    np.savez(data, x=np.zeros(3))
    err = fails("run", src, "f", "--data", data)
    assert err.startswith(f"error: f(): input 'x' expects f32[N] (declared at {src}:1:1), got an array of dtype "
                          "float64")


def test_corrupt_data_file(tmp_path):
    bad = tmp_path / "d.npz"
    bad.write_bytes(b"\x00\x01\x02")
    err = fails("run", LOGREG, "predict", "--data", bad)
    assert err.startswith(f"error: {bad}: not a readable .npz file")


def test_run_unknown_fn():
    err = fails("run", LOGREG, "trian", "--random", "N=3")
    assert err.strip() == ("error: examples/logreg.flow: no fn named 'trian'; did you mean 'train'? "
                           "(functions: train, predict)")


def test_runtime_error_is_located(tmp_path):
    src = tmp_path / "m.flow"
    src.write_text("input v : f64[3]\ninput i : i64\nfn g(v, i) -> v[i]\n")
    data = tmp_path / "d.npz"
    np.savez(data, v=np.zeros(3), i=np.array(5))
    err = fails("run", src, "g", "--data", data)
    lines = err.splitlines()
    assert lines[0].startswith(f"{src}:3:15: ") and "index i = 5 is out of range for axis 0 of size 3" in lines[0]
    assert lines[1:] == ["    fn g(v, i) -> v[i]", "                  ^"]


# ---------------------------------------------------------------- model errors


BAD_MODEL = """\
input x : f64[N, 784]
param w : f64[784] = normal(0, 1)
c = x @ ww
fn f(x) -> c
"""


@pytest.mark.parametrize("command", [["check"], ["compile"], ["compile", "--emit", "dot"], ["run", "f"]],
                         ids=["check", "compile", "compile-dot", "run"])
def test_model_errors_print_located_and_exit_1(tmp_path, command):
    path = tmp_path / "bad.flow"
    path.write_text(BAD_MODEL)
    r = cli(command[0], path, *command[1:])
    assert r.returncode == 1
    assert r.stdout == ""
    assert r.stderr.splitlines() == [
        f"{path}:3:9: unknown name 'ww'; did you mean 'w'?",
        "    c = x @ ww",
        "            ^",
    ]


def test_shape_error_at_the_cli(tmp_path):
    path = tmp_path / "shape.flow"
    path.write_text("input x : f64[N, 784]\ninput v : f64[10]\nc = x + v\nfn f(x, v) -> c\n")
    err = fails("check", path)
    assert err.splitlines()[0] == f"{path}:3:5: cannot add f64[N, 784] and f64[10]: shapes do not broadcast"


def test_relative_paths_are_kept_in_messages(tmp_path):
    (tmp_path / "rel.flow").write_text("input x : f64\ny = x +\n")
    relative = os.path.relpath(tmp_path / "rel.flow", ROOT)  # the CLI runs in ROOT
    assert not os.path.isabs(relative)
    err = fails("check", relative)
    assert err.startswith(f"{relative}:2:")


@pytest.mark.parametrize("text, line", [
    ("input x : f64\nfn f(x) -> \n", 2),
    ("input x : f64[N\nfn f(x) -> x\n", 1),  # found at `fn`, reported at the '[' left open
], ids=["missing-output", "unclosed-bracket"])
def test_syntax_errors_at_the_cli(tmp_path, text, line):
    path = tmp_path / "syntax.flow"
    path.write_text(text)
    err = fails("check", path)
    first, source, caret = err.splitlines()[:3]
    assert re.match(rf"{re.escape(str(path))}:{line}:\d+: ", first)
    col = int(first.split(":")[2])
    assert source.startswith("    ")
    assert caret == "    " + " " * (col - 1) + "^"


# ---------------------------------------------------------------- usage errors (exit 2)


@pytest.mark.parametrize("args, message", [
    (["frob", LOGREG], "invalid choice: 'frob'"),
    ([], "the following arguments are required: command"),
    (["check"], "the following arguments are required: file"),
    (["run", LOGREG], "the following arguments are required: fn"),
    (["compile", LOGREG, "--emit", "svg"], "invalid choice: 'svg'"),
    (["run", LOGREG, "train", "--steps", "many"], "invalid int value: 'many'"),
    (["run", LOGREG, "train"], "flowml run: fn train needs input(s) x, y: give them with --data FILE.npz or "
                               "synthesize them with --random N=SIZE,..."),
    (["run", LOGREG, "train", "--random", "y=2"], "flowml run: input 'x' has the dim N: give its size with "
                                                  "--random N=SIZE"),
    (["run", LOGREG, "train", "--random", "N=x"], "flowml run: --random expects NAME=INT pairs"),
    (["run", LOGREG, "train", "--random", "N"], "flowml run: --random expects NAME=INT pairs"),
    (["run", LOGREG, "train", "--random", "=4"], "flowml run: --random expects NAME=INT pairs"),
    (["run", LOGREG, "train", "--random", "N=-4"], "flowml run: --random expects NAME=INT pairs"),
    (["run", LOGREG, "train", "--random", "N=4", "--steps", "0"], "flowml run: --steps must be at least 1, not 0"),
], ids=["unknown-command", "no-command", "check-no-file", "run-no-fn", "bad-emit", "bad-steps", "no-inputs",
        "missing-random-size", "random-not-int", "random-no-value", "random-no-name", "random-negative",
        "zero-steps"])
def test_usage_errors_exit_2(args, message):
    err = fails(*args, code=2)
    assert message in err


def test_help():
    out = ok("--help")
    assert "check" in out and "compile" in out and "run" in out
    assert "--random" in ok("run", "--help")


# ---------------------------------------------------------------- pathological files


def _pathological(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.flow"
    if kind == "nested-parens":
        path.write_text("input x : f64\nfn f(x) -> " + "(" * 10_000 + "x" + ")" * 10_000 + "\n")
    elif kind == "nul-byte":
        path.write_bytes(b"input x : f64\nfn f(x) -> x\x00\n")
    elif kind == "non-utf8":
        path.write_bytes(b"input x : f64\n# caf\xe9 \xff\xfe\nfn f(x) -> x\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "long-chain":
        path.write_text("input x : f64\nfn f(x) -> x" + " + x" * 20_000 + "\n")
    elif kind == "only-comments":
        path.write_text("# nothing here\n\n")
    else:
        raise AssertionError(kind)
    return path


@pytest.mark.parametrize("command", [["check"], ["run", "f", "--random", "N=1"]],
                         ids=["check", "run"])  # (compile reads a model the way check does)
@pytest.mark.parametrize("kind", ["nested-parens", "nul-byte", "non-utf8", "empty", "long-chain",
                                  "only-comments"])
def test_pathological_files_fail_cleanly(tmp_path, kind, command):
    path = _pathological(tmp_path, kind)
    r = cli(command[0], path, *command[1:], process=True)  # whatever the input, the process must not crash
    if kind == "long-chain" and r.returncode == 0:
        return  # a long flat sum may be accepted; it must not crash either way
    assert r.returncode == 1, f"exit {r.returncode}: {r.stderr}"
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith(f"{path}:"), r.stderr[:300]
    assert re.match(rf"{re.escape(str(path))}:\d+:\d+: \S", r.stderr)
    assert r.stdout == ""


def test_unreadable_paths(tmp_path):
    err = fails("check", tmp_path / "none.flow")
    assert err.strip() == f"error: {tmp_path / 'none.flow'}: cannot read the file (No such file or directory)"
    err = fails("run", tmp_path, "f")
    assert err.strip() == f"error: {tmp_path}: cannot read the file (Is a directory)"


def test_train_runs_epochs_evaluates_saves_and_plots(tmp_path):
    """`flowml train`: mini-batches over the training rows, the test error each epoch, the params
    saved atomically and the learning curves as a PNG."""
    params, plot = tmp_path / "p.npz", tmp_path / "curve.png"
    out = ok("train", "examples/softmax.flow", "--fn", "sgd", "--data", "examples/data/digits.npz",
             "--split", "1200", "--batch", "20", "--epochs", "3", "--seed", "0",
             "--save-params", params, "--plot", plot)
    m = re.search(r"3 epochs, [\d.]+ s: final loss ([\d.e-]+), final test error ([\d.e-]+)", out)
    assert m, out
    # the same run through the Python API (reference backend): the same curves and params
    from flowml.io import load_npz
    from flowml.train import Phase, train
    model = flowml.load(ROOT / "examples" / "softmax.flow", backend="reference")
    h = train(model, load_npz(ROOT / "examples" / "data" / "digits.npz"), [Phase("sgd", 3)], 20, 1200, "error",
              seed=0, progress=False)
    assert float(m.group(1)) == pytest.approx(h.loss[-1], rel=1e-5)   # printed to 6 digits
    assert float(m.group(2)) == pytest.approx(h.test[-1], rel=1e-5)
    assert h.test[-1] < 0.2                                            # softmax regression learns the digits
    saved = np.load(params)
    assert set(saved.files) == {"W", "b"}
    for k in ("W", "b"):
        np.testing.assert_allclose(saved[k], model.params[k], rtol=1e-6, atol=1e-9, err_msg=k)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_phases_and_patience(tmp_path):
    out = ok("train", "examples/sda.flow", "--data", "examples/data/digits.npz", "--split", "1200",
             "--phases", "pretrain1:1,finetune:2", "--batch", "50", "--patience", "1")
    assert re.search(r"\d epochs, [\d.]+ s: final loss", out), out


def test_train_errors_name_the_missing_array_and_the_bad_option(tmp_path):
    data = tmp_path / "d.npz"
    np.savez(data, X=np.zeros((10, 64)))
    err = fails("train", "examples/softmax.flow", "--fn", "sgd", "--data", data, "--split", "5")
    assert "no array for input(s) y of fn sgd" in err
    err = fails("train", "examples/softmax.flow", "--fn", "nope", "--data", "examples/data/digits.npz")
    assert "no fn 'nope'" in err
    err = fails("train", "examples/softmax.flow", "--phases", "sgd:x", "--data", "examples/data/digits.npz")
    assert "--phases expects FN:EPOCHS" in err


def test_a_closed_pipe_ends_quietly():
    """`flowml compile ... | head -1`: the reader goes away; no traceback, exit 0."""
    p = subprocess.Popen([sys.executable, "-m", "flowml.cli", "compile", "examples/lenet.flow", "--emit", "asm"],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.readline()
    p.stdout.close()  # like `head -1`
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err


def test_gradcheck_labels_leave_out_trailing_comments(tmp_path):
    src = tmp_path / "c.flow"
    src.write_text("input x : f64[N]\ng = grad(sum(x * x), x)   # a comment\nfn f(x) -> g\n")
    out = ok("gradcheck", src)
    assert "g = grad(sum(x * x), x) (2:5)" in out and "a comment" not in out
