"""Connector contract, registry, built-in connectors and the test kit for connector authors."""
