"""Throughput of one 8-field mapping: applications per second on one core.

Run: .venv/bin/python bench/bench_mapping.py [N] [--runs R]   (appends to bench/RESULTS.md)

Each run applies the compiled mapping N times in this one thread and reports two rates: by
wall time, and by the CPU time of this process (``time.process_time``), which is what "per
core" means and is far less disturbed by other work on a shared machine. The figure is the
median over the runs. The output of the mapping is checked once before timing.
"""

from __future__ import annotations

import argparse
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

EXPECTED = {
    "subject": "Return from Ada Lovelace",
    "requester": {"name": "Ada Lovelace", "email": "ada@example.com"},
    "ticket": {"priority": "normal", "channel": "callcenter"},
    "customer": {"tier": "standard"},
    "comment": "Call c-123 about order o-987",
    "escalate": True,
}


def measure(n: int = 200_000) -> tuple[float, float]:
    """One run: (applications per wall second, applications per CPU second)."""
    mapping = compile_mapping("bench", SPEC, TielineFunctions(clock=lambda: 0.0))
    apply = mapping.apply
    got = apply(VIEW)
    if got != EXPECTED:
        raise SystemExit(f"the bench mapping gave {got!r}, expected {EXPECTED!r}")
    for _ in range(1000):  # warm the regex and method caches
        apply(VIEW)
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(n):
        apply(VIEW)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(
        f"8-field mapping: {n} applications in {wall:.2f}s = {n / wall:,.0f} ops/s "
        f"(CPU {cpu:.2f}s = {n / cpu:,.0f} ops/s)"
    )
    return n / wall, n / cpu


if __name__ == "__main__":
    import common  # bench/common.py: RESULTS.md writer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", nargs="?", type=int, default=200_000, help="applications per run")
    parser.add_argument("--runs", type=int, default=5, help="runs; the median is reported")
    args = parser.parse_args()
    runs = [measure(args.n) for _ in range(args.runs)]
    wall, cpu = [r[0] for r in runs], [r[1] for r in runs]
    common.append_results(
        "Mapping engine alone: one 8-field mapping",
        [common.invocation()],
        f"{args.n} applications × {args.runs} runs, one core: median {common.median(cpu):,.0f} "
        f"ops/s by CPU time (runs: {', '.join(f'{r:,.0f}' for r in cpu)}); "
        f"by wall time median {common.median(wall):,.0f} ops/s "
        f"(runs: {', '.join(f'{r:,.0f}' for r in wall)}).",
    )
