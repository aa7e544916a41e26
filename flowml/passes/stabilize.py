"""Stabilize: rewrite formulas that overflow, underflow or cancel into forms that don't.

Written naively, `log(1 + exp(x))` is inf at x = 800 and `log(1 - sigmoid(x))` is -inf at x = 40;
the right sides below are exact there. The optimizer takes derivatives again after this phase
(see `rewrite.Rebuild`), so gradients are those of the stable forms too: d softplus = sigmoid.
"""

from __future__ import annotations

import math

from ..ir import lib as L
from ..ir import ops as P
from ..ir.graph import Graph
from ..ir.lib import Var
from ..ir.types import DTYPES
from .rewrite import Rule, rule


def _single_axis(a) -> bool:
    return isinstance(a, tuple) and len(a) == 1


# log(erfc(x)) for large x: erfc underflows (x > 26 in f64, > 9 in f32), so use the asymptotic
# series log erfc(x) = -x² - log(x) - log(π)/2 + log(Σ (-1)ⁿ (2n-1)!! / (2x²)ⁿ) beyond a switch
# point where its first terms are accurate to the dtype's precision.
_ERFC_SWITCH = {DTYPES["f32"]: 5.0, DTYPES["f64"]: 10.0}
_ERFC_TERMS = 10


def log_erfc(x: Var) -> Var:
    switch = _ERFC_SWITCH.get(x.dtype, 10.0)
    small = x < switch
    # each branch only sees inputs it is accurate and finite for (so its gradient is too); the
    # clamps are `where`s, not minimum/maximum, which would split the derivative at x == switch
    near = L.where(small, x, switch)
    far = L.where(small, switch, x)
    z = 1 / (2 * far * far)
    series, term = 1, 1
    for n in range(1, _ERFC_TERMS + 1):
        term = term * z * -(2 * n - 1)
        series = series + term
    asymptotic = -(far * far) - L.log(far) - 0.5 * math.log(math.pi) + L.log(series)
    return L.where(small, L.log(L.erfc(near)), asymptotic)


LN2 = math.log(2.0)


def log1mexp(x: Var) -> Var:
    """log(1 - exp(-x)) for x > 0 (Maechler 2012): log(-expm1(-x)) below ln 2, where 1 - exp(-x)
    cancels, log1p(-exp(-x)) above it, where expm1(-x) is -1 to the last bit. Each branch sees
    only the inputs it is accurate for (clamped by `where`s, so its gradient is finite too); for
    x <= 0 it is -inf or NaN, as the naive form."""
    small = x < LN2
    near = L.where(small, x, LN2)
    far = L.where(small, LN2, x)
    return L.where(small, L.log(-L.expm1(-near)), L.log1p(-L.exp(-far)))


def _not_log1mexp_branch(x: Var) -> bool:
    """log1p(-exp(-where(x0 < ln2, ln2, x0))) is the far branch `log1mexp` built: not again."""
    if x.op is not P.where:
        return True
    cond, a, _ = x.graph.operands(x.id)
    return not (x.graph.op(cond) is P.lt and x.graph.op(a) is P.const)


def log_det(a: Var) -> Var:
    """log(det(a)) from slogdet: finite where det over- or underflows; nan for a negative det
    and -inf for a singular a, as the naive form."""
    sign, logabs = L.slogdet(a)
    return L.where(sign < 0, math.nan, logabs)


def _not_clamped(x: Var) -> bool:
    """log(erfc(where(x0 < c, x0, c))) is the near branch `log_erfc` built: don't rewrite it again."""
    if x.op is not P.where:
        return True
    cond, a, c = x.graph.operands(x.id)
    return not (x.graph.op(cond) is P.lt and x.graph.operands(cond)[0] == a and x.graph.op(c) is P.const)


@rule("-log(softmax(x))[arange(N), y] -> categorical_crossentropy(x, y)", roots=("index",))
def categorical_crossentropy(graph: Graph, n: int):
    if graph.op(n) is not P.index:
        return None
    spec = graph.attrs(n)["spec"]
    operands = graph.operands(n)
    if spec != (("arr", 1), ("arr", 2)) or len(operands) != 3:
        return None
    ls, rows, labels = operands
    if graph.op(ls) is not P.log_softmax or graph.attrs(ls)["axis"] != 1 or graph.type(ls).ndim != 2:
        return None
    x = graph.operands(ls)[0]
    xt = graph.type(x)
    if not isinstance(xt.shape[1], int) or graph.type(labels).ndim != 1:
        return None
    if graph.op(rows) is not P.arange:
        return None
    a = graph.attrs(rows)
    if (a["start"], a["step"]) != (0, 1) or a["stop"] != xt.shape[0]:
        return None
    return -L.categorical_crossentropy(Var(graph, x), Var(graph, labels))


@rule("log(softmax(x)[i...]) -> log_softmax(x)[i...]", roots=("log",))
def log_of_picked_softmax(graph: Graph, n: int):
    if graph.op(n) is not P.log:
        return None
    (picked,) = graph.operands(n)
    if graph.op(picked) is not P.index:
        return None
    sm, *arrays = graph.operands(picked)
    if graph.op(sm) is not P.softmax:
        return None
    ls = L.log_softmax(Var(graph, graph.operands(sm)[0]), axis=graph.attrs(sm)["axis"])
    return L.apply(P.index, [ls] + [Var(graph, a) for a in arrays], spec=graph.attrs(picked)["spec"])


RULES = [
    Rule("log(1 + x) -> log1p(x)"),
    Rule("log(1 - x) -> log1p(-x)"),
    Rule("exp(x) - 1 -> expm1(x)"),
    Rule("log1p(exp(x)) -> softplus(x)"),
    Rule("log(sigmoid(x)) -> -softplus(-x)"),
    Rule("1 - sigmoid(x) -> sigmoid(-x)"),
    Rule("log1p(-sigmoid(x)) -> -softplus(x)"),
    Rule("exp(x) / (1 + exp(x)) -> sigmoid(x)"),
    Rule("1 / (1 + exp(-x)) -> sigmoid(x)"),
    Rule("1 / (1 + exp(x)) -> sigmoid(-x)"),
    Rule("log(softmax(x, axis=a)) -> log_softmax(x, axis=a)"),
    log_of_picked_softmax,
    categorical_crossentropy,
    Rule("exp(x) / sum(exp(x), axis=a, keepdims=True) -> softmax(x, axis=a[0])",
         when=lambda x, a: _single_axis(a)),
    Rule("log(sum(exp(x), axis=a, keepdims=k)) -> logsumexp(x, axis=a, keepdims=k)"),
    Rule("log(exp(x)) -> x"),
    Rule("log1p(-exp(-x)) -> log1mexp(x)", when=lambda x: _not_log1mexp_branch(x) and x.dtype.kind == "f",
         env={"log1mexp": log1mexp}),
    Rule("log(det(a)) -> log_det(a)", env={"log_det": log_det}),
    Rule("log(abs(det(a))) -> slogdet(a)[1]"),
    Rule("inv(a) @ b -> solve(a, b)"),
    Rule("sqrt(x * x) -> abs(x)"),
    Rule("sqrt(x * x + y * y) -> hypot(x, y)"),
    Rule("log(exp(x) + exp(y)) -> logaddexp(x, y)"),
    Rule("1 - erf(x) -> erfc(x)"),
    Rule("1 + erf(x) -> erfc(-x)"),
    Rule("log(erfc(x)) -> log_erfc(x)", when=lambda x: _not_clamped(x) and x.dtype.kind == "f",
         env={"log_erfc": log_erfc}),
]
