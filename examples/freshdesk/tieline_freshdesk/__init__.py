"""tieline-freshdesk: a ``freshdesk`` connector type for tieline (an example plugin)."""

from tieline_freshdesk.connector import FreshdeskConnector

__all__ = ["FreshdeskConnector"]
