"""The fuse phase (flowml/passes/fuse.py) and the fused node (flowml/ir/fused.py).

- each fusion rule, shown on a small graph: an elementwise chain is one kernel; a reduction
  takes its elementwise producers; a value needed outside a region is computed once (unless
  cheap: then each kernel computes it again); an op over a smaller shape is not fused into a
  larger iteration space (but a scalar is); outputs and update values are materialized;
- on random graphs: every region is convex (no path leaves it and comes back), and the fused
  graph computes what the unfused one computed;
- the fused node's reference implementation, and its formula in IR dumps;
- kernel counts: W1 and W2 of the benchmark are ONE kernel each; the logistic-regression train
  step, an MLP step and softmax cross-entropy are pinned as regression values (today's counts:
  a change must be deliberate).
"""

from __future__ import annotations

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import flowml
from flowml.ir import lib as L
from flowml.ir.dump import fused_formula
from flowml.ir.fused import REDUCTIONS, Instr, fused
from flowml.ir.graph import Graph
from flowml.passes.fuse import find_groups
from flowml.passes.pipeline import optimize
from optimizer_helpers import T, assert_same_values, build_program, random_program, values

pytestmark = pytest.mark.usefixtures("verify_ir")  # the IR verifier after every phase

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


def _opt(outs, after=None, updates=()):
    g = outs[0].graph
    return optimize(g, [v.id for v in outs], list(updates), after=after)


def _fused_nodes(opt):
    g = opt.graph
    return [n for n in sorted(g.ancestors(opt.outputs + [n for _, n in opt.updates])) if g.op(n).name == "fused"]


def _formulas(opt):
    g = opt.graph
    return [fused_formula(g.attrs(n)["body"], g.attrs(n)["reduce"], [f"%{o}" for o in g.operands(n)])
            for n in _fused_nodes(opt)]


# ---------------------------------------------------------------- the rules, one by one


def test_an_elementwise_chain_is_one_kernel():
    g = Graph()
    x = L.input(g, "x", T("f64", 4))
    opt = _opt([L.exp(L.sin(x) * 2 + 1)])
    assert opt.kernels() == opt.fused_kernels() == 1
    assert _formulas(opt) == ["exp((sin(%0) * 2.0) + 1.0)"]


def test_a_reduction_takes_its_elementwise_producers():
    g = Graph()
    x, y = L.input(g, "x", T("f64", 4)), L.input(g, "y", T("f64", 4))
    opt = _opt([L.sum(L.exp(x) * y)])
    assert opt.kernels() == 1
    (n,) = _fused_nodes(opt)
    assert opt.graph.attrs(n)["reduce"] == ("sum", (0,), False)
    assert opt.graph.type(n) == T("f64")


@pytest.mark.parametrize("reduce", ["sum", "prod", "max", "min"])
def test_every_fusible_reduction(reduce):
    g = Graph()
    x = L.input(g, "x", T("f64", 2, 3))
    out = getattr(L, reduce)(L.cos(x) * 2, axis=1, keepdims=True)
    opt = _opt([out])
    (n,) = _fused_nodes(opt)
    assert opt.graph.attrs(n)["reduce"] == (reduce, (1,), True) and reduce in REDUCTIONS
    v = np.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(values(opt.graph, opt.outputs, {"x": v})[0],
                                  getattr(np, "max" if reduce == "max" else reduce if reduce != "min" else "min")(
                                      np.cos(v) * 2, axis=1, keepdims=True))


def test_a_shared_expensive_value_is_computed_once():
    """exp(x) feeds two kernels: it is its own kernel, read by both (not computed twice)."""
    g = Graph()
    x = L.input(g, "x", T("f64", 4))
    a = L.exp(x)
    opt = _opt([a + 1, L.sum(a)])
    assert opt.kernels() == 3
    assert _formulas(opt) == ["exp(%0)", "%1 + 1.0", "sum(%1, axis=(0,))"]


def test_a_shared_cheap_value_is_computed_in_each_kernel():
    """x + y feeds two kernels: an add is cheaper to compute again than to store and reload."""
    g = Graph()
    x, y = L.input(g, "x", T("f64", 4)), L.input(g, "y", T("f64", 4))
    t = x + y
    opt = _opt([L.exp(t), L.sin(t)])
    assert opt.kernels() == 2
    assert _formulas(opt) == ["exp(%0 + %1)", "sin(%0 + %1)"]


def test_a_smaller_producer_is_not_fused_into_a_larger_iteration_space():
    """exp(v) with v [3] under a [1000, 3] kernel would be computed 1000 times per element of v."""
    g = Graph()
    v, m = L.input(g, "v", T("f64", 3)), L.input(g, "M", T("f64", 1000, 3))
    opt = _opt([L.exp(v) + m])
    assert opt.kernels() == 2
    assert [opt.graph.type(n).shape for n in _fused_nodes(opt)] == [(3,), (1000, 3)]


def test_a_scalar_producer_is_fused():
    g = Graph()
    s, m = L.input(g, "s", T("f64")), L.input(g, "M", T("f64", 1000, 3))
    opt = _opt([L.exp(s) + m])
    assert opt.kernels() == 1


def test_outputs_and_updates_are_materialized():
    """A value the function returns is computed by its own kernel, even if another output
    could have fused it; so is a param's new value."""
    g = Graph()
    x = L.input(g, "x", T("f64", 4))
    w = L.param(g, "w", T("f64", 4))
    a = L.exp(x)
    new_w = w - 0.1 * a
    opt = _opt([a, a * 2], updates=[("w", new_w.id)])
    assert opt.kernels() == 3
    assert _formulas(opt) == ["exp(%0)", "%1 - (0.1 * %2)", "%2 * 2.0"]


def test_fusing_does_not_cross_matmul_or_other_non_elementwise_ops():
    g = Graph()
    x, w = L.input(g, "x", T("f64", 5, 3)), L.input(g, "w", T("f64", 3))
    opt = _opt([L.tanh(L.sigmoid(x) @ w)])
    names = sorted(opt.graph.op(n).name for n in opt.graph.ancestors(opt.outputs) if not opt.graph.op(n).leaf)
    assert names == ["fused", "fused", "matmul"]


# ---------------------------------------------------------------- random graphs

RANDOM = settings(max_examples=30, deadline=None)


@RANDOM
@given(data=st.data())
def test_fused_regions_are_closed_and_convex(data):
    """For every region (the nodes one fused node computes, keyed by its root):
    - every member feeds the root, so the root's value is the only one that leaves the region;
    - a member that is not itself materialized is used only inside regions that compute it
      (a cheap op may be computed again in several);
    - what a region reads from outside is materialized (a region's root, or a node no kernel
      computes), and none of it depends on the region's own root: no path leaves the region and
      comes back (convex)."""
    arrays, steps = random_program(data.draw, st, hnp)
    graph, roots = build_program(arrays, steps)
    spec = optimize(graph, roots, [], after="specialize")
    g = spec.graph
    needed = g.ancestors(spec.outputs)
    groups = find_groups(g, spec.outputs)
    regions: dict[int, set[int]] = {}
    for n, owners in groups.items():
        for r in owners:
            regions.setdefault(r, set()).add(n)
    for root, members in regions.items():
        assert root in members and root in groups[root]
        above = g.ancestors([root])
        for m in members:
            assert m in above, f"%{m} is in the region of %{root} but does not feed it"
            if m not in groups[m]:  # not materialized: every user must compute it
                for u in g.users(m):
                    if u in needed:
                        assert u in groups and groups[u] <= groups[m], (m, u, groups.get(u), groups[m])
            for o in g.operands(m):
                if o in members:
                    continue
                assert o not in groups or o in groups[o], f"%{root} reads %{o}, which no kernel materializes"
                assert root not in g.ancestors([o]), f"%{root}'s region reads %{o}, which depends on it"
    fz = optimize(graph, roots, [], after="fuse")  # builds (a region reading a value not yet built would fail)
    assert fz.fused_kernels() == len([r for r in regions if r in needed])


@RANDOM
@given(data=st.data())
def test_fusion_keeps_the_values(data):
    arrays, steps = random_program(data.draw, st, hnp)
    graph, roots = build_program(arrays, steps)
    feed = {f"x{i}": a for i, a in enumerate(arrays)}
    spec = optimize(graph, roots, [], after="specialize")
    fz = optimize(graph, roots, [], after="fuse")
    assert fz.graph.nodes(), "empty graph"
    kernels = []
    for n in fz.graph.ancestors(fz.outputs):
        op = fz.graph.op(n)
        assert op.leaf or not op.elementwise, f"an elementwise {op.name} outside any kernel"
        if op.name == "fused":
            kernels.append(n)
    for n, v in zip(kernels, values(fz.graph, kernels, feed)):  # each kernel computes what its type says
        t = fz.graph.type(n)
        assert (v.dtype, v.shape) == (t.dtype, tuple(t.shape)), f"fused %{n} : {t} computes {v.dtype}{list(v.shape)}"
    assert_same_values(values(spec.graph, spec.outputs, feed), values(fz.graph, fz.outputs, feed),
                       rtol=1e-13, atol=1e-300, what="fuse")


# ---------------------------------------------------------------- the fused node


def _fused_node(inputs, body, reduce=None, shape=None, dtype="float64"):
    g = Graph()
    xs = [L.input(g, f"x{i}", T("f64", *a.shape)) for i, a in enumerate(inputs)]
    out_shape = shape if reduce is None else None
    n = g.add(fused, [x.id for x in xs], {"body": tuple(body), "reduce": reduce, "shape": shape},
              type=T(dtype, *(out_shape if out_shape is not None else ())))
    return g, n


def test_fused_reference_implementation():
    """Value k < nin is operand k, value nin + i is body[i]; consts are literals; operands
    broadcast to the iteration space; the reduce comes last."""
    a = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    b = np.array([10.0, 20.0, 30.0])
    body = [Instr("const", (), (("value", 0.5),), "float64"),   # 2
            Instr("mul", (0, 2), (), "float64"),                # 3 = a * 0.5
            Instr("add", (3, 1), (), "float64"),                # 4 = a * 0.5 + b
            Instr("exp", (4,), (), "float64")]                  # 5
    out = fused.impl(a, b, body=tuple(body), reduce=None, shape=(2, 3))
    np.testing.assert_array_equal(out, np.exp(a * 0.5 + b))
    out = fused.impl(a, b, body=tuple(body[:3]), reduce=("max", (1,), True), shape=(2, 3))
    np.testing.assert_array_equal(out, np.max(a * 0.5 + b, axis=1, keepdims=True))
    # a bare reduction: the result is operand 0
    np.testing.assert_array_equal(fused.impl(a, body=(), reduce=("sum", (0,), False), shape=(2, 3)), a.sum(0))
    # a scalar body broadcast to the iteration space (symbolic dims resolved from env)
    from flowml.ir.types import sym
    out = fused.impl(np.float64(2.0), body=(Instr("neg", (0,), (), "float64"),), reduce=None,
                     shape=(sym("N"),), env={"N": 4})
    np.testing.assert_array_equal(out, np.full(4, -2.0))
    # a cast: each instruction has its result dtype
    out = fused.impl(a, body=(Instr("cast", (0,), (("dtype", np.dtype("float32")),), "float32"),),
                     reduce=("sum", (0, 1), False), shape=(2, 3))
    assert out.dtype == np.float32 and out == 21.0


def test_fused_formulas_in_dumps():
    """A value used twice is named once (t<i>); literals print as numbers; a reduce wraps the
    formula with its axis (and keepdims)."""
    body = (Instr("exp", (0,), (), "float64"),                 # 1: used twice
            Instr("const", (), (("value", 1.0),), "float64"),   # 2
            Instr("add", (2, 1), (), "float64"),                # 3
            Instr("div", (1, 3), (), "float64"))                # 4
    assert fused_formula(body, None, ["%3"]) == "t0 = exp(%3); t0 / (1.0 + t0)"
    assert fused_formula(body, ("sum", (1,), True), ["%3"]) == \
        "t0 = exp(%3); sum(t0 / (1.0 + t0), axis=(1,), keepdims=true)"
    assert fused_formula((), ("max", (0,), False), ["%7"]) == "max(%7, axis=(0,))"
    assert fused_formula((Instr("neg", (0,), (), "float64"), Instr("gt", (1, 0), (), "bool")), None, ["%1"]) \
        == "-%1 > %1"


def test_the_ir_dump_shows_a_fused_node_as_its_formula():
    model = flowml.loads("input x : f64[N]\nfn f(x) -> exp(x) / (1 + exp(x)) + x * x\n", backend="reference")
    assert model.f.ir().splitlines()[2] == "  %1 = fused[sigmoid(%0) + (%0 * %0)] : f64[N]  # <string>:2:12"


# ---------------------------------------------------------------- kernel counts

W1 = "input x : f32[N]\nfn w1(x) -> log(1 + exp(x)) * (1 / (1 + exp(-x))) + x * x\n"
W2 = "input x : f32[N]\ninput y : f32[N]\nfn w2(x, y) -> sum((x - y) ** 2)\n"

# W4 of the benchmark: an MLP 784-500-10, tanh hidden layer, softmax output, NLL + L2, SGD
MLP = """input x  : f32[N, 784]
input y  : i64[N]
param W1 : f32[784, 500] = uniform(-0.0684, 0.0684)
param b1 : f32[500]      = zeros
param W2 : f32[500, 10]  = uniform(-0.1086, 0.1086)
param b2 : f32[10]       = zeros
const lr = 0.01
const l2 = 0.0001

h    = tanh(x @ W1 + b1)
p    = softmax(h @ W2 + b2)
cost = -mean(log(p)[arange(N), y]) + l2 * (sum(W1 ** 2) + sum(W2 ** 2))
gW1, gb1, gW2, gb2 = grad(cost, W1, b1, W2, b2)

fn train(x, y) -> cost {
    W1 <- W1 - lr * gW1
    b1 <- b1 - lr * gb1
    W2 <- W2 - lr * gW2
    b2 <- b2 - lr * gb2
}
"""

SOFTMAX_XENT = """input z : f64[N, 10]
input y : i64[N]
cost = -mean(log(softmax(z))[arange(N), y])
gz   = grad(cost, z)
fn xent(z, y) -> cost, gz
"""


def _counts(source: str, fn: str) -> tuple[int, int]:
    opt = flowml.loads(source, backend="reference").functions[fn].optimized()
    return opt.kernels(), opt.fused_kernels()


def test_w1_is_one_kernel():
    model = flowml.loads(W1, backend="reference")
    opt = model.w1.optimized()
    assert (opt.kernels(), opt.fused_kernels()) == (1, 1)
    assert _formulas(opt) == ["(softplus(%0) * sigmoid(%0)) + (%0 * %0)"]
    x = np.array([-80.0, -3.0, 0.0, 0.5, 80.0], np.float32)
    want = np.logaddexp(0, x.astype(np.float64)) / (1 + np.exp(-x.astype(np.float64))) + x.astype(np.float64) ** 2
    np.testing.assert_allclose(model.w1(x), want.astype(np.float32), rtol=1e-6)


def test_w2_is_one_kernel():
    model = flowml.loads(W2, backend="reference")
    opt = model.w2.optimized()
    assert (opt.kernels(), opt.fused_kernels()) == (1, 1)
    (n,) = _fused_nodes(opt)
    assert opt.graph.attrs(n)["reduce"] == ("sum", (0,), False)
    assert _formulas(opt) == ["t0 = %0 - %1; sum(t0 * t0, axis=(0,))"]
    x, y = np.arange(5, dtype=np.float32), np.ones(5, np.float32)
    assert model.w2(x, y) == np.float32(15.0)


# (kernels, of which fused) today: pinned so that a change in fusion is noticed and deliberate
# (each train step's weight updates are gemm calls, flowml/passes/gemm.py: one kernel less each)
KERNEL_COUNTS = {
    "logreg train": (ROOT.joinpath("examples/logreg.flow").read_text(), "train", (10, 7)),
    "logreg predict": (ROOT.joinpath("examples/logreg.flow").read_text(), "predict", (2, 1)),
    "MLP train": (MLP, "train", (25, 14)),
    "softmax cross-entropy": (SOFTMAX_XENT, "xent", (8, 5)),
    "softmax regression train": (ROOT.joinpath("examples/softmax.flow").read_text(), "train", (19, 11)),
}


@pytest.mark.parametrize("name", list(KERNEL_COUNTS))
def test_kernel_counts(name):
    source, fn, expected = KERNEL_COUNTS[name]
    got = _counts(source, fn)
    assert got == expected, f"{name}: {got[0]} kernels ({got[1]} fused), pinned at {expected}"


def test_kernel_counts_without_fusion():
    """What fusion saves on the MLP step: one kernel per op after specialize, pinned too."""
    model = flowml.loads(MLP, backend="reference")
    assert model.train.optimized(after="specialize").kernels() == 49
    assert model.train.optimized(after="fuse").kernels() == model.train.optimized().kernels() == 25
    assert model.train.optimized(level=0).kernels() > 49
