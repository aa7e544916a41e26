"""ONNX export (docs/onnx.md): every zoo fn without updates exported, checked by onnx.checker,
run by onnxruntime and compared with the reference backend; a dynamic batch axis; clean errors
for what has no ONNX form; the CLI."""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest

import flowml
from flowml.cli import main, synthesize_inputs

onnx = pytest.importorskip("onnx")  # (the `onnx` extra; the test extra installs it)
ort = pytest.importorskip("onnxruntime")

EXAMPLES = sorted(glob.glob("examples/*.flow"))
# Whole-model ops with no ONNX converter: these fns must fail with a clean error naming them.
UNSUPPORTED = {("examples/rnn.flow", "predict"): "scan", ("examples/rnn.flow", "evaluate"): "scan"}
# rbm.flow spelled in f32 does not build (its Gibbs loop's carried state is f64 before a step and f32 after); it
# runs in f64 only.
NO_F32_TWIN = {"examples/rbm.flow"}
RTOL = {np.dtype(np.float64): 1e-6, np.dtype(np.float32): 1e-4}


def _exportable(files):
    """(file, fn) of every fn without updates (the predict / error / evaluate kind)."""
    return [(f, name) for f in files for name, decl in flowml.parse_program(open(f).read(), f).functions.items()
            if not decl.updates]


def _load(path: str, dtype: str):
    """The zoo model in f64 as written, or with every f64 spelled f32 (onnxruntime's CPU Conv has
    no double kernel, so the f64 LeNet is checked but only its f32 twin runs)."""
    source = open(path).read()
    if dtype == "f32":
        source = source.replace("f64", "f32")
    return flowml.loads(source, backend="reference", file=path, seed=0)


_models: dict = {}


def _model(path, dtype):
    if (path, dtype) not in _models:
        _models[path, dtype] = _load(path, dtype)
    return _models[path, dtype]


def _session(model_proto):
    return ort.InferenceSession(model_proto.SerializeToString(), providers=["CPUExecutionProvider"])


def _inputs(fn, n: int, seed: int) -> dict:
    return synthesize_inputs(fn, fn.model.program, {"N": n, "y": 10}, {}, np.random.RandomState(seed))


def _runs_in_onnxruntime(proto) -> bool:
    return not any(node.op_type == "Conv" and _is_double(proto, node.input[0]) for node in proto.graph.node)


def _is_double(proto, name) -> bool:
    inferred = onnx.shape_inference.infer_shapes(proto)
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input):
        if vi.name == name:
            return vi.type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    return False


def _compare(fn, sess, inputs):
    expected = fn(**inputs)
    expected = expected if isinstance(expected, tuple) else (expected,)
    got = sess.run(None, inputs)
    assert len(got) == len(expected)
    for e, g in zip(expected, got):
        e = np.asarray(e)
        assert g.dtype == e.dtype and g.shape == e.shape, (g.dtype, g.shape, e.dtype, e.shape)
        if e.dtype.kind == "f":
            np.testing.assert_allclose(g, e, rtol=RTOL[e.dtype], atol=RTOL[e.dtype] * 1e-3)
        else:
            np.testing.assert_array_equal(g, e)


@pytest.mark.parametrize("dtype", ["f64", "f32"])
@pytest.mark.parametrize("path,name", [c for c in _exportable(EXAMPLES) if c not in UNSUPPORTED])
def test_zoo_fn_exports_and_matches_onnxruntime(path, name, dtype):
    if dtype == "f32" and path in NO_F32_TWIN:
        return
    fn = _model(path, dtype).functions[name]
    proto = fn.to_onnx()
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version == 18
    batch = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param == "N"  # the batch axis stays dynamic
    if dtype == "f64" and not _runs_in_onnxruntime(proto):
        assert "lenet" in path  # (the only zoo model with a conv)
        return
    sess = _session(proto)
    for n, seed in ((7, 0), (3, 1)):  # two batch sizes through one session
        _compare(fn, sess, _inputs(fn, n, seed))


def test_digits_lenet_error_equal_after_loading_trained_params(tmp_path):
    """The f32 LeNet's error on the digits, params changed from their initial values."""
    model = _load("examples/lenet.flow", "f32")
    rng = np.random.default_rng(0)
    for name in model.params:
        model.params[name] = rng.normal(0, 0.3, model.params[name].shape).astype(np.float32)
    data = np.load("examples/data/digits.npz")
    inputs = {"X": data["X"][:50].astype(np.float32), "y": data["y"][:50].astype(np.int64)}
    path = tmp_path / "lenet.onnx"
    flowml.to_onnx(model.error, path)
    _compare(model.error, _session(onnx.load(str(path))), inputs)


@pytest.mark.parametrize("path,name", sorted(UNSUPPORTED))
def test_unsupported_op_is_a_located_error(path, name):
    fn = _model(path, "f64").functions[name]
    with pytest.raises(flowml.FlowError) as e:
        fn.to_onnx()
    text = str(e.value)
    assert f"op '{UNSUPPORTED[path, name]}' has no ONNX converter" in text
    assert text.startswith(f"{path}:")  # located at the op's source line


def test_random_draw_is_a_clean_error():
    m = flowml.loads("input x : f64[N, 3]\nfn noisy(x) -> x + normal(0, 1, shape=(N, 3))\n",
                     backend="reference", file="noisy.flow")
    with pytest.raises(flowml.FlowError, match="op 'random' has no ONNX converter"):
        m.noisy.to_onnx()


def test_fn_with_updates_is_refused():
    m = _model("examples/logreg.flow", "f64")
    with pytest.raises(flowml.FlowError, match="it updates params"):
        m.train.to_onnx()


@pytest.mark.parametrize("dtype", ["f64", "f32"])
def test_python_builder_fn_exports_elementwise_reductions_and_indexing(dtype):
    flowml.reset_default_graph()
    x = flowml.tensor("x", f"{dtype}[N, 4]")
    w = flowml.param("w", np.linspace(-1, 1, 4).astype(dtype.replace("f", "float")))
    erf = flowml.erf if dtype == "f32" else flowml.tanh  # (onnxruntime's CPU Erf has no double kernel)
    m = flowml.where(x > 0, flowml.log1p(flowml.abs(x)), erf(x) * w)
    outs = [flowml.logsumexp(m, axis=1), flowml.max(m, axis=0, keepdims=True), flowml.prod(m + 2, axis=1),
            flowml.argmin(m, axis=0), flowml.concatenate([m, flowml.transpose(x[:, :4].T)], axis=0),
            flowml.softmax(m, axis=0), flowml.sqrt(x * x) ** 1.5 - flowml.minimum(x, w),
            flowml.mean(flowml.cast((x < -1) | ~(x < 1), "f64")), flowml.maximum(x, 0.5) != x,
            x[1:, ::-2][:, None, -1], x[-1], x[:-1:2, 1:3], flowml.transpose(x)[flowml.arange(3) - 2],
            flowml.min(m, axis=1), flowml.sum(m), flowml.argmin(m, keepdims=True), flowml.mean(m, axis=(0, 1))]
    f = flowml.function([x], outs, backend="reference")
    sess = _session(flowml.to_onnx(f))
    for n in (5, 2):
        inputs = {"x": np.random.default_rng(n).normal(size=(n, 4)).astype(w.dtype)}
        _compare(f, sess, inputs)


def test_cli_export(tmp_path, capsys):
    out = tmp_path / "mlp.onnx"
    assert main(["export", "examples/mlp.flow", "--fn", "error", "-o", str(out)]) == 0
    assert "opset 18" in capsys.readouterr().out
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    assert [i.name for i in proto.graph.input] == ["X", "y"]
    trained = {"W1": np.full((64, 100), 0.25), "b2": np.arange(10.0)}
    np.savez(tmp_path / "p.npz", **trained)
    assert main(["export", "examples/mlp.flow", "--fn", "error", "--load-params", str(tmp_path / "p.npz"),
                 "-o", str(out)]) == 0
    initializers = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer}
    for name, value in trained.items():
        np.testing.assert_array_equal(initializers[name], value)
    assert main(["export", "examples/mlp.flow", "--fn", "nope", "-o", str(out)]) == 1
    assert "no fn named 'nope'" in capsys.readouterr().err
    assert main(["export", "examples/rnn.flow", "--fn", "predict", "-o", str(tmp_path / "r.onnx")]) == 1
    err = capsys.readouterr().err
    assert "op 'scan' has no ONNX converter" in err and "Traceback" not in err
    assert not os.path.exists(tmp_path / "r.onnx")


def test_conv_padding_stride_and_overlapping_pools():
    """The attribute conventions: flowml's ((top, bottom), (left, right)) padding is ONNX's
    pads [top, left, bottom, right]; strides and pool windows as (h, w)."""
    flowml.reset_default_graph()
    x = flowml.tensor("x", "f32[N, 2, 9, 7]")
    w = flowml.param("w", np.random.default_rng(0).normal(size=(3, 2, 3, 2)).astype(np.float32))
    y = flowml.conv2d(x, w, stride=(2, 1), padding=((2, 0), (1, 3)))
    outs = [y, flowml.max_pool2d(y, (3, 2), stride=(1, 2))]
    f = flowml.function([x], outs, backend="reference")
    sess = _session(f.to_onnx())
    for n in (2, 1):
        _compare(f, sess, {"x": np.random.default_rng(n).normal(size=(n, 2, 9, 7)).astype(np.float32)})


UNARY = ["exp", "log", "log1p", "expm1", "sqrt", "tanh", "sigmoid", "softplus", "relu", "abs", "sin", "cos",
         "sign", "erf", "erfc", "neg"]


@pytest.mark.parametrize("dtype", ["f64", "f32"])
def test_every_elementwise_converter(dtype):
    """Each elementwise op (checked to be in the exported graph: the optimizer keeps it) against
    the reference backend, in one fn per dtype."""
    from flowml.interop.onnx_export import EXCLUDED_PHASES
    from flowml.passes.pipeline import optimize
    flowml.reset_default_graph()
    x = flowml.tensor("x", f"{dtype}[N, 3]")
    y = flowml.tensor("y", f"{dtype}[N, 3]")
    k = flowml.tensor("k", "i64[N]")
    pos = flowml.abs(x) + 0.5
    # (onnxruntime's CPU Erf has no double kernel: erf and erfc run in f32 only)
    unary = [u for u in UNARY if dtype == "f32" or u not in ("erf", "erfc")]
    outs = [-x if u == "neg" else getattr(flowml, u)(pos if u in ("log", "sqrt") else x) for u in unary]
    outs += [x + y, x - y, x * y, x / y, pos ** y, flowml.maximum(x, y), flowml.minimum(x, y),
             x == y, x != y, x < y, x <= y, x > y, x >= y, (x > 0) & (y > 0), (x > 0) | (y > 0), ~(x > y),
             flowml.where(x > y, x, 2), flowml.cast(x, "i64"), flowml.cast(k, dtype), x + k[:, None],
             flowml.stop_gradient(x), flowml.broadcast_to(k, (2,) + (k.shape[0],)),
             flowml.onehot(k, 4, dtype), flowml.argmax(x), flowml.argmax(x, axis=0, keepdims=True)]
    f = flowml.function([x, y, k], outs, backend="reference")
    opt = optimize(f.model.program.graph, [v.id for _, v in f.decl.outputs], [], exclude=EXCLUDED_PHASES)
    present = {opt.graph.op(n).name for n in opt.graph.ancestors(opt.outputs)}
    for op in unary + ["add", "sub", "mul", "div", "pow", "maximum", "minimum", "eq", "ne", "lt", "le", "gt", "ge",
                       "and", "or", "not", "where", "cast", "broadcast_to", "onehot", "argmax"]:
        assert op in present, op
    sess = _session(f.to_onnx())
    for n in (4, 1):
        rng = np.random.default_rng(n)
        inputs = {"x": rng.normal(size=(n, 3)).astype(dtype.replace("f", "float")),
                  "y": rng.normal(size=(n, 3)).astype(dtype.replace("f", "float")),
                  "k": rng.integers(-4, 4, size=n)}
        inputs["y"][0, 0] = inputs["x"][0, 0]  # (one equal pair for the comparisons)
        _compare(f, sess, inputs)


def test_without_the_onnx_package_export_says_how_to_install(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "onnx", None)  # (import onnx raises ImportError)
    with pytest.raises(flowml.FlowError, match=r"pip install 'flowml\[onnx\]'"):
        _model("examples/logreg.flow", "f64").predict.to_onnx()
