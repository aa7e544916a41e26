"""Philox-4x32-10 random draws in LLVM IR, bit-identical with the numpy reference
(`flowml.ir.philox`: `words`, `uniform`, `normal`, `fold`).

`random_kernel_ir(name, dist, dtype)` defines

    void @<name>(ptr %args, i64 %start, i64 %end)

with %args -> four i64 words [output data address, seed, site, call]. It writes elements
[start, end) of the draw: element i is the reference's element i of a draw of any size (its
counter is (i mod 2^32, i >> 32, site, call), the key the seed's two halves), so the
(ptr, i64, i64) signature is `flowml_parallel_for`'s and a draw split across threads gives the
same numbers. The output address is that of element 0; nothing else is read from it.

The loop over elements vectorizes: the rounds' 32x32->64-bit products are `mul i64` of
zero-extended words (vpmuludq), and the float conversions and Box-Muller's log/cos are the
reference's own formulas (`log_unit`, `cos_turn`): integer bit operations, selects and IEEE
+ - * / sqrt with no fast-math flags, so LLVM may neither contract them into FMAs nor reorder
them, and every element rounds as numpy does.

`words_kernel_ir(name)` is the same loop writing each element's four raw words (known-answer
tests); `fold_ir(name)` defines `i64 @<name>(i64 %seed, i64 %step)`: `flowml.ir.philox.fold`.
Everything is one function each, with no globals, so the texts can go into any module.
"""

from __future__ import annotations

from ...ir import philox as ref
from .kernels import float_literal

DISTS = ("uniform", "normal")
DTYPES = {"f32": "float", "f64": "double", "float32": "float", "float64": "double"}
SQRT = "declare double @llvm.sqrt.f64(double)"  # the form kernels.py declares intrinsics in
ROUNDS = 10


def _i32(v: int) -> str:
    """An i32 literal for the 32-bit pattern `v` (written signed, as LLVM prints them)."""
    v &= 0xFFFFFFFF
    return str(v - (1 << 32) if v >= 1 << 31 else v)


def _f64(v: float) -> str:
    return float_literal(v, "float64")


class _Body:
    """Straight-line IR text: `emit` appends `%<stem>N = rhs` and returns the register."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.lines: list[str] = []
        self.n = 0

    def emit(self, rhs: str) -> str:
        self.n += 1
        reg = f"%{self.prefix}{self.n}"
        self.lines.append(f"  {reg} = {rhs}")
        return reg

    # ---- Philox: words of counter (c0..c3) under key (k0, k1), all i32 registers/literals

    def _mulhilo(self, m: int, c: str) -> tuple[str, str]:
        p = self.emit(f"mul i64 {self.emit(f'zext i32 {c} to i64')}, {m}")
        hi = self.emit(f"trunc i64 {self.emit(f'lshr i64 {p}, 32')} to i32")
        return hi, self.emit(f"trunc i64 {p} to i32")

    def philox(self, c: list[str], keys: list[tuple[str, str]]) -> list[str]:
        """`keys[r]` is round r's key (the key schedule is loop-invariant: see `key_schedule`)."""
        c0, c1, c2, c3 = c
        for k0, k1 in keys:
            hi0, lo0 = self._mulhilo(int(ref.M0), c0)
            hi1, lo1 = self._mulhilo(int(ref.M1), c2)
            c0 = self.emit(f"xor i32 {self.emit(f'xor i32 {hi1}, {c1}')}, {k0}")
            c2 = self.emit(f"xor i32 {self.emit(f'xor i32 {hi0}, {c3}')}, {k1}")
            c1, c3 = lo1, lo0
        return [c0, c1, c2, c3]

    def key_schedule(self, k0: str, k1: str) -> list[tuple[str, str]]:
        keys = [(k0, k1)]
        for r in range(1, ROUNDS):
            keys.append((self.emit(f"add i32 {k0}, {_i32(r * int(ref.W0))}"),
                         self.emit(f"add i32 {k1}, {_i32(r * int(ref.W1))}")))
        return keys

    def split64(self, v: str) -> tuple[str, str]:
        """(low word, high word) of i64 `v`."""
        return self.emit(f"trunc i64 {v} to i32"), self.emit(f"trunc i64 {self.emit(f'lshr i64 {v}, 32')} to i32")

    # ---- float conversions: the reference's formulas, operation for operation

    def fop(self, op: str, a: str, b: str, t: str = "double") -> str:
        return self.emit(f"{op} {t} {a}, {b}")  # no flags: IEEE, rounded once, never fused

    def uniform(self, w0: str, w1: str, t: str) -> str:
        if t == "float":
            x = self.emit(f"sitofp i32 {self.emit(f'lshr i32 {w0}, 8')} to float")
            return self.fop("fmul", x, float_literal(2.0 ** -24, "float32"), "float")
        hi = self.emit(f"shl i64 {self.emit(f'zext i32 {w0} to i64')}, 21")
        lo = self.emit(f"zext i32 {self.emit(f'lshr i32 {w1}, 11')} to i64")
        x = self.emit(f"sitofp i64 {self.emit(f'or i64 {hi}, {lo}')} to double")  # < 2^53: exact
        return self.fop("fmul", x, _f64(2.0 ** -53))

    def poly(self, x: str, coeffs) -> str:
        """c0 + x (c1 + x (c2 + ...)), Horner's rule as the reference writes it."""
        acc = _f64(coeffs[-1])
        for c in reversed(coeffs[:-1]):
            acc = self.fop("fadd", _f64(c), self.fop("fmul", x, acc))
        return acc

    def log_unit(self, u: str) -> str:
        """`ref.log_unit`."""
        bits = self.emit(f"bitcast double {u} to i64")
        hx = self.emit(f"add i64 {self.emit(f'lshr i64 {bits}, 32')}, {0x3FF00000 - 0x3FE6A09E}")
        k = self.emit(f"sub i64 {self.emit(f'lshr i64 {hx}, 20')}, {0x3FF}")
        mantissa = self.emit(f"and i64 {hx}, {0xFFFFF}")
        mhi = self.emit(f"shl i64 {self.emit(f'add i64 {mantissa}, {0x3FE6A09E}')}, 32")
        mbits = self.emit(f"or i64 {mhi}, {self.emit(f'and i64 {bits}, {0xFFFFFFFF}')}")
        f = self.fop("fsub", self.emit(f"bitcast i64 {mbits} to double"), _f64(1.0))
        hfsq = self.fop("fmul", self.fop("fmul", _f64(0.5), f), f)
        s = self.fop("fdiv", f, self.fop("fadd", _f64(2.0), f))
        z = self.fop("fmul", s, s)
        w = self.fop("fmul", z, z)
        lg = ref.LG
        t1 = self.fop("fmul", w, self.poly(w, lg[1::2]))
        t2 = self.fop("fmul", z, self.poly(w, lg[0::2]))
        dk = self.emit(f"sitofp i64 {k} to double")
        acc = self.fop("fmul", s, self.fop("fadd", hfsq, self.fop("fadd", t2, t1)))
        acc = self.fop("fadd", acc, self.fop("fmul", dk, _f64(ref.LN2_LO)))
        acc = self.fop("fadd", self.fop("fsub", acc, hfsq), f)
        return self.fop("fadd", acc, self.fop("fmul", dk, _f64(ref.LN2_HI)))

    def cos_turn(self, w: str) -> str:
        """`ref.cos_turn`."""
        quadrant = self.emit(f"lshr i32 {w}, 30")
        r = self.emit(f"and i32 {w}, {0x3FFFFFFF}")
        flip = self.emit(f"icmp ugt i32 {r}, {1 << 29}")
        m = self.emit(f"select i1 {flip}, i32 {self.emit(f'sub i32 {1 << 30}, {r}')}, i32 {r}")
        x = self.fop("fmul", self.emit(f"sitofp i32 {m} to double"), _f64(ref.TURN))
        z = self.fop("fmul", x, x)
        zz = self.fop("fmul", z, z)
        S, C = ref.SIN, ref.COS
        rs = self.fop("fadd", self.poly(z, S[1:4]), self.fop("fmul", self.fop("fmul", z, zz), self.poly(z, S[4:6])))
        sin = self.fop("fadd", x, self.fop("fmul", self.fop("fmul", z, x), self.fop("fadd", _f64(S[0]), self.fop("fmul", z, rs))))
        rc = self.fop("fadd", self.fop("fmul", z, self.poly(z, C[0:3])),
                      self.fop("fmul", self.fop("fmul", zz, zz), self.poly(z, C[3:6])))
        hz = self.fop("fmul", _f64(0.5), z)
        one_hz = self.fop("fsub", _f64(1.0), hz)
        tail = self.fop("fadd", self.fop("fsub", self.fop("fsub", _f64(1.0), one_hz), hz), self.fop("fmul", z, rc))
        cos = self.fop("fadd", one_hz, tail)
        odd = self.emit(f"trunc i32 {quadrant} to i1")
        v = self.emit(f"select i1 {self.emit(f'xor i1 {odd}, {flip}')}, double {sin}, double {cos}")
        q1 = self.emit(f"add i32 {quadrant}, 1")
        neg = self.emit(f"icmp eq i32 {self.emit(f'and i32 {q1}, 2')}, 2")  # quadrant 1 or 2
        return self.emit(f"select i1 {neg}, double {self.emit(f'fneg double {v}')}, double {v}")

    def normal(self, w2: str, w3: str, t: str) -> str:
        """`ref.normal`: sqrt(-2 log u1) cos(2 pi u2) in double, then rounded to `t`."""
        n = self.emit(f"add i64 {self.emit(f'zext i32 {w2} to i64')}, 1")
        u1 = self.fop("fmul", self.emit(f"sitofp i64 {n} to double"), _f64(2.0 ** -32))
        radius = self.emit(f"call double @llvm.sqrt.f64(double {self.fop('fmul', _f64(-2.0), self.log_unit(u1))})")
        z = self.fop("fmul", radius, self.cos_turn(w3))
        return z if t == "double" else self.emit(f"fptrunc double {z} to float")


def random_kernel_ir(name: str, dist: str, dtype: str, *, declarations: bool = True) -> str:
    """IR text defining `void @<name>(ptr %args, i64 %start, i64 %end)` (see the module doc).
    `dist` is "uniform" or "normal", `dtype` "f32"/"f64" (or "float32"/"float64"). A normal
    kernel calls `llvm.sqrt.f64`; with `declarations=False` the text leaves out its declaration
    (`SQRT`), for a module that declares it once for all its kernels."""
    if dist not in DISTS or dtype not in DTYPES:
        raise ValueError(f"no random kernel for dist={dist!r}, dtype={dtype!r}")
    t = DTYPES[dtype]

    def element(body, words, out, i):
        w0, w1, w2, w3 = words
        value = body.uniform(w0, w1, t) if dist == "uniform" else body.normal(w2, w3, t)
        p = body.emit(f"getelementptr {t}, ptr {out}, i64 {i}")
        body.lines.append(f"  store {t} {value}, ptr {p}, align {4 if t == 'float' else 8}")

    decl = f"{SQRT}\n\n" if dist == "normal" and declarations else ""
    return decl + _kernel(name, f"{dist} {dtype}", element)


def words_kernel_ir(name: str) -> str:
    """Like `random_kernel_ir`, but element i is its four raw uint32 words, written to
    out[4i .. 4i+3] (`flowml.ir.philox.words`): for known-answer tests of the generator."""

    def element(body, words, out, i):
        base = body.emit(f"mul i64 {i}, 4")
        for j, w in enumerate(words):
            p = body.emit(f"getelementptr i32, ptr {out}, i64 {body.emit(f'add i64 {base}, {j}')}")
            body.lines.append(f"  store i32 {w}, ptr {p}, align 4")

    return _kernel(name, "words", element)


def _kernel(name: str, what: str, element) -> str:
    """The loop over [start, end): each element's Philox words, then `element(body, words, out,
    "%i")` appends the instructions that convert and store them."""
    head = _Body("a")
    seed, site, call = (head.emit(f"load i64, ptr {head.emit(f'getelementptr i64, ptr %args, i64 {j}')}, align 8")
                        for j in range(1, 4))
    k0, k1 = head.split64(seed)
    keys = head.key_schedule(k0, k1)
    site32, call32 = head.emit(f"trunc i64 {site} to i32"), head.emit(f"trunc i64 {call} to i32")
    out = head.emit(f"inttoptr i64 {head.emit('load i64, ptr %args, align 8')} to ptr")
    body = _Body("v")
    lo, hi = body.split64("%i")
    # (getelementptr without `inbounds`: a caller may pass the address of element 0 of a draw
    # whose buffer holds only the part [start, end).)
    element(body, body.philox([lo, hi, site32, call32], keys), out, "%i")
    return f"""; Philox-4x32-10 {what}: elements [start, end) of a draw (flowml.backends.llvm.philox)
define void @{name}(ptr %args, i64 %start, i64 %end) {{
entry:
{chr(10).join(head.lines)}
  %empty = icmp sge i64 %start, %end
  br i1 %empty, label %done, label %loop

loop:
  %i = phi i64 [ %start, %entry ], [ %i.next, %loop ]
{chr(10).join(body.lines)}
  %i.next = add i64 %i, 1
  %more = icmp slt i64 %i.next, %end
  br i1 %more, label %loop, label %done

done:
  ret void
}}
"""


def fold_ir(name: str) -> str:
    """IR text defining `i64 @<name>(i64 %seed, i64 %step)`, `flowml.ir.philox.fold`: the key
    of step `step` of a loop whose body draws with key `seed`."""
    b = _Body("f")
    k0, k1 = b.split64("%seed")
    lo, hi = b.split64("%step")
    w0, w1, _, _ = b.philox([lo, hi, "-1", "-1"], b.key_schedule(k0, k1))
    high = b.emit(f"shl i64 {b.emit(f'zext i32 {w1} to i64')}, 32")
    v = b.emit(f"or i64 {high}, {b.emit(f'zext i32 {w0} to i64')}")
    return f"""; Philox-4x32-10 loop-step key (flowml.backends.llvm.philox)
define i64 @{name}(i64 %seed, i64 %step) {{
entry:
{chr(10).join(b.lines)}
  ret i64 {v}
}}
"""
