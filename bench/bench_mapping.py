"""Throughput of one 8-field mapping: prints applications per second on one core.

Run: .venv/bin/python bench/bench_mapping.py [N]   (3 runs; appends to bench/RESULTS.md)
"""

from __future__ import annotations

import sys
import time

from bus.functions import TielineFunctions
from bus.mapping import compile_mapping

SPEC = {
    "vars": {"risk_keywords": ["fraud", "chargeback", "lawyer"]},
    "fields": {
        "subject": "join(' ', ['Return from', body.caller.name])",
        "requester.name": "body.caller.name",
        "requester.email": {"expr": "body.caller.email", "default": "unknown@example.com"},
        "ticket.priority": {"const": "normal"},
        "ticket.channel": "headers.source",
        "customer.tier": {"expr": "body.customer.tier", "default": "standard"},
        "comment": {"template": "Call {body.call_id} about order {body.order_id || 'unknown'}"},
        "escalate": "contains_any(body.transcript, vars.risk_keywords)",
    },
}

VIEW = {
    "body": {
        "call_id": "c-123",
        "order_id": "o-987",
        "caller": {"name": "Ada Lovelace", "email": "ada@example.com", "phone": "415 555 2671"},
        "customer": {"tier": None},
        "transcript": "I want to return the blender, no chargeback please",
    },
    "headers": {"source": "callcenter", "correlation_id": "x"},
    "context": {},
}


def main(n: int = 200_000) -> float:
    mapping = compile_mapping("bench", SPEC, TielineFunctions(clock=lambda: 0.0))
    apply = mapping.apply
    for _ in range(1000):  # warm the regex and method caches
        apply(VIEW)
    start = time.perf_counter()
    for _ in range(n):
        apply(VIEW)
    elapsed = time.perf_counter() - start
    rate = n / elapsed
    print(f"8-field mapping: {n} applications in {elapsed:.2f}s = {rate:,.0f} ops/s")
    return rate


if __name__ == "__main__":
    import common  # bench/common.py: RESULTS.md writer

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    rates = [main(n) for _ in range(3)]
    common.append_results(
        "Mapping engine alone: one 8-field mapping", [common.invocation()],
        f"{n} applications × 3 runs, one core: median {common.median(rates):,.0f} ops/s "
        f"(runs: {', '.join(f'{r:,.0f}' for r in rates)}).")
