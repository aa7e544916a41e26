"""Errors a user can get, and the source locations they point at.

Every error flowml raises on purpose is a `FlowError`. Errors about a model's text carry a
`Loc` and render as ``file:line:col: message`` followed by the source line and a caret, the way
compilers print them. Anything else escaping from flowml is a bug in flowml.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Loc:
    """A position in a source text: 1-based line and column, plus the text to quote."""

    file: str
    line: int
    col: int
    source: str | None = None  # the whole text, for quoting the line in messages

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"

    def source_line(self) -> str | None:
        if self.source is None:
            return None
        lines = self.source.splitlines()
        if 1 <= self.line <= len(lines):
            return lines[self.line - 1]
        return None

    def __repr__(self) -> str:  # keep dataclass reprs short: the source text can be long
        return f"Loc({self})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Loc) and (self.file, self.line, self.col) == (other.file, other.line, other.col)

    def __hash__(self) -> int:
        return hash((self.file, self.line, self.col))


def quote(loc: Loc | None) -> str:
    """The source line of `loc` with a caret under its column, or '' when unknown."""
    if loc is None:
        return ""
    text = loc.source_line()
    if text is None:
        return ""
    text = text.replace("\t", " ").rstrip()
    caret = " " * (max(loc.col, 1) - 1) + "^"
    return f"    {text}\n    {caret}"


class FlowError(Exception):
    """Base class of every error flowml reports to its users."""

    def __init__(self, message: str, loc: Loc | None = None, notes: list[str] | None = None):
        super().__init__(message)
        self.message = message
        self.loc = loc
        self.notes = list(notes or [])

    def __str__(self) -> str:
        head = f"{self.loc}: {self.message}" if self.loc is not None else self.message
        parts = [head]
        quoted = quote(self.loc)
        if quoted:
            parts.append(quoted)
        parts.extend(f"note: {n}" for n in self.notes)
        return "\n".join(parts)


class FlowSyntaxError(FlowError):
    """The text is not a .flow program (bad token, missing operand, bad bytes...)."""


class FlowNameError(FlowError):
    """An unknown, duplicate or misused name."""


class FlowTypeError(FlowError):
    """A shape or dtype that does not fit (e.g. adding f32[N, 784] and f32[10])."""


class FlowGradError(FlowError):
    """A gradient that cannot be taken: non-scalar cost, integer wrt, disconnected input,
    or a path through an op that has no derivative."""


class FlowCallError(FlowError):
    """A compiled function called with missing, extra or ill-fitting arguments."""


class FlowRuntimeError(FlowError):
    """A failure while running a compiled function (e.g. an index out of bounds)."""


class FlowInternalError(FlowError):
    """A bug in flowml itself: please report it with the model that triggered it."""


def did_you_mean(name: str, candidates, aliases=None) -> str | None:
    """A 'did you mean' suggestion for a misspelt name, or None.

    difflib's similarity, plus a bonus for a shared first few letters: a misspelling keeps its
    start far more often than its end, so `isnul` is closer to `isnan` than to `scan`, and
    `arctn` to `arctan` than to `arange`. A name much shorter or longer than the candidate is
    suggested only if the rest is close. `aliases`: other
    libraries' names for a candidate (`amax` -> `max`), suggested first."""
    import difflib
    import os

    if aliases and aliases.get(name) in candidates:
        return f"did you mean '{aliases[name]}'?"
    best, best_score = None, 0.0
    for candidate in sorted(set(candidates)):
        ratio = difflib.SequenceMatcher(None, name, candidate).ratio()
        prefix = len(os.path.commonprefix([name.lower(), candidate.lower()]))
        score = ratio + 0.06 * min(prefix, 4)
        if score > best_score:
            best, best_score = candidate, score
    return f"did you mean '{best}'?" if best is not None and best_score >= 0.66 else None
