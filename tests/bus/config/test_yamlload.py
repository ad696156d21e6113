"""YAML with marks: values, line/column per path, and the YAML 1.1 traps rejected."""

from __future__ import annotations

import pytest

from bus.config.model import Location
from bus.config.yamlload import format_path, load_yaml
from bus.errors import ConfigError


def issues_of(project, text: str) -> list[str]:
    project({"f.yaml": text})
    with pytest.raises(ConfigError) as caught:
        load_yaml("f.yaml")
    return [str(i) for i in caught.value.issues]


def test_values_and_marks(project):
    """Plain data comes back, and every path (key or item) knows its 1-based line and column."""
    project({"f.yaml": "a:\n  b: [1, 'x']\n  c: {d: true}\n"})
    data, marks = load_yaml("f.yaml")
    assert data == {"a": {"b": [1, "x"], "c": {"d": True}}}
    assert marks.loc(("a", "b", 1)) == Location("f.yaml", 2, 10)
    assert marks.loc(("a", "c", "d")) == Location("f.yaml", 3, 10)
    assert marks.key_loc(("a", "c")) == Location("f.yaml", 3, 3)
    assert marks.loc(("a", "b", 7, "zz")) == Location("f.yaml", 2, 6)  # nearest ancestor


@pytest.mark.parametrize(("text", "expected"), [
    ("a: 1\nb: 2\na: 3\n",
     ["f.yaml:3:1: duplicate key 'a' (first defined at line 1); remove or rename one"]),
    ("on: yes\n",
     ["f.yaml:1:1: unquoted 'on' is read as a boolean by YAML 1.1; quote it or write true/false",
      "f.yaml:1:5: on: unquoted 'yes' is read as a boolean by YAML 1.1; quote it or write true/false"]),
    ("x: [no, Off]\n",
     ["f.yaml:1:5: x[0]: unquoted 'no' is read as a boolean by YAML 1.1; quote it or write true/false",
      "f.yaml:1:9: x[1]: unquoted 'Off' is read as a boolean by YAML 1.1; quote it or write true/false"]),
    ("t: 1:30\n",
     ["f.yaml:1:4: t: unquoted '1:30' is read as the number 90 by YAML 1.1; quote it, or write 90"]),
    ("d: 2024-01-01\n",
     ["f.yaml:1:4: d: unquoted '2024-01-01' is read as a date by YAML 1.1; quote it"]),
    ("1: x\n", ["f.yaml:1:1: mapping key '1' is not a string; quote it"]),
    ("a: !!python/name:os.system x\n",
     ["f.yaml:1:4: a: unsupported YAML tag 'tag:yaml.org,2002:python/name:os.system'; remove it"]),
    ("a: [1, 2\nb: 3\n",
     ["f.yaml:2:2: YAML syntax error: while parsing a flow sequence expected ',' or ']', but got ':'"]),
], ids=["duplicate-key", "on-yes", "no-and-Off", "sexagesimal", "date", "int-key", "python-tag",
        "syntax"])
def test_rejected(project, text, expected):
    """What PyYAML accepts silently is an issue at the exact place, every one of them."""
    assert issues_of(project, text) == expected


def test_quoted_and_yaml12_values_are_fine(project):
    """Quoted 'on', true/false in any YAML 1.2 case, null and plain numbers load as written."""
    project({"f.yaml": "a: 'on'\nb: \"yes\"\nc: True\nd: FALSE\ne: ~\nf: 0.5\ng: 10\n"})
    data, _ = load_yaml("f.yaml")
    assert data == {"a": "on", "b": "yes", "c": True, "d": False, "e": None, "f": 0.5, "g": 10}


def test_merge_keys(project):
    """'<<: *anchor' merges a mapping; explicit keys win and keep their own line."""
    project({"f.yaml": "base: &b {x: 1, y: 2}\nuse:\n  <<: *b\n  y: 3\n"})
    data, marks = load_yaml("f.yaml")
    assert data["use"] == {"x": 1, "y": 3}
    assert marks.loc(("use", "y")).line == 4


@pytest.mark.parametrize(("path", "text"), [
    (("flows", "returns", "steps", 2, "to"), "flows.returns.steps[2].to"),
    (("fields", "requester.phone", "expr"), "fields['requester.phone'].expr"),
    ((), ""),
], ids=["dotted", "odd-key", "root"])
def test_format_path(path, text):
    """YAML paths print as dotted names with [i] indexes; odd keys are quoted."""
    assert format_path(path) == text
