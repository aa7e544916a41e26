"""gemm: a product and what is added to it as one BLAS call (Theano's gemm optimization).

An SGD update of a dense layer's weights reads, once derivatives are taken,

    W - lr * (x.T @ g + 2 * l2 * W)

-- a matrix product, then a pass over its result that scales it and adds a multiple of W. BLAS
does both in one call, `C <- alpha * A @ B + beta * C`, and with C the param's own array the
update is done in place (the memory plan, `Op.accumulates_into`): no buffer for the product, no
elementwise pass over it. This pass finds each value that is a linear combination

    alpha * (a @ b) + beta * c      (sums, differences, negations, products by scalar constants)

of one matrix product (a a matrix, b a matrix or vector) and one other value of the product's
shape and dtype, where everything inside the combination -- the product included -- is used by
nothing else (else the product would be computed twice), and replaces it by `gemm(a, b, c)`.

It runs at the start of the fuse phase: after the derivatives (gemm's own derivative rules are
there for completeness, not needed), and it needs each node's users, which the rewrite rules
never look at.
"""

from __future__ import annotations

from collections import Counter

from ..ir import ops as P
from ..ir.graph import Graph

_LINEAR = (P.add, P.sub, P.neg, P.mul)
_DEPTH = 12  # how far down a combination is followed (an update is a few ops deep)


def _scalar(graph: Graph, n: int) -> float | None:
    """The value of a one-element float constant, else None."""
    if graph.op(n) is not P.const:
        return None
    value = graph.attrs(n)["value"]
    if value.size != 1 or value.dtype.kind != "f":
        return None
    return float(value.reshape(()))


def _combination(graph: Graph, n: int) -> tuple[dict[int, float], set[int]] | None:
    """n as {term: coefficient} over its linear ops, with the inner nodes it went through (n
    included); None when n is not linear."""
    shape, dtype = graph.type(n).shape, graph.type(n).dtype
    terms: dict[int, float] = {}
    inner: set[int] = set()
    stack = [(n, 1.0, 0)]
    while stack:
        m, coeff, depth = stack.pop()
        op, t = graph.op(m), graph.type(m)
        if op in _LINEAR and depth < _DEPTH and t.shape == shape and t.dtype == dtype:
            operands = graph.operands(m)
            if op is P.neg:
                inner.add(m)
                stack.append((operands[0], -coeff, depth + 1))
                continue
            if op is P.mul:
                scalars = [_scalar(graph, o) for o in operands]
                k = 0 if scalars[0] is not None else 1 if scalars[1] is not None else None
                if k is not None and graph.type(operands[1 - k]).shape == shape:
                    inner.add(m)
                    stack.append((operands[1 - k], coeff * scalars[k], depth + 1))
                    continue
            elif all(graph.type(o).shape == shape and graph.type(o).dtype == dtype for o in operands):
                inner.add(m)
                a, b = operands
                stack.append((a, coeff, depth + 1))
                stack.append((b, -coeff if op is P.sub else coeff, depth + 1))
                continue
        terms[m] = terms.get(m, 0.0) + coeff
    return (terms, inner) if inner else None


def _gemm_parts(graph: Graph, n: int, users: dict[int, list[int]]):
    """(a, b, c, alpha, beta) when n can be one gemm call, else None."""
    found = _combination(graph, n)
    if found is None:
        return None
    terms, inner = found
    products = {m: p for m in terms if (p := _product(graph, m)) is not None}
    if len(terms) != 2 or len(products) != 1:
        return None
    ((term, product),) = products.items()
    (c,) = [m for m in terms if m != term]
    a, b = graph.operands(product)
    ta, tb, t = graph.type(a), graph.type(b), graph.type(term)
    if ta.ndim != 2 or tb.ndim not in (1, 2) or not (ta.dtype == tb.dtype == t.dtype) or t.dtype.kind != "f":
        return None
    if graph.type(c).shape != t.shape or graph.type(c).dtype != t.dtype:
        return None
    # nothing inside is used outside (n itself aside): replacing n removes it all
    if any(u not in inner | {term} for m in inner - {n} | {term, product} for u in users.get(m, ())):
        return None
    coefficients = {o for m in inner if graph.op(m) is P.mul for o in graph.operands(m) if _scalar(graph, o) is not None}
    return a, b, c, terms[term], terms[c], term != product, tuple(sorted(inner | {term, product} | coefficients))


def _product(graph: Graph, m: int) -> int | None:
    """The matmul that term m is: m itself, or the matmul by a one-column matrix whose column
    m reshapes into a vector (`x.T @ g[:, None]` as derivatives spell a matrix-vector product)."""
    if graph.op(m) is P.matmul:
        return m
    if graph.op(m) is P.reshape:
        (src,) = graph.operands(m)
        b = graph.operands(src)[1] if graph.op(src) is P.matmul else None
        if (b is not None and graph.type(b).ndim == 2 and graph.type(b).shape[1] == 1
                and tuple(graph.type(src).shape) == tuple(graph.type(m).shape) + (1,)):
            return src
    return None


GEMM = "fuse: alpha * (a @ b) + beta * c -> gemm(a, b, c)"  # (how provenance names a gemm node)


def gemm_updates(graph: Graph, roots: list[int], stats: Counter, steps: list | None = None
                 ) -> tuple[Graph, list[int]]:
    """A new graph where each linear combination of one product and one value is a gemm.
    `steps` (a list): gets the rewrite's (map, fires), as `fuse.fuse` gives them."""
    order = sorted(graph.ancestors(roots))
    users: dict[int, list[int]] = {}
    for n in order:
        for o in graph.operands(n):
            users.setdefault(o, []).append(n)
    for r in roots:
        users.setdefault(r, []).append(-1)  # (a root is used: by the fn's caller)
    replaced: dict[int, tuple] = {}
    for n in reversed(order):  # outermost first: a combination inside a replaced one is gone
        if graph.op(n) in (P.add, P.sub) and n not in replaced:
            parts = _gemm_parts(graph, n, users)
            if parts is not None:
                replaced[n] = parts
    if not replaced:
        return graph, roots  # (the same graph: nothing for provenance to record)
    needed: set[int] = set()
    stack = list(roots)
    while stack:
        m = stack.pop()
        if m not in needed:
            needed.add(m)
            stack.extend(replaced[m][:3] if m in replaced else graph.operands(m))
    new = Graph()
    mapping: dict[int, int] = {}
    fires: list[tuple[str, tuple[int, ...], int, int]] = []
    for m in sorted(needed):
        d = graph.data(m)
        if m in replaced:
            a, b, c, alpha, beta, column, taken = replaced[m]
            start = new.next_id
            b_new = mapping[b]
            if column:  # the one-column matrix as the vector it holds
                b_new = new.add(P.reshape, [b_new], {"shape": graph.type(b).shape[:1]}, loc=graph.loc(b))
            mapping[m] = new.add(P.gemm, [mapping[a], b_new, mapping[c]], {"alpha": alpha, "beta": beta},
                                 loc=d["loc"], name=d["name"])
            fires.append((GEMM, taken, start, new.next_id))
            stats["fuse: products with their updates as one gemm"] += 1
        else:
            mapping[m] = new.add(d["op"], [mapping[o] for o in graph.operands(m)], d["attrs"],
                                 loc=d["loc"], name=d["name"], type=d["type"])
    if steps is not None:
        steps.append((mapping, fires))
    return new, [mapping[r] for r in roots]
