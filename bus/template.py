"""String templates of mappings: 'Call {body.call_id} about {body.order}'.

Only the parsing lives here (pure text work): a template splits into literal text and
JMESPath placeholders; ``{{`` and ``}}`` escape braces; braces may nest inside a placeholder
(a multiselect) and quoted text is skipped. ``bus/mapping.py`` compiles the placeholders.
"""

from __future__ import annotations


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
    raise TemplateError(
        f"placeholder opened at column {start + 1} is never closed with '}}'"
    )
