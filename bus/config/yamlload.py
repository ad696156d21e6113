"""YAML → plain Python data, keeping the line and column of every node.

PyYAML's own constructor forgets where values came from and accepts things that bite
operators: a repeated key silently wins, and YAML 1.1 reads ``on``/``yes``/``n`` as booleans,
``1:30`` as 90 and ``2024-01-01`` as a date. We compose the node graph ourselves
(``yaml.compose``), build the values, record a mark per YAML path and report those traps as
:class:`ConfigIssue` s (all of them, not only the first).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from bus.config.model import Location
from bus.errors import ConfigError, ConfigIssue

YamlPath = tuple[str | int, ...]

_TAG = "tag:yaml.org,2002:"
_PLAIN_TAGS = {_TAG + t for t in ("str", "int", "float", "bool", "null")}
_TRUE_FALSE = {"true", "True", "TRUE", "false", "False", "FALSE"}
_OCTAL_11 = re.compile(r"[-+]?0[0-7_]+$")  # YAML 1.1 octal; YAML 1.2 writes 0o17
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*$")
# libyaml's parser when PyYAML was built with it: the same nodes and marks, ~5x faster to
# compose. It marks a plain scalar with style "" where the pure-Python one uses None.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def format_path(path: YamlPath) -> str:
    """``('flows', 'returns', 'steps', 2, 'to')`` → ``flows.returns.steps[2].to``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _NAME.match(part):
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out


@dataclass
class MarkIndex:
    """Where each value (and each mapping key) of one YAML file starts, by YAML path."""

    file: str
    values: dict[YamlPath, tuple[int, int]] = field(default_factory=dict)
    keys: dict[YamlPath, tuple[int, int]] = field(default_factory=dict)

    def loc(self, path: YamlPath) -> Location:
        """The value at ``path``, or its nearest ancestor that has a mark."""
        path = tuple(path)
        while path and path not in self.values:
            path = path[:-1]
        line, col = self.values.get(path, (1, 1))
        return Location(self.file, line, col)

    def key_loc(self, path: YamlPath) -> Location:
        """The key whose value is at ``path`` (where 'unknown key' should point)."""
        path = tuple(path)
        if path in self.keys:
            return Location(self.file, *self.keys[path])
        return self.loc(path)

    def issue(self, path: YamlPath, message: str, hint: str | None = None, *,
              at_key: bool = False, shown: YamlPath | None = None) -> ConfigIssue:
        """A ConfigIssue located at ``path``; ``shown`` is the path printed (default: ``path``)."""
        where = self.key_loc(path) if at_key else self.loc(path)
        text = format_path(path if shown is None else shown)
        return ConfigIssue(where.file, where.line, where.column, text, message, hint)


def load_yaml(path: str | Path) -> tuple[Any, MarkIndex]:
    """Plain data and marks for one YAML file; ConfigError lists every problem found."""
    issues: list[ConfigIssue] = []
    data, marks = read_yaml(path, issues)
    if issues:
        raise ConfigError(issues)
    return data, marks


def read_yaml(path: str | Path, issues: list[ConfigIssue],
              display: str | None = None) -> tuple[Any, MarkIndex]:
    """Like :func:`load_yaml` but appends problems to ``issues``; data is None if unreadable."""
    marks = MarkIndex(display or str(path))
    try:
        text = Path(path).read_text(encoding="utf-8")
        root = _compose(text)
    except (OSError, UnicodeDecodeError) as exc:
        issues.append(ConfigIssue(marks.file, 1, 1, "", f"cannot read the file: {exc}"))
        return None, marks
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        what = " ".join(p for p in (exc.context, exc.problem) if p) or "invalid YAML"
        issues.append(ConfigIssue(marks.file, line, col, "", f"YAML syntax error: {what}"))
        return None, marks
    if root is None:
        return None, marks
    return _Builder(marks, issues).build(root, ()), marks


def _compose(text: str) -> Node | None:
    try:
        return yaml.compose(text, Loader=_LOADER)
    except yaml.MarkedYAMLError:
        # Parse again with the pure-Python parser: its syntax errors say what it found
        # ("expected ',' or ']', but got ':'") where libyaml's only say what it missed.
        return yaml.compose(text, Loader=yaml.SafeLoader)


class _Builder:
    def __init__(self, marks: MarkIndex, issues: list[ConfigIssue]):
        self.marks = marks
        self.issues = issues
        self.scalars = SafeConstructor()
        self.active: set[int] = set()  # collection nodes being built: catches alias cycles

    def error(self, node: Node, path: YamlPath, message: str) -> None:
        m = node.start_mark
        self.issues.append(
            ConfigIssue(self.marks.file, m.line + 1, m.column + 1, format_path(path), message))

    def build(self, node: Node, path: YamlPath) -> Any:
        self.marks.values[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, ScalarNode):
            return self.scalar(node, path)
        if id(node) in self.active:
            self.error(node, path, "an alias refers to itself; YAML cycles are not supported")
            return None
        self.active.add(id(node))
        try:
            if isinstance(node, SequenceNode):
                self.check_tag(node, path, _TAG + "seq")
                return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
            self.check_tag(node, path, _TAG + "map")
            return self.mapping(node, path)
        finally:
            self.active.discard(id(node))

    def check_tag(self, node: Node, path: YamlPath, expected: str) -> None:
        if node.tag != expected:
            self.error(node, path, f"unsupported YAML tag {node.tag!r}; remove it")

    def scalar(self, node: ScalarNode, path: YamlPath) -> Any:
        if node.tag not in _PLAIN_TAGS and node.tag != _TAG + "timestamp":
            self.error(node, path, f"unsupported YAML tag {node.tag!r}; remove it")
            return node.value
        plain = not node.style and node.tag != _TAG + "str"
        text = node.value
        if plain and node.tag == _TAG + "timestamp":
            self.error(node, path, f"unquoted '{text}' is read as a date by YAML 1.1; quote it")
            return text
        value = self.scalars.construct_object(node)
        if plain and node.tag == _TAG + "bool" and text not in _TRUE_FALSE:
            self.error(node, path, f"unquoted '{text}' is read as a boolean by YAML 1.1; "
                                   "quote it or write true/false")
        elif plain and node.tag in (_TAG + "int", _TAG + "float") and (
                ":" in text or "_" in text or text.lower().startswith(("0b", "-0b", "+0b"))
                or (node.tag == _TAG + "int" and _OCTAL_11.match(text) and text.strip("+-0"))):
            self.error(node, path, f"unquoted '{text}' is read as the number {value} by "
                                   f"YAML 1.1; quote it, or write {value}")
        return value

    def mapping(self, node: MappingNode, path: YamlPath) -> dict[str, Any]:
        out: dict[str, Any] = {}
        own_mark = self.marks.values[path]
        for key_node, value_node in node.value:  # '<<: *anchor' first: explicit keys win
            if key_node.tag == _TAG + "merge":
                sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
                for source in sources:
                    if not isinstance(source, MappingNode):
                        self.error(source, path, "'<<' merges a mapping or a list of mappings")
                        continue
                    for key, value in self.build(source, path).items():
                        out.setdefault(key, value)
        self.marks.values[path] = own_mark
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _TAG + "merge":
                continue
            key = self.key(key_node, path)
            if key is None:
                continue
            line = key_node.start_mark.line + 1
            if key in first_line:
                self.error(key_node, path, f"duplicate key '{key}' (first defined at line "
                                           f"{first_line[key]}); remove or rename one")
                continue
            first_line[key] = line
            self.marks.keys[(*path, key)] = (line, key_node.start_mark.column + 1)
            out[key] = self.build(value_node, (*path, key))
        return out

    def key(self, node: Node, path: YamlPath) -> str | None:
        if not isinstance(node, ScalarNode):
            self.error(node, path, "mapping keys must be plain strings, not lists or mappings")
            return None
        if not node.style and node.tag == _TAG + "bool" and node.value not in _TRUE_FALSE:
            self.error(node, path, f"unquoted '{node.value}' is read as a boolean by YAML 1.1; "
                                   "quote it or write true/false")
            return node.value
        if node.tag != _TAG + "str":
            self.error(node, path, f"mapping key '{node.value}' is not a string; quote it")
            return node.value
        return node.value
