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


def _ascii_phrase(word: str) -> str:
    # The same phrase, lower-cased, its word-start check moved after a literal first character.
    first, rest = word[0], _phrase(word)[len(re.escape(word[0])) :]
    return f"{re.escape(first)}(?<!\\w{re.escape(first)}){rest}"


class Keywords:
    """Whole-word, any-case search for any of some words or phrases.

    For ASCII text and words it searches the lower-cased text case-sensitively with a literal
    first character in every alternative: re can then jump to candidate positions instead of
    trying each one (3-4x faster), and for ASCII both give the same answer.
    """

    def __init__(self, words: tuple[str, ...]):
        words = tuple(w.strip().lower() if w.isascii() else w.strip() for w in words if w.strip())
        self.empty = not words
        self._full = re.compile(_WHOLE.format("|".join(map(_phrase, words))), re.IGNORECASE)
        self._ascii = None
        if all(w.isascii() for w in words):
            self._ascii = re.compile(f"(?:{'|'.join(map(_ascii_phrase, words))})(?!\\w)")

    def contains(self, text: str | None) -> bool:
        """``contains_any(text, words)``: null or empty text, or no words, is false."""
        if not text or self.empty:
            return False
        if self._ascii is not None and text.isascii():
            return self._ascii.search(text.lower()) is not None
        return self._full.search(text) is not None


@lru_cache(maxsize=2048)
def keywords(words: tuple[str, ...]) -> Keywords:
    """The compiled search for ``words`` (cached: mappings reuse a few word lists)."""
    return Keywords(words)


def _found(text: str, words: list[str]) -> list[str]:
    seen: set[str] = set()
    hits: list[str] = []
    for word in words:
        key = word.casefold()
        if key in seen or not word.strip():
            continue
        seen.add(key)
        if keywords((word,)).contains(text):
            hits.append(word)
    return hits


# jmespath checks types by class name; the fast path checks classes. Names without a class
# here (e.g. 'OrderedDict') simply fall back to jmespath's own check.
_BUILTIN_TYPES = {t.__name__: t for t in (str, int, float, bool, list, dict, type(None))}


TypeRule = tuple[frozenset[type], frozenset[type] | None] | None


def accepts(value: Any, rule: TypeRule) -> bool:
    """Whether ``value`` passes a rule of ``TielineFunctions.rules`` (as jmespath would)."""
    if rule is None:
        return True
    kind = type(value)
    if kind not in rule[0]:
        return False
    return rule[1] is None or all(map(rule[1].__contains__, map(type, value)))


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
        import phonenumbers  # on first use: its metadata is ~35 ms of every start-up

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
        return bool(text) and keywords(tuple(words)).contains(text)

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

    def rules(self, name: str, argc: int) -> tuple[Callable[..., Any], list[TypeRule]] | None:
        """``name`` bound to this instance and, per argument, the classes it accepts.

        A rule is ``None`` (any value) or ``(classes, element classes or None)``. ``None``
        instead of rules when only jmespath's own call can decide: an unknown function, a wrong
        number of arguments, or a rule that jmespath decides by looking at list elements.
        """
        if name not in self.FUNCTION_TABLE:
            return None
        low, high = self.arity(name)
        if argc < low or (high is not None and argc > high):
            return None
        spec = self.FUNCTION_TABLE[name]
        signature = spec["signature"]
        rules: list[TypeRule] = []
        for i in range(argc):
            types = signature[min(i, len(signature) - 1)]["types"]
            if not types:
                rules.append(None)
                continue
            allowed, subtypes = self._get_allowed_pytypes(types)
            classes = _pytypes(allowed)
            if len(subtypes) > 1 or (subtypes and classes != {list}):
                return None  # jmespath checks elements of whatever it got: leave it to jmespath
            rules.append((classes, _pytypes(subtypes[0]) if subtypes else None))
        return partial(spec["function"], self), rules

    def bind(self, name: str, constants: dict[int, Any], argc: int) -> Callable[..., Any] | None:
        """A faster ``name`` for arguments known at load time (already type-checked).

        It takes only the other arguments, in order; ``None`` when there is nothing to gain.
        """
        if name == "contains_any" and argc == 2 and set(constants) == {1}:
            return keywords(tuple(constants[1])).contains
        if name == "join" and argc == 2 and set(constants) == {0}:
            return constants[0].join  # the array is still checked (strings only) per call
        return None

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
