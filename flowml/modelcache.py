"""The warm model cache: loading a model again skips the compiler's front half.

`flowml.load` / `loads` of a program seen before -- the same source text, file name, options
and backend, by the same flowml -- finds the built program (parsed, built, differentiated),
every fn's optimized graph and memory plan and, on the LLVM backend, its lowered program in
`$FLOWML_CACHE_DIR/models/`: a new process neither parses (lark is not even imported), nor
takes derivatives, nor runs the optimizer or the lowerings. The machine code is the second
level: the LLVM backend finds each module's object code by the key of its IR text
(`backends/llvm/cache.py`) and loads it without parsing the IR; that level alone also serves
graphs built from Python.

Key: the source bytes, the file name (error locations name it), the optimizer's level,
exclusions and FLOWML_VERIFY, the backend and what its lowering depends on (the LLVM backend's
`cache_environment`: CPU, features, vector width, compiler), and the code that would have done
the work: flowml's version and a fingerprint (path, size, mtime) of every file of the flowml
package, numpy's version. A model with wrapped ops (`ops=`) or in check mode is not cached (a
user's Python function is not data).

Entries are pickles of flowml's own objects (ops pickle by name, see `Op.__reduce__`), written
and checked by `flowml.cachefiles` (atomic writes, a corrupt entry is a miss). The cache
directory is the user's own, as for the object-code cache, whose entries are machine code.
`FLOWML_CACHE=0` turns both off.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import pickle
import struct
import sys

from .cachefiles import FileCache

log = logging.getLogger("flowml.cache")

MAGIC = b"FLOWMLM1"  # bump the digit when the entry format changes
_store = FileCache(subdir="models", magic=MAGIC, suffix=".pkl")


@functools.lru_cache(maxsize=None)
def code_fingerprint() -> str:
    """A digest of flowml's own files (path, size, mtime): an edited compiler is a new key."""
    import numpy as np

    from . import __version__
    root = os.path.dirname(os.path.abspath(__file__))
    h = hashlib.sha256(f"{__version__}|{np.__version__}|{sys.version_info[:2]}".encode())
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith((".py", ".lark")):
                st = os.stat(os.path.join(folder, name))
                h.update(f"{os.path.relpath(os.path.join(folder, name), root)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def keeps_executables(backend) -> bool:
    """Whether entries keep the backend's compiled fns (the LLVM backend's pickle as their lowered
    program; its machine code stays in its own cache), not only the optimized graphs."""
    return hasattr(backend, "cache_environment")


def model_key(source: bytes, file: str, opt_level: int, exclude, backend) -> str:
    env = backend.cache_environment() if keeps_executables(backend) else []
    verify = os.environ.get("FLOWML_VERIFY", "")  # (as passes.pipeline.verify_requested reads it)
    h = hashlib.sha256()
    for part in (code_fingerprint(), file, repr(opt_level), repr(sorted([exclude] if isinstance(exclude, str) else (exclude or ()))), verify,
                 backend.name, repr(env), source):
        data = part if isinstance(part, bytes) else part.encode()
        h.update(struct.pack("<Q", len(data)))
        h.update(data)
    return h.hexdigest()


def lookup(key: str):
    """(program, {fn name: (Optimized, executable or None)}) stored under `key`, or None."""
    blob = _store.get(key)
    if blob is None:
        return None
    try:
        program, compiled = pickle.loads(blob)
    except Exception as e:  # an entry of another flowml that slipped through: a miss
        log.debug("flowml cache: ignoring model entry %s (%s)", key, e)
        return None
    return program, compiled


def store(key: str, model) -> bool:
    """Keep the model's built program and each fn's optimized graph (and compiled fn, see
    `keeps_executables`) under `key`; False when it cannot."""
    if _store.directory is None:
        return False
    keep = keeps_executables(model.backend)
    compiled = {name: (f.compiled, f._executable if keep else None) for name, f in model.functions.items()}
    try:
        blob = pickle.dumps((model.program, compiled), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as e:  # something of the program is not data (never expected): no entry
        log.debug("flowml cache: model not cached (%s)", e)
        return False
    return _store.put(key, blob)
