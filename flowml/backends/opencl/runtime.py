"""Launching generated kernels on numpy arrays or device-resident `cl.array.Array`s.

The launcher turns each operand into (buffer, element offset, element strides over the
iteration space) — stride 0 on broadcast dims — merges dims that are contiguous for every
operand (so most kernels run as rank 1 or 2, whatever their static rank: a kernel of rank R
accepts any layout of rank <= R padded with leading 1s), and picks NDRange sizes: global sizes
are rounded up to a multiple of the work-group size (OpenCL 1.2 requires that) and kernels
guard the excess.

Results are `cl.array.Array`s (call `.get()` for numpy). numpy operands are copied to the
device first; device arrays are used in place, views included.

Why few distinct work-group sizes: PoCL compiles a kernel again for each new local size at its
first launch (~50 ms elementwise, ~0.3 s with barriers; cached on disk after), so sizes come
from a small fixed set. Outputs come from a per-device memory pool (`allocator`).
"""

from __future__ import annotations

import math
import threading

import numpy as np

from ...errors import FlowError, FlowInternalError, FlowRuntimeError
from ...ir.indices import IndexOutOfRange, first_bad
from ...ir.fused import empty_reduction_error
from ...ir.types import TensorType, broadcast_shapes, dtype_of
from . import codegen
from .build import build_program, get_kernel
from .clc import dtype_name
from .device import context, has_int64_atomics, queue as device_queue, require_cl, select_device, supports_fp64

cl = require_cl()
import pyopencl.array as cla  # noqa: E402  (after require_cl: a clear error if pyopencl is missing)

_LAUNCH = threading.Lock()  # set_args + enqueue must not interleave between threads
_I64 = np.int64


# ----------------------------------------------------------------- arrays


def to_device(x, device=None) -> "cla.Array":
    """`x` as a device array (a cl.array is returned as is)."""
    if isinstance(x, cla.Array):
        return x
    device = device or select_device()
    return cla.to_device(device_queue(device), np.require(np.asarray(x), requirements="C"),
                         allocator=allocator(device))


def _device_of(arrays, device):
    if device is not None:
        return device
    for a in arrays:
        if isinstance(a, cla.Array):
            return a.queue.device
    return select_device()


_POOLS: dict = {}


def allocator(device):
    """The device's memory pool (pyopencl's MemoryPool): results and temporaries reuse freed
    buffers. Why: a fresh buffer's first write page-faults on a CPU device (PoCL), which cost
    more than the kernel (16M-float add: 9 ms kernel, 25-30 ms with a fresh output).
    `allocator(device).free_held()` returns the held memory to the driver."""
    key = device.int_ptr
    pool = _POOLS.get(key)
    if pool is None:
        import pyopencl.tools as clt
        pool = _POOLS[key] = clt.MemoryPool(clt.ImmediateAllocator(device_queue(device)))
    return pool


def _empty(device, shape, dtype) -> "cla.Array":
    return cla.empty(device_queue(device), tuple(shape), np.dtype(dtype), allocator=allocator(device))


def _zeros(device, shape, dtype) -> "cla.Array":
    return cla.zeros(device_queue(device), tuple(shape), np.dtype(dtype), allocator=allocator(device))


_DUMMY: dict = {}


def _buffer(a: "cla.Array", device):
    """The buffer behind `a` (a size-0 array has none; kernels never read it then)."""
    if a.base_data is not None:
        return a.base_data
    key = device.int_ptr
    if key not in _DUMMY:
        _DUMMY[key] = cl.Buffer(context(device), cl.mem_flags.READ_WRITE, 8)
    return _DUMMY[key]


def _elem(a: "cla.Array") -> tuple[int, tuple[int, ...]]:
    """(offset, strides) of `a` in elements."""
    item = a.dtype.itemsize
    if a.offset % item or any(s % item for s in a.strides):
        raise FlowInternalError(f"device array with offset/strides not a multiple of its item size: "
                                f"{a.offset}, {a.strides}")
    return a.offset // item, tuple(s // item for s in a.strides)


def broadcast_strides(shape, strides, target) -> list[int]:
    """Element strides of an array of `shape` read over the broadcast shape `target`: 0 on the
    dims it is broadcast along (missing leading dims and size-1 dims)."""
    pad = len(target) - len(shape)
    out = [0] * pad
    for d, s, t in zip(shape, strides, target[pad:]):
        out.append(0 if d == 1 and t != 1 else s)
    return out


def collapse(shape, strides_list, rank: int):
    """Merge dims that are contiguous for every operand (and the C-order output), drop size-1
    dims, pad back with leading 1s to `rank`: (shape, strides_list) describing the same
    elements in the same C order."""
    merged: list[tuple[int, list[int]]] = []
    for j, d in enumerate(shape):
        if d == 1:
            continue
        ss = [s[j] for s in strides_list]
        if merged and all(ps == s * d for ps, s in zip(merged[-1][1], ss)):
            merged[-1] = (merged[-1][0] * d, ss)
        else:
            merged.append((d, ss))
    if len(merged) > rank:  # cannot happen: merging only shortens
        raise FlowInternalError("collapse produced more dims than it was given")
    merged = [(1, [0] * len(strides_list))] * (rank - len(merged)) + merged
    return [d for d, _ in merged], [[ss[k] for _, ss in merged] for k in range(len(strides_list))]


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def _launch(kernel, device, gsize, lsize, args) -> None:
    q = device_queue(device)
    with _LAUNCH:
        kernel.set_args(*args)
        cl.enqueue_nd_range_kernel(q, kernel, tuple(gsize), None if lsize is None else tuple(lsize))


def _check_fp64(gen: codegen.Generated, device) -> None:
    if gen.uses_fp64 and not supports_fp64(device):
        raise FlowError(f"the OpenCL device {device.name.strip()!r} has no float64 support (cl_khr_fp64)",
                        notes=["use float32 data, or another device (FLOWML_OPENCL_DEVICE)"])


def _scalars(*values) -> list:
    return [_I64(v) for v in values]


# ----------------------------------------------------------------- compiling


class Compiled:
    """A generated kernel built for one device."""

    def __init__(self, gen: codegen.Generated, device, program=None):
        _check_fp64(gen, device)
        self.gen = gen
        self.device = device
        self.program = program if program is not None else build_program(gen.source, device, what=gen.name)
        self.kernel = get_kernel(self.program, gen.name)
        # Every argument is 8 bytes (a pointer or a long); OpenCL guarantees only 1024 bytes of
        # them (PoCL: 1024): ~20 operands of a rank-4 node. Fail clearly instead of at launch.
        nargs = self.kernel.get_info(cl.kernel_info.NUM_ARGS)
        if nargs * 8 > device.max_parameter_size:
            raise FlowInternalError(
                f"kernel {gen.name} needs {nargs * 8} bytes of arguments, more than the device's "
                f"{device.max_parameter_size}: the fused node has too many operands for OpenCL",
                notes=["the fuse pass should split nodes with this many inputs"])


def build_many(gens: list[codegen.Generated], device):
    """Build several generated kernels as ONE program (one compiler run) for `device`."""
    for g in gens:
        _check_fp64(g, device)
    names = [g.name for g in gens]
    if len(set(names)) != len(names):
        raise FlowInternalError(f"kernel names repeat in one program: {names}")
    program = build_program("\n".join(g.source for g in gens), device, what=", ".join(names))
    return program


# ----------------------------------------------------------------- fused nodes


class FusedKernel(Compiled):
    """One fused node, callable on arrays: `k(*arrays) -> cl.array.Array`."""

    def __init__(self, gen: codegen.Generated, device, program=None):
        super().__init__(gen, device, program)
        self._pass2: FusedKernel | None = None

    def __call__(self, *arrays, shape=None):
        """Run on `arrays`; `shape` is the concrete iteration space (default: the operands'
        broadcast shape; a fused node's `shape` attr can be larger, e.g. all-scalar operands)."""
        gen, device = self.gen, self.device
        if len(arrays) != len(gen.operand_dtypes):
            raise FlowInternalError(f"kernel {gen.name} takes {len(gen.operand_dtypes)} operands, got {len(arrays)}")
        devs = []
        for a, dt in zip(arrays, gen.operand_dtypes):
            if isinstance(a, cla.Array):
                if a.dtype.name != dt:
                    raise FlowInternalError(f"kernel {gen.name}: operand of dtype {a.dtype} where {dt} was compiled")
                devs.append(a)
            else:
                devs.append(to_device(np.asarray(a, dtype=dt), device))
        bshape = broadcast_shapes(*(a.shape for a in devs), *(() if shape is None else (tuple(shape),)))
        if bshape is None or (shape is not None and bshape != tuple(shape)):
            raise FlowInternalError(f"kernel {gen.name}: operand shapes {[a.shape for a in devs]} do not "
                                    f"broadcast to {shape if shape is not None else 'one shape'}")
        shape = bshape
        if len(shape) > gen.rank:
            raise FlowInternalError(f"kernel {gen.name} was compiled for rank {gen.rank}, got shape {shape}")
        out_shape = tuple(shape)
        shape = (1,) * (gen.rank - len(shape)) + out_shape
        offs, strides = [], []
        for a in devs:
            off, st = _elem(a)
            offs.append(off)
            strides.append(broadcast_strides(a.shape, st, shape))
        if gen.kind == "elementwise":
            return self._elementwise(devs, offs, shape, strides, out_shape)
        return self._reduce(devs, offs, shape, strides)

    def _operand_args(self, devs, offs) -> list:
        args = []
        for a, off in zip(devs, offs):
            args += [_buffer(a, self.device), _I64(off)]
        return args

    def _elementwise(self, devs, offs, shape, strides, out_shape):
        gen, device = self.gen, self.device
        out = _empty(device, out_shape, gen.out_dtype)
        if out.size == 0:
            return out
        R = gen.rank
        dims, sts = collapse(shape, strides, R)
        args = self._operand_args(devs, offs) + [out.base_data] + _scalars(*dims)
        if R >= 3:
            args.append(_I64(math.prod(dims[:R - 2])))
        for st in sts:
            args += _scalars(*st)
        if R == 0:
            gsize, lsize = (1,), (1,)
        else:
            g = [dims[R - 1]] + ([dims[R - 2]] if R >= 2 else []) + ([math.prod(dims[:R - 2])] if R >= 3 else [])
            lsize = elementwise_group(g)
            gsize = [_round_up(n, l) for n, l in zip(g, lsize)]
        _launch(self.kernel, device, gsize, lsize, args)
        return out

    def _reduce(self, devs, offs, shape, strides):
        gen, device = self.gen, self.device
        red_name, axes, keepdims = gen.reduce
        kept = [j for j in range(len(shape)) if j not in axes]
        out_shape = tuple(1 if j in axes else d for j, d in enumerate(shape)) if keepdims else \
            tuple(shape[j] for j in kept)
        out = _empty(device, out_shape, gen.out_dtype)
        n_out = math.prod(shape[j] for j in kept)
        m = math.prod(shape[j] for j in axes)
        if n_out == 0:
            return out
        err = empty_reduction_error(gen.reduce, shape)
        if err is not None:
            raise err
        kdims, ksts = collapse([shape[j] for j in kept], [[s[j] for j in kept] for s in strides], gen.nkept)
        rdims, rsts = collapse([shape[j] for j in axes], [[s[j] for j in axes] for s in strides], gen.nreduced)
        columns = gen.extra.get("columns", False)
        W, P = (1, 64) if columns else reduction_group(m, _group_limit(self.kernel, device))
        nchunk = 1 if m <= W * 64 else min(-(-m // (W * 64)), 1024)
        chunk = max(-(-m // nchunk), 1)
        nchunk = max(-(-m // chunk), 1)
        target = out if nchunk == 1 else _empty(device, (n_out, nchunk), gen.out_dtype)
        args = self._operand_args(devs, offs) + [target.base_data] + _scalars(n_out, m, chunk, nchunk)
        args += _scalars(*kdims, *rdims)
        for ks, rs in zip(ksts, rsts):
            args += _scalars(*ks, *rs)
        if columns:
            _launch(self.kernel, device, (_round_up(n_out, P), nchunk), (P, 1), args)
        else:
            _launch(self.kernel, device, (W * nchunk, _round_up(n_out, P)), (W, P), args)
        if nchunk == 1:
            return out
        partial = self._second_pass()(target)  # (n_out,) in the same dtype
        return partial.reshape(out_shape)

    def _second_pass(self) -> "FusedKernel":
        if self._pass2 is None:
            t = TensorType(np.dtype(self.gen.out_dtype), (1, 1))
            # named by what it computes, not by the first pass: every reduction of this op and dtype
            # shares one program (and PoCL's compiled work-group functions)
            gen = codegen.fused_kernel(f"partials_{self.gen.reduce[0]}_{self.gen.out_dtype}", [t], t, (),
                                       (self.gen.reduce[0], (1,), False))
            self._pass2 = FusedKernel(gen, self.device)
        return self._pass2


def _group_limit(kernel, device) -> int:
    try:
        wg = kernel.get_work_group_info(cl.kernel_work_group_info.WORK_GROUP_SIZE, device)
    except cl.Error:
        wg = device.max_work_group_size
    return max(1, min(codegen.MAX_GROUP, int(wg)))


def elementwise_group(g: list[int]) -> list[int]:
    """Work-group size for an elementwise NDRange of extents `g` (last axis first): 64 along
    the last axis, or 8 x 8 when that axis is short (after merging, so a short last axis is a
    true inner dim). Two shapes only: each new one costs PoCL a compile at first launch."""
    if len(g) == 1 or g[0] >= 16:
        return [64] + [1] * (len(g) - 1)
    return [8, 8] + [1] * (len(g) - 2)


def reduction_group(m: int, limit: int = codegen.MAX_GROUP) -> tuple[int, int]:
    """Work-group (W, P) of a reduction: W items per output, P outputs per group. Fixed at
    16 x 16 whatever m is: a size per m would cost PoCL a compile per size (~0.3 s each for
    kernels with barriers), and long rows get their parallelism from chunks (nchunk) anyway.
    Smaller only where the device's work-group limit says so."""
    total = 1 << (max(limit, 1).bit_length() - 1)  # a power of 2 <= limit
    W = min(16, total)
    return W, max(total // W, 1)


def compile_fused(operand_types, out_type, body, reduce, device=None, name: str = "fused",
                  shape=None) -> FusedKernel:
    """Generate and build the kernel of one fused node (`shape`: its iteration space)."""
    device = device or select_device()
    return FusedKernel(codegen.fused_kernel(name, operand_types, out_type, body, reduce, shape), device)


def compile_fused_many(nodes, device=None, prefix: str = "fused") -> list[FusedKernel]:
    """Kernels for several fused nodes `(operand_types, out_type, body, reduce[, shape])`, built
    as one program (kernel names `prefix0`, `prefix1`, ...)."""
    device = device or select_device()
    # Nodes whose kernels are the same text (axes and keepdims are launch-time facts, so e.g.
    # every 2-D row sum is one kernel) share one kernel of the program: fewer kernels to build,
    # and PoCL compiles each kernel's work-group function once per local size.
    names: dict[str, str] = {}
    unique: list[codegen.Generated] = []
    gens = []
    for node in nodes:
        text = codegen.fused_kernel("K", *node).source
        if text not in names:
            names[text] = f"{prefix}{len(unique)}"
            unique.append(codegen.fused_kernel(names[text], *node))
        gens.append(codegen.fused_kernel(names[text], *node))
    program = build_many(unique, device)
    return [FusedKernel(g, device, program) for g in gens]


def fused_types(arrays, body, reduce) -> tuple[list[TensorType], TensorType]:
    """(operand types, out type) of a fused node over concrete arrays (out dtype: the body's
    result dtype, or the reduction's accumulator dtype)."""
    types = [TensorType(dtype_of(np.asarray(a).dtype if not isinstance(a, cla.Array) else a.dtype), tuple(a.shape))
             for a in arrays]
    dt = dtype_name(body[-1].dtype) if body else dtype_name(types[0].dtype)
    if reduce is not None:
        dt = codegen.acc_dtype(reduce[0], dt)
    return types, TensorType(dtype_of(dt), ())


def run_fused(*arrays, body, reduce=None, shape=None, device=None):
    """Compile (cached) and run a fused node on `arrays` (`shape`: the concrete iteration
    space, default the operands' broadcast); a device array."""
    device = _device_of(arrays, device)
    types, out_type = fused_types(arrays, body, reduce)
    k = compile_fused(types, out_type, tuple(body), reduce, device, shape=shape)
    return k(*arrays, shape=shape)


# ----------------------------------------------------------------- copies


def copy(x, axes=None, device=None):
    """A contiguous device copy of `x`, or of its transpose by `axes` (numpy's order)."""
    device = _device_of([x], device)
    x = to_device(x, device)
    rank = x.ndim
    axes = tuple(range(rank)) if axes is None else tuple(a % rank for a in axes) if rank else ()
    gen = codegen.copy_kernel(f"copy_{x.dtype.name}_r{rank}", x.dtype, rank)
    k = FusedKernel(gen, device)
    view = _permuted_view(x, axes)
    return k(view)


def transpose(x, axes=None, device=None):
    if axes is None:
        axes = tuple(reversed(range(np.ndim(x) if not isinstance(x, cla.Array) else x.ndim)))
    return copy(x, axes, device)


def _permuted_view(x: "cla.Array", axes) -> "cla.Array":
    if axes == tuple(range(x.ndim)):
        return x
    return x.transpose(axes)


# ----------------------------------------------------------------- argmax / argmin


def argreduce(x, kind: str, axis=None, keepdims: bool = False, device=None):
    """numpy's argmax/argmin (`kind`) over one axis or, with axis None, the flattened array."""
    device = _device_of([x], device)
    x = to_device(x, device)
    nd = x.ndim
    axes = tuple(range(nd)) if axis is None else (axis % nd if nd else 0,)
    if nd == 0:
        axes = ()
    kept = [j for j in range(nd) if j not in axes]
    m = math.prod(x.shape[j] for j in axes)
    if m == 0:
        raise FlowRuntimeError(f"attempt to get {kind} of an empty sequence")
    if axis is None:
        out_shape = (1,) * nd if keepdims else ()
    else:
        out_shape = tuple(1 if j in axes else d for j, d in enumerate(x.shape)) if keepdims else \
            tuple(x.shape[j] for j in kept)
    out = _empty(device, out_shape, np.int64)
    n_out = math.prod(x.shape[j] for j in kept)
    if n_out == 0:
        return out
    nk, nr = max(len(kept), 1), max(len(axes), 1)
    gen = codegen.argreduce_kernel(f"{kind}_{x.dtype.name}_{nk}_{nr}", x.dtype, kind, nk, nr)
    k = Compiled(gen, device)
    off, st = _elem(x)
    kdims, (ks,) = collapse([x.shape[j] for j in kept], [[st[j] for j in kept]], nk)
    rdims, (rs,) = collapse([x.shape[j] for j in axes], [[st[j] for j in axes]], nr)
    W, P = reduction_group(m, _group_limit(k.kernel, device))
    args = [_buffer(x, device), _I64(off), out.base_data] + _scalars(n_out, m, *kdims, *rdims, *ks, *rs)
    _launch(k.kernel, device, (W, _round_up(n_out, P)), (W, P), args)
    return out


def argmax(x, axis=None, keepdims=False, device=None):
    return argreduce(x, "argmax", axis, keepdims, device)


def argmin(x, axis=None, keepdims=False, device=None):
    return argreduce(x, "argmin", axis, keepdims, device)


# ----------------------------------------------------------------- gather / scatter-add


def _index_layout(data_shape, idx_shape, axis, along: bool):
    """The iteration shape (= the gathered result's shape), and for the data array and the index
    array their strides-to-be-taken over it, in terms of the data's own dims: a list mapping
    each iteration dim to a data dim (or None), and the same for the index array's dims."""
    nd = len(data_shape)
    if along:  # np.take_along_axis: idx has data's rank, broadcast against it except on axis
        if len(idx_shape) != nd:
            raise FlowInternalError(f"take_along_axis: index rank {len(idx_shape)} != data rank {nd}")
        shape = []
        for j in range(nd):
            if j == axis:
                shape.append(idx_shape[j])
            else:
                b = broadcast_shapes((data_shape[j],), (idx_shape[j],))
                if b is None:
                    raise FlowInternalError(f"take_along_axis: shapes {data_shape} and {idx_shape} do not fit")
                shape.append(b[0])
        data_map = [None if j == axis else j for j in range(nd)]
        idx_map = list(range(nd))
        return tuple(shape), data_map, idx_map
    ni = len(idx_shape)
    shape = tuple(data_shape[:axis]) + tuple(idx_shape) + tuple(data_shape[axis + 1:])
    data_map = list(range(axis)) + [None] * ni + list(range(axis + 1, nd))
    idx_map = [None] * axis + list(range(ni)) + [None] * (nd - axis - 1)
    return shape, data_map, idx_map


def _strides_over(shape, own_shape, own_strides, mapping) -> list[int]:
    out = []
    for j, m in enumerate(mapping):
        if m is None or (own_shape[m] == 1 and shape[j] != 1):
            out.append(0)
        else:
            out.append(own_strides[m])
    return out


def _check_index_dtype(idx):
    if idx.dtype.kind not in "iu":
        raise FlowInternalError(f"index array must be integer, not {idx.dtype}")


def _err_buffer(device):
    return _zeros(device, (1,), np.int32)


def _raise_if_flagged(err, what: str, idx, axis_len: int, axis: int):
    """The kernel flagged an index outside [-axis_len, axis_len) (and read or wrote nothing for
    it): find the first one on the host, for the same message the numpy implementations give."""
    if int(err.get()[0]):
        host = idx.get()
        pos = first_bad(host, axis_len)
        if pos is None:
            raise FlowInternalError(f"{what}: the kernel flagged a bad index but every index is in range")
        bad = IndexOutOfRange(0, pos, int(host[pos]), axis_len, "index", axis)
        raise FlowRuntimeError(f"{what}: {bad.describe('array')}")


def _gather(x, idx, axis, along, device):
    device = _device_of([x, idx], device)
    x, idx = to_device(x, device), to_device(idx, device)
    _check_index_dtype(idx)
    axis = axis % x.ndim
    shape, data_map, idx_map = _index_layout(x.shape, idx.shape, axis, along)
    out = _empty(device, shape, x.dtype)
    n = math.prod(shape)
    if n == 0:
        return out
    rank = max(len(shape), 1)
    xoff, xst = _elem(x)
    ioff, ist = _elem(idx)
    xs = _strides_over(shape, x.shape, xst, data_map)
    iss = _strides_over(shape, idx.shape, ist, idx_map)
    dims, (xs, iss) = collapse(shape, [xs, iss], rank)
    gen = codegen.gather_kernel(f"gather_{x.dtype.name}_{idx.dtype.name}_r{rank}", x.dtype, idx.dtype, rank)
    k = Compiled(gen, device)
    err = _err_buffer(device)
    args = [_buffer(x, device), _I64(xoff), _buffer(idx, device), _I64(ioff), out.base_data, err.base_data]
    args += _scalars(n, x.shape[axis], xst[axis], *dims, *xs, *iss)
    _launch(k.kernel, device, (_round_up(n, 64),), (64,), args)
    _raise_if_flagged(err, "gather", idx, x.shape[axis], axis)
    return out


def take(x, idx, axis=0, device=None):
    """np.take(x, idx, axis) (x[idx] for axis 0, x[:, idx] for axis 1); negative indices wrap."""
    return _gather(x, idx, axis, False, device)


def take_along_axis(x, idx, axis, device=None):
    """np.take_along_axis(x, idx, axis), with idx broadcast against x off the axis:
    `x[arange(N), y]` is `take_along_axis(x, y[:, None], 1)[:, 0]`."""
    return _gather(x, idx, axis, True, device)


def _scatter(g, idx, axis, shape, along, device):
    device = _device_of([g, idx], device)
    g, idx = to_device(g, device), to_device(idx, device)
    _check_index_dtype(idx)
    shape = tuple(shape)
    axis = axis % len(shape)
    out = _zeros(device, shape, g.dtype)
    it_shape, data_map, idx_map = _index_layout(shape, idx.shape, axis, along)
    if broadcast_shapes(g.shape, it_shape) != it_shape:
        raise FlowInternalError(f"scatter-add: values of shape {g.shape} do not fit the index shape {it_shape}")
    n = math.prod(it_shape)
    if n == 0 or out.size == 0:
        if n and not out.size:
            raise FlowRuntimeError(f"scatter-add: index into an empty axis {axis}")
        return out
    rank = max(len(it_shape), 1)
    goff, gst = _elem(g)
    ioff, ist = _elem(idx)
    ost = [s // out.dtype.itemsize for s in out.strides]
    gs = broadcast_strides(g.shape, gst, it_shape)
    os_ = _strides_over(it_shape, shape, ost, data_map)
    iss = _strides_over(it_shape, idx.shape, ist, idx_map)
    dims, (gs, os_, iss) = collapse(it_shape, [gs, os_, iss], rank)
    dt = g.dtype.name
    atomic = dt not in ("float64", "int64") or has_int64_atomics(device)
    gen = codegen.scatter_add_kernel(f"scatter_add_{dt}_{idx.dtype.name}_r{rank}{'' if atomic else '_serial'}",
                                     g.dtype, idx.dtype, rank, atomic)
    k = Compiled(gen, device)
    err = _err_buffer(device)
    args = [_buffer(g, device), _I64(goff), _buffer(idx, device), _I64(ioff), out.base_data, err.base_data]
    args += _scalars(n, shape[axis], ost[axis], *dims, *gs, *os_, *iss)
    if atomic:
        _launch(k.kernel, device, (_round_up(n, 64),), (64,), args)
    else:
        _launch(k.kernel, device, (1,), (1,), args)
    _raise_if_flagged(err, "scatter-add", idx, shape[axis], axis)
    return out


def index_add(shape, idx, g, axis=0, device=None):
    """zeros(shape) with np.add.at(out, (slice(None),) * axis + (idx,), g): the transpose of
    `take` (repeated indices accumulate)."""
    return _scatter(g, idx, axis, shape, False, device)


def index_add_along_axis(shape, idx, g, axis, device=None):
    """The transpose of `take_along_axis`: out[..., idx[...], ...] += g."""
    return _scatter(g, idx, axis, shape, True, device)


# ----------------------------------------------------------------- matmul


def matmul(a, b, device=None, tiles: codegen.MatmulTiles = codegen.DEFAULT_TILES):
    """numpy's matmul (1-D operands promoted, batch dims broadcast) for float/int arrays."""
    device = _device_of([a, b], device)
    a, b = to_device(a, device), to_device(b, device)
    if a.ndim == 0 or b.ndim == 0:
        raise FlowInternalError("matmul of a scalar")
    if a.dtype != b.dtype or a.dtype.kind not in "fi":
        raise FlowInternalError(f"matmul kernel needs two float or int arrays of one dtype, not {a.dtype}, {b.dtype}")
    a2 = a.reshape((1,) + a.shape) if a.ndim == 1 else a
    b2 = b.reshape(b.shape + (1,)) if b.ndim == 1 else b
    M, K = a2.shape[-2:]
    K2, N = b2.shape[-2:]
    if K != K2:
        raise FlowInternalError(f"matmul: inner dims {K} and {K2} differ")
    batch = broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
    out = _empty(device, tuple(batch) + (M, N), a.dtype)
    final_shape = tuple(batch) + ((M,) if a.ndim > 1 else ()) + ((N,) if b.ndim > 1 else ())
    if out.size == 0:
        return out.reshape(final_shape)
    aoff, ast = _elem(a2)
    boff, bst = _elem(b2)
    sa = broadcast_strides(a2.shape[:-2], ast[:-2], batch)
    sb = broadcast_strides(b2.shape[:-2], bst[:-2], batch)
    # one kernel batch dim: merge the batch dims when possible, loop in Python over the rest
    bdims, (sa, sb) = collapse(batch, [sa, sb], max(len(batch), 1))
    inner, sa_in, sb_in = bdims[-1], sa[-1], sb[-1]
    outer = bdims[:-1]
    gen = codegen.matmul_kernel(f"matmul_{a.dtype.name}_{tiles.TSM}x{tiles.TSN}x{tiles.TSK}_{tiles.WPTM}x{tiles.WPTN}",
                                a.dtype, tiles)
    k = Compiled(gen, device)
    lx, ly = tiles.local
    gsize = (-(-N // tiles.TSN) * lx, -(-M // tiles.TSM) * ly, inner)
    for pos, lead in enumerate(np.ndindex(*outer) if outer else [()]):
        ao = aoff + sum(i * s for i, s in zip(lead, sa[:-1]))
        bo = boff + sum(i * s for i, s in zip(lead, sb[:-1]))
        args = _scalars(M, N, K) + [_buffer(a2, device)] + _scalars(ao, sa_in, ast[-2], ast[-1])
        args += [_buffer(b2, device)] + _scalars(bo, sb_in, bst[-2], bst[-1]) + [out.base_data]
        args += _scalars(pos * inner * M * N)
        _launch(k.kernel, device, gsize, (lx, ly, 1), args)
    return out.reshape(final_shape)
