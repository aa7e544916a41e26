"""Export a flowml function to ONNX (opset OPSET): the optimized-but-unfused graph of the fn,
its params' current values as initializers, symbolic dims (N) as dim_params, so the batch axis
stays dynamic.

One converter per flowml op, in CONVERTERS (keyed by op name). A converter gets the exporter,
the node and the ONNX names of its operands, emits ONNX nodes and returns the name of the value
it made. An op with no converter (random draws, loops, collectives, ...) is a FlowError located
at the node, naming the op.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..errors import FlowError
from ..ir.graph import Graph
from ..ir.philox import RNG_PARAM
from ..ir.types import Sym, promote

OPSET = 18
# The optimizer's phases that make native-backend structure ONNX has no words for.
EXCLUDED_PHASES = ("fuse", "memory")


def _onnx():
    try:
        import onnx
    except ImportError:
        raise FlowError("ONNX export needs the onnx package: pip install 'flowml[onnx]'") from None
    return onnx


class Exporter:
    """Builds the ONNX graph of one function."""

    def __init__(self, graph: Graph, fn_name: str):
        self.onnx = _onnx()
        self.graph, self.fn_name = graph, fn_name
        self.nodes: list = []
        self.initializers: list = []
        self.names: dict[int, str] = {}  # flowml node -> ONNX value name
        self.used: set[str] = set()
        self.dim_sources: dict[str, tuple[str, int]] = {}  # symbol -> (ONNX input, axis)
        self._made: dict = {}  # made once: a dim -> its i64 scalar, ("axes", ...) -> the constant

    # ------------------------------------------------------------ building blocks

    def fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self.used:
            k += 1
            name = f"{base}_{k}"
        self.used.add(name)
        return name

    def emit(self, op_type: str, inputs: list[str], base: str = "t", **attrs) -> str:
        out = self.fresh(base)
        self.nodes.append(self.onnx.helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def constant(self, value, base: str = "c") -> str:
        name = self.fresh(base)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.asarray(value), name))
        return name

    def elem_type(self, dtype) -> int:
        return self.onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))

    def cast(self, name: str, from_dtype, to_dtype) -> str:
        if np.dtype(from_dtype) == np.dtype(to_dtype):
            return name
        return self.emit("Cast", [name], "cast", to=self.elem_type(to_dtype))

    def dim(self, d, n: int) -> str:
        """An i64 scalar holding dim `d` (an int, or a symbol read off an input's shape)."""
        if d in self._made:
            return self._made[d]
        if isinstance(d, int):
            out = self.constant(np.int64(d), "dim")
        else:
            factors = []
            for sym_name in d.names:
                if sym_name not in self.dim_sources:
                    raise FlowError(f"cannot export fn {self.fn_name} to ONNX: {self.graph.op(n).name} needs "
                                    f"the dim {d}, and '{sym_name}' is not a dim of any input", self.graph.loc(n))
                source, axis = self.dim_sources[sym_name]
                shape = self.emit("Shape", [source], f"shape_{source}", start=axis, end=axis + 1)
                factors.append(self.emit("Squeeze", [shape, self.axes(0)],
                                         f"dim_{sym_name}"))
            out = factors[0] if d.coeff == 1 else self.emit("Mul", [factors[0], self.constant(np.int64(d.coeff))])
            for f in factors[1:]:
                out = self.emit("Mul", [out, f], "dim")
        self._made[d] = out
        return out

    def shape(self, dims, n: int) -> str:
        """A 1-D i64 tensor holding `dims`: a constant when every dim is fixed."""
        if all(isinstance(d, int) for d in dims):
            return self.constant(np.array(dims, dtype=np.int64), "shape")
        parts = [self.emit("Unsqueeze", [self.dim(d, n), self.axes(0)], "d")
                 for d in dims]
        return self.emit("Concat", parts, "shape", axis=0)

    def axes(self, axis) -> str:
        """A 1-D i64 constant (axes of Squeeze, Unsqueeze, the reductions; Slice's steps), made once."""
        key = ("axes",) + tuple(np.array(axis, dtype=np.int64).reshape(-1).tolist())
        if key not in self._made:
            self._made[key] = self.constant(np.array(key[1:], dtype=np.int64), "axes")
        return self._made[key]

    # ------------------------------------------------------------ the walk

    def value_info(self, name: str, t):
        dims = [d if isinstance(d, int) else str(d) for d in t.shape]
        return self.onnx.helper.make_tensor_value_info(name, self.elem_type(t.dtype), dims)

    def convert(self, n: int) -> str:
        g = self.graph
        op = g.op(n)
        converter = CONVERTERS.get(op.name)
        if converter is None:
            raise FlowError(f"cannot export fn {self.fn_name} to ONNX: op '{op.name}' has no ONNX converter "
                            f"(exportable ops: {', '.join(sorted(CONVERTERS))})", g.loc(n))
        return converter(self, n, [self.names[o] for o in g.operands(n)])


def export(fn, path=None):
    """The ONNX ModelProto of flowml Function `fn` (written to `path` when given)."""
    onnx = _onnx()
    from ..passes.pipeline import optimize
    prog, decl = fn.model.program, fn.decl
    updated = [u.param for u in decl.updates if u.param != RNG_PARAM]  # (a draw is refused by its op)
    if updated:
        raise FlowError(f"cannot export fn {fn.name} to ONNX: it updates params ({', '.join(updated)}); "
                        "export a fn without updates", decl.loc)
    opt = optimize(prog.graph, [v.id for _, v in decl.outputs], [], level=fn.model.opt_level,
                   exclude=set(fn.model.exclude) | set(EXCLUDED_PHASES))
    g = opt.graph
    ex = Exporter(g, fn.name)
    needed = g.ancestors(opt.outputs)
    by_input = {g.attrs(n)["name"]: n for n in needed if g.op(n).name == "input"}
    graph_inputs = []
    for name in fn.input_names:  # every declared input, used or not, in the fn's order
        t = prog.inputs[name].var.type
        ex.used.add(name)
        graph_inputs.append(ex.value_info(name, t))
        for axis, d in enumerate(t.shape):
            if isinstance(d, Sym) and d.coeff == 1 and len(d.names) == 1:
                ex.dim_sources.setdefault(d.names[0], (name, axis))
        if name in by_input:
            ex.names[by_input[name]] = name
    params = {g.attrs(n)["name"]: n for n in needed if g.op(n).name == "param"}
    ex.used.update(params)  # (a param's initializer is named as the param)
    out_names = [ex.fresh(name) for name, _ in decl.outputs]
    for n in g.topo(needed):
        if n in ex.names:
            continue
        ex.names[n] = ex.convert(n)
    outputs = []
    for out, n in zip(out_names, opt.outputs):
        ex.nodes.append(onnx.helper.make_node("Identity", [ex.names[n]], [out]))
        outputs.append(ex.value_info(out, g.type(n)))
    values = fn.model.params
    for name in params:
        ex.initializers.append(onnx.numpy_helper.from_array(np.asarray(values[name]), ex.names[params[name]]))
    graph = onnx.helper.make_graph(ex.nodes, fn.name, graph_inputs, outputs, ex.initializers)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", OPSET)],
                                   producer_name="flowml", doc_string=f"fn {fn.signature} of {prog.file}")
    model.ir_version = 9  # opset 18's IR version: runtimes older than onnx 1.16 read it too
    onnx.checker.check_model(model, full_check=True)
    if path is not None:
        try:
            onnx.save_model(model, str(path))
        except OSError as e:
            raise FlowError(f"{path}: cannot write the ONNX model ({e.strerror or e})") from None
    return model


# ----------------------------------------------------------------- converters

Converter = Callable[[Exporter, int, list], str]
CONVERTERS: dict[str, Converter] = {}


def converts(*names: str):
    def register(f: Converter) -> Converter:
        for name in names:
            CONVERTERS[name] = f
        return f
    return register


def _base(ex: Exporter, n: int) -> str:
    return ex.graph.name(n) or ex.graph.op(n).name


@converts("param")
def _param(ex, n, ins):
    return ex.graph.attrs(n)["name"]  # its initializer is added once the walk is done


@converts("const")
def _const(ex, n, ins):
    t = ex.graph.type(n)
    return ex.constant(np.asarray(ex.graph.attrs(n)["value"], dtype=t.dtype), _base(ex, n))


@converts("dim")
def _dim(ex, n, ins):
    return ex.dim(ex.graph.attrs(n)["dim"], n)


def _operands_as(ex, n, ins, dtype) -> list[str]:
    g = ex.graph
    return [ex.cast(name, g.type(o).dtype, dtype) for name, o in zip(ins, g.operands(n))]


def _elementwise(onnx_op: str):
    """An op whose operands are computed in its result's dtype (arithmetic, math)."""
    def convert(ex, n, ins):
        return ex.emit(onnx_op, _operands_as(ex, n, ins, ex.graph.type(n).dtype), _base(ex, n))
    return convert


for _name, _onnx_op in {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "pow": "Pow", "neg": "Neg",
                        "exp": "Exp", "log": "Log", "sqrt": "Sqrt", "tanh": "Tanh", "sigmoid": "Sigmoid",
                        "softplus": "Softplus", "relu": "Relu", "abs": "Abs", "erf": "Erf", "sin": "Sin",
                        "cos": "Cos", "sign": "Sign", "maximum": "Max", "minimum": "Min",
                        "stop_gradient": "Identity", "floor": "Floor", "ceil": "Ceil", "rint": "Round",
                        "tan": "Tan", "arcsin": "Asin", "arccos": "Acos", "arctan": "Atan", "sinh": "Sinh",
                        "cosh": "Cosh", "arcsinh": "Asinh", "arccosh": "Acosh", "arctanh": "Atanh"}.items():
    CONVERTERS[_name] = _elementwise(_onnx_op)


@converts("log1p")
def _log1p(ex, n, ins):
    (x,) = _operands_as(ex, n, ins, ex.graph.type(n).dtype)
    one = ex.constant(np.ones((), ex.graph.type(n).dtype), "one")
    return ex.emit("Log", [ex.emit("Add", [x, one])], _base(ex, n))


@converts("expm1")
def _expm1(ex, n, ins):
    (x,) = _operands_as(ex, n, ins, ex.graph.type(n).dtype)
    one = ex.constant(np.ones((), ex.graph.type(n).dtype), "one")
    return ex.emit("Sub", [ex.emit("Exp", [x]), one], _base(ex, n))


@converts("erfc")
def _erfc(ex, n, ins):
    (x,) = _operands_as(ex, n, ins, ex.graph.type(n).dtype)
    one = ex.constant(np.ones((), ex.graph.type(n).dtype), "one")
    return ex.emit("Sub", [one, ex.emit("Erf", [x])], _base(ex, n))


@converts("isnan", "isinf")
def _float_test(ex, n, ins):
    return ex.emit({"isnan": "IsNaN", "isinf": "IsInf"}[ex.graph.op(n).name], ins, _base(ex, n))


_COMPARISONS = {"eq": "Equal", "lt": "Less", "le": "LessOrEqual", "gt": "Greater", "ge": "GreaterOrEqual"}


@converts("eq", "ne", "lt", "le", "gt", "ge")
def _comparison(ex, n, ins):
    g = ex.graph
    dtype, _ = promote(*[g.type(o) for o in g.operands(n)])
    operands = _operands_as(ex, n, ins, dtype)
    if g.op(n).name == "ne":
        return ex.emit("Not", [ex.emit("Equal", operands)], _base(ex, n))
    return ex.emit(_COMPARISONS[g.op(n).name], operands, _base(ex, n))


@converts("and", "or", "not")
def _logical(ex, n, ins):
    onnx_op = {"and": "And", "or": "Or", "not": "Not"}[ex.graph.op(n).name]
    return ex.emit(onnx_op, _operands_as(ex, n, ins, np.bool_), _base(ex, n))


@converts("where")
def _where(ex, n, ins):
    g = ex.graph
    cond = ex.cast(ins[0], g.type(g.operands(n)[0]).dtype, np.bool_)
    a, b = _operands_as(ex, n, ins, g.type(n).dtype)[1:]
    return ex.emit("Where", [cond, a, b], _base(ex, n))


@converts("cast")
def _cast(ex, n, ins):
    g = ex.graph
    out = ex.cast(ins[0], g.type(g.operands(n)[0]).dtype, g.type(n).dtype)
    return out if out != ins[0] else ex.emit("Identity", ins, _base(ex, n))


_REDUCTIONS = {"sum": "ReduceSum", "prod": "ReduceProd", "max": "ReduceMax", "min": "ReduceMin",
               "logsumexp": "ReduceLogSumExp"}


@converts(*_REDUCTIONS)
def _reduce(ex, n, ins):
    g = ex.graph
    attrs = g.attrs(n)
    (x,) = _operands_as(ex, n, ins, g.type(n).dtype)  # (sum of bools / ints: in the result's dtype)
    axis = attrs["axis"]
    axis = tuple(range(g.type(g.operands(n)[0]).ndim)) if axis is None else axis
    if not axis:  # over no axes: ONNX reads empty axes as "all of them"
        return ex.emit("Identity", [x], _base(ex, n))
    return ex.emit(_REDUCTIONS[g.op(n).name], [x, ex.axes(axis)], _base(ex, n), keepdims=int(attrs["keepdims"]))


@converts("argmax", "argmin")
def _argreduce(ex, n, ins):
    g = ex.graph
    attrs = g.attrs(n)
    x = ins[0]
    if attrs["axis"] is None:  # numpy's flattened argmax
        x = ex.emit("Reshape", [x, ex.constant(np.array([-1], np.int64), "shape")])
        axis = 0
    else:
        axis = attrs["axis"]
    onnx_op = "ArgMax" if g.op(n).name == "argmax" else "ArgMin"
    out = ex.emit(onnx_op, [x], _base(ex, n), axis=axis, keepdims=int(attrs["keepdims"] and attrs["axis"] is not None))
    if attrs["axis"] is None and attrs["keepdims"]:
        out = ex.emit("Reshape", [out, ex.shape(g.type(n).shape, n)], _base(ex, n))
    return out


@converts("softmax", "log_softmax")
def _softmax(ex, n, ins):
    g = ex.graph
    (x,) = _operands_as(ex, n, ins, g.type(n).dtype)
    return ex.emit("Softmax" if g.op(n).name == "softmax" else "LogSoftmax", [x], _base(ex, n),
                   axis=g.attrs(n)["axis"])


@converts("categorical_crossentropy")
def _crossentropy(ex, n, ins):
    # logsumexp(x, axis 1) - x[i, y_i]; GatherElements wraps negative labels as flowml does
    g = ex.graph
    x, y = ins
    lse = ex.emit("ReduceLogSumExp", [x, ex.axes(1)], "lse", keepdims=0)
    labels = ex.emit("Unsqueeze", [ex.cast(y, g.type(g.operands(n)[1]).dtype, np.int64), ex.axes(1)], "labels")
    picked = ex.emit("GatherElements", [x, labels], "picked", axis=1)
    return ex.emit("Sub", [lse, ex.emit("Squeeze", [picked, ex.axes(1)], "picked")], _base(ex, n))


@converts("onehot")
def _onehot(ex, n, ins):
    g = ex.graph
    attrs = g.attrs(n)
    depth = ex.dim(attrs["n"], n)
    y = ex.cast(ins[0], g.type(g.operands(n)[0]).dtype, np.int64)
    zero, one = ex.constant(np.int64(0)), ex.constant(np.int64(1))
    # a negative label wraps once, as flowml's (a label outside [-n, n) gives a row of zeros,
    # where flowml raises)
    y = ex.emit("Where", [ex.emit("Less", [y, zero]), ex.emit("Add", [y, depth]), y], "label")
    classes = ex.emit("Range", [zero, depth, one], "classes")
    hot = ex.emit("Equal", [ex.emit("Unsqueeze", [y, ex.axes(-1)]), classes])
    return ex.cast(hot, np.bool_, g.type(n).dtype)


@converts("matmul")
def _matmul(ex, n, ins):
    return ex.emit("MatMul", _operands_as(ex, n, ins, ex.graph.type(n).dtype), _base(ex, n))


@converts("transpose")
def _transpose(ex, n, ins):
    return ex.emit("Transpose", ins, _base(ex, n), perm=list(ex.graph.attrs(n)["axes"]))


@converts("reshape")
def _reshape(ex, n, ins):
    dims = ex.graph.type(n).shape
    symbolic = [i for i, d in enumerate(dims) if not isinstance(d, int)]
    if len(symbolic) == 1:  # one dim follows from the size: a constant shape with -1 there
        dims = tuple(-1 if i == symbolic[0] else d for i, d in enumerate(dims))
    return ex.emit("Reshape", [ins[0], ex.shape(dims, n)], _base(ex, n))


@converts("broadcast_to")
def _broadcast_to(ex, n, ins):
    return ex.emit("Expand", [ins[0], ex.shape(ex.graph.type(n).shape, n)], _base(ex, n))


@converts("concatenate")
def _concatenate(ex, n, ins):
    g = ex.graph
    return ex.emit("Concat", _operands_as(ex, n, ins, g.type(n).dtype), _base(ex, n), axis=g.attrs(n)["axis"])


@converts("full")
def _full(ex, n, ins):
    g = ex.graph
    t = g.type(n)
    value = ex.onnx.numpy_helper.from_array(np.array([g.attrs(n)["value"]], dtype=t.dtype))
    return ex.emit("ConstantOfShape", [ex.shape(t.shape, n)], _base(ex, n), value=value)


@converts("conv2d")
def _conv2d(ex, n, ins):
    # flowml's conv2d is ONNX's Conv: a cross-correlation, NCHW images, FCKK filters
    g = ex.graph
    attrs = g.attrs(n)
    (pt, pb), (pl, pr) = attrs["padding"]
    x, w = _operands_as(ex, n, ins, g.type(n).dtype)
    return ex.emit("Conv", [x, w], _base(ex, n), strides=list(attrs["stride"]), pads=[pt, pl, pb, pr])


@converts("max_pool2d")
def _max_pool2d(ex, n, ins):
    g = ex.graph
    attrs = g.attrs(n)
    if g.type(g.operands(n)[0]).ndim != 4:
        raise FlowError(f"cannot export fn {ex.fn_name} to ONNX: max_pool2d of {g.type(g.operands(n)[0])}; "
                        "ONNX's MaxPool takes [N, C, H, W] images", g.loc(n))
    return ex.emit("MaxPool", ins, _base(ex, n), kernel_shape=list(attrs["window"]), strides=list(attrs["stride"]))


_BIG = np.iinfo(np.int64).max  # an open end of an ONNX Slice (it clamps)


@converts("index")
def _index(ex, n, ins):
    """x[spec]: slices, ints and new axes (Slice, Squeeze, Unsqueeze), or one index array with
    every other axis whole (Gather, which wraps negative indices as flowml does)."""
    g = ex.graph
    x_type = g.type(g.operands(n)[0])
    spec = list(g.attrs(n)["spec"])
    spec += [("slice", None, None, None)] * (x_type.ndim - sum(1 for it in spec if it[0] != "new"))
    arrays = [i for i, it in enumerate(spec) if it[0] == "arr"]
    if arrays:
        whole = all(it == ("slice", None, None, None) or it[0] == "slice" and it[1:] == (None, None, 1)
                    for i, it in enumerate(spec) if i != arrays[0])
        if len(arrays) > 1 or not whole:
            raise FlowError(f"cannot export fn {ex.fn_name} to ONNX: op 'index' with {len(arrays)} index "
                            "array(s) mixed with other indices; only one index array over otherwise whole "
                            "axes (a Gather) is exportable", g.loc(n))
        k = spec[arrays[0]][1]
        idx = ex.cast(ins[k], g.type(g.operands(n)[k]).dtype, np.int64)
        return ex.emit("Gather", [ins[0], idx], _base(ex, n), axis=arrays[0])
    starts, ends, axes, steps, squeeze, new = [], [], [], [], [], []
    axis = out_axis = 0
    for it in spec:
        if it[0] == "new":
            new.append(out_axis)
            out_axis += 1
            continue
        if it[0] == "int":
            i = it[1]
            starts.append(i), ends.append(i + 1 if i != -1 else _BIG), axes.append(axis), steps.append(1)
            squeeze.append(axis)
        else:
            start, stop, step = it[1:]
            step = 1 if step is None else step
            if not isinstance(step, int):
                raise FlowError(f"cannot export fn {ex.fn_name} to ONNX: a slice step of {step}", g.loc(n))
            if (start, stop, step) != (None, None, 1):
                starts.append((0 if step > 0 else _BIG) if start is None else start)
                ends.append((_BIG if step > 0 else -_BIG) if stop is None else stop)
                axes.append(axis), steps.append(step)
            out_axis += 1
        axis += 1
    out = ins[0]
    if axes:
        out = ex.emit("Slice", [out, ex.shape(starts, n), ex.shape(ends, n), ex.axes(axes), ex.axes(steps)], "slice")
    if squeeze:
        out = ex.emit("Squeeze", [out, ex.axes(squeeze)], "squeeze")
    if new:
        out = ex.emit("Unsqueeze", [out, ex.axes(new)], "unsqueeze")
    return out if out != ins[0] else ex.emit("Identity", [out], _base(ex, n))


@converts("arange")
def _arange(ex, n, ins):
    attrs = ex.graph.attrs(n)
    start, step = ex.constant(np.int64(attrs["start"])), ex.constant(np.int64(attrs["step"]))
    return ex.emit("Range", [start, ex.dim(attrs["stop"], n), step], _base(ex, n))
