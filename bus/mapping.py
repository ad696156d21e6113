"""Mappings: reshape a message with JMESPath, compiled once at load, applied per message.

A mapping spec (``mappings/NAME.yaml`` or an inline block; format in ``mappings/README.md``)
compiles into a ``Mapping`` whose ``apply(view)`` returns the new body. The view is
``{"body", "headers", "context"}`` (``Envelope.view()``) plus the mapping's own ``vars``.
Everything that can be checked without a message is checked by ``compile_mapping`` and
reported as ``MappingSpecError`` with its path inside the spec; only bad *data* fails at
``apply`` time, as ``bus.errors.MappingError``.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Callable
from collections.abc import Mapping as MappingABC
from dataclasses import dataclass
from typing import Any

import jmespath
import orjson
from jmespath import exceptions as jexc

from bus.errors import MappingError, TielineError
from bus.functions import FunctionError, TielineFunctions, compile_ast, to_text
from bus.template import TemplateError, split_template

SpecPath = list[str | int]
_DEFAULT_FUNCTIONS = TielineFunctions()  # system clock; callers (and tests) may pass their own
_RUNTIME_ERRORS = (jexc.JMESPathError, FunctionError)
_TOP_KEYS = ("vars", "base", "fields", "omit_null", "description")
_SOURCE_KEYS = ("expr", "const", "template")


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
        except _RUNTIME_ERRORS as exc:
            raise MappingError(f"expression {self.source!r} failed: {exc}") from exc

    def truthy(self, view: MappingABC[str, Any]) -> bool:
        return _is_truthy(self.search(view))

    def __repr__(self) -> str:
        return f"Expression({self.source!r})"


def compile_expression(
    source: str, path: SpecPath | None = None, *, functions: TielineFunctions | None = None
) -> Expression:
    """Compile ``source``; a syntax error or an unknown function is a ``MappingSpecError``."""
    funcs = functions or _DEFAULT_FUNCTIONS
    if not isinstance(source, str) or not source.strip():
        raise MappingSpecError("expected a JMESPath expression (a non-empty string)", path)
    try:
        ast = jmespath.compile(source).parsed
    except jexc.JMESPathError as exc:
        raise MappingSpecError(_parse_complaint(source, exc), path) from None
    _check_functions(ast, funcs, source, path)
    return Expression(source, compile_ast(ast, funcs))


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


@dataclass(frozen=True)
class FieldTrace:
    """How one target field got its value (for ``tieline explain`` and tests)."""

    target: str
    source: str
    value: Any
    used_default: bool


@dataclass(frozen=True, slots=True)
class _Field:
    target: str
    keys: tuple[str, ...]
    source: str
    evaluate: Callable[[Any], Any]
    has_default: bool
    default: Any
    copy_default: bool


class Mapping:
    """A compiled mapping. ``apply(view)`` returns the new body (a dict)."""

    def __init__(
        self,
        name: str,
        vars: MappingABC[str, Any],
        base: Expression | None,
        fields: tuple[_Field, ...],
        omit_null: bool,
    ):
        self.name = name
        self.vars = vars
        self.base = base
        self.fields = fields
        self.omit_null = omit_null
        # head: the only key of a one-level target; second: set for two-level ones.
        self._plan = tuple(
            (
                f.evaluate,
                f.keys[0] if len(f.keys) <= 2 else None,
                f.keys[1] if len(f.keys) == 2 else None,
                f.has_default,
                f.default,
                f.copy_default,
                f,
            )
            for f in fields
        )

    def _start(self, view: MappingABC[str, Any]) -> tuple[MappingABC[str, Any], dict[str, Any]]:
        if self.vars:
            view = {**view, "vars": self.vars}
        if self.base is None:
            return view, {}
        try:
            start = self.base._fn(view)
        except _RUNTIME_ERRORS as exc:
            raise self._error("base", self.base.source, exc) from exc
        if not isinstance(start, dict):
            raise MappingError(
                f"mapping '{self.name}': base {self.base.source!r} gave "
                f"{type(start).__name__}, not an object; point base at an object in the message"
            )
        return view, dict(start)

    def apply(self, view: MappingABC[str, Any]) -> Any:
        view, out = self._start(view)
        owned = None if self.base is None else {id(out)}
        omit_null = self.omit_null
        field = None
        try:
            # Plain tuples unpacked in the loop: this is the per-message hot path.
            for evaluate, head, second, has_default, default, copy_default, field in self._plan:
                value = evaluate(view)
                if value is None:
                    if has_default:
                        value = copy.deepcopy(default) if copy_default else default
                    elif omit_null:
                        continue
                if second is None:
                    if head is not None:
                        out[head] = value
                    else:
                        self._put(out, field, value, owned)
                elif owned is None:  # two levels, no base: every dict in `out` is ours
                    node = out.get(head)
                    if node is None:
                        out[head] = {second: value}
                    else:
                        node[second] = value
                else:
                    self._put(out, field, value, owned)
        except _RUNTIME_ERRORS as exc:
            raise self._error(field.target, field.source, exc) from exc
        return out

    def explain(self, view: MappingABC[str, Any]) -> tuple[Any, list[FieldTrace]]:
        """Like ``apply``, and also how every field (kept or omitted) got its value."""
        view, out = self._start(view)
        owned = None if self.base is None else {id(out)}
        traces: list[FieldTrace] = []
        for field in self.fields:
            try:
                value = field.evaluate(view)
            except _RUNTIME_ERRORS as exc:
                raise self._error(field.target, field.source, exc) from exc
            used_default = value is None and field.has_default
            if used_default:
                value = copy.deepcopy(field.default) if field.copy_default else field.default
            traces.append(FieldTrace(field.target, field.source, value, used_default))
            if value is not None or not self.omit_null:
                self._put(out, field, value, owned)
        return out, traces

    def _put(self, out: dict[str, Any], field: _Field, value: Any, owned: set[int] | None):
        node = out
        for depth, key in enumerate(field.keys[:-1]):
            child = node.get(key)
            if child is None:
                child = node[key] = {}
                if owned is not None:
                    owned.add(id(child))
            elif not isinstance(child, dict):
                where = ".".join(field.keys[: depth + 1])
                raise MappingError(
                    f"mapping '{self.name}', field '{field.target}': '{where}' in the base is "
                    f"{type(child).__name__}, not an object; rename the target or drop it from base"
                )
            elif owned is not None and id(child) not in owned:
                child = node[key] = dict(child)  # copy on write: never change the input message
                owned.add(id(child))
            node = child
        node[field.keys[-1]] = value

    def _error(self, target: str, source: str, exc: Exception) -> MappingError:
        return MappingError(
            f"mapping '{self.name}', field '{target}' ({source}): {exc}; "
            "check the message has the shape the expression expects"
        )

    def __repr__(self) -> str:
        return f"Mapping({self.name!r}, {len(self.fields)} fields)"


def compile_mapping(
    name: str, spec: MappingABC[str, Any], functions: TielineFunctions | None = None
) -> Mapping:
    """Compile a mapping spec; every problem is a ``MappingSpecError`` with its spec path."""
    funcs = functions or _DEFAULT_FUNCTIONS
    if not isinstance(spec, MappingABC):
        raise MappingSpecError(f"a mapping is an object with 'fields', got {type(spec).__name__}")
    for key in spec:
        if key not in _TOP_KEYS:
            raise MappingSpecError(_unknown_key(key, _TOP_KEYS), [str(key)])
    vars_ = spec.get("vars") or {}
    if not isinstance(vars_, MappingABC):
        raise MappingSpecError("'vars' must be an object of name: value", ["vars"])
    omit_null = spec.get("omit_null", True)
    if not isinstance(omit_null, bool):
        raise MappingSpecError("'omit_null' must be true or false", ["omit_null"])
    base = None
    if spec.get("base") is not None:
        base = compile_expression(spec["base"], ["base"], functions=funcs)
    raw_fields = spec.get("fields")
    if raw_fields is None and base is None:
        raise MappingSpecError("a mapping needs 'fields' (or a 'base' to copy)", ["fields"])
    if raw_fields is not None and not isinstance(raw_fields, MappingABC):
        raise MappingSpecError("'fields' must be an object of target: source", ["fields"])
    fields = tuple(_compile_field(t, s, funcs) for t, s in (raw_fields or {}).items())
    _check_overlaps(fields)
    return Mapping(name, dict(vars_), base, fields, omit_null)


def _check_overlaps(fields: tuple[_Field, ...]) -> None:
    # 'a' and 'a.b' cannot both be set: one would silently overwrite the other.
    seen: dict[tuple[str, ...], str] = {}
    for field in fields:
        for other_keys, other in seen.items():
            short, long = sorted((field.keys, other_keys), key=len)
            if long[: len(short)] == short:
                raise MappingSpecError(
                    f"target '{field.target}' overlaps '{other}': one would overwrite the "
                    "other; keep only one of them",
                    ["fields", field.target],
                )
        seen[field.keys] = field.target


def _unknown_key(key: Any, allowed: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(str(key), allowed, n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"allowed: {', '.join(allowed)}"
    return f"unknown key '{key}'; {hint}"


def _compile_field(target: Any, source: Any, funcs: TielineFunctions) -> _Field:
    path: SpecPath = ["fields", str(target)]
    keys = _target_keys(target, path)
    has_default, default = False, None
    if isinstance(source, str):
        kind, text = "expr", source
    elif isinstance(source, MappingABC):
        for key in source:
            if key not in (*_SOURCE_KEYS, "default"):
                raise MappingSpecError(
                    _unknown_key(key, (*_SOURCE_KEYS, "default")), [*path, str(key)]
                )
        kinds = [k for k in _SOURCE_KEYS if k in source]
        if len(kinds) != 1:
            got = " and ".join(kinds) if kinds else "none"
            raise MappingSpecError(f"give exactly one of expr, const, template (got {got})", path)
        kind, text = kinds[0], source[kinds[0]]
        has_default, default = "default" in source, source.get("default")
    else:
        raise MappingSpecError(
            f"a field's source is a JMESPath string or an object with expr/const/template; "
            f"got {type(source).__name__} (for a constant write {{const: {source!r}}})",
            path,
        )
    source_path = path if isinstance(source, str) else [*path, kind]
    evaluate, shown = _evaluator(kind, text, source_path, funcs)
    copy_default = isinstance(default, list | dict)
    return _Field(str(target), keys, shown, evaluate, has_default, default, copy_default)


def _target_keys(target: Any, path: SpecPath) -> tuple[str, ...]:
    if not isinstance(target, str) or not target:
        raise MappingSpecError("a target is a non-empty dotted name like 'ticket.priority'", path)
    if "[" in target or "]" in target:
        raise MappingSpecError(
            "list targets ('items[]', 'a[0]') are not supported; build the list in one "
            'expression instead, e.g. items: "body.lines[].{sku: sku}"',
            path,
        )
    keys = tuple(target.split("."))
    if not all(k.strip() for k in keys):
        raise MappingSpecError(f"target '{target}' has an empty part between dots", path)
    return keys


def _evaluator(
    kind: str, text: Any, path: SpecPath, funcs: TielineFunctions
) -> tuple[Callable[[Any], Any], str]:
    if kind == "expr":
        return compile_expression(text, path, functions=funcs)._fn, text
    if kind == "const":
        if isinstance(text, list | dict):
            return (lambda _view: copy.deepcopy(text)), _show(text)
        return (lambda _view: text), _show(text)
    if not isinstance(text, str):
        raise MappingSpecError("a template is a string with {expression} placeholders", path)
    return _compile_template(text, path, funcs), text


def _show(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return repr(value)


def _compile_template(text: str, path: SpecPath, funcs: TielineFunctions) -> Callable[[Any], str]:
    try:
        literals, exprs = split_template(text)
    except TemplateError as e:
        raise MappingSpecError(str(e), path) from None
    fns = [compile_expression(e, path, functions=funcs)._fn for e in exprs]
    if not fns:
        const = literals[0]
        return lambda _view: const
    pairs = tuple(zip(fns, literals[1:], strict=True))
    head = literals[0]

    def render(view: Any) -> str:
        parts = [head]
        for fn, tail in pairs:
            parts.append(to_text(fn(view)))
            parts.append(tail)
        return "".join(parts)

    return render
