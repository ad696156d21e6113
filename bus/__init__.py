"""tieline's engine: config, mapping, flow runtime, transports, ledger, HTTP server."""
