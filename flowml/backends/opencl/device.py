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
            if not platforms:  # some ICD loaders report none instead of failing
                raise FlowError("no OpenCL platform found", notes=[INSTALL_HINT])
            devices = []
            for p in platforms:
                try:
                    devices.extend(p.get_devices())
                except (cl_.LogicError, cl_.RuntimeError):
                    continue  # a platform with no usable device (DEVICE_NOT_FOUND)
            if not devices:
                raise FlowError("OpenCL platforms exist but report no device", notes=[INSTALL_HINT])
            for d in devices:
                _fix_pocl_generic_cpu(d)
            _DEVICES = devices
        return list(_DEVICES)


# ----------------------------------------------------------------- PoCL on CPUs its LLVM predates
#
# pocl-binary-distribution 3.0 bundles LLVM 14, which names no CPU newer than ~2021 (e.g. AMD
# family 26, Zen 5, is "generic"); PoCL then passes `-target-cpu generic` to its clang, which
# rejects it: EVERY build fails with "unknown target CPU 'generic'". PoCL 3.0 has no option to
# override the CPU (POCL_LLVM_CPU_NAME came later), so we replace the CPU name in PoCL's device
# struct with the one PoCL itself pairs with the kernel library it picked for this host's
# features (its `kernellib_feature_map`: avx512 -> skylake-avx512, avx2 -> haswell, ...).
# Guarded: only a PoCL CPU device whose build hash ends in "-generic", only a pointer field
# (in readable memory) to exactly "generic", and only when there is exactly one such field.
# FLOWML_POCL_CPU=<llvm cpu name> picks the name; FLOWML_POCL_CPU=0 turns this off.

_POCL_CPU_BY_FEATURES = [  # PoCL 3.0's kernellib_feature_map, best last
    ("athlon64", {"sse2"}),
    ("core2", {"sse2", "ssse3", "cx16"}),
    ("penryn", {"sse2", "sse4_1", "cx16"}),
    ("sandybridge", {"sse2", "avx", "cx16", "popcnt"}),
    ("ivybridge", {"sse2", "avx", "cx16", "popcnt", "f16c"}),
    ("haswell", {"sse2", "avx", "avx2", "cx16", "popcnt", "abm", "f16c", "fma", "bmi1", "bmi2"}),
    ("skylake-avx512", {"sse2", "avx512f"}),
]
_KEEP_ALIVE: list = []  # the replacement strings must outlive the device


def _host_cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _pocl_cpu_name() -> str | None:
    name = None
    flags = _host_cpu_flags()
    for cpu, needed in _POCL_CPU_BY_FEATURES:
        if needed <= flags:
            name = cpu
    return name


def _readable_ranges() -> list[tuple[int, int]]:
    ranges = []
    with open("/proc/self/maps") as f:
        for line in f:
            addr, perms = line.split()[:2]
            if perms.startswith("r"):
                lo, hi = (int(x, 16) for x in addr.split("-"))
                ranges.append((lo, hi))
    return ranges


def _fix_pocl_generic_cpu(device) -> bool:
    """Apply the workaround above to `device` if it needs it; True when patched."""
    import ctypes
    import sys

    choice = os.environ.get("FLOWML_POCL_CPU", "").strip()
    if choice == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        if "Portable Computing Language" not in device.platform.name or not device.type & cl.device_type.CPU:
            return False
        if not device.version.rstrip().endswith("-generic"):
            return False
    except cl.Error:
        return False
    cpu = choice or _pocl_cpu_name()
    if not cpu:
        return False
    ranges = _readable_ranges()

    def readable(addr: int, n: int) -> bool:
        return any(lo <= addr and addr + n <= hi for lo, hi in ranges)

    base = device.int_ptr
    hits = []
    for off in range(0, 4096, 8):
        if not readable(base + off, 8):
            break
        p = ctypes.c_void_p.from_address(base + off).value
        if p and readable(p, 8) and ctypes.string_at(p, 8) == b"generic\0":
            hits.append(off)
    if len(hits) != 1:
        return False
    new = ctypes.create_string_buffer(cpu.encode())
    _KEEP_ALIVE.append(new)
    ctypes.c_void_p.from_address(base + hits[0]).value = ctypes.addressof(new)
    return True


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
