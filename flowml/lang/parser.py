"""The parser of .flow programs: text in, `ast.Module` out, or a `FlowSyntaxError`.

lark parses `grammar.lark` with an LALR(1) table into a parse tree, and `_Builder` (a
non-recursive transformer) turns that tree into AST nodes. Neither recurses over the nesting
of the input, and two limits keep the AST shallow enough for the recursive passes after us:
brackets nest at most `MAX_NESTING` deep, and an expression is at most `MAX_DEPTH` nodes deep.
Every error a user can cause comes out as a `FlowSyntaxError` with a `Loc`.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken, VisitError
from lark.lark import PostLex
from lark.lexer import PatternStr
from lark.visitors import Transformer_NonRecursive, v_args

from ..errors import FlowSyntaxError, Loc
from . import ast

__all__ = ["parse", "parse_type", "DTYPES", "KEYWORDS", "MAX_NESTING", "MAX_DEPTH"]

DTYPES = ("f32", "f64", "i32", "i64", "bool")
KEYWORDS = frozenset(
    "input param const def fn return if then else and or not true false seed".split()
)
MAX_NESTING = 200  # brackets open at once
MAX_DEPTH = 200  # AST nodes from an expression's root to its deepest leaf
_MAX_INT = 2**64 - 1  # larger literals fit no dtype; also keeps int() off huge digit strings

# ---------------------------------------------------------------- entry points


def parse(source: str | bytes, file: str = "<string>") -> ast.Module:
    """Parse a whole .flow program. `bytes` must be UTF-8."""
    text = _decode(source, file)
    module = _build(_parse_tree(text, file, "start"), file, text)
    if not module.stmts:
        raise FlowSyntaxError("empty model: nothing declared", Loc(file, 1, 1, text))
    return module


def parse_type(text: str, file: str = "<type>") -> ast.TypeExpr:
    """Parse a type such as `f64[N, 784]`, `i64[]` or `bool` (for the Python API)."""
    text = _decode(text, file)
    return _build(_parse_tree(text, file, "type_only"), file, text)


_LARK_OPTIONS = dict(
    parser="lalr",
    lexer="basic",  # not "contextual": it would lex a keyword as a NAME where no keyword fits
    propagate_positions=True,
    maybe_placeholders=True,
    start=["start", "type_only"],
)


# The LALR tables as shipped with flowml (written by `python -m flowml.lang.parser`), so that a
# first parse on a fresh machine does not build them; used when made from this very grammar by
# this lark, else the cache dir's entry, else built (and cached).
SHIPPED_TABLES = Path(__file__).with_name("grammar.tables")


def _table_key(grammar: str, *, python_version: bool) -> str:
    import hashlib
    import sys

    import lark
    parts = (hashlib.sha256(grammar.encode()).hexdigest(), sorted(_LARK_OPTIONS.items()), _Lines.always_accept,
             lark.__version__) + ((sys.version_info[:2],) if python_version else ())
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def _shipped_header(grammar: str) -> bytes:
    """What `grammar.tables` starts with: the grammar's own digest (a test checks it against
    grammar.lark), then the key of everything else the tables depend on (the lark version...)."""
    import hashlib
    return hashlib.sha256(grammar.encode()).hexdigest().encode() + _table_key(grammar, python_version=False).encode()


def _grammar() -> str:
    return Path(__file__).with_name("grammar.lark").read_text(encoding="utf-8")


def _from_tables(blob: bytes) -> Lark | None:
    import marshal
    try:
        d = marshal.loads(blob)  # (plain data, no pickle: a table file can run no code)
        return Lark._load_from_dict(d["data"], d["memo"], postlex=_Lines(), propagate_positions=True)
    except Exception:  # noqa: BLE001 - tables lark cannot load: build them again
        return None


def _tables(parser: Lark) -> bytes | None:
    import marshal

    from lark.grammar import Rule
    from lark.lexer import TerminalDef
    try:
        data, memo = parser.memo_serialize([TerminalDef, Rule])
        data["options"] = {k: v for k, v in data["options"].items() if k != "postlex"}  # passed when loaded
        return marshal.dumps({"data": data, "memo": memo})
    except ValueError:  # something marshal cannot write (a lark change)
        return None


@functools.cache
def _lark() -> Lark:
    """The parser, shared once built. Building its LALR tables takes 0.1-0.7 s, so they are
    shipped (`grammar.tables`) and kept in flowml's cache dir (`parser/`, see flowml.cachefiles),
    keyed by everything they depend on: a corrupt or stale entry is rebuilt, never used."""
    from ..cachefiles import FileCache

    grammar = _grammar()
    try:
        shipped = SHIPPED_TABLES.read_bytes()
    except OSError:
        shipped = b""
    head = _shipped_header(grammar)
    if shipped.startswith(head):
        parser = _from_tables(shipped[len(head):])
        if parser is not None:
            return parser
    store = FileCache(subdir="parser", magic=b"FLOWMLP1", suffix=".lark")
    key = _table_key(grammar, python_version=True)
    blob = store.get(key)
    if blob is not None:
        parser = _from_tables(blob)
        if parser is not None:
            return parser
    parser = Lark(grammar, postlex=_Lines(), **_LARK_OPTIONS)
    blob = _tables(parser)
    if blob is not None:
        store.put(key, blob)
    return parser


def write_shipped_tables(path: Path = SHIPPED_TABLES) -> None:
    """Build the tables from the grammar and write them where `_lark` looks first: run
    `python -m flowml.lang.parser` after editing grammar.lark (a test checks they match it)."""
    import lark
    grammar = _grammar()
    blob = _tables(Lark(grammar, postlex=_Lines(), **_LARK_OPTIONS))
    if blob is None:
        raise SystemExit(f"lark {lark.__version__}'s tables cannot be written as plain data")
    path.write_bytes(_shipped_header(grammar) + blob)


def _parse_tree(text: str, file: str, start: str) -> Tree:
    try:
        return _lark().parse(text, start=start)
    except _TooDeep as e:
        what = "blocks" if e.token.type == "LBRACE" else "expression"
        msg = f"{what} nested too deeply (more than {MAX_NESTING} levels)"
        raise FlowSyntaxError(msg, _tok_loc(e.token, file, text)) from None
    except UnexpectedInput as e:
        raise _syntax_error(e, text, file, start) from None


def _build(tree: Tree, file: str, text: str):
    try:
        return _Builder(file, text).transform(tree)
    except VisitError as e:  # lark wraps what the builder raises
        if isinstance(e.orig_exc, FlowSyntaxError):
            raise e.orig_exc from None
        raise


# ---------------------------------------------------------------- source text


def _decode(source: str | bytes, file: str) -> str:
    """The text to parse: UTF-8 decoded, normalised by `_normalise`, free of odd characters."""
    if isinstance(source, (bytes, bytearray)):
        source = bytes(source)
        try:
            source = source.decode("utf-8")
        except UnicodeDecodeError as e:
            raise _bad_byte(source, e.start, file) from None
    if not isinstance(source, str):
        raise TypeError(f"a .flow source must be str or bytes, not {type(source).__name__}")
    text = _normalise(source)
    odd = _ODD_CHAR.search(text)
    if odd:
        line, col = _line_col(text, odd.start())
        what = "NUL character" if odd.group() == "\0" else "line separator"
        msg = f"unexpected {what} (U+{ord(odd.group()):04X})"
        raise FlowSyntaxError(msg, Loc(file, line, col, text))
    return text


def _normalise(text: str) -> str:
    """Drops a BOM and makes every line end with \n alone, so that lark's line numbers and
    those of Loc.source_line (which uses str.splitlines) agree."""
    return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


# NUL, and the characters other than \n at which str.splitlines() breaks lines: refused
# anywhere, even in comments, for the same agreement.
_ODD_CHAR = re.compile("[\0\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


def _bad_byte(data: bytes, pos: int, file: str) -> FlowSyntaxError:
    before = _normalise(data[:pos].decode("utf-8"))  # everything before `pos` is valid
    line, col = _line_col(before, len(before))
    shown = _normalise(data.decode("utf-8", errors="replace"))
    msg = f"invalid UTF-8 byte 0x{data[pos]:02x}: a .flow file must be UTF-8 text"
    return FlowSyntaxError(msg, Loc(file, line, col, shown))


def _line_col(text: str, pos: int) -> tuple[int, int]:
    line_start = text.rfind("\n", 0, pos) + 1
    return text.count("\n", 0, pos) + 1, pos - line_start + 1


def _tok_loc(tok: Token, file: str, text: str) -> Loc:
    return Loc(file, tok.line or 1, tok.column or 1, text)


# ---------------------------------------------------------------- newlines and brackets

_CLOSER = {"LPAR": "RPAR", "LSQB": "RSQB", "LBRACE": "RBRACE"}  # opener -> its closer


class _TooDeep(Exception):
    def __init__(self, token: Token):
        super().__init__()
        self.token = token


class _Brackets:
    """The brackets open so far, innermost last."""

    def __init__(self) -> None:
        self.stack: list[Token] = []

    def feed(self, tok: Token) -> None:
        if tok.type in _CLOSER:  # an opener
            self.stack.append(tok)
            if len(self.stack) > MAX_NESTING:
                raise _TooDeep(tok)
        elif self.stack and tok.type == _CLOSER[self.stack[-1].type]:
            self.stack.pop()
        # A closer that does not match stays unpopped: the parser reports it right there.

    def in_parens(self) -> bool:
        """Inside () or [] a newline is just space; inside {} it ends a statement."""
        return bool(self.stack) and self.stack[-1].type != "LBRACE"


_EOF_NL = "<end of input>"  # not '': lark places its $END only after a truthy token


class _Lines(PostLex):
    """Turns NEWLINE and SEMI into the grammar's `_NL`: drops newlines inside () and [],
    collapses runs into one, drops them at the start, and ends a non-empty stream with
    exactly one `_NL`, whose value is `_EOF_NL` (so that errors can tell the end of input).
    Kept stateless (all state lives in the generator) because the Lark object is shared."""

    always_accept = ("NEWLINE", "SEMI")

    def process(self, stream):
        brackets = _Brackets()
        pending = None  # the first NEWLINE/SEMI of a run, not yet passed on
        last = None  # the last token passed on
        for tok in stream:
            if tok.type in ("NEWLINE", "SEMI"):
                # `;` is kept inside brackets so that `f(a; b)` is an error, not `f(a b)`.
                if tok.type == "SEMI" or not brackets.in_parens():
                    pending = pending or tok
                continue
            brackets.feed(tok)
            if pending is not None and last is not None:
                yield Token.new_borrow_pos("_NL", pending.value, pending)
            pending = None
            yield tok
            last = tok
        if last is not None:
            yield Token("_NL", _EOF_NL, last.end_pos, last.end_line, last.end_column,
                        last.end_line, last.end_column, last.end_pos)


def _open_brackets(text: str, upto: int) -> list[Token]:
    """The brackets still open where the parser stopped (at offset `upto`)."""
    brackets = _Brackets()
    for tok in _lark().lex(text):
        if tok.start_pos >= upto or _is_eof(tok):
            break
        brackets.feed(tok)
    return brackets.stack


# ---------------------------------------------------------------- syntax error messages

_STMT_START = {"SEED", "INPUT", "PARAM", "CONST", "DEF", "FN", "NAME"}
_ATOM_START = {"NAME", "INT", "FLOAT", "STRING", "TRUE", "FALSE", "LPAR"}
_EXPR_START = _ATOM_START | {"PLUS", "MINUS", "NOT", "IF"}
_OPERATORS = {
    "OR", "AND", "EQ", "NE", "LT", "LE", "GT", "GE", "PLUS", "MINUS", "STAR", "SLASH",
    "DSLASH", "PERCENT", "AT", "POW", "LPAR", "LSQB", "DOT",
}  # binary operators and postfix openers: "an operator" stands for all of them
_TERMINAL_TEXT = {
    "NAME": "a name", "INT": "an integer", "FLOAT": "a number", "STRING": "a string",
    "_NL": "a newline", "$END": "end of input",
}


def _syntax_error(e: UnexpectedInput, text: str, file: str, start: str) -> FlowSyntaxError:
    if isinstance(e, UnexpectedCharacters):
        loc = Loc(file, e.line, e.column, text)
        return FlowSyntaxError(_bad_char_message(text[e.pos_in_stream]), loc)
    assert isinstance(e, UnexpectedToken), e  # the only other kind, UnexpectedEOF, is Earley's
    return _unexpected_token(e, text, file, start)


def _bad_char_message(char: str) -> str:
    if char == '"':
        return "unterminated string: a string must end with '\"' on the same line"
    if char == "'":
        return "unexpected character \"'\": strings use double quotes"
    if char.isprintable() and not char.isspace():
        return f"unexpected character '{char}'"
    return f"unexpected character U+{ord(char):04X}"


def _unexpected_token(e: UnexpectedToken, text: str, file: str, start: str) -> FlowSyntaxError:
    tok = e.token
    loc = _tok_loc(tok, file, text)
    eof = _is_eof(tok)
    opened = _open_brackets(text, len(text) if eof else tok.start_pos)
    expected = set(e.accepts or e.expected)
    if start == "type_only" and "_NL" in expected:  # a type stands alone: its _NL is the end
        expected = expected - {"_NL"} | {"$END"}

    if eof and opened:
        message = f"unexpected end of input: {_bracket_at(opened[-1])} was never closed"
        return FlowSyntaxError(message, loc)
    imported = _import_at(tok, text)
    if imported is not None:
        return FlowSyntaxError(
            f"'{imported[1]}': .flow files have no imports", Loc(file, tok.line, imported[0], text),
            ["the built-in functions (exp, sum, softmax, ...) need no import; compute anything else in "
             "Python and pass it in as an input, or build the whole graph with flowml's Python API"])
    if opened and _never_closed(opened[-1], tok, text):
        at = opened[-1]
        return FlowSyntaxError(f"{_bracket_at(at)} was never closed", Loc(file, at.line, at.column, text),
                               [f"the parser reached {_token_text(tok)} at {tok.line}:{tok.column} inside it"])
    if tok.type in ("RPAR", "RSQB", "RBRACE"):
        if not opened:
            return FlowSyntaxError(f"unmatched '{tok}'", loc)
        if _CLOSER[opened[-1].type] != tok.type:
            return FlowSyntaxError(f"'{tok}' does not match {_bracket_at(opened[-1])}", loc)
    if tok.type in ("NOT", "IF") and _ATOM_START <= expected:
        article = "an" if tok.type == "IF" else "a"
        return FlowSyntaxError(f"{article} '{tok}' expression must be put in parentheses here", loc)
    if tok.value in KEYWORDS and "NAME" in expected:
        return FlowSyntaxError(f"'{tok}' is a reserved word and cannot be used as a name", loc)
    if tok.type == "LBRACE" and _STMT_START <= expected:
        return FlowSyntaxError("a block's '{' must be on the same line as its fn or def header", loc)

    message = f"unexpected {_token_text(tok)}: expected {_expected_text(expected, _in_type(e))}"
    return FlowSyntaxError(message, loc, _hints(tok, expected, opened))


_IMPORT = re.compile(r"\s*(import|from)\s+")


def _import_at(tok: Token, text: str) -> tuple[int, str] | None:
    """(column, word) of a Python-style `import x` / `from x import y` that `tok` (the name
    after the word) stops: `import` is no keyword, so the parser only sees a name too many."""
    if tok.type != "NAME" or tok.line is None:
        return None
    lines = text.splitlines()
    if not 1 <= tok.line <= len(lines):
        return None
    m = _IMPORT.match(lines[tok.line - 1])
    if m is None or m.end() != tok.column - 1:
        return None
    return m.start(1) + 1, m.group(1)


def _never_closed(opener: Token, tok: Token, text: str) -> bool:
    """Whether `opener`, a '(' or '[' on a line before the bad token `tok`, is still open at the
    end of the text: then the line it is on lacks its closer, and the parser only noticed at a
    later statement (newlines inside brackets are spaces)."""
    if opener.type == "LBRACE" or opener.line >= tok.line:
        return False
    try:
        still_open = _open_brackets(text, len(text))
    except UnexpectedInput:  # a bad character further on: don't guess
        return False
    return any(b.start_pos == opener.start_pos for b in still_open)


def _is_eof(tok: Token) -> bool:
    return tok.type == "$END" or (tok.type == "_NL" and tok.value == _EOF_NL)


def _bracket_at(tok: Token) -> str:
    return f"'{tok}' opened at {tok.line}:{tok.column}"


def _hints(tok: Token, expected: set[str], opened: list[Token]) -> list[str]:
    notes = []
    if tok.type == "LARROW" and "LT" in expected:
        notes.append("'<-' is an update; to compare with a negative number write '< -'")
    if tok.type == "IF" and "IF" not in expected:
        notes.append("a conditional expression is written 'if c then a else b'")
    if tok.type == "EQUAL" and "EQ" in expected:
        notes.append("use '==' to compare")
    if opened and opened[-1].line < tok.line:
        notes.append(f"{_bracket_at(opened[-1])} is not closed yet")
    return notes


def _in_type(e: UnexpectedToken) -> bool:
    """Whether the parser wanted a type: a NAME right after `x :` or at the start of a type."""
    if set(e.accepts or e.expected) != {"NAME"} or e.interactive_parser is None:
        return False
    values = e.interactive_parser.parser_state.value_stack
    return not values or (isinstance(values[-1], Token) and values[-1].type == "COLON")


def _token_text(tok: Token) -> str:
    if _is_eof(tok):
        return "end of input"
    if tok.type == "_NL":
        return "';'" if tok.value == ";" else "end of line"
    if tok.type == "NAME":
        return f"name '{_clip(tok)}'"
    if tok.type in ("INT", "FLOAT"):
        return f"number {_clip(tok)}"
    if tok.type == "STRING":
        return f"string {_clip(tok)}"
    if tok.value in KEYWORDS:
        return f"keyword '{tok}'"
    return f"'{tok}'"


def _expected_text(expected: set[str], in_type: bool) -> str:
    if in_type:
        return "a type like f64[N]"
    left = expected - {"$END"} or set(expected)
    parts = []
    if _STMT_START <= left:
        parts.append("a statement")
        left -= _STMT_START | {"RETURN"}
    if _ATOM_START <= left:
        parts.append("an expression")
        left -= _EXPR_START
    if {"PLUS", "STAR"} <= left:
        parts.append("an operator")
        left -= _OPERATORS
    parts += sorted(_terminal_text(name) for name in left)
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " or " + parts[-1]


def _terminal_text(name: str) -> str:
    if name in _TERMINAL_TEXT:
        return _TERMINAL_TEXT[name]
    pattern = _lark().get_terminal(name).pattern
    return f"'{pattern.value}'" if isinstance(pattern, PatternStr) else name


# ---------------------------------------------------------------- parse tree to AST


def _clip(text: str, width: int = 20) -> str:
    return text if len(text) <= width else text[:width] + "..."


@dataclass
class _Block:
    """A `{ ... }` body before its fn or def checks what it may contain."""

    stmts: list[ast.Stmt]
    close: Loc  # the closing brace


_WHAT = {
    ast.SeedStmt: "'seed'",
    ast.InputDecl: "an 'input' declaration",
    ast.ParamDecl: "a 'param' declaration",
    ast.ConstDecl: "a 'const' declaration",
    ast.DefDecl: "a 'def'",
    ast.FnDecl: "an 'fn'",
    ast.Update: "an update '<-'",
    ast.Return: "'return'",
    ast.Assign: "an assignment",
}
_FN_BODY = "an fn body: only assignments and updates '<-' are"
_DEF_BODY = "a def body: only assignments and a final 'return' are"
_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\", '"': '"'}


@v_args(meta=True)
class _Builder(Transformer_NonRecursive):
    """Builds AST nodes bottom-up from the parse tree, without recursion."""

    def __init__(self, file: str, text: str):
        super().__init__(visit_tokens=False)
        self._file = file
        self._text = text
        self._depth: dict[int, tuple[int, object]] = {}  # id(node) -> (depth, node kept alive)

    # ------------------------------------------------ helpers

    def _loc(self, at) -> Loc:
        """The Loc of a token or of a rule's meta (its first character)."""
        return Loc(self._file, at.line, at.column, self._text)

    def _error(self, message: str, at) -> FlowSyntaxError:
        return FlowSyntaxError(message, at if isinstance(at, Loc) else self._loc(at))

    def _deep(self, node, at, *children):
        """Records `node`'s depth; refuses one deeper than MAX_DEPTH, pointing at `at`."""
        depth = 1 + max((self._depth[id(c)][0] for c in children if id(c) in self._depth), default=0)
        if depth > MAX_DEPTH:
            raise self._error(f"expression nested too deeply (more than {MAX_DEPTH} levels); "
                              "split it into several definitions", at)
        self._depth[id(node)] = (depth, node)
        return node

    def _int(self, tok: Token) -> int:
        if len(tok) > 20 or int(tok) > _MAX_INT:
            raise self._error(f"integer {_clip(tok)} is too large", tok)
        return int(tok)

    def _target(self, tok: Token) -> ast.Target:
        return ast.Target(str(tok), self._loc(tok))

    # ------------------------------------------------ module and statements

    def start(self, meta, stmts):
        for stmt in stmts:
            if isinstance(stmt, ast.Update):
                raise self._error("an update '<-' is only allowed inside an fn body", stmt.loc)
            if isinstance(stmt, ast.Return):
                raise self._error("'return' is only allowed at the end of a def body", stmt.loc)
        return ast.Module(stmts, self._file, self._text)

    def type_only(self, meta, children):
        return children[0]

    def seed(self, meta, children):
        return ast.SeedStmt(self._loc(meta), self._int(children[0]))

    def input_decl(self, meta, children):
        name, typ = children
        return ast.InputDecl(self._loc(meta), str(name), typ)

    def param_decl(self, meta, children):
        name, typ, init = children
        return ast.ParamDecl(self._loc(meta), str(name), typ, init)

    def const_decl(self, meta, children):
        name, typ, value = children
        return ast.ConstDecl(self._loc(meta), str(name), typ, value)

    def assign(self, meta, children):
        *names, value = children
        return ast.Assign(self._loc(meta), [self._target(n) for n in names], value)

    def update(self, meta, children):
        name, value = children
        return ast.Update(self._loc(meta), self._target(name), value)

    def return_stmt(self, meta, values):
        return ast.Return(self._loc(meta), values)

    def block(self, meta, children):
        close = Loc(self._file, meta.end_line, meta.end_column - 1, self._text)
        return _Block([s for s in children if s is not None], close)

    def def_expr(self, meta, children):
        name, params, result = children
        return ast.DefDecl(self._loc(meta), str(name), params or [], [], [result])

    def def_block(self, meta, children):
        name, params, block = children
        *body, last = block.stmts or [None]
        for stmt in body:
            if isinstance(stmt, ast.Return):
                raise self._error("'return' must be the last statement of a def body", stmt.loc)
            self._only(stmt, (ast.Assign,), _DEF_BODY)
        if not isinstance(last, ast.Return):
            self._only(last, (ast.Assign,), _DEF_BODY)
            raise self._error(f"the body of def '{name}' must end with 'return'", block.close)
        return ast.DefDecl(self._loc(meta), str(name), params or [], body, last.values)

    def def_params(self, meta, params):
        seen_default = None
        for p in params:
            if p.default is not None:
                seen_default = p
            elif seen_default is not None:
                raise self._error(f"parameter '{p.name}' needs a default value: it follows "
                                  f"'{seen_default.name}', which has one", p.loc)
        return params

    def def_param(self, meta, children):
        name, default = children
        return ast.DefParam(str(name), default, self._loc(name))

    def fn_decl(self, meta, children):
        name, params, outputs, block = children
        body = block.stmts if block is not None else []
        for stmt in body:
            if isinstance(stmt, ast.Return):
                msg = "'return' is not allowed in an fn body: list its outputs after '->'"
                raise self._error(msg, stmt.loc)
            self._only(stmt, (ast.Assign, ast.Update), _FN_BODY)
        return ast.FnDecl(self._loc(meta), str(name), params or [], outputs or [], body)

    def fn_params(self, meta, names):
        return [self._target(n) for n in names]

    def fn_outputs(self, meta, outputs):
        if len(outputs) == 1 and isinstance(outputs[0], ast.TupleExpr):
            return outputs[0].items  # `-> (a, b)` lists outputs, like `-> a, b`
        return outputs

    def _only(self, stmt, allowed, where: str) -> None:
        if stmt is not None and not isinstance(stmt, allowed):
            raise self._error(f"{_WHAT[type(stmt)]} is not allowed in {where}", stmt.loc)

    # ------------------------------------------------ types

    def type_expr(self, meta, children):
        name, dims = children
        if name not in DTYPES:
            msg = f"unknown dtype '{name}': expected one of {', '.join(DTYPES)}"
            raise self._error(msg, name)
        return ast.TypeExpr(str(name), dims or [], self._loc(name))

    def dims(self, meta, dims):
        return [self._int(d) if d.type == "INT" else str(d) for d in dims]

    # ------------------------------------------------ expressions

    def binop(self, meta, children):
        left, op, right = children
        return self._deep(ast.BinOp(self._loc(meta), str(op), left, right), op, left, right)

    def compare(self, meta, children):
        if len(children) > 3:
            a, b = children[1], children[3]
            raise self._error(f"comparisons cannot be chained: write '(x {a} y) and (y {b} z)' "
                              f"instead of 'x {a} y {b} z'", b)
        return self.binop(meta, children)

    def unop(self, meta, children):
        op, operand = children
        return self._deep(ast.UnaryOp(self._loc(meta), str(op), operand), op, operand)

    def if_expr(self, meta, children):
        cond, then, orelse = children
        return self._deep(ast.IfExpr(self._loc(meta), cond, then, orelse), meta, cond, then, orelse)

    def call(self, meta, children):
        func, args = children
        if not isinstance(func, ast.Name):
            raise self._error("only a function name can be called, like 'f(x)'", func.loc)
        positional, keywords = self._split_args(args or [])
        node = ast.Call(self._loc(meta), func.name, func.loc, positional, keywords)
        return self._deep(node, meta, *(args or []))

    def _split_args(self, args):
        positional, keywords, names = [], [], set()
        for arg in args:
            if isinstance(arg, ast.Keyword):
                if arg.name in names:
                    raise self._error(f"keyword argument '{arg.name}' given twice", arg.loc)
                names.add(arg.name)
                keywords.append(arg)
            elif keywords:
                raise self._error("a positional argument cannot follow a keyword argument", arg.loc)
            else:
                positional.append(arg)
        return positional, keywords

    def args(self, meta, args):
        return args

    def kwarg(self, meta, children):
        name, value = children
        return self._deep(ast.Keyword(str(name), value, self._loc(name)), name, value)

    def index(self, meta, children):
        value, items = children
        return self._deep(ast.Index(self._loc(meta), value, items), meta, value, *items)

    def items(self, meta, items):
        return items

    def slice_item(self, meta, children):
        start, stop, step = children
        return self._deep(ast.Slice(start, stop, step, self._loc(meta)), meta, *children)

    def ellipsis_item(self, meta, children):
        return ast.Ellipsis_(self._loc(meta))

    def attr(self, meta, children):
        value, name = children
        return self._deep(ast.Attr(self._loc(meta), value, str(name)), name, value)

    def tuple_expr(self, meta, items):
        return self._deep(ast.TupleExpr(self._loc(meta), items), meta, *items)

    def name(self, meta, children):
        return ast.Name(self._loc(meta), str(children[0]))

    def int_lit(self, meta, children):
        return ast.Num(self._loc(meta), self._int(children[0]))

    def float_lit(self, meta, children):
        value = float(children[0])
        if value == float("inf"):
            raise self._error(f"number {_clip(children[0])} is too large", children[0])
        return ast.Num(self._loc(meta), value)

    def str_lit(self, meta, children):
        return ast.Str(self._loc(meta), self._unescape(children[0]))

    def _unescape(self, tok: Token) -> str:
        def one(m: re.Match) -> str:
            if m.group(1) not in _ESCAPES:
                col = tok.column + 1 + m.start()  # + 1 for the opening quote
                msg = f"unknown escape '\\{m.group(1)}' in string (known: \\n \\t \\\\ \\\")"
                raise self._error(msg, Loc(self._file, tok.line, col, self._text))
            return _ESCAPES[m.group(1)]

        return re.sub(r"\\(.)", one, tok[1:-1])

    def true_lit(self, meta, children):
        return ast.Bool(self._loc(meta), True)

    def false_lit(self, meta, children):
        return ast.Bool(self._loc(meta), False)


if __name__ == "__main__":
    write_shipped_tables()
    print(f"wrote {SHIPPED_TABLES}")
