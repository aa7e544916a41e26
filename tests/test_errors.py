"""The errors a user gets: from building a .flow model, and from calling its functions.

Build errors are checked for their class, their exact message and their location, and for how
they render (``file:line:col: message``, the source line, a caret under the column). Call errors
(`FlowCallError`) must name the function, the input, the declared and the given type, and the
line of the declaration. No error may escape as anything but a `FlowError`.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import flowml
from flowml.errors import (FlowCallError, FlowError, FlowGradError, FlowNameError, FlowRuntimeError,
                           FlowSyntaxError, FlowTypeError, Loc)

from helpers import BACKENDS

# Lines 1-7 of every build-error case; the case's own lines start at line 8.
HEADER = """\
input x : f64[N, 784]
input y : f64[N]
input v : f64[10]
input k : i64[N]
input h : f32[N]
param w : f64[784] = normal(0, 1)
param b : f64 = 0
"""


def load(src: str, file: str = "t.flow"):
    return flowml.loads(src, backend="reference", file=file)


def build_error(src: str, cls: type[FlowError]) -> FlowError:
    with pytest.raises(FlowError) as info:
        load(src)
    err = info.value
    assert type(err) is cls, f"{type(err).__name__}: {err}"
    return err


def assert_located(err: FlowError, src: str, line: int, col: int, message, file: str = "t.flow") -> None:
    """`err` says `message` (a string, or a pattern for wording still in flux) at line:col, and
    renders as file:line:col: message + the source line + a caret."""
    if isinstance(message, re.Pattern):
        assert message.fullmatch(err.message), err.message
    else:
        assert err.message == message
    assert err.loc is not None
    assert (err.loc.file, err.loc.line, err.loc.col) == (file, line, col)
    rendered = str(err).splitlines()
    assert rendered[0] == f"{file}:{line}:{col}: {err.message}"
    assert rendered[1] == "    " + src.splitlines()[line - 1].rstrip()
    assert rendered[2] == "    " + " " * (col - 1) + "^"


# (case id, the lines after HEADER, error class, line, col, exact message)
CASES = [
    # ------------------------------------------------------------ unknown names
    ("unknown-name-suggests", "c = x @ ww\n", FlowNameError, 8, 9,
     "unknown name 'ww'; did you mean 'w'?"),
    ("unknown-name-no-suggestion", "c = qqqqq + b\n", FlowNameError, 8, 5,
     "unknown name 'qqqqq'"),
    ("unknown-name-in-def-body", "def f(alpha) { return alpah }\nc = f(b)\n", FlowNameError, 8, 23,
     "unknown name 'alpah'; did you mean 'alpha'?"),
    ("unknown-name-in-update", "fn f(x) { b <- bb }\n", FlowNameError, 8, 16,
     "unknown name 'bb'; did you mean 'b'?"),
    ("unknown-function-suggests", "c = summ(w)\n", FlowNameError, 8, 5,
     "unknown function 'summ'; did you mean 'sum'?"),
    ("builtin-used-as-value", "c = sum\n", FlowNameError, 8, 5,
     "'sum' is a function; call it: sum(...)"),
    ("def-used-as-value", "def f(a) { return a }\nc = f\n", FlowNameError, 9, 5,
     "'f' is a def; call it: f(...)"),
    ("param-called", "c = w(1)\n", FlowNameError, 8, 5,
     "'w' is a param (defined at t.flow:6:1), not a function"),
    ("unknown-attribute", "c = w.size\n", FlowNameError, 8, 5,
     "unknown attribute .size; values have .T, .shape and .ndim"),
    # ------------------------------------------------------------ shapes
    ("shape-add", "c = x + v\n", FlowTypeError, 8, 5,
     "cannot add f64[N, 784] and f64[10]: shapes do not broadcast"),
    ("shape-two-symbols", "input u : f64[M]\nc = y + u\n", FlowTypeError, 9, 5,
     "cannot add f64[N] and f64[M]: shapes do not broadcast"),
    ("shape-multiply-in-def", "def f(a, c) { return a * c }\nd = f(x, v)\n", FlowTypeError, 8, 22,
     "cannot multiply f64[N, 784] and f64[10]: shapes do not broadcast"),
    ("shape-axis-out-of-range", "c = sum(x, axis=2)\n", FlowTypeError, 8, 5,
     "axis 2 is out of range for an array of rank 2"),
    # ------------------------------------------------------------ matmul
    ("matmul-inner-dims", "m = x @ v\n", FlowTypeError, 8, 5,
     "cannot matmul f64[N, 784] and f64[10]: inner dims 784 and 10 differ"),
    ("matmul-scalar", "m = x @ b\n", FlowTypeError, 8, 5,
     "cannot matmul f64[N, 784] and f64: matmul needs arrays, not scalars (use *)"),
    # ------------------------------------------------------------ dtypes
    ("dtype-int-negative-power", "c = k ** -1\n", FlowTypeError, 8, 5,
     "cannot raise the integers i64[N] to a negative power; cast to a float first"),
    ("dtype-onehot-of-floats", "c = onehot(y, 10)\n", FlowTypeError, 8, 5,
     "onehot needs integer class labels, not f64[N]"),
    ("dtype-if-condition", "c = if b then w else w\n", FlowTypeError, 8, 5,
     "the condition of `if` must be a bool scalar, not f64"),
    ("dtype-unknown-in-cast", "c = cast(x, \"f99\")\n", FlowTypeError, 8, 5,
     "cast: unknown dtype 'f99'; use one of bool, i32, i64, f32, f64"),
    ("dtype-unsupported-in-zeros", "c = zeros(3, dtype=\"float16\")\n", FlowTypeError, 8, 5,
     "zeros: unknown dtype 'float16'; use one of bool, i32, i64, f32, f64"),
    ("dtype-not-a-dtype", "c = zeros(3, dtype=3)\n", FlowTypeError, 8, 5,
     "zeros: dtype must be one of bool, i32, i64, f32, f64, not 3"),
    ("dtype-misspelt-name", "c = cast(x, f46)\n", FlowNameError, 8, 13,
     "unknown name 'f46'; did you mean 'f64'?"),
    # ------------------------------------------------------------ integer array index
    ("index-array-of-floats", "c = w[y]\n", FlowTypeError, 8, 5,
     "an index array must be integer, not f64[N]"),
    ("index-float-constant", "c = w[1.5]\n", FlowTypeError, 8, 5,
     "an index must be a constant integer, not 1.5"),
    # ------------------------------------------------------------ params
    ("param-symbolic-shape", "param q : f64[N] = 0\n", FlowTypeError, 8, 11,
     "a param needs a fixed shape, but q is declared f64[N]"),
    ("param-init-does-not-fit", "param q : f64[3] = arange(4)\n", FlowTypeError, 8, 20,
     "the initial value of q has shape (4,), which does not fit f64[3]"),
    # ------------------------------------------------------------ updates
    ("update-wrong-shape", "fn f(x) { w <- b }\n", FlowTypeError, 8, 11,
     "the update of param 'w' has type f64, but 'w' is f64[784]"),
    ("update-wrong-dtype", "param q : f32[784] = 0\nfn f(x) { q <- w }\n", FlowTypeError, 9, 11,
     "the update of param 'q' has type f64[784], but 'q' is f32[784]"),
    ("update-int-param-with-float", "param q : i64[3] = 0\nfn f(x) { q <- q * 0.5 }\n", FlowTypeError, 9, 11,
     "the update of param 'q' has type f64[3], but 'q' is i64[3]"),
    ("update-of-input", "fn f(x) { x <- x }\n", FlowNameError, 8, 11,
     "only params can be updated, and 'x' is an input"),
    ("update-of-value", "c = b\nfn f(x) { c <- b }\n", FlowNameError, 9, 11,
     "only params can be updated, and 'c' is a value"),
    ("update-of-undeclared", "fn f(x) { ww <- w }\n", FlowNameError, 8, 11,
     "only params can be updated, and 'ww' is not declared; did you mean 'w'?"),
    ("update-twice", "fn f(x) { b <- b\nb <- b }\n", FlowNameError, 9, 1,
     "param 'b' is updated twice in fn f"),
    # ------------------------------------------------------------ recursion
    ("recursion-direct", "def f(a) { return f(a) }\nc = f(b)\n", FlowNameError, 8, 19,
     "recursion in def f (f -> f): defs are inlined, so they cannot call themselves"),
    ("recursion-mutual", "def f(a) { return g(a) }\ndef g(a) { return f(a) }\nc = f(b)\n", FlowNameError, 9, 19,
     "recursion in def f (f -> g -> f): defs are inlined, so they cannot call themselves"),
    ("recursion-three-defs", "def f(a) { return g(a) }\ndef g(a) { return e(a) }\ndef e(a) { return g(a) }\n"
     "c = f(b)\n", FlowNameError, 10, 19,
     "recursion in def g (g -> e -> g): defs are inlined, so they cannot call themselves"),
    # ------------------------------------------------------------ duplicate names
    ("duplicate-value", "c = b\nc = b\n", FlowNameError, 9, 1,
     "'c' is already defined at t.flow:8:1"),
    ("duplicate-input", "input x : f64\n", FlowNameError, 8, 1,
     "'x' is already defined at t.flow:1:1"),
    ("duplicate-param-vs-input", "param y : f64 = 0\n", FlowNameError, 8, 1,
     "'y' is already defined at t.flow:2:1"),
    ("duplicate-def", "def f(a) { return a }\ndef f(a) { return a }\n", FlowNameError, 9, 1,
     "'f' is already defined at t.flow:8:1"),
    ("duplicate-fn", "fn f(x) -> b\nfn f(x) -> b\n", FlowNameError, 9, 1,
     "fn 'f' is already defined at t.flow:8:1"),
    ("local-shadows-param", "fn f(x) { w = x\n}\n", FlowNameError, 8, 11,
     "'w' is already defined at t.flow:6:1"),
    ("name-of-a-builtin", "sum = 3\n", FlowNameError, 8, 1,
     "'sum' is the name of a built-in; choose another name"),
    ("duplicate-seed", "seed 1\nseed 2\n", FlowNameError, 9, 1,
     "the seed is already set at t.flow:8:1"),
    # ------------------------------------------------------------ fn inputs
    ("fn-takes-undeclared", "fn f(q) -> b\n", FlowNameError, 8, 6,
     "fn f takes 'q', which is not declared: an fn takes declared inputs"),
    ("fn-takes-misspelt", "fn f(xx) -> b\n", FlowNameError, 8, 6,
     "fn f takes 'xx', which is not declared: an fn takes declared inputs; did you mean 'x'?"),
    ("fn-takes-param", "fn f(w) -> b\n", FlowNameError, 8, 6,
     "fn f takes 'w', which is a param: an fn takes declared inputs"),
    ("fn-takes-twice", "fn f(x, x) -> b\n", FlowNameError, 8, 9,
     "fn f takes 'x' twice"),
    ("fn-uses-input-not-taken", "c = x @ w\nfn f(y) -> c\n", FlowNameError, 9, 1,
     "fn f uses input 'x' (declared at t.flow:1:1) but does not take it; write fn f(y, x)"),
    ("fn-update-uses-input-not-taken", "fn f(y) { b <- sum(x @ w) }\n", FlowNameError, 8, 1,
     "fn f uses input 'x' (declared at t.flow:1:1) but does not take it; write fn f(y, x)"),
    ("fn-uses-unbound-dim", "input q : f64[M]\nfn f(x) -> zeros(M)\n", FlowNameError, 9, 12,
     "fn f uses the dim M, but none of its inputs (x) has a dim M"),
    # ------------------------------------------------------------ grad
    ("grad-non-scalar-cost", "c = x @ w\ng = grad(c, w)\n", FlowGradError, 9, 5,
     "grad needs a scalar cost, but 'c' has type f64[N]; reduce it first (e.g. with sum or mean)"),
    ("grad-int-cost", "g = grad(sum(k), w)\n", FlowGradError, 8, 5,
     "grad needs a float cost, but the sum value has type i64"),
    ("grad-disconnected", "g = grad(sum(w), b)\n", FlowGradError, 8, 5,
     re.compile(r"the cost does not depend on param 'b'; pass disconnected=\"zero\" to get a zero \w+ instead")),
    ("grad-wrt-int", "g = grad(sum(k * 1.0), k)\n", FlowGradError, 8, 5,
     "cannot differentiate with respect to input 'k' of type i64[N]: only float values have gradients"),
    ("grad-bad-policy", "g = grad(sum(w), w, disconnected=\"nope\")\n", FlowGradError, 8, 5,
     "disconnected must be one of ('error', 'zero'), not 'nope'"),
    ("grad-no-wrt", "g = grad(sum(w))\n", FlowTypeError, 8, 5,
     "grad(cost, wrt...) needs a cost and at least one value to differentiate by"),
    # ------------------------------------------------------------ unpacking
    ("unpack-too-many-names", "a, c, d = grad(sum(w) + b, w, b)\n", FlowTypeError, 8, 1,
     "cannot unpack 2 values into 3 names"),
    ("unpack-one-value", "a, c = grad(sum(w), w)\n", FlowTypeError, 8, 1,
     "cannot unpack one value into 2 names"),
    ("unpack-too-few-names", "def f(a) { return a, a, a }\nc, d = f(b)\n", FlowTypeError, 9, 1,
     "cannot unpack 3 values into 2 names"),
    ("tuple-into-one-name", "def f(a) { return a, a }\nc = f(b)\n", FlowTypeError, 9, 1,
     "'c' would be a tuple of 2 values; unpack it: c0, c1 = ..."),
    # ------------------------------------------------------------ arguments of builtins and defs
    ("builtin-unknown-keyword", "c = sum(w, axs=0)\n", FlowTypeError, 8, 5,
     "sum(x, axis=none, keepdims=false): unexpected keyword 'axs'; did you mean 'axis'?"),
    ("builtin-unknown-keyword-2", "c = mean(x, axis=1, keepdim=true)\n", FlowTypeError, 8, 5,
     "mean(x, axis=none, keepdims=false): unexpected keyword 'keepdim'; did you mean 'keepdims'?"),
    ("builtin-too-many-args", "c = exp(w, w)\n", FlowTypeError, 8, 5,
     "exp(x): too many positional arguments"),
    ("builtin-missing-arg", "c = exp()\n", FlowTypeError, 8, 5,
     "exp(x): missing argument: 'x'"),
    ("def-missing-arg", "def f(a, c) { return a + c }\nd = f(b)\n", FlowTypeError, 9, 5,
     "f(a, c) is missing argument 'c'"),
    ("def-too-many-args", "def f(a) { return a }\nd = f(b, b, b)\n", FlowTypeError, 9, 5,
     "f(a) takes 1 argument, got 3"),
    ("def-too-many-args-plural", "def f(a, c) { return a }\nd = f(b, b, b)\n", FlowTypeError, 9, 5,
     "f(a, c) takes 2 arguments, got 3"),
    ("def-unknown-keyword", "def f(alpha) { return alpha }\nc = f(alpa=b)\n", FlowTypeError, 9, 5,
     "f(alpha) has no parameter 'alpa'; did you mean 'alpha'?"),
    ("def-argument-twice", "def f(a) { return a }\nc = f(b, a=b)\n", FlowTypeError, 9, 5,
     "f(a) got 'a' twice"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_build_error(case):
    _, body, cls, line, col, message = case
    src = HEADER + body
    err = build_error(src, cls)
    assert_located(err, src, line, col, message)


def test_every_error_is_a_flow_error():
    for cls in (FlowCallError, FlowGradError, FlowNameError, FlowRuntimeError, FlowSyntaxError, FlowTypeError):
        assert issubclass(cls, FlowError)
    assert not issubclass(FlowError, (TypeError, ValueError, NameError))  # callers catch FlowError alone


def test_error_renders_tabs_as_spaces_so_the_caret_lines_up():
    src = HEADER + "c =\tx + v\n"
    err = build_error(src, FlowTypeError)
    assert (err.loc.line, err.loc.col) == (8, 5)
    text = str(err).splitlines()
    assert text[1] == "    c = x + v"
    assert text[2] == "    " + " " * 4 + "^"


def test_error_without_source_renders_as_one_line():
    err = FlowTypeError("cannot add f64[3] and f64[4]", Loc("m.flow", 2, 7))
    assert str(err) == "m.flow:2:7: cannot add f64[3] and f64[4]"
    assert str(FlowError("plain")) == "plain"


def test_notes_are_rendered_after_the_caret():
    src = "a = 1\n"
    err = FlowNameError("boom", Loc("m.flow", 1, 5, src), notes=["see the docs"])
    assert str(err).splitlines() == ["m.flow:1:5: boom", "    a = 1", "        ^", "note: see the docs"]


def test_file_name_is_the_one_given():
    with pytest.raises(FlowNameError) as info:
        flowml.loads("input x : f64\ny = q\n", file="models/m.flow")
    err = info.value
    assert str(err).startswith("models/m.flow:2:5: unknown name 'q'")


def test_load_names_the_path(tmp_path):
    path = tmp_path / "bad.flow"
    path.write_text("input x : f64[N]\nc = x @ x @ x\n")
    with pytest.raises(FlowTypeError) as info:
        flowml.load(path)
    assert info.value.loc.file == str(path)
    assert str(info.value).startswith(f"{path}:2:5: cannot matmul f64 and f64[N]")


def test_a_syntax_error_is_located():
    src = "input x : f64\ny = x +\n"
    with pytest.raises(FlowSyntaxError) as info:
        load(src)
    err = info.value
    assert (err.loc.file, err.loc.line) == ("t.flow", 2)
    assert str(err).startswith("t.flow:2:")


def test_a_literal_update_takes_the_params_dtype():
    """Not an error: a weak literal (or `q * 2` on an f32 param) keeps the param's dtype."""
    m = load("input x : f64\nparam q : f32[3] = 1\nparam b : f64 = 0\nfn f(x) { q <- q * 2\n b <- 0 }\n")
    m.f(1.0)
    assert m.params["q"].dtype == np.float32
    np.testing.assert_array_equal(m.params["q"], [2, 2, 2])


def test_mutual_recursion_is_found_from_either_entry():
    src = HEADER + "def f(a) { return g(a) }\ndef g(a) { return f(a) }\nc = g(b)\n"
    err = build_error(src, FlowNameError)
    assert err.message == "recursion in def g (g -> f -> g): defs are inlined, so they cannot call themselves"
    assert (err.loc.line, err.loc.col) == (8, 19)


def test_a_def_called_twice_is_not_recursion():
    m = load(HEADER + "def sq(a) { return a * a }\nc = sq(sq(b))\nfn f(x) -> c\n")
    m.params["b"] = 3.0
    assert m.f(np.zeros((1, 784))) == 81.0


# ---------------------------------------------------------------- errors at run time


def test_an_index_out_of_bounds_at_run_time_is_located():
    src = "input v : f64[3]\ninput i : i64\nfn g(v, i) -> v[i]\n"
    m = load(src)
    assert m.g(np.arange(3.0), 2) == 2.0
    with pytest.raises(FlowRuntimeError) as info:
        m.g(np.arange(3.0), 7)
    err = info.value
    assert (err.loc.line, err.loc.col) == (3, 15)
    assert "index: index i = 7 is out of range for axis 0 of size 3 (valid: -3 to 2" in err.message
    assert str(err).splitlines()[1:] == ["    fn g(v, i) -> v[i]", "                  ^"]


def test_a_failed_call_applies_no_update():
    src = "input v : f64[3]\ninput i : i64\nparam s : f64 = 0\nfn g(v, i) -> v[i] { s <- s + 1 }\n"
    m = load(src)
    m.g(np.arange(3.0), 1)
    assert m.params["s"] == 1.0
    with pytest.raises(FlowRuntimeError):
        m.g(np.arange(3.0), 3)
    with pytest.raises(FlowCallError):
        m.g(np.arange(4.0), 1)
    assert m.params["s"] == 1.0


# ---------------------------------------------------------------- call-time errors

CALL_SRC = """\
input x : f64[N, 3]
input y : f64[N]
input h : f32[N]
input k : i64[2]
param w : f64[3] = normal(0, 1)
fn f(x, y) -> x @ w + y
fn g(h, k) -> h * 2, k
fn none() -> w
"""


@pytest.fixture(scope="module")
def model():
    return load(CALL_SRC)


X = np.ones((4, 3))
Y = np.ones(4)


def call_error(fn, *args, **kwargs) -> str:
    with pytest.raises(FlowCallError) as info:
        fn(*args, **kwargs)
    assert info.value.loc is None  # the caller's Python line is in the traceback; no .flow line to quote
    return info.value.message


def test_missing_input(model):
    assert call_error(model.f, X) == "f() is missing input(s) 'y' (f64[N], declared at t.flow:2:1)"
    assert call_error(model.f, y=Y) == "f() is missing input(s) 'x' (f64[N, 3], declared at t.flow:1:1)"
    assert call_error(model.f) == ("f() is missing input(s) 'x' (f64[N, 3], declared at t.flow:1:1), "
                                   "'y' (f64[N], declared at t.flow:2:1)")


def test_extra_positional_input(model):
    assert call_error(model.f, X, Y, Y) == "f() takes 2 input(s) (x, y), got 3 positional arguments"
    assert call_error(model.none, X) == "none() takes 0 input(s) (none), got 1 positional arguments"


def test_extra_keyword_input(model):
    assert call_error(model.f, X, Y, z=Y) == "f() has no input 'z' (inputs: x, y)"
    assert call_error(model.f, X, yy=Y) == "f() has no input 'yy'; did you mean 'y'? (inputs: x, y)"
    assert call_error(model.f, X, h=Y) == "f() has no input 'h' (inputs: x, y)"  # declared, but f doesn't take it


def test_input_given_twice(model):
    assert call_error(model.f, X, Y, y=Y) == "f() got input 'y' twice"


def test_wrong_rank(model):
    assert call_error(model.f, np.ones(3), Y) == (
        "f(): input 'x' expects f64[N, 3] (rank 2) (declared at t.flow:1:1), "
        "got an array of dtype float64 and shape (3,) (rank 1)")
    assert call_error(model.f, X, 1.0) == (
        "f(): input 'y' expects f64[N] (rank 1) (declared at t.flow:2:1), "
        "got an array of dtype float64 and shape () (rank 0)")


def test_wrong_size_of_a_fixed_dim(model):
    assert call_error(model.f, np.ones((4, 5)), Y) == (
        "f(): input 'x' expects f64[N, 3] (declared at t.flow:1:1), "
        "got an array of dtype float64 and shape (4, 5): axis 1 must be 3")


def test_inconsistent_symbolic_dim(model):
    assert call_error(model.f, np.ones((3, 3)), np.ones(4)) == (
        "f(): input 'y' expects f64[N] (declared at t.flow:2:1), got an array of dtype float64 and "
        "shape (4,): axis 0 is N, which is 3 from an earlier input")
    # by keyword, in either order: the declaration order decides which input binds N first
    msg = call_error(model.f, y=np.ones(4), x=np.ones((3, 3)))
    assert "input 'y'" in msg and "axis 0 is N, which is 3" in msg


def test_symbolic_dim_binds_afresh_at_each_call(model):
    assert model.f(np.ones((3, 3)), np.ones(3)).shape == (3,)
    assert model.f(np.ones((5, 3)), np.ones(5)).shape == (5,)
    assert model.f(np.ones((0, 3)), np.ones(0)).shape == (0,)


def test_float64_into_f32_is_an_error(model):
    """No silent downcast: the user must convert explicitly."""
    msg = call_error(model.g, np.ones(3), np.zeros(2, np.int64))
    assert msg == ("g(): input 'h' expects f32[N] (declared at t.flow:3:1), got an array of dtype float64 and "
                   "shape (3,); convert it explicitly (e.g. .astype(np.float32)) — flowml does not downcast silently")
    with pytest.raises(FlowCallError, match="input 'h' expects f32"):
        model.g(np.float64(1.0) * np.ones(3), np.zeros(2, np.int64))


def test_float_into_int_is_an_error(model):
    msg = call_error(model.g, np.ones(3, np.float32), np.zeros(2))
    assert msg.startswith("g(): input 'k' expects i64[2] (declared at t.flow:4:1), got an array of dtype float64")
    assert ".astype(np.int64)" in msg


def test_safe_casts_are_accepted(model):
    """int → f64, f32 → f64, bool → f64 and int32 → i64 are exact: accepted, converted."""
    expected = model.f(np.ones((2, 3)), np.ones(2))
    for x in (np.ones((2, 3), np.int64), np.ones((2, 3), np.int32), np.ones((2, 3), np.float32),
              np.ones((2, 3), bool)):
        out = model.f(x, np.ones(2))
        assert out.dtype == np.float64
        np.testing.assert_array_equal(out, expected)
    h, k = model.g(np.ones(3, np.float32), np.array([1, 2], np.int32))
    assert (h.dtype, k.dtype) == (np.float32, np.int64)


def test_python_numbers_and_lists_convert_like_literals(model):
    """Python floats have no fixed width, so [1.0, 2.0] fits an f32 input."""
    h, k = model.g([1.0, 2.0, 3.0], [4, 5])
    assert h.dtype == np.float32 and k.dtype == np.int64
    np.testing.assert_array_equal(h, [2, 4, 6])
    out = model.f([[1, 0, 0], [0, 1, 0]], [0.0, 0.0])
    np.testing.assert_allclose(out, model.params["w"][:2])


@pytest.mark.parametrize("value, given", [
    ("abc", "a str (not numeric)"),
    ({"a": 1}, "a dict (not numeric)"),
    (None, "a NoneType (not numeric)"),
    (np.array([[object()] * 3] * 2), "an array of dtype object and shape (2, 3) (not numeric)"),
    (np.array([["a", "b", "c"]]), "an array of dtype <U1 and shape (1, 3) (not numeric)"),
    (np.ones((2, 3), complex), "an array of dtype complex128 and shape (2, 3) (not numeric)"),
    ([[1, 2], [3]], "a list"),
], ids=["str", "dict", "none", "object-array", "string-array", "complex", "ragged-list"])
def test_non_numeric_inputs(model, value, given):
    assert call_error(model.f, value, Y) == f"f(): input 'x' expects f64[N, 3] (declared at t.flow:1:1), got {given}"


def test_call_errors_name_the_declaration_line_of_a_loaded_file(tmp_path):
    path = tmp_path / "m.flow"
    path.write_text("# a comment\n\ninput x : f32[2]\nfn f(x) -> x\n")
    m = flowml.load(path)
    with pytest.raises(FlowCallError, match=rf"f\(\): input 'x' expects f32\[2\] \(declared at {path}:3:1\)"):
        m.f(np.zeros(2))


def test_unknown_function_attribute_suggests(model):
    with pytest.raises(AttributeError, match=r"the model has no function 'ff'; did you mean 'f'\? "
                                            r"\(functions: f, g, none\)"):
        model.ff


# ---------------------------------------------------------------- hostile programs

HOSTILE = [
    "input x : f64\nc = x[0]\n",                       # indexing a scalar
    "input x : f64[3]\nc = x[0, 0]\n",                 # too many indices
    "input x : f64[3]\nc = x[5]\n",                    # constant index out of bounds
    "input x : f64[3]\nc = reshape(x, (2, 2))\n",
    "input x : f64[3]\nc = reshape(x, (-1, -1))\n",
    "input x : f64[3]\nc = transpose(x, (1, 0))\n",
    "input x : f64[3]\nc = cast(x, 3)\n",
    "input x : f64[3]\nc = cast(x, \"\")\n",
    "input x : f64[3]\nc = zeros((2, x))\n",
    "input x : f64[3]\nc = arange(0, 3, 0)\n",
    "input x : f64[3]\nc = sum(x, axis=\"a\")\n",
    "input x : f64[3]\nc = sum(x, keepdims=2)\n",
    "input x : f64[3]\nc = x.shape[3]\n",
    "input x : f64[3]\nc = x.shape + 1\n",
    "input x : f64[3]\nc = \"a\" + x\n",
    "input x : f64[3]\nc = -\"a\"\n",
    "input x : f64[3]\nc = \"a\"[0]\n",
    "input x : f64[3]\nc = onehot(x > 0, 2)\n",
    "input x : f64[3]\nc = concatenate(x, 1, axis=0)\n",
    "input x : f64[3]\nc = stack(x, x, axis=3)\n",
    "input x : f64[3]\nparam w : f64[3] = normal(0, \"a\")\n",
    "input x : f64[3]\nparam w : f64[3] = normal(0, 1, foo=2)\n",
    "input x : f64[3]\nparam w : f64[3] = uniform(true, 2)\n",
    "input x : f64[3]\nparam w : f64[3] = zeros(3)\n",
    "input x : f64[3]\nparam w : f64[3] = x\n",
    "input x : f64[3]\nconst c : f64[2] = 3\nd = x + c\n",
    "input x : f64[3]\nconst c = x\n",
    "input x : f64[3]\nfn f(x) -> grad\n",
    "input x : f64[3]\nfn f(x) -> grad(x, x)\n",
    "input x : f64[3]\nfn f(x) -> x.shape\n",
]


@pytest.mark.parametrize("src", HOSTILE)
def test_hostile_programs_give_located_flow_errors(src):
    """Whatever goes wrong, the user sees a FlowError pointing into the model, never a Python
    exception from inside the compiler."""
    with pytest.raises(FlowError) as info:
        load(src)
    err = info.value
    assert err.loc is not None and err.loc.file == "t.flow", str(err)
    assert err.loc.line == 2 or err.loc.line == 3


def test_initializer_arguments_must_be_numbers():
    src = "input x : f64[3]\nparam w : f64[3] = normal(0, \"a\")\n"
    with pytest.raises(FlowTypeError) as info:
        load(src)
    assert info.value.message == "initializer normal(mean=0.0, std=1.0): std must be a number, not the string 'a'"
    assert (info.value.loc.line, info.value.loc.col) == (2, 20)


def test_grad_error_points_at_the_call_and_notes_the_definition():
    src = HEADER + "c = x @ w\n\ng = grad(c, w)\n"
    err = build_error(src, FlowGradError)
    assert (err.loc.line, err.loc.col) == (10, 5)
    assert err.notes[0] == "the value it is about is defined at t.flow:8:5"
    assert str(err).splitlines()[-1] == "note: the value it is about is defined at t.flow:8:5"
    err = build_error(HEADER + "g = grad(sum(k * 1.0), k)\n", FlowGradError)
    assert (err.loc.line, err.loc.col) == (8, 5)
    assert err.notes == ["the value it is about is defined at t.flow:4:1"]


def test_a_negative_size_fails_cleanly():
    """`zeros(-1)` should be refused when the model is built (the shape check belongs in
    flowml.ir.lib); at the least it must fail as a located FlowError, not a numpy one."""
    try:
        m = load("input x : f64[3]\nc = zeros(-1)\nfn f(x) -> c\n")
    except FlowError as e:
        assert e.loc is not None and e.loc.line == 2
        return
    with pytest.raises(FlowError) as info:
        m.f(np.zeros(3))
    assert info.value.loc is not None and info.value.loc.line == 2


# ---------------------------------------------------------------- arrays too big for the machine

HUGE_PARAM = "input x : f64[N]\nparam w : f64[100000, 100000, 100000] = zeros\nfn f(x) -> sum(x) + w[0, 0, 0]\n"


def test_a_param_too_big_for_the_machine_is_located_at_its_declaration(tmp_path, capsys):
    want = re.compile(r"param 'w' \(f64\[100000, 100000, 100000\]\) needs 8 PB, more than this machine's "
                      r"memory \(\d+(\.\d)? [kMGTPE]?B\)")
    err = build_error(HUGE_PARAM, FlowError)
    assert_located(err, HUGE_PARAM, 2, 1, want)
    from flowml.cli import main
    path = tmp_path / "huge.flow"
    path.write_text(HUGE_PARAM)
    assert main(["check", str(path)]) == 1
    out = capsys.readouterr()
    assert out.err.startswith(f"{path}:2:1: param 'w'") and "needs 8 PB" in out.err and "Traceback" not in out.err


def test_a_builder_param_too_big_for_the_machine_is_located():
    flowml.reset_default_graph()
    w = flowml.param("w", type="f32[1000000, 1000000, 1000]", init=lambda rng: np.zeros(3))
    with pytest.raises(FlowError, match=r"param 'w' \(f32\[1000000, 1000000, 1000\]\) needs 4 PB") as info:
        flowml.get_value(w)
    assert info.value.loc.file == __file__
    flowml.reset_default_graph()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_value_too_big_at_call_time_says_what_where_and_how_many_bytes(backend):
    """Checked before allocating (the shape's product in Python ints): not numpy's MemoryError or
    'array is too big', nor the name of the op `zeros` lowers to."""
    src = "input x : f64[N]\nfn f(x) -> zeros((N, N, N, N)) + 1\nfn g(x) -> sum(outer(outer(x, x), x))\n"
    m = flowml.loads(src, backend=backend, file="t.flow")
    x = np.ones(100000)
    with pytest.raises(FlowRuntimeError) as info:
        m.f(x)
    room = "one buffer of the OpenCL device" if backend == "opencl" else "this machine's memory"
    assert_located(info.value, src, 2, 12, re.compile(
        r"the value computed here \(f64\[N, N, N, N\] with N=100000\) needs 800 EB, more than "
        + re.escape(room) + r".*\(\d+(\.\d)? [kMGTPE]?B\)"))
    with pytest.raises(FlowRuntimeError) as info:
        m.g(x)  # the first outer: N * N * 8 bytes = 80 GB (the whole machine has less)
    assert info.value.loc.line == 3
    assert re.search(r"needs (80|8) [GP]B, more than", info.value.message), info.value.message
    assert m.g(np.ones(3)) == 27.0  # small calls still run


def test_human_bytes():
    from flowml.sizes import human_bytes
    assert [human_bytes(n) for n in (0, 999, 1000, 1234, 80 * 10**9, 8 * 10**15, 8 * 10**20)] == \
        ["0 B", "999 B", "1 kB", "1.2 kB", "80 GB", "8 PB", "800 EB"]
