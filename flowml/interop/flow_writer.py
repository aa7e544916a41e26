"""A fn's graph as it was built (no optimizer) written back as a readable .flow program: one
`name = expr` line per node, the inputs and params declared with their types. What `flowml
import` writes for an imported ONNX model.

The params' values go to an .npz beside the program (`--load-params`); the .flow language has
no array literals, so a constant array (a Gather's indices, a pool's window of ones) is written
as a param too, its value in the same .npz. An op with no .flow spelling is a FlowError naming it.
"""

from __future__ import annotations

import numpy as np

from ..errors import FlowError
from ..ir.types import DTYPE_NAMES, Sym

_INFIX = {"add": "+", "sub": "-", "mul": "*", "div": "/", "floordiv": "//", "mod": "%", "pow": "**",
          "matmul": "@", "eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">=",
          "and": "and", "or": "or"}
# ops written as the built-in function of the same name, operands only
_CALLS = {"exp", "log", "log1p", "expm1", "sqrt", "abs", "sign", "sin", "cos", "tanh", "erf", "erfc", "sigmoid",
          "softplus", "relu", "maximum", "minimum", "where", "det", "stop_gradient", "zeros_like"}
_RENAMED = {"abs_": "abs"}


def _dim(d) -> str:
    return str(d) if isinstance(d, (int, Sym)) else repr(d)


def _tuple(values) -> str:
    values = [_dim(v) for v in values]
    return "(" + ", ".join(values) + ("," if len(values) == 1 else "") + ")"


def type_text(t) -> str:
    name = DTYPE_NAMES[t.dtype]
    return name if not t.shape else f"{name}[{', '.join(_dim(d) for d in t.shape)}]"


def _literal(value, dtype) -> str:
    v = np.asarray(value).item()
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if np.isnan(v):
            return "(0.0 / 0.0)"
        if np.isinf(v):
            return "(1.0 / 0.0)" if v > 0 else "(-(1.0 / 0.0))"
        return repr(v)
    return str(v)


class FlowWriter:
    def __init__(self, program, fn_name: str):
        self.program, self.fn = program, program.functions[fn_name]
        self.graph = program.graph
        self.names: dict[int, str] = {}
        self.lines: list[str] = []
        self.params: dict[str, np.ndarray] = {}  # constant arrays, written as params
        self.decls: list[str] = []

    def name(self, n: int) -> str:
        return self.names[n]

    def write(self, param_values: dict) -> tuple[str, dict]:
        g = self.graph
        needed = g.ancestors([v.id for _, v in self.fn.outputs])
        for name in self.fn.inputs:
            var = self.program.inputs[name].var
            self.decls.append(f"input {name} : {type_text(var.type)}")
            self.names[var.id] = name
        used = set(self.fn.inputs)
        for name, decl in self.program.params.items():
            if decl.var.id in needed:
                self.decls.append(f"param {name} : {type_text(decl.var.type)} = zeros   # from the .npz")
                self.names[decl.var.id] = name
                self.params[name] = np.asarray(param_values[name])
                used.add(name)
        wanted = {}  # a node the fn returns is named as the output, where that name is free
        for out_name, v in self.fn.outputs:
            if out_name.isidentifier() and out_name not in used and v.id not in self.names:
                wanted.setdefault(v.id, out_name)
        k = 0
        for n in g.topo(needed):
            if n in self.names:
                continue
            expr = self.expr(n)
            if expr is None:  # (a constant array: a param, declared above the math)
                continue
            if wanted.get(n) not in used and n in wanted:
                name = wanted[n]
            else:
                k += 1
                name = f"v{k}"
                while name in used or name in wanted.values():
                    k += 1
                    name = f"v{k}"
            used.add(name)
            self.names[n] = name
            self.lines.append(f"{name} = {expr}   # {type_text(g.type(n))}")
        outs = ", ".join(self.names[v.id] for _, v in self.fn.outputs)
        text = "\n".join(self.decls) + "\n\n" + "\n".join(self.lines) + \
            f"\n\nfn {self.fn.name}({', '.join(self.fn.inputs)}) -> {outs}\n"
        return text, self.params

    def expr(self, n: int) -> str | None:
        g = self.graph
        op = _RENAMED.get(g.op(n).name, g.op(n).name)
        a = g.attrs(n)
        ins = [self.names[o] for o in g.operands(n)]
        t = g.type(n)
        if op == "const":
            value = np.asarray(a["value"])
            if value.ndim == 0:
                lit = _literal(value, t.dtype)
                return lit if t.weak else f"cast({lit}, {DTYPE_NAMES[t.dtype]})"
            name = f"const{len(self.params) + 1}"
            while name in self.program.params or name in self.program.inputs:
                name += "_"
            self.params[name] = value
            self.decls.append(f"param {name} : {type_text(t)} = zeros   # a constant, from the .npz")
            self.names[n] = name
            return None
        if op in _INFIX:
            return f"({ins[0]} {_INFIX[op]} {ins[1]})"
        if op == "neg":
            return f"(-{ins[0]})"
        if op == "not":
            return f"(not {ins[0]})"
        if op in _CALLS:
            return f"{op}({', '.join(ins)})"
        if op == "cast":
            return f"cast({ins[0]}, {DTYPE_NAMES[np.dtype(a['dtype'])]})"
        if op in ("sum", "prod", "max", "min", "logsumexp"):
            return f"{op}({ins[0]}, axis={_tuple(a['axis'])}, keepdims={str(a['keepdims']).lower()})"
        if op in ("argmax", "argmin"):
            axis = "" if a["axis"] is None else f", axis={a['axis']}"
            return f"{op}({ins[0]}{axis}, keepdims={str(a['keepdims']).lower()})"
        if op in ("softmax", "log_softmax"):
            return f"{op}({ins[0]}, axis={a['axis']})"
        if op == "transpose":
            return f"transpose({ins[0]}, {_tuple(a['axes'])})"
        if op in ("reshape", "broadcast_to"):
            return f"{op}({ins[0]}, {_tuple(a['shape'])})"
        if op == "concatenate":
            return f"concatenate({', '.join(ins)}, axis={a['axis']})"
        if op == "dim":
            return _dim(a["dim"]) if isinstance(a["dim"], Sym) and a["dim"].coeff == 1 and len(a["dim"].names) == 1 \
                else f"({' * '.join([str(a['dim'].coeff)] + list(a['dim'].names))})"
        if op == "full":
            dt = DTYPE_NAMES[t.dtype]
            if isinstance(a["value"], float) and not np.isfinite(a["value"]):
                # (full's value of a constant expression like (1.0 / 0.0) comes out nan: added instead)
                return f"(zeros({_tuple(a['shape'])}, {dt}) + cast({_literal(a['value'], t.dtype)}, {dt}))"
            return f"full({_tuple(a['shape'])}, {_literal(a['value'], t.dtype)}, {dt})"
        if op == "arange":
            return f"arange({a['start']}, {_dim(a['stop'])}, {a['step']})"
        if op == "onehot":
            return f"onehot({ins[0]}, {a['n']}, {DTYPE_NAMES[t.dtype]})"
        if op == "conv2d":
            (pt, pb), (pl, pr) = a["padding"]
            return f"conv2d({ins[0]}, {ins[1]}, stride={_tuple(a['stride'])}, padding=(({pt}, {pb}), ({pl}, {pr})))"
        if op == "conv2d_backprop_input":
            # the transposed convolution, spelled as what it is: the gradient of a conv2d with
            # respect to its images (the .flow built-ins have no name for it)
            (pt, pb), (pl, pr) = a["padding"]
            z = f"zeros_{n}"
            self.lines.append(f"{z} = zeros({_tuple(t.shape)}, {DTYPE_NAMES[t.dtype]})")
            conv = f"conv2d({z}, {ins[1]}, stride={_tuple(a['stride'])}, padding=(({pt}, {pb}), ({pl}, {pr})))"
            return f"grad(sum({conv} * {ins[0]}), {z})"
        if op == "max_pool2d":
            return f"max_pool2d({ins[0]}, {_tuple(a['window'])}, {_tuple(a['stride'])})"
        if op == "index":
            return self.index(n, ins)
        raise FlowError(f"cannot write fn {self.fn.name} as .flow: op '{op}' has no .flow spelling here")

    def index(self, n, ins) -> str:
        items = []
        for it in self.graph.attrs(n)["spec"]:
            if it[0] == "int":
                items.append(str(it[1]))
            elif it[0] == "arr":
                items.append(ins[it[1]])
            elif it[0] == "slice":
                start, stop, step = ("" if v is None else _dim(v) for v in it[1:])
                items.append(f"{start}:{stop}" + (f":{step}" if step else ""))
            else:
                raise FlowError(f"cannot write fn {self.fn.name} as .flow: a new-axis index")
        return f"{ins[0]}[{', '.join(items)}]"


def write_flow(model, fn_name: str | None = None) -> tuple[str, dict]:
    """(the .flow text of `model`'s fn, the arrays of its params and constant arrays)."""
    fn_name = fn_name or next(iter(model.functions))
    return FlowWriter(model.program, fn_name).write(model.params.to_dict())
