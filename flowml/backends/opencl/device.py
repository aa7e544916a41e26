"""Choosing the OpenCL device, and one context + in-order queue per device.

Device names a user can give:
  "opencl"     the first GPU if there is one, else the first device
  "opencl:N"   device N of the flattened (platform, device) list, as `flowml devices` would number it
With a bare "opencl", the environment variable FLOWML_OPENCL_DEVICE picks instead: an index N,
or a substring of the device name (case-insensitive).

PoCL (the CPU OpenCL that ships as `pocl-binary-distribution`) caches compiled kernels on disk,
which is what makes a second process's builds fast (~50 ms instead of ~0.3-0.8 s). We point
its cache into flowml's cache dir. PoCL reads POCL_CACHE_DIR when the OpenCL platform is first
initialized, so this module sets it at import time, before pyopencl is imported (by this
module); a value the user set is kept.
"""

from __future__ import annotations

import os
import threading

from ...errors import FlowError


def flowml_cache_dir() -> str:
    """FLOWML_CACHE_DIR, or the per-user cache dir (e.g. ~/.cache/flowml)."""
    env = os.environ.get("FLOWML_CACHE_DIR")
    if env:
        return env
    import platformdirs
    return platformdirs.user_cache_dir("flowml")


def pocl_cache_dir() -> str:
    return os.path.join(flowml_cache_dir(), "pocl")


os.environ.setdefault("POCL_CACHE_DIR", pocl_cache_dir())

try:
    import pyopencl as cl
except ImportError as _e:  # pragma: no cover - pyopencl is a dependency
    cl = None
    _IMPORT_ERROR: Exception | None = _e
else:
    _IMPORT_ERROR = None

INSTALL_HINT = ("install an OpenCL driver: on Linux `pip install pocl-binary-distribution` gives a CPU "
                "device (PoCL); for a GPU install the vendor's OpenCL runtime (ICD)")


def require_cl():
    """The pyopencl module, or a FlowError saying how to get it."""
    if cl is None:
        raise FlowError(f"the OpenCL backend needs pyopencl, which could not be imported ({_IMPORT_ERROR})",
                        notes=["`pip install pyopencl`; then " + INSTALL_HINT])
    return cl


_LOCK = threading.Lock()
_DEVICES: list | None = None


def all_devices() -> list:
    """Every OpenCL device, platform by platform (the numbering used by "opencl:N")."""
    global _DEVICES
    with _LOCK:
        if _DEVICES is None:
            cl_ = require_cl()
            try:
                platforms = cl_.get_platforms()
            except (cl_.LogicError, cl_.RuntimeError) as e:
                # The ICD loader found no platform (PLATFORM_NOT_FOUND_KHR): no driver installed.
                raise FlowError(f"no OpenCL platform found ({e})", notes=[INSTALL_HINT]) from None
            devices = []
            for p in platforms:
                try:
                    devices.extend(p.get_devices())
                except (cl_.LogicError, cl_.RuntimeError):
                    continue  # a platform with no usable device (DEVICE_NOT_FOUND)
            if not devices:
                raise FlowError("OpenCL platforms exist but report no device", notes=[INSTALL_HINT])
            _DEVICES = devices
        return list(_DEVICES)


def describe(device) -> str:
    return f"{device.name.strip()} ({device.platform.name.strip()})"


def _pick(devices: list, key: str, origin: str):
    key = key.strip()
    if key.lstrip("-").isdigit():
        n = int(key)
        if not 0 <= n < len(devices):
            raise FlowError(f"{origin}: there is no OpenCL device {n}", notes=[_listing(devices)])
        return devices[n]
    matches = [d for d in devices if key.lower() in d.name.lower()]
    if not matches:
        raise FlowError(f"{origin}: no OpenCL device name contains {key!r}", notes=[_listing(devices)])
    return matches[0]


def _listing(devices: list) -> str:
    return "devices: " + "; ".join(f"{i}: {describe(d)}" for i, d in enumerate(devices))


def select_device(spec: str | None = "opencl"):
    """The device for a backend name "opencl" or "opencl:N" (see the module docstring)."""
    spec = (spec or "opencl").strip()
    devices = all_devices()
    if spec == "opencl":
        env = os.environ.get("FLOWML_OPENCL_DEVICE", "").strip()
        if env:
            return _pick(devices, env, "FLOWML_OPENCL_DEVICE")
        gpus = [d for d in devices if d.type & cl.device_type.GPU]
        return (gpus or devices)[0]
    if spec.startswith("opencl:"):
        return _pick(devices, spec[len("opencl:"):], f"device {spec!r}")
    raise FlowError(f"not an OpenCL device name: {spec!r} (use 'opencl' or 'opencl:N')")


def supports_fp64(device) -> bool:
    return "cl_khr_fp64" in device.extensions.split()


def has_int64_atomics(device) -> bool:
    return "cl_khr_int64_base_atomics" in device.extensions.split()


_CONTEXTS: dict = {}


def _key(device):
    return device.int_ptr


def context(device):
    """The (cached) context of `device` alone."""
    with _LOCK:
        k = _key(device)
        if k not in _CONTEXTS:
            ctx = require_cl().Context(devices=[device])
            _CONTEXTS[k] = (ctx, cl.CommandQueue(ctx, device))
        return _CONTEXTS[k][0]


def queue(device):
    """The (cached) in-order command queue of `device`."""
    context(device)
    return _CONTEXTS[_key(device)][1]
