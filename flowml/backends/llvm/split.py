"""One module per distinct kernel: compile each kernel body once, however often it repeats.

The backend emits one LLVM function per kernel, `define void @kN(ptr noalias %ctx, i64 %start,
i64 %end)`, which reads its buffers' addresses and dims from fixed slots of a table shared by
the whole function (`getelementptr i64, ptr %ctx, i64 <slot>`, then a load). The layers of a
deep model give kernels that differ only in those slot numbers, and LLVM's O3 pipeline plus
code generation costs ~20 ms per kernel: the bulk of compiling a deep model, all of it repeated
work. So a module is split:

  * each kernel's body with its slots renumbered 0, 1, ... in order of first use is its
    *canonical* form, named by a hash (`flowml_kernel_<hash>`) and compiled (O3) once, in a
    module of its own (with the original module's declarations and attributes), which the
    object cache keys on its own: editing one layer recompiles that layer's kernel only;
  * each original kernel becomes a wrapper of a few loads that copies its slots into a small
    table on its stack and calls the canonical kernel with it; the wrappers are one module,
    neither optimized nor given the full code generator (straight-line code: nothing for O3
    to improve, and fast instruction selection makes it ~8x cheaper to compile).

A function that refers to another function of the module (the entry that calls the kernels)
goes, as it is, into a module of its own (`rest`, compiled last); it reaches the wrappers
through aliases that the wrappers' module exports. Such glue (the entry sets slots and calls
kernels: straight-line code as long as the model is deep) is compiled as the wrappers are: O3
costs a 640-layer entry seconds. A module with a function of another shape (another
signature, a slot that is written or passed on) that is not glue is not split: the
data-parallel models' modules are like that, and split they left a kernel unresolved (open). A module whose header defines a
global with external linkage (each part would define it again) is not split. Neither is one in
which no kernel body repeats: `split_kernels` returns None when nothing would be gained.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass

_DEFINE = re.compile(r"^define (?P<pre>[^@\n]*)@(?P<name>[\w.$]+)\((?P<args>[^)\n]*)\)(?P<post>[^{\n]*)\{\n"
                     r"(?P<body>.*?)^\}\n?", re.M | re.S)
_SLOT = re.compile(r"(?P<res>%[\w.]+) = getelementptr (?P<ib>inbounds )?i64, ptr %ctx, i64 (?P<slot>\d+)(?![\w.])")
_CTX = re.compile(r"%ctx(?![\w.])")
_GLOBAL_DEF = re.compile(r"^@(?P<name>[\w.$]+) = (?P<rest>.*)$", re.M)
_SYMBOL = re.compile(r"@([\w.$]+)")
_LOCAL = re.compile(r"%[\w.]+")
_REFERENCE = re.compile(r"@([\w.$]+)(?![\w.$])")
_LOAD = re.compile(r"= load [^,\n]+, ptr (%[\w.]+)")
_LOCAL_LINKAGE = ("private ", "internal ")
_METADATA_DEF = re.compile(r"^!(?P<id>\d+) = (?P<rest>.*)\n?", re.M)
_METADATA_REF = re.compile(r"!(\d+)(?![\w.])")


@dataclass
class Split:
    kernels: dict[str, str]  # canonical name -> a module holding that kernel (header + define)
    rest: str | None  # a module of the functions left as they were (None: there are none)
    wrappers: str  # a module: one wrapper per original kernel, calling its canonical kernel
    exports: tuple[str, ...] = ()  # the wrappers' aliases `rest` calls (process symbols)
    rest_is_glue: bool = False  # every function of `rest` calls the module's others (an entry)


def _metadata_closure(text: str, metadata: dict[int, str]) -> list[int]:
    """The numbered metadata `text` refers to, directly or through other metadata, in order of
    first reference."""
    order: list[int] = []
    todo = [int(i) for i in _METADATA_REF.findall(text)]
    while todo:
        i = todo.pop(0)
        if i in metadata and i not in order:
            order.append(i)
            todo += [int(j) for j in _METADATA_REF.findall(metadata[i])]
    return order


def _with_metadata(body: str, metadata: dict[int, str], renumber: bool) -> str:
    """`body` followed by the metadata it refers to (a kernel's loop hints); `renumber`: numbered
    0, 1, ... in order of first reference, so that kernels differing only in their metadata
    numbers have one canonical text."""
    ids = _metadata_closure(body, metadata)
    if not ids:
        return body
    new = {i: (k if renumber else i) for k, i in enumerate(ids)}

    def sub(text):
        return _METADATA_REF.sub(lambda g: f"!{new.get(int(g.group(1)), g.group(1))}", text)
    return sub(body) + "".join(f"!{new[i]} = {sub(metadata[i])}\n" for i in ids)


def _canonical(m: re.Match) -> tuple[str, list[int]] | None:
    """(the define with its slots renumbered and the name `@__kernel__`, the original slots),
    or None when the function is not a kernel of the usual shape."""
    args = [a.strip() for a in m["args"].split(",")]
    if not args or not args[0].startswith("ptr") or args[0].split()[-1] != "%ctx":
        return None
    body = m["body"]
    geps = list(_SLOT.finditer(body))
    if len(geps) != len(_CTX.findall(body)):
        return None  # %ctx used some other way (passed on, stored, indexed by a variable)
    uses = Counter(_LOCAL.findall(body))
    loads = Counter(_LOAD.findall(body))
    for g in geps:  # each slot address may only be loaded from
        if uses[g["res"]] != loads[g["res"]] + 1:
            return None
    slots: list[int] = []
    index: dict[int, int] = {}

    def renumber(g: re.Match) -> str:
        s = int(g["slot"])
        if s not in index:
            index[s] = len(slots)
            slots.append(s)
        return f"{g['res']} = getelementptr {g['ib'] or ''}i64, ptr %ctx, i64 {index[s]}"

    canon = _SLOT.sub(renumber, body)
    return f"define {m['pre']}@__kernel__({m['args']}){m['post']}{{\n{canon}}}\n", slots


def _wrapper(m: re.Match, target: str, slots: list[int]) -> str:
    """`@name` with the original signature: copy its slots into a table, call `target` with it."""
    ret = m["pre"].split()[-1]
    args = [a.strip() for a in m["args"].split(",")]
    lines = [f"define {m['pre']}@{m['name']}({m['args']}){m['post']}{{", "entry:"]
    table = "%ctx"
    if slots:
        table = "%table"
        lines.append(f"  %table = alloca [{len(slots)} x i64], align 8")
        for j, s in enumerate(slots):
            lines += [f"  %from{j} = getelementptr i64, ptr %ctx, i64 {s}",
                      f"  %v{j} = load i64, ptr %from{j}, align 8",
                      f"  %to{j} = getelementptr i64, ptr %table, i64 {j}",
                      f"  store i64 %v{j}, ptr %to{j}, align 8"]
    passed = ", ".join([f"ptr {table}"] + [f"{a.split()[0]} {a.split()[-1]}" for a in args[1:]])
    if ret == "void":
        lines += [f"  call void @{target}({passed})", "  ret void"]
    else:
        lines += [f"  %r = call {ret} @{target}({passed})", f"  ret {ret} %r"]
    return "\n".join(lines) + "\n}\n"


def _declaration(m: re.Match, target: str) -> str:
    types = ", ".join(a.split()[0] for a in m["args"].split(","))
    return f"declare {m['pre'].split()[-1]} @{target}({types})\n"


def split_kernels(ir_text: str, min_repeats: int = 2) -> Split | None:
    """The module `ir_text` as distinct kernels plus wrappers; None when it does not split, or
    when no kernel body occurs at least `min_repeats` times (then splitting gains nothing)."""
    defines = list(_DEFINE.finditer(ir_text))
    if not defines:
        return None
    header = _DEFINE.sub("", ir_text)
    # numbered metadata (loop hints) goes with the functions that refer to it
    metadata = {int(g["id"]): g["rest"] for g in _METADATA_DEF.finditer(header)}
    header = _METADATA_DEF.sub("", header)
    for g in _GLOBAL_DEF.finditer(header):
        if not g["name"].startswith("llvm.") and not g["rest"].startswith(_LOCAL_LINKAGE):
            return None
    names = {m["name"] for m in defines}
    canon: dict[str, str] = {}  # canonical text -> canonical name
    plan = []
    for m in defines:
        # a function that refers to another of the module (an entry that calls the kernels)
        # stays whole, in `rest`
        c = None if names & set(_SYMBOL.findall(m["body"])) else _canonical(m)
        if c is None:
            plan.append((m, None, None))
            continue
        text, slots = c
        text = _with_metadata(text, metadata, renumber=True)
        if text not in canon:
            canon[text] = "flowml_kernel_" + hashlib.sha256((header + text).encode()).hexdigest()[:24]
        plan.append((m, canon[text], slots))
    canonical = [p for p in plan if p[1] is not None]
    if len(canonical) - len(canon) < min_repeats - 1 or not canon:
        return None
    if any(target is None and not names & set(_SYMBOL.findall(m["body"])) for m, target, _ in plan):
        return None  # a function of another shape that is not glue: compile the module whole (see above)
    kernels = {name: header + text.replace("@__kernel__(", f"@{name}(", 1) for text, name in canon.items()}
    declared: set[str] = set()
    wrappers = [header]
    for m, target, slots in canonical:
        if target not in declared:
            declared.add(target)
            wrappers.append(_declaration(m, target))
        wrappers.append(_wrapper(m, target, slots))
    rest = [_with_metadata(m.group(0).rstrip("\n") + "\n", metadata, renumber=False)
            for m, target, _ in plan if target is None]
    exported: dict[str, str] = {}  # a wrapped kernel `rest` refers to -> the alias it exports
    if rest:
        # `rest` is compiled after the wrappers, in another engine: it reaches a wrapper through
        # an alias named for this module (a process symbol, so never one another module uses)
        tag = hashlib.sha256(ir_text.encode()).hexdigest()[:16]
        wrapped = {m["name"]: m for m, target, _ in canonical}

        def refer(g: re.Match) -> str:
            name = g.group(1)
            if name not in wrapped:
                return g.group(0)
            exported.setdefault(name, f"flowml_w{tag}_{name}")
            return "@" + exported[name]

        rest = [_REFERENCE.sub(refer, text) for text in rest]
        for name, alias in exported.items():
            m = wrapped[name]
            types = ", ".join(a.split()[0] for a in m["args"].split(","))
            ftype = f"{m['pre'].split()[-1]} ({types})"
            wrappers.append(f"@{alias} = alias {ftype}, ptr @{name}\n")
            rest.insert(0, f"declare {m['pre'].split()[-1]} @{alias}({types})\n")
    glue = all(names & set(_SYMBOL.findall(m["body"])) for m, target, _ in plan if target is None)
    return Split(kernels, header + "".join(rest) if rest else None, "".join(wrappers), tuple(exported.values()),
                 glue)
