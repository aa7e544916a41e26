"""OpenCL C for flowml's kernels: fused nodes (elementwise, or ending in a reduction),
argmax/argmin, gather, scatter-add, and a tiled matmul.

Every generator returns a `Generated` (source + what the launcher needs to know); the kernel
argument order is documented on each generator and mirrored by `runtime.py`.

Shapes and strides are kernel arguments, not constants: dims are symbolic until a call binds
them, and one compiled kernel serves every binding. Only ranks are baked in. Strides are in
elements and may be 0 (a broadcast dim) or anything a view has; every operand also gets an
element offset (a `cl.array` view starts inside its buffer). Outputs are contiguous.

Helper functions are prefixed with the kernel name, so several kernels' sources can be
concatenated into one program (one build for a whole function: builds cost ~0.3 s, kernels
in one program add little).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...ir import ops as P
from ...ir.types import is_float
from .. import scalar
from .clc import BUF_CTYPE, CTYPE, CBuilder, dtype_name, literal

# The largest work-group a generated reduction uses (its local scratch has this many slots).
MAX_GROUP = 256


@dataclass(frozen=True)
class Generated:
    name: str
    source: str
    kind: str                                   # elementwise | reduce | argreduce | gather | scatter | matmul
    operand_dtypes: tuple[str, ...] = ()
    out_dtype: str = ""
    rank: int = 0                               # elementwise / gather / scatter: iteration rank
    nkept: int = 0                              # reductions: kept and reduced ranks
    nreduced: int = 0
    reduce: tuple | None = None
    uses_fp64: bool = False
    extra: dict = field(default_factory=dict, compare=False, hash=False)


def _header(uses_fp64: bool, contract: bool = False, int64_atomics: bool = False) -> list[str]:
    lines = []
    if uses_fp64:
        lines.append("#pragma OPENCL EXTENSION cl_khr_fp64 : enable")
    if int64_atomics:
        lines.append("#pragma OPENCL EXTENSION cl_khr_int64_base_atomics : enable")
    # Separate statements are never fused into fma anyway; the pragma also stops contraction
    # inside one expression, so float results match numpy's bit for bit where IEEE allows.
    lines.append(f"#pragma OPENCL FP_CONTRACT {'ON' if contract else 'OFF'}")
    return lines


def _kernel(name: str, params: list[str], lines: list[str], prelude=()) -> str:
    """`prelude` (pragmas, helper functions), then `__kernel void name(params) { lines }`."""
    return "\n".join(list(prelude) + [f"__kernel void {name}(", "    " + ",\n    ".join(params) + ")", "{"]
                     + lines + ["}", ""])


def _load(buf: str, index: str, dt: str) -> str:
    return f"({buf}[{index}] != 0)" if dt == "bool" else f"{buf}[{index}]"


def _store_value(value: str, dt: str) -> str:
    return f"(uchar){value}" if dt == "bool" else value


# ----------------------------------------------------------------- fused bodies


def _normalize_body(body) -> list:
    return list(body or ())


def _emit_body(b: CBuilder, operand_names: list[str], operand_dtypes: list[str], body) -> tuple[str, str]:
    """Append the body's statements to `b`; the result value and its dtype. Each instruction's
    args are first converted to the dtype its formula works in (`scalar.operand_dtype`)."""
    vals = list(operand_names)
    dts = list(operand_dtypes)
    for ins in body:
        dt = dtype_name(ins.dtype)
        if ins.op == "const":
            vals.append(literal(ins.attr("value"), dt))
            dts.append(dt)
            continue
        if P.OPS[ins.op].kernel_identity:
            # broadcast_to / reshape of a one-element value: the element itself (the kernel's
            # iteration already broadcasts)
            vals.append(b.cast(vals[ins.args[0]], dts[ins.args[0]], dt))
            dts.append(dt)
            continue
        attrs = dict(ins.attrs)
        arg_dts = [dts[a] for a in ins.args]
        od = scalar.operand_dtype(ins.op, arg_dts, dt)
        if ins.op == "cast":
            args = [vals[ins.args[0]]]
        elif ins.op == "where":
            c, x, y = ins.args
            args = [b.cast(vals[c], dts[c], "bool"), b.cast(vals[x], dts[x], od), b.cast(vals[y], dts[y], od)]
            attrs["cond_dtype"] = "bool"
        else:
            args = [b.cast(vals[a], dts[a], od) for a in ins.args]
        vals.append(scalar.emit(b, ins.op, od, dt, args, attrs))
        dts.append(dt)
    if not body:
        return vals[0], dts[0]
    return vals[-1], dts[-1]


def _body_dtypes(operand_dtypes, body) -> set[str]:
    return set(operand_dtypes) | {dtype_name(i.dtype) for i in body}


def _operand_params(operand_dtypes) -> list[str]:
    return [f"__global const {BUF_CTYPE[dt]}* restrict a{k}, const long o{k}" for k, dt in enumerate(operand_dtypes)]


def _used_operands(nin: int, body) -> list[int]:
    if not body:
        return [0] if nin else []
    used = sorted({a for ins in body for a in ins.args if a < nin})
    return used


def _unravel(index: str, dims: list[str], strides_of: dict[int, list[str]], ptrs: dict[int, str],
             tmp: str, indent: str) -> list[str]:
    """Statements adding `index`'s (C-order over `dims`) contribution to each operand's
    position `ptrs[k]` through `strides_of[k]`. The first dim takes the quotient left over, so
    a rank-r unravel costs r-1 divisions."""
    lines = []
    r = len(dims)
    if r == 0:
        return lines
    lines.append(f"{indent}long {tmp} = {index};")
    for j in range(r - 1, -1, -1):
        if j > 0:
            lines.append(f"{indent}{{ const long i = {tmp} % {dims[j]}; {tmp} /= {dims[j]};")
        else:
            lines.append(f"{indent}{{ const long i = {tmp};")
        for k, p in ptrs.items():
            lines.append(f"{indent}  {p} += i * {strides_of[k][j]};")
        lines.append(f"{indent}}}")
    return lines


def fused_kernel(name: str, node_operand_types, out_type, body, reduce, shape=None) -> Generated:
    """The kernel of one fused node (see flowml/ir/fused.py for `body`, `reduce` and `shape`,
    the iteration space: only its rank matters here; without it, the operands' broadcast)."""
    operand_dtypes = [dtype_name(t.dtype) for t in node_operand_types]
    body = _normalize_body(body)
    if shape is not None:
        rank = len(shape)
    else:
        rank = max((len(t.shape) for t in node_operand_types), default=0)
    out_dt = dtype_name(out_type.dtype)
    fp64 = "float64" in _body_dtypes(operand_dtypes, body) | {out_dt}
    if reduce is None:
        return _elementwise(name, operand_dtypes, out_dt, body, rank, fp64)
    red_name, axis, keepdims = reduce
    axes = sorted({a % rank for a in axis}) if rank else []
    return _reduction(name, operand_dtypes, out_dt, body, rank, axes, red_name, keepdims, fp64)


def _elementwise(name, operand_dtypes, out_dt, body, rank, fp64) -> Generated:
    """Kernel args: (a_k, o_k) per operand, out, d_0..d_{R-1}, [nlead if R >= 3],
    s_k_j (operand k's stride along dim j) for every operand and dim.

    NDRange: dim 0 runs over the last axis, dim 1 over the one before, dim 2 over all the
    leading axes flattened; so ranks <= 3 (the common case, after runtime.py merges dims)
    need no integer division. Global sizes are rounded up to the work-group size: guarded."""
    nin = len(operand_dtypes)
    dims = [f"d{j}" for j in range(rank)]
    params = _operand_params(operand_dtypes) + [f"__global {BUF_CTYPE[out_dt]}* restrict out"]
    params += [f"const long {d}" for d in dims]
    if rank >= 3:
        params.append("const long nlead")
    params += [f"const long s{k}_{j}" for k in range(nin) for j in range(rank)]
    used = _used_operands(nin, body)
    L = []
    ind = "    "
    if rank == 0:
        L.append(f"{ind}if (get_global_id(0) > 0) return;")
        out_index = "0"
        for k in used:
            L.append(f"{ind}const long p{k} = o{k};")
    else:
        L.append(f"{ind}const long i{rank - 1} = get_global_id(0);")
        guard = [f"i{rank - 1} >= d{rank - 1}"]
        if rank >= 2:
            L.append(f"{ind}const long i{rank - 2} = get_global_id(1);")
            guard.append(f"i{rank - 2} >= d{rank - 2}")
        if rank >= 3:
            L.append(f"{ind}const long lead = get_global_id(2);")
            guard.append("lead >= nlead")
        L.append(f"{ind}if ({' || '.join(guard)}) return;")
        for k in used:
            L.append(f"{ind}long p{k} = o{k};")
        if rank >= 3:
            L += _unravel("lead", dims[:rank - 2], {k: [f"s{k}_{j}" for j in range(rank)] for k in used},
                          {k: f"p{k}" for k in used}, "rest", ind)
        for j in range(max(rank - 2, 0), rank):
            for k in used:
                L.append(f"{ind}p{k} += i{j} * s{k}_{j};")
        if rank == 1:
            out_index = "i0"
        elif rank == 2:
            out_index = "i0 * d1 + i1"
        else:
            out_index = f"(lead * d{rank - 2} + i{rank - 2}) * d{rank - 1} + i{rank - 1}"
    b = CBuilder(indent=ind)
    names = []
    for k, dt in enumerate(operand_dtypes):
        names.append(f"x{k}")
        if k in used:
            L.append(f"{ind}const {CTYPE[dt]} x{k} = {_load(f'a{k}', f'p{k}', dt)};")
    value, vdt = _emit_body(b, names, operand_dtypes, body)
    value = b.cast(value, vdt, out_dt)
    L += b.lines
    L.append(f"{ind}out[{out_index}] = {_store_value(value, out_dt)};")
    src = _kernel(name, params, L, _header(fp64))
    return Generated(name, src, "elementwise", tuple(operand_dtypes), out_dt, rank=rank, uses_fp64=fp64)


# ----------------------------------------------------------------- reductions

_COMBINE_OP = {"sum": "add", "prod": "mul", "max": "maximum", "min": "minimum"}


def acc_dtype(red_name: str, dt: str) -> str:
    """The dtype a reduction accumulates (and returns) in: numpy sums and multiplies bools
    and ints in int64."""
    if red_name in ("sum", "prod") and dt in ("bool", "int32", "int64"):
        return "int64"
    return dt


def identity(red_name: str, dt: str) -> str:
    if red_name == "sum":
        return literal(0, dt)
    if red_name == "prod":
        return literal(1, dt)
    low = red_name == "max"  # max starts from the lowest value
    if is_float(dt):
        return literal(float("-inf") if low else float("inf"), dt)
    if dt == "bool":
        return literal(not low, dt)
    bits = 32 if dt == "int32" else 64
    return literal(-(2 ** (bits - 1)) if low else 2 ** (bits - 1) - 1, dt)


def _combine_function(fname: str, red_name: str, dt: str) -> list[str]:
    """`dt fname(dt a, dt b)`: the reduction's binary op, from the same scalar formulas as the
    elementwise ops (so max/min propagate NaN exactly as `maximum`/`minimum` do)."""
    b = CBuilder(prefix="t", indent="    ")
    r = scalar.emit(b, _COMBINE_OP[red_name], dt, dt, ["a", "b"], {})
    return [f"{CTYPE[dt]} {fname}({CTYPE[dt]} a, {CTYPE[dt]} b)", "{"] + b.lines + [f"    return {r};", "}"]


def _reduction(name, operand_dtypes, out_dt, body, rank, axes, red_name, keepdims, fp64) -> Generated:
    """Kernel args: (a_k, o_k) per operand, out, n_out, m, chunk, nchunk, kept dims k_0..,
    reduced dims r_0.., then per operand its kept strides sk_k_j and reduced strides sr_k_j.

    The iteration space is viewed as (kept dims..., reduced dims...) through the strides, so
    any axis tuple is one case. Two shapes of kernel, by where the reduced axes are:

    * rows (some reduced axis is innermost, e.g. sum over the last axis): NDRange
      (W * nchunk, P * ceil(n_out / P)), work-groups (W, P). Each row of W work-items reduces
      one output over one chunk of the reduced range (each item a strided sequence, then a
      tree in local memory). Consecutive items read consecutive elements.
    * columns (all reduced axes are outer, e.g. a bias gradient sum(axis=0)): NDRange
      (ceil(n_out / 64) * 64, nchunk), work-groups (64, 1); each item reduces its output
      over its chunk alone, so consecutive items read consecutive elements here too (with
      the rows kernel they would read a column each: ~35x slower on PoCL).

    Both write out[o * nchunk + chunk]; with nchunk > 1 a second kernel (runtime.py) reduces
    the partials. Chunks are sized so each item adds at most ~64 values, which keeps float32
    sums accurate (pairwise-like) and spreads big reductions over work-groups."""
    nin = len(operand_dtypes)
    kept = [j for j in range(rank) if j not in axes]
    nk, nr = len(kept), len(axes)
    columns = bool(kept) and bool(axes) and max(axes) < min(kept)
    acc = out_dt
    params = _operand_params(operand_dtypes) + [f"__global {BUF_CTYPE[acc]}* restrict out"]
    params += ["const long n_out", "const long m", "const long chunk", "const long nchunk"]
    params += [f"const long k{j}" for j in range(nk)] + [f"const long r{j}" for j in range(nr)]
    for k in range(nin):
        params += [f"const long sk{k}_{j}" for j in range(nk)] + [f"const long sr{k}_{j}" for j in range(nr)]
    used = _used_operands(nin, body)
    combine = f"{name}_combine"
    ind = "        "
    if columns:
        L = ["    const long o = get_global_id(0);",
             "    const long g = get_global_id(1);",
             "    if (o >= n_out) return;",
             f"    {CTYPE[acc]} acc = {identity(red_name, acc)};",
             "    {"]
        first, step = "g * chunk", "1"
    else:
        L = [f"    __local {CTYPE[acc]} scratch[{MAX_GROUP}];",
             "    const int lx = get_local_id(0);",
             "    const int W = get_local_size(0);",
             "    const int me = get_local_id(1) * W + lx;",
             "    const long g = get_group_id(0);",
             "    const long o = get_global_id(1);",
             f"    {CTYPE[acc]} acc = {identity(red_name, acc)};",
             "    if (o < n_out) {"]
        first, step = "g * chunk + lx", "W"
    for k in used:
        L.append(f"{ind}long q{k} = o{k};")
    L += _unravel("o", [f"k{j}" for j in range(nk)], {k: [f"sk{k}_{j}" for j in range(nk)] for k in used},
                  {k: f"q{k}" for k in used}, "ko", ind)
    L.append(f"{ind}const long r_end = min(m, (g + 1) * chunk);")
    L.append(f"{ind}for (long r = {first}; r < r_end; r += {step}) {{")
    inner = ind + "    "
    for k in used:
        L.append(f"{inner}long p{k} = q{k};")
    L += _unravel("r", [f"r{j}" for j in range(nr)], {k: [f"sr{k}_{j}" for j in range(nr)] for k in used},
                  {k: f"p{k}" for k in used}, "ro", inner)
    names = []
    for k, dt in enumerate(operand_dtypes):
        names.append(f"x{k}")
        if k in used:
            L.append(f"{inner}const {CTYPE[dt]} x{k} = {_load(f'a{k}', f'p{k}', dt)};")
    b = CBuilder(indent=inner)
    value, vdt = _emit_body(b, names, operand_dtypes, body)
    value = b.cast(value, vdt, acc)
    L += b.lines
    L.append(f"{inner}acc = {combine}(acc, {value});")
    L += [f"{ind}}}", "    }"]
    if columns:
        L.append(f"    out[o * nchunk + g] = {_store_value('acc', acc)};")
    else:
        L += ["    scratch[me] = acc;",
              "    for (int s = W >> 1; s > 0; s >>= 1) {",
              "        barrier(CLK_LOCAL_MEM_FENCE);",
              f"        if (lx < s) scratch[me] = {combine}(scratch[me], scratch[me + s]);",
              "    }",
              # the last step (s == 1) was done by lx == 0 itself: no barrier needed to read it
              f"    if (lx == 0 && o < n_out) out[o * nchunk + g] = {_store_value('scratch[me]', acc)};"]
    src = _kernel(name, params, L, _header(fp64) + _combine_function(combine, red_name, acc))
    return Generated(name, src, "reduce", tuple(operand_dtypes), acc, rank=rank, nkept=nk, nreduced=nr,
                     reduce=(red_name, tuple(axes), keepdims), uses_fp64=fp64, extra={"columns": columns})


# ----------------------------------------------------------------- argmax / argmin


def argreduce_kernel(name: str, dtype, kind: str, nkept: int, nreduced: int) -> Generated:
    """argmax/argmin (`kind`) of an array of `dtype` viewed as (kept..., reduced...) dims, the
    index being the C-order position within the reduced dims (one axis: its index; all axes:
    the flat index). Ties go to the first index; a NaN wins, the first NaN (numpy's rule).

    Kernel args: x, x_off, out (long), n_out, m, kept dims k_j, reduced dims r_j, kept strides
    sk_j, reduced strides sr_j. NDRange and work-groups as in `_reduction` (one chunk)."""
    dt = dtype_name(dtype)
    T = CTYPE[dt]
    better = f"{name}_better"
    cmp = ">" if kind == "argmax" else "<"
    helper = [f"int {better}({T} va, long ia, {T} vb, long ib)",
              "{",
              "    /* is (vb, ib) better than (va, ia)? an index < 0 is 'nothing yet' */",
              "    if (ib < 0) return 0;",
              "    if (ia < 0) return 1;"]
    if is_float(dt):
        helper += ["    const int na = isnan(va), nb = isnan(vb);",
                   "    if (na || nb) return nb && (!na || ib < ia);"]
    helper += ["    if (vb == va) return ib < ia;",
               f"    return vb {cmp} va;",
               "}"]
    params = [f"__global const {BUF_CTYPE[dt]}* restrict x, const long x_off", "__global long* restrict out",
              "const long n_out", "const long m"]
    params += [f"const long k{j}" for j in range(nkept)] + [f"const long r{j}" for j in range(nreduced)]
    params += [f"const long sk{j}" for j in range(nkept)] + [f"const long sr{j}" for j in range(nreduced)]
    ind = "        "
    L = [f"    __local {T} sv[{MAX_GROUP}];",
         f"    __local long si[{MAX_GROUP}];",
         "    const int lx = get_local_id(0);",
         "    const int W = get_local_size(0);",
         "    const int me = get_local_id(1) * W + lx;",
         "    const long o = get_global_id(1);",
         f"    {T} bv = {literal(0, dt)};",
         "    long bi = -1;",
         "    if (o < n_out) {",
         f"{ind}long q = x_off;"]
    L += _unravel("o", [f"k{j}" for j in range(nkept)], {0: [f"sk{j}" for j in range(nkept)]}, {0: "q"}, "ko", ind)
    L.append(f"{ind}for (long r = lx; r < m; r += W) {{")
    inner = ind + "    "
    L.append(f"{inner}long p = q;")
    L += _unravel("r", [f"r{j}" for j in range(nreduced)], {0: [f"sr{j}" for j in range(nreduced)]}, {0: "p"},
                  "ro", inner)
    L.append(f"{inner}const {T} v = {_load('x', 'p', dt)};")
    L.append(f"{inner}if ({better}(bv, bi, v, r)) {{ bv = v; bi = r; }}")
    L += [f"{ind}}}", "    }",
          "    sv[me] = bv; si[me] = bi;",
          "    for (int s = W >> 1; s > 0; s >>= 1) {",
          "        barrier(CLK_LOCAL_MEM_FENCE);",
          f"        if (lx < s && {better}(sv[me], si[me], sv[me + s], si[me + s])) {{",
          "            sv[me] = sv[me + s]; si[me] = si[me + s];",
          "        }",
          "    }",
          "    if (lx == 0 && o < n_out) out[o] = si[me];"]
    fp64 = dt == "float64"
    src = _kernel(name, params, L, _header(fp64) + helper)
    return Generated(name, src, "argreduce", (dt,), "int64", nkept=nkept, nreduced=nreduced,
                     reduce=(kind,), uses_fp64=fp64)


# ----------------------------------------------------------------- gather / scatter-add


def gather_kernel(name: str, dtype, index_dtype, rank: int) -> Generated:
    """out[o] = x[x_pos(o) + idx[idx_pos(o)] * x_axis_stride] over a contiguous output of
    `rank` dims; x_pos / idx_pos are linear in the output coordinates (strides over the
    output's dims). np.take and np.take_along_axis (hence `x[arange(N), y]`) are both this
    kernel with different strides (see runtime.py). Negative indices wrap; an out-of-range
    one sets err[0] = 1 (the launcher raises) and writes 0.

    Kernel args: x, x_off, idx, idx_off, out, err, n, axis_len, x_axis_stride, dims d_j,
    x strides xs_j, idx strides is_j."""
    dt, it = dtype_name(dtype), dtype_name(index_dtype)
    params = [f"__global const {BUF_CTYPE[dt]}* restrict x, const long x_off",
              f"__global const {BUF_CTYPE[it]}* restrict idx, const long idx_off",
              f"__global {BUF_CTYPE[dt]}* restrict out", "__global int* restrict err",
              "const long n", "const long axis_len", "const long x_axis_stride"]
    params += [f"const long d{j}" for j in range(rank)]
    params += [f"const long xs{j}" for j in range(rank)] + [f"const long is{j}" for j in range(rank)]
    L = ["    const long o = get_global_id(0);",
         "    if (o >= n) return;",
         "    long px = x_off, pi = idx_off;"]
    L += _unravel("o", [f"d{j}" for j in range(rank)], {0: [f"xs{j}" for j in range(rank)],
                                                        1: [f"is{j}" for j in range(rank)]},
                  {0: "px", 1: "pi"}, "rest", "    ")
    L += ["    long j = (long)idx[pi];",
          "    if (j < 0) j += axis_len;",
          "    if (j < 0 || j >= axis_len) { err[0] = 1; out[o] = 0; return; }",
          "    out[o] = x[px + j * x_axis_stride];"]
    fp64 = dt == "float64"
    src = _kernel(name, params, L, _header(fp64))
    return Generated(name, src, "gather", (dt, it), dt, rank=rank, uses_fp64=fp64)


def _atomic_add_function(fname: str, dt: str, atomic: bool) -> list[str]:
    T = CTYPE[dt] if dt != "bool" else "uchar"
    head = [f"void {fname}(volatile __global {BUF_CTYPE[dt]}* p, {T} v)", "{"]
    if dt == "bool":  # numpy's add on bools is `or`: storing 1 is idempotent, so race-free
        return head + ["    if (v) *p = 1;", "}"]
    if not atomic:
        return head + ["    *p += v;", "}"]
    if dt == "int32":
        return head + ["    atomic_add((volatile __global int*)p, v);", "}"]
    if dt == "int64":
        return head + ["    atom_add((volatile __global long*)p, v);", "}"]
    # floats: compare-and-swap on the bits until no other item wrote in between
    U, cas, as_u, as_f = (("uint", "atomic_cmpxchg", "as_uint", "as_float") if dt == "float32"
                          else ("ulong", "atom_cmpxchg", "as_ulong", "as_double"))
    return head + [f"    volatile __global {U}* q = (volatile __global {U}*)p;",
                   f"    {U} expected = *q;",
                   "    for (;;) {",
                   f"        const {U} desired = {as_u}({as_f}(expected) + v);",
                   f"        const {U} seen = {cas}(q, expected, desired);",
                   "        if (seen == expected) break;",
                   "        expected = seen;",
                   "    }",
                   "}"]


def scatter_add_kernel(name: str, dtype, index_dtype, rank: int, atomic: bool = True) -> Generated:
    """out[out_pos(o) + idx[idx_pos(o)] * out_axis_stride] += g[g_pos(o)] for every element o of
    g (`rank` dims): the transpose of `gather_kernel` (np.add.at: repeated indices accumulate).
    `out` is zero-filled by the launcher. With `atomic`, one work-item per element adds
    atomically (floats by a compare-and-swap loop; float64/int64 need
    cl_khr_int64_base_atomics); without, the kernel is launched as one work-item that loops
    (the serial fallback for devices lacking 64-bit atomics).

    Kernel args: g, g_off, idx, idx_off, out, err, n, axis_len, out_axis_stride, dims d_j,
    g strides gs_j, out strides os_j, idx strides is_j."""
    dt, it = dtype_name(dtype), dtype_name(index_dtype)
    add = f"{name}_add"
    params = [f"__global const {BUF_CTYPE[dt]}* restrict g, const long g_off",
              f"__global const {BUF_CTYPE[it]}* restrict idx, const long idx_off",
              f"__global {BUF_CTYPE[dt]}* out", "__global int* restrict err",
              "const long n", "const long axis_len", "const long out_axis_stride"]
    params += [f"const long d{j}" for j in range(rank)]
    params += [f"const long {s}{j}" for s in ("gs", "os", "is") for j in range(rank)]
    L = ["    for (long o = get_global_id(0); o < n; o += get_global_size(0)) {",
         "        long pg = g_off, po = 0, pi = idx_off;"]
    L += _unravel("o", [f"d{j}" for j in range(rank)],
                  {0: [f"gs{j}" for j in range(rank)], 1: [f"os{j}" for j in range(rank)],
                   2: [f"is{j}" for j in range(rank)]}, {0: "pg", 1: "po", 2: "pi"}, "rest", "        ")
    L += ["        long j = (long)idx[pi];",
          "        if (j < 0) j += axis_len;",
          "        if (j < 0 || j >= axis_len) { err[0] = 1; continue; }",
          f"        {add}(out + po + j * out_axis_stride, g[pg]);",
          "    }"]
    fp64 = dt == "float64"
    int64_atomics = atomic and dt in ("float64", "int64")
    src = _kernel(name, params, L, _header(fp64, int64_atomics=int64_atomics) + _atomic_add_function(add, dt, atomic))
    return Generated(name, src, "scatter", (dt, it), dt, rank=rank, uses_fp64=fp64,
                     extra={"atomic": atomic, "int64_atomics": int64_atomics})


def copy_kernel(name: str, dtype, rank: int) -> Generated:
    """out = x laid out contiguously over x's (possibly permuted / strided) view: transpose
    and copy are the identity fused kernel with the view's strides."""
    from ...ir.types import TensorType, dtype_of
    t = TensorType(dtype_of(dtype), (1,) * rank)
    return fused_kernel(name, [t], t, (), None)


# ----------------------------------------------------------------- matmul


@dataclass(frozen=True)
class MatmulTiles:
    """C tile TSM x TSN per work-group, stepping TSK along K; each work-item computes
    WPTM x WPTN outputs (strided by the group's extent, so loads of the local tiles don't
    collide and stores are coalesced). Work-group: (TSN / WPTN, TSM / WPTM)."""
    TSM: int = 64
    TSN: int = 64
    TSK: int = 16
    WPTM: int = 8  # 8 x 8 outputs per item: ~2-3x the GFLOP/s of 4 x 4 on PoCL (see report)
    WPTN: int = 8

    @property
    def local(self) -> tuple[int, int]:
        return self.TSN // self.WPTN, self.TSM // self.WPTM


DEFAULT_TILES = MatmulTiles()


def matmul_kernel(name: str, dtype, tiles: MatmulTiles = DEFAULT_TILES) -> Generated:
    """Batched C[b] = A[b] @ B[b] with local-memory tiles; any M, N, K (edge tiles load zeros
    and skip stores). A and B are read through strides (a transposed or broadcast operand
    needs no copy); C is contiguous (batch, M, N).

    Kernel args: M, N, K, A, a_off, a_sb, a_sm, a_sk, B, b_off, b_sb, b_sk, b_sn, C, c_off.
    NDRange (ceil(N/TSN) * lx, ceil(M/TSM) * ly, batch) with work-groups (lx, ly) = tiles.local.
    FP_CONTRACT is on here: a*b+c may become one fma, as in BLAS."""
    dt = dtype_name(dtype)
    T = CTYPE[dt]
    t = tiles
    rx, ry = t.local
    nt = rx * ry
    assert t.TSM % t.WPTM == 0 and t.TSN % t.WPTN == 0
    assert (t.TSM * t.TSK) % nt == 0 and (t.TSK * t.TSN) % nt == 0, "tiles must split evenly over the group"
    zero = literal(0, dt)
    src = f"""
__kernel __attribute__((reqd_work_group_size({rx}, {ry}, 1)))
void {name}(const long M, const long N, const long K,
    __global const {T}* restrict A, const long a_off, const long a_sb, const long a_sm, const long a_sk,
    __global const {T}* restrict B, const long b_off, const long b_sb, const long b_sk, const long b_sn,
    __global {T}* restrict C, const long c_off)
{{
    __local {T} As[{t.TSK}][{t.TSM}];
    __local {T} Bs[{t.TSK}][{t.TSN}];
    const int tx = get_local_id(0), ty = get_local_id(1);
    const int tid = ty * {rx} + tx;
    const long n0 = get_group_id(0) * {t.TSN}, m0 = get_group_id(1) * {t.TSM};
    const long bat = get_global_id(2);
    A += a_off + bat * a_sb;
    B += b_off + bat * b_sb;
    C += c_off + bat * M * N;
    {T} acc[{t.WPTM}][{t.WPTN}];
    #pragma unroll
    for (int wm = 0; wm < {t.WPTM}; ++wm)
        #pragma unroll
        for (int wn = 0; wn < {t.WPTN}; ++wn)
            acc[wm][wn] = {zero};
    for (long k0 = 0; k0 < K; k0 += {t.TSK}) {{
        /* A tile: consecutive items read consecutive k (row-major A is contiguous in k) */
        for (int l = tid; l < {t.TSM * t.TSK}; l += {nt}) {{
            const int kk = l % {t.TSK}, mm = l / {t.TSK};
            const long gm = m0 + mm, gk = k0 + kk;
            As[kk][mm] = (gm < M && gk < K) ? A[gm * a_sm + gk * a_sk] : {zero};
        }}
        /* B tile: consecutive items read consecutive n */
        for (int l = tid; l < {t.TSK * t.TSN}; l += {nt}) {{
            const int nn = l % {t.TSN}, kk = l / {t.TSN};
            const long gn = n0 + nn, gk = k0 + kk;
            Bs[kk][nn] = (gn < N && gk < K) ? B[gk * b_sk + gn * b_sn] : {zero};
        }}
        barrier(CLK_LOCAL_MEM_FENCE);
        #pragma unroll
        for (int kk = 0; kk < {t.TSK}; ++kk) {{
            {T} breg[{t.WPTN}];
            #pragma unroll
            for (int wn = 0; wn < {t.WPTN}; ++wn)
                breg[wn] = Bs[kk][tx + wn * {rx}];
            #pragma unroll
            for (int wm = 0; wm < {t.WPTM}; ++wm) {{
                const {T} a = As[kk][ty + wm * {ry}];
                #pragma unroll
                for (int wn = 0; wn < {t.WPTN}; ++wn)
                    acc[wm][wn] += a * breg[wn];
            }}
        }}
        barrier(CLK_LOCAL_MEM_FENCE);
    }}
    #pragma unroll
    for (int wm = 0; wm < {t.WPTM}; ++wm) {{
        const long gm = m0 + ty + wm * {ry};
        #pragma unroll
        for (int wn = 0; wn < {t.WPTN}; ++wn) {{
            const long gn = n0 + tx + wn * {rx};
            if (gm < M && gn < N) C[gm * N + gn] = acc[wm][wn];
        }}
    }}
}}
"""
    fp64 = dt == "float64"
    full = "\n".join(_header(fp64, contract=True)) + src
    return Generated(name, full, "matmul", (dt, dt), dt, uses_fp64=fp64, extra={"tiles": t})
