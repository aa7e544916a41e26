"""Turning LLVM IR text into callable native code (llvmlite / MCJIT).

Facts this relies on (see docs/llvm_facts.md, verified on llvmlite 0.50 / LLVM 22):
* `llvm.initialize()` raises now; only the native target/asmprinter/asmparser need initializing.
* Without the host CPU name and features the target machine is generic x86-64 and the loop
  vectorizer stops at SSE width, so we always pass them.
* Only the new pass manager exists; SLP vectorization is off by default, so we turn it on.
* MCJIT does not complain about unresolved externals: `finalize_object` succeeds and the first
  call segfaults. So every declared external is looked up before finalizing.
* A `ctypes.CFUNCTYPE` pointer releases the GIL during the call (PYFUNCTYPE would not), which is
  what lets Python threads run kernels in parallel.
"""

from __future__ import annotations

import ctypes
import functools
import os
import struct
import threading
from dataclasses import dataclass

import llvmlite.binding as llvm

from ...errors import FlowInternalError

# LLVM's global state (symbol table, command-line options, the pass builder) is not documented as
# thread-safe; compiles are rare and short, so they are simply serialized.
_LOCK = threading.RLock()


_process_symbols_engine = None


@functools.lru_cache(maxsize=None)
def _init_native() -> None:
    global _process_symbols_engine
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()  # without it, finalize_object aborts the process
    llvm.initialize_native_asmparser()
    # `llvm.address_of_symbol` (and so the JIT's linker) only sees the process's own symbols
    # (libc's memset, libm's expf, pthread_create...) once an MCJIT engine has been created: its
    # constructor loads the process as a "permanent library"; llvmlite's
    # load_library_permanently(None) cannot do that. An empty engine, kept alive, does it.
    _process_symbols_engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), _new_target_machine())
    # The code generator lowers some operations to compiler-runtime helpers that are in neither
    # the IR nor the Python process: llvm.powi -> __powidf2, i128 division -> __udivti3, half
    # conversions -> __truncdfhf2... (verified: unresolved, the call segfaults). libgcc_s has them.
    try:
        llvm.load_library_permanently("libgcc_s.so.1")
    except RuntimeError:
        pass  # then undefined_object_symbols() reports them instead of crashing


@functools.lru_cache(maxsize=None)
def host_cpu() -> tuple[str, str]:
    """(CPU name, feature string) of this machine, as LLVM sees them, plus one tuning flag.

    LLVM tunes Intel's AVX-512 server and client cores (skylake-avx512 … sapphirerapids,
    rocketlake) with `prefer-256-bit`: the loop vectorizer then never picks 512-bit vectors, so a
    loop whose calls have only libmvec's 16-wide AVX-512 variant declared stays scalar (W1 was
    not vectorized at all on such a host). Where flowml uses the AVX-512 variants
    (`use_avx512()`), the flag is turned off, as it already is on AMD's Zen 4/5.
    """
    cpu, features = llvm.get_host_cpu_name(), llvm.get_host_cpu_features().flatten()
    if _use_avx512(features):
        features += ",-prefer-256-bit"
    return cpu, features


def _enabled(features: str) -> set[str]:
    return {f[1:] for f in features.split(",") if f.startswith("+")}


def _use_avx512(features: str) -> bool:
    return (os.environ.get("FLOWML_VECMATH", "").lower() != "avx2"
            and {"avx512f", "avx512dq"} <= _enabled(features))


def use_avx512() -> bool:
    """Whether kernels use 512-bit vectors and libmvec's AVX-512 variants: the host has
    AVX-512F/DQ and FLOWML_VECMATH is not "avx2" (which keeps the 256-bit ones)."""
    return _use_avx512(host_cpu()[1])


def host_has_features(*features: str) -> bool:
    """True when every feature (e.g. 'avx2', 'fma') is enabled on the host CPU."""
    return set(features) <= _enabled(host_cpu()[1])


def _new_target_machine(codegen_level: int = 3):
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    cpu, features = host_cpu()
    return llvm.Target.from_default_triple().create_target_machine(
        cpu=cpu, features=features, opt=codegen_level, jit=True)


@functools.lru_cache(maxsize=None)
def target_machine():
    """The host target machine (cached) used for optimization and assembly listings.

    MCJIT takes ownership of the target machine it is given, so each engine gets its own
    (`_new_target_machine`, ~1 ms) and this shared one never goes to an engine.
    """
    _init_native()
    return _new_target_machine()


def optimize(module, speed_level: int = 3) -> None:
    """Run the new-pass-manager O`speed_level` pipeline on `module`, in place."""
    with _LOCK:
        tm = target_machine()
        pto = llvm.create_pipeline_tuning_options(speed_level=speed_level)
        pto.loop_vectorization = True
        pto.slp_vectorization = True  # off by default in llvmlite's tuning options
        pb = llvm.create_pass_builder(tm, pto)
        pb.getModulePassManager().run(module, pb)


def _parse(ir_text: str, name: str):
    try:
        mod = llvm.parse_assembly(ir_text)
        mod.verify()
    except RuntimeError as e:
        raise FlowInternalError(f"generated LLVM IR for {name!r} is invalid: {e}") from None
    tm = target_machine()
    mod.triple = tm.triple
    mod.data_layout = str(tm.target_data)
    mod.name = name
    return mod


# Functions that define symbols on demand: each is given names the JIT cannot resolve and binds
# those it knows (vecmath compiles the libmvec lane wrappers a module calls, and only those).
SYMBOL_PROVIDERS: list = []


def _provide(missing: list[str]) -> list[str]:
    """`missing` after the providers had their go: what still cannot be resolved."""
    if missing:
        for provide in SYMBOL_PROVIDERS:
            provide(missing)
        missing = [s for s in missing if llvm.address_of_symbol(s) is None]
    return missing


def undefined_externals(module) -> list[str]:
    """Names declared (not defined) in `module` that the JIT's symbol lookup cannot find.

    LLVM intrinsics (`llvm.*`) are lowered by the code generator and need no symbol.
    """
    missing = []
    for f in module.functions:
        if f.is_declaration and not f.name.startswith("llvm.") and llvm.address_of_symbol(f.name) is None:
            missing.append(f.name)
    for g in module.global_variables:
        if g.is_declaration and not g.name.startswith("llvm.") and llvm.address_of_symbol(g.name) is None:
            missing.append(g.name)
    return missing


def _elf_undefined_symbols(obj: bytes) -> list[str]:
    """Names an ELF64 little-endian relocatable object needs from outside (undefined symbols)."""
    if obj[:4] != b"\x7fELF" or obj[4] != 2 or obj[5] != 1:
        return []  # not ELF64-LE (another platform): nothing we can check
    (shoff,) = struct.unpack_from("<Q", obj, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", obj, 0x3A)
    # Elf64_Shdr: name, type, flags, addr, offset, size, link, info, addralign, entsize
    sections = [struct.unpack_from("<IIQQQQIIQQ", obj, shoff + i * shentsize) for i in range(shnum)]
    names = []
    for _, sh_type, _, _, offset, size, link, _, _, entsize in sections:
        if sh_type != 2 or not entsize:  # SHT_SYMTAB
            continue
        strtab = sections[link][4]
        for j in range(1, size // entsize):
            # Elf64_Sym: name, info, other, shndx, value, size
            st_name, _, _, st_shndx, _, _ = struct.unpack_from("<IBBHQQ", obj, offset + j * entsize)
            if st_shndx == 0 and st_name:  # SHN_UNDEF
                start = strtab + st_name
                names.append(obj[start:obj.index(b"\0", start)].decode())
    return names


def undefined_object_symbols(obj: bytes) -> list[str]:
    """Undefined symbols of object code `obj` that the JIT's symbol lookup cannot find."""
    return [n for n in _elf_undefined_symbols(obj)
            if not n.startswith("_GLOBAL_OFFSET_TABLE_") and llvm.address_of_symbol(n) is None]


@dataclass
class Part:
    """One module of a `JitModule`: its IR, the object code a cache had for it (None: compile
    it), the IR optimization level (None: none) and the code generator's (0: fast instruction
    selection, for straight-line glue), and the functions it exports to the parts after it."""

    name: str
    ir_text: str
    cached_object: bytes | None = None
    speed_level: int | None = 3
    codegen_level: int = 3
    exports: tuple[str, ...] = ()
    object_code: bytes | None = None  # set once loaded


class JitModule:
    """LLVM module(s) compiled to native code and kept loaded as long as this object lives.

    `JitModule(ir_text)` parses, verifies, optimizes (O3 + loop/SLP vectorization) and compiles.
    `JitModule(ir_text, cached_object=obj)` skips optimization and code generation and loads the
    object code `obj` (a previous instance's `object_code`) instead, without parsing the IR text
    (an engine of cached objects starts from an empty module; the text is kept for listings). The caller (see `cache.py`) is responsible for making the
    cache key cover everything that changes the object code.

    `JitModule.linked(parts, ir_text)` loads several modules (see `split.py`: a module split into
    its distinct kernels and the wrappers that call them); `ir_text` is the module they came
    from. Consecutive parts with the same code-generation level share an MCJIT engine (the
    level belongs to the engine's target machine); a part's `exports` are registered as process
    symbols once its engine is finalized, so that the later engines' code can call them.

    Before anything can run, every symbol the code needs from outside is looked up -- in the IR
    (fresh compiles) and in the object's ELF symbol table (always) -- and a missing one raises
    FlowInternalError naming it, instead of the segfault MCJIT would give at the first call.
    """

    def __init__(self, ir_text: str, cached_object: bytes | None = None, *, name: str = "flowml_module",
                 speed_level: int = 3, _parts: list[Part] | None = None):
        self.ir_text = ir_text
        self.name = name
        self._speed_level = speed_level
        self._optimized_ir: str | None = None
        self.parts = _parts if _parts is not None else [Part(name, ir_text, cached_object, speed_level)]
        self.from_cache = all(p.cached_object is not None for p in self.parts)
        self._engines = []
        with _LOCK:
            _init_native()
            groups: list[list[Part]] = []
            for p in self.parts:
                if groups and groups[-1][0].codegen_level == p.codegen_level:
                    groups[-1].append(p)
                else:
                    groups.append([p])
            for group in groups:
                self._load(group)
        self.object_code = self.parts[0].object_code if len(self.parts) == 1 else None

    def _load(self, parts: list[Part]) -> None:
        """Compile (or load from their objects) `parts` into one engine, checked and finalized."""
        name = self.name
        local = {sym for p in parts for sym in p.exports}  # defined by a module of this engine
        if all(p.cached_object is not None for p in parts):
            self._load_objects(parts, local)
            return
        mods = []
        for p in parts:
            mod = _parse(p.ir_text, p.name)
            if p.cached_object is None and p.speed_level is not None:
                optimize(mod, p.speed_level)
                if len(self.parts) == 1:
                    self._optimized_ir = str(mod)
            # Checked after optimization: O3 may add calls (memset, memcpy) that must resolve too.
            # (A cached object is checked below, on its own symbol table, which is exact.)
            missing = [s for s in undefined_externals(mod) if s not in local] if p.cached_object is None else []
            missing = _provide(missing)
            if missing:
                raise FlowInternalError(
                    f"LLVM module {name!r} uses external symbol(s) the JIT cannot resolve: "
                    f"{', '.join(missing)}",
                    notes=["vecmath.ensure_symbols() / blas.ensure_symbols() bind flowml's helper names; "
                           "an unresolved symbol would crash the process at the first call"])
            mods.append(mod)
        ee = llvm.create_mcjit_compiler(mods[0], _new_target_machine(parts[0].codegen_level))
        for mod in mods[1:]:
            ee.add_module(mod)
        by_module = {id(mod): p for mod, p in zip(mods, parts)}

        def notify(module, buf: bytes) -> None:  # called once code generation has run
            by_module[id(module)].object_code = bytes(buf)

        def getbuffer(module):  # None -> MCJIT compiles the module itself
            return by_module[id(module)].cached_object

        ee.set_object_cache(notify, getbuffer)
        ee.finalize_object()
        # The callbacks reference the parts through closures; drop them to avoid a cycle that
        # would delay freeing the engine (and its executable memory).
        ee.set_object_cache(None, None)
        self._engines.append((ee, mods))
        for p in parts:
            if p.cached_object is not None:
                p.object_code = bytes(p.cached_object)
            # Second check, on the machine code: catches helpers the code generator introduced
            # (and anything a cached object needs). Nothing has run yet, so raising is safe.
            missing = _provide([s for s in undefined_object_symbols(p.object_code or b"") if s not in local])
            if missing:
                raise FlowInternalError(
                    f"compiled LLVM module {name!r} needs symbol(s) the JIT cannot resolve: "
                    f"{', '.join(missing)}",
                    notes=["calling it would crash the process; these usually come from compiler "
                           "runtime helpers (libgcc_s) or a library that is not loaded"])
            # (registered again by every module that defines it, just before its callers are
            # compiled: an export of an engine since freed is never called through)
            for sym in p.exports:
                llvm.add_symbol(sym, ee.get_function_address(sym))

    def _load_objects(self, parts: list[Part], local: set[str]) -> None:
        """Cached object code into one engine, without parsing the IR: the engine starts from
        an empty module and takes the objects as they are (what makes a warm load cheap)."""
        for p in parts:
            p.object_code = bytes(p.cached_object)
            missing = _provide([s for s in undefined_object_symbols(p.object_code) if s not in local])
            if missing:  # checked before anything is loaded: calling it would crash the process
                raise FlowInternalError(
                    f"compiled LLVM module {self.name!r} needs symbol(s) the JIT cannot resolve: "
                    f"{', '.join(missing)}",
                    notes=["these usually come from compiler runtime helpers (libgcc_s) or a library "
                           "that is not loaded"])
        empty = llvm.parse_assembly("")
        empty.triple = target_machine().triple
        ee = llvm.create_mcjit_compiler(empty, _new_target_machine(parts[0].codegen_level))
        for p in parts:
            ee.add_object_file(llvm.ObjectFileRef.from_data(p.object_code))
        ee.finalize_object()
        self._engines.append((ee, [empty]))
        for p in parts:
            for sym in p.exports:
                llvm.add_symbol(sym, ee.get_function_address(sym))

    @classmethod
    def linked(cls, parts: list[Part], ir_text: str, *, name: str = "flowml_module"):
        """`parts` compiled and loaded in order (see the class docstring)."""
        return cls(ir_text, name=name, _parts=parts)

    def address(self, name: str) -> int:
        """The address of function `name` in the compiled code."""
        addr = 0
        for ee, _ in reversed(self._engines):  # (the last engine holds the entry points)
            addr = ee.get_function_address(name)
            if addr:
                break
        if not addr:
            raise FlowInternalError(f"no function {name!r} in compiled LLVM module {self.name!r}")
        return addr

    def cfunc(self, name: str, restype, *argtypes):
        """A ctypes function for `name` (CFUNCTYPE: the GIL is released while it runs).

        The returned object keeps this module (and so the machine code) alive.
        """
        f = ctypes.CFUNCTYPE(restype, *argtypes)(self.address(name))
        f._flowml_jit_module = self
        return f

    def optimized_ir(self) -> str:
        """The module's IR after the O3 pipeline (recomputed when the code came from a cache)."""
        if self._optimized_ir is None:
            with _LOCK:
                mod = _parse(self.ir_text, self.name)
                optimize(mod, self._speed_level)
                self._optimized_ir = str(mod)
        return self._optimized_ir

    def assembly(self) -> str:
        """Assembly text of the optimized module (generated again from a copy, for reading only)."""
        with _LOCK:
            mod = _parse(self.optimized_ir(), self.name)
            return target_machine().emit_assembly(mod)
