"""Tensor types: a dtype and a shape whose dims are ints or symbolic dims.

A symbolic dim is a monomial `coeff * N * M ...` (`Sym`), which is just enough algebra for
`reshape(x, (N, -1))` on `f64[N, 8, 8]` (giving `f64[N, 64]`) and for flattening a batch
(`f64[8*N]`). Two dims broadcast when they are equal or one of them is 1; a symbol never
silently broadcasts with a different symbol or int, so shape errors surface at build time.
"""

from __future__ import annotations

import ast

from dataclasses import dataclass
from typing import Union

import numpy as np

DTYPES = {
    "bool": np.dtype(bool),
    "i32": np.dtype(np.int32),
    "i64": np.dtype(np.int64),
    "f32": np.dtype(np.float32),
    "f64": np.dtype(np.float64),
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


def dtype_of(name_or_dtype) -> np.dtype:
    """The numpy dtype for 'f32' etc. or a numpy dtype-like (only the five flowml dtypes)."""
    if isinstance(name_or_dtype, str) and name_or_dtype in DTYPES:
        return DTYPES[name_or_dtype]
    dt = np.dtype(name_or_dtype)
    if dt not in DTYPE_NAMES:
        raise ValueError(f"unsupported dtype {dt}; flowml has {', '.join(DTYPES)}")
    return dt


def is_float(dt) -> bool:
    """Whether a dtype, in any of its spellings (np.dtype, numpy's name 'float64' as the kernel
    generators use, flowml's 'f64'), is a float."""
    return dtype_of(dt).kind == "f"


@dataclass(frozen=True, order=True)
class Sym:
    """A symbolic dim: `coeff * prod(names)`; names sorted, with repeats (N*N)."""

    names: tuple[str, ...]
    coeff: int = 1

    def __str__(self) -> str:
        body = "*".join(self.names)
        return body if self.coeff == 1 else f"{self.coeff}*{body}"

    def resolve(self, env: dict[str, int]) -> int:
        """The size in `env`; a derived name (N-1) not bound there is computed from the dims it
        is derived from (`resolve_name`), else KeyError."""
        value = self.coeff
        for n in self.names:
            v = env.get(n)
            if v is None:
                v = resolve_name(n, env)
                if v is None:
                    raise KeyError(n)
            value *= v
        return value


Dim = Union[int, Sym]


def sym(name: str) -> Sym:
    return Sym((name,))


def dim_mul(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return a * b
    if isinstance(a, int):
        a, b = b, a
    if isinstance(b, int):
        return Sym(a.names, a.coeff * b) if b != 0 else 0
    return Sym(tuple(sorted(a.names + b.names)), a.coeff * b.coeff)


def dim_div(a: Dim, b: Dim) -> Dim | None:
    """a / b when it divides exactly (as monomials), else None."""
    if isinstance(a, int) and isinstance(b, int):
        return a // b if b and a % b == 0 else None
    an, ac = (a.names, a.coeff) if isinstance(a, Sym) else ((), a)
    bn, bc = (b.names, b.coeff) if isinstance(b, Sym) else ((), b)
    if bc == 0 or ac % bc:
        return None
    rest = list(an)
    for n in bn:
        if n not in rest:
            return None
        rest.remove(n)
    coeff = ac // bc
    return Sym(tuple(rest), coeff) if rest else coeff


def dims_product(dims) -> Dim:
    out: Dim = 1
    for d in dims:
        out = dim_mul(out, d)
    return out


def dim_symbols(d: Dim) -> tuple[str, ...]:
    return d.names if isinstance(d, Sym) else ()


def bound_by_inputs(shape) -> bool:
    """Every dim is an int or a product of declared symbols (N, 8*N) — known once the inputs are
    bound; a derived dim (N-1, from a slice) is known only when the value is computed."""
    return all(isinstance(d, int) or all(n.isidentifier() for n in d.names) for d in shape)


def resolve_dim(d: Dim, env: dict[str, int]) -> int:
    return d.resolve(env) if isinstance(d, Sym) else d


def resolve_name(name: str, env: dict[str, int]) -> int | None:
    """The size a dim's name stands for in `env`: a declared dim's value, or a derived one's
    (`N-1`, `K+K`, `(H-3)//2+1`, `N[::2]`, `arange(1,N,2)`: names that `offset_dim`, concatenation, arange
    and the slice rule of `ops.indexing` write as arithmetic on other dims) computed from the dims it is derived
    from; None when it cannot be known before the value is computed."""
    if name in env:
        return env[name]
    try:
        tree = ast.parse(name, mode="eval").body
        value = _evaluate(tree, env)
    except (SyntaxError, KeyError, ValueError, TypeError):
        return None
    return max(int(value), 0)


def _evaluate(node, env: dict[str, int]) -> int:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.Name):
        return env[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_evaluate(node.operand, env)
    if isinstance(node, ast.BinOp) and type(node.op) in _ARITH:
        return _ARITH[type(node.op)](_evaluate(node.left, env), _evaluate(node.right, env))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "arange":
        return len(range(*(_evaluate(a, env) for a in node.args)))  # the length of arange(a, b, c)
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Slice):
        base = _evaluate(node.value, env)
        bounds = [None if v is None else _evaluate(v, env) for v in (node.slice.lower, node.slice.upper, node.slice.step)]
        return len(range(*slice(*bounds).indices(base)))
    raise ValueError(f"not a dim expression: {ast.dump(node)}")


_ARITH = {ast.Add: lambda a, b: max(a + b, 0), ast.Sub: lambda a, b: max(a - b, 0), ast.Mult: lambda a, b: a * b,
          ast.FloorDiv: lambda a, b: a // b}  # (`//`: a strided window's count, `(H-3)//2+1`)


@dataclass(frozen=True)
class TensorType:
    """dtype + shape. `weak` marks an untyped literal (`2`, `0.5`) whose dtype yields to what
    it meets, as Python scalars do in numpy (NEP 50)."""

    dtype: np.dtype
    shape: tuple[Dim, ...]
    weak: bool = False

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def dtype_name(self) -> str:
        return DTYPE_NAMES[self.dtype]

    def __str__(self) -> str:
        return f"{self.dtype_name}[{', '.join(map(str, self.shape))}]" if self.shape else self.dtype_name

    def with_dtype(self, dtype) -> "TensorType":
        return TensorType(dtype_of(dtype), self.shape)

    def with_shape(self, shape) -> "TensorType":
        return TensorType(self.dtype, tuple(shape), self.weak)

    def symbols(self) -> set[str]:
        return {n for d in self.shape for n in dim_symbols(d)}

    def concrete_shape(self, env: dict[str, int]) -> tuple[int, ...]:
        return tuple(resolve_dim(d, env) for d in self.shape)


def broadcast_shapes(*shapes: tuple[Dim, ...]) -> tuple[Dim, ...] | None:
    """numpy broadcasting over int and symbolic dims; None when the shapes do not broadcast."""
    ndim = max((len(s) for s in shapes), default=0)
    out: list[Dim] = []
    for axis in range(ndim):
        dim: Dim = 1
        for s in shapes:
            k = axis - (ndim - len(s))
            if k < 0:
                continue
            d = s[k]
            if d == 1:
                continue
            if dim == 1:
                dim = d
            elif d != dim:
                return None
        out.append(dim)
    return tuple(out)


def promote(*types: TensorType) -> tuple[np.dtype, bool]:
    """numpy type promotion with weak literals (NEP 50): the result dtype and whether it is weak.

    A weak literal only decides the kind: an int literal with f32 gives f32, a float literal with
    i32 gives f64 (numpy's default float), two literals promote as numpy would."""
    strong = [t.dtype for t in types if not t.weak]
    weak = [t.dtype for t in types if t.weak]
    if not strong:
        return np.result_type(*weak), True
    dt = np.result_type(*strong)
    for w in weak:
        if _kind_rank(w) > _kind_rank(dt):
            dt = np.result_type(dt, w)  # e.g. i32 with a float literal → f64
    return dt, False


def _kind_rank(dt: np.dtype) -> int:
    return {"b": 0, "i": 1, "u": 1, "f": 2}[dt.kind]


def scalar(dtype, weak: bool = False) -> TensorType:
    return TensorType(dtype_of(dtype), (), weak)
