"""The abstract syntax tree of a .flow program.

The parser (`flowml.lang.parser`) produces these nodes; the builder (`flowml.lang.build`) turns
them into IR. Every node carries the `Loc` of its first character.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import Loc

# ---------------------------------------------------------------- types


@dataclass
class TypeExpr:
    """`f64[N, 784]`, `i64[N]`, `f32` (a scalar: dims == [])."""

    dtype: str  # one of f32 f64 i32 i64 bool
    dims: list[int | str]  # ints and symbolic dim names; [] for a scalar
    loc: Loc


# ---------------------------------------------------------------- expressions


@dataclass
class Expr:
    loc: Loc


@dataclass
class Num(Expr):
    value: int | float


@dataclass
class Bool(Expr):
    value: bool


@dataclass
class Str(Expr):
    value: str


@dataclass
class Name(Expr):
    name: str


@dataclass
class BinOp(Expr):
    op: str  # + - * / // % ** @ == != < <= > >= and or
    left: Expr
    right: Expr


@dataclass
class UnaryOp(Expr):
    op: str  # - + not
    operand: Expr


@dataclass
class Keyword:
    name: str
    value: Expr
    loc: Loc


@dataclass
class Call(Expr):
    func: str
    func_loc: Loc
    args: list[Expr]
    kwargs: list[Keyword]


@dataclass
class Slice:
    """`start:stop:step` inside brackets; each part may be None."""

    start: Expr | None
    stop: Expr | None
    step: Expr | None
    loc: Loc


@dataclass
class Ellipsis_:
    """`...` inside brackets: as many full slices as the other items leave axes."""

    loc: Loc


@dataclass
class Index(Expr):
    """`value[item, item, ...]`; an item is an Expr (int or int array) or a Slice."""

    value: Expr
    items: list[Expr | Slice]


@dataclass
class Attr(Expr):
    """`value.name`: `.T` and `.shape` (then indexed: `x.shape[0]`)."""

    value: Expr
    name: str


@dataclass
class TupleExpr(Expr):
    """`(a, b)` — shapes and axis tuples, e.g. `reshape(x, (N, -1))`, `axis=(0, 1)`."""

    items: list[Expr]


@dataclass
class IfExpr(Expr):
    """`if cond then a else b` — lazy: only the chosen branch is evaluated."""

    cond: Expr
    then: Expr
    orelse: Expr


# ---------------------------------------------------------------- statements


@dataclass
class Stmt:
    loc: Loc


@dataclass
class SeedStmt(Stmt):
    """`seed 1234` — the model's seed for param initializers."""

    value: int


@dataclass
class InputDecl(Stmt):
    name: str
    type: TypeExpr


@dataclass
class ParamDecl(Stmt):
    name: str
    type: TypeExpr
    init: Expr  # e.g. normal(0, 1), uniform(-0.1, 0.1), zeros, ones, 0, 0.5


@dataclass
class ConstDecl(Stmt):
    name: str
    type: TypeExpr | None
    value: Expr


@dataclass
class Target:
    name: str
    loc: Loc


@dataclass
class Assign(Stmt):
    """`a = e` or, with tuple unpacking, `a, b = e`."""

    targets: list[Target]
    value: Expr


@dataclass
class Update(Stmt):
    """`w <- e` inside an `fn` body."""

    target: Target
    value: Expr


@dataclass
class Return(Stmt):
    """`return e` or `return a, b` inside a block `def`."""

    values: list[Expr]


@dataclass
class DefParam:
    name: str
    default: Expr | None
    loc: Loc


@dataclass
class DefDecl(Stmt):
    """`def f(a, b=1) = expr` (body == [], result == [expr]) or
    `def f(a) { stmts; return e1, e2 }` (body = the Assign statements, result = the returned exprs)."""

    name: str
    params: list[DefParam]
    body: list[Stmt]
    result: list[Expr]


@dataclass
class FnDecl(Stmt):
    """`fn train(x, y) -> out1, out2 { stmts }`; the outputs and the body are each optional."""

    name: str
    params: list[Target]
    outputs: list[Expr]
    body: list[Stmt] = field(default_factory=list)  # Assign and Update statements


@dataclass
class Module:
    stmts: list[Stmt]
    file: str
    source: str
