"""A persistent on-disk cache of compiled object code.

Where: `$FLOWML_CACHE_DIR/llvm`, else `platformdirs.user_cache_dir("flowml")/llvm`.
`FLOWML_CACHE=0` turns it off.

Key: `cache_key(*parts)` is the sha256 of the caller's parts (the IR text or any string that
determines it, backend options) together with everything else that changes the machine code:
the host CPU name and feature string, the llvmlite version and `llvm.llvm_version_info`.

Entry file `<key>.o`: a 48-byte header (magic, payload length, sha256 of the payload) and the
payload. A truncated, corrupt or foreign file fails the check and reads as a miss; the next
`put` overwrites it. Entries are written to a temp file in the same directory and renamed over
the final name (`os.replace` is atomic on POSIX), so readers never see a half-written entry and
two processes writing the same key both succeed -- the last rename wins, and both wrote the same
bytes anyway.

Everything fails soft: an unwritable or uncreatable directory means no caching, never an error.
Object code refers to external functions by name and they are resolved when it is loaded, so a
cached entry is valid in a new process as long as the IR binds externals by symbol name (as
vecmath/blas/parallel do) and never embeds an address as a constant.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import tempfile
from pathlib import Path

import llvmlite
import llvmlite.binding as llvm

log = logging.getLogger("flowml.llvm.cache")

MAGIC = b"FLOWMLO1"  # bump the digit when the entry format or key recipe changes
_HEADER = struct.Struct("<8sQ32s")  # magic, payload length, sha256(payload)
_SUFFIX = ".o"


def default_dir() -> Path | None:
    """The cache directory from the environment, or None when caching is turned off."""
    if os.environ.get("FLOWML_CACHE", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    base = os.environ.get("FLOWML_CACHE_DIR")
    if not base:
        try:
            import platformdirs
            base = platformdirs.user_cache_dir("flowml")
        except Exception:  # platformdirs missing or no home directory: no cache
            return None
    return Path(base) / "llvm"


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


class CompileCache:
    """The cache in one directory (`directory=None`: the default directory, looked up again at
    each call so that tests can change `FLOWML_CACHE_DIR`)."""

    def __init__(self, directory: str | os.PathLike | None = None):
        self._fixed = Path(directory) if directory is not None else None

    @property
    def directory(self) -> Path | None:
        return self._fixed if self._fixed is not None else default_dir()

    def _path(self, key: str) -> Path | None:
        d = self.directory
        if d is None:
            return None
        if not key or not all(c in "0123456789abcdef" for c in key):
            raise ValueError(f"cache key must be a hex digest from cache_key(), got {key!r}")
        return d / (key + _SUFFIX)

    def get(self, key: str) -> bytes | None:
        """The stored bytes for `key`, or None (missing, unreadable, truncated or corrupt)."""
        path = self._path(key)
        if path is None:
            return None
        try:
            blob = path.read_bytes()
        except OSError:
            return None
        if len(blob) < _HEADER.size:
            return None
        magic, length, digest = _HEADER.unpack_from(blob)
        payload = blob[_HEADER.size:]
        if magic != MAGIC or length != len(payload) or hashlib.sha256(payload).digest() != digest:
            log.debug("flowml cache: ignoring corrupt entry %s", path)
            return None
        return payload

    def put(self, key: str, data: bytes) -> bool:
        """Store `data` under `key`; True on success, False (never an exception) otherwise."""
        path = self._path(key)
        if path is None:
            return False
        data = bytes(data)
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-" + key[:16] + "-")
            with os.fdopen(fd, "wb") as f:
                f.write(_HEADER.pack(MAGIC, len(data), hashlib.sha256(data).digest()))
                f.write(data)
            os.replace(tmp, path)  # atomic: readers see the old entry or the new one, whole
            return True
        except OSError as e:
            log.debug("flowml cache: cannot write %s: %s", path, e)
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
            return False


_default = CompileCache()


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
    """
    from .jit import JitModule

    cache = cache or _default
    key = cache_key(ir_text, *key_parts)
    obj = cache.get(key)
    if obj is not None:
        return JitModule(ir_text, cached_object=obj, name=name)
    jm = JitModule(ir_text, name=name)
    if jm.object_code is not None:
        cache.put(key, jm.object_code)
    return jm
