"""ONNX import (docs/onnx.md, "Import"): every exportable zoo fn exported and imported back
gives the same outputs; the Shape -> Gather -> Concat -> Reshape chains PyTorch writes become
a reshape to a symbolic dim; errors name the node, its op type and the opset; `import flowml`
does not load onnx."""

from __future__ import annotations

import glob
import subprocess
import sys

import numpy as np
import pytest

import flowml
from flowml.cli import main, synthesize_inputs
from flowml.interop.flow_writer import write_flow

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

EXAMPLES = sorted(glob.glob("examples/*.flow"))
NOT_EXPORTABLE = {("examples/rnn.flow", "predict"), ("examples/rnn.flow", "evaluate")}  # (scan)
ROUND_TRIPS = [(f, name) for f in EXAMPLES for name, decl in flowml.parse_program(open(f).read(), f).functions.items()
               if not decl.updates and (f, name) not in NOT_EXPORTABLE]


def _outputs(result):
    return result if isinstance(result, tuple) else (result,)


@pytest.mark.parametrize("path,name", ROUND_TRIPS)
def test_zoo_fn_exported_and_imported_gives_the_same_outputs(path, name):
    model = flowml.load(path, backend="reference", seed=0)
    rng = np.random.default_rng(1)
    for pname in model.params:  # (not the initial values: the initializers must carry the params)
        if model.params[pname].dtype.kind == "f":
            model.params[pname] = model.params[pname] + rng.normal(0, 0.1, model.params[pname].shape)
    fn = model.functions[name]
    imported = flowml.from_onnx(fn.to_onnx(), backend="reference")
    (back,) = imported.functions.values()
    assert back.name == name and back.input_names == fn.input_names
    # and written as .flow (what `flowml import` writes), loaded again with its params
    text, arrays = write_flow(imported)
    again = flowml.loads(text, backend="reference", file="imported.flow")
    again.params.update(arrays)
    for n, seed in ((7, 0), (3, 1)):  # the batch axis stays symbolic: one import, two sizes
        inputs = synthesize_inputs(fn, model.program, {"N": n, "y": 10}, {}, np.random.RandomState(seed))
        expected = _outputs(fn(**inputs))
        for got in (_outputs(back(**inputs)), _outputs(again.functions[name](**inputs))):
            assert len(got) == len(expected)
            for e, g in zip(expected, got):
                assert g.dtype == e.dtype and g.shape == e.shape
                np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-12)


def test_imported_lenet_runs_on_llvm_as_on_the_reference_backend():
    model = flowml.load("examples/lenet.flow", backend="reference", seed=0)
    proto = model.error.to_onnx()
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(5, 64)), rng.integers(0, 10, size=5)
    ref = flowml.from_onnx(proto, backend="reference").error(x, y)
    llvm = flowml.from_onnx(proto, backend="llvm").error(x, y)
    np.testing.assert_allclose(llvm, ref, rtol=1e-12)
    np.testing.assert_allclose(ref, model.error(x, y), rtol=1e-12)


def _torch_style_mlp(path=None):
    """An MLP with the flatten PyTorch writes: Shape -> Gather -> Unsqueeze -> Concat ->
    Reshape, a Gemm and a Relu, a dynamic batch dim 'batch_size'."""
    rng = np.random.default_rng(0)
    w1, b1 = rng.normal(size=(16, 12)).astype(np.float32), rng.normal(size=16).astype(np.float32)
    nodes = [
        helper.make_node("Shape", ["input"], ["shape"], name="/Shape"),
        helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.array(0, np.int64)), name="/C0"),
        helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0, name="/Gather"),
        helper.make_node("Unsqueeze", ["batch", "axes0"], ["batch1"], name="/Unsqueeze"),
        helper.make_node("Concat", ["batch1", "minus1"], ["flat_shape"], axis=0, name="/Concat"),
        helper.make_node("Reshape", ["input", "flat_shape"], ["flat"], name="/Reshape"),
        helper.make_node("Gemm", ["flat", "fc1.weight", "fc1.bias"], ["h"], transB=1, name="/fc1/Gemm"),
        helper.make_node("Relu", ["h"], ["output"], name="/Relu"),
    ]
    inits = [numpy_helper.from_array(w1, "fc1.weight"), numpy_helper.from_array(b1, "fc1.bias"),
             numpy_helper.from_array(np.array([0], np.int64), "axes0"),
             numpy_helper.from_array(np.array([-1], np.int64), "minus1")]
    graph = helper.make_graph(nodes, "main_graph",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch_size", 3, 4])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch_size", 16])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(proto, full_check=True)
    return proto, w1, b1


def test_pytorch_flatten_chain_becomes_a_reshape_to_the_batch_dim(tmp_path):
    proto, w1, b1 = _torch_style_mlp()
    path = tmp_path / "mlp.onnx"
    onnx.save_model(proto, str(path))
    model = flowml.from_onnx(path, backend="reference")
    fn = model.predict  # (PyTorch names every graph main_graph: the fn is predict)
    assert "batch_size" in fn.signature
    assert sorted(model.params) == ["fc1_bias", "fc1_weight"]  # float initializers are params
    for n in (1, 6):
        x = np.random.default_rng(n).normal(size=(n, 3, 4)).astype(np.float32)
        got = fn(x)
        assert got.dtype == np.float32 and got.shape == (n, 16)
        np.testing.assert_allclose(got, np.maximum(x.reshape(n, -1) @ w1.T + b1, 0), rtol=1e-5, atol=1e-6)


def test_pytorch_flatten_chain_has_no_shape_arithmetic_left():
    proto, _, _ = _torch_style_mlp()
    fn = flowml.from_onnx(proto, backend="reference").predict
    ir = fn.ir(level=0)  # the graph as imported
    assert "concatenate" not in ir and "dim" not in ir.split("reshape")[0].split("=")[-1]
    assert "reshape" in ir


def test_flowml_import_writes_a_program_that_trains(tmp_path, capsys):
    proto, w1, b1 = _torch_style_mlp()
    onnx.save_model(proto, str(tmp_path / "mlp.onnx"))
    assert main(["import", str(tmp_path / "mlp.onnx"), "-o", str(tmp_path / "mlp.flow")]) == 0
    assert "mlp.flow: fn predict(input_: f32[batch_size, 3, 4]) -> (output: f32[batch_size, 16]), 2 params" \
        in capsys.readouterr().out
    text = (tmp_path / "mlp.flow").read_text()
    assert "reshape(input_, (batch_size, 12))" in text  # the flatten chain, one reshape
    x = np.random.default_rng(0).normal(size=(8, 3, 4)).astype(np.float32)
    model = flowml.load(tmp_path / "mlp.flow", backend="reference")
    model.load_params(str(tmp_path / "mlp.npz"))
    np.testing.assert_allclose(model.predict(x), np.maximum(x.reshape(8, -1) @ w1.T + b1, 0), rtol=1e-5, atol=1e-6)
    # the program is a .flow program like any other: fine-tune it towards a target
    tuned = text + """
input target : f32[batch_size, 16]
cost = mean((output - target) ** 2)
g_w, g_b = grad(cost, fc1_weight, fc1_bias)
fn tune(input_, target) -> cost {
    fc1_weight <- fc1_weight - 0.05 * g_w
    fc1_bias <- fc1_bias - 0.05 * g_b
}
"""
    model = flowml.loads(tuned, backend="reference", file="tuned.flow")
    model.load_params(str(tmp_path / "mlp.npz"))
    target = np.zeros((8, 16), np.float32)
    costs = [float(model.tune(x, target)) for _ in range(20)]
    assert costs[-1] < 0.5 * costs[0]


def test_flowml_import_errors_are_clean(tmp_path, capsys):
    proto = _one_node("Einsum", [("a", [2, 3]), ("b", [3, 4])], {"equation": "ij,jk->ik"}, name="e")
    onnx.save_model(proto, str(tmp_path / "e.onnx"))
    assert main(["import", str(tmp_path / "e.onnx"), "-o", str(tmp_path / "e.flow")]) == 1
    err = capsys.readouterr().err
    assert "node 'e' (Einsum, opset 17): the op type Einsum is not supported" in err and "Traceback" not in err


def _one_node(op_type, inputs, attrs=None, opset=17, name="node0", in_types=None):
    in_types = in_types or [TensorProto.FLOAT] * len(inputs)
    node = helper.make_node(op_type, [n for n, _ in inputs], ["y"], name=name, **(attrs or {}))
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, t, s) for (n, s), t in
                                           zip(inputs, in_types)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_unsupported_op_names_node_op_type_and_opset():
    proto = _one_node("Einsum", [("a", [2, 3]), ("b", [3, 4])], {"equation": "ij,jk->ik"}, name="my_einsum")
    with pytest.raises(flowml.FlowError, match=r"node 'my_einsum' \(Einsum, opset 17\): the op type Einsum is not "
                                               "supported"):
        flowml.from_onnx(proto)


def test_unsupported_attribute_names_the_attribute():
    proto = _one_node("Conv", [("x", [1, 4, 5, 5]), ("w", [2, 2, 3, 3])], {"group": 2}, name="conv")
    with pytest.raises(flowml.FlowError, match=r"node 'conv' \(Conv, opset 17\): group=2"):
        flowml.from_onnx(proto)
    proto = _one_node("Relu", [("x", [3])], {"bogus": 1}, name="r")
    with pytest.raises(flowml.FlowError, match=r"\(Relu, opset 17\): the attribute\(s\) bogus are not supported"):
        flowml.from_onnx(proto)


def test_runtime_shape_is_a_clear_error():
    proto = _one_node("Reshape", [("x", [2, 3]), ("shape", [2])], in_types=[TensorProto.FLOAT, TensorProto.INT64],
                      name="rs")
    with pytest.raises(flowml.FlowError, match="Reshape's shape must be known when the model is imported"):
        flowml.from_onnx(proto)
    # given at import time, the shape is a constant and the fn takes x alone
    fn = flowml.from_onnx(proto, static_inputs={"shape": np.array([3, 2])}).g
    assert fn.input_names == ["x"]
    assert fn(np.ones((2, 3), np.float32)).shape == (3, 2)


def test_unsupported_dtype_and_opset():
    proto = _one_node("Relu", [("x", [3])], in_types=[TensorProto.FLOAT16])
    with pytest.raises(flowml.FlowError, match="graph input 'x' has the ONNX type FLOAT16"):
        flowml.from_onnx(proto)
    proto = _one_node("Dropout", [("x", [3])], {"ratio": 0.5}, opset=11)
    with pytest.raises(flowml.FlowError, match=r"\(Dropout, opset 11\): the op type Dropout differs there from its "
                                               "opset 13 form"):
        flowml.from_onnx(proto)


def test_not_a_model_is_a_clean_error(tmp_path):
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"\x00not protobuf at all\xff")
    with pytest.raises(flowml.FlowError, match="bad.onnx"):
        flowml.from_onnx(path)
    with pytest.raises(flowml.FlowError, match="cannot read"):
        flowml.from_onnx(tmp_path / "missing.onnx")


def test_import_flowml_does_not_load_onnx():
    code = "import sys, flowml; assert 'onnx' not in sys.modules and 'onnxruntime' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", ["torch_mlp", "torch_lenet"])
@pytest.mark.parametrize("backend", ["reference", "llvm"])
def test_models_exported_by_pytorch_give_pytorchs_outputs(name, backend):
    """tests/data/onnx/make_torch_models.py: torch.onnx.export of an MLP and a LeNet with a
    dynamic batch axis; their flatten is PyTorch's Shape -> Gather -> Unsqueeze -> Concat ->
    Reshape chain."""
    model = flowml.from_onnx(f"tests/data/onnx/{name}.onnx", backend=backend)
    fn = model.predict
    assert fn.signature.startswith("fn predict(images: f32[batch, 1, 8, 8]) -> (scores: f32[batch, 10])")
    ir = fn.ir(level=0)
    assert "reshape" in ir and "concatenate" not in ir  # the shape chain folded to (batch, K)
    data = np.load(f"tests/data/onnx/{name}.npz")
    for n in (1, 5):  # one import, two batch sizes
        got = fn(data[f"x{n}"])
        assert got.dtype == np.float32 and got.shape == (n, 10)
        np.testing.assert_allclose(got, data[f"y{n}"], rtol=1e-5, atol=1e-5)


def test_pytorch_lenet_exports_back_and_runs_in_onnxruntime():
    ort = pytest.importorskip("onnxruntime")
    model = flowml.from_onnx("tests/data/onnx/torch_lenet.onnx", backend="reference")
    proto = model.predict.to_onnx()  # flowml's export of the imported model
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    data = np.load("tests/data/onnx/torch_lenet.npz")
    (got,) = sess.run(None, {"images": data["x5"]})
    np.testing.assert_allclose(got, data["y5"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("opset", range(13, 22))
def test_opsets_13_to_21_import(opset):
    """A Squeeze (its axes an input since 13) and a ReduceSum (an input since 13) at each opset."""
    nodes = [helper.make_node("Squeeze", ["x", "axes"], ["s"]), helper.make_node("ReduceSum", ["s", "raxes"], ["y"],
                                                                                 keepdims=0)]
    inits = [numpy_helper.from_array(np.array([1], np.int64), "axes"),
             numpy_helper.from_array(np.array([-1], np.int64), "raxes")]
    graph = helper.make_graph(nodes, "sq", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["N", 1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.DOUBLE, ["N"])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(proto, full_check=True)
    x = np.arange(6.0).reshape(2, 1, 3)
    np.testing.assert_array_equal(flowml.from_onnx(proto).sq(x), x.sum(axis=(1, 2)))
