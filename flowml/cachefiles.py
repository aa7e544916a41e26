"""flowml's on-disk cache: where it lives, and a store of checked, atomically written entries.

Where: `$FLOWML_CACHE_DIR`, else `platformdirs.user_cache_dir("flowml")` (e.g. ~/.cache/flowml),
one subdirectory per kind of entry (`llvm/` object code, `models/` the warm model cache,
`parser/` the parser's tables).
`FLOWML_CACHE=0` turns caching off.

An entry file: a 48-byte header (the store's 8-byte magic, payload length, sha256 of the
payload) and the payload. A truncated, corrupt or foreign file fails the check and reads as a
miss; the next `put` overwrites it. Entries are written to a temp file in the same directory and
renamed over the final name (`os.replace` is atomic on POSIX), so readers never see a
half-written entry and two processes writing the same key both succeed (the last rename wins).
Everything fails soft: an unwritable or uncreatable directory means no caching, never an error.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import tempfile
from pathlib import Path

log = logging.getLogger("flowml.cache")

_HEADER = struct.Struct("<8sQ32s")  # magic, payload length, sha256(payload)


def base_dir() -> Path | None:
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
    return Path(base)


class FileCache:
    """Entries `<key><suffix>` in one directory (`directory=None`: `base_dir()/subdir`, looked up
    again at each call so that tests can change `FLOWML_CACHE_DIR`)."""

    def __init__(self, directory: str | os.PathLike | None = None, *, subdir: str, magic: bytes,
                 suffix: str):
        if len(magic) != 8:
            raise ValueError("a cache magic is 8 bytes")
        self._fixed = Path(directory) if directory is not None else None
        self._subdir, self._magic, self._suffix = subdir, magic, suffix

    @property
    def directory(self) -> Path | None:
        if self._fixed is not None:
            return self._fixed
        base = base_dir()
        return None if base is None else base / self._subdir

    def _path(self, key: str) -> Path | None:
        d = self.directory
        if d is None:
            return None
        if not key or not all(c in "0123456789abcdef" for c in key):
            raise ValueError(f"cache key must be a hex digest, got {key!r}")
        return d / (key + self._suffix)

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
        if magic != self._magic or length != len(payload) or hashlib.sha256(payload).digest() != digest:
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
                f.write(_HEADER.pack(self._magic, len(data), hashlib.sha256(data).digest()))
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
