"""The connector registry: discovery, isolation of broken types, building with checked settings."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest
from structlog.testing import capture_logs

from bus.errors import TielineError
from connectors.base import Connector
from connectors.http import HttpConnector
from connectors.registry import GROUP, ConnectorRegistry, event_names
from connectors.webhook import WebhookConnector


class BadSchema(Connector):
    type_name = "bad_schema"
    config_schema = {"type": "objekt"}


class OtherHttp(Connector):
    type_name = "http"


class Exploding(Connector):
    type_name = "exploding"
    secret_fields = frozenset({"password"})
    config_schema = {"type": "object", "properties": {"password": {"type": "string"}}}

    def __init__(self, name, settings, deps=None):
        super().__init__(name, settings, deps)
        raise RuntimeError(f"cannot log in with {settings['password']}")


def ep(name: str, value: str) -> EntryPoint:
    return EntryPoint(name=name, value=value, group=GROUP)


def test_installed_entry_points_are_discovered():
    """The built-in http and webhook types come from the installed entry points."""
    registry = ConnectorRegistry.from_entry_points()
    assert registry.types["http"] is HttpConnector
    assert registry.types["webhook"] is WebhookConnector
    assert registry.failures == {}


@pytest.mark.parametrize("type_name", sorted(ConnectorRegistry.from_entry_points().types))
def test_shipped_config_schemas_are_valid_json_schema(type_name):
    """The registry skips the metaschema check for shipped types at start-up; this is it."""
    import jsonschema

    schema = ConnectorRegistry.from_entry_points().types[type_name].config_schema
    jsonschema.validators.validator_for(schema).check_schema(schema)


@pytest.mark.parametrize(
    ("name", "value", "failure"),
    [
        ("broken", "no_such_module:Thing", "ModuleNotFoundError: No module named 'no_such_module'"),
        ("broken", "connectors.http:NoSuchClass", "AttributeError"),
        ("broken", "builtins:dict", "is not a subclass of connectors.base.Connector"),
        ("bad_schema", "tests.connectors.test_registry:BadSchema", "BadSchema.config_schema is invalid at type"),
        ("broken", "connectors.webhook:WebhookConnector", "registered as 'broken' (the entry point name)"),
    ],
    ids=["missing-module", "missing-class", "not-a-connector", "invalid-schema", "name-mismatch"],
)
def test_broken_type_is_recorded_and_others_keep_working(name, value, failure):
    """A type that cannot load is kept in failures and logged; the other types still register."""
    with capture_logs() as logs:
        registry = ConnectorRegistry.from_entry_points(
            entry_points=[ep(name, value), ep("http", "connectors.http:HttpConnector")]
        )
    assert list(registry.types) == ["http"]
    assert failure in registry.failures[name]
    assert logs[0]["event"] == "connector_type_failed" and logs[0]["type"] == name


def test_building_a_failed_type_says_why():
    """Asking for a type that failed to load repeats the load error, not 'unknown type'."""
    registry = ConnectorRegistry.from_entry_points(entry_points=[ep("crm_x", "no_such_module:Crm")])
    with pytest.raises(TielineError, match=r"connector 'crm': type 'crm_x' failed to load \(ModuleNotFoundError"):
        registry.build("crm", "crm_x", {})


def test_unknown_type_suggests_the_closest():
    """A misspelt type name gets a 'did you mean' and the list of known types."""
    registry = ConnectorRegistry()
    registry.register(HttpConnector)
    registry.register(WebhookConnector)
    with pytest.raises(TielineError, match=r"unknown type 'htp'; did you mean 'http'\? known types: http, webhook"):
        registry.build("crm", "htp", {})


def test_register_refuses_a_second_class_under_one_name():
    """Two classes cannot share a type name in one registry; re-registering the same class is fine."""
    registry = ConnectorRegistry()
    registry.register(HttpConnector)
    registry.register(HttpConnector)
    with pytest.raises(TielineError, match="already registered by connectors.http.HttpConnector"):
        registry.register(OtherHttp)


def test_types_is_read_only():
    """The types mapping cannot be changed behind the registry's back."""
    with pytest.raises(TypeError):
        ConnectorRegistry().types["x"] = HttpConnector  # type: ignore[index]


def test_build_validates_and_constructs():
    """Valid settings build a connector with the given name."""
    registry = ConnectorRegistry()
    registry.register(HttpConnector)
    conn = registry.build("crm", "http", {"base_url": "https://crm.example.com", "timeout": 3})
    assert isinstance(conn, HttpConnector)
    assert (conn.name, conn.settings.timeout) == ("crm", 3.0)
    assert event_names(conn) == set()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({}, "settings: 'base_url' is a required property"),
        ({"base_url": "ftp://x"}, "settings.base_url: 'ftp://x' does not match '^https?://'"),
        ({"base_url": "https://x", "timeout": "10"}, "settings.timeout: '10' is not of type 'number'"),
        ({"base_url": "https://x", "tiemout": 1}, "'tiemout' was unexpected"),
        (
            {"base_url": "https://x", "auth": {"bearer": "tok-123456", "basic": {}}},
            "settings.auth: <hidden> is not valid under any of the given schemas (expected one of {bearer: TOKEN}",
        ),
    ],
    ids=["missing", "scheme", "type", "unknown-key", "auth-shape"],
)
def test_invalid_settings_name_connector_and_field(settings, message):
    """Settings that break the schema fail naming the connector and the field; secrets hidden."""
    registry = ConnectorRegistry()
    registry.register(HttpConnector)
    with pytest.raises(TielineError, match="connector 'crm' \\(type 'http'\\) has invalid settings") as info:
        registry.build("crm", "http", settings)
    assert message in str(info.value)
    assert "tok-123456" not in str(info.value)


def test_constructor_failure_names_connector_and_hides_secret():
    """A constructor that raises is reported with the connector name, the error, and no secret."""
    registry = ConnectorRegistry()
    registry.register(Exploding)
    with pytest.raises(TielineError) as info:
        registry.build("vault", "exploding", {"password": "hunter22"})
    text = str(info.value)
    assert "connector 'vault' (type 'exploding') could not be built: RuntimeError: cannot log in with ***" == text
