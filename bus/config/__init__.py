"""Configuration: flows.yaml and mappings/*.yaml → a typed, validated :class:`Config`."""

from bus.config.model import (  # noqa: F401
    Config,
    ConnectorConfig,
    Flow,
    Location,
    RetryPolicy,
    Settings,
)
