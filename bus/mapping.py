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

import orjson

from bus.compiler import Evaluator, constant
from bus.errors import MappingError
from bus.expression import (
    DEFAULT_FUNCTIONS,
    RUNTIME_ERRORS,
    Expression,
    MappingSpecError,
    SpecPath,
    compile_expression,
    compile_source,
)
from bus.functions import TielineFunctions
from bus.template import TemplateError, compile_template

__all__ = [
    "Expression",
    "FieldTrace",
    "Mapping",
    "MappingSpecError",
    "compile_expression",
    "compile_mapping",
]  # Expression, compile_expression and MappingSpecError live in bus.expression
_TOP_KEYS = ("vars", "base", "fields", "omit_null", "description")
_SOURCE_KEYS = ("expr", "const", "template")


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
    reads_vars: bool  # may still read 'vars' from the view (see compile_source)


_NO_DEFAULT = object()  # a field without a default (None is a default: keep the null)


class Mapping:
    """A compiled mapping. ``apply(view)`` returns the new body (a dict)."""

    def __init__(
        self,
        name: str,
        vars: MappingABC[str, Any],
        base: Expression | None,
        fields: tuple[_Field, ...],
        omit_null: bool,
        view_needs_vars: bool = True,
    ):
        self.name = name
        self.vars = vars
        self.base = base
        self.fields = fields
        self.omit_null = omit_null
        # Reads of vars.NAME are compiled in as constants; the view gets a copy with 'vars'
        # only for expressions that may still look at it (e.g. '@' or '*').
        self._add_vars = bool(vars) and view_needs_vars
        # Per field: head is the key of a one-level target or the first of a two-level one
        # (then second is set); deeper targets (head None) go through _put.
        self._plan = tuple(
            (
                f.evaluate,
                f.keys[0] if len(f.keys) <= 2 else None,
                f.keys[1] if len(f.keys) == 2 else None,
                f.default if f.has_default else _NO_DEFAULT,
                f,
            )
            for f in fields
        )

    def apply(self, view: MappingABC[str, Any]) -> Any:
        if self._add_vars:
            view = {**view, "vars": self.vars}
        if self.base is not None:
            return self._fill(view, self._start(view), None)
        out: dict[str, Any] = {}
        omit_null = self.omit_null
        field = None
        try:
            # Plain tuples unpacked in the loop: this is the per-message hot path.
            for evaluate, head, second, default, field in self._plan:
                value = evaluate(view)
                if value is None:
                    if default is not _NO_DEFAULT:
                        value = copy.deepcopy(default) if field.copy_default else default
                    elif omit_null:
                        continue
                if second is not None:  # no base: every dict in `out` is ours
                    node = out.get(head)
                    if node is None:
                        out[head] = {second: value}
                    else:
                        node[second] = value
                elif head is not None:
                    out[head] = value
                else:
                    self._put(out, field, value, None)
        except RUNTIME_ERRORS as exc:
            raise self._error(field.target, field.source, exc) from exc
        return out

    def explain(self, view: MappingABC[str, Any]) -> tuple[Any, list[FieldTrace]]:
        """Like ``apply``, and also how every field (kept or omitted) got its value."""
        if self._add_vars:
            view = {**view, "vars": self.vars}
        traces: list[FieldTrace] = []
        out = self._fill(view, {} if self.base is None else self._start(view), traces)
        return out, traces

    def _start(self, view: MappingABC[str, Any]) -> dict[str, Any]:
        assert self.base is not None
        try:
            start = self.base._fn(view)
        except RUNTIME_ERRORS as exc:
            raise self._error("base", self.base.source, exc) from exc
        if not isinstance(start, dict):
            raise MappingError(
                f"mapping '{self.name}': base {self.base.source!r} gave "
                f"{type(start).__name__}, not an object; point base at an object in the message"
            )
        return dict(start)

    def _fill(
        self, view: MappingABC[str, Any], out: dict[str, Any], traces: list[FieldTrace] | None
    ) -> dict[str, Any]:
        # The general path (a base, explain): every field through _put; with a base, nested
        # objects are copied before the first write into them.
        owned = None if self.base is None else {id(out)}
        for field in self.fields:
            try:
                value = field.evaluate(view)
            except RUNTIME_ERRORS as exc:
                raise self._error(field.target, field.source, exc) from exc
            used_default = value is None and field.has_default
            if used_default:
                value = copy.deepcopy(field.default) if field.copy_default else field.default
            if traces is not None:
                traces.append(FieldTrace(field.target, field.source, value, used_default))
            if value is not None or not self.omit_null:
                self._put(out, field, value, owned)
        return out

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
    funcs = functions or DEFAULT_FUNCTIONS
    if not isinstance(spec, MappingABC):
        raise MappingSpecError(f"a mapping is an object with 'fields', got {type(spec).__name__}")
    for key in spec:
        if key not in _TOP_KEYS:
            raise MappingSpecError(_unknown_key(key, _TOP_KEYS), [str(key)])
    vars_ = spec.get("vars") or {}
    if not isinstance(vars_, MappingABC):
        raise MappingSpecError("'vars' must be an object of name: value", ["vars"])
    vars_ = dict(vars_)
    omit_null = spec.get("omit_null", True)
    if not isinstance(omit_null, bool):
        raise MappingSpecError("'omit_null' must be true or false", ["omit_null"])
    base, base_reads_vars = None, False
    if spec.get("base") is not None:
        evaluate, base_reads_vars = compile_source(spec["base"], ["base"], funcs, vars_)
        base = Expression(spec["base"], evaluate)
    raw_fields = spec.get("fields")
    if raw_fields is None and base is None:
        raise MappingSpecError("a mapping needs 'fields' (or a 'base' to copy)", ["fields"])
    if raw_fields is not None and not isinstance(raw_fields, MappingABC):
        raise MappingSpecError("'fields' must be an object of target: source", ["fields"])
    fields = tuple(_compile_field(t, s, funcs, vars_) for t, s in (raw_fields or {}).items())
    _check_overlaps(fields)
    reads_vars = base_reads_vars or any(f.reads_vars for f in fields)
    return Mapping(name, vars_, base, fields, omit_null, reads_vars)


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


def _compile_field(
    target: Any, source: Any, funcs: TielineFunctions, vars: MappingABC[str, Any]
) -> _Field:
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
    evaluate, shown, reads_vars = _evaluator(kind, text, source_path, funcs, vars)
    copy_default = isinstance(default, list | dict)
    return _Field(
        str(target), keys, shown, evaluate, has_default, default, copy_default, reads_vars
    )


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
    kind: str, text: Any, path: SpecPath, funcs: TielineFunctions, vars: MappingABC[str, Any]
) -> tuple[Evaluator, str, bool]:
    if kind == "expr":
        evaluate, reads_vars = compile_source(text, path, funcs, vars)
        return evaluate, text, reads_vars
    if kind == "const":
        if isinstance(text, list | dict):
            return (lambda _view: copy.deepcopy(text)), _show(text), False
        return constant(text), _show(text), False
    if not isinstance(text, str):
        raise MappingSpecError("a template is a string with {expression} placeholders", path)
    reads: list[bool] = []

    def placeholder(source: str) -> Evaluator:
        evaluate, reads_vars = compile_source(source, path, funcs, vars)
        reads.append(reads_vars)
        return evaluate

    try:
        render = compile_template(text, placeholder)
    except TemplateError as e:
        raise MappingSpecError(str(e), path) from None
    return render, text, any(reads)


def _show(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return repr(value)
