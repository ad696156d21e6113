"""Canary routing: a deterministic share of a flow's messages goes to another flow instead.

One function, :func:`route_variants`, used wherever messages enter flows (ingress, topic
fan-out, sync API requests). A canary flow has the same ``from:`` as its primary but gets
messages only through it: the primary's ``when`` decides entry, the key's hash the variant.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

from jmespath.exceptions import JMESPathError

from bus.envelope import Envelope
from bus.errors import MappingError
from bus.flow import CompiledFlow
from bus.functions import to_text
from bus.mapping import Expression

VARIANT = "variant"  # header: canary | primary (only on flows with a canary)


def share(value: object) -> int:
    """0..99 from a key value: the same rule as the ``hash_percent`` mapping function."""
    digest = hashlib.sha256(to_text(value).encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100


def route_variants(
    flows: Mapping[str, CompiledFlow], envelopes: Sequence[Envelope]
) -> list[Envelope]:
    """The envelopes to store: canary targets dropped, each primary's assigned a variant."""
    out = []
    for env in envelopes:
        cf = flows.get(env.flow)
        if cf is None:
            out.append(env)
            continue
        primary = flows.get(cf.canary_of) if cf.canary_of else None
        if primary is not None and primary.flow.enabled:
            continue  # reached through its primary, never directly
        rule = cf.canary
        target = flows.get(rule.flow) if rule else None
        if rule is None or target is None or not target.flow.enabled:
            out.append(env)
        elif share(_key(rule.key, env)) < rule.percent:
            headers = {**env.headers, VARIANT: "canary"}
            out.append(env.evolve(flow=target.name, flow_version=target.version, headers=headers))
        else:
            out.append(env.evolve(headers={**env.headers, VARIANT: "primary"}))
    return out


def _key(expr: Expression, env: Envelope) -> object:
    try:
        return expr.search(env.view())
    except (MappingError, JMESPathError):
        return None  # a key that cannot be read hashes like a missing one: the same variant
