"""Transcendental functions in generated IR, vectorized through glibc's libmvec.

LLVM 22 (through llvmlite) has no usable vector math library: `llvm.exp.v8f32` is scalarized
back into 8 `expf` calls, and `-vector-library=` is not reachable. What works ("recipe A" in
docs/llvm_facts.md) is telling the loop vectorizer about a vector variant directly:

* the scalar call goes to a name LLVM does not know as a libcall (`flowml_mvec_expf`), bound
  at run time with `llvm.add_symbol` -- so LLVM never rewrites it into `llvm.exp`;
* the call site carries
  `"vector-function-abi-variant"="_ZGV_LLVM_N8v_flowml_mvec_expf(_ZGVdN8v_expf)"`, naming
  libmvec's 8-wide AVX2 variant;
* the vector variant is declared and kept alive through GlobalDCE by `@llvm.compiler.used`.

The vectorized loop then calls `_ZGVdN8v_expf`; the scalar remainder (and any loop that does
not vectorize) calls `flowml_mvec_expf`. That scalar name is bound to a tiny wrapper that splats
its argument, calls the same vector variant and returns lane 0 -- not to libm's `expf`, whose
results differ from libmvec's by an ulp or two. So every element gets bit-identical results
whether it lands in the vector body or the remainder, i.e. results do not depend on how a loop
is split across threads or on alignment. (Found by the 1-vs-2-thread test: with libm in the
remainder, chunk boundaries changed results.)

With AVX2, float32 uses the 8-wide variants (`_ZGVdN8v_*f`), float64 the 4-wide ones (`_ZGVdN4v_*`);
with AVX-512, the 16- and 8-wide ones (`_ZGVeN16v_*f`, `_ZGVeN8v_*`).
A few float64 variants miss the 2-ulp bar and are replaced (SCALAR_ONLY, INLINE below). Without
libmvec or AVX2+FMA, calls go to plain scalar libm (`flowml_expf` = `expf`): correct, slower.

Usage from a code generator::

    lib = MathLib()                               # loads libmvec, binds flowml_* names
    body.append(f"%y = {lib.call('exp', 'f32', '%x')}")
    module_text = ... + lib.declarations()        # declarations, attributes, llvm.compiler.used

Composite functions (sigmoid, softplus...) are not here: their formulas are in
flowml/backends/scalar.py, shared by every native backend, and call `exp`/`log1p` through this.

Accuracy (max ulp against numpy in float64 / long double, 10M samples): see tests and report.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
import struct
import threading

import llvmlite.binding as llvm

from ...errors import FlowInternalError
from .jit import SYMBOL_PROVIDERS, _init_native, host_has_features, use_avx512

# name -> number of arguments. All exist in glibc 2.36's libm (scalar) and libmvec (vector).
UNARY = ("exp", "exp2", "exp10", "expm1", "log", "log2", "log10", "log1p",
         "sin", "cos", "tan", "sinh", "cosh", "tanh", "asin", "acos", "atan",
         "asinh", "acosh", "atanh", "cbrt", "erf", "erfc")
BINARY = ("pow", "atan2", "hypot")
ARITY = {**{n: 1 for n in UNARY}, **{n: 2 for n in BINARY}}

# libmvec variants that miss flowml's accuracy bar (4 ulp float32, 2 ulp float64), measured on
# 10M samples against numpy evaluated in float64 (for f32) or long double (for f64), with glibc
# 2.36. These are called as scalar libm functions instead (~1 ulp, slower).
SCALAR_ONLY: dict[tuple[str, str], str] = {
    ("expm1", "f64"): "libmvec 3 ulp (e.g. x=0.0031067), glibc scalar 1 ulp",
    ("sin", "f64"): "libmvec 3 ulp, glibc scalar 1 ulp",
    ("cos", "f64"): "libmvec 3 ulp, glibc scalar 1 ulp",
    ("tan", "f64"): "libmvec 3 ulp, glibc scalar 1 ulp",
    ("asin", "f64"): "libmvec 3 ulp, glibc scalar 1 ulp",
    ("acosh", "f64"): "libmvec 3 ulp, glibc scalar 2 ulp",
}
# (cbrt f64 is 3 ulp both ways, so it keeps the faster libmvec variant.)

# libmvec results clamped to the function's range. Found by an exhaustive float32 scan:
# `_ZGVdN8v_sinf` returns +-1.0000001 for 78 inputs (e.g. sin(4.7122736f)), `_ZGVdN8v_cosf`
# for 4 (e.g. cos(518.3628f)) -- 1 ulp, within the bar, but log1p(sin x) or acos(sin x) would be
# NaN. The clamp is applied in a vector wrapper that the loop vectorizer calls instead.
CLAMP: dict[tuple[str, str], tuple[float, float]] = {
    ("sin", "f32"): (-1.0, 1.0),
    ("cos", "f32"): (-1.0, 1.0),
}


def _hex(v: float) -> str:
    """A double constant in IR text form (exact; decimal text must be exactly representable)."""
    return "0x" + struct.pack(">d", v).hex().upper()


def _exp_f64_ir(name: str) -> str:
    """float64 exp in plain IR arithmetic, <= 1 ulp, which the loop vectorizer widens by itself.

    libmvec's `_ZGVdN4v_exp` is 3 ulp off at worst (e.g. x=462.2205), above the 2-ulp bar, and
    glibc's scalar exp is 3.3x slower; this is faster than both (4.7 ms for 2^23 values here,
    against 7.0 ms for libmvec and 23 ms for scalar). Method: x = k*ln2 + r with |r| <= ln2/2
    (k = rint(x/ln2), r by two FMAs with ln2 split hi+lo), exp(r) by its Taylor series to degree 13
    (truncation ~0.02 ulp) in Horner form with FMAs, then times 2^k applied as two factors
    2^(k>>1) * 2^(k-(k>>1)) so that results near the bottom of the range round once into
    denormals and results above the top overflow to inf. x is clamped to +-750 first (exp is 0 or
    inf there anyway), and NaN is passed through with a select because fptosi(NaN) is poison.
    """
    ln2_hi = float.fromhex("0x1.62e42fefa39efp-1")
    ln2_lo = float.fromhex("0x1.abc9e3b39803fp-56")
    lines = [
        f"define internal double @{name}(double %x) alwaysinline nounwind willreturn memory(none) {{",
        "  %lo = fcmp olt double %x, -750.0",
        "  %x1 = select i1 %lo, double -750.0, double %x",
        "  %hi = fcmp ogt double %x1, 750.0",
        "  %x2 = select i1 %hi, double 750.0, double %x1",
        "  %nan = fcmp uno double %x, 0.0",
        "  %xc = select i1 %nan, double 0.0, double %x2",
        f"  %t = fmul double %xc, {_hex(1 / math.log(2))}",
        "  %kf = call double @llvm.rint.f64(double %t)",
        f"  %r0 = call double @llvm.fma.f64(double %kf, double {_hex(-ln2_hi)}, double %xc)",
        f"  %r = call double @llvm.fma.f64(double %kf, double {_hex(-ln2_lo)}, double %r0)",
    ]
    prev = _hex(1 / math.factorial(13))
    for n in range(12, -1, -1):
        coef = _hex(1 / math.factorial(n))
        lines.append(f"  %p{n} = call double @llvm.fma.f64(double {prev}, double %r, double {coef})")
        prev = f"%p{n}"
    lines += ["  %k = fptosi double %kf to i32", "  %k1 = ashr i32 %k, 1", "  %k2 = sub i32 %k, %k1"]
    for i in (1, 2):  # 2^k_i built from its exponent bits; k_i is in [-541, 541], always normal
        lines += [f"  %e{i} = add i32 %k{i}, 1023", f"  %w{i} = zext i32 %e{i} to i64",
                  f"  %b{i} = shl i64 %w{i}, 52", f"  %s{i} = bitcast i64 %b{i} to double"]
    lines += ["  %m1 = fmul double %p0, %s1", "  %m2 = fmul double %m1, %s2",
              "  %res = select i1 %nan, double %x, double %m2", "  ret double %res", "}"]
    return "\n".join(lines)


# Functions computed by IR defined in the module itself (internal, always inlined), used instead
# of libmvec when vectorizing. Intrinsics such as llvm.fma need no declaration in LLVM 22 (and a
# second declaration would be a parse error), so none is emitted.
INLINE = {("exp", "f64"): ("flowml_exp_f64_inline", _exp_f64_ir)}

_IR_TYPE = {"f32": "float", "f64": "double"}
def _isa() -> tuple[str, dict[str, int]]:
    """The vector ABI's ISA letter and lanes: AVX-512 ('e', 512-bit) where `jit.use_avx512()`,
    else AVX2 ('d', 256-bit)."""
    if use_avx512():
        return "e", {"f32": 16, "f64": 8}
    return "d", {"f32": 8, "f64": 4}


_ISA, _LANES = _isa()
LIBMVEC = "libmvec.so.1"


def _dtype(dtype) -> str:
    s = str(dtype)
    s = {"float32": "f32", "float64": "f64", "float": "f32", "double": "f64"}.get(s, s)
    if s not in _IR_TYPE:
        raise FlowInternalError(f"vecmath: unsupported dtype {dtype!r} (f32 or f64)")
    return s


def scalar_name(fn: str, dtype) -> str:
    """libm's name: 'expf' for f32, 'exp' for f64."""
    return fn + ("f" if _dtype(dtype) == "f32" else "")


def flowml_name(fn: str, dtype) -> str:
    """Scalar-mode callee ('flowml_expf'): unknown to LLVM, bound to libm's `expf` at run time."""
    return "flowml_" + scalar_name(fn, dtype)


def mvec_scalar_name(fn: str, dtype) -> str:
    """Vector-mode scalar callee ('flowml_mvec_expf'): lane 0 of libmvec's variant."""
    return "flowml_mvec_" + scalar_name(fn, dtype)


def vector_name(fn: str, dtype) -> str:
    """libmvec's AVX2 variant: '_ZGVdN8v_expf', '_ZGVdN4vv_pow'."""
    d = _dtype(dtype)
    return f"_ZGV{_ISA}N{_LANES[d]}{'v' * ARITY[fn]}_{scalar_name(fn, d)}"


_lock = threading.Lock()


def _libm_address(name: str) -> int | None:
    addr = llvm.address_of_symbol(name)  # libm is normally already mapped into Python
    if addr:
        return addr
    path = ctypes.util.find_library("m")
    if path is None:
        return None
    try:
        return ctypes.cast(getattr(ctypes.CDLL(path), name), ctypes.c_void_p).value
    except AttributeError:
        return None


@functools.lru_cache(maxsize=None)
def libmvec_available() -> bool:
    """True when libmvec loads and the host has AVX2 (the variants use ymm registers)."""
    if not host_has_features("avx2", "fma"):
        return False
    try:
        llvm.load_library_permanently(LIBMVEC)
    except RuntimeError:
        return False
    return llvm.address_of_symbol(vector_name("exp", "f32")) is not None


def vector_callee(fn: str, dtype) -> str:
    """What the vectorized loop calls: libmvec's variant, or flowml's clamping wrapper of it."""
    d = _dtype(dtype)
    return "flowml_mvecv_" + scalar_name(fn, d) if (fn, d) in CLAMP else vector_name(fn, d)


def _wrappers_ir(fn: str, d: str) -> str:
    """Run-time helpers for one libmvec function:

    * `flowml_mvecv_<f>(<n x T>...)` (only for CLAMP functions): libmvec's variant, clamped;
    * `flowml_mvec_<f>(T...)`: lane 0 of the vector callee applied to splat(x...) -- the scalar
      callee, so scalar remainders give exactly the vector lanes' results.
    """
    t, n = _IR_TYPE[d], _LANES[d]
    vt = f"<{n} x {t}>"
    k = ARITY[fn]
    vargs = ", ".join(f"{vt} %v{i}" for i in range(k))
    lines = [f"declare {vt} @{vector_name(fn, d)}({', '.join([vt] * k)})"]
    if (fn, d) in CLAMP:
        lo, hi = CLAMP[(fn, d)]
        splat = lambda c: f"<{', '.join([f'{t} {_hex(c)}'] * n)}>"  # noqa: E731
        lines += [
            f"define {vt} @{vector_callee(fn, d)}({vargs}) nounwind {{",
            f"  %r = call {vt} @{vector_name(fn, d)}({', '.join(f'{vt} %v{i}' for i in range(k))})",
            # fcmp is false for NaN, so NaN passes through both selects
            f"  %lo = fcmp olt {vt} %r, {splat(lo)}",
            f"  %r1 = select <{n} x i1> %lo, {vt} {splat(lo)}, {vt} %r",
            f"  %hi = fcmp ogt {vt} %r1, {splat(hi)}",
            f"  %r2 = select <{n} x i1> %hi, {vt} {splat(hi)}, {vt} %r1",
            f"  ret {vt} %r2",
            "}",
        ]
    lines.append(f"define {t} @{mvec_scalar_name(fn, d)}({', '.join(f'{t} %a{i}' for i in range(k))}) nounwind {{")
    for i in range(k):  # splat, not lane 0 only: garbage lanes could hit libmvec's slow paths
        lines.append(f"  %v{i}.0 = insertelement {vt} poison, {t} %a{i}, i64 0")
        lines.append(f"  %v{i} = shufflevector {vt} %v{i}.0, {vt} poison, <{n} x i32> zeroinitializer")
    lines.append(f"  %r = call {vt} @{vector_callee(fn, d)}({vargs})")
    lines += [f"  %s = extractelement {vt} %r, i64 0", f"  ret {t} %s", "}"]
    return "\n".join(lines)


_wrapper_modules = []  # JitModules holding the flowml_mvec_* wrappers made so far, kept alive


def _libmvec_functions():
    return [(fn, d) for fn in ARITY for d in _IR_TYPE if (fn, d) not in SCALAR_ONLY and (fn, d) not in INLINE]


@functools.lru_cache(maxsize=None)
def _wrapper_of() -> dict[str, tuple[str, str]]:
    """Wrapper symbol -> its (function, dtype)."""
    return {name: (fn, d) for fn, d in _libmvec_functions()
            for name in {mvec_scalar_name(fn, d), vector_callee(fn, d)} - {vector_name(fn, d)}}


def _provide_wrappers(missing: list[str]) -> None:
    """The JIT's symbol provider: compiles the wrappers among `missing` (one small module, through
    the object cache) and binds them. On demand, so that a process compiles only the wrappers
    its modules call (all of them cost a cold process ~50 ms)."""
    wanted = sorted({_wrapper_of()[s] for s in missing if s in _wrapper_of()})
    if not wanted or not libmvec_available():
        return
    from .cache import compile_cached
    text = "\n".join(_wrappers_ir(fn, d) for fn, d in wanted) + "\n"
    module = compile_cached(text, "vecmath-wrappers", name="flowml_vecmath_wrappers")
    _wrapper_modules.append(module)
    for fn, d in wanted:
        for name in {mvec_scalar_name(fn, d), vector_callee(fn, d)} - {vector_name(fn, d)}:
            llvm.add_symbol(name, module.address(name))


SYMBOL_PROVIDERS.append(_provide_wrappers)


def ensure_symbols() -> bool:
    """Bind every `flowml_*` scalar name to libm. Idempotent. Returns whether libmvec vector
    variants can be used. (The `flowml_mvec_*` lane wrappers are compiled when a module that
    calls them is loaded: `_provide_wrappers`.)

    Must run before a module that calls these functions is JIT-compiled (also before loading one
    from the object cache).
    """
    _init_native()  # makes the process's own symbols (libm) visible to address_of_symbol
    with _lock:
        for fn in ARITY:
            for d in _IR_TYPE:
                name = flowml_name(fn, d)
                if llvm.address_of_symbol(name) is None:
                    addr = _libm_address(scalar_name(fn, d))
                    if addr:
                        llvm.add_symbol(name, addr)
        return libmvec_available()


class MathLib:
    """Collects the math functions one module uses; emits call sites and the module-level text.

    `vectorize=None` uses libmvec when available; False forces scalar libm calls. `attr_base` is
    the first attribute-group number this object uses (#attr_base, #attr_base+1, ...); pick it so
    it does not clash with the module's own attribute groups.
    """

    def __init__(self, vectorize: bool | None = None, attr_base: int = 1000):
        available = ensure_symbols()
        self.vectorize = available if vectorize is None else bool(vectorize and available)
        self._attr_base = attr_base
        # (fn, dtype) -> "libmvec" (with attribute group), "inline" or "scalar", in first-use order
        self._used: dict[tuple[str, str], tuple[str, int | None]] = {}

    def mode(self, fn: str, dtype) -> str:
        """How calls to `fn` are compiled: 'libmvec', 'inline' (own IR) or 'scalar' (libm)."""
        d = _dtype(dtype)
        if not self.vectorize:
            return "scalar"
        if (fn, d) in INLINE:
            return "inline"
        return "scalar" if (fn, d) in SCALAR_ONLY else "libmvec"

    def is_vectorized(self, fn: str, dtype) -> bool:
        return self.mode(fn, dtype) != "scalar"

    def _use(self, fn: str, d: str) -> tuple[str, int | None]:
        if fn not in ARITY:
            raise FlowInternalError(f"vecmath: unknown function {fn!r}")
        key = (fn, d)
        if key not in self._used:
            mode = self.mode(fn, d)
            group = None
            if mode == "libmvec":
                group = self._attr_base + sum(1 for m, _ in self._used.values() if m == "libmvec")
            self._used[key] = (mode, group)
        return self._used[key]

    def call(self, fn: str, dtype, *args: str) -> str:
        """The right-hand side of a scalar call: `call float @flowml_expf(float %v) #1000`.

        `args` are operand texts (`%v`, `1.0`); their count must match the function's arity.
        Write it in a loop body; the loop vectorizer does the rest.
        """
        d = _dtype(dtype)
        if fn not in ARITY:
            raise FlowInternalError(f"vecmath: unknown function {fn!r}")
        if len(args) != ARITY[fn]:
            raise FlowInternalError(f"vecmath: {fn} takes {ARITY[fn]} argument(s), got {len(args)}")
        mode, group = self._use(fn, d)
        t = _IR_TYPE[d]
        callee = {"inline": INLINE.get((fn, d), ("",))[0], "libmvec": mvec_scalar_name(fn, d),
                  "scalar": flowml_name(fn, d)}[mode]
        text = f"call {t} @{callee}({', '.join(f'{t} {a}' for a in args)})"
        return text if group is None else f"{text} #{group}"

    # -- module-level text ---------------------------------------------------------------

    def vector_symbols(self) -> list[str]:
        """libmvec names this module's calls may be vectorized to (for `llvm.compiler.used`)."""
        return [vector_callee(fn, d) for (fn, d), (m, _) in self._used.items() if m == "libmvec"]

    def declarations(self, compiler_used: bool = True) -> str:
        """Declarations, inline definitions, attribute groups and (unless `compiler_used=False`,
        for a module that builds its own `@llvm.compiler.used` from `vector_symbols()`) the
        compiler.used global. Append it once to the module text."""
        lines = []
        for (fn, d), (mode, group) in self._used.items():
            t = _IR_TYPE[d]
            if mode == "inline":
                name, gen = INLINE[(fn, d)]
                lines.append(gen(name))
                continue
            params = ", ".join([t] * ARITY[fn])
            callee = flowml_name(fn, d) if mode == "scalar" else mvec_scalar_name(fn, d)
            # memory(none): lets LLVM hoist/CSE the call; errno is never read by flowml.
            lines.append(f"declare {t} @{callee}({params}) memory(none) nounwind willreturn")
            if mode == "scalar":
                continue
            n = _LANES[d]
            vt = f"<{n} x {t}>"
            vname = vector_callee(fn, d)
            lines.append(f"declare {vt} @{vname}({', '.join([vt] * ARITY[fn])}) memory(none) nounwind willreturn")
            abi = f"_ZGV_LLVM_N{n}{'v' * ARITY[fn]}_{callee}({vname})"
            lines.append(f'attributes #{group} = {{ "vector-function-abi-variant"="{abi}" }}')
        syms = self.vector_symbols()
        if compiler_used and syms:
            # Without this the vector declaration is unused until the vectorizer runs, GlobalDCE
            # deletes it first, and the loop is not vectorized.
            lines.append(f"@llvm.compiler.used = appending global [{len(syms)} x ptr] "
                         f"[{', '.join('ptr @' + s for s in syms)}], section \"llvm.metadata\"")
        return "\n".join(lines) + "\n"
