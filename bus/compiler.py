"""JMESPath syntax trees turned into plain closures, with exactly jmespath's results.

jmespath's TreeInterpreter dispatches on every node and re-derives each function's type rules
on every call. The hot node kinds (field paths, literals, function calls, multiselects, ||, &&,
!) become closures once, at load; the rest (projections, filters, comparators, ...) runs
through the interpreter.

``fold_root`` turns reads of a constant the caller puts at the top of every document (a
mapping's ``vars``) into literals first, and ``reads_root`` says whether a tree still needs it
there.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from itertools import repeat
from typing import TYPE_CHECKING, Any

from bus.functions import TypeRule, accepts

if TYPE_CHECKING:
    from bus.functions import TielineFunctions

Evaluator = Callable[[Any], Any]
Node = dict[str, Any]

# Node kinds whose first child sees the node's own input and the others something derived
# from it (a pipe, a projection's elements); and kinds whose children all see the input.
_FIRST_SEES_INPUT = frozenset(
    "subexpression index_expression pipe flatten projection value_projection "
    "filter_projection".split()
)
_ALL_SEE_INPUT = frozenset(
    "or_expression and_expression not_expression comparator function_expression "
    "multi_select_list multi_select_dict key_val_pair".split()
)


def compile_ast(node: Node, funcs: TielineFunctions) -> Evaluator:
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
        return constant(node["value"])
    if kind in ("current", "identity"):
        return _identity
    if kind == "multi_select_list":
        items = tuple(compile_ast(k, funcs) for k in kids)
        return partial(_select_two, *items) if len(items) == 2 else partial(_select_list, items)
    if kind == "multi_select_dict":
        pairs = tuple((k["value"], compile_ast(k["children"][0], funcs)) for k in kids)
        return partial(_select_dict, pairs)
    if kind in ("or_expression", "and_expression"):
        left, right = compile_ast(kids[0], funcs), compile_ast(kids[1], funcs)
        return partial(_or if kind == "or_expression" else _and, left, right)
    if kind == "not_expression":
        return partial(_not, compile_ast(kids[0], funcs))
    if kind == "function_expression" and all(k["type"] != "expref" for k in kids):
        return _compile_call(node["value"], kids, funcs)
    return partial(funcs.interpreter.visit, node)  # projections, filters, comparators, ...


def _compile_call(name: str, kids: list[Node], funcs: TielineFunctions) -> Evaluator:
    # Type rules are checked here for literal arguments and inline for the others; a value
    # that fails them goes through jmespath's own call, which raises its well-worded error.
    args = tuple(compile_ast(k, funcs) for k in kids)
    constants = {i: k["value"] for i, k in enumerate(kids) if k["type"] == "literal"}
    found = funcs.rules(name, len(args))
    if found is None or not all(accepts(v, found[1][i]) for i, v in constants.items()):
        return partial(_call_jmespath, funcs, name, args)
    function, rules = found
    bound = funcs.bind(name, constants, len(args))
    if bound is not None:
        function, keep = bound, [i for i in range(len(args)) if i not in constants]
    else:
        lead = next((i for i in range(len(args)) if i not in constants), len(args))
        function = partial(function, *(constants[i] for i in range(lead)))
        keep = list(range(lead, len(args)))
    template = [constants.get(i) for i in range(len(args))]

    def fallback(*values: Any) -> Any:
        resolved = list(template)
        for i, value in zip(keep, values, strict=True):
            resolved[i] = value
        return funcs.call_function(name, resolved)

    dynamic = tuple(args[i] for i in keep)
    checks = tuple(None if i in constants else rules[i] for i in keep)
    if len(dynamic) == 1:
        return _call_one(function, dynamic[0], checks[0], fallback)
    return partial(_call_many, function, dynamic, checks, fallback)


def _call_jmespath(
    funcs: TielineFunctions, name: str, args: tuple[Evaluator, ...], value: Any
) -> Any:
    return funcs.call_function(name, [arg(value) for arg in args])


def _call_one(
    function: Callable[..., Any], arg: Evaluator, rule: TypeRule, fallback: Callable[..., Any]
) -> Evaluator:
    if rule is None:
        return lambda value: function(arg(value))
    allowed, elements = rule
    if elements is not None:  # a list whose elements must be of some types (always a list)

        def call_list(value: Any) -> Any:
            got = arg(value)
            if type(got) is list and all(map(elements.__contains__, map(type, got))):
                return function(got)
            return fallback(got)

        return call_list

    def call(value: Any) -> Any:
        got = arg(value)
        return function(got) if type(got) in allowed else fallback(got)

    return call


def _call_many(
    function: Callable[..., Any],
    args: tuple[Evaluator, ...],
    rules: tuple[TypeRule, ...],
    fallback: Callable[..., Any],
    value: Any,
) -> Any:
    values = [arg(value) for arg in args]
    for got, rule in zip(values, rules, strict=True):
        if rule is not None and not accepts(got, rule):
            return fallback(*values)
    return function(*values)


def constant(value: Any) -> Evaluator:
    """An evaluator that always gives ``value`` (the same object, not a copy)."""
    # next(repeat(value), document) is always value: a call that never enters Python code.
    return partial(next, repeat(value))


def fold_root(node: Node, name: str, value: Any) -> Node:
    """``node`` with every read of ``name`` at the top of the document replaced by ``value``.

    Only valid when every document the expression will search has ``value`` under ``name``.
    Paths into it (``vars.a.b``) become one literal; the input tree is not changed.
    """
    kind, kids = node["type"], node.get("children", [])
    if kind == "field":
        return _literal(value) if node["value"] == name else node
    if kind == "subexpression" and all(k["type"] == "field" for k in kids):
        if kids[0]["value"] == name:
            return _literal(_walk(tuple(k["value"] for k in kids[1:]), value))
        return node
    if kind in _FIRST_SEES_INPUT and kids:
        return {**node, "children": [fold_root(kids[0], name, value), *kids[1:]]}
    if kind in _ALL_SEE_INPUT:
        return {**node, "children": [fold_root(k, name, value) for k in kids]}
    return node


def reads_root(node: Node, name: str) -> bool:
    """Whether ``node`` may read ``name`` at the top of the document (erring on yes)."""
    kind, kids = node["type"], node.get("children", [])
    if kind == "field":
        return node["value"] == name
    if kind in ("current", "identity"):
        return True  # '@', '*', '[*]' at the top see the whole document
    if kind in _FIRST_SEES_INPUT:
        return bool(kids) and reads_root(kids[0], name)
    if kind in _ALL_SEE_INPUT:
        return any(reads_root(k, name) for k in kids)
    return kind not in ("literal", "index", "slice", "expref")


def _literal(value: Any) -> Node:
    return {"type": "literal", "value": value, "children": []}


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


def _is_false(value: Any) -> bool:
    return value is None or value is False or value == "" or value == [] or value == {}


def _select_two(first: Evaluator, second: Evaluator, value: Any) -> Any:
    return None if value is None else [first(value), second(value)]


def _select_list(items: tuple[Evaluator, ...], value: Any) -> Any:
    return None if value is None else [item(value) for item in items]


def _select_dict(pairs: tuple[tuple[str, Evaluator], ...], value: Any) -> Any:
    return None if value is None else {key: item(value) for key, item in pairs}


def _or(left: Evaluator, right: Evaluator, value: Any) -> Any:
    matched = left(value)
    if matched is None or matched is False or (not matched and _is_false(matched)):
        return right(value)  # (_is_false only for what might be "", [] or {})
    return matched


def _and(left: Evaluator, right: Evaluator, value: Any) -> Any:
    matched = left(value)
    if matched is None or matched is False or (not matched and _is_false(matched)):
        return matched
    return right(value)


def _not(inner: Evaluator, value: Any) -> Any:
    result = inner(value)
    if result == 0 and type(result) in (int, float):
        return False  # !0 is false: 0 is not falsy in JMESPath
    return not result
