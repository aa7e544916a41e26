"""Convolutions and max-pooling (flowml/ir/ops/conv.py) as native code: im2col + BLAS gemm for
conv2d and its two backprops, direct loops for pooling.

The three convolution ops share one column matrix of the whole batch, `cols` [C·KH·KW, N·OH·OW]:
row (c, a, b), column (n, i, j) holds x_pad[n, c, i·sh + a, j·sw + b] (0 in the padding). With
g' = g [N, F, OH·OW] regrouped as [F, N·OH·OW] (a copy of whole rows; none when N is 1):

- conv2d:                 Y = w [F, C·KH·KW] @ cols, regrouped as [N, F, OH, OW];
- conv2d_backprop_filter: gw = g' @ cols^T (one gemm over the whole batch: no per-thread sums);
- conv2d_backprop_input:  cols_g = w^T @ g', then col2im: each image plane of gx adds up its
  columns in the reference's order (kernel offset (a, b) outermost), one plane per iteration.

One gemm per op over the whole batch (BLAS threads it); the copies around it are kernels split
over threads. The scratch matrices are buffers of the call frame (`statics`), sized by the
batch: allocated once per frame, as the memory plan's buffers are.

max_pool2d is one window per element (the first maximum kept, NaN propagating as
np.maximum); its backprop and tangent recompute each window's maxima (x == out) and their count,
and add g · (mask · (1 / count)) exactly as the reference does, in its order: the same bits.
"""

from __future__ import annotations

from contextlib import ExitStack

from ..irfunc import IR_TYPE, MEM_TYPE
from ..kernels import LLVMScalarBuilder, float_literal
from . import HostStep, lowers
from .linalg import _gemm_call

FLOATS = ("float32", "float64")


def _dtype(w, n) -> str:
    """The node's dtype, when BLAS and the kernels take it: every operand a float of that dtype."""
    dt = w.type(n).dtype.name
    if dt not in FLOATS or any(w.type(o).dtype.name != dt for o in w.operands(n)):
        raise HostStep(f"operands of dtypes {[w.type(o).dtype.name for o in w.operands(n)]} (native: all "
                       "float32 or all float64)")
    return dt


def _smin_smax(w):
    w.helper("llvm.smin.i64", "declare i64 @llvm.smin.i64(i64, i64)")
    w.helper("llvm.smax.i64", "declare i64 @llvm.smax.i64(i64, i64)")


def _valid(k, off: str, size: str, stride: int, extent: str):
    """[lo, hi): the positions p in [0, extent) with 0 <= p·stride + off < size."""
    def ceil_div_pos(t):  # ceil(max(t, 0) / stride)
        t = k.emit(f"call i64 @llvm.smax.i64(i64 {t}, i64 0)", "v")
        return k.emit(f"udiv i64 {k.add(t, str(stride - 1))}, {stride}", "v") if stride != 1 else t
    lo = ceil_div_pos(k.emit(f"sub i64 0, {off}", "v"))
    hi = ceil_div_pos(k.emit(f"sub i64 {size}, {off}", "v"))
    hi = k.emit(f"call i64 @llvm.smin.i64(i64 {hi}, i64 {extent})", "v")
    lo = k.emit(f"call i64 @llvm.smin.i64(i64 {lo}, i64 {hi})", "v")
    return lo, hi


class _Geometry:
    """A convolution's sizes: images [N, C, H, W], filters [F, C, KH, KW], output [N, F, OH, OW]."""

    def __init__(self, x_shape, w_shape, out_hw, stride, padding):
        self.N, self.C, self.H, self.W = x_shape
        self.F, _, self.KH, self.KW = w_shape
        self.OH, self.OW = out_hw
        self.sh, self.sw = stride
        (self.pt, _), (self.pl, _) = padding

    @property
    def rows(self):  # of cols
        return (self.C, self.KH, self.KW)

    @property
    def columns(self):
        return (self.N, self.OH, self.OW)


def _im2col(w, n, x: int, geo: _Geometry, cols_key, dt: str) -> None:
    """cols[(c, a, b), (img, i, j)] = x_pad[img, c, i·sh + a, j·sw + b]: one row per iteration."""
    k = w.kernel(f"im2col{n}")
    _smin_smax(w)
    t = MEM_TYPE[dt]
    zero = float_literal(0.0, dt)
    px, pc = k.ptr(x), k.load_slot(cols_key)
    N, C, H, W = (k.dim(d) for d in (geo.N, geo.C, geo.H, geo.W))
    OH, OW = k.dim(geo.OH), k.dim(geo.OW)
    hw, ohw = k.mul(H, W), k.mul(OH, OW)
    ncols = k.mul(N, ohw)
    kk = geo.KH * geo.KW
    with k.loop("%start", "%end", "r") as r:
        c = k.emit(f"udiv i64 {r}, {kk}", "c")
        ab = k.emit(f"urem i64 {r}, {kk}", "ab")
        a = k.emit(f"udiv i64 {ab}, {geo.KW}", "a")
        b = k.emit(f"urem i64 {ab}, {geo.KW}", "b")
        yoff = k.emit(f"sub i64 {a}, {geo.pt}", "yo")  # y = i·sh + yoff
        xoff = k.emit(f"sub i64 {b}, {geo.pl}", "xo")
        i0, i1 = _valid(k, yoff, H, geo.sh, OH)
        j0, j1 = _valid(k, xoff, W, geo.sw, OW)
        row = k.mul(r, ncols)
        with k.loop("0", N, "img") as img:
            xbase = k.mul(k.add(k.mul(img, C), c), hw)
            obase = k.add(row, k.mul(img, ohw))
            with k.loop("0", OH, "oi") as i:
                inside = k.emit(f"and i1 {k.emit(f'icmp sge i64 {i}, {i0}', 'c')}, "
                                f"{k.emit(f'icmp slt i64 {i}, {i1}', 'c')}", "c")
                lo = k.emit(f"select i1 {inside}, i64 {j0}, i64 {OW}", "lo")  # a row in the padding: all 0
                hi = k.emit(f"select i1 {inside}, i64 {j1}, i64 {OW}", "hi")
                orow = k.add(obase, k.mul(i, OW))
                y = k.add(k.mul(i, str(geo.sh)), yoff)
                xrow = k.add(k.add(xbase, k.mul(y, W)), xoff)
                with k.loop("0", lo, "z") as j:
                    k.store(t, zero, pc, k.add(orow, j))
                with k.loop(lo, hi, "cp") as j:
                    k.store(t, k.load(t, px, k.add(xrow, k.mul(j, str(geo.sw)))), pc, k.add(orow, j))
                with k.loop(hi, OW, "z") as j:
                    k.store(t, zero, pc, k.add(orow, j))
    k.line("ret void")
    fn = w.fn
    w.launch(k, fn.size(geo.rows), fn.size(geo.rows + geo.columns))


def _regroup(w, n, src, dst, A, B, P, dt: str) -> None:
    """dst [B, A, P] = src [A, B, P] (moves whole runs of P elements), one run per iteration;
    `src`, `dst`: functions of a kernel giving the addresses."""
    k = w.kernel(f"regroup{n}")
    t = MEM_TYPE[dt]
    ps, pd = src(k), dst(k)
    Ak, Bk, Pk = k.dim(A), k.dim(B), k.size(P)
    with k.loop("%start", "%end", "r") as r:  # r = a·B + b
        a = k.emit(f"udiv i64 {r}, {Bk}", "a")
        b = k.emit(f"urem i64 {r}, {Bk}", "b")
        s = k.mul(r, Pk)
        d = k.mul(k.add(k.mul(b, Ak), a), Pk)
        with k.loop("0", Pk, "p") as p:
            k.store(t, k.load(t, ps, k.add(s, p)), pd, k.add(d, p))
    k.line("ret void")
    fn = w.fn
    w.launch(k, fn.mul(fn.dim(A), fn.dim(B)), fn.size((A, B) + tuple(P)))


def _grouped_g(w, n, g: int, geo: _Geometry, dt: str) -> tuple[str, str]:
    """g [N, F, OH·OW] as [F, N·OH·OW]: (how kernels and the entry point address it)."""
    if geo.N == 1:  # [F, OH·OW] already
        return "node", g
    key = w.frame_buffer(dt, (geo.F,) + geo.columns)
    _regroup(w, n, lambda k: k.ptr(g), lambda k: k.load_slot(key), geo.N, geo.F, (geo.OH, geo.OW), dt)
    return "slot", key


def _address(fn, where) -> str:
    kind, what = where
    return fn.ptr(what) if kind == "node" else fn.load_slot(what)


def _conv_geometry(x_shape, w_shape, out_hw, attrs) -> _Geometry:
    return _Geometry(x_shape, w_shape, out_hw, attrs["stride"], attrs["padding"])


@lowers("conv2d")
def lower_conv2d(w, n):
    dt = _dtype(w, n)
    x, f = w.operands(n)
    geo = _conv_geometry(w.type(x).shape, w.type(f).shape, w.type(n).shape[2:], w.attrs(n))
    cols = w.frame_buffer(dt, geo.rows + geo.columns)
    _im2col(w, n, x, geo, cols, dt)
    fn = w.fn
    F, CKK, NP = fn.dim(geo.F), fn.size(geo.rows), fn.size(geo.columns)
    gemm = _gemm_call(w, dt, False, False, F, NP, CKK)
    if geo.N == 1:  # Y [F, OH·OW] is the output
        gemm(fn.ptr(f), fn.load_slot(cols), fn.ptr(n))
        w.note(f"im2col + BLAS {_blas(dt)}gemm")
        return
    y = w.frame_buffer(dt, (geo.F,) + geo.columns)
    gemm(fn.ptr(f), fn.load_slot(cols), fn.load_slot(y))
    _regroup(w, n, lambda k: k.load_slot(y), lambda k: k.ptr(n), geo.F, geo.N, (geo.OH, geo.OW), dt)
    w.note(f"im2col + BLAS {_blas(dt)}gemm over the batch + regroup")


def _blas(dt: str) -> str:
    return "s" if dt == "float32" else "d"


@lowers("conv2d_backprop_filter")
def lower_conv2d_backprop_filter(w, n):
    dt = _dtype(w, n)
    x, g = w.operands(n)
    geo = _conv_geometry(w.type(x).shape, w.type(n).shape, w.type(g).shape[2:], w.attrs(n))
    cols = w.frame_buffer(dt, geo.rows + geo.columns)
    _im2col(w, n, x, geo, cols, dt)
    gg = _grouped_g(w, n, g, geo, dt)
    fn = w.fn
    F, CKK, NP = fn.dim(geo.F), fn.size(geo.rows), fn.size(geo.columns)
    # gw [F, C·KH·KW] = g' [F, N·OH·OW] @ cols^T (cols read as stored, transposed)
    _gemm_call(w, dt, False, True, F, CKK, NP)(_address(fn, gg), fn.load_slot(cols), fn.ptr(n))
    w.note(f"im2col + BLAS {_blas(dt)}gemm (NT) over the batch")


@lowers("conv2d_backprop_input")
def lower_conv2d_backprop_input(w, n):
    dt = _dtype(w, n)
    g, f = w.operands(n)
    geo = _conv_geometry(w.type(n).shape, w.type(f).shape, w.type(g).shape[2:], w.attrs(n))
    gg = _grouped_g(w, n, g, geo, dt)
    cols = w.frame_buffer(dt, geo.rows + geo.columns)
    fn = w.fn
    F, CKK, NP = fn.dim(geo.F), fn.size(geo.rows), fn.size(geo.columns)
    # cols_g [C·KH·KW, N·OH·OW] = w^T [C·KH·KW, F] @ g' (w read as stored, transposed)
    _gemm_call(w, dt, True, False, CKK, NP, F)(fn.ptr(f), _address(fn, gg), fn.load_slot(cols))
    _col2im(w, n, geo, cols, dt)
    w.note(f"BLAS {_blas(dt)}gemm (TN) over the batch + col2im")


def _col2im(w, n, geo: _Geometry, cols_key, dt: str) -> None:
    """gx[img, c] = Σ over (a, b), then (i, j), of the columns landing on each pixel (the
    reference's order: one kernel offset after the other): one image plane per iteration."""
    k = w.kernel(f"col2im{n}")
    _smin_smax(w)
    t, ft = MEM_TYPE[dt], IR_TYPE[dt]
    sb = LLVMScalarBuilder(k.lines, w.mathlib, "c2i")
    zero = float_literal(0.0, dt)
    po, pc = k.ptr(n), k.load_slot(cols_key)
    N, C, H, W = (k.dim(d) for d in (geo.N, geo.C, geo.H, geo.W))
    OH, OW = k.dim(geo.OH), k.dim(geo.OW)
    hw, ohw = k.mul(H, W), k.mul(OH, OW)
    ncols = k.mul(N, ohw)
    with k.loop("%start", "%end", "r") as r:  # r = img·C + c
        img = k.emit(f"udiv i64 {r}, {C}", "img")
        c = k.emit(f"urem i64 {r}, {C}", "c")
        plane = k.mul(r, hw)
        with k.loop("0", hw, "z") as p:
            k.store(t, zero, po, k.add(plane, p))
        cbase = k.add(k.mul(k.mul(c, str(geo.KH * geo.KW)), ncols), k.mul(img, ohw))
        with k.loop("0", str(geo.KH), "a") as a:
            with k.loop("0", str(geo.KW), "b") as b:
                row = k.add(cbase, k.mul(k.add(k.mul(a, str(geo.KW)), b), ncols))
                yoff = k.emit(f"sub i64 {a}, {geo.pt}", "yo")
                xoff = k.emit(f"sub i64 {b}, {geo.pl}", "xo")
                i0, i1 = _valid(k, yoff, H, geo.sh, OH)
                j0, j1 = _valid(k, xoff, W, geo.sw, OW)
                with k.loop(i0, i1, "i") as i:
                    y = k.add(k.mul(i, str(geo.sh)), yoff)
                    xrow = k.add(k.add(plane, k.mul(y, W)), xoff)
                    crow = k.add(row, k.mul(i, OW))
                    with k.loop(j0, j1, "j") as j:
                        at = k.add(xrow, k.mul(j, str(geo.sw)))
                        v = k.load(t, pc, k.add(crow, j))
                        k.store(t, sb.binary("add", k.load(ft, po, at), v, dt), po, at)
    k.line("ret void")
    fn = w.fn
    w.launch(k, fn.mul(fn.dim(geo.N), fn.dim(geo.C)), fn.size((geo.N, geo.C, geo.H, geo.W)))


# ---------------------------------------------------------------------------- pooling


class _Pool:
    """A pooling kernel's registers: x [..., H, W] as planes, the windows, the output's sizes."""

    def __init__(self, w, n, stem, x, out_shape):
        a = w.attrs(n)
        (self.kh, self.kw), (self.sh, self.sw) = a["window"], a["stride"]
        self.x_shape = w.type(x).shape
        self.out_shape = out_shape
        self.k = k = w.kernel(f"{stem}{n}")
        self.sb = LLVMScalarBuilder(k.lines, w.mathlib, "mp")
        H, W = (k.dim(d) for d in self.x_shape[-2:])
        OH, OW = (k.dim(d) for d in out_shape[-2:])
        self.H, self.W, self.OH, self.OW = H, W, OH, OW
        self.hw, self.ohw = k.mul(H, W), k.mul(OH, OW)

    def planes(self, w) -> str:
        return w.fn.size(self.x_shape[:-2])

    def window(self, base: str):
        """Opens the loops over a window's offsets (a, b), in C order: (the loops, to close with
        `with`, and the element's offset in x inside them)."""
        k = self.k
        stack = ExitStack()
        a = stack.enter_context(k.loop("0", str(self.kh), "wa"))
        b = stack.enter_context(k.loop("0", str(self.kw), "wb"))
        return stack, k.add(base, k.add(k.mul(a, self.W), b))

    def corner(self, plane_base: str, i: str, j: str) -> str:
        """The offset in x of window (i, j)'s first element."""
        k = self.k
        return k.add(plane_base, k.add(k.mul(k.mul(i, str(self.sh)), self.W), k.mul(j, str(self.sw))))


def _greater(sb, v, m, dt):
    """v replaces the running max m (np.maximum(m, v)): v > m, or v is NaN while m is not."""
    if dt in FLOATS:
        return sb.logic("and", sb.logic("or", sb.compare("gt", v, m, dt), sb.compare("ne", v, v, dt)),
                        sb.compare("eq", m, m, dt))
    return sb.compare("gt", v, m, dt)


@lowers("max_pool2d")
def lower_max_pool2d(w, n):
    (x,) = w.operands(n)
    dt = w.type(n).dtype.name
    pool = _Pool(w, n, "maxpool", x, w.type(n).shape)
    k, sb, t = pool.k, pool.sb, MEM_TYPE[dt]
    px, po = k.ptr(x), k.ptr(n)
    with k.loop("%start", "%end", "r") as r:  # r = plane·OH + i: one output row
        plane = k.emit(f"udiv i64 {r}, {pool.OH}", "pl")
        i = k.emit(f"urem i64 {r}, {pool.OH}", "i")
        pbase = k.mul(plane, pool.hw)
        with k.loop("0", pool.OW, "j") as j:
            corner = pool.corner(pbase, i, j)
            best = k.var(t, k.load(t, px, corner))
            stack, at = pool.window(corner)
            with stack:
                v, m = k.load(t, px, at), k.emit(f"load {t} , ptr {best}", "m")
                k.line(f"store {t} {sb.select(_greater(sb, v, m, dt), v, m, dt)}, ptr {best}")
            k.store(t, k.emit(f"load {t}, ptr {best}", "m"), po, k.add(k.mul(r, pool.OW), j))
    k.line("ret void")
    for declaration in sorted(sb.intrinsics):
        w.helper(declaration, declaration)
    fn = w.fn
    w.launch(k, fn.mul(pool.planes(w), fn.dim(w.type(n).shape[-2])), fn.size(w.type(x).shape))
    w.note(f"window kernel {k.name}")


def _inverse_count(pool, px, po, corner, out_at, dt):
    """1 / (the number of maxima of the window at `corner`): its x equal to out (in x's dtype, as
    the reference counts them; a window without one, holding a NaN, gives inf)."""
    k, sb, ft = pool.k, pool.sb, IR_TYPE[dt]
    m = k.load(ft, po, out_at)
    count = k.var(ft, float_literal(0.0, dt))
    stack, at = pool.window(corner)
    with stack:
        hit = sb.cast(sb.compare("eq", k.load(ft, px, at), m, dt), "bool", dt)
        k.line(f"store {ft} {sb.binary('add', k.emit(f'load {ft}, ptr {count}', 'n'), hit, dt)}, ptr {count}")
    return m, sb.binary("div", float_literal(1.0, dt), k.emit(f"load {ft}, ptr {count}", "n"), dt)


def _share(pool, v_x, m, inv, dt):
    """The window's weight of an element: mask · inv (0 · inv off the maxima, as numpy)."""
    sb = pool.sb
    return sb.binary("mul", sb.cast(sb.compare("eq", v_x, m, dt), "bool", dt), inv, dt)


@lowers("max_pool2d_backprop")
def lower_max_pool2d_backprop(w, n):
    """One image plane per iteration, zeroed, then each window's g · weight added on. Windows
    that do not overlap (stride >= window, the usual case) each add onto their own elements, in
    one pass; overlapping ones first keep every window's 1 / count in a scratch, then add kernel
    offset (a, b) after offset over all windows: an element under several windows sums them in
    the reference's order."""
    dt = _dtype(w, n)
    x, out, g = w.operands(n)
    out_shape = w.type(out).shape
    a_ = w.attrs(n)
    disjoint = a_["stride"][0] >= a_["window"][0] and a_["stride"][1] >= a_["window"][1]
    inv_key = None if disjoint else w.frame_buffer(dt, out_shape)
    pool = _Pool(w, n, "maxpoolgrad", x, out_shape)
    k, sb, ft = pool.k, pool.sb, IR_TYPE[dt]
    px, po, pg, pgx = k.ptr(x), k.ptr(out), k.ptr(g), k.ptr(n)
    pinv = None if disjoint else k.load_slot(inv_key)
    zero = float_literal(0.0, dt)

    def add_share(at, o, m, inv):  # gx[at] += g[o] · (mask · inv), as the reference rounds it
        term = sb.binary("mul", k.load(ft, pg, o), _share(pool, k.load(ft, px, at), m, inv, dt), dt)
        k.store(ft, sb.binary("add", k.load(ft, pgx, at), term, dt), pgx, at)

    with k.loop("%start", "%end", "r") as plane:
        pbase, obase = k.mul(plane, pool.hw), k.mul(plane, pool.ohw)
        with k.loop("0", pool.hw, "z") as p:
            k.store(ft, zero, pgx, k.add(pbase, p))
        with k.loop("0", pool.OH, "i") as i:
            with k.loop("0", pool.OW, "j") as j:
                o = k.add(obase, k.add(k.mul(i, pool.OW), j))
                corner = pool.corner(pbase, i, j)
                m, inv = _inverse_count(pool, px, po, corner, o, dt)
                if disjoint:
                    stack, at = pool.window(corner)
                    with stack:
                        add_share(at, o, m, inv)
                else:
                    k.store(ft, inv, pinv, o)
        if not disjoint:
            with k.loop("0", str(pool.kh), "a") as a:
                with k.loop("0", str(pool.kw), "b") as b:
                    with k.loop("0", pool.OH, "i") as i:
                        with k.loop("0", pool.OW, "j") as j:
                            o = k.add(obase, k.add(k.mul(i, pool.OW), j))
                            at = k.add(pool.corner(pbase, i, j), k.add(k.mul(a, pool.W), b))
                            add_share(at, o, k.load(ft, po, o), k.load(ft, pinv, o))
    k.line("ret void")
    fn = w.fn
    w.launch(k, pool.planes(w), fn.size(w.type(x).shape))
    w.note(f"window kernel {k.name} (one plane per iteration)")


@lowers("max_pool2d_tangent")
def lower_max_pool2d_tangent(w, n):
    dt = _dtype(w, n)
    x, out, tan = w.operands(n)
    pool = _Pool(w, n, "maxpooltan", x, w.type(n).shape)
    k, sb, ft = pool.k, pool.sb, IR_TYPE[dt]
    px, po, pt, pr = k.ptr(x), k.ptr(out), k.ptr(tan), k.ptr(n)
    with k.loop("%start", "%end", "r") as r:  # r = plane·OH + i
        plane = k.emit(f"udiv i64 {r}, {pool.OH}", "pl")
        i = k.emit(f"urem i64 {r}, {pool.OH}", "i")
        pbase = k.mul(plane, pool.hw)
        with k.loop("0", pool.OW, "j") as j:
            o = k.add(k.mul(r, pool.OW), j)
            corner = pool.corner(pbase, i, j)
            m, inv = _inverse_count(pool, px, po, corner, o, dt)
            acc = k.var(ft, float_literal(0.0, dt))
            stack, at = pool.window(corner)
            with stack:
                term = sb.binary("mul", k.load(ft, pt, at), _share(pool, k.load(ft, px, at), m, inv, dt), dt)
                k.line(f"store {ft} {sb.binary('add', k.emit(f'load {ft}, ptr {acc}', 's'), term, dt)}, ptr {acc}")
            k.store(ft, k.emit(f"load {ft}, ptr {acc}", "s"), pr, o)
    k.line("ret void")
    fn = w.fn
    w.launch(k, fn.mul(pool.planes(w), fn.dim(w.type(n).shape[-2])), fn.size(w.type(x).shape))
    w.note(f"window kernel {k.name}")
