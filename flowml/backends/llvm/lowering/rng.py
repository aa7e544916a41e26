"""Random draws: Philox-4x32-10 kernels (`..philox`), bit-identical with the reference on every
backend, split across threads by element (element i depends on i alone); and `rng_fold`, the
key of one step of a loop."""

from __future__ import annotations

from .. import philox
from . import lowers


@lowers("random")
def lower_random(w, n):
    a = w.attrs(n)
    (key,) = w.operands(n)
    dist, dtype = a["dist"], w.type(n).dtype.name
    name = f"flowml.philox.{dist}.{dtype}"
    w.helper(name, philox.random_kernel_ir(name, dist, dtype, declarations=False))
    w.helper(philox.SQRT, philox.SQRT)
    fn = w.fn
    args = fn.var("[4 x i64]")  # [output address, seed, site, call]
    fn.store("i64", fn.emit(f"ptrtoint ptr {w.ptr(n)} to i64", "a"), args, "0")
    k = w.ptr(key)
    fn.store("i64", fn.load("i64", k, "0"), args, "1")
    fn.store("i64", str(int(a["site"]) & 0xFFFFFFFF), args, "2")
    fn.store("i64", fn.load("i64", k, "1"), args, "3")
    count = w.size(w.type(n).shape)
    # a draw costs far more than a copy per element: split it when a thread gets ~2k draws
    w.launch(name, count, fn.mul(count, "16"), arg=args)
    w.note(f"Philox {dist} kernel")


@lowers("rng_fold")
def lower_rng_fold(w, n):
    key, step = w.operands(n)
    name = "flowml.philox.fold"
    w.helper(name, philox.fold_ir(name))
    fn = w.fn
    k, out = w.ptr(key), w.ptr(n)
    st = w.type(step).dtype.name
    s = fn.load({"int64": "i64", "int32": "i32"}[st], w.ptr(step), "0")
    if st == "int32":
        s = fn.emit(f"sext i32 {s} to i64", "s")
    fn.store("i64", fn.emit(f"call i64 @{name}(i64 {fn.load('i64', k, '0')}, i64 {s})", "f"), out, "0")
    fn.store("i64", fn.load("i64", k, "1"), out, "1")
    w.note("Philox fold")
