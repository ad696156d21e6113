"""The closure compiler gives exactly what jmespath's interpreter gives, and folds vars soundly."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import jmespath
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jmespath import exceptions as jexc

from bus.compiler import compile_ast, fold_root, reads_root
from bus.functions import TielineFunctions

EPOCH = 1_700_000_000.0


@pytest.fixture(scope="module")
def funcs() -> TielineFunctions:
    return TielineFunctions(clock=lambda: EPOCH)


def search(funcs: TielineFunctions, expr: str, data: Any) -> Any:
    return jmespath.search(expr, data, options=funcs.options)


def outcome(run: Callable[[], Any]) -> tuple[str, str]:
    """A result or the class of the error, compared strictly (repr tells 1 from 1.0 and True)."""
    try:
        return "ok", repr(run())
    except Exception as exc:  # noqa: BLE001 - both sides must fail the same way, whatever it is
        return "error", type(exc).__name__


DATA = {
    "body": {
        "a": {"b": {"c": 1, "l": [1, 2, 3]}, "s": "text", "z": 0, "e": "", "n": None},
        "items": [{"sku": "x", "q": 2}, {"sku": "y", "q": 0}],
        "tags": ["a", "b"],
    },
    "headers": {"h": "v"},
}
EQUIVALENCE = [
    "body",
    "body.a.b.c",
    "body.a.s.x",
    "body.a.b.l.x",
    "body.missing.deeper.still",
    "body.a.b.c.d.e",
    '`{"k": [1]}`',
    "'raw'",
    "@",
    "body.a | b.c",
    "body.items[0].sku",
    "body.items[].sku",
    "body.items[?q > `0`].sku",
    "[body.a.s, headers.h]",
    "['lit', body.a.s]",
    "{x: body.a.s, y: body.a.b.c}",
    "body.nothing.[a, b]",
    "body.nothing.{a: a}",
    "body.a.n || body.a.e || 'fb'",
    "body.a.z || 'fb'",
    "`0.0` || 'fb'",
    "`{}` || `[]` || '' || `false` || 'fb'",
    "body.a.b.l && `{}` && 'never'",
    "!`0.0`",
    "!`[]`",
    "body.a.s && body.a.b.c",
    "body.a.e && 'never'",
    "!body.a.z",
    "!body.a.e",
    "!body.a.s",
    "body.a.b.c == `1`",
    "length(body.tags)",
    "join('-', body.tags)",
    "join('-', ['x', body.a.s])",
    "join(body.a.s, body.tags)",
    "sort_by(body.items, &q)[0].sku",
    "max(body.items[].q)",
    "lower(body.a.s)",
    "contains_any(body.a.s, body.tags)",
    "contains_any(body.a.s, ['text', 'other'])",
    'contains_any(body.a.s, `["TEXT"]`)',
    'contains_any(body.a.n, `["text"]`)',
    "contains_any(body.a.s, `[]`)",
    "coalesce(body.a.n, body.a.e, body.a.s)",
    "concat(body.a.s, '-', body.a.b.c, '-', body.a.n)",
    "to_string(body.a.b.l)",
    "*.h",
    "body.a.b.l[-1]",
    "body.a.b.l[1:]",
    "now()",
    "lower('ABC')",
]


@pytest.mark.parametrize("expr", EQUIVALENCE, ids=EQUIVALENCE)
def test_compiled_expression_matches_jmespath(funcs: TielineFunctions, expr: str) -> None:
    """The closure compiler gives exactly what jmespath's own interpreter gives."""
    compiled = compile_ast(jmespath.compile(expr).parsed, funcs)
    assert outcome(lambda: compiled(DATA)) == outcome(lambda: search(funcs, expr, DATA))


TYPE_ERRORS = [
    "join('-', body.items)",
    "join(`1`, body.tags)",
    "join('-', ['x', body.a.b.c])",
    "contains_any(body.a.s, `[1, 2]`)",
    "contains_any(body.a.b.c, body.tags)",
    "lower(body.a.b.c)",
    "length(body.a.b.c)",
]


@pytest.mark.parametrize("expr", TYPE_ERRORS, ids=TYPE_ERRORS)
def test_type_errors_are_jmespaths_own(funcs: TielineFunctions, expr: str) -> None:
    """A wrong argument type, literal or not, raises jmespath's error when called, not before."""
    compiled = compile_ast(jmespath.compile(expr).parsed, funcs)
    with pytest.raises(jexc.JMESPathTypeError) as ours:
        compiled(DATA)
    with pytest.raises(jexc.JMESPathTypeError) as theirs:
        search(funcs, expr, DATA)
    assert str(ours.value) == str(theirs.value)


# --- Random expressions over random documents -------------------------------------------

KEYS = ["a", "b", "c", "x-y"]
SCALARS = st.none() | st.booleans() | st.sampled_from([0, 1, -2, 2.5, "", "a", "B c", "fraud"])
SCALARS |= st.sampled_from([[], {}, 0.0])
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner),
    max_leaves=10,
)
DOCS = st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=4)
FALSY = ["`null`", "`false`", "''", "`[]`", "`{}`", "`0`", "`0.0`"]  # and 0, which is not
LITERALS = ["`1`", "`true`", "'a'", "'-'", '`["a", "fraud"]`', '`{"a": 1}`', "['a', 'b']"]
ONE_ARG = ["length", "lower", "upper", "trim", "to_string", "type", "keys", "values", "abs"]
ONE_ARG += ["hash_percent", "to_number", "not_null", "reverse", "sort", "max", "sum"]
TWO_ARGS = ["join", "contains_any", "matched_keywords", "coalesce", "concat", "default", "get"]
TWO_ARGS += ["split", "contains", "starts_with", "not_null", "merge"]


def _name(key: str) -> str:
    return f'"{key}"' if "-" in key else key


def expressions(roots: list[str]) -> st.SearchStrategy[str]:
    """JMESPath source texts: paths from ``roots``, literals, operators, calls, projections."""
    field = st.sampled_from(KEYS).map(_name)
    path = st.tuples(st.sampled_from(roots).map(_name), st.lists(field, max_size=2)).map(
        lambda t: ".".join([t[0], *t[1]])
    )
    index = st.tuples(path, st.sampled_from(["[0]", "[-1]", "[1:]", "[*].a", "[]", "[?a]"]))
    atoms = st.one_of(
        path,
        path,
        st.sampled_from(LITERALS),
        st.sampled_from(FALSY),
        st.sampled_from(["@", "*.a", "*"]),
        index.map("".join),
    )

    def compose(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        pair = st.tuples(inner, inner)
        return (
            pair.map(lambda t: f"({t[0]}) || ({t[1]})")
            | pair.map(lambda t: f"({t[0]}) && ({t[1]})")
            | pair.map(lambda t: f"({t[0]}) == ({t[1]})")
            | pair.map(lambda t: f"({t[0]}) | ({t[1]})")
            | inner.map(lambda x: f"!({x})")
            | st.lists(inner, min_size=1, max_size=3).map(lambda xs: f"[{', '.join(xs)}]")
            | st.lists(inner, min_size=1, max_size=2).map(
                lambda xs: "{" + ", ".join(f"k{i}: {x}" for i, x in enumerate(xs)) + "}"
            )
            | st.tuples(st.sampled_from(ONE_ARG), inner).map(lambda t: f"{t[0]}({t[1]})")
            | st.tuples(st.sampled_from(TWO_ARGS), inner, inner).map(
                lambda t: f"{t[0]}({t[1]}, {t[2]})"
            )
        )

    return st.recursive(atoms, compose, max_leaves=6)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=DOCS, expr=expressions(KEYS))
def test_random_expressions_match_jmespath(funcs: TielineFunctions, doc: Any, expr: str) -> None:
    """On random documents, every expression gives jmespath's result or jmespath's error."""
    compiled = compile_ast(jmespath.compile(expr).parsed, funcs)
    assert outcome(lambda: compiled(doc)) == outcome(lambda: search(funcs, expr, doc))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    doc=DOCS,
    vars_=st.dictionaries(st.sampled_from(KEYS), VALUES, min_size=1, max_size=3),
    expr=expressions([*KEYS, "vars", "vars"]),
)
def test_folding_vars_matches_searching_them(
    funcs: TielineFunctions, doc: dict[str, Any], vars_: dict[str, Any], expr: str
) -> None:
    """Folded vars give what a document holding them gives; if still read, reads_root says so."""
    ast = jmespath.compile(expr).parsed
    before = copy.deepcopy(ast)
    folded = fold_root(ast, "vars", vars_)
    assert ast == before  # the parsed tree is not changed
    seen = {**doc, "vars": vars_} if reads_root(folded, "vars") else doc
    compiled = compile_ast(folded, funcs)
    expected = outcome(lambda: search(funcs, expr, {**doc, "vars": vars_}))
    assert outcome(lambda: compiled(seen)) == expected


FOLDS = [
    ("vars.k.a", False),
    ("vars", False),
    ("vars.k[0]", False),
    ("contains_any(body, vars.k)", False),
    ("body.vars", False),
    ("body[*].vars", False),
    ("sort_by(body, &vars)", False),
    ("@", True),
    ("keys(@)", True),
    ("*.k", True),
    ("[body, @][1].vars", True),
]


@pytest.mark.parametrize(("expr", "reads"), FOLDS, ids=[f[0] for f in FOLDS])
def test_reads_root_after_folding(expr: str, reads: bool) -> None:
    """Only '@', '*' and the like still need 'vars' in the document once folded."""
    folded = fold_root(jmespath.compile(expr).parsed, "vars", {"k": {"a": 1}})
    assert reads_root(folded, "vars") is reads
