"""Field-level access: keep only the allow-listed dotted paths of a response body.

``customer.name`` keeps ``{"customer": {"name": ...}}``; lists are walked element by element, so
the same path works on a list of tickets. A path that meets a scalar where it expects an object
drops it (keeping it would leak the whole value); ``customer`` keeps the whole sub-object.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

_ALL: dict[str, Any] = {}  # marker: keep the whole value


class Projection:
    """A compiled allow-list; call it on a body to get the projected copy."""

    def __init__(self, paths: Iterable[str]):
        self.tree: dict[str, Any] = {}
        for path in paths:
            parts = path.split(".")
            if not all(parts):
                raise ValueError(f"fields: {path!r} is not a dotted path like 'customer.name'")
            node = self.tree
            for part in parts[:-1]:
                child = node.setdefault(part, {})
                if child is _ALL:  # a shorter path already keeps everything below
                    break
                node = child
            else:
                node[parts[-1]] = _ALL

    def __call__(self, data: Any) -> Any:
        return _project(data, self.tree)


def _project(data: Any, tree: dict[str, Any]) -> Any:
    if tree is _ALL:
        return data
    if isinstance(data, list):
        kept = (_project(item, tree) for item in data)
        return [item for item in kept if item is not _DROP]
    if isinstance(data, dict):
        out = {}
        for key, sub in tree.items():
            if key in data:
                value = _project(data[key], sub)
                if value is not _DROP:
                    out[key] = value
        return out
    return _DROP


_DROP = object()  # a scalar where an object was expected


def project(data: Any, allowed_fields: Iterable[str] | None) -> Any:
    """Keep only ``allowed_fields`` of ``data`` (a dict or a list of dicts); None keeps all."""
    if allowed_fields is None:
        return data
    result = Projection(allowed_fields)(data)
    return None if result is _DROP else result
