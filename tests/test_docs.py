"""The documentation is tested: every example in docs/*.md runs.

- every ```flow block builds with `flowml.loads` and declares at least one fn;
- a ```python block whose first line is `# run`, right after a ```flow block, runs with
  `model = flowml.loads(<that flow block>)`, `np` (numpy) and `flowml` in scope;
- every other ```python block of docs/api.md runs standalone, from the repository root;
- a ```text block after a `<!-- check-error -->` marker is loaded as `model.flow` and must fail
  with a FlowError whose message is exactly the next ```text block;
- every ```bash/```console block of docs/cli.md whose first line starts with `flowml ` runs,
  one command per line, as `python -m flowml.cli ...`, and each command must exit 0. They run in
  a scratch folder holding a copy of examples/, after the ```python blocks of docs/cli.md
  (which prepare data files there), so the repository is left clean;
- the reference tables stay complete: every built-in function, every CLI option and every rewrite
  rule of the optimizer (docs/optimizer.md) is documented.
"""

from __future__ import annotations

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

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
ERROR_MARKER = "<!-- check-error -->"


@dataclass
class Block:
    file: str  # relative to the repository root, e.g. docs/language.md
    line: int  # line of the opening fence (1-based)
    lang: str  # the info string's first word
    text: str
    after_marker: bool  # preceded by ERROR_MARKER (only blank lines between)

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
        blocks.append(Block(rel, start + 1, lang, "\n".join(body) + "\n", last_nonblank == ERROR_MARKER))
        last_nonblank = ""
        i += 1
    return blocks


DOC_FILES = sorted(DOCS.glob("*.md"))
ALL_BLOCKS = {p.name: read_blocks(p) for p in DOC_FILES}


def _flat(lang=None, file=None):
    return [b for name, blocks in ALL_BLOCKS.items() if file in (None, name)
            for b in blocks if lang is None or b.lang in lang]


def _params(blocks):
    return [pytest.param(b, id=b.id) for b in blocks]


def _run_pairs():
    """(flow block, `# run` python block) pairs; a `# run` block must follow a flow block."""
    pairs = []
    for blocks in ALL_BLOCKS.values():
        for prev, b in zip([None] + blocks, blocks):
            if b.lang == "python" and b.text.startswith("# run"):
                pairs.append(pytest.param(prev, b, id=b.id))
    return pairs


def _error_pairs():
    pairs = []
    for blocks in ALL_BLOCKS.values():
        for b, nxt in zip(blocks, blocks[1:] + [None]):
            if b.after_marker:
                pairs.append(pytest.param(b, nxt, id=b.id))
    return pairs


def _standalone_python():
    return [b for b in _flat({"python"}, "api.md") if not b.text.startswith("# run")]


def _cli_blocks():
    return [b for b in _flat({"bash", "console", "sh", "shell"}, "cli.md") if b.text.startswith("flowml ")]


def _exec(source: str, block: Block, namespace: dict) -> None:
    code = compile(source, block.id, "exec")
    exec(code, namespace)  # noqa: S102 - running our own documentation


@pytest.fixture
def in_root(monkeypatch):
    monkeypatch.chdir(ROOT)
    flowml.reset_default_graph()
    yield
    flowml.reset_default_graph()


def test_docs_exist():
    for name in ("language.md", "cli.md", "api.md", "optimizer.md"):
        assert (DOCS / name).is_file(), f"docs/{name} is missing"
    assert _flat({"flow"}), "no ```flow block found"
    assert _run_pairs() and _standalone_python() and _cli_blocks() and _error_pairs()


# ---------------------------------------------------------------- .flow examples


@pytest.mark.parametrize("block", _params(_flat({"flow"})))
def test_flow_block_builds(block: Block):
    try:
        model = flowml.loads(block.text, file=block.id)
    except flowml.FlowError as e:
        pytest.fail(f"{block.id}: the example does not build:\n{e}")
    assert model.functions, f"{block.id}: an example must declare at least one fn"


@pytest.mark.parametrize("flow, block", _run_pairs())
def test_run_block(flow: Block | None, block: Block, in_root):
    assert flow is not None and flow.lang == "flow", \
        f"{block.id}: a '# run' block must come right after a ```flow block"
    model = flowml.loads(flow.text)
    _exec(block.text, block, {"model": model, "np": np, "flowml": flowml, "__name__": "__docs__"})


@pytest.mark.parametrize("block, expected", _error_pairs())
def test_error_example(block: Block, expected: Block | None):
    assert expected is not None and expected.lang == "text", \
        f"{block.id}: an error example must be followed by a ```text block with the message"
    with pytest.raises(flowml.FlowError) as info:
        flowml.loads(block.text, file="model.flow")
    assert str(info.value).rstrip() == expected.text.rstrip()


def test_python_blocks_are_checked():
    """Outside api.md and cli.md (whose python blocks run as they are), every python block is a
    `# run` block, so none goes untested."""
    for b in _flat({"python"}):
        if b.file not in ("docs/api.md", "docs/cli.md"):
            assert b.text.startswith("# run"), f"{b.id}: a python block here must start with '# run'"


# ---------------------------------------------------------------- api.md


@pytest.mark.parametrize("block", _params(_standalone_python()))
def test_api_python_block(block: Block, in_root):
    _exec(block.text, block, {"__name__": "__docs__"})


# ---------------------------------------------------------------- cli.md


@pytest.fixture(scope="module")
def cli_dir(tmp_path_factory):
    """A scratch folder standing in for the repository root: examples/ plus what the python
    blocks of cli.md create (data files)."""
    work = tmp_path_factory.mktemp("cli")
    shutil.copytree(ROOT / "examples", work / "examples")
    old = os.getcwd()
    os.chdir(work)
    try:
        for b in _flat({"python"}, "cli.md"):
            _exec(b.text, b, {"__name__": "__docs__"})
    finally:
        os.chdir(old)
    return work


@pytest.mark.parametrize("block", _params(_cli_blocks()))
def test_cli_block(block: Block, cli_dir: Path):
    env = dict(os.environ, COLUMNS="100")
    env.pop("FLOWML_BACKEND", None)
    for line in block.text.splitlines():
        line = line.split(" #")[0].strip()
        if not line:
            continue
        assert line.startswith("flowml "), f"{block.id}: every line must be a flowml command: {line}"
        cmd = [sys.executable, "-m", "flowml.cli", *shlex.split(line)[1:]]
        proc = subprocess.run(cmd, cwd=cli_dir, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{block.id}: `{line}` exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"


def test_cli_reference_is_complete():
    """Every command and every option of the CLI appears in docs/cli.md."""
    from flowml.cli import build_parser
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, p in sub.choices.items():
        assert f"flowml {name}" in text, f"docs/cli.md does not document `flowml {name}`"
        for action in p._actions:
            for opt in action.option_strings:
                if opt not in ("-h", "--help"):
                    assert opt in text, f"docs/cli.md does not document `flowml {name} {opt}`"


# ---------------------------------------------------------------- reference tables


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
