"""Import an ONNX model (opsets MIN_OPSET..MAX_OPSET of the default domain) as a flowml Model
with one fn: the graph's inputs are the fn's inputs (a dim_param is a symbolic dim, a dim
without a name gets a fresh one), its initializers are params (floats) or constants (integers,
bools: shapes and indices), its outputs the fn's outputs.

Each ONNX node is built with the library's functions (flowml/ir/lib.py), one handler per op
type in HANDLERS. Values known at import time stay numpy arrays, and shape vectors holding
symbolic dims stay `Dims`, so the Shape -> Gather -> Concat -> Reshape chains PyTorch writes
fold into a reshape to (N, 400) instead of becoming runtime arithmetic. An op type without a
handler, or an attribute a handler does not read, is a FlowError naming the node, its op type
and the opset.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

import numpy as np

from ..errors import FlowError, Loc
from ..ir import lib as L
from ..ir.graph import Graph, at
from ..ir.lib import Var
from ..ir.types import DTYPES, Sym, TensorType, dim_div, dim_mul, dims_product, sym

MIN_OPSET, MAX_OPSET = 13, 21
# Other opsets are read too, node by node, where the op's schema there has the inputs, outputs
# and attributes (names, defaults) it has at MAX_OPSET (later opsets, which may add attributes)
# or MIN_OPSET (older ones): opsets 22-28 mostly added types (bfloat16, float8, int4) that
# flowml refuses anyway, by their dtype.


def _onnx():
    try:
        import onnx
    except ImportError:
        raise FlowError("ONNX import needs the onnx package: pip install 'flowml[onnx]'") from None
    return onnx


@dataclass(frozen=True)
class Dims:
    """A 1-D i64 vector (or, `scalar`, one i64) known at import time up to symbolic dims: what
    Shape gives of an input with a dim N."""

    dims: tuple
    scalar: bool = False


class Unsupported(Exception):
    """Raised by a handler: the reason a node cannot be imported (located by the importer)."""


def _static_dims(dims: tuple, scalar: bool = False):
    """`dims` as a numpy array when every entry is an int, else as Dims."""
    if all(isinstance(d, int) for d in dims):
        arr = np.array(dims, dtype=np.int64)
        return arr.reshape(()) if scalar else arr
    return Dims(tuple(dims), scalar)


_RESERVED = set("input param const def fn return if then else and or not true false seed".split())


def _identifier(name: str, used: set) -> str:
    """`name` as a name a .flow program can declare: an identifier, not a reserved word, a
    built-in function or a dtype (`input` -> `input_`, `input.1` -> `input_1`)."""
    from ..lang.builtins import BUILTINS
    base = re.sub(r"\W", "_", name) or "v"
    if not base[0].isalpha() and base[0] != "_":
        base = "v" + base
    if base in _RESERVED or base in BUILTINS or base in DTYPES:
        base += "_"
    out, k = base, 1
    while out in used:
        k += 1
        out = f"{base}_{k}"
    used.add(out)
    return out


class Attrs:
    """A node's attributes; the importer refuses the node if its handler left one unread."""

    def __init__(self, node, onnx):
        self.values = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        self.read: set[str] = set()

    def get(self, name, default=None):
        self.read.add(name)
        v = self.values.get(name, default)
        return v.decode() if isinstance(v, bytes) else v

    def unread(self) -> list[str]:
        return [n for n in self.values if n not in self.read]


class Importer:
    def __init__(self, model, file: str, static_inputs=None):
        self.onnx = _onnx()
        self.static_inputs = dict(static_inputs or {})
        self.model, self.file = model, file
        self.graph = Graph()
        self.values: dict[str, object] = {}  # ONNX name -> Var | np.ndarray | Dims
        self.names: set[str] = set()
        self.opset = None
        for imp in model.opset_import:
            if imp.domain in ("", "ai.onnx"):
                self.opset = imp.version
        if self.opset is None or self.opset > self.onnx.defs.onnx_opset_version():
            raise FlowError(f"{file}: ONNX opset {self.opset} of the default domain; flowml imports "
                            f"opsets {MIN_OPSET}-{MAX_OPSET} (and others where an op has its form of those)")
        self.fresh_dims = 0
        self.node = None

    # ------------------------------------------------------------ values

    def dtype(self, elem_type: int, what: str) -> np.dtype:
        try:
            dt = np.dtype(self.onnx.helper.tensor_dtype_to_np_dtype(elem_type))
        except (KeyError, TypeError, ValueError):
            dt = None
        if dt not in DTYPES.values():
            name = self.onnx.TensorProto.DataType.Name(elem_type) if elem_type else "undefined"
            raise Unsupported(f"{what} has the ONNX type {name}; flowml has bool, int32, int64, float and double")
        return dt

    def var(self, v) -> Var:
        """A value as a Var of the graph (a constant when known at import time)."""
        if isinstance(v, Var):
            return v
        if isinstance(v, Dims):
            parts = [L.reshape(L.dim(self.graph, d), (1,)) for d in v.dims]
            if v.scalar:
                return L.dim(self.graph, v.dims[0])
            return L.concatenate(parts) if len(parts) > 1 else parts[0]
        arr = np.asarray(v)
        if arr.dtype not in DTYPES.values():
            raise Unsupported(f"a constant of dtype {arr.dtype}; flowml has bool, int32, int64, float and double")
        return L.constant(arr, self.graph, dtype=arr.dtype)

    def static(self, v, what: str) -> np.ndarray:
        """A value that must be known at import time (a shape, axes, pads)."""
        if isinstance(v, Var):
            raise Unsupported(f"{what} must be known when the model is imported (a constant or an "
                              "initializer), not computed at run time")
        if isinstance(v, Dims):
            raise Unsupported(f"{what} holds the symbolic dims {', '.join(map(str, v.dims))}; it must be fixed")
        return np.asarray(v)

    def static_or_dims(self, v, what: str) -> tuple:
        """A 1-D shape vector as a tuple of dims (ints or symbols)."""
        if isinstance(v, Dims):
            return v.dims
        return tuple(int(d) for d in self.static(v, what).reshape(-1))

    def input_type(self, vi) -> TensorType:
        t = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            raise FlowError(f"{self.file}: graph input '{vi.name}' is not a tensor")
        try:
            dt = self.dtype(t.elem_type, f"graph input '{vi.name}'")
        except Unsupported as e:
            raise FlowError(f"{self.file}: {e}") from None
        if not t.HasField("shape"):
            raise FlowError(f"{self.file}: graph input '{vi.name}' has no shape; flowml needs its rank")
        dims = []
        for d in t.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            else:
                name = re.sub(r"\W", "_", d.dim_param) if d.dim_param else ""
                if not name or not name.isidentifier():
                    self.fresh_dims += 1
                    name = (f"D{self.fresh_dims}" if not name else "D_" + name)
                dims.append(sym(name))
        return TensorType(dt, tuple(dims))

    # ------------------------------------------------------------ the walk

    def build(self, backend=None, name=None):
        from ..program import FnDecl, InputDecl, Model, ParamDecl, Program
        onnx = self.onnx
        g = self.model.graph
        prog = Program(self.graph, file=self.file)
        inits = {t.name: t for t in g.initializer}
        for t in g.sparse_initializer:
            raise FlowError(f"{self.file}: sparse initializer '{t.values.name}' is not supported")
        input_names = []
        for vi in g.input:
            if vi.name in inits:  # (an initializer listed as an input: its default value is used)
                continue
            if vi.name in self.static_inputs:  # given at import time: a constant
                self.values[vi.name] = np.asarray(self.static_inputs[vi.name])
                continue
            fname = _identifier(vi.name, self.names)
            var = L.input(self.graph, fname, self.input_type(vi))
            prog.inputs[fname] = InputDecl(fname, var, None)
            input_names.append(fname)
            self.values[vi.name] = var
        for iname, t in inits.items():
            arr = onnx.numpy_helper.to_array(t)
            if arr.dtype.kind == "f" and arr.dtype in DTYPES.values() and arr.size > 1:
                pname = _identifier(iname, self.names)
                value = np.array(arr)
                var = L.param(self.graph, pname, TensorType(value.dtype, value.shape))
                prog.params[pname] = ParamDecl(pname, var, None, _Value(value))
                self.values[iname] = var
            else:  # shapes, axes, indices, scalars: known at import time
                self.values[iname] = arr
        for k, node in enumerate(g.node):
            self.node = node
            with at(Loc(self.file, k + 1, 1)):  # (a node's flowml nodes are located at "FILE:k:1", node k)
                outs = self.convert(node)
            for oname, v in zip(node.output, outs):
                if oname:
                    self.values[oname] = v
        self.node = None
        outputs = []
        used_out = set(self.names)
        for vo in g.output:
            if vo.name not in self.values:
                raise FlowError(f"{self.file}: graph output '{vo.name}' is not computed by any node")
            v = self.values[vo.name]
            try:
                var = self.var(v)
            except Unsupported as e:
                raise FlowError(f"{self.file}: graph output '{vo.name}': {e}") from None
            if vo.type.HasField("tensor_type") and vo.type.tensor_type.elem_type:
                try:
                    want = self.dtype(vo.type.tensor_type.elem_type, f"graph output '{vo.name}'")
                except Unsupported as e:
                    raise FlowError(f"{self.file}: {e}") from None
                if var.dtype != want:  # (a converter's mistake: said, not cast away)
                    raise FlowError(f"{self.file}: graph output '{vo.name}' is declared {want} but computes "
                                    f"{var.dtype} here")
            outputs.append((_identifier(vo.name, used_out), var))
        generic = g.name in _GENERIC_GRAPH_NAMES or not g.name.isidentifier() or g.name in self.names
        fn_name = name or ("predict" if generic else g.name)
        prog.functions[fn_name] = FnDecl(fn_name, input_names, outputs, [], None)
        model = Model(prog, backend=backend)
        model.functions[fn_name].single_output = len(outputs) == 1
        return model

    def check_schema(self, node) -> None:
        """Past MAX_OPSET: the op must be the one of MAX_OPSET but for its types and for added
        attributes (which the handler refuses when set, unless it reads them). Before
        MIN_OPSET: the op must be the one of MIN_OPSET."""
        if MIN_OPSET <= self.opset <= MAX_OPSET:
            return
        defs = self.onnx.defs

        def signature(version):
            try:
                schema = defs.get_schema(node.op_type, version)
            except defs.SchemaError:
                return None, None
            attrs = {n: a.default_value.SerializeToString() for n, a in schema.attributes.items()}
            ios = [(p.name, p.option) for p in list(schema.inputs) + list(schema.outputs)]
            return attrs, ios
        base = MAX_OPSET if self.opset > MAX_OPSET else MIN_OPSET
        (new_attrs, new_ios), (old_attrs, old_ios) = signature(self.opset), signature(base)
        same = new_ios is not None and new_ios == old_ios and (
            new_attrs == old_attrs if self.opset < MIN_OPSET
            else all(new_attrs.get(n) == d for n, d in old_attrs.items()))
        if not same:
            raise FlowError(f"{self.where(node)}: the op type {node.op_type} differs there from its opset {base} "
                            f"form; flowml imports the forms of opsets {MIN_OPSET}-{MAX_OPSET}")

    def where(self, node) -> str:
        label = f"node '{node.name}'" if node.name else f"the node making '{node.output[0]}'"
        return f"{self.file}: {label} ({node.op_type}, opset {self.opset})"

    def convert(self, node) -> list:
        if node.domain not in ("", "ai.onnx"):
            raise FlowError(f"{self.where(node)}: ops of the domain '{node.domain}' are not supported")
        handler = HANDLERS.get(node.op_type)
        if handler is None:
            raise FlowError(f"{self.where(node)}: the op type {node.op_type} is not supported "
                            f"(supported: {', '.join(sorted(HANDLERS))})")
        self.check_schema(node)
        ins = []
        for i in node.input:
            if not i:
                ins.append(None)
            elif i not in self.values:
                raise FlowError(f"{self.where(node)}: its input '{i}' is not defined before it")
            else:
                ins.append(self.values[i])
        attrs = Attrs(node, self.onnx)
        try:
            outs = handler(self, ins, attrs, len(node.output))
        except Unsupported as e:
            raise FlowError(f"{self.where(node)}: {e}") from None
        except FlowError as e:
            raise FlowError(f"{self.where(node)}: {e.args[0] if e.args else e}") from None
        except (TypeError, ValueError, IndexError, KeyError) as e:  # (inputs a converter did not expect)
            raise FlowError(f"{self.where(node)}: cannot import this node ({type(e).__name__}: {e})") from None
        unread = attrs.unread()
        if unread:
            raise FlowError(f"{self.where(node)}: the attribute(s) {', '.join(unread)} are not supported")
        outs = outs if isinstance(outs, list) else [outs]
        if len(outs) < len([o for o in node.output if o]):
            raise FlowError(f"{self.where(node)}: only its first {len(outs)} output(s) are supported")
        return outs


# graph names exporters give every model (PyTorch's): the fn is called `predict` instead
_GENERIC_GRAPH_NAMES = {"main_graph", "torch_jit", "torch-jit-export", "graph", ""}


class _Value:
    """A param's initial value: the initializer (an object, not a lambda: models are pickled)."""

    def __init__(self, value: np.ndarray):
        self.value = value

    def __call__(self, rng) -> np.ndarray:
        return self.value


def from_onnx(model, backend=None, name: str | None = None, static_inputs=None):
    """A flowml Model of ONNX model `model` (a path or an onnx.ModelProto), compiled for
    `backend`: one fn, named after the ONNX graph (or `name`, or `predict`). `static_inputs`
    maps graph inputs to values fixed at import time (constants of the graph, not inputs of the
    fn): an input giving a Reshape's shape or a reduction's axes, which flowml needs statically."""
    onnx = _onnx()
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        try:
            proto = onnx.load_model(path)
        except OSError as e:
            raise FlowError(f"{path}: cannot read the ONNX model ({e.strerror or e})") from None
        except Exception as e:  # (protobuf's DecodeError)
            raise FlowError(f"{path}: not an ONNX model ({e})") from None
    elif isinstance(model, onnx.ModelProto):
        proto, path = model, "<onnx>"
    else:
        raise FlowError(f"from_onnx takes a path or an onnx.ModelProto, not {type(model).__name__}")
    return Importer(proto, path, static_inputs).build(backend=backend, name=name)


# ----------------------------------------------------------------- handlers

HANDLERS: dict = {}


def handles(*op_types):
    def register(f):
        for t in op_types:
            HANDLERS[t] = f
        return f
    return register


def _is_static(v) -> bool:
    return not isinstance(v, (Var, Dims))


def _same_dtype(out: Var, like: Var) -> Var:
    return out if out.dtype == like.dtype else L.cast(out, like.dtype)


_UNARY = {"Abs": L.abs, "Neg": L.negative, "Exp": L.exp, "Log": L.log, "Sqrt": L.sqrt, "Tanh": L.tanh,
          "Sigmoid": L.sigmoid, "Relu": L.relu, "Erf": L.erf, "Sin": L.sin, "Cos": L.cos, "Sign": L.sign,
          "Softplus": L.softplus, "Not": L.logical_not}


def _unary(op_type):
    def handle(imp, ins, a, n_out):
        x = imp.var(ins[0])
        return _same_dtype(_UNARY[op_type](x), x)
    return handle


for _t in _UNARY:
    HANDLERS[_t] = _unary(_t)


def _float_unary(f):
    """An activation built of flowml functions (float inputs only)."""
    def handle(imp, ins, a, n_out):
        x = imp.var(ins[0])
        if x.dtype.kind != "f":
            raise Unsupported(f"an input of {x.dtype}; it takes floats")
        return _same_dtype(f(x, a), x)
    return handle


_ACTIVATIONS = {
    "Reciprocal": lambda x, a: 1.0 / x,
    "Tan": lambda x, a: L.sin(x) / L.cos(x),
    "Sinh": lambda x, a: (L.exp(x) - L.exp(-x)) * 0.5,
    "Cosh": lambda x, a: (L.exp(x) + L.exp(-x)) * 0.5,
    "Asinh": lambda x, a: L.log(x + L.sqrt(x * x + 1.0)),
    "Acosh": lambda x, a: L.log(x + L.sqrt(x * x - 1.0)),
    "Atanh": lambda x, a: L.log((1.0 + x) / (1.0 - x)) * 0.5,
    "LeakyRelu": lambda x, a: L.where(x < 0, x * a.get("alpha", 0.01), x),
    "Elu": lambda x, a: L.where(x < 0, L.expm1(x) * a.get("alpha", 1.0), x),
    "Selu": lambda x, a: L.where(x <= 0, L.expm1(x) * a.get("alpha", 1.67326319217681884765625),
                                 x) * a.get("gamma", 1.05070102214813232421875),
    "Celu": lambda x, a: L.maximum(x, 0.0) + L.minimum(L.expm1(x / a.get("alpha", 1.0)) * a.get("alpha", 1.0), 0.0),
    "HardSigmoid": lambda x, a: L.clip(x * a.get("alpha", 0.2) + a.get("beta", 0.5), 0.0, 1.0),
    "HardSwish": lambda x, a: x * L.clip(x * (1 / 6) + 0.5, 0.0, 1.0),
    "Softsign": lambda x, a: x / (L.abs(x) + 1.0),
    "ThresholdedRelu": lambda x, a: L.where(x > a.get("alpha", 1.0), x, 0.0),
    "Mish": lambda x, a: x * L.tanh(L.softplus(x)),
    "Shrink": lambda x, a: L.where(x < -a.get("lambd", 0.5), x + a.get("bias", 0.0),
                                   L.where(x > a.get("lambd", 0.5), x - a.get("bias", 0.0), 0.0)),
}
for _t, _f in _ACTIVATIONS.items():
    HANDLERS[_t] = _float_unary(_f)


@handles("Gelu")
def _gelu(imp, ins, a, n_out):
    x = imp.var(ins[0])
    approximate = a.get("approximate", "none")
    if approximate == "tanh":
        inner = (x + x * x * x * 0.044715) * math.sqrt(2 / math.pi)
        return _same_dtype(x * 0.5 * (L.tanh(inner) + 1.0), x)
    if approximate != "none":
        raise Unsupported(f"approximate='{approximate}'")
    return _same_dtype(x * 0.5 * (L.erf(x * (1 / math.sqrt(2))) + 1.0), x)


@handles("PRelu")
def _prelu(imp, ins, a, n_out):
    x, slope = imp.var(ins[0]), imp.var(ins[1])
    return _same_dtype(L.where(x < 0, x * slope, x), x)


def _int_div(a, b):
    """ONNX's integer Div truncates towards zero (flowml's // floors)."""
    q = L.floor_div(a, b)
    inexact = L.logical_and(L.not_equal(L.mod(a, b), 0), L.not_equal(L.less(a, 0), L.less(b, 0)))
    return L.where(inexact, q + 1, q)


_BINARY = {"Add": L.add, "Sub": L.subtract, "Mul": L.multiply, "Equal": L.equal, "Less": L.less,
           "LessOrEqual": L.less_equal, "Greater": L.greater, "GreaterOrEqual": L.greater_equal,
           "And": L.logical_and, "Or": L.logical_or, "Xor": L.not_equal}
_NUMPY_BINARY = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Equal": np.equal, "Less": np.less,
                 "LessOrEqual": np.less_equal, "Greater": np.greater, "GreaterOrEqual": np.greater_equal,
                 "And": np.logical_and, "Or": np.logical_or, "Xor": np.logical_xor}


def _binary(op_type):
    def handle(imp, ins, a, n_out):
        x, y = ins
        if _is_static(x) and _is_static(y):  # shape arithmetic on constants: folded here
            out = _NUMPY_BINARY[op_type](np.asarray(x), np.asarray(y))
            return out.astype(np.asarray(x).dtype) if out.dtype != np.bool_ else out
        if op_type == "Mul" and isinstance(x, Dims) != isinstance(y, Dims) and all(
                isinstance(v, Dims) or np.asarray(v).ndim <= 1 for v in (x, y)):
            dims, k = (x, np.asarray(y)) if isinstance(x, Dims) else (y, np.asarray(x))
            ks = np.broadcast_to(k, (len(dims.dims),))
            return _static_dims(tuple(dim_mul(d, int(f)) for d, f in zip(dims.dims, ks)), dims.scalar)
        xv, yv = imp.var(x), imp.var(y)
        out = _BINARY[op_type](xv, yv)
        return out if out.dtype == np.bool_ else _same_dtype(out, xv)
    return handle


for _t in _BINARY:
    HANDLERS[_t] = _binary(_t)


@handles("Div")
def _div(imp, ins, a, n_out):
    x, y = ins
    if _is_static(x) and _is_static(y):
        x, y = np.asarray(x), np.asarray(y)
        if x.dtype.kind in "iu":
            return (np.trunc(x / y)).astype(x.dtype)
        return (x / y).astype(x.dtype)
    if isinstance(x, Dims) and _is_static(y) and np.asarray(y).ndim == 0:
        out = tuple(dim_div(d, int(y)) for d in x.dims)
        if None not in out:
            return _static_dims(out, x.scalar)
    xv, yv = imp.var(x), imp.var(y)
    if xv.dtype.kind in "iu":
        return _same_dtype(_int_div(xv, yv), xv)
    return _same_dtype(xv / yv, xv)


@handles("Pow")
def _pow(imp, ins, a, n_out):
    x, y = imp.var(ins[0]), imp.var(ins[1])
    if x.dtype.kind != "f" and y.dtype.kind == "f":  # an integer base, a float power: in floats
        return L.cast(L.power(L.cast(x, y.dtype), y), x.dtype)
    return _same_dtype(L.power(x, L.cast(y, x.dtype)), x)


@handles("Mod")
def _mod(imp, ins, a, n_out):
    x, y = imp.var(ins[0]), imp.var(ins[1])
    r = L.mod(x, y)  # Python's: the sign of the divisor (fmod=0)
    if a.get("fmod", 0):  # C's fmod: the sign of the dividend
        r = L.where(L.logical_and(L.not_equal(r, 0), L.not_equal(L.less(r, 0), L.less(x, 0))), r - y, r)
    return _same_dtype(r, x)


def _variadic_of(op_type):
    combine = {"Max": L.maximum, "Min": L.minimum, "Sum": L.add, "Mean": L.add}[op_type]

    def handle(imp, ins, a, n_out):
        vs = [imp.var(v) for v in ins]
        out = vs[0]
        for v in vs[1:]:
            out = combine(out, v)
        if op_type == "Mean":
            out = out / float(len(vs))
        return _same_dtype(out, vs[0])
    return handle


for _t in ("Max", "Min", "Sum", "Mean"):
    HANDLERS[_t] = _variadic_of(_t)


@handles("IsNaN")
def _isnan(imp, ins, a, n_out):
    x = imp.var(ins[0])
    return L.not_equal(x, x)


@handles("IsInf")
def _isinf(imp, ins, a, n_out):
    x = imp.var(ins[0])
    pos, neg = a.get("detect_positive", 1), a.get("detect_negative", 1)
    out = L.logical_and(L.equal(x, x), L.logical_and(L.equal(x, x), L.less(x, x)))  # all false
    if pos:
        out = L.logical_or(out, L.equal(x, np.inf))
    if neg:
        out = L.logical_or(out, L.equal(x, -np.inf))
    return out


@handles("Where")
def _where(imp, ins, a, n_out):
    c, x, y = imp.var(ins[0]), imp.var(ins[1]), imp.var(ins[2])
    return L.where(c, x, y)


@handles("Clip")
def _clip(imp, ins, a, n_out):
    x = imp.var(ins[0])
    out = x
    if len(ins) > 1 and ins[1] is not None:
        out = L.maximum(out, imp.var(ins[1]))
    if len(ins) > 2 and ins[2] is not None:
        out = L.minimum(out, imp.var(ins[2]))
    return _same_dtype(out, x)


@handles("Cast", "CastLike")
def _cast(imp, ins, a, n_out):
    if len(ins) > 1:  # CastLike
        like = ins[1]
        dt = imp.var(like).dtype if not _is_static(like) else np.asarray(like).dtype
    else:
        dt = imp.dtype(a.get("to"), "the target type")
    a.get("saturate")  # (only for float8 targets, which are refused above)
    a.get("round_mode")
    x = ins[0]
    if _is_static(x):
        return np.asarray(x).astype(dt)
    if isinstance(x, Dims) and dt.kind in "iu":
        return x
    return L.cast(imp.var(x), dt)


@handles("Identity")
def _identity(imp, ins, a, n_out):
    return ins[0]


@handles("Dropout")
def _dropout(imp, ins, a, n_out):
    a.get("seed")
    if len(ins) > 2 and ins[2] is not None and bool(imp.static(ins[2], "training_mode")):
        raise Unsupported("training_mode=True (flowml imports inference graphs)")
    x = ins[0]
    if n_out > 1:
        v = imp.var(x)
        return [x, L.full(imp.graph, v.shape, True, "bool")]
    return x


@handles("Constant")
def _constant(imp, ins, a, n_out):
    onnx = imp.onnx
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key in a.values:
            v = a.get(key)
            if key == "value":
                return onnx.numpy_helper.to_array(v)
            dt = np.float32 if "float" in key else np.int64
            return np.array(v, dtype=dt)
    raise Unsupported(f"a Constant with {', '.join(a.values) or 'no value'} (sparse and string values)")


@handles("ConstantOfShape")
def _constant_of_shape(imp, ins, a, n_out):
    dims = imp.static_or_dims(ins[0], "the shape")
    value = a.get("value")
    arr = imp.onnx.numpy_helper.to_array(value) if value is not None else np.zeros(1, np.float32)
    if arr.dtype not in DTYPES.values():
        raise Unsupported(f"a value of {arr.dtype}")
    if all(isinstance(d, int) for d in dims) and int(np.prod(dims)) <= 64:
        return np.full(dims, arr.reshape(-1)[0], dtype=arr.dtype)
    return L.full(imp.graph, dims, arr.reshape(-1)[0].item(), _dtype_name(arr.dtype))


def _dtype_name(dt) -> str:
    from ..ir.types import DTYPE_NAMES
    return DTYPE_NAMES[np.dtype(dt)]


@handles("Range")
def _range(imp, ins, a, n_out):
    start, limit, delta = (imp.static(v, "Range's start, limit and delta") for v in ins)
    a.get("stash_type")  # (the precision of float ranges, computed here in numpy's f64)
    dt = np.asarray(start).dtype
    if dt.kind == "i":  # flowml's arange, of static ends
        n = max(int(np.ceil((int(limit) - int(start)) / int(delta))), 0)
        return L.cast(L.arange(imp.graph, int(start), int(start) + n * int(delta), int(delta)), dt)
    return np.arange(start, limit, delta).astype(dt)


# ------------------------------------------------------------ shapes


def _shape_of(v) -> tuple:
    if isinstance(v, Var):
        return v.shape
    if isinstance(v, Dims):
        return () if v.scalar else (len(v.dims),)
    return np.asarray(v).shape


@handles("Shape")
def _shape(imp, ins, a, n_out):
    shape = _shape_of(ins[0])
    start, end = a.get("start", 0), a.get("end", None)
    return _static_dims(tuple(shape[start:end]))


@handles("Size")
def _size(imp, ins, a, n_out):
    return _static_dims((dims_product(_shape_of(ins[0])),), scalar=True)


def _norm_axes(axes, ndim: int) -> list[int]:
    out = [int(ax) + ndim if int(ax) < 0 else int(ax) for ax in axes]
    for ax in out:
        if not 0 <= ax < max(ndim, 1):
            raise Unsupported(f"axis {ax} is out of range for rank {ndim}")
    return out


def _reshape_to(imp, x, dims):
    if _is_static(x):
        return np.asarray(x).reshape(dims)
    if isinstance(x, Dims) and len(dims) <= 1:
        return Dims(x.dims, scalar=len(dims) == 0)
    return L.reshape(imp.var(x), tuple(dims))


@handles("Reshape")
def _reshape(imp, ins, a, n_out):
    x = ins[0]
    shape = list(imp.static_or_dims(ins[1], "Reshape's shape"))
    allowzero = a.get("allowzero", 0)
    in_shape = _shape_of(x)
    if not allowzero:
        shape = [in_shape[i] if isinstance(d, int) and d == 0 else d for i, d in enumerate(shape)]
    if -1 in shape:
        known = dims_product(d for d in shape if d != -1)
        rest = dim_div(dims_product(in_shape), known)
        if rest is None:
            raise Unsupported(f"cannot reshape {list(in_shape)} to {shape}")
        shape = [rest if d == -1 else d for d in shape]
    return _reshape_to(imp, x, shape)


@handles("Flatten")
def _flatten(imp, ins, a, n_out):
    shape = _shape_of(ins[0])
    axis = a.get("axis", 1)
    axis = axis + len(shape) if axis < 0 else axis
    return _reshape_to(imp, ins[0], (dims_product(shape[:axis]), dims_product(shape[axis:])))


def _axes_input(imp, ins, a, k: int, what: str):
    """The axes of Squeeze/Unsqueeze/reductions: an input (newer opsets) or an attribute."""
    if len(ins) > k and ins[k] is not None:
        return [int(v) for v in imp.static(ins[k], what).reshape(-1)]
    attr = a.get("axes")
    return None if attr is None else list(attr)


@handles("Squeeze")
def _squeeze(imp, ins, a, n_out):
    shape = _shape_of(ins[0])
    axes = _axes_input(imp, ins, a, 1, "Squeeze's axes")
    axes = [i for i, d in enumerate(shape) if d == 1] if axes is None else _norm_axes(axes, len(shape))
    for ax in axes:
        if shape[ax] != 1:
            raise Unsupported(f"cannot squeeze axis {ax} of size {shape[ax]}")
    return _reshape_to(imp, ins[0], tuple(d for i, d in enumerate(shape) if i not in axes))


@handles("Unsqueeze")
def _unsqueeze(imp, ins, a, n_out):
    shape = list(_shape_of(ins[0]))
    axes = _axes_input(imp, ins, a, 1, "Unsqueeze's axes")
    axes = sorted(_norm_axes(axes, len(shape) + len(axes)))
    for ax in axes:
        shape.insert(ax, 1)
    return _reshape_to(imp, ins[0], tuple(shape))


@handles("Concat")
def _concat(imp, ins, a, n_out):
    axis = a.get("axis")
    vals = [v for v in ins if v is not None]
    if all(isinstance(v, Dims) or (_is_static(v) and np.asarray(v).ndim == 1 and np.asarray(v).dtype.kind == "i")
           for v in vals) and any(isinstance(v, Dims) for v in vals):
        dims = ()
        for v in vals:
            dims += imp.static_or_dims(v, "a shape")
        return _static_dims(dims)
    if all(_is_static(v) for v in vals):
        return np.concatenate([np.asarray(v) for v in vals], axis=axis)
    vs = [imp.var(v) for v in vals]
    vs = [v for v in vs if v.ndim == 0 or 0 not in v.shape[axis:axis + 1] or len(vs) == 1] or vs[:1]
    return L.concatenate(vs, axis=axis)


@handles("Transpose")
def _transpose(imp, ins, a, n_out):
    x = ins[0]
    ndim = len(_shape_of(x))
    perm = a.get("perm", list(range(ndim))[::-1])
    if _is_static(x):
        return np.transpose(np.asarray(x), perm)
    return L.transpose(imp.var(x), tuple(perm))


@handles("Expand")
def _expand(imp, ins, a, n_out):
    x = imp.var(ins[0])
    shape = imp.static_or_dims(ins[1], "Expand's shape")
    ndim = max(x.ndim, len(shape))
    xs = (1,) * (ndim - x.ndim) + tuple(x.shape)
    ss = (1,) * (ndim - len(shape)) + tuple(shape)
    out = []
    for dx, ds in zip(xs, ss):
        if dx == 1:
            out.append(ds)
        elif ds == 1 or ds == dx:
            out.append(dx)
        else:
            raise Unsupported(f"cannot expand {list(x.shape)} to {list(shape)}")
    if xs != tuple(x.shape):
        x = L.reshape(x, xs)
    return L.broadcast_to(x, tuple(out))


@handles("Gather")
def _gather(imp, ins, a, n_out):
    x, idx = ins
    shape = _shape_of(x)
    axis = _norm_axes([a.get("axis", 0)], len(shape))[0]
    if _is_static(idx):
        i = np.asarray(idx).astype(np.int64)
        n = shape[axis]
        if isinstance(n, int):
            if np.any((i < -n) | (i >= n)):
                raise Unsupported(f"an index outside [-{n}, {n})")
            i = np.where(i < 0, i + n, i)
        elif np.any(i < 0):
            raise Unsupported(f"a negative index into the symbolic dim {n}")
        if isinstance(x, Dims):
            picked = tuple(x.dims[k] for k in i.reshape(-1))
            return _static_dims(picked, scalar=i.ndim == 0) if i.ndim <= 1 else _reshape_to(
                imp, _static_dims(picked), i.shape)
        if _is_static(x):
            return np.take(np.asarray(x), i, axis=axis)
        xv = imp.var(x)
        if i.ndim == 0:
            return xv[(slice(None),) * axis + (int(i),)]
        return L.take(xv, L.constant(i, imp.graph, dtype="i64"), axis=axis)
    xv, iv = imp.var(x), imp.var(idx)
    n = L.dim(imp.graph, shape[axis])
    iv = L.cast(iv, "i64")
    iv = L.where(L.less(iv, 0), iv + n, iv)
    if iv.ndim == 0:
        iv = L.reshape(iv, (1,))
        return L.reshape(L.take(xv, iv, axis=axis), tuple(d for k, d in enumerate(xv.shape) if k != axis))
    return L.take(xv, iv, axis=axis)


@handles("GatherElements")
def _gather_elements(imp, ins, a, n_out):
    # out[..., j, ...] = x[..., idx[..., j, ...], ...] along `axis`: a one-hot selection over
    # that axis moved last (a `where`, so an inf elsewhere in the row stays out of the sum)
    x, idx = imp.var(ins[0]), imp.var(ins[1])
    axis = _norm_axes([a.get("axis", 0)], x.ndim)[0]
    c = x.shape[axis]
    if not isinstance(c, int):
        raise Unsupported(f"gathering along the symbolic dim {c}")
    items = tuple(slice(None) if k == axis or d == x.shape[k] else slice(0, d) for k, d in enumerate(idx.shape))
    if any(it != slice(None) for it in items):
        x = x[items]  # (idx may be smaller than x along the other axes)
    perm = tuple(k for k in range(x.ndim) if k != axis) + (axis,)
    xt, it = L.transpose(x, perm), L.transpose(idx, perm)
    hot = L.onehot(L.cast(it, "i64"), c, "bool")  # [..., k, C]; a negative index wraps once
    picked = L.sum(L.where(hot, L.expand_dims(xt, -2), L.zeros_like(L.expand_dims(xt, -2))), -1)
    back = tuple(perm.index(k) for k in range(x.ndim))
    return L.transpose(picked, back)


_BIG = 2 ** 62


def _slice_of(start, end, step, d):
    """ONNX's clamped (start, end, step) on a dim of size d as a Python slice."""
    if isinstance(d, int):
        r = range(*slice(start, end, step).indices(d))
        if len(r) == 0:
            return slice(0, 0, 1)
        stop = r.stop if r.stop >= 0 else None
        return slice(r.start, stop, r.step)
    if step != 1:
        raise Unsupported(f"a step of {step} along the symbolic dim {d}")
    return slice(None if start == 0 else start, None if end >= _BIG else end, 1)


@handles("Slice")
def _slice(imp, ins, a, n_out):
    x = ins[0]
    shape = _shape_of(x)
    starts = imp.static(ins[1], "Slice's starts").reshape(-1).tolist()
    ends = imp.static(ins[2], "Slice's ends").reshape(-1).tolist()
    axes = (imp.static(ins[3], "Slice's axes").reshape(-1).tolist() if len(ins) > 3 and ins[3] is not None
            else list(range(len(starts))))
    steps = (imp.static(ins[4], "Slice's steps").reshape(-1).tolist() if len(ins) > 4 and ins[4] is not None
             else [1] * len(starts))
    axes = _norm_axes(axes, len(shape))
    items = [slice(None)] * len(shape)
    for s, e, ax, st in zip(starts, ends, axes, steps):
        items[ax] = _slice_of(int(s), int(e), int(st), shape[ax])
    if isinstance(x, Dims):
        return _static_dims(tuple(x.dims[items[0]]))
    if _is_static(x):
        return np.asarray(x)[tuple(items)]
    return imp.var(x)[tuple(items)]


@handles("Split")
def _split(imp, ins, a, n_out):
    x = imp.var(ins[0])
    axis = _norm_axes([a.get("axis", 0)], x.ndim)[0]
    d = x.shape[axis]
    if len(ins) > 1 and ins[1] is not None:
        sizes = [int(s) for s in imp.static(ins[1], "Split's split").reshape(-1)]
    else:
        k = a.get("num_outputs", n_out)
        if not isinstance(d, int):
            raise Unsupported(f"splitting the symbolic dim {d}")
        chunk = -(-d // k)
        sizes = [min(chunk, d - i * chunk) for i in range(k)]
    outs, start = [], 0
    for s in sizes:
        outs.append(x[(slice(None),) * axis + (slice(start, start + s),)])
        start += s
    return outs


@handles("Tile")
def _tile(imp, ins, a, n_out):
    x = imp.var(ins[0])
    reps = [int(r) for r in imp.static(ins[1], "Tile's repeats").reshape(-1)]
    for ax, r in enumerate(reps):
        if r != 1:
            x = L.concatenate([x] * r, axis=ax) if r > 0 else x[(slice(None),) * ax + (slice(0, 0),)]
    return x


@handles("Pad")
def _pad(imp, ins, a, n_out):
    x = imp.var(ins[0])
    mode = a.get("mode", "constant")
    if mode != "constant":
        raise Unsupported(f"mode='{mode}' (only 'constant')")
    pads = [int(p) for p in imp.static(ins[1], "Pad's pads").reshape(-1)]
    value = 0
    if len(ins) > 2 and ins[2] is not None:
        value = imp.static(ins[2], "Pad's constant_value").reshape(-1)
        value = value[0].item() if value.size else 0
    k = len(pads) // 2
    axes = (_norm_axes(imp.static(ins[3], "Pad's axes").reshape(-1).tolist(), x.ndim)
            if len(ins) > 3 and ins[3] is not None else list(range(x.ndim)))
    for ax, before, after in zip(axes, pads[:k], pads[k:]):
        if before < 0 or after < 0:
            d = x.shape[ax]
            end = None if after >= 0 else after
            x = x[(slice(None),) * ax + (slice(max(-before, 0), end),)]
            before, after = max(before, 0), max(after, 0)
        parts = []
        for n in (before, after):
            shape = list(x.shape)
            shape[ax] = n
            parts.append(L.full(imp.graph, tuple(shape), value, _dtype_name(x.dtype)) if n else None)
        x = L.concatenate([p for p in (parts[0], x, parts[1]) if p is not None], axis=ax)
    return x


def _depth_to_space(imp, ins, a, n_out):
    x = imp.var(ins[0])
    b = a.get("blocksize")
    mode = a.get("mode", "DCR")
    n, c, h, w = x.shape
    if mode == "DCR":
        t = L.transpose(L.reshape(x, (n, b, b, c // (b * b), h, w)), (0, 3, 4, 1, 5, 2))
    else:
        t = L.transpose(L.reshape(x, (n, c // (b * b), b, b, h, w)), (0, 1, 4, 2, 5, 3))
    return L.reshape(t, (n, c // (b * b), h * b, w * b))


def _space_to_depth(imp, ins, a, n_out):
    x = imp.var(ins[0])
    b = a.get("blocksize")
    mode = a.get("mode", "DCR")  # (an attribute since opset 28; DCR before)
    n, c, h, w = x.shape
    perm = (0, 3, 5, 1, 2, 4) if mode == "DCR" else (0, 1, 3, 5, 2, 4)
    t = L.transpose(L.reshape(x, (n, c, h // b, b, w // b, b)), perm)
    return L.reshape(t, (n, c * b * b, h // b, w // b))


HANDLERS["DepthToSpace"] = _depth_to_space
HANDLERS["SpaceToDepth"] = _space_to_depth


# ------------------------------------------------------------ reductions, softmax


_REDUCE = {"ReduceSum": L.sum, "ReduceMean": L.mean, "ReduceMax": L.max, "ReduceMin": L.min,
           "ReduceProd": L.prod, "ReduceLogSumExp": L.logsumexp,
           "ReduceL1": lambda x, axis, keepdims: L.sum(L.abs(x), axis, keepdims),
           "ReduceL2": lambda x, axis, keepdims: L.sqrt(L.sum(x * x, axis, keepdims)),
           "ReduceSumSquare": lambda x, axis, keepdims: L.sum(x * x, axis, keepdims),
           "ReduceLogSum": lambda x, axis, keepdims: L.log(L.sum(x, axis, keepdims))}


# max and min of nothing (numpy's have no identity): ONNX's -inf / +inf (false / true for bools)
_EMPTY_IDENTITY = {"ReduceMax": -np.inf, "ReduceMin": np.inf}


def _reduce_of(op_type):
    def handle(imp, ins, a, n_out):
        x = imp.var(ins[0])
        axes = _axes_input(imp, ins, a, 1, f"{op_type}'s axes")
        keepdims = bool(a.get("keepdims", 1))
        if not axes:
            if a.get("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.ndim))
        else:
            a.get("noop_with_empty_axes")
        axes = tuple(sorted(_norm_axes(axes, x.ndim)))
        if op_type in _EMPTY_IDENTITY and any(x.shape[k] == 0 for k in axes):  # an empty set: ONNX's identity
            shape = tuple(1 if k in axes else d for k, d in enumerate(x.shape) if keepdims or k not in axes)
            value = _EMPTY_IDENTITY[op_type] if x.dtype.kind == "f" else (op_type == "ReduceMin")
            if x.dtype.kind not in "fb":
                raise Unsupported(f"{op_type} of an empty set of {x.dtype}")
            return L.full(imp.graph, shape, value if x.dtype.kind == "f" else bool(value), _dtype_name(x.dtype))
        return _same_dtype(_REDUCE[op_type](x, axes, keepdims), x)
    return handle


for _t in _REDUCE:
    HANDLERS[_t] = _reduce_of(_t)


def _argreduce_of(op_type):
    f = L.argmax if op_type == "ArgMax" else L.argmin

    def handle(imp, ins, a, n_out):
        x = imp.var(ins[0])
        axis = _norm_axes([a.get("axis", 0)], x.ndim)[0]
        keepdims = bool(a.get("keepdims", 1))
        if a.get("select_last_index", 0):  # the last of ties: the first of the reversed axis
            n = x.shape[axis]
            if not isinstance(n, int):
                raise Unsupported(f"select_last_index=1 along the symbolic dim {n}")
            flipped = x[(slice(None),) * axis + (slice(None, None, -1),)]
            return L.cast((n - 1) - f(flipped, axis, keepdims), "i64")
        return L.cast(f(x, axis, keepdims), "i64")
    return handle


HANDLERS["ArgMax"] = _argreduce_of("ArgMax")
HANDLERS["ArgMin"] = _argreduce_of("ArgMin")


def _softmax_of(op_type):
    f = L.softmax if op_type == "Softmax" else L.log_softmax

    def handle(imp, ins, a, n_out):
        x = imp.var(ins[0])
        return _same_dtype(f(x, a.get("axis", -1)), x)
    return handle


HANDLERS["Softmax"] = _softmax_of("Softmax")
HANDLERS["LogSoftmax"] = _softmax_of("LogSoftmax")


# ------------------------------------------------------------ linear algebra, nets


@handles("MatMul")
def _matmul(imp, ins, a, n_out):
    x, y = imp.var(ins[0]), imp.var(ins[1])
    return _same_dtype(L.matmul(x, y), x)


@handles("Gemm")
def _gemm(imp, ins, a, n_out):
    x, y = imp.var(ins[0]), imp.var(ins[1])
    if a.get("transA", 0):
        x = L.transpose(x)
    if a.get("transB", 0):
        y = L.transpose(y)
    out = L.matmul(x, y)
    alpha, beta = a.get("alpha", 1.0), a.get("beta", 1.0)
    if alpha != 1.0:
        out = out * alpha
    if len(ins) > 2 and ins[2] is not None:
        c = imp.var(ins[2])
        out = out + (c if beta == 1.0 else c * beta)
    return _same_dtype(out, x)


@handles("Det")
def _det(imp, ins, a, n_out):
    x = imp.var(ins[0])
    return _same_dtype(L.det(x), x)


def _spatial(imp, x, a, what: str, kernel):
    """Conv's and the pools' padding as ((top, bottom), (left, right)); refuses dilations."""
    if x.ndim != 4:
        raise Unsupported(f"an input of rank {x.ndim}; flowml's {what} takes [N, C, H, W] images")
    strides = list(a.get("strides", [1, 1]))
    dil = a.get("dilations", [1, 1])
    if list(dil) != [1, 1]:
        raise Unsupported(f"dilations={list(dil)}")
    auto_pad = a.get("auto_pad", "NOTSET")
    pads = list(a.get("pads", [0, 0, 0, 0]))
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0, 0, 0, 0]
        for i in range(2):
            d = x.shape[2 + i]
            if not isinstance(d, int):
                raise Unsupported(f"auto_pad={auto_pad} of the symbolic dim {d}")
            total = max((-(-d // strides[i]) - 1) * strides[i] + kernel[i] - d, 0)
            small, big = total // 2, total - total // 2
            pads[i], pads[2 + i] = (small, big) if auto_pad == "SAME_UPPER" else (big, small)
    elif auto_pad == "VALID":
        pads = [0, 0, 0, 0]
    elif auto_pad != "NOTSET":
        raise Unsupported(f"auto_pad={auto_pad}")
    return strides, ((pads[0], pads[2]), (pads[1], pads[3]))


@handles("Conv")
def _conv(imp, ins, a, n_out):
    x, w = imp.var(ins[0]), imp.var(ins[1])
    if a.get("group", 1) != 1:
        raise Unsupported(f"group={a.get('group')} (grouped convolutions)")
    kernel = a.get("kernel_shape", list(w.shape[2:]))
    strides, pads = _spatial(imp, x, a, "Conv", kernel)
    out = L.conv2d(x, w, tuple(strides), pads)
    if len(ins) > 2 and ins[2] is not None:
        b = imp.var(ins[2])
        out = out + L.reshape(b, (1, b.shape[0], 1, 1))
    return _same_dtype(out, x)


@handles("ConvTranspose")
def _conv_transpose(imp, ins, a, n_out):
    # the transposed convolution: conv2d's VJP with respect to its images, w [C, F, KH, KW]
    x, w = imp.var(ins[0]), imp.var(ins[1])
    if a.get("group", 1) != 1:
        raise Unsupported(f"group={a.get('group')} (grouped convolutions)")
    if x.ndim != 4:
        raise Unsupported(f"an input of rank {x.ndim}; flowml's ConvTranspose takes [N, C, H, W] images")
    if list(a.get("dilations", [1, 1])) != [1, 1]:
        raise Unsupported(f"dilations={list(a.get('dilations'))}")
    kernel = list(a.get("kernel_shape", list(w.shape[2:])))
    strides = list(a.get("strides", [1, 1]))
    out_pad = list(a.get("output_padding", [0, 0]))
    if a.get("auto_pad", "NOTSET") != "NOTSET" or a.get("output_shape") is not None:
        raise Unsupported("auto_pad and output_shape (give pads)")
    pads = list(a.get("pads", [0, 0, 0, 0]))
    size = []
    for i in range(2):
        d = x.shape[2 + i]
        if not isinstance(d, int):
            raise Unsupported(f"the symbolic image size {d}")
        size.append(strides[i] * (d - 1) + out_pad[i] + kernel[i] - pads[i] - pads[2 + i])
    dt = x.dtype
    out = L.conv2d_backprop_input(x, L.cast(w, dt), tuple(size), tuple(strides),
                                  ((pads[0], pads[2]), (pads[1], pads[3])))
    if len(ins) > 2 and ins[2] is not None:
        b = imp.var(ins[2])
        out = out + L.reshape(b, (1, b.shape[0], 1, 1))
    return _same_dtype(out, x)


def _pool_checks(a):
    if a.get("ceil_mode", 0):
        raise Unsupported("ceil_mode=1")


class _Attrs1D:
    """A 1-D pool's attributes as those of the 2-D pool of [N, C, 1, L] images."""

    def __init__(self, a: Attrs):
        self.a = a

    def get(self, name, default=None):
        v = self.a.get(name, None)
        if v is None:
            return default
        if name in ("kernel_shape", "strides", "dilations"):
            return [1] + list(v)
        if name == "pads":
            return [0, v[0], 0, v[1]]
        return v


def _pool_1d(handler):
    def handle(imp, ins, a, n_out):
        x = imp.var(ins[0])
        if x.ndim != 3:
            return handler(imp, ins, a, n_out)
        n, c, length = x.shape
        out = handler(imp, [L.reshape(x, (n, c, 1, length))] + list(ins[1:]), _Attrs1D(a), n_out)
        return L.reshape(out, (n, c, out.shape[3]))
    return handle


@handles("MaxPool")
def _max_pool(imp, ins, a, n_out):
    x = imp.var(ins[0])
    if n_out > 1:
        raise Unsupported("the Indices output")
    if a.get("storage_order", 0):
        raise Unsupported("storage_order=1")
    _pool_checks(a)
    kernel = list(a.get("kernel_shape"))
    strides, pads = _spatial(imp, x, a, "MaxPool", kernel)
    if any(p for pair in pads for p in pair):
        low = np.finfo(x.dtype).min if x.dtype.kind == "f" else np.iinfo(x.dtype).min
        for ax, (before, after) in zip((2, 3), pads):
            parts = []
            for n in (before, after):
                shape = list(x.shape)
                shape[ax] = n
                parts.append(L.full(imp.graph, tuple(shape), float(low) if x.dtype.kind == "f" else int(low),
                                    _dtype_name(x.dtype)) if n else None)
            x = L.concatenate([p for p in (parts[0], x, parts[1]) if p is not None], axis=ax)
    return L.max_pool2d(x, tuple(kernel), tuple(strides))


@handles("AveragePool")
def _avg_pool(imp, ins, a, n_out):
    x = imp.var(ins[0])
    _pool_checks(a)
    kernel = list(a.get("kernel_shape"))
    strides, pads = _spatial(imp, x, a, "AveragePool", kernel)
    include_pad = a.get("count_include_pad", 0)
    n, c, h, w = x.shape
    flat = L.reshape(x, (dims_product((n, c)), 1, h, w))  # every channel alone: one 1x1 conv
    ones = L.constant(np.ones((1, 1, *kernel), dtype=x.dtype), imp.graph, dtype=x.dtype)
    total = L.conv2d(flat, ones, tuple(strides), pads)
    if include_pad or not any(p for pair in pads for p in pair):
        out = total * (1.0 / (kernel[0] * kernel[1]))
    else:
        if not (isinstance(h, int) and isinstance(w, int)):
            raise Unsupported("count_include_pad=0 with padding of symbolic image sizes")
        counts = L.conv2d(L.constant(np.ones((1, 1, h, w), x.dtype), imp.graph, dtype=x.dtype), ones,
                          tuple(strides), pads)
        out = total / counts
    return _same_dtype(L.reshape(out, (n, c) + tuple(out.shape[2:])), x)


def _global_pool_of(op_type):
    def handle(imp, ins, a, n_out):
        x = imp.var(ins[0])
        axes = tuple(range(2, x.ndim))
        f = L.mean if op_type == "GlobalAveragePool" else L.max
        return _same_dtype(f(x, axes, True), x)
    return handle


HANDLERS["MaxPool"] = _pool_1d(HANDLERS["MaxPool"])
HANDLERS["AveragePool"] = _pool_1d(HANDLERS["AveragePool"])
HANDLERS["GlobalAveragePool"] = _global_pool_of("GlobalAveragePool")
HANDLERS["GlobalMaxPool"] = _global_pool_of("GlobalMaxPool")


def _per_channel(v: Var, ndim: int) -> Var:
    return L.reshape(v, (1, v.shape[0]) + (1,) * (ndim - 2))


@handles("BatchNormalization")
def _batch_norm(imp, ins, a, n_out):
    x, scale, b, mean, var = (imp.var(v) for v in ins[:5])
    if a.get("training_mode", 0) or n_out > 1:
        raise Unsupported("training_mode=1 (flowml imports inference graphs)")
    eps = a.get("epsilon", 1e-5)
    a.get("momentum")
    k = x.ndim
    inv = L.cast(_per_channel(scale, k), x.dtype) / L.sqrt(L.cast(_per_channel(var, k), x.dtype) + eps)
    out = (x - L.cast(_per_channel(mean, k), x.dtype)) * inv + L.cast(_per_channel(b, k), x.dtype)
    return _same_dtype(out, x)


@handles("InstanceNormalization")
def _instance_norm(imp, ins, a, n_out):
    x, scale, b = (imp.var(v) for v in ins)
    eps = a.get("epsilon", 1e-5)
    axes = tuple(range(2, x.ndim))
    mean = L.mean(x, axes, True)
    centered = x - mean
    var = L.mean(centered * centered, axes, True)
    out = centered / L.sqrt(var + eps) * _per_channel(scale, x.ndim) + _per_channel(b, x.ndim)
    return _same_dtype(out, x)


@handles("LayerNormalization")
def _layer_norm(imp, ins, a, n_out):
    x = imp.var(ins[0])
    scale = imp.var(ins[1])
    axis = _norm_axes([a.get("axis", -1)], x.ndim)[0]
    eps = a.get("epsilon", 1e-5)
    a.get("stash_type")
    axes = tuple(range(axis, x.ndim))
    mean = L.mean(x, axes, True)
    centered = x - mean
    var = L.mean(centered * centered, axes, True)
    inv_std = 1.0 / L.sqrt(var + eps)
    out = centered * inv_std * scale
    if len(ins) > 2 and ins[2] is not None:
        out = out + imp.var(ins[2])
    return [_same_dtype(out, x), mean, inv_std][:max(n_out, 1)]


@handles("MeanVarianceNormalization")
def _mvn(imp, ins, a, n_out):
    x = imp.var(ins[0])
    axes = tuple(_norm_axes(a.get("axes", [0, 2, 3]), x.ndim))
    mean = L.mean(x, axes, True)
    centered = x - mean
    var = L.mean(centered * centered, axes, True)
    return _same_dtype(centered / (L.sqrt(var) + 1e-9), x)


# The inputs (by position) each op needs known at import time: flowml's shapes, axes and pads
# are static.
STATIC_SLOTS = {"Reshape": (1,), "Expand": (1,), "Tile": (1,), "Slice": (1, 2, 3, 4), "Squeeze": (1,),
                "Unsqueeze": (1,), "Split": (1,), "Pad": (1, 2, 3), "ConstantOfShape": (0,),
                "Range": (0, 1, 2), "Dropout": (1, 2), "OneHot": (1,), "Trilu": (1,), "CumSum": (1,), **{t: (1,) for t in _REDUCE}}


def static_input_names(model) -> list[str]:
    """The graph inputs of ONNX model `model` that feed a node's static slot (a shape, axes,
    pads): the ones to give `from_onnx` as `static_inputs` when their values are known."""
    inputs = {vi.name for vi in model.graph.input}
    out = []
    for node in model.graph.node:
        for k in STATIC_SLOTS.get(node.op_type, ()):
            if k < len(node.input) and node.input[k] in inputs and node.input[k] not in out:
                out.append(node.input[k])
    return out


# ------------------------------------------------------------ rounding, one-hot


def _floor(x):
    # x // 1 is numpy's floor of a finite float; an infinity stays itself (inf // 1 is nan)
    return L.where(L.equal(L.abs(x), np.inf), x, L.floor_div(x, 1.0))


def _round_half_even(x):
    f = _floor(x)
    d = x - f
    even = L.equal(L.mod(f, 2.0), 0.0)
    return L.where(L.greater(d, 0.5), f + 1.0, L.where(L.less(d, 0.5), f, L.where(even, f, f + 1.0)))


_ROUNDING = {"Floor": _floor, "Ceil": lambda x: -_floor(-x), "Round": _round_half_even}
for _t, _f in _ROUNDING.items():
    HANDLERS[_t] = _float_unary(lambda x, a, _f=_f: _f(x))


def _one_hot_along(imp, idx: Var, n: int, axis: int, dtype) -> Var:
    """onehot of `idx` with the new axis of size n at `axis` of the result."""
    hot = L.onehot(L.cast(idx, "i64"), n, _dtype_name(dtype))  # the new axis last
    ndim = hot.ndim
    axis = axis + ndim if axis < 0 else axis
    if axis == ndim - 1:
        return hot
    perm = list(range(ndim - 1))
    perm.insert(axis, ndim - 1)
    return L.transpose(hot, tuple(perm))


@handles("OneHot")
def _onehot(imp, ins, a, n_out):
    idx = imp.var(ins[0])
    depth = int(imp.static(ins[1], "OneHot's depth").reshape(-1)[0])
    values = ins[2]
    v = imp.var(values)
    hot = _one_hot_along(imp, idx if idx.dtype.kind in "iu" else L.cast(idx, "i64"), depth, a.get("axis", -1),
                         np.dtype(bool))
    return L.where(hot, v[1], v[0])


@handles("Hardmax")
def _hardmax(imp, ins, a, n_out):
    x = imp.var(ins[0])
    axis = _norm_axes([a.get("axis", -1)], x.ndim)[0]
    n = x.shape[axis]
    if not isinstance(n, int):
        raise Unsupported(f"Hardmax along the symbolic dim {n}")
    return _one_hot_along(imp, L.argmax(x, axis), n, axis, x.dtype)


@handles("EyeLike")
def _eye_like(imp, ins, a, n_out):
    shape = _shape_of(ins[0])
    if not all(isinstance(d, int) for d in shape):
        raise Unsupported(f"EyeLike of the symbolic shape {list(shape)}")
    like = imp.var(ins[0]).dtype if not _is_static(ins[0]) else np.asarray(ins[0]).dtype
    dt = imp.dtype(a.get("dtype"), "EyeLike's dtype") if a.get("dtype") is not None else like
    return np.eye(shape[0], shape[1], k=a.get("k", 0), dtype=dt)


@handles("LpNormalization")
def _lp_normalization(imp, ins, a, n_out):
    x = imp.var(ins[0])
    axis = _norm_axes([a.get("axis", -1)], x.ndim)[0]
    p = a.get("p", 2)
    if p == 1:
        norm = L.sum(L.abs(x), axis, True)
    elif p == 2:
        norm = L.sqrt(L.sum(x * x, axis, True))
    else:
        raise Unsupported(f"p={p} (1 or 2)")
    return _same_dtype(L.where(L.equal(norm, 0), L.zeros_like(x), x / norm), x)


@handles("Trilu")
def _trilu(imp, ins, a, n_out):
    x = imp.var(ins[0])
    k = int(imp.static(ins[1], "Trilu's k").reshape(-1)[0]) if len(ins) > 1 and ins[1] is not None else 0
    rows, cols = x.shape[-2:]
    if not (isinstance(rows, int) and isinstance(cols, int)):
        raise Unsupported(f"Trilu of the symbolic matrix size {rows} x {cols}")
    upper = a.get("upper", 1)
    keep = np.triu(np.ones((rows, cols), bool), k) if upper else np.tril(np.ones((rows, cols), bool), k)
    return L.where(L.constant(keep, imp.graph, dtype="bool"), x, L.zeros_like(x))


def _nll(imp, logp: Var, target: Var, weight, a):
    """NegativeLogLikelihoodLoss of log-probabilities [N, C, d...] and targets [N, d...]."""
    c = logp.shape[1]
    if not isinstance(c, int):
        raise Unsupported(f"the symbolic number of classes {c}")
    target = L.cast(target, "i64")
    ignore = a.get("ignore_index")
    valid = L.not_equal(target, ignore) if ignore is not None else None
    safe = L.where(valid, target, L.zeros_like(target)) if valid is not None else target
    hot = _one_hot_along(imp, safe, c, 1, np.dtype(bool))
    picked = L.sum(L.where(hot, logp, L.zeros_like(logp)), 1)  # [N, d...]
    if weight is not None:
        w = L.reshape(imp.var(weight), (1, c) + (1,) * (logp.ndim - 2))
        wt = L.sum(L.where(hot, L.broadcast_to(w, logp.shape), L.zeros_like(logp)), 1)
    else:
        wt = L.ones_like(picked)
    if valid is not None:
        wt = L.where(valid, wt, L.zeros_like(wt))
    loss = -picked * wt
    reduction = a.get("reduction", "mean")
    if reduction == "none":
        return loss
    if reduction == "sum":
        return L.sum(loss)
    if reduction == "mean":
        return L.sum(loss) / L.sum(wt)
    raise Unsupported(f"reduction='{reduction}'")


@handles("NegativeLogLikelihoodLoss")
def _nll_loss(imp, ins, a, n_out):
    x = imp.var(ins[0])
    weight = ins[2] if len(ins) > 2 else None
    return _same_dtype(_nll(imp, x, imp.var(ins[1]), weight, a), x)


@handles("SoftmaxCrossEntropyLoss")
def _softmax_xent(imp, ins, a, n_out):
    x = imp.var(ins[0])
    logp = L.log_softmax(x, 1)
    weight = ins[2] if len(ins) > 2 else None
    loss = _same_dtype(_nll(imp, logp, imp.var(ins[1]), weight, a), x)
    return [loss, logp][:max(n_out, 1)]


@handles("CumSum")
def _cumsum(imp, ins, a, n_out):
    # a matmul with a triangular matrix of ones along the axis (moved last): static lengths
    x = imp.var(ins[0])
    axis = _norm_axes([int(imp.static(ins[1], "CumSum's axis").reshape(-1)[0])], x.ndim)[0]
    n = x.shape[axis]
    if not isinstance(n, int):
        raise Unsupported(f"CumSum along the symbolic dim {n}")
    exclusive, reverse = a.get("exclusive", 0), a.get("reverse", 0)
    tri = np.triu(np.ones((n, n), x.dtype), 1 if exclusive else 0)  # tri[i, j]: x[i] counts in out[j]
    if reverse:
        tri = tri.T
    perm = tuple(k for k in range(x.ndim) if k != axis) + (axis,)
    out = L.matmul(L.transpose(x, perm), L.constant(tri, imp.graph, dtype=x.dtype))
    return _same_dtype(L.transpose(out, tuple(perm.index(k) for k in range(x.ndim))), x)
