"""The HTTP server: webhook ingress, direct flow entry, health, and the management API."""
