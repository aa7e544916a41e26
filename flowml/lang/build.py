"""AST → IR: builds a `Program` from a parsed .flow module.

Names live in scopes: a `def` or `fn` body has its own locals over the global scope. `def`s are
inlined at each call (so they cannot recurse). Everything a statement builds gets the statement's
source location, and every error is a located `FlowError`.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import FlowError, FlowGradError, FlowNameError, FlowSyntaxError, FlowTypeError, Loc, did_you_mean
from ..ir import lib as L
from ..ir import ops as P
from ..ir.graph import Graph, at
from ..ir.lib import Var
from ..ir.types import DTYPES, TensorType, dim_symbols, dtype_of, sym
from ..passes.grad import grad as grad_transform
from ..passes.rop import hessian, hessian_vector, jacobian, lop, rop
from ..program import rng_key, Derivative, FnDecl, InputDecl, ParamDecl, Program, UpdateDecl
from . import ast as A
from .builtins import ALIASES, BUILTINS, INITIALIZERS, Constant, Draw


@dataclass
class Binding:
    kind: str  # input param const value def dim
    value: Any
    loc: Loc | None


class Scope:
    def __init__(self, parent: "Scope | None" = None):
        self.parent = parent
        self.names: dict[str, Binding] = {}

    def lookup(self, name: str) -> Binding | None:
        scope: Scope | None = self
        while scope is not None:
            if name in scope.names:
                return scope.names[name]
            scope = scope.parent
        return None

    def visible(self) -> set[str]:
        out: set[str] = set()
        scope: Scope | None = self
        while scope is not None:
            out.update(scope.names)
            scope = scope.parent
        return out


_BINOPS = {
    "+": L.add, "-": L.subtract, "*": L.multiply, "/": L.divide, "//": L.floor_div, "%": L.mod,
    "**": L.power, "@": L.matmul, "==": L.equal, "!=": L.not_equal, "<": L.less, "<=": L.less_equal,
    ">": L.greater, ">=": L.greater_equal, "and": L.logical_and, "or": L.logical_or,
}


class Builder:
    def __init__(self, module: A.Module, ops: dict | None = None):
        self.module = module
        self.ops = _host_ops(ops)  # the wrapped ops the host passed in, by the name the program calls
        self.graph = Graph()
        self.program = Program(self.graph, file=module.file)
        self.globals = Scope()
        self.expanding: list[str] = []  # defs being inlined, to catch recursion
        self.seed_loc: Loc | None = None

    # ------------------------------------------------------------ statements

    def build(self) -> Program:
        for stmt in self.module.stmts:
            with at(stmt.loc):
                self.statement(stmt, self.globals, fn=None)
        return self.program

    def declare(self, scope: Scope, name: str, binding: Binding, loc: Loc) -> None:
        existing = scope.lookup(name) if scope is self.globals else scope.names.get(name)
        if existing is None and scope is not self.globals:
            outer = self.globals.lookup(name)
            if outer is not None and outer.kind in ("input", "param", "dim"):
                existing = outer
        if existing is not None:
            where = f" at {existing.loc}" if existing.loc else ""
            raise FlowNameError(f"'{name}' is already defined{where}", loc)
        if name in BUILTINS or name in DTYPES:
            raise FlowNameError(f"'{name}' is the name of a built-in; choose another name", loc)
        if name in self.ops:
            raise FlowNameError(f"'{name}' is the name of an op the host passes in (ops=); choose another name", loc)
        scope.names[name] = binding

    def statement(self, stmt: A.Stmt, scope: Scope, fn: FnDecl | None) -> None:
        if isinstance(stmt, A.SeedStmt):
            if self.seed_loc is not None:
                raise FlowNameError(f"the seed is already set at {self.seed_loc}", stmt.loc)
            self.seed_loc = stmt.loc
            self.program.seed = stmt.value
        elif isinstance(stmt, A.InputDecl):
            self.input_decl(stmt)
        elif isinstance(stmt, A.ParamDecl):
            self.param_decl(stmt)
        elif isinstance(stmt, A.ConstDecl):
            self.const_decl(stmt, scope)
        elif isinstance(stmt, A.Assign):
            self.assign(stmt, scope)
        elif isinstance(stmt, A.DefDecl):
            self.declare(scope, stmt.name, Binding("def", stmt, stmt.loc), stmt.loc)
        elif isinstance(stmt, A.FnDecl):
            self.fn_decl(stmt)
        elif isinstance(stmt, A.Update):
            if fn is None:
                raise FlowSyntaxError("an update `<-` can only appear inside an fn body", stmt.loc)
            self.update(stmt, scope, fn)
        elif isinstance(stmt, A.Return):
            raise FlowSyntaxError("`return` can only appear at the end of a def body", stmt.loc)
        else:  # pragma: no cover - the parser produces nothing else
            raise FlowSyntaxError(f"unexpected statement {type(stmt).__name__}", stmt.loc)

    def tensor_type(self, t: A.TypeExpr) -> TensorType:
        if t.dtype not in DTYPES:
            raise FlowTypeError(f"unknown dtype '{t.dtype}'; use one of {', '.join(DTYPES)}", t.loc)
        dims = []
        for d in t.dims:
            if isinstance(d, int) and d < 0:
                raise FlowTypeError(f"a dim must not be negative, got {d}", t.loc)
            dims.append(sym(d) if isinstance(d, str) else d)
        return TensorType(DTYPES[t.dtype], tuple(dims))

    def input_decl(self, stmt: A.InputDecl) -> None:
        t = self.tensor_type(stmt.type)
        var = L.input(self.graph, stmt.name, t)
        self.declare(self.globals, stmt.name, Binding("input", var, stmt.loc), stmt.loc)
        self.program.inputs[stmt.name] = InputDecl(stmt.name, var, stmt.loc)
        for d in t.shape:
            for s in dim_symbols(d):
                existing = self.globals.lookup(s)
                if existing is None:
                    self.globals.names[s] = Binding("dim", s, stmt.type.loc)
                elif existing.kind != "dim":
                    raise FlowNameError(f"'{s}' names a dim here but is already defined at {existing.loc}",
                                        stmt.type.loc)

    def param_decl(self, stmt: A.ParamDecl) -> None:
        t = self.tensor_type(stmt.type)
        if t.symbols():
            raise FlowTypeError(f"a param needs a fixed shape, but {stmt.name} is declared {t}", stmt.type.loc)
        init = self.initializer(stmt.init, t, stmt.name)
        var = L.param(self.graph, stmt.name, t)
        self.declare(self.globals, stmt.name, Binding("param", var, stmt.loc), stmt.loc)
        self.program.params[stmt.name] = ParamDecl(stmt.name, var, stmt.loc, init)

    def initializer(self, expr: A.Expr, t: TensorType, name: str):
        """A function rng -> initial value: normal/uniform draws, zeros/ones, or a constant."""
        shape = tuple(t.shape)
        kind = expr.func if isinstance(expr, A.Call) else (expr.name if isinstance(expr, A.Name) else None)
        if kind in INITIALIZERS and (isinstance(expr, A.Call) or kind in ("zeros", "ones")):
            args = [self.static(a, self.globals) for a in expr.args] if isinstance(expr, A.Call) else []
            kwargs = {k.name: self.static(k.value, self.globals) for k in expr.kwargs} \
                if isinstance(expr, A.Call) else {}
            draw = INITIALIZERS[kind]
            try:
                bound = inspect.signature(draw).bind(None, shape, *args, **kwargs)
            except TypeError as e:
                raise FlowTypeError(f"initializer {kind}{_signature(draw, skip=2)}: {e}", expr.loc) from None
            b = dict(bound.arguments)
            del b["rng"], b["shape"]
            for k, v in b.items():
                if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.number)):
                    raise FlowTypeError(f"initializer {kind}{_signature(draw, skip=2)}: {k} must be a number, "
                                        f"not {_kind_of(v)}", expr.loc)
            return Draw(kind, shape, b, t.dtype)
        value = np.asarray(self.static(expr, self.globals))
        try:
            full = np.broadcast_to(value, shape)
        except ValueError:
            raise FlowTypeError(f"the initial value of {name} has shape {value.shape}, "
                                f"which does not fit {t}", expr.loc) from None
        return Constant(full, t.dtype)

    def static(self, expr: A.Expr, scope: Scope):
        """The value of an expression that must be known when the model is built."""
        v = self.expr(expr, scope)
        if not isinstance(v, Var):
            return v
        value = L.const_value(v)
        if value is not None:
            return value
        used = self.graph.ancestors([v.id])
        for n in used:
            op = self.graph.op(n)
            if op in (P.input_, P.param, P.dim):
                raise FlowTypeError(f"this must be a constant, but it depends on {op.name} "
                                    f"'{self.graph.name(n) or self.graph.attrs(n).get('dim')}'", expr.loc)
        from ..backends.reference import evaluate
        result = evaluate(self.graph, [v.id], {}, {}, {})[v.id]
        return result.item() if result.ndim == 0 else result

    def const_decl(self, stmt: A.ConstDecl, scope: Scope) -> None:
        value = self.static(stmt.value, scope)
        with at(stmt.loc):
            if stmt.type is not None:
                t = self.tensor_type(stmt.type)
                try:
                    value = np.broadcast_to(np.asarray(value, dtype=t.dtype), t.shape)
                except (ValueError, TypeError):
                    raise FlowTypeError(f"the value of const {stmt.name} does not fit {t}", stmt.loc) from None
                var = L.constant(value, self.graph, dtype=t.dtype)
            else:
                var = L.constant(value, self.graph)
        self.graph.set_name(var.id, stmt.name)
        self.declare(scope, stmt.name, Binding("const", var, stmt.loc), stmt.loc)

    def assign(self, stmt: A.Assign, scope: Scope) -> None:
        value = self.expr(stmt.value, scope)
        targets = stmt.targets
        if len(targets) == 1:
            values = [value]
        else:
            if not isinstance(value, tuple):
                raise FlowTypeError(f"cannot unpack one value into {len(targets)} names", stmt.loc)
            values = list(value)
        if len(values) != len(targets):
            raise FlowTypeError(f"cannot unpack {len(values)} values into {len(targets)} names", stmt.loc)
        for target, v in zip(targets, values):
            with at(target.loc):
                if isinstance(v, tuple):
                    raise FlowTypeError(f"'{target.name}' would be a tuple of {len(v)} values; "
                                        f"unpack it: {', '.join(f'{target.name}{i}' for i in range(len(v)))} = ...",
                                        target.loc)
                if not isinstance(v, Var):
                    v = self.to_var(v)
            self.graph.set_name(v.id, target.name)
            self.declare(scope, target.name, Binding("value", v, target.loc), target.loc)

    def fn_decl(self, stmt: A.FnDecl) -> None:
        if stmt.name in self.program.functions:
            raise FlowNameError(f"fn '{stmt.name}' is already defined at {self.program.functions[stmt.name].loc}",
                                stmt.loc)
        inputs = []
        for p in stmt.params:
            b = self.globals.lookup(p.name)
            if b is None or b.kind != "input":
                what = f"is {_a(b.kind)}" if b else "is not declared"
                hint = did_you_mean(p.name, self.program.inputs)
                raise FlowNameError(f"fn {stmt.name} takes '{p.name}', which {what}: an fn takes declared inputs"
                                    + (f"; {hint}" if hint else ""), p.loc)
            if p.name in inputs:
                raise FlowNameError(f"fn {stmt.name} takes '{p.name}' twice", p.loc)
            inputs.append(p.name)
        fn = FnDecl(stmt.name, inputs, [], [], stmt.loc)
        scope = Scope(self.globals)
        for s in stmt.body:
            with at(s.loc):
                self.statement(s, scope, fn)
        for i, e in enumerate(stmt.outputs):
            with at(e.loc):
                v = self.expr(e, scope)
                if isinstance(v, tuple):
                    raise FlowTypeError("an output must be one value, not a tuple", e.loc)
                v = self.to_var(v)
            label = e.name if isinstance(e, A.Name) else f"out{i}"
            fn.outputs.append((label, v))
        self.program.functions[stmt.name] = fn

    def update(self, stmt: A.Update, scope: Scope, fn: FnDecl) -> None:
        name = stmt.target.name
        b = self.globals.lookup(name)
        if b is None or b.kind != "param":
            what = f"is {_a(b.kind)}" if b else "is not declared"
            hint = did_you_mean(name, self.program.params) if b is None else None
            raise FlowNameError(f"only params can be updated, and '{name}' {what}" + (f"; {hint}" if hint else ""),
                                stmt.target.loc)
        value = self.to_var(self.expr(stmt.value, scope))
        param_type = b.value.type
        if value.type.weak and value.type.shape == param_type.shape:
            value = L.cast(value, param_type.dtype)
        fn.updates.append(UpdateDecl(name, value, stmt.loc))

    # ------------------------------------------------------------ expressions

    def to_var(self, v) -> Var:
        if isinstance(v, Var):
            return v
        if isinstance(v, (bool, int, float)):
            return L.constant(v, self.graph)
        raise FlowTypeError(f"expected a value here, got {_kind_of(v)}")

    def expr(self, e: A.Expr, scope: Scope):
        with at(e.loc):
            return self._expr(e, scope)

    def _expr(self, e: A.Expr, scope: Scope):
        if isinstance(e, A.Num):
            return e.value
        if isinstance(e, A.Bool):
            return e.value
        if isinstance(e, A.Str):
            return e.value
        if isinstance(e, A.Name):
            return self.name(e, scope)
        if isinstance(e, A.BinOp):
            left, right = self.expr(e.left, scope), self.expr(e.right, scope)
            for side, v in ((e.left, left), (e.right, right)):
                if not isinstance(v, (Var, bool, int, float)):
                    raise FlowTypeError(f"cannot use {_kind_of(v)} as an operand of {e.op}", side.loc)
            if not isinstance(left, Var) and not isinstance(right, Var):
                left = self.to_var(left)
            return _BINOPS[e.op](left, right)
        if isinstance(e, A.UnaryOp):
            if e.op == "-" and isinstance(e.operand, A.Num):
                return -e.operand.value
            v = self.expr(e.operand, scope)
            if not isinstance(v, (Var, bool, int, float)):
                raise FlowTypeError(f"cannot apply {e.op} to {_kind_of(v)}", e.loc)
            v = self.to_var(v)
            return {"-": L.negative, "+": lambda x: x, "not": L.logical_not}[e.op](v)
        if isinstance(e, A.Call):
            return self.call(e, scope)
        if isinstance(e, A.Index):
            return self.index(e, scope)
        if isinstance(e, A.Attr):
            return self.attr(e, scope)
        if isinstance(e, A.TupleExpr):
            return tuple(self.expr(x, scope) for x in e.items)
        if isinstance(e, A.IfExpr):
            cond = self.to_var(self.expr(e.cond, scope))
            then = self.expr(e.then, scope)
            orelse = self.expr(e.orelse, scope)
            return L.ifelse(cond, then if isinstance(then, Var) else self.to_var(then), orelse)
        raise FlowSyntaxError(f"unexpected expression {type(e).__name__}", e.loc)  # pragma: no cover

    def name(self, e: A.Name, scope: Scope):
        b = scope.lookup(e.name)
        if b is None:
            if e.name == "none":  # as in axis=none: numpy's None
                return None
            if e.name in DTYPES:
                return e.name
            if e.name in BUILTINS or e.name in self.ops:
                raise FlowNameError(f"'{e.name}' is a function; call it: {e.name}(...)", e.loc)
            hint = did_you_mean(e.name, scope.visible() | set(BUILTINS) | set(DTYPES) | set(self.ops), ALIASES)
            raise FlowNameError(f"unknown name '{e.name}'" + (f"; {hint}" if hint else ""), e.loc)
        if b.kind == "def":
            raise FlowNameError(f"'{e.name}' is a def; call it: {e.name}(...)", e.loc)
        if b.kind == "dim":
            return L.dim(self.graph, sym(e.name))
        return b.value

    def index(self, e: A.Index, scope: Scope):
        base = self.expr(e.value, scope)
        items = []
        for it in e.items:
            if isinstance(it, A.Slice):
                parts = [None if p is None else self.expr(p, scope) for p in (it.start, it.stop, it.step)]
                items.append(slice(*parts))
            elif isinstance(it, A.Ellipsis_):
                items.append(Ellipsis)
            else:
                items.append(self.expr(it, scope))
        if isinstance(base, tuple):  # x.shape[k], or an element of a tuple-valued def
            if len(items) != 1 or isinstance(items[0], slice):
                raise FlowTypeError("a tuple takes one constant index, as in x.shape[0]", e.loc)
            k = L.static_int(items[0], "a tuple index")
            if not -len(base) <= k < len(base):
                raise FlowTypeError(f"index {k} is out of range for a tuple of {len(base)}", e.loc)
            return base[k]
        if not isinstance(base, Var):
            raise FlowTypeError(f"cannot index {_kind_of(base)}", e.loc)
        return L.getitem(base, tuple(items))

    def attr(self, e: A.Attr, scope: Scope):
        base = self.expr(e.value, scope)
        if not isinstance(base, Var):
            raise FlowTypeError(f"{_kind_of(base)} has no attribute .{e.name}", e.loc)
        if e.name == "T":
            return L.transpose(base)
        if e.name == "shape":
            return tuple(L.dim(self.graph, d) for d in base.type.shape)
        if e.name == "ndim":
            return base.ndim
        raise FlowNameError(f"unknown attribute .{e.name}; values have .T, .shape and .ndim", e.loc)

    def call(self, e: A.Call, scope: Scope):
        b = scope.lookup(e.func)
        if b is not None:
            if b.kind != "def":
                raise FlowNameError(f"'{e.func}' is {_a(b.kind)} (defined at {b.loc}), not a function", e.func_loc)
            return self.inline(b.value, e, scope)
        if e.func == "grad":
            return self.grad_call(e, scope)
        if e.func in ("scan", "iterate"):
            return self.loop_call(e, scope)
        if e.func in DERIVATIVES:
            return self.derivative_call(e, scope)
        if e.func in self.ops:
            return self.wrapped_call(e, scope)
        if e.func not in BUILTINS:
            hint = did_you_mean(e.func, {n for n in scope.visible() if (scope.lookup(n).kind == "def")}
                                | set(BUILTINS) | set(self.ops), ALIASES)
            raise FlowNameError(f"unknown function '{e.func}'" + (f"; {hint}" if hint else ""), e.func_loc)
        fn = BUILTINS[e.func]
        args = [self.expr(a, scope) for a in e.args]
        kwargs = self.keywords(e, scope)
        graph_arg = (self.graph,) if getattr(fn, "needs_graph", False) else ()
        if getattr(fn, "needs_rng", False):
            graph_arg = (rng_key(self.program),)
        if not graph_arg and args and not _has_var(args) and isinstance(args[0], (int, float)):
            args[0] = self.to_var(args[0])  # `abs(-3)`, `exp(1.0)`: give the library a value
        try:
            inspect.signature(fn).bind(*graph_arg, *args, **kwargs)
        except TypeError as err:
            raise FlowTypeError(f"{e.func}{_signature(fn)}: {_arg_error(err, fn)}", e.loc) from None
        _check_dtype_arg(e.func, fn, graph_arg + tuple(args), kwargs, e.loc)
        return fn(*graph_arg, *args, **kwargs)

    def wrapped_call(self, e: A.Call, scope: Scope):
        """A call of a wrapped op the host passed in: its operands are values (numbers become
        constants), its keyword arguments static values passed to the function."""
        op = self.ops[e.func]
        args = []
        for a in e.args:
            v = self.expr(a, scope)
            if not isinstance(v, (Var, bool, int, float)):
                raise FlowTypeError(f"{e.func}: an operand must be a value, not {_kind_of(v)}", a.loc)
            args.append(self.to_var(v))
        kwargs = self.keywords(e, scope)
        for k, v in kwargs.items():
            if isinstance(v, Var):
                raise FlowTypeError(f"{e.func}: keyword argument '{k}' must be a constant (a number, string or "
                                    "tuple), not a model value; pass values positionally", e.loc)
        with at(e.loc):
            return op(*args, **kwargs)

    def keywords(self, e: A.Call, scope: Scope) -> dict:
        kwargs = {}
        for k in e.kwargs:
            if k.name in kwargs:
                raise FlowSyntaxError(f"keyword argument '{k.name}' given twice", k.loc)
            kwargs[k.name] = self.expr(k.value, scope)
        return kwargs

    def grad_call(self, e: A.Call, scope: Scope):
        kwargs = self.keywords(e, scope)
        policy = kwargs.pop("disconnected", "error")
        if kwargs:
            raise FlowTypeError(f"grad(cost, wrt..., disconnected=\"error\"): unexpected keyword "
                                f"'{next(iter(kwargs))}'", e.loc)
        if len(e.args) < 2:
            raise FlowTypeError("grad(cost, wrt...) needs a cost and at least one value to differentiate by",
                                e.loc)
        cost = self.to_var(self.expr(e.args[0], scope))
        wrt = []
        for a in e.args[1:]:
            v = self.expr(a, scope)
            if not isinstance(v, Var):
                raise FlowTypeError(f"grad: cannot differentiate with respect to {_kind_of(v)}", a.loc)
            wrt.append(v)
        with _located_at_call(e):
            grads = grad_transform(cost, *wrt, disconnected=policy)
        self.record("grad", e, [cost], wrt, [], grads)
        return grads[0] if len(grads) == 1 else tuple(grads)

    def record(self, kind: str, e: A.Call, ys, xs, directions, results) -> None:
        """Remember a derivative expression, for `flowml gradcheck`."""
        line = e.loc.source_line()
        # the derivative's source line, without a trailing comment (.flow has no strings)
        text = line.split("#", 1)[0].strip() if line else kind
        self.program.derivatives.append(Derivative(kind, text, e.loc, list(ys), list(xs), list(directions),
                                                   list(results)))

    def derivative_call(self, e: A.Call, scope: Scope):
        """rop(y, x, v), lop(y, x, u), jacobian(y, x), hessian(cost, x), hessian_vector(cost, x, v);
        x/v (and y/u for lop) may be tuples for several pairs."""
        arity = {"rop": 3, "lop": 3, "jacobian": 2, "hessian": 2, "hessian_vector": 3}[e.func]
        kwargs = self.keywords(e, scope)
        policy = kwargs.pop("disconnected", "error")
        names = {"rop": "(y, x, v)", "lop": "(y, x, u)", "jacobian": "(y, x)", "hessian": "(cost, x)",
                 "hessian_vector": "(cost, x, v)"}[e.func]
        if kwargs or len(e.args) != arity:
            problem = f"unexpected keyword '{next(iter(kwargs))}'" if kwargs else \
                f"takes {arity} arguments, got {len(e.args)}"
            raise FlowTypeError(f"{e.func}{names}: {problem}", e.loc)
        args = [self.expr(a, scope) for a in e.args]
        as_list = lambda v: [self.to_var(x) for x in v] if isinstance(v, tuple) else [self.to_var(v)]  # noqa: E731
        with _located_at_call(e):
            if e.func == "rop":
                ys, xs, vs = as_list(args[0]), as_list(args[1]), as_list(args[2])
                results = rop(ys, xs, vs, disconnected=policy)
                self.record("rop", e, ys, xs, vs, results)
            elif e.func == "lop":
                ys, xs, us = as_list(args[0]), as_list(args[1]), as_list(args[2])
                results = lop(ys, xs, us, disconnected=policy)
                self.record("lop", e, ys, xs, us, results)
            elif e.func == "jacobian":
                y, x = self.to_var(args[0]), self.to_var(args[1])
                results = [jacobian(y, x)]
                self.record("jacobian", e, [y], [x], [], results)
            elif e.func == "hessian":
                cost, x = self.to_var(args[0]), self.to_var(args[1])
                results = [hessian(cost, x)]
                self.record("hessian", e, [cost], [x], [], results)
            else:
                cost, x = self.to_var(args[0]), self.to_var(args[1])
                results = [hessian_vector(cost, x, args[2])]
                self.record("hessian_vector", e, [cost], [x], [args[2]], results)  # v: a Var or a number
        return results[0] if len(results) == 1 else tuple(results)

    def loop_call(self, e: A.Call, scope: Scope):
        """scan(step, init, xs...) -> the stacked outputs; iterate(step, init, n) -> the final
        carries. `step` is a def taking the carries (then the sequences' elements) and returning
        the new carries (then any values to emit); `init` is a value or a tuple of them."""
        from ..ir import scan as S
        usage = {"scan": "scan(step, init, xs..., truncate=none)", "iterate": "iterate(step, init, n)"}[e.func]
        kwargs = self.keywords(e, scope)
        truncate = kwargs.pop("truncate", None) if e.func == "scan" else None
        if truncate is not None and (not isinstance(truncate, int) or isinstance(truncate, bool) or truncate < 1):
            raise FlowTypeError(f"{usage}: truncate must be a positive integer (the steps to backpropagate "
                                f"through), not {truncate!r}", e.loc)
        if len(e.args) < (2 if e.func == "scan" else 3) or kwargs:
            raise FlowTypeError(f"{usage}: takes a def, the initial carried state(s) and "
                                + ("the sequences" if e.func == "scan" else "the number of steps"), e.loc)
        f = e.args[0]
        b = scope.lookup(f.name) if isinstance(f, A.Name) else None
        if b is None or b.kind != "def":
            raise FlowTypeError(f"{usage}: the first argument must be the name of a def (the loop's body)",
                                f.loc if hasattr(f, "loc") else e.loc)
        init = self.expr(e.args[1], scope)
        inits = [self.to_var(v) for v in init] if isinstance(init, tuple) else [self.to_var(init)]
        d: A.DefDecl = b.value

        def body(*phs):
            results = self.inline_values(d, list(phs), e)
            count = len(results) if isinstance(results, tuple) else 1
            if count < len(inits):  # located at the body's return, the loop as a note
                where = d.result[0].loc if d.result else d.loc
                raise FlowTypeError(f"the loop body {d.name} returns {count} value{'' if count == 1 else 's'} "
                                    f"but {e.func} carries {len(inits)} states: it must return the new "
                                    "carried states first (then any values to emit)", where,
                                    [f"the {e.func} is at {e.loc}"])
            return results

        with _located_at_call(e):
            if e.func == "iterate":
                steps = self.expr(e.args[2], scope)
                try:
                    n = L.as_dim(steps)
                except FlowTypeError:
                    raise FlowTypeError(f"{usage}: the number of steps n must be an integer or a dim (like N or "
                                        f"x.shape[0]), not {_kind_of(steps)}", e.args[2].loc) from None
                outs = S.iterate(body, inits, n, loc=e.loc)
            else:
                seqs = [self.to_var(self.expr(a, scope)) for a in e.args[2:]]
                outs = S.scan(body, inits, seqs, loc=e.loc, truncate=truncate)
        return outs[0] if len(outs) == 1 else tuple(outs)

    def inline(self, d: A.DefDecl, call: A.Call, scope: Scope):
        args = [self.expr(a, scope) for a in call.args]
        kwargs = self.keywords(call, scope)
        return self.inline_values(d, args, call, kwargs)

    def inline_values(self, d: A.DefDecl, args: list, call: A.Call, kwargs: dict | None = None):
        """The value of def `d` applied to evaluated `args` (inlined into the graph)."""
        kwargs = kwargs or {}
        if d.name in self.expanding:
            chain = " -> ".join(self.expanding[self.expanding.index(d.name):] + [d.name])
            raise FlowNameError(f"recursion in def {d.name} ({chain}): defs are inlined, so they cannot "
                                "call themselves", call.loc)
        names = [p.name for p in d.params]
        signature = f"{d.name}({', '.join(names)})"
        if len(args) > len(names):
            raise FlowTypeError(f"{signature} takes {len(names)} argument{'' if len(names) == 1 else 's'}, "
                                f"got {len(args)}", call.loc)
        bound = dict(zip(names, args))
        for k, v in kwargs.items():
            if k not in names:
                hint = did_you_mean(k, names)
                raise FlowTypeError(f"{signature} has no parameter '{k}'" + (f"; {hint}" if hint else ""), call.loc)
            if k in bound:
                raise FlowTypeError(f"{signature} got '{k}' twice", call.loc)
            bound[k] = v
        local = Scope(self.globals)
        for p in d.params:
            if p.name not in bound:
                if p.default is None:
                    raise FlowTypeError(f"{signature} is missing argument '{p.name}'", call.loc)
                bound[p.name] = self.expr(p.default, self.globals)
            local.names[p.name] = Binding("value", bound[p.name], p.loc)
        self.expanding.append(d.name)
        try:
            for s in d.body:
                with at(s.loc):
                    if not isinstance(s, A.Assign):
                        raise FlowSyntaxError("a def body holds definitions and ends with return", s.loc)
                    self.assign(s, local)
            results = [self.expr(r, local) for r in d.result]
        finally:
            self.expanding.pop()
        return results[0] if len(results) == 1 else tuple(results)


def _a(kind: str) -> str:
    """'an input', 'a param': a binding kind with its article."""
    return f"an {kind}" if kind[:1] in "aeiou" else f"a {kind}"


def _check_dtype_arg(name: str, fn, args: tuple, kwargs: dict, loc) -> None:
    """A builtin's `dtype` argument must name one of flowml's dtypes (numpy would raise its own
    TypeError or ValueError from deep inside the library otherwise)."""
    bound = inspect.signature(fn).bind(*args, **kwargs).arguments
    if "dtype" not in bound or bound["dtype"] is None or isinstance(bound["dtype"], TensorType):
        return
    dt = bound["dtype"]
    known = ", ".join(DTYPES)
    if not isinstance(dt, str):
        raise FlowTypeError(f"{name}: dtype must be one of {known}, not {_kind_of(dt)}", loc)
    try:
        dtype_of(dt)  # flowml's names, or a numpy name of one of its dtypes ("float64")
    except (TypeError, ValueError):
        raise FlowTypeError(f"{name}: unknown dtype '{dt}'; use one of {known}", loc) from None


DERIVATIVES = ("rop", "lop", "jacobian", "hessian", "hessian_vector")


@contextlib.contextmanager
def _located_at_call(e: A.Call):
    """The passes locate their errors at a value's definition, which may be far from the call:
    point at the call, and keep the definition as a note."""
    try:
        yield
    except FlowGradError as err:
        if err.loc is None or err.loc == e.loc:
            raise
        notes = [f"the value it is about is defined at {err.loc}", *err.notes]
        raise type(err)(err.message, e.loc, notes) from None


def _has_var(values) -> bool:
    return any(isinstance(v, Var) or (isinstance(v, tuple) and _has_var(v)) for v in values)


def _kind_of(v) -> str:
    if isinstance(v, tuple):
        return f"a tuple of {len(v)}"
    if isinstance(v, str):
        return f"the string {v!r}" if v not in DTYPES else f"the dtype {v}"
    if isinstance(v, Var):
        return f"a value of type {v.type}"
    return repr(v)


def _signature(fn, skip: int = 0) -> str:
    params = list(inspect.signature(fn).parameters.values())
    if getattr(fn, "needs_graph", False):
        params = params[1:]
    params = params[skip:]
    parts = []
    for p in params:
        if p.kind is p.VAR_POSITIONAL:
            parts.append(f"*{p.name}")
        elif p.default is inspect.Parameter.empty:
            parts.append(p.name)
        else:
            default = {True: "true", False: "false", None: "none"}.get(p.default, p.default) \
                if isinstance(p.default, (bool, type(None))) else p.default
            parts.append(f"{p.name}={default}")
    return f"({', '.join(parts)})"


def _arg_error(err: TypeError, fn) -> str:
    text = str(err)
    if "unexpected keyword argument" in text:
        name = text.split("'")[1]
        names = [p for p in inspect.signature(fn).parameters]
        hint = did_you_mean(name, names)
        return f"unexpected keyword '{name}'" + (f"; {hint}" if hint else "")
    return text.replace("missing a required argument", "missing argument")


def _host_ops(ops) -> dict:
    """`ops=` of flowml.load(s): names (not those of built-ins) to wrapped ops (flowml.op)."""
    from ..ir.ops.wrapped import WrappedOp
    if ops is None:
        return {}
    if not isinstance(ops, dict):
        raise FlowTypeError(f"ops= maps the names a program calls to ops made by flowml.op, not {ops!r:.40}")
    for name, op in ops.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise FlowNameError(f"ops=: {name!r} is not a name a program can call")
        if name in BUILTINS or name in DTYPES or name == "none":
            raise FlowNameError(f"ops=: '{name}' is the name of a built-in; pass the op under another name")
        if not isinstance(op, WrappedOp):
            raise FlowTypeError(f"ops['{name}'] is {op!r:.40}, not an op: wrap the function with "
                                "flowml.op(fn, out_type) first")
    return dict(ops)


def build(module: A.Module, ops: dict | None = None) -> Program:
    try:
        return Builder(module, ops).build()
    except RecursionError:
        raise FlowError("the model is nested too deeply to build") from None
