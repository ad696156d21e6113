"""Safe XML: plain data out, DTDs, entities and external references refused."""

from __future__ import annotations

import pytest

from bus.errors import PayloadError
from bus.security.xmlsafe import MAX_DEPTH, XmlError, parse_xml


def test_parse_to_plain_data() -> None:
    """Attributes get '@', repeated tags become lists, leaf text is the value."""
    doc = b'<order id="7"><item>a</item><item>b</item><note/><c>x<d>y</d></c></order>'
    assert parse_xml(doc) == {"order": {"@id": "7", "item": ["a", "b"], "note": None,
                                        "c": {"d": "y", "#text": "x"}}}


def test_three_repeats_stay_one_list() -> None:
    """A tag repeated three times is one flat list."""
    assert parse_xml(b"<r><i>1</i><i>2</i><i>3</i></r>") == {"r": {"i": ["1", "2", "3"]}}


def test_namespaces_kept_or_stripped() -> None:
    """Namespaced tags keep Clark notation unless strip_namespaces is asked for."""
    doc = b'<a:r xmlns:a="urn:x"><a:v>1</a:v></a:r>'
    assert parse_xml(doc) == {"{urn:x}r": {"{urn:x}v": "1"}}
    assert parse_xml(doc, strip_namespaces=True) == {"r": {"v": "1"}}


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]><lolz>&lol3;</lolz>"""
XXE = b"""<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>"""
EXTERNAL_DTD = b"""<?xml version="1.0"?><!DOCTYPE r SYSTEM "http://example.com/r.dtd"><r/>"""


@pytest.mark.parametrize(("doc", "message"), [
    (BILLION_LAUGHS, "DTD"),
    (XXE, "DTD"),
    (EXTERNAL_DTD, "DTD"),
    (b"<r><unclosed></r>", "malformed at line 1"),
    (b"", "malformed"),
    (b"<r>" * (MAX_DEPTH + 1) + b"</r>" * (MAX_DEPTH + 1), "nested deeper"),
], ids=["billion-laughs", "external-entity", "external-dtd", "mismatched-tag", "empty", "too-deep"])
def test_dangerous_or_broken_xml_is_refused(doc: bytes, message: str) -> None:
    """Each attack or malformation is an XmlError (a PayloadError → 400) saying why."""
    with pytest.raises(XmlError, match=message) as info:
        parse_xml(doc)
    assert isinstance(info.value, PayloadError) and info.value.status == 400
