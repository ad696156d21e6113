"""Safe XML parsing for vendor payloads: no DTDs, no entity expansion, no external references.

:func:`parse_xml` turns a document into plain data for mappings, xmltodict style:
``<a x="1"><b>t</b><b>u</b></a>`` → ``{"a": {"@x": "1", "b": ["t", "u"]}}``. An element with
neither attributes nor children becomes its text (or None); mixed text is under ``"#text"``.
"""

from __future__ import annotations

from typing import Any
from xml.etree.ElementTree import Element, ParseError

import defusedxml
from defusedxml.ElementTree import fromstring

from bus.errors import PayloadError

MAX_DEPTH = 64  # deeper documents are refused rather than recursed into


class XmlError(PayloadError):
    """The body is not acceptable XML (malformed, a DTD or entities, too deep)."""


def parse_xml(data: bytes, *, strip_namespaces: bool = False) -> dict[str, Any]:
    """Parse ``data`` into a dict keyed by the root tag; XmlError says why it was refused."""
    try:
        root = fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except defusedxml.DTDForbidden:
        raise XmlError("XML body refused: it has a DTD (<!DOCTYPE>); send the document "
                       "without one") from None
    except defusedxml.EntitiesForbidden:
        raise XmlError("XML body refused: it declares entities (entity expansion is not "
                       "allowed); send the document without <!ENTITY> declarations") from None
    except defusedxml.ExternalReferenceForbidden:
        raise XmlError("XML body refused: it references an external resource") from None
    except defusedxml.DefusedXmlException as exc:
        raise XmlError(f"XML body refused: {exc}") from None
    except ParseError as exc:
        line, column = exc.position
        raise XmlError(f"XML body is malformed at line {line}, column {column + 1}: {exc}") from None
    name = _name(root.tag, strip_namespaces)
    return {name: _convert(root, strip_namespaces, 1)}


def _convert(element: Element, strip: bool, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise XmlError(f"XML body refused: nested deeper than {MAX_DEPTH} elements")
    text = (element.text or "").strip()
    if not element.attrib and len(element) == 0:
        return text or None
    out: dict[str, Any] = {"@" + _name(k, strip): v for k, v in element.attrib.items()}
    lists: set[str] = set()  # keys already turned into lists by a repeated tag
    for child in element:
        key, value = _name(child.tag, strip), _convert(child, strip, depth + 1)
        if key not in out:
            out[key] = value
        elif key in lists:
            out[key].append(value)
        else:
            out[key] = [out[key], value]
            lists.add(key)
    if text:
        out["#text"] = text
    return out


def _name(tag: str, strip: bool) -> str:
    return tag.rsplit("}", 1)[-1] if strip and tag.startswith("{") else tag
