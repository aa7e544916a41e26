"""A persistent on-disk cache of compiled object code.

Where: `$FLOWML_CACHE_DIR/llvm`, else `platformdirs.user_cache_dir("flowml")/llvm`.
`FLOWML_CACHE=0` turns it off. The entries and their checks: `flowml.cachefiles` (a corrupt
entry is a miss, writes are atomic, everything fails soft).

Key: `cache_key(*parts)` is the sha256 of the caller's parts (the IR text or any string that
determines it, backend options) together with everything else that changes the machine code:
the host CPU name and feature string, the llvmlite version and `llvm.llvm_version_info`.

Object code refers to external functions by name and they are resolved when it is loaded, so a
cached entry is valid in a new process as long as the IR binds externals by symbol name (as
vecmath/blas/parallel do) and never embeds an address as a constant.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import llvmlite
import llvmlite.binding as llvm

from ...cachefiles import FileCache, base_dir
from ...errors import FlowInternalError

MAGIC = b"FLOWMLO1"  # bump the digit when the entry format or key recipe changes


def default_dir() -> Path | None:
    """The cache directory from the environment, or None when caching is turned off."""
    base = base_dir()
    return None if base is None else base / "llvm"


def _environment() -> list:
    from .jit import host_cpu  # local import: keeps this module importable on its own
    cpu, features = host_cpu()
    return [MAGIC.decode(), cpu, features, llvmlite.__version__, list(llvm.llvm_version_info)]


def _encode(part) -> bytes:
    if isinstance(part, bytes):
        return part
    if isinstance(part, str):
        return part.encode()
    # dicts/lists/numbers (backend options): canonical JSON so that key order does not matter
    return json.dumps(part, sort_keys=True, default=repr).encode()


def cache_key(*parts) -> str:
    """Hex sha256 of `parts` (str, bytes or JSON-able options) plus the compiler and host CPU."""
    h = hashlib.sha256()
    for part in [*_environment(), *parts]:
        data = _encode(part)
        h.update(struct.pack("<Q", len(data)))  # length-prefixed: ("ab","c") != ("a","bc")
        h.update(data)
    return h.hexdigest()


class CompileCache(FileCache):
    """The object-code cache in one directory (`directory=None`: the default directory, looked
    up again at each call so that tests can change `FLOWML_CACHE_DIR`)."""

    def __init__(self, directory: str | os.PathLike | None = None):
        super().__init__(directory, subdir="llvm", magic=MAGIC, suffix=".o")


_default = CompileCache()

# How this process's modules were found (the profiler reports a fn's): "hit" a module loaded
# whole from cached objects, "miss" a module (or a split module's part) compiled
COUNTS: dict[str, int] = {"hit": 0, "miss": 0}


def get(key: str) -> bytes | None:
    """`CompileCache().get(key)` on the default directory."""
    return _default.get(key)


def put(key: str, data: bytes) -> bool:
    """`CompileCache().put(key, data)` on the default directory."""
    return _default.put(key, data)


def compile_cached(ir_text: str, *key_parts, name: str = "flowml_module", cache: CompileCache | None = None):
    """A `JitModule` for `ir_text`, loaded from the cache when possible and stored on a miss.

    `key_parts` are added to the key (backend options...). The IR text itself is always part of
    the key. Bind the module's external symbols (vecmath/blas/parallel `ensure_symbols`) first.
    A module of kernels is split into its distinct kernels (`split.py`), each compiled once and
    cached under its own key, so that a kernel seen before -- in another layer, another model,
    another process -- is loaded, not compiled.
    """
    from .jit import JitModule
    from .split import split_kernels

    cache = cache or _default
    manifest_key = cache_key(ir_text, *key_parts, "manifest-v1")
    found = _from_manifest(cache, manifest_key, ir_text, name)
    if found is not None:
        COUNTS["hit"] += 1
        return found
    split = split_kernels(ir_text)
    if split is not None:
        try:
            return _compile_split(split, ir_text, key_parts, name, cache, manifest_key)
        except FlowInternalError:
            # (known: a split module of the data-parallel models leaves one canonical kernel
            # unresolved; until that is understood, such a module is compiled whole)
            pass
    key = cache_key(ir_text, *key_parts)
    obj = cache.get(key)
    if obj is not None:
        COUNTS["hit"] += 1
        return JitModule(ir_text, cached_object=obj, name=name)
    COUNTS["miss"] += 1
    jm = JitModule(ir_text, name=name)
    if jm.object_code is not None and cache.put(key, jm.object_code):
        _write_manifest(cache, manifest_key, [(name, key, 3, 3, ())])
    return jm


# A module's manifest: the parts it was compiled as (name, object key, IR and code-generation
# levels, exports), stored under the key of its whole text. A module seen before is loaded from
# its parts' objects without splitting its text again (the split canonicalizes every kernel with
# regular expressions: most of a warm load of a large model).
def _from_manifest(cache, manifest_key: str, ir_text: str, name: str):
    from .jit import JitModule, Part
    blob = cache.get(manifest_key)
    if blob is None:
        return None
    try:
        rows = json.loads(blob)
    except ValueError:
        return None
    parts = []
    for part_name, key, speed_level, codegen_level, exports in rows:
        obj = cache.get(key)
        if obj is None:  # an object evicted or corrupt: compile the module again
            return None
        parts.append(Part(part_name, "", obj, speed_level, codegen_level, tuple(exports)))
    if len(parts) == 1 and not parts[0].exports:
        return JitModule(ir_text, cached_object=parts[0].cached_object, name=name)
    return JitModule.linked(parts, ir_text, name=name)


def _write_manifest(cache, manifest_key: str, rows) -> None:
    cache.put(manifest_key, json.dumps([list(r) for r in rows]).encode())


def _compile_split(split, ir_text: str, key_parts, name: str, cache: CompileCache, manifest_key: str):
    """The parts of a split module, each loaded from the cache or compiled and stored."""
    from .jit import JitModule, Part

    parts = [Part(kname, text, exports=(kname,)) for kname, text in split.kernels.items()]
    parts.append(Part(name, split.wrappers, speed_level=None, codegen_level=0, exports=split.exports))
    if split.rest is not None:
        glue = dict(speed_level=None, codegen_level=0) if split.rest_is_glue else {}
        parts.append(Part(name + "_rest", split.rest, **glue))
    keys = []
    for p in parts:
        keys.append(cache_key(p.ir_text, *key_parts, "split-v1", p.speed_level, p.codegen_level))
        p.cached_object = cache.get(keys[-1])
    jm = JitModule.linked(parts, ir_text, name=name)
    compiled = sum(1 for p in parts if p.cached_object is None)
    COUNTS["miss" if compiled else "hit"] += 1
    stored = True
    for key, p in zip(keys, parts):
        if p.cached_object is None and p.object_code is not None:
            stored = cache.put(key, p.object_code) and stored
    if stored:
        _write_manifest(cache, manifest_key, [(p.name, key, p.speed_level, p.codegen_level, p.exports)
                                              for key, p in zip(keys, parts)])
    return jm
