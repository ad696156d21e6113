"""tieline's custom JMESPath functions, usable in mappings and in flow expressions.

Functions are null-tolerant where that helps mappings: a null input gives a null (or empty)
result, so a field's ``default`` can take over. A wrong *type* still fails (JMESPath's own
signature check), and so does data a function cannot use (an unparsable time); both surface
as ``bus.errors.MappingError`` naming the mapping, field and expression.

The clock is injected: ``TielineFunctions(clock=lambda: 1_700_000_000.0)`` in tests.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import lru_cache, partial
from typing import Any

import jmespath
import orjson
import phonenumbers
from jmespath import functions
from jmespath.visitor import TreeInterpreter

Clock = Callable[[], float]  # returns Unix epoch seconds (UTC)


class FunctionError(ValueError):
    """A custom function got a value of the right type that it cannot use (e.g. a bad time)."""


def to_text(value: Any) -> str:
    """How templates, ``concat`` and ``hash_percent`` turn a value into text.

    null → "", strings as they are, booleans as JSON (``true``), numbers as Python prints
    them, arrays and objects as compact JSON.
    """
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        return str(value)  # a YAML value orjson cannot encode (e.g. a set): still show something


def format_time(epoch: float) -> str:
    """ISO-8601 UTC with milliseconds and a 'Z' suffix: ``2024-05-01T12:00:00.000Z``."""
    moment = datetime.fromtimestamp(epoch, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    """Parse ISO-8601 (``Z`` or an offset; a naive time is taken as UTC)."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise FunctionError(
            f"{text!r} is not an ISO-8601 time (expected e.g. '2024-05-01T12:00:00Z')"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _phrase(word: str) -> str:
    # Any run of whitespace inside a phrase matches any other.
    return r"\s+".join(re.escape(part) for part in word.split())


# Whole-word match without \b, so words ending in punctuation ("c++") still work.
_WHOLE = r"(?<!\w)(?:{})(?!\w)"


@lru_cache(maxsize=2048)
def _word_pattern(word: str) -> re.Pattern[str]:
    return re.compile(_WHOLE.format(_phrase(word)), re.IGNORECASE)


@lru_cache(maxsize=512)
def _any_pattern(words: tuple[str, ...]) -> re.Pattern[str] | None:
    # One alternation per word list: a single scan of the text for contains_any().
    phrases = [_phrase(w) for w in words if w.strip()]
    return re.compile(_WHOLE.format("|".join(phrases)), re.IGNORECASE) if phrases else None


def _found(text: str, words: list[str]) -> list[str]:
    seen: set[str] = set()
    hits: list[str] = []
    for word in words:
        key = word.casefold()
        if key in seen or not word.strip():
            continue
        seen.add(key)
        if _word_pattern(word).search(text):
            hits.append(word)
    return hits


# jmespath checks types by class name; the fast path checks classes. Names without a class
# here (e.g. 'OrderedDict') simply fall back to jmespath's own check.
_BUILTIN_TYPES = {t.__name__: t for t in (str, int, float, bool, list, dict, type(None))}


def _pytypes(names: list[str] | tuple[str, ...]) -> frozenset[type]:
    return frozenset(_BUILTIN_TYPES[n] for n in names if n in _BUILTIN_TYPES)


class TielineFunctions(functions.Functions):
    """JMESPath functions added by tieline; one instance per clock, shared by expressions."""

    def __init__(self, clock: Clock = time.time):
        super().__init__()
        self.clock = clock
        # Created once: expressions reuse them instead of building new ones per search.
        self.options = jmespath.Options(custom_functions=self)
        self.interpreter = TreeInterpreter(self.options)

    def names(self) -> list[str]:
        """Every function name an expression may call (built-in and tieline's)."""
        return sorted(self.FUNCTION_TABLE)

    @functions.signature({"types": ["string", "number", "null"]}, {"types": ["string", "null"]})
    def _func_e164(self, phone: Any, region: str | None = None) -> str | None:
        if phone is None or isinstance(phone, bool):
            return None
        try:
            parsed = phonenumbers.parse(str(phone), (region or "").upper() or None)
        except phonenumbers.NumberParseException:
            return None
        if not phonenumbers.is_valid_number(parsed):
            return None
        return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)

    @functions.signature()
    def _func_now(self) -> str:
        return format_time(self.clock())

    @functions.signature()
    def _func_now_epoch(self) -> float:
        return float(self.clock())

    @functions.signature({"types": ["string", "null"]}, {"types": ["array-string"]})
    def _func_contains_any(self, text: str | None, words: list[str]) -> bool:
        pattern = _any_pattern(tuple(words)) if text else None
        return pattern is not None and pattern.search(text) is not None

    @functions.signature({"types": ["string", "null"]}, {"types": ["array-string"]})
    def _func_matched_keywords(self, text: str | None, words: list[str]) -> list[str]:
        return _found(text, words) if text else []

    @functions.signature({"types": []}, {"types": [], "variadic": True})
    def _func_coalesce(self, *values: Any) -> Any:
        return next((v for v in values if v is not None and v != ""), None)

    @functions.signature({"types": ["string", "null"]})
    def _func_lower(self, text: str | None) -> str | None:
        return None if text is None else text.lower()

    @functions.signature({"types": ["string", "null"]})
    def _func_upper(self, text: str | None) -> str | None:
        return None if text is None else text.upper()

    @functions.signature({"types": ["string", "null"]})
    def _func_trim(self, text: str | None) -> str | None:
        return None if text is None else text.strip()

    @functions.signature({"types": []}, {"types": [], "variadic": True})
    def _func_concat(self, *values: Any) -> str:
        return "".join(to_text(v) for v in values)

    @functions.signature({"types": ["string", "null"]}, {"types": ["string"]})
    def _func_split(self, text: str | None, sep: str) -> list[str] | None:
        if text is None:
            return None
        if sep == "":
            raise FunctionError("split() needs a non-empty separator")
        return text.split(sep)

    @functions.signature({"types": []}, {"types": []})
    def _func_default(self, value: Any, fallback: Any) -> Any:
        return fallback if value is None else value

    @functions.signature({"types": ["object", "null"]}, {"types": ["string", "number", "null"]})
    def _func_get(self, table: dict | None, key: Any) -> Any:
        """``table[key]``: look a value up by a key computed from the message (rules tables)."""
        if table is None or key is None:
            return None
        return table.get(key if isinstance(key, str) else to_text(key))

    @functions.signature({"types": []})
    def _func_hash_percent(self, value: Any) -> int:
        digest = hashlib.sha256(to_text(value).encode()).digest()
        return int.from_bytes(digest[:8], "big") % 100

    @functions.signature({"types": ["string", "null"]}, {"types": ["number"]})
    def _func_add_seconds(self, when: str | None, seconds: float) -> str | None:
        if when is None:
            return None
        moment = parse_time(when) + timedelta(seconds=seconds)
        return format_time(moment.timestamp())

    def caller(self, name: str, argc: int) -> Callable[[list[Any]], Any]:
        """A fast ``call(args)`` for ``name`` with ``argc`` arguments, type rules precomputed.

        Arguments that pass the precomputed check go straight to the function; anything else
        takes jmespath's own path, which raises its usual, well-worded type error.
        """
        slow = partial(self.call_function, name)
        if name not in self.FUNCTION_TABLE:
            return slow  # raises jmespath's UnknownFunctionError when called
        low, high = self.arity(name)
        if argc < low or (high is not None and argc > high):
            return slow  # raises jmespath's ArityError when called
        spec = self.FUNCTION_TABLE[name]
        function, signature = spec["function"], spec["signature"]
        checks = []
        for i in range(argc):
            types = signature[min(i, len(signature) - 1)]["types"]
            if not types:
                continue
            allowed, subtypes = self._get_allowed_pytypes(types)
            if len(subtypes) > 1:  # type decided by the first element: leave to jmespath
                return slow
            checks.append((i, _pytypes(allowed), _pytypes(subtypes[0]) if subtypes else None))
        if not checks:
            return lambda args: function(self, *args)

        def call(args: list[Any]) -> Any:
            for i, allowed, subtypes in checks:
                arg = args[i]
                if type(arg) not in allowed:
                    return slow(args)
                if subtypes is not None and type(arg) is list:
                    if not all(map(subtypes.__contains__, map(type, arg))):
                        return slow(args)
            return function(self, *args)

        return call

    def call_function(self, function_name: str, resolved_args: list[Any]) -> Any:
        # e164's region is optional; JMESPath signatures cannot say so, so pad it here.
        if function_name == "e164" and len(resolved_args) == 1:
            resolved_args = [*resolved_args, None]
        return super().call_function(function_name, resolved_args)

    def arity(self, name: str) -> tuple[int, int | None]:
        """(minimum, maximum or None for variadic) number of arguments of ``name``."""
        signature = self.FUNCTION_TABLE[name]["signature"]
        if name == "e164":
            return 1, 2
        if signature and signature[-1].get("variadic"):
            return len(signature), None
        return len(signature), len(signature)


# --- Evaluating parsed expressions -------------------------------------------------------
# jmespath's TreeInterpreter dispatches on every node and re-derives each function's type
# rules on every call. The hot node kinds (fields, literals, function calls, multiselects,
# ||, &&, !) are turned into closures once here; the rest runs through the interpreter.

Evaluator = Callable[[Any], Any]


def _is_false(value: Any) -> bool:
    return value is None or value is False or value == "" or value == [] or value == {}


def compile_ast(node: dict[str, Any], funcs: TielineFunctions) -> Evaluator:
    """A callable ``f(value)`` with the same result as ``jmespath`` searching ``node``."""
    kind = node["type"]
    kids = node.get("children", [])
    if kind == "field":
        return partial(_field1, node["value"])
    if kind in ("subexpression", "index_expression", "pipe"):
        if all(k["type"] == "field" for k in kids):
            return _fields(tuple(k["value"] for k in kids))
        return partial(_chain, tuple(compile_ast(k, funcs) for k in kids))
    if kind == "literal":
        constant = node["value"]
        return lambda _value: constant
    if kind in ("current", "identity"):
        return _identity
    if kind == "multi_select_list":
        return partial(_select_list, tuple(compile_ast(k, funcs) for k in kids))
    if kind == "multi_select_dict":
        pairs = tuple((k["value"], compile_ast(k["children"][0], funcs)) for k in kids)
        return partial(_select_dict, pairs)
    if kind in ("or_expression", "and_expression"):
        left, right = compile_ast(kids[0], funcs), compile_ast(kids[1], funcs)
        return partial(_or if kind == "or_expression" else _and, left, right)
    if kind == "not_expression":
        return partial(_not, compile_ast(kids[0], funcs))
    if kind == "function_expression" and all(k["type"] != "expref" for k in kids):
        args = tuple(compile_ast(k, funcs) for k in kids)
        function = funcs.caller(node["value"], len(args))
        if len(args) in _CALLS:
            return partial(_CALLS[len(args)], function, *args)
        return partial(_call, function, args)
    return partial(funcs.interpreter.visit, node)  # projections, filters, comparators, ...


def _walk(keys: tuple[str, ...], value: Any) -> Any:
    for key in keys:  # a field of a non-object is null, as in the interpreter
        try:
            value = value.get(key)
        except AttributeError:
            return None
    return value


def _field1(key: str, value: Any) -> Any:
    try:
        return value.get(key)
    except AttributeError:
        return None


def _field2(k1: str, k2: str, value: Any) -> Any:
    try:  # value.get(k1) being null (or a list) also lands in except: null, as JMESPath says
        return value.get(k1).get(k2)
    except AttributeError:
        return None


def _field3(k1: str, k2: str, k3: str, value: Any) -> Any:
    try:
        return value.get(k1).get(k2).get(k3)
    except AttributeError:
        return None


_FIELD_CHAINS = {1: _field1, 2: _field2, 3: _field3}


def _fields(keys: tuple[str, ...]) -> Evaluator:
    walker = _FIELD_CHAINS.get(len(keys))
    return partial(walker, *keys) if walker else partial(_walk, keys)


def _chain(steps: tuple[Evaluator, ...], value: Any) -> Any:
    for step in steps:
        value = step(value)
    return value


def _identity(value: Any) -> Any:
    return value


def _select_list(items: tuple[Evaluator, ...], value: Any) -> Any:
    return None if value is None else [item(value) for item in items]


def _select_dict(pairs: tuple[tuple[str, Evaluator], ...], value: Any) -> Any:
    return None if value is None else {key: item(value) for key, item in pairs}


def _or(left: Evaluator, right: Evaluator, value: Any) -> Any:
    matched = left(value)
    return right(value) if _is_false(matched) else matched


def _and(left: Evaluator, right: Evaluator, value: Any) -> Any:
    matched = left(value)
    return matched if _is_false(matched) else right(value)


def _not(inner: Evaluator, value: Any) -> Any:
    result = inner(value)
    if result == 0 and type(result) in (int, float):
        return False  # !0 is false: 0 is not falsy in JMESPath
    return not result


def _call(function: Callable[[list[Any]], Any], args: tuple[Evaluator, ...], value: Any) -> Any:
    return function([arg(value) for arg in args])


def _call1(function: Callable[[list[Any]], Any], arg: Evaluator, value: Any) -> Any:
    return function([arg(value)])


def _call2(
    function: Callable[[list[Any]], Any], arg1: Evaluator, arg2: Evaluator, value: Any
) -> Any:
    return function([arg1(value), arg2(value)])


_CALLS = {1: _call1, 2: _call2}
