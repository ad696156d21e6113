"""String templates of mappings: 'Call {body.call_id} about {body.order}'.

A template splits into literal text and JMESPath placeholders; ``{{`` and ``}}`` escape
braces; braces may nest inside a placeholder (a multiselect) and quoted text is skipped.
``compile_template`` joins the parts back per message; the caller compiles the placeholders
(``bus/mapping.py``), so this module knows no JMESPath.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from itertools import repeat
from typing import Any

from bus.functions import to_text

Evaluator = Callable[[Any], Any]


class TemplateError(ValueError):
    """The template text is malformed; the message says where (column)."""


_QUOTES = {"'", '"', "`"}


def split_template(text: str) -> tuple[list[str], list[str]]:
    """Split 'a {x} b' into literals ['a ', ' b'] and expressions ['x']; {{ and }} escape."""
    literals, exprs, buf, i, n = [], [], [], 0, len(text)
    while i < n:
        ch = text[i]
        if ch in "{}" and text[i + 1 : i + 2] == ch:
            buf.append(ch)
            i += 2
        elif ch == "}":
            raise TemplateError(
                f"unmatched '}}' at column {i + 1}; write '}}}}' for a literal brace"
            )
        elif ch == "{":
            end = _placeholder_end(text, i)
            expr = text[i + 1 : end].strip()
            if not expr:
                raise TemplateError(f"empty placeholder '{{}}' at column {i + 1}")
            literals.append("".join(buf))
            exprs.append(expr)
            buf, i = [], end + 1
        else:
            buf.append(ch)
            i += 1
    literals.append("".join(buf))
    return literals, exprs


def compile_template(text: str, compile_expr: Callable[[str], Evaluator]) -> Evaluator:
    """A callable rendering ``text`` for a document; ``TemplateError`` if it is malformed."""
    literals, exprs = split_template(text)
    fns = [compile_expr(e) for e in exprs]
    head = literals[0]
    if not fns:
        return partial(next, repeat(head))  # a constant; see bus.compiler.constant
    pairs = tuple(zip(fns, literals[1:], strict=True))

    def render(view: Any) -> str:
        out = head
        for fn, tail in pairs:
            value = fn(view)
            out += (value if type(value) is str else to_text(value)) + tail
        return out

    return render


def _placeholder_end(text: str, start: int) -> int:
    # Braces may nest inside an expression ({a: b} multiselect); skip quoted text.
    depth, i, quote = 0, start, None
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = None
        elif ch in _QUOTES:
            quote = ch
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise TemplateError(f"placeholder opened at column {start + 1} is never closed with '}}'")
