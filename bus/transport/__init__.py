"""Transports: the durable queue, ledger and dead-letter store behind one interface."""
