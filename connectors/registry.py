"""Connector types by name: discovered from the ``tieline.connectors`` entry points.

A type that cannot be loaded (import error, not a Connector, invalid ``config_schema``) is
recorded in ``failures`` and logged; the other types keep working. Tests build isolated
registries with ``ConnectorRegistry()`` + ``register(cls)``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from importlib.metadata import EntryPoint, entry_points
from types import MappingProxyType
from typing import Any

import jsonschema
import structlog

from bus.errors import TielineError
from connectors.base import Connector, ConnectorDeps

log = structlog.get_logger(__name__)

GROUP = "tieline.connectors"


class ConnectorRegistry:
    """type_name → Connector subclass, with the settings validator of each type."""

    def __init__(self) -> None:
        self._types: dict[str, type[Connector]] = {}
        self._validators: dict[str, jsonschema.protocols.Validator] = {}
        self.failures: dict[str, str] = {}  # type name → "ImportError: ..."

    @classmethod
    def from_entry_points(
        cls, group: str = GROUP, *, entry_points: Iterable[EntryPoint] | None = None
    ) -> ConnectorRegistry:
        """Load every entry point of ``group`` (or the given ones); failures are kept, not raised."""
        registry = cls()
        eps = entry_points if entry_points is not None else _installed(group)
        for ep in eps:
            try:
                registry.register(ep.load(), name=ep.name)
            except Exception as exc:  # noqa: BLE001 — a plugin's import may raise anything; it must not stop the others
                registry.failures[ep.name] = f"{type(exc).__name__}: {exc}"
                log.error("connector_type_failed", type=ep.name, entry_point=ep.value,
                          error=registry.failures[ep.name])
        return registry

    @property
    def types(self) -> Mapping[str, type[Connector]]:
        return MappingProxyType(self._types)

    def register(self, cls: type[Connector], name: str | None = None) -> type[Connector]:
        """Add a type under ``name`` (default ``cls.type_name``); raise TielineError if it is unfit."""
        if not (isinstance(cls, type) and issubclass(cls, Connector)):
            raise TielineError(f"{cls!r} is not a subclass of connectors.base.Connector")
        name = name or cls.type_name
        if not name:
            raise TielineError(f"{cls.__qualname__} has no type_name; set type_name = '...' on the class")
        if cls.type_name and cls.type_name != name:
            raise TielineError(
                f"{cls.__qualname__} has type_name {cls.type_name!r} but is registered as {name!r} "
                "(the entry point name); make them equal"
            )
        known = self._types.get(name)
        if known is not None and known is not cls:
            raise TielineError(
                f"type {name!r} is already registered by {known.__module__}.{known.__qualname__}; "
                f"{cls.__module__}.{cls.__qualname__} must use another name"
            )
        vcls = jsonschema.validators.validator_for(cls.config_schema)
        if not _shipped(cls):  # the shipped schemas are checked by tests: ~0.13 s of start-up
            try:
                vcls.check_schema(cls.config_schema)
            except jsonschema.SchemaError as exc:
                where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
                raise TielineError(
                    f"{cls.__qualname__}.config_schema is invalid at {where}: {exc.message}") from None
        self._types[name] = cls
        self._validators[name] = vcls(cls.config_schema)
        return cls

    def build(
        self, name: str, type_name: str, settings: Mapping[str, Any], deps: ConnectorDeps | None = None
    ) -> Connector:
        """Validate ``settings`` against the type's schema and construct connector ``name``."""
        cls = self._types.get(type_name)
        if cls is None:
            raise TielineError(self._unknown(name, type_name))
        errors = sorted(self._validators[type_name].iter_errors(settings), key=lambda e: list(e.absolute_path))
        if errors:
            lines = "; ".join(_describe(e, cls.secret_fields) for e in errors[:10])
            raise TielineError(
                f"connector {name!r} (type {type_name!r}) has invalid settings: "
                + _hide(lines, settings, cls.secret_fields)
            )
        try:
            return cls(name, settings, deps)
        except Exception as exc:  # noqa: BLE001 — re-raised with the connector named
            detail = _hide(f"{type(exc).__name__}: {exc}", settings, cls.secret_fields)
            raise TielineError(f"connector {name!r} (type {type_name!r}) could not be built: {detail}") from None

    def _unknown(self, name: str, type_name: str) -> str:
        if type_name in self.failures:
            return (
                f"connector {name!r}: type {type_name!r} failed to load ({self.failures[type_name]}); "
                "fix or reinstall the package that provides it"
            )
        near = difflib.get_close_matches(type_name, list(self._types), n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        return (
            f"connector {name!r}: unknown type {type_name!r}; {hint}"
            f"known types: {', '.join(sorted(self._types)) or '(none)'}"
        )


def _shipped(cls: type[Connector]) -> bool:
    """A connector type that ships in this package (``connectors.*``), not a plugin's."""
    return cls.__module__.partition(".")[0] == __name__.partition(".")[0]


def event_names(connector: Connector) -> set[str]:
    """The events an instance can emit: its ``event_names()`` if it has one, else its type's ``events``."""
    hook = getattr(connector, "event_names", None)
    return set(hook()) if callable(hook) else set(type(connector).events)


def _installed(group: str) -> list[EntryPoint]:
    """Installed entry points of ``group``, one per name+value (an editable install may list twice)."""
    seen: dict[tuple[str, str], EntryPoint] = {}
    for ep in entry_points(group=group):
        seen.setdefault((ep.name, ep.value), ep)
    return list(seen.values())


def _describe(err: jsonschema.ValidationError, secret_fields: frozenset[str]) -> str:
    """One settings error as ``settings.<path>: <message>``, with secret values hidden."""
    path = "settings" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path)
    message = err.message
    if not err.absolute_path or str(err.absolute_path[0]) in secret_fields:  # the value may be a secret
        message = message.replace(repr(err.instance), "<hidden>")
    expected = err.schema.get("description") if isinstance(err.schema, Mapping) else None
    if expected and err.validator in ("oneOf", "anyOf"):
        message += f" (expected {expected})"
    return f"{path}: {message}"


def _hide(text: str, settings: Mapping[str, Any], secret_fields: frozenset[str]) -> str:
    """``text`` with the string values of secret settings replaced by ``***``."""
    stack = [settings[f] for f in secret_fields if f in settings]
    while stack:
        value = stack.pop()
        if isinstance(value, Mapping):
            stack.extend(value.values())
        elif isinstance(value, str) and len(value) >= 4:
            text = text.replace(value, "***")
    return text
