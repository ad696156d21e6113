"""JMESPath expressions as tieline uses them: compiled once at load, searched per message.

``compile_expression`` refuses at load what jmespath would only notice when run (an unknown
function, a wrong number of arguments) and words syntax errors for people who write YAML. A
compiled ``Expression`` wraps runtime failures as ``bus.errors.MappingError``. Mappings use
``compile_source``, which also compiles their ``vars`` in as constants.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from collections.abc import Mapping as MappingABC
from typing import Any

import jmespath
from jmespath import exceptions as jexc

from bus.compiler import Evaluator, compile_ast, fold_root, reads_root
from bus.errors import MappingError, TielineError
from bus.functions import FunctionError, TielineFunctions

SpecPath = list[str | int]
DEFAULT_FUNCTIONS = TielineFunctions()  # system clock; callers (and tests) may pass their own
RUNTIME_ERRORS = (jexc.JMESPathError, FunctionError)


class MappingSpecError(TielineError):
    """A mapping spec is invalid. ``path`` locates the problem inside the spec."""

    def __init__(self, message: str, path: SpecPath | None = None):
        self.message = message
        self.path: SpecPath = list(path or [])
        super().__init__(f"{_render_path(self.path)}: {message}" if self.path else message)


def _render_path(path: SpecPath) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.isidentifier():
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out


def _is_truthy(value: Any) -> bool:
    # JMESPath truthiness: false, null, "", [] and {} are false; 0 is true.
    if value is None or value is False:
        return False
    return not (isinstance(value, str | list | dict) and not value)


class Expression:
    """A compiled JMESPath expression that knows tieline's functions."""

    def __init__(self, source: str, fn: Callable[[Any], Any]):
        self.source = source
        self._fn = fn  # raw evaluator; raises JMESPath/Function errors unwrapped

    def search(self, view: MappingABC[str, Any]) -> Any:
        try:
            return self._fn(view)
        except RUNTIME_ERRORS as exc:
            raise MappingError(f"expression {self.source!r} failed: {exc}") from exc

    def truthy(self, view: MappingABC[str, Any]) -> bool:
        return _is_truthy(self.search(view))

    def __repr__(self) -> str:
        return f"Expression({self.source!r})"


def compile_expression(
    source: str, path: SpecPath | None = None, *, functions: TielineFunctions | None = None
) -> Expression:
    """Compile ``source``; a syntax error or an unknown function is a ``MappingSpecError``."""
    evaluate, _ = compile_source(source, path, functions or DEFAULT_FUNCTIONS, {})
    return Expression(source, evaluate)


def compile_source(
    source: Any, path: SpecPath | None, funcs: TielineFunctions, vars: MappingABC[str, Any]
) -> tuple[Evaluator, bool]:
    """Compile ``source`` for documents that hold ``vars`` under 'vars'.

    Reads of ``vars.NAME`` become constants; the flag says whether the document must still
    hold 'vars' (for '@', '*' and the like).
    """
    if not isinstance(source, str) or not source.strip():
        raise MappingSpecError("expected a JMESPath expression (a non-empty string)", path)
    try:
        ast = jmespath.compile(source).parsed
    except jexc.JMESPathError as exc:
        raise MappingSpecError(_parse_complaint(source, exc), path) from None
    _check_functions(ast, funcs, source, path)
    if not vars:
        return compile_ast(ast, funcs), False
    ast = fold_root(ast, "vars", vars)
    return compile_ast(ast, funcs), reads_root(ast, "vars")


def _parse_complaint(source: str, exc: jexc.JMESPathError) -> str:
    if isinstance(exc, jexc.EmptyExpressionError):
        return "expected a JMESPath expression, got an empty one"
    if isinstance(exc, jexc.LexerError):
        what, pos = exc.message, exc.lexer_position
    else:
        what, pos = getattr(exc, "msg", str(exc)), getattr(exc, "lex_position", 0)
        if isinstance(exc, jexc.IncompleteExpressionError):
            what = "the expression ends too early"
    text = f"invalid JMESPath {source!r}: {what} at column {pos + 1}"
    token = getattr(exc, "token_value", None)
    if token in ("or", "and", "not"):
        text += "; JMESPath writes or/and/not as ||, && and !"
    elif "'" not in source and '"' in source:
        text += "; string literals take single quotes ('text'), double quotes name fields"
    return text


def _check_functions(node: Any, funcs: TielineFunctions, source: str, path: SpecPath | None):
    # JMESPath only finds unknown functions when it calls them; we want a load error instead.
    if not isinstance(node, dict):
        return
    if node.get("type") == "function_expression":
        name, argc = node["value"], len(node["children"])
        if name not in funcs.FUNCTION_TABLE:
            close = difflib.get_close_matches(name, funcs.names(), n=1)
            hint = f" (did you mean {close[0]}()?)" if close else ""
            raise MappingSpecError(f"unknown function {name}() in {source!r}{hint}", path)
        low, high = funcs.arity(name)
        if argc < low or (high is not None and argc > high):
            want = f"{low}" if low == high else f"{low} to {high}" if high else f"at least {low}"
            raise MappingSpecError(
                f"{name}() takes {want} argument(s), got {argc} in {source!r}", path
            )
    for child in node.get("children", ()):
        _check_functions(child, funcs, source, path)
