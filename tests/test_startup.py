"""Start-up in a fresh process: what `import flowml` loads, and the parser's cached LALR tables."""

from __future__ import annotations

import glob
import json
import subprocess
import sys

import lark
import pytest

from flowml.lang import parser as P

# Imported only where they are used: each costs a fresh process 0.05-0.4 s, or loads a driver.
LAZY = ["matplotlib", "pyopencl", "mpi4py", "rich", "llvmlite", "lark", "scipy.special", "onnx",
        "onnxruntime"]


@pytest.fixture(scope="module")
def imported_by_flowml() -> set[str]:
    code = "import sys, json, flowml; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    return set(json.loads(out.stdout))


@pytest.mark.parametrize("module", LAZY)
def test_import_flowml_does_not_import(module, imported_by_flowml):
    assert module not in imported_by_flowml


def _entries(tmp_path):
    return glob.glob(str(tmp_path / "parser" / "*.lark"))


def _trees(parser):
    return [parser.parse(open(f, encoding="utf-8").read(), start="start") for f in sorted(glob.glob("examples/*.flow"))]


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWML_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("FLOWML_CACHE", raising=False)
    # as with a lark other than the one the shipped tables were made by: the cache dir's copy
    monkeypatch.setattr(P, "SHIPPED_TABLES", tmp_path / "no-shipped-tables")
    return tmp_path


def test_parser_tables_are_cached_and_loaded(cache_dir, monkeypatch):
    built = P._lark.__wrapped__()  # (uncached by functools: a cold build, which stores the entry)
    assert len(_entries(cache_dir)) == 1
    monkeypatch.setattr(lark.Lark, "_build_parser", lambda self: pytest.fail("tables built, not loaded"))
    loaded = P._lark.__wrapped__()
    assert _trees(loaded) == _trees(built)
    text = "param w : f64[3] = zeros\nfn f() -> w * (2 +\n 1)"
    assert [(t.type, t.value, t.line, t.column) for t in loaded.lex(text)] == \
        [(t.type, t.value, t.line, t.column) for t in built.lex(text)]


@pytest.mark.parametrize("damage", ["truncated", "flipped", "checked garbage"])
def test_a_corrupt_parser_cache_entry_is_rebuilt(cache_dir, damage, monkeypatch):
    built = P._lark.__wrapped__()
    (path,) = _entries(cache_dir)
    blob = open(path, "rb").read()
    if damage == "truncated":
        bad = blob[:len(blob) // 2]
    elif damage == "flipped":
        bad = blob[:-10] + bytes(b ^ 0xFF for b in blob[-10:])
    else:  # a valid entry (magic, length, checksum) whose contents lark cannot load
        from flowml.cachefiles import FileCache
        key = path.rsplit("/", 1)[1].split(".")[0]
        FileCache(subdir="parser", magic=b"FLOWMLP1", suffix=".lark").put(key, b"\x00not marshal data")
        bad = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(bad)
    again = P._lark.__wrapped__()
    assert _trees(again) == _trees(built)
    # rewritten: the next process loads it
    monkeypatch.setattr(lark.Lark, "_build_parser", lambda self: pytest.fail("tables built, not loaded"))
    assert _trees(P._lark.__wrapped__()) == _trees(built)


def test_no_parser_cache_when_caching_is_off(cache_dir, monkeypatch):
    monkeypatch.setenv("FLOWML_CACHE", "0")
    P._lark.__wrapped__()
    assert not _entries(cache_dir)
