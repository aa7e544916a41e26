"""The documentation is tested: every fenced example in README.md and docs/*.md runs.

Each fenced block is handled by its info string (any other info string fails the test, so a
new kind of block needs a rule here):

- ```flow: built with `flowml.loads` (parsed, type-checked, built) and must declare an fn. A
  block right after an `<!-- fragment -->` line is deliberately incomplete: it is only parsed,
  it must not build (else it needs no mark), and there may be at most MAX_FRAGMENTS of them.
- ```python whose first line is `# run`, right after a ```flow block: runs with
  `model = flowml.loads(<that flow block>)`, `np` (numpy) and `flowml` in scope.
- every other ```python block runs as it is. The blocks of one page run in order in one
  namespace, as a reader would run them (a block may continue an earlier one).
- ```bash / ```sh / ```shell / ```console: one command per line (`&&` chains commands, `#`
  starts a comment, `VAR=value` before a command sets its environment, `*` globs):
  - `flowml ARGS` runs as `python -m flowml.cli ARGS`, and `python examples/SCRIPT.py ARGS` as
    written; each must exit 0; `mpiexec -n K flowml ARGS` runs its K ranks under the test
    extra's mpiexec (each a process of its own);
  - `pip install ...` is not run; each `.[extra]` it names must be an extra of pyproject.toml,
    and each other package a dependency there;
  - `python -m pytest ...` is not run (it is this suite);
  - any other command fails the test.
  A page's python and shell blocks run together, in the order of the page, in a scratch folder
  holding a copy of examples/ (so python blocks can prepare files for the commands after them,
  and the repository stays clean). Each command is a process forked from one that has already
  imported flowml (CommandRunner), so the imports are paid once, not once per command.
- ```text after `<!-- check-error -->`: loaded as `model.flow`, it must fail with a FlowError
  whose message is exactly the next ```text block.
- a line `$ flowml ...` in a ```text block is a transcript: the command runs with the page's
  commands, and what it prints (stdout and stderr) must be the lines after it, up to the next
  `$ ` line. Other ```text blocks show output; they are not run.

**Shortened runs.** In the fast tests, commands run with fewer epochs and steps (SHORTEN):
`--epochs N` becomes `--epochs 2`, `--steps N` becomes `--steps 20`, and each `FN:N` of
`--phases` becomes `FN:1` (only where that is fewer). A page with a shortened command runs again,
exactly as written and on the default backend, in a test marked `slow` (`-m slow`).

**Backends.** The fast tests run commands on the reference backend (`FLOWML_BACKEND=reference`)
unless the command names its backend: `--backend`, `--check` (which compares the default LLVM
backend with the reference), `--emit llvm|asm|opencl`, a `FLOWML_*` variable, or a command on
docs/backends.md (which is about the native backends). Python blocks name their backend in the
code, or run on the suite's default (reference, tests/conftest.py).

The reference tables stay complete too: every built-in function, every CLI option and every
rewrite rule of the optimizer is documented, and every `flowml CMD --option` written in the
docs (in running text and tables too) names a real command and its real options.
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import shutil
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import flowml
from flowml.lang.parser import parse

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
ERROR_MARKER = "<!-- check-error -->"
FRAGMENT_MARKER = "<!-- fragment -->"
MAX_FRAGMENTS = 3
SHELL = {"bash", "sh", "shell", "console"}
KNOWN = {"flow", "python", "text"} | SHELL
SHORTEN = {"--epochs": 2, "--steps": 20}  # option: the most a fast test runs
PHASE_EPOCHS = 1  # the most epochs per phase of `--phases` in a fast test
NATIVE_PAGES = {"docs/backends.md"}


@dataclass
class Block:
    file: str  # relative to the repository root, e.g. docs/language.md
    line: int  # line of the opening fence (1-based)
    lang: str  # the info string's first word
    text: str
    marker: str | None  # an HTML comment line right before the fence (only blank lines between)

    @property
    def id(self) -> str:
        return f"{self.file}:{self.line}"


def read_blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a markdown file, in order."""
    blocks: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    rel = path.relative_to(ROOT).as_posix()
    i = 0
    last_nonblank = ""
    while i < len(lines):
        m = re.match(r"^(`{3,})\s*([\w+-]*)", lines[i])
        if not m:
            if lines[i].strip():
                last_nonblank = lines[i].strip()
            i += 1
            continue
        fence, lang, start = m.group(1), m.group(2), i
        body = []
        i += 1
        while i < len(lines) and not lines[i].startswith(fence):
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise AssertionError(f"{rel}:{start + 1}: unclosed code fence")
        marker = last_nonblank if re.fullmatch(r"<!--.*-->", last_nonblank) else None
        blocks.append(Block(rel, start + 1, lang, "\n".join(body) + "\n", marker))
        last_nonblank = ""
        i += 1
    return blocks


PAGES = [ROOT / "README.md"] + sorted(DOCS.glob("*.md"))
ALL_BLOCKS = {p.relative_to(ROOT).as_posix(): read_blocks(p) for p in PAGES}


def _flat(lang=None, file=None):
    return [b for name, blocks in ALL_BLOCKS.items() if file in (None, name)
            for b in blocks if lang is None or b.lang in lang]


def _params(blocks):
    return [pytest.param(b, id=b.id) for b in blocks]


def _is_run_block(b: Block) -> bool:
    return b.lang == "python" and b.text.startswith("# run")


def _run_pairs():
    """(flow block, `# run` python block) pairs; a `# run` block must follow a flow block."""
    pairs = []
    for blocks in ALL_BLOCKS.values():
        for prev, b in zip([None] + blocks, blocks):
            if _is_run_block(b):
                pairs.append(pytest.param(prev, b, id=b.id))
    return pairs


def _error_pairs():
    pairs = []
    for blocks in ALL_BLOCKS.values():
        for b, nxt in zip(blocks, blocks[1:] + [None]):
            if b.marker == ERROR_MARKER:
                pairs.append(pytest.param(b, nxt, id=b.id))
    return pairs


def transcripts(block: Block) -> list[tuple[str, str]]:
    """(command, output) pairs of a ```text block: a line `$ flowml ...` and the lines after it,
    up to the next `$ ` line. (A line with two prompts is a side-by-side view, not a transcript.)"""
    pairs: list[tuple[str, list[str]]] = []
    for line in block.text.splitlines():
        if line.startswith("$ ") and line.count("$ ") == 1:
            pairs.append((line[2:], []))
        elif line.startswith("$ "):
            return []
        elif pairs:
            pairs[-1][1].append(line)
    return [(c, "\n".join(out).rstrip()) for c, out in pairs]


def _page_steps(page: str) -> list[Block]:
    """The blocks a page runs in order: python blocks (not `# run`), shell blocks and transcripts."""
    return [b for b in ALL_BLOCKS[page] if (b.lang == "python" and not _is_run_block(b)) or b.lang in SHELL
            or (b.lang == "text" and transcripts(b))]


def _exec(source: str, block: Block, namespace: dict) -> None:
    code = compile(source, block.id, "exec")
    exec(code, namespace)  # noqa: S102 - running our own documentation


def test_docs_exist():
    for name in ("language.md", "cli.md", "api.md", "optimizer.md", "backends.md"):
        assert (DOCS / name).is_file(), f"docs/{name} is missing"
    assert _flat({"flow"}) and _run_pairs() and _error_pairs() and _flat(SHELL)


def test_every_block_has_a_rule():
    """Every fenced block is one of the kinds this module runs; markers are the known ones."""
    for b in _flat():
        assert b.lang in KNOWN, f"{b.id}: no rule runs a ```{b.lang or '(no info string)'} block"
        assert b.marker in (None, ERROR_MARKER, FRAGMENT_MARKER), f"{b.id}: unknown marker {b.marker}"
        if b.marker == ERROR_MARKER:
            assert b.lang == "text", f"{b.id}: {ERROR_MARKER} marks a ```text block"
        if b.marker == FRAGMENT_MARKER:
            assert b.lang == "flow", f"{b.id}: {FRAGMENT_MARKER} marks a ```flow block"
    fragments = [b.id for b in _flat() if b.marker == FRAGMENT_MARKER]
    assert len(fragments) <= MAX_FRAGMENTS, f"{len(fragments)} fragments (at most {MAX_FRAGMENTS}): {fragments}"


# ---------------------------------------------------------------- .flow examples


def check_flow_block(block: Block) -> None:
    if block.marker == FRAGMENT_MARKER:
        parse(block.text, file=block.id)
        try:
            flowml.loads(block.text, file=block.id)
        except flowml.FlowError:
            return
        raise AssertionError(f"{block.id}: this example builds: it needs no {FRAGMENT_MARKER} mark")
    try:
        model = flowml.loads(block.text, file=block.id)
    except flowml.FlowError as e:
        raise AssertionError(f"{block.id}: the example does not build:\n{e}") from None
    assert model.functions, f"{block.id}: an example must declare at least one fn"


@pytest.mark.parametrize("block", _params(_flat({"flow"})))
def test_flow_block_builds(block: Block):
    check_flow_block(block)


def test_fragment_rule():
    """A fragment is parsed, must not build, and a complete program must not be marked one."""
    check_flow_block(Block("x.md", 1, "flow", "h = tanh(x @ W)\n", FRAGMENT_MARKER))
    with pytest.raises(AssertionError, match="needs no"):
        check_flow_block(Block("x.md", 1, "flow", "input x : f64\nfn f(x) -> x\n", FRAGMENT_MARKER))
    with pytest.raises(flowml.FlowSyntaxError):
        check_flow_block(Block("x.md", 1, "flow", "h = tanh(x @\n", FRAGMENT_MARKER))
    with pytest.raises(AssertionError, match="does not build"):
        check_flow_block(Block("x.md", 1, "flow", "h = tanh(x @ W)\n", None))


@pytest.mark.parametrize("flow, block", _run_pairs())
def test_run_block(flow: Block | None, block: Block, monkeypatch):
    assert flow is not None and flow.lang == "flow", \
        f"{block.id}: a '# run' block must come right after a ```flow block"
    monkeypatch.chdir(ROOT)
    model = flowml.loads(flow.text)
    _exec(block.text, block, {"model": model, "np": np, "flowml": flowml, "__name__": "__docs__"})


@pytest.mark.parametrize("block, expected", _error_pairs())
def test_error_example(block: Block, expected: Block | None):
    assert expected is not None and expected.lang == "text", \
        f"{block.id}: an error example must be followed by a ```text block with the message"
    with pytest.raises(flowml.FlowError) as info:
        flowml.loads(block.text, file="model.flow")
    assert str(info.value).rstrip() == expected.text.rstrip()


# ---------------------------------------------------------------- shell commands


@dataclass
class Command:
    block: Block
    env: dict[str, str]  # VAR=value assignments before the command
    argv: list[str]

    @property
    def text(self) -> str:
        return shlex.join([f"{k}={v}" for k, v in self.env.items()] + self.argv)


def shell_commands(block: Block) -> list[Command]:
    """The commands of a shell block: one per line, `&&` chaining several."""
    commands = []
    for line in block.text.splitlines():
        words = shlex.split(line, comments=True)
        while words:
            cut = words.index("&&") if "&&" in words else len(words)
            part, words = words[:cut], words[cut + 1:]
            env = {}
            while part and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", part[0]):
                key, value = part.pop(0).split("=", 1)
                env[key] = value
            assert part, f"{block.id}: an empty command in `{line}`"
            commands.append(Command(block, env, part))
    return commands


def shorten(argv: list[str]) -> list[str]:
    """The command with at most SHORTEN's epochs and steps (see the module docstring)."""
    out = list(argv)
    for i, word in enumerate(out[:-1]):
        if word in SHORTEN and out[i + 1].isdigit():
            out[i + 1] = str(min(int(out[i + 1]), SHORTEN[word]))
        elif word == "--phases":
            out[i + 1] = ",".join(f"{fn}:{min(int(n), PHASE_EPOCHS)}"
                                  for fn, n in (p.split(":") for p in out[i + 1].split(",")))
    return out


def names_backend(cmd: Command) -> bool:
    argv = cmd.argv
    emits_native = any(a == "--emit" and b in ("llvm", "asm", "opencl") for a, b in zip(argv, argv[1:]))
    return ("--backend" in argv or "--check" in argv or emits_native
            or any(k.startswith("FLOWML_") for k in cmd.env) or cmd.block.file in NATIVE_PAGES)


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _requirement_name(spec: str) -> str:
    return re.split(r"[\s<>=!~;\[]", spec, maxsplit=1)[0].lower().replace("_", "-")


def check_pip_install(cmd: Command) -> None:
    """`pip install` is not run: what it names must exist in pyproject.toml."""
    project = _pyproject()["project"]
    extras = project.get("optional-dependencies", {})
    known = {_requirement_name(r) for r in project["dependencies"]}
    known |= {_requirement_name(r) for reqs in extras.values() for r in reqs}
    for spec in (w for w in cmd.argv[2:] if not w.startswith("-")):
        m = re.fullmatch(r"\.(?:\[([\w,\s-]*)\])?", spec)
        if m:
            for extra in filter(None, (e.strip() for e in (m.group(1) or "").split(","))):
                assert extra in extras, f"{cmd.block.id}: `{cmd.text}`: pyproject.toml has no extra '{extra}' " \
                                        f"(extras: {', '.join(extras)})"
        else:
            assert _requirement_name(spec) in known, \
                f"{cmd.block.id}: `{cmd.text}`: '{spec}' is not a dependency in pyproject.toml"


def _mpiexec() -> str:
    exe = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
    assert exe, "mpiexec not found: install the test extra (pip install -e '.[test]' pulls in flowml[mpi])"
    return exe


def _launcher(argv: list[str]) -> tuple[list[str], list[str]]:
    """`mpiexec -n K flowml ...` -> (["-n", "K"], ["flowml", ...]); other commands have none."""
    if argv[0] != "mpiexec":
        return [], argv
    assert "flowml" in argv, f"`{shlex.join(argv)}`: only `mpiexec ... flowml ...` is run"
    i = argv.index("flowml")
    return argv[1:i], argv[i:]


def _argv_to_run(cmd: Command, cwd: Path, full: bool) -> list[str] | None:
    """The arguments of `python` that run a command (None: checked, not run)."""
    argv = cmd.argv if full else shorten(cmd.argv)
    argv = _launcher(argv)[1]
    if argv[:2] == ["pip", "install"]:
        check_pip_install(cmd)
        return None
    if argv[:3] == ["python", "-m", "pytest"]:
        return None  # this suite
    if argv[0] == "flowml":
        argv = ["-m", "flowml.cli", *argv[1:]]
    elif argv[0] == "python" and len(argv) > 1 and re.fullmatch(r"examples/\w+\.py", argv[1]):
        argv = argv[1:]
    else:
        pytest.fail(f"{cmd.block.id}: no rule runs `{cmd.text}` (see tests/test_docs.py)")
    expanded = []
    for word in argv:
        if "*" in word:
            matches = sorted(glob.glob(word, root_dir=cwd))
            assert matches, f"{cmd.block.id}: `{word}` matches no file"
            expanded += matches
        else:
            expanded.append(word)
    return expanded


_FORK_SERVER = r"""
import json, os, runpy, sys, traceback
import flowml, rich.console, rich.progress, rich.table  # what every command imports, imported once
for line in sys.stdin:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:  # the command, in a fresh process as `python -m flowml.cli ...` would run it
        code = 1
        try:
            os.chdir(req["cwd"])
            os.environ.clear()
            os.environ.update(req["env"])
            out = os.open(req["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(out, 1)
            os.dup2(out, 2)
            sys.argv = req["argv"]
            if req["argv"][0] == "-m":
                sys.argv = [req["argv"][1]] + req["argv"][2:]
                runpy.run_module(req["argv"][1], run_name="__main__", alter_sys=True)
            else:
                sys.path[0] = os.path.dirname(os.path.abspath(req["argv"][0]))
                runpy.run_path(req["argv"][0], run_name="__main__")
            code = 0
        except SystemExit as e:
            if e.code is None or isinstance(e.code, int):
                code = e.code or 0
            else:
                print(e.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


class CommandRunner:
    """Runs `python ARGS` commands as forks of one server process that has imported flowml.

    Each command is still a process of its own (its own state, exit status and output), as
    `python -m flowml.cli ...` is; but the ~0.6 s of CPU that importing numpy, scipy, networkx,
    lark and rich costs is paid once, not once per command (the docs run ~40 commands)."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", _FORK_SERVER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd=ROOT, start_new_session=True)

    def run(self, args: list[str], cwd: Path, env: dict[str, str], timeout: float) -> tuple[int, str]:
        import json
        import selectors
        out = cwd / ".docs-command-output"
        self.proc.stdin.write(json.dumps({"argv": args, "cwd": str(cwd), "env": env, "out": str(out)}) + "\n")
        self.proc.stdin.flush()
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                self.close()
                raise AssertionError(f"`{shlex.join(args)}` ran past {timeout} s")
        line = self.proc.stdout.readline()
        assert line, "the command server died"
        text = out.read_text(encoding="utf-8", errors="replace")
        out.unlink()
        return int(line), text

    def close(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
        self.proc.wait()


@pytest.fixture(scope="module")
def runner():
    r = CommandRunner()
    yield r
    r.close()


def run_command(cmd: Command, cwd: Path, full: bool, runner: CommandRunner, expected: str | None = None) -> None:
    """Run a command (it must exit 0), or a transcript's (its output must be `expected`)."""
    args = _argv_to_run(cmd, cwd, full)
    if args is None:
        return
    env = dict(os.environ, COLUMNS="100", **cmd.env)
    if full or names_backend(cmd):
        if "FLOWML_BACKEND" not in cmd.env:
            env.pop("FLOWML_BACKEND", None)
    else:
        env["FLOWML_BACKEND"] = "reference"
    mpi = _launcher(cmd.argv)[0]
    if mpi:  # ranks are real processes of their own, started by MPI's launcher
        r = subprocess.run([_mpiexec(), *mpi, sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                           text=True, timeout=1800 if full else 300)
        code, output = r.returncode, r.stdout + r.stderr
    else:
        code, output = runner.run(args, cwd, env, timeout=1800 if full else 300)
    if expected is not None:
        assert output.rstrip() == expected, f"{cmd.block.id}: `{cmd.text}` printed\n{output}\nnot\n{expected}"
    else:
        assert code == 0, f"{cmd.block.id}: `{cmd.text}` ran as `python {shlex.join(args)}` and exited {code}\n{output}"


# ---------------------------------------------------------------- pages


def run_page(page: str, work: Path, full: bool, runner: CommandRunner) -> None:
    """Run a page's python and shell blocks in order, in `work` (a copy of examples/)."""
    shutil.copytree(ROOT / "examples", work / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    namespace = {"__name__": "__docs__"}
    old = os.getcwd()
    os.chdir(work)
    flowml.reset_default_graph()
    try:
        for b in _page_steps(page):
            if b.lang == "python":
                _exec(b.text, b, namespace)
            elif b.lang == "text":
                for line, expected in transcripts(b):
                    (cmd,) = shell_commands(Block(b.file, b.line, "bash", line, None))
                    run_command(cmd, work, full, runner, expected)
            else:
                for cmd in shell_commands(b):
                    run_command(cmd, work, full, runner)
    finally:
        os.chdir(old)
        flowml.reset_default_graph()


def _shortened_pages():
    return [p for p in ALL_BLOCKS if any(shorten(c.argv) != c.argv for b in _page_steps(p) if b.lang in SHELL
                                         for c in shell_commands(b))]


@pytest.mark.parametrize("page", [p for p in ALL_BLOCKS if _page_steps(p)])
def test_page(page: str, tmp_path, runner):
    run_page(page, tmp_path, full=False, runner=runner)


@pytest.mark.slow
@pytest.mark.parametrize("page", _shortened_pages())
def test_page_full_length(page: str, tmp_path, monkeypatch, runner):
    """The page as written: every command with its full epochs and steps, on the default backend."""
    monkeypatch.delenv("FLOWML_BACKEND", raising=False)
    run_page(page, tmp_path, full=True, runner=runner)


def test_shell_rules():
    """The rules the page tests apply to shell commands, on examples of each."""
    block = Block("x.md", 1, "bash", "# a comment\nFLOWML_NUM_THREADS=1 flowml run m.flow train --steps 200\n"
                  "pip install -e '.[test]' && python -m pytest -q -n 2   # two\n", None)
    (run, pip, pytest_cmd) = shell_commands(block)
    assert run.env == {"FLOWML_NUM_THREADS": "1"} and run.argv[:2] == ["flowml", "run"]
    assert pip.argv == ["pip", "install", "-e", ".[test]"] and pytest_cmd.argv[:3] == ["python", "-m", "pytest"]
    assert shorten(run.argv)[-2:] == ["--steps", "20"] and shorten(["--steps", "5"]) == ["--steps", "5"]
    assert shorten(["--epochs", "1000", "--phases", "a:50,b:1"]) == ["--epochs", "2", "--phases", "a:1,b:1"]
    assert names_backend(run) and not names_backend(Command(block, {}, ["flowml", "run", "m.flow", "f"]))
    check_pip_install(pip)
    with pytest.raises(AssertionError, match="no extra 'tset'"):
        check_pip_install(Command(block, {}, ["pip", "install", ".[tset]"]))
    with pytest.raises(AssertionError, match="not a dependency"):
        check_pip_install(Command(block, {}, ["pip", "install", "tensorflow"]))


# ---------------------------------------------------------------- reference tables


def _cli_parsers():
    from flowml.cli import build_parser
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return sub.choices


def test_cli_reference_is_complete():
    """Every command and every option of the CLI appears in docs/cli.md."""
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    for name, p in _cli_parsers().items():
        assert f"flowml {name}" in text, f"docs/cli.md does not document `flowml {name}`"
        for action in p._actions:
            for opt in action.option_strings:
                if opt not in ("-h", "--help"):
                    assert opt in text, f"docs/cli.md does not document `flowml {name} {opt}`"


def test_every_cli_mention_is_real():
    """`flowml CMD ... --opt` in running text, tables and code: CMD is a command, --opt its option."""
    commands = _cli_parsers()
    options = {name: {o for a in p._actions for o in a.option_strings} for name, p in commands.items()}
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for m in re.finditer(r"(?<![\w/-])flowml ([a-z]+)((?: [^`\n]*)?)", text):
            name, rest = m.group(1), m.group(2)
            if name not in commands:
                continue  # prose: "flowml sets it", "flowml then gives"
            rest = rest.split("$ ")[0].split(" #")[0]  # a transcript's next prompt, a comment
            for opt in re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", rest):
                opt = {"-O0": "-O", "-O1": "-O"}.get(opt, opt)
                if opt.startswith("-") and not opt.startswith("--") and len(opt) > 2 and opt[:2] != "-O":
                    continue  # a negative number or a word, not an option
                assert opt in options[name], \
                    f"{page.name}: `flowml {name}` has no option {opt} (in `{m.group(0).strip()}`)"


def test_every_builtin_is_documented():
    from flowml.lang.builtins import BUILTINS, INITIALIZERS
    text = (DOCS / "language.md").read_text(encoding="utf-8")
    table = set(re.findall(r"^\|.*?`(\w+)\(", text, flags=re.M))
    table |= set(re.findall(r"`(\w+)\(", "\n".join(l for l in text.splitlines() if l.startswith("|"))))
    missing = sorted(set(BUILTINS) - table)
    assert not missing, f"docs/language.md has no table row for the built-in(s) {missing}"
    assert not sorted(set(INITIALIZERS) - table), "an initializer is missing from docs/language.md"


def test_every_public_name_is_documented():
    text = (DOCS / "api.md").read_text(encoding="utf-8")
    names = [n for n in flowml.__all__ if not isinstance(getattr(flowml, n), types.ModuleType)]
    missing = [n for n in names if not re.search(rf"\b{n}\b", text)]
    assert not missing, f"docs/api.md does not mention {missing}"


def test_every_rewrite_rule_is_documented():
    """docs/optimizer.md names every rule of the optimizer's phases, as `before -> after`."""
    from flowml.passes import canonicalize, specialize, stabilize
    text = (DOCS / "optimizer.md").read_text(encoding="utf-8")
    missing = [r.name for m in (canonicalize, stabilize, specialize) for r in m.RULES if f"`{r.name}`" not in text]
    assert not missing, f"docs/optimizer.md does not document the rule(s) {missing}"
    from flowml.passes.pipeline import PHASES
    for phase in PHASES:
        assert f"`{phase}`" in text
