"""argsort as a row kernel: each row (the elements along the axis, `inner` apart in the operand
seen as [outer, n, inner]) sorted by a heapsort of its indices, in place in the output.

Heapsort is not stable, but the keys are (value, index) pairs compared lexicographically (NaN
above every number, as numpy sorts it last): all keys differ, so any correct sort gives the one
order numpy's stable sort gives. In place and O(n log n) in the worst case, with no scratch
memory. The sift-down and the comparison are functions of the module, one per dtype."""

from __future__ import annotations

from ..irfunc import MEM_TYPE
from ..kernels import ITEMSIZE
from . import HostStep, lowers

_FLOAT = {"float32": "float", "float64": "double"}


def _less_ir(dt: str) -> tuple[str, str]:
    """(name, text) of `i1 less(ptr x, ptr o, i64 base, i64 inner, i64 p, i64 q)`: is the key
    of the row's p-th index below that of its q-th?"""
    name = f"flowml_argsort_less_{dt}"
    t = MEM_TYPE[dt]
    lines = [
        f"define internal i1 @{name}(ptr %x, ptr %o, i64 %base, i64 %inner, i64 %p, i64 %q) nounwind {{",
        "  %pp = mul i64 %p, %inner", "  %po = add i64 %base, %pp",
        "  %qq = mul i64 %q, %inner", "  %qo = add i64 %base, %qq",
        "  %ap = getelementptr i64, ptr %o, i64 %po", "  %a = load i64, ptr %ap",
        "  %bp = getelementptr i64, ptr %o, i64 %qo", "  %b = load i64, ptr %bp",
        "  %ai = mul i64 %a, %inner", "  %aa = add i64 %base, %ai",
        "  %bi = mul i64 %b, %inner", "  %bb = add i64 %base, %bi",
        f"  %vap = getelementptr {t}, ptr %x, i64 %aa", f"  %va = load {t}, ptr %vap",
        f"  %vbp = getelementptr {t}, ptr %x, i64 %bb", f"  %vb = load {t}, ptr %vbp",
        "  %idx = icmp slt i64 %a, %b",
    ]
    if dt in _FLOAT:
        lines += [
            f"  %na = fcmp uno {t} %va, %va", f"  %nb = fcmp uno {t} %vb, %vb",
            f"  %lt = fcmp olt {t} %va, %vb", f"  %eq = fcmp oeq {t} %va, %vb",
            # both numbers: va < vb, ties by index; a number below a NaN; two NaNs by index
            "  %tie = and i1 %eq, %idx", "  %num = or i1 %lt, %tie",
            "  %nn = or i1 %na, %nb", "  %both = and i1 %na, %nb",
            "  %numonly = select i1 %nn, i1 false, i1 %num",
            "  %nota = xor i1 %na, true", "  %belownan = and i1 %nota, %nb",
            "  %nans = and i1 %both, %idx",
            "  %r1 = or i1 %numonly, %belownan", "  %r = or i1 %r1, %nans",
        ]
    else:
        cmp = "ult" if dt == "bool" else "slt"
        lines += [f"  %lt = icmp {cmp} {t} %va, %vb", f"  %eq = icmp eq {t} %va, %vb",
                  "  %tie = and i1 %eq, %idx", "  %r = or i1 %lt, %tie"]
    lines += ["  ret i1 %r", "}"]
    return name, "\n".join(lines)


def _sift_ir(dt: str, less: str) -> tuple[str, str]:
    """(name, text) of `void sift(ptr x, ptr o, i64 base, i64 inner, i64 root, i64 end)`: the
    max-heap's sift-down of position root over positions [0, end) of the row's indices."""
    name = f"flowml_argsort_sift_{dt}"
    args = "ptr %x, ptr %o, i64 %base, i64 %inner"
    text = f"""define internal void @{name}({args}, i64 %root0, i64 %end) nounwind {{
entry:
  br label %loop
loop:
  %root = phi i64 [%root0, %entry], [%child, %swap]
  %c1a = shl i64 %root, 1
  %c1 = add i64 %c1a, 1
  %has = icmp slt i64 %c1, %end
  br i1 %has, label %body, label %done
body:
  %c2 = add i64 %c1, 1
  %has2 = icmp slt i64 %c2, %end
  br i1 %has2, label %cmp2, label %pick
cmp2:
  %l = call i1 @{less}({args}, i64 %c1, i64 %c2)
  br label %pick
pick:
  %right = phi i1 [false, %body], [%l, %cmp2]
  %child = select i1 %right, i64 %c2, i64 %c1
  %below = call i1 @{less}({args}, i64 %root, i64 %child)
  br i1 %below, label %swap, label %done
swap:
  %rp = mul i64 %root, %inner
  %ro = add i64 %base, %rp
  %cp = mul i64 %child, %inner
  %co = add i64 %base, %cp
  %rptr = getelementptr i64, ptr %o, i64 %ro
  %cptr = getelementptr i64, ptr %o, i64 %co
  %rv = load i64, ptr %rptr
  %cv = load i64, ptr %cptr
  store i64 %cv, ptr %rptr
  store i64 %rv, ptr %cptr
  br label %loop
done:
  ret void
}}"""
    return name, text


@lowers("argsort")
def lower_argsort(w, n):
    g = w.graph
    (x,) = w.operands(n)
    shape, axis = g.type(x).shape, w.attrs(n)["axis"]
    dt = g.type(x).dtype.name
    if dt not in ITEMSIZE:
        raise HostStep(f"no native argsort of {dt}")
    less, less_text = _less_ir(dt)
    sift, sift_text = _sift_ir(dt, less)
    w.helper(less, less_text)
    w.helper(sift, sift_text)
    k = w.kernel(f"argsort{n}")
    px, po = k.ptr(x), k.ptr(n)
    length = k.dim(shape[axis])
    inner = k.size(shape[axis + 1:])
    with k.loop("%start", "%end", "r") as r:
        o = k.emit(f"udiv i64 {r}, {inner}", "ix") if inner != "1" else r
        i = k.emit(f"urem i64 {r}, {inner}", "ix") if inner != "1" else "0"
        base = k.add(k.mul(k.mul(o, length), inner), i)
        args = f"ptr {px}, ptr {po}, i64 {base}, i64 {inner}"
        with k.loop("0", length, "j") as j:  # the indices in order
            k.store("i64", j, po, k.add(base, k.mul(j, inner)))
        half = k.emit(f"sdiv i64 {length}, 2", "ix")
        with k.loop("0", half, "h") as t:  # heapify: sift positions half-1 .. 0
            root = k.emit(f"sub i64 {k.emit(f'sub i64 {half}, 1', 'ix')}, {t}", "ix")
            k.line(f"call void @{sift}({args}, i64 {root}, i64 {length})")
        last = k.emit(f"sub i64 {length}, 1", "ix")
        with k.loop("0", last, "s") as t:  # move the largest to the end, sift the rest
            end = k.emit(f"sub i64 {last}, {t}", "ix")
            p0 = k.gep("i64", po, base)
            pe = k.gep("i64", po, k.add(base, k.mul(end, inner)))
            v0, ve = k.emit(f"load i64, ptr {p0}", "v"), k.emit(f"load i64, ptr {pe}", "v")
            k.line(f"store i64 {ve}, ptr {p0}")
            k.line(f"store i64 {v0}, ptr {pe}")
            k.line(f"call void @{sift}({args}, i64 0, i64 {end})")
    k.line("ret void")
    rows = w.size([d for j, d in enumerate(shape) if j != axis])
    w.launch(k, rows, w.size(shape))
    w.note("heapsort row kernel")
