"""Tests of the .flow parser: every construct, precedence, locations, errors, and hostile input."""

from __future__ import annotations

import pytest

from flowml.errors import FlowSyntaxError, Loc
from flowml.lang import ast
from flowml.lang.parser import KEYWORDS, MAX_DEPTH, MAX_NESTING, parse, parse_type

# ---------------------------------------------------------------- helpers


def stmts(src: str) -> list[ast.Stmt]:
    return parse(src, "t.flow").stmts


def expr(src: str) -> ast.Expr:
    """The AST of one expression, parsed as the right side of `x = ...`."""
    (stmt,) = stmts(f"x = {src}")
    return stmt.value


def show(e) -> str:
    """A compact, fully parenthesised rendering of an expression, to check its structure."""
    if e is None:
        return ""
    if isinstance(e, ast.Num):
        return repr(e.value)
    if isinstance(e, ast.Bool):
        return "true" if e.value else "false"
    if isinstance(e, ast.Str):
        return repr(e.value)
    if isinstance(e, ast.Name):
        return e.name
    if isinstance(e, ast.BinOp):
        return f"({show(e.left)} {e.op} {show(e.right)})"
    if isinstance(e, ast.UnaryOp):
        return f"({e.op} {show(e.operand)})"
    if isinstance(e, ast.IfExpr):
        return f"(if {show(e.cond)} then {show(e.then)} else {show(e.orelse)})"
    if isinstance(e, ast.Call):
        args = [show(a) for a in e.args] + [f"{k.name}={show(k.value)}" for k in e.kwargs]
        return f"{e.func}({', '.join(args)})"
    if isinstance(e, ast.Index):
        return f"{show(e.value)}[{', '.join(show(i) for i in e.items)}]"
    if isinstance(e, ast.Slice):
        text = f"{show(e.start)}:{show(e.stop)}"
        return text + (f":{show(e.step)}" if e.step is not None else "")
    if isinstance(e, ast.Attr):
        return f"{show(e.value)}.{e.name}"
    if isinstance(e, ast.TupleExpr):
        return "(" + "".join(show(i) + ", " for i in e.items) + ")"
    raise AssertionError(f"unexpected node {e!r}")


def error(src, file: str = "t.flow") -> FlowSyntaxError:
    with pytest.raises(FlowSyntaxError) as info:
        parse(src, file)
    return info.value


def at(err: FlowSyntaxError) -> tuple[int, int]:
    return err.loc.line, err.loc.col


# ---------------------------------------------------------------- declarations


def test_seed():
    (s,) = stmts("seed 1234")
    assert s == ast.SeedStmt(Loc("t.flow", 1, 1), 1234)


def test_input_with_symbolic_and_integer_dims():
    (s,) = stmts("input x : f64[N, 784]")
    assert isinstance(s, ast.InputDecl) and s.name == "x"
    assert s.type == ast.TypeExpr("f64", ["N", 784], Loc("t.flow", 1, 11))


@pytest.mark.parametrize("text", ["f32", "f32[]", "f32[ ]"])
def test_scalar_types(text):
    (s,) = stmts(f"input x : {text}")
    assert s.type.dtype == "f32" and s.type.dims == []


@pytest.mark.parametrize("dtype", ["f32", "f64", "i32", "i64", "bool"])
def test_every_dtype(dtype):
    assert stmts(f"input x : {dtype}[3]")[0].type.dtype == dtype


def test_type_trailing_comma_and_line_breaks_inside_brackets():
    (s,) = stmts("input x : f64[\n  N,\n  10,\n]")
    assert s.type.dims == ["N", 10]


def test_param():
    (s,) = stmts("param w : f64[784] = normal(0, 1)")
    assert isinstance(s, ast.ParamDecl) and s.name == "w" and s.type.dims == [784]
    assert show(s.init) == "normal(0, 1)"


def test_param_scalar_init():
    (s,) = stmts("param b : f64 = 0")
    assert s.type.dims == [] and s.init == ast.Num(Loc("t.flow", 1, 17), 0)


def test_const_without_and_with_type():
    a, b = stmts("const lr = 0.1\nconst k : i64 = 3")
    assert isinstance(a, ast.ConstDecl) and a.name == "lr" and a.type is None and a.value.value == 0.1
    assert b.type == ast.TypeExpr("i64", [], Loc("t.flow", 2, 11)) and b.value.value == 3


def test_assign():
    (s,) = stmts("p_1 = sigmoid(x @ w + b)")
    assert isinstance(s, ast.Assign)
    assert s.targets == [ast.Target("p_1", Loc("t.flow", 1, 1))]
    assert show(s.value) == "sigmoid(((x @ w) + b))"


def test_tuple_unpacking():
    (s,) = stmts("gw, gb = grad(cost, w, b)")
    assert [t.name for t in s.targets] == ["gw", "gb"]
    assert s.targets[1].loc == Loc("t.flow", 1, 5)


def test_def_expression_form():
    (s,) = stmts("def layer(x, W, b=0) = tanh(x @ W + b)")
    assert isinstance(s, ast.DefDecl) and s.name == "layer" and s.body == []
    assert [(p.name, p.default) for p in s.params[:2]] == [("x", None), ("W", None)]
    assert s.params[2].name == "b" and s.params[2].default.value == 0
    assert s.params[2].loc == Loc("t.flow", 1, 17)
    assert [show(r) for r in s.result] == ["tanh(((x @ W) + b))"]


def test_def_block_form():
    (s,) = stmts("def two(x) {\n    h = x * 2\n    return h, h + 1\n}")
    assert [p.name for p in s.params] == ["x"]
    assert len(s.body) == 1 and isinstance(s.body[0], ast.Assign)
    assert [show(r) for r in s.result] == ["h", "(h + 1)"]


def test_def_without_params_and_one_line_block():
    (s,) = stmts("def one() { a = 1; return a }")
    assert s.params == [] and [show(r) for r in s.result] == ["a"]


def test_fn_with_outputs_and_body():
    src = """fn train(x, y) -> prediction, xent {
    t = w * 2                   # a local assignment
    w <- w - 0.1 * gw
    b <- b - 0.1 * gb
}"""
    (s,) = stmts(src)
    assert isinstance(s, ast.FnDecl) and s.name == "train"
    assert s.params == [ast.Target("x", Loc("t.flow", 1, 10)), ast.Target("y", Loc("t.flow", 1, 13))]
    assert [show(o) for o in s.outputs] == ["prediction", "xent"]
    assert [type(b) for b in s.body] == [ast.Assign, ast.Update, ast.Update]
    assert s.body[1].target == ast.Target("w", Loc("t.flow", 3, 5))
    assert show(s.body[1].value) == "(w - (0.1 * gw))"


def test_fn_without_body():
    (s,) = stmts("fn predict(x) -> prediction")
    assert [show(o) for o in s.outputs] == ["prediction"] and s.body == []


def test_fn_without_outputs_one_line_block():
    (s,) = stmts("fn step(x) { w <- w * 0.5 }")
    assert s.outputs == [] and len(s.body) == 1 and isinstance(s.body[0], ast.Update)


def test_fn_parenthesised_outputs():
    (a,) = stmts("fn f(x) -> (a, b)")
    (b,) = stmts("fn f(x) -> a, b")
    assert [show(o) for o in a.outputs] == [show(o) for o in b.outputs] == ["a", "b"]


def test_fn_empty_outputs_and_expression_outputs():
    assert stmts("fn f() -> ()")[0].outputs == []
    assert [show(o) for o in stmts("fn f(x) -> x * 2, y")[0].outputs] == ["(x * 2)", "y"]


def test_fn_empty_body_and_trailing_comma_params():
    (s,) = stmts("fn f(x, y,) {\n}")
    assert [p.name for p in s.params] == ["x", "y"] and s.body == []


def test_logistic_regression_example():
    src = """# Logistic regression trained by gradient descent (the classic Theano example).
input x : f64[N, 784]          # N is a symbolic dimension, bound at call time
input y : f64[N]
param w : f64[784] = normal(0, 1)
param b : f64 = 0

p_1        = sigmoid(x @ w + b)           # probability that target = 1
prediction = p_1 > 0.5
xent       = -y * log(p_1) - (1 - y) * log(1 - p_1)
cost       = mean(xent) + 0.01 * sum(w ** 2)
gw, gb     = grad(cost, w, b)

fn train(x, y) -> prediction, xent {
    w <- w - 0.1 * gw             # updates are simultaneous: every right side sees old values
    b <- b - 0.1 * gb
}
fn predict(x) -> prediction
"""
    module = parse(src, "logreg.flow")
    assert module.file == "logreg.flow" and module.source == src
    kinds = [type(s).__name__ for s in module.stmts]
    assert kinds == ["InputDecl", "InputDecl", "ParamDecl", "ParamDecl"] + ["Assign"] * 5 + ["FnDecl"] * 2
    assert show(module.stmts[6].value) == "((((- y) * log(p_1)) - ((1 - y) * log((1 - p_1)))))"[1:-1]
    assert show(module.stmts[7].value) == "(mean(xent) + (0.01 * sum((w ** 2))))"


# ---------------------------------------------------------------- lines, separators, comments


def test_semicolons_blank_lines_and_comments():
    src = "\n\n# head\n  x = 1 ; y = 2;\n\n\n# mid\nz = 3 # tail\n\n"
    assert [s.targets[0].name for s in stmts(src)] == ["x", "y", "z"]


def test_no_trailing_newline_and_comment_at_end_of_file():
    assert len(stmts("x = 1")) == 1
    assert len(stmts("x = 1 # no newline after me")) == 1


def test_newlines_inside_brackets_continue_the_line():
    (s,) = stmts("x = f(a,\n      b,\n\n      # comment\n      c)[\n1]")
    assert show(s.value) == "f(a, b, c)[1]"


def test_newlines_inside_braces_separate_statements():
    (s,) = stmts("fn f(x) {\n\n  a = (1 +\n 2)\n\n  w <- a\n\n}")
    assert [type(b) for b in s.body] == [ast.Assign, ast.Update]


def test_crlf_and_lone_cr_line_endings():
    a = stmts("x = 1\r\ny = f(a,\r\n b)\r\n")
    assert [s.loc.line for s in a] == [1, 2] and show(a[1].value) == "f(a, b)"
    assert [s.loc.line for s in stmts("x = 1\ry = 2")] == [1, 2]


def test_tab_counts_as_one_column():
    (s,) = stmts("x =\t\ty")
    assert s.value.loc == Loc("t.flow", 1, 6)


def test_bytes_input_and_bom():
    module = parse("x = 1 # é\n".encode("utf-8"))
    assert module.file == "<string>" and len(module.stmts) == 1
    (s,) = parse(b"\xef\xbb\xbfx = 1").stmts
    assert s.loc == Loc("<string>", 1, 1)


# ---------------------------------------------------------------- atoms


@pytest.mark.parametrize(
    "text, value",
    [("42", 42), ("0", 0), ("1.5", 1.5), (".5", 0.5), ("1.", 1.0), ("1e-3", 1e-3),
     ("2E+5", 2e5), ("3e2", 300.0), ("1.5e1", 15.0), ("18446744073709551615", 2**64 - 1)],
)
def test_numbers(text, value):
    node = expr(text)
    assert isinstance(node, ast.Num) and node.value == value and type(node.value) is type(value)


def test_booleans_and_strings():
    assert expr("true") == ast.Bool(Loc("t.flow", 1, 5), True)
    assert expr("false").value is False
    assert expr('"hi there"').value == "hi there"
    assert expr(r'"a\"b\\c\nd\te"').value == 'a"b\\c\nd\te'
    assert expr('""').value == ""


def test_tuples_and_parentheses():
    assert show(expr("(a)")) == "a"
    assert show(expr("(a, b)")) == "(a, b, )"
    assert show(expr("(a,)")) == "(a, )"
    assert show(expr("(a, b,)")) == "(a, b, )"
    assert show(expr("()")) == "()"
    assert show(expr("reshape(x, (N, -1))")) == "reshape(x, (N, (- 1), ))"


def test_future_keywords_are_still_names():
    for word in ["scan", "loop", "for", "in"]:
        assert show(expr(f"{word} + 1")) == f"({word} + 1)"


# ---------------------------------------------------------------- postfix


def test_calls_with_keywords():
    node = expr("sum(x, axis=1, keepdims=true)")
    assert isinstance(node, ast.Call) and node.func == "sum" and len(node.args) == 1
    assert [(k.name, show(k.value)) for k in node.kwargs] == [("axis", "1"), ("keepdims", "true")]
    assert node.kwargs[0].loc == Loc("t.flow", 1, 12)
    assert show(expr("f()")) == "f()"
    assert show(expr("f(a, b,)")) == "f(a, b)"
    assert show(expr("f(axis=(0, 1))")) == "f(axis=(0, 1, ))"


def test_nested_calls_and_grad():
    assert show(expr("grad(grad(c, w), w)")) == "grad(grad(c, w), w)"


def test_indexing_and_slices():
    node = expr("x[i, 1:3, ::2, :]")
    assert isinstance(node, ast.Index)
    assert [show(i) for i in node.items] == ["i", "1:3", "::2", ":"]
    assert all(isinstance(i, ast.Slice) for i in node.items[1:])
    assert [show(i) for i in expr("x[1:, :2, 1:2:3, ::, -1]").items] == ["1:", ":2", "1:2:3", ":", "(- 1)"]
    slice_ = expr("x[a, ::2]").items[1]
    assert slice_ == ast.Slice(None, None, ast.Num(Loc("t.flow", 1, 12), 2), Loc("t.flow", 1, 10))


def test_integer_array_indexing_attributes_and_chains():
    assert show(expr("log(p)[arange(N), y]")) == "log(p)[arange(N), y]"
    assert show(expr("x.T")) == "x.T"
    assert show(expr("x.shape[0]")) == "x.shape[0]"
    assert show(expr("(a @ b).T.shape[k + 1]")) == "(a @ b).T.shape[(k + 1)]"
    assert show(expr("x.whatever")) == "x.whatever"


# ---------------------------------------------------------------- precedence


@pytest.mark.parametrize(
    "src, tree",
    [
        ("a + b * c", "(a + (b * c))"),
        ("a * b + c", "((a * b) + c)"),
        ("a - b - c", "((a - b) - c)"),
        ("a / b / c", "((a / b) / c)"),
        ("a // b % c @ d", "(((a // b) % c) @ d)"),
        ("a ** b ** c", "(a ** (b ** c))"),
        ("-x ** 2", "(- (x ** 2))"),
        ("2 ** -1", "(2 ** (- 1))"),
        ("a ** -b ** c", "(a ** (- (b ** c)))"),
        ("-a * b", "((- a) * b)"),
        ("- - a", "(- (- a))"),
        ("+a", "(+ a)"),
        ("a + -b", "(a + (- b))"),
        ("-f(x)[0].T", "(- f(x)[0].T)"),
        ("a < b + c", "(a < (b + c))"),
        ("a == b", "(a == b)"),
        ("a != b", "(a != b)"),
        ("a <= b", "(a <= b)"),
        ("a >= b", "(a >= b)"),
        ("a > b", "(a > b)"),
        ("not a == b", "(not (a == b))"),
        ("not not a", "(not (not a))"),
        ("a and not b", "(a and (not b))"),
        ("a or b and c", "(a or (b and c))"),
        ("a and b or c", "((a and b) or c)"),
        ("a or b or c", "((a or b) or c)"),
        ("a < b and b < c", "((a < b) and (b < c))"),
        ("(a + b) * c", "((a + b) * c)"),
        ("if c then a else b + 1", "(if c then a else (b + 1))"),
        ("if c then a else if d then b else e", "(if c then a else (if d then b else e))"),
        ("if a or b then x + 1 else -y", "(if (a or b) then (x + 1) else (- y))"),
        ("if if a then b else c then d else e", "(if (if a then b else c) then d else e)"),
        ("1 + (if c then 1 else 2)", "(1 + (if c then 1 else 2))"),
        ("f(if c then 1 else 2, k=if c then 3 else 4)", "f((if c then 1 else 2), k=(if c then 3 else 4))"),
        ("a @ w + b", "((a @ w) + b)"),
    ],
)
def test_precedence(src, tree):
    assert show(expr(src)) == tree


def test_line_break_after_binary_operator_ends_the_statement():
    err = error("x = 1 +\n2")
    assert at(err) == (1, 8) and err.message == "unexpected end of line: expected an expression"


# ---------------------------------------------------------------- locations


def test_every_node_points_at_its_first_character():
    src = "seed 1\n\n  y = (a + b) * f(c, k=d)[1:2].T\n"
    module = parse(src, "m.flow")
    seed, assign = module.stmts
    assert seed.loc == Loc("m.flow", 1, 1)
    assert assign.loc == Loc("m.flow", 3, 3)
    mul = assign.value
    assert mul.loc == Loc("m.flow", 3, 7)  # the '(' of '(a + b)'
    assert mul.left.loc == Loc("m.flow", 3, 8)  # 'a'
    assert mul.left.right.loc == Loc("m.flow", 3, 12)
    attr = mul.right
    assert isinstance(attr, ast.Attr) and attr.loc == Loc("m.flow", 3, 17)
    index = attr.value
    assert index.items[0].loc == Loc("m.flow", 3, 27)
    call = index.value
    assert call.loc == call.func_loc == Loc("m.flow", 3, 17)
    assert call.kwargs[0].loc == Loc("m.flow", 3, 22)
    assert call.kwargs[0].value.loc == Loc("m.flow", 3, 24)


def test_locs_carry_file_and_whole_source():
    src = "x = 1\ny = 2 + x\n"
    module = parse(src, "m.flow")
    loc = module.stmts[1].value.right.loc
    assert (loc.file, loc.line, loc.col) == ("m.flow", 2, 9)
    assert loc.source == src and loc.source_line() == "y = 2 + x"


def test_statement_locations_in_blocks_and_types():
    src = "fn f(x) -> o {\n\tw <- 1\n}\ninput z : i64[N]"
    fn, inp = stmts(src)
    assert fn.body[0].loc == Loc("t.flow", 2, 2)
    assert fn.outputs[0].loc == Loc("t.flow", 1, 12)
    assert inp.type.loc == Loc("t.flow", 4, 11)


def test_unary_and_if_locations():
    node = expr("-a")
    assert node.loc == Loc("t.flow", 1, 5) and node.operand.loc == Loc("t.flow", 1, 6)
    node = expr("if c then a else b")
    assert node.loc == Loc("t.flow", 1, 5) and node.orelse.loc == Loc("t.flow", 1, 22)


# ---------------------------------------------------------------- syntax errors


@pytest.mark.parametrize(
    "src, where, message",
    [
        ("z = y + * b", (1, 9), "unexpected '*': expected an expression"),
        ("x = 1 2", (1, 7), "unexpected number 2: expected an operator or a newline"),
        ("x = a b", (1, 7), "unexpected name 'b': expected an operator or a newline"),
        ("input x f64", (1, 9), "unexpected name 'f64': expected ':'"),
        ("input x : 3", (1, 11), "unexpected number 3: expected a type like f64[N]"),
        # LALR reduces `f64` to a whole type before it notices: so '[' is not listed.
        ("param w : f64", (1, 14), "unexpected end of input: expected '='"),
        ("param w : f64[N] + 1", (1, 18), "unexpected '+': expected '='"),
        ("seed x", (1, 6), "unexpected name 'x': expected an integer"),
        ("+ 1", (1, 1), "unexpected '+': expected a statement"),
        ("x = f(a b)", (1, 9), "unexpected name 'b': expected an operator, ')', ',' or '='"),
        ("x = a[]", (1, 7), "unexpected ']': expected an expression, '...' or ':'"),
        ("x = if a then b", (1, 16), "unexpected end of input: expected 'else'"),
        ("x = if a then b c", (1, 17), "unexpected name 'c': expected an operator or 'else'"),
        ("x = f(a; b)", (1, 8), "unexpected ';': expected an operator, ')', ',' or '='"),
        ("x = [1]", (1, 5), "unexpected '[': expected an expression"),
        ("fn f(x) -> a b", (1, 14), "unexpected name 'b': expected an operator, ',', '{' or a newline"),
        ("} ", (1, 1), "unmatched '}'"),
    ],
)
def test_unexpected_token_messages(src, where, message):
    err = error(src)
    assert (at(err), err.message) == (where, message)


def test_error_renders_file_line_and_caret():
    err = error("x = 1\nz = y + * b\n", "m.flow")
    assert str(err) == "m.flow:2:9: unexpected '*': expected an expression\n    z = y + * b\n            ^"


@pytest.mark.parametrize("src", ["y = a +", "y = a +\n", "y = a +\n\n# trailing comment\n  \n"])
def test_premature_end_of_input_points_after_the_last_token(src):
    err = error(src)
    assert at(err) == (1, 8)
    assert err.message == "unexpected end of input: expected an expression"


def test_end_of_input_inside_a_block():
    err = error("fn f(x) {\n  w <- 1\n")
    assert at(err) == (2, 9)
    assert err.message == "unexpected end of input: '{' opened at 1:9 was never closed"


@pytest.mark.parametrize(
    "src, where, message",
    [
        ("x = f(a, b", (1, 11), "unexpected end of input: '(' opened at 1:6 was never closed"),
        ("input x : f64[N, 784", (1, 21), "unexpected end of input: '[' opened at 1:14 was never closed"),
        ("x = (a]", (1, 7), "']' does not match '(' opened at 1:5"),
        ("x = f(a[1)]", (1, 10), "')' does not match '[' opened at 1:8"),
        ("x = a)", (1, 6), "unmatched ')'"),
    ],
)
def test_bracket_errors(src, where, message):
    err = error(src)
    assert (at(err), err.message) == (where, message)


def test_unclosed_bracket_on_an_earlier_line_is_named_at_the_bracket():
    err = error("x = f(a, b\ny = 2\n")
    assert at(err) == (1, 6)
    assert err.message == "'(' opened at 1:6 was never closed"
    assert err.notes == ["the parser reached name 'y' at 2:1 inside it"]


@pytest.mark.parametrize(
    "src, where, message",
    [
        ("x = $", (1, 5), "unexpected character '$'"),
        ("x = 1\n  y = a ? b", (2, 9), "unexpected character '?'"),
        ("x = 'a'", (1, 5), "unexpected character \"'\": strings use double quotes"),
        ('x = "abc', (1, 5), "unterminated string: a string must end with '\"' on the same line"),
        ('x = "a\nb"', (1, 5), "unterminated string: a string must end with '\"' on the same line"),
        ("x = é", (1, 5), "unexpected character 'é'"),
        ("x = a\u00a0+ b", (1, 6), "unexpected character U+00A0"),
    ],
)
def test_bad_characters(src, where, message):
    err = error(src)
    assert (at(err), err.message) == (where, message)


def test_chained_comparisons_are_refused():
    err = error("x = a < b < c")
    assert at(err) == (1, 11)
    assert err.message.startswith("comparisons cannot be chained")
    assert "(x < y) and (y < z)" in err.message
    assert at(error("x = a == b != c")) == (1, 12)


@pytest.mark.parametrize("word", sorted(KEYWORDS))
def test_keywords_are_reserved(word):
    for src in [f"input {word} : f64", f"def f({word}) = 1", f"x = a.{word}", f"fn g(a, {word})"]:
        err = error(src)
        assert err.message == f"'{word}' is a reserved word and cannot be used as a name", src


def test_keyword_in_the_wrong_place():
    err = error("then = 1")
    assert at(err) == (1, 1) and err.message == "'then' is a reserved word and cannot be used as a name"
    err = error("x = a then")
    assert at(err) == (1, 7) and err.message == "unexpected keyword 'then': expected a newline"


def test_if_and_not_need_parentheses_inside_operators():
    err = error("x = a * if c then 1 else 2")
    assert at(err) == (1, 9) and err.message == "an 'if' expression must be put in parentheses here"
    err = error("x = a + not b")
    assert at(err) == (1, 9) and err.message == "a 'not' expression must be put in parentheses here"
    err = error("x = a == not b")
    assert at(err) == (1, 10)


def test_python_style_conditional_gets_a_hint():
    err = error("x = a if c else b")
    assert at(err) == (1, 7) and err.notes == ["a conditional expression is written 'if c then a else b'"]


def test_update_arrow_without_space_gets_a_hint():
    err = error("x = a<-b")
    assert at(err) == (1, 6) and "to compare with a negative number" in err.notes[0]


def test_single_equals_in_a_condition_gets_a_hint():
    err = error("x = if a = b then 1 else 2")
    assert at(err) == (1, 10) and err.notes == ["use '==' to compare"]


def test_brace_on_the_next_line():
    err = error("fn f(x) -> a\n{\n  w <- 1\n}")
    assert at(err) == (2, 1)
    assert err.message == "a block's '{' must be on the same line as its fn or def header"


def test_unknown_dtype():
    err = error("input x : float32[N]")
    assert at(err) == (1, 11)
    assert err.message == "unknown dtype 'float32': expected one of f32, f64, i32, i64, bool"


@pytest.mark.parametrize(
    "src, where, message",
    [
        ("x = 1e999", (1, 5), "number 1e999 is too large"),
        ("x = 18446744073709551616", (1, 5), "integer 18446744073709551616 is too large"),
        ("x = " + "9" * 5000, (1, 5), "integer 99999999999999999999... is too large"),
        ("input x : f64[" + "9" * 30 + "]", (1, 15), "integer 99999999999999999999... is too large"),
        ('x = "a\\qb"', (1, 7), 'unknown escape \'\\q\' in string (known: \\n \\t \\\\ \\")'),
    ],
)
def test_bad_literals(src, where, message):
    err = error(src)
    assert (at(err), err.message) == (where, message)


@pytest.mark.parametrize(
    "src, where, message",
    [
        ("x = a.T(1)", (1, 5), "only a function name can be called, like 'f(x)'"),
        ("x = f(a=1, 2)", (1, 12), "a positional argument cannot follow a keyword argument"),
        ("x = f(a=1, a=2)", (1, 12), "keyword argument 'a' given twice"),
        ("def f(a=1, b) = 1", (1, 12), "parameter 'b' needs a default value: it follows 'a', which has one"),
    ],
)
def test_bad_calls_and_params(src, where, message):
    err = error(src)
    assert (at(err), err.message) == (where, message)


@pytest.mark.parametrize(
    "src, where, message",
    [
        ("w <- 1", (1, 1), "an update '<-' is only allowed inside an fn body"),
        ("x = 1\nreturn x", (2, 1), "'return' is only allowed at the end of a def body"),
        ("fn f(x) { return 1 }", (1, 11), "'return' is not allowed in an fn body: list its outputs after '->'"),
        ("fn f(x) {\n  input y : f64\n}", (2, 3),
         "an 'input' declaration is not allowed in an fn body: only assignments and updates '<-' are"),
        ("fn f(x) { fn g(y) }", (1, 11),
         "an 'fn' is not allowed in an fn body: only assignments and updates '<-' are"),
        ("def f(x) { y = 1 }", (1, 18), "the body of def 'f' must end with 'return'"),
        ("def f(x) {\n}", (2, 1), "the body of def 'f' must end with 'return'"),
        ("def f(x) {\n  return 1\n  y = 2\n}", (2, 3), "'return' must be the last statement of a def body"),
        ("def f(x) { w <- 1; return 2 }", (1, 12),
         "an update '<-' is not allowed in a def body: only assignments and a final 'return' are"),
        ("def f(x) { param p : f64 = 0 }", (1, 12),
         "a 'param' declaration is not allowed in a def body: only assignments and a final 'return' are"),
    ],
)
def test_misplaced_statements(src, where, message):
    err = error(src)
    assert (at(err), err.message) == (where, message)


@pytest.mark.parametrize("src", ["", "   ", "\n\n", "# only a comment\n\n# another\n", ";\n"])
def test_empty_model(src):
    err = error(src)
    assert err.message == "empty model: nothing declared" and at(err) == (1, 1)


# ---------------------------------------------------------------- hostile input


def test_nul_byte_points_at_its_place():
    err = error("x = 1\ny = a\0b")
    assert at(err) == (2, 6) and "NUL" in err.message
    assert at(error("x = 1 # comment \0\n")) == (1, 17)
    assert at(error(b"x = 1\n\0")) == (2, 1)


def test_other_line_separators_are_refused():
    err = error("x = 1 # a\u2028b\ny = 2")
    assert at(err) == (1, 10) and err.message == "unexpected line separator (U+2028)"
    assert at(error("x = 1\x0c\n")) == (1, 6)


def test_invalid_utf8_points_at_the_bad_byte():
    err = error(b"x = 1\ny = \xc3\xa9 + \xff\xfe\n")
    assert at(err) == (2, 9)
    assert err.message == "invalid UTF-8 byte 0xff: a .flow file must be UTF-8 text"
    assert err.loc.source_line() == "y = \u00e9 + \ufffd\ufffd"
    assert at(error(b"\xe9")) == (1, 1)
    assert at(error(b"x = 1\r\n\r\n  \x80")) == (3, 3)


def nested_error(src: str) -> FlowSyntaxError:
    err = error(src)
    assert "nested too deeply" in err.message, err.message
    return err


def test_ten_thousand_nested_parentheses():
    n = 10_000
    err = nested_error("x = " + "(" * n + "1" + ")" * n)
    assert at(err) == (1, 5 + MAX_NESTING)
    assert err.message == f"expression nested too deeply (more than {MAX_NESTING} levels)"
    nested_error("x = " + "(" * n)  # never closed
    nested_error("x = " + "f(" * n + "1" + ")" * n)
    nested_error("x = " + "a[" * n + "1" + "]" * n)
    assert nested_error("def f() {" * n).message.startswith("expression nested")  # at a '('
    err = nested_error("def f() {" * MAX_NESTING + "{")
    assert err.message == f"blocks nested too deeply (more than {MAX_NESTING} levels)"


def test_nesting_up_to_the_limit_is_fine():
    node = expr("(" * MAX_NESTING + "1" + ")" * MAX_NESTING)
    assert node.value == 1
    nested_error("x = " + "(" * (MAX_NESTING + 1) + "1" + ")" * (MAX_NESTING + 1))


def test_long_flat_chain_is_refused_cleanly():
    n = 10_000
    err = nested_error("x = " + "+".join(["1"] * n))
    assert err.message.startswith(f"expression nested too deeply (more than {MAX_DEPTH} levels)")
    assert at(err) == (1, 4 + 2 * (MAX_DEPTH + 1))  # the operator that went one level too deep


@pytest.mark.parametrize(
    "src",
    [
        "x = " + "**".join(["2"] * 10_000),
        "x = " + "-" * 10_000 + "1",
        "x = " + "not " * 10_000 + "a",
        "x = " + " and ".join(["a"] * 10_000),
        "x = " + "if a then 1 else " * 10_000 + "2",
        "x = a" + ".T" * 10_000,
    ],
    ids=["power", "unary-minus", "not", "and", "if-else", "attr"],
)
def test_other_deep_expressions_are_refused_cleanly(src):
    nested_error(src)


def test_depth_up_to_the_limit_is_fine():
    node = expr("+".join(["1"] * MAX_DEPTH))
    assert isinstance(node, ast.BinOp)
    nested_error("x = " + "+".join(["1"] * (MAX_DEPTH + 2)))


def test_errors_at_the_end_of_a_deep_prefix():
    err = error("x = " + "-" * 10_000)
    assert err.message == "unexpected end of input: expected an expression"
    assert at(err) == (1, 10_005)


def test_long_flat_lists_and_many_statements_parse():
    assert len(expr("f(" + ", ".join(["1"] * 10_000) + ")").args) == 10_000
    assert len(expr("(" + ", ".join(["1"] * 10_000) + ")").items) == 10_000
    assert len(stmts("\n".join(f"x{i} = {i}" for i in range(5_000)))) == 5_000


def test_long_tokens_are_clipped_in_messages():
    err = error("x = 1 " + "a" * 10_000)
    assert err.message == "unexpected name 'aaaaaaaaaaaaaaaaaaaa...': expected an operator or a newline"


# ---------------------------------------------------------------- parse_type


@pytest.mark.parametrize(
    "text, dtype, dims",
    [("f64[N, 784]", "f64", ["N", 784]), ("f32", "f32", []), ("i64[]", "i64", []),
     (" bool [ 3 , M ] ", "bool", [3, "M"]), ("i32[N,\n K]\n", "i32", ["N", "K"])],
)
def test_parse_type(text, dtype, dims):
    t = parse_type(text)
    assert (t.dtype, t.dims) == (dtype, dims)
    assert t.loc.file == "<type>"


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "unexpected end of input: expected a type like f64[N]"),
        ("f64[", "unexpected end of input: '[' opened at 1:4 was never closed"),
        ("float", "unknown dtype 'float': expected one of f32, f64, i32, i64, bool"),
        ("f64[N] x", "unexpected name 'x': expected end of input"),
        ("f64[N + 1]", "unexpected '+': expected ',' or ']'"),
        ("f64[N]; f32", "unexpected name 'f32': expected end of input"),
        ("[N]", "unexpected '[': expected a type like f64[N]"),
    ],
)
def test_parse_type_errors(text, message):
    with pytest.raises(FlowSyntaxError) as info:
        parse_type(text)
    assert info.value.message == message and info.value.loc.file == "<type>"


def test_parser_is_built_once():
    from flowml.lang import parser

    assert parser._lark() is parser._lark()


def test_mutated_programs_give_only_syntax_errors():
    """Random edits of a valid program either parse or raise a located FlowSyntaxError."""
    import random

    base = """seed 1
input x : f64[N, 784]
param w : f64[784] = normal(0, 1)
y = if a < b then f(x, k=(1, 2))[0, ::2].T else -x ** 2
def g(a, b=1) { h = a * b; return h, h + 1 }
fn train(x) -> y, (z) {
    w <- w - 0.1 * grad(y, w)
}
"""
    pieces = list("()[]{}:;,.=<>-+*/%@\"'#\n\t $") + ["if ", "then ", "else ", "not ", "->", "<-", "**"]
    rng = random.Random(1234)
    for _ in range(500):
        text = list(base)
        for _ in range(rng.randint(1, 3)):
            pos = rng.randrange(len(text))
            if rng.random() < 0.5:
                text.insert(pos, rng.choice(pieces))
            else:
                del text[pos]
        try:
            parse("".join(text))
        except FlowSyntaxError as e:
            assert e.loc is not None and e.loc.line >= 1 and e.loc.col >= 1
            assert str(e)


@pytest.mark.parametrize("line, col", [("c = sum(x,", 8), ("c = sum(x * (w + 1)", 8), ("c = (x +", 5),
                                       ("c = sum(", 8), ("c = x[0", 6)])
def test_a_bracket_left_open_before_the_next_statement_is_named(line, col):
    """Newlines inside brackets are spaces, so the parser first stumbles on the next statement
    ('fn' read as a name): the error names the bracket that was never closed, at the bracket."""
    src = f"input x : f64[N]\nparam w : f64 = 1\n{line}\nfn f(x) -> c\n"
    err = error(src)
    assert at(err) == (3, col)
    assert err.message == f"'{line[col - 1]}' opened at 3:{col} was never closed"
    assert err.notes == ["the parser reached keyword 'fn' at 4:1 inside it"]


def test_a_bracket_closed_further_on_keeps_the_error_where_the_parser_stopped():
    err = error("c = concatenate((x,\n , x))\n")
    assert at(err) == (2, 2) and err.message.startswith("unexpected ','")


@pytest.mark.parametrize("src, where, word", [
    ("import os\n", (1, 1), "import"),
    ("input x : f64\nimport numpy as np\n", (2, 1), "import"),
    ("  from os import path\n", (1, 3), "from"),
])
def test_imports_say_there_are_none(src, where, word):
    err = error(src)
    assert at(err) == where
    assert err.message == f"'{word}': .flow files have no imports"
    assert "need no import" in err.notes[0]


def test_the_shipped_parser_tables_are_made_from_this_grammar(monkeypatch):
    """grammar.tables (written by `python -m flowml.lang.parser`) must match grammar.lark: after
    editing the grammar, write them again. With the lark they were made by, a first parse loads
    them instead of building the LALR tables; with another lark, it builds its own."""
    import hashlib

    import lark

    from flowml.lang import parser as P
    shipped = P.SHIPPED_TABLES.read_bytes()
    assert shipped[:64].decode() == hashlib.sha256(P._grammar().encode()).hexdigest(), \
        "grammar.lark changed: run `python -m flowml.lang.parser` to write grammar.tables again"
    made_by_this_lark = shipped.startswith(P._shipped_header(P._grammar()))
    monkeypatch.setenv("FLOWML_CACHE", "0")  # (not the cache dir's copy: the shipped one or a build)
    built = []
    real_lark = P.Lark
    monkeypatch.setattr(P, "Lark", type("CountingLark", (real_lark,), {
        "__init__": lambda self, *a, **k: (built.append(1), real_lark.__init__(self, *a, **k))[1]}))
    P._lark.cache_clear()
    try:
        module = P.parse("input x : f64[N]\nfn f(x) -> x * 2\n", "t.flow")
    finally:
        P._lark.cache_clear()
    assert [type(s).__name__ for s in module.stmts] == ["InputDecl", "FnDecl"]
    assert built == ([] if made_by_this_lark else [1]), (lark.__version__, built)
