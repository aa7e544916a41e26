"""Control flow: loops (`scan`, which `iterate` and the derivative loops are too) and the lazy
`if` (`ifelse`).

A loop is a counted loop in the entry point around a call of its body, lowered as a function
of the same module (`entry.BodyProgram`: the body graph's nodes through this same table, their
values in slots and buffers of the same frame). The scan nodes of one loop (one per output it
gives, `schedule.Loop`) are written by one loop. Before each step the loop points the body's
leaves at this step's values: `carry{j}` at the carried state (the initial value, then the
buffer the previous step wrote), `seq{i}` at row t of sequence i, `free{f}` at the outer value,
`step0` at a word holding t (random draws fold it into the key: `rng_fold`, the same numbers as
the reference backend). Each output is written where it belongs: a stacked output straight into
row t of its scan node's value, a carry kept only as state into one of two buffers taken in
turn (so the new state never overwrites the one being read), an output only kept at its last
step into its scan node's value. An output the body computes itself is pointed there before the
step (written in place); one that is a leaf or a view (a carry passed through) is copied after.

`ifelse` is a branch: the nodes only one side needs (`schedule.Branch`) are lowered inside that
side, so only the taken side runs; the chosen value is then copied (broadcast, cast) into the
node's buffer.
"""

from __future__ import annotations

from ....ir import ops as P
from ....ir.fused import Instr
from ..entry import BodyProgram
from . import lowers
from .core import lower_kernel

MEMCPY = "declare void @llvm.memcpy.p0.p0.i64(ptr, ptr, i64, i1)"
MEMSET = "declare void @llvm.memset.p0.i64(ptr, i8, i64, i1)"


@lowers("ifelse")
def lower_ifelse(w, n):
    branch = w.branch
    c, a, b = w.operands(n)
    fn = w.fn
    cond = fn.emit(f"icmp ne i8 {fn.load('i8', w.ptr(c), '0')}, 0", "c")
    then, orelse, done = fn.label("if.then"), fn.label("if.else"), fn.label("if.end")
    fn.line(f"br i1 {cond}, label %{then}, label %{orelse}")
    for label, items, value, side in ((then, branch.then, a, "then"), (orelse, branch.orelse, b, "else")):
        fn.block(label)
        w.program.lower_branch(w, items)
        dtype = w.type(n).dtype.name
        lower_kernel(w, n, [value], (Instr("cast", (0,), (), dtype),), None, w.type(n).shape, name=f"k{n}.{side}")
        fn.line(f"br label %{done}")
    fn.block(done)
    w.note("a branch: only the taken side's nodes run")


def _optimized(body, roots: list[int]):
    """The body through the optimizer (as a fn's graph is: fused kernels, stable forms), and
    where its `roots` went. (A body is built unoptimized: the reference backend runs it so.)"""
    from ....passes.pipeline import optimize
    opt = optimize(body, roots, [])
    return opt.graph, list(opt.outputs)


def _leaves(body) -> dict[str, int]:
    return {body.attrs(m)["name"]: m for m in body.nodes() if body.op(m) is P.input_}


@lowers("scan")
def lower_scan(w, n):
    g, fn = w.graph, w.fn
    a = w.attrs(n)
    body, n_carry, n_seq, outputs = a["body"], a["n_carry"], a["n_seq"], a["outputs"]
    operands = w.operands(n)
    # what the loop's scan nodes ask for, each output named by a key: ("carry", j), or ("emit",
    # body node) (nodes of one loop may list different emitted outputs: see schedule.loop_key)
    hist: dict[tuple, list[int]] = {}  # key -> the scan nodes giving its history
    final: dict[tuple, list[int]] = {}  # ... its value at the last step
    for m in w.group:
        am = g.attrs(m)
        k = am["index"]
        key = ("carry", k) if k < n_carry else ("emit", am["outputs"][k])
        (hist if am["history"] else final).setdefault(key, []).append(m)
    carries = [("carry", j) for j in range(n_carry)]
    kept = carries + sorted(set(hist) - set(carries) | set(final) - set(carries))  # each step computes
    body, roots = _optimized(body, [outputs[k[1]] if k[0] == "carry" else k[1] for k in kept])
    outputs = dict(zip(kept, roots))
    direct: dict[tuple, int] = {}  # output -> the body node pointed at its destination
    for k in kept:
        o = outputs[k]
        if not (body.op(o).leaf or body.op(o).view or o in direct.values()):
            direct[k] = o
    sub = BodyProgram(w.program, body, roots, n, set(direct.values()))
    leaves = _leaves(body)
    program = w.program

    def slot(key) -> str:  # the address of a frame word
        return fn.slot_ptr(program.slot_of(key))

    def leaf_slot(name) -> str | None:
        return fn.slot_ptr(sub.slot_of(("ptr", leaves[name]))) if name in leaves else None

    def nbytes(t) -> str:
        return fn.mul(w.size(t.shape), str(t.dtype.itemsize))

    def buffer(key, t) -> str:  # a frame's own buffer for a value of type t
        return fn.load_slot(w.frame_buffer(t.dtype, t.shape, key))

    def memcpy(dst, src, size):
        w.helper("llvm.memcpy", MEMCPY)
        fn.line(f"call void @llvm.memcpy.p0.p0.i64(ptr {dst}, ptr {src}, i64 {size}, i1 false)")

    def offset(base, t, size):
        return fn.emit(f"getelementptr i8, ptr {base}, i64 {fn.mul(t, size)}", "row")

    steps = w.dim(a["length"])
    for f, o in enumerate(operands[n_carry + n_seq:]):
        s = leaf_slot(f"free{f}")
        if s is not None:
            fn.line(f"store ptr {w.ptr(o)}, ptr {s}")
    size = {k: nbytes(body.type(outputs[k])) for k in kept}
    cur = [fn.var("ptr", w.ptr(operands[j])) for j in range(n_carry)]  # each carry's current state
    two = {k: tuple(buffer(("loop", sub.tag, k[1], i), body.type(outputs[k])) for i in (0, 1))
           for k in carries if k not in hist}
    hist_at = {k: w.ptr(ms[0]) for k, ms in hist.items()}
    final_at = {k: w.ptr(ms[0]) for k, ms in final.items()}
    seqs = [(w.ptr(operands[n_carry + i]), nbytes(body.type(leaves[f"seq{i}"])), leaf_slot(f"seq{i}"))
            for i in range(n_seq) if f"seq{i}" in leaves]
    step_word = None
    if "step0" in leaves:
        step_word = buffer(("sub", sub.tag, sub.alias.get(leaves["step0"], leaves["step0"])), body.type(leaves["step0"]))
    with fn.loop("0", steps, "step") as t:
        for base, row, s in seqs:
            fn.line(f"store ptr {offset(base, t, row)}, ptr {s}")
        if step_word is not None:
            fn.line(f"store i64 {t}, ptr {step_word}")
        for j in range(n_carry):
            s = leaf_slot(f"carry{j}")
            if s is not None:
                fn.line(f"store ptr {fn.emit(f'load ptr, ptr {cur[j]}', 'cur')}, ptr {s}")
        dest = {}
        for k in kept:
            if k in hist:
                dest[k] = offset(hist_at[k], t, size[k])
            elif k[0] == "carry":
                odd = fn.emit(f"trunc i64 {t} to i1", "odd")
                dest[k] = fn.emit(f"select i1 {odd}, ptr {two[k][1]}, ptr {two[k][0]}", "next")
            else:
                dest[k] = final_at[k]
            if k in direct:
                fn.line(f"store ptr {dest[k]}, ptr {fn.slot_ptr(sub.slot_of(('ptr', direct[k])))}")
        rc = fn.emit(f"call i32 @{sub.fn_name}(ptr %ctx)", "rc")
        with fn.if_(fn.emit(f"icmp ne i32 {rc}, 0", "c")):
            fn.line(f"ret i32 {rc}")
        for k in kept:
            if k not in direct:
                src = fn.emit(f"load ptr, ptr {fn.slot_ptr(sub.slot_of(('ptr', outputs[k])))}", "out")
                memcpy(dest[k], src, size[k])
        for j, k in enumerate(carries):
            fn.line(f"store ptr {dest[k]}, ptr {cur[j]}")
    # the last values: a carry's state (its initial value after no step); an emitted value's last
    # row, or 0 after no step
    for k in final:
        if k[0] == "carry":
            memcpy(final_at[k], fn.emit(f"load ptr, ptr {cur[k[1]]}", "cur"), size[k])
            continue
        none = fn.emit(f"icmp eq i64 {steps}, 0", "c")
        with fn.if_(none):
            w.helper("llvm.memset", MEMSET)
            fn.line(f"call void @llvm.memset.p0.i64(ptr {final_at[k]}, i8 0, i64 {size[k]}, i1 false)")
        if k in hist:
            with fn.if_(fn.emit(f"xor i1 {none}, true", "c")):
                memcpy(final_at[k], offset(hist_at[k], fn.emit(f"sub i64 {steps}, 1", "last"), size[k]), size[k])
    for outs, at in ((hist, hist_at), (final, final_at)):  # the same output asked for twice
        for k, ms in outs.items():
            for m in ms[1:]:
                memcpy(w.ptr(m), at[k], nbytes(g.type(m)))
    w.note(f"native loop: body {sub.fn_name} ({len(sub.nodes)} nodes), {len(w.group)} output(s)")
