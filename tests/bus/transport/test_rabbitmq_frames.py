"""The direct basic.publish encoder writes exactly the bytes pamqp (what aiormq uses) writes."""

from __future__ import annotations

import pytest
from pamqp.commands import Basic

from bus.envelope import Envelope
from bus.transport import rabbitmq_frames as frames
from bus.transport.rabbitmq_publisher import H_ERROR, properties

MAX = 131072 - 8  # aiormq's max_content_size for the default frame_max


def _envelope() -> Envelope:
    return Envelope.new("orders", {"é": "ü" * 3}, {"source": "vendor", "event": "order.created"})


CASES = {
    "transport-message": (properties(_envelope(), 3, 1764067123.8), b'{"a":1}'),
    "dead-letter-headers": (properties(_envelope(), 1, 0.0, {H_ERROR: "boom ✗", "n": 7}), b"x"),
    "every-int-width": (
        Basic.Properties(message_id="m", headers={
            f"k{i}": v for i, v in enumerate(
                [0, -128, 127, 128, -129, 32767, -32768, 32768, 65535, 65536, -(2**31),
                 2**31 - 1, 2**31, 2**32 - 1, 2**32, -(2**63), 2**63 - 1])
        }),
        b"body",
    ),
    "empty-body": (properties(_envelope(), 0, 0.0), b""),
    "empty-headers": (Basic.Properties(message_id="m", headers={}, delivery_mode=2), b"b"),
    "no-properties": (Basic.Properties(), b"b"),
    "split-body": (properties(_envelope(), 0, 0.0), b"z" * (3 * 1000 + 17)),
    "body-of-exactly-one-frame": (properties(_envelope(), 0, 0.0), b"y" * 1000),
}  # fmt: skip
SLOW = {  # shapes the direct encoder leaves to pamqp: the answer must be the same
    "bool-float-and-nested-headers": (
        Basic.Properties(message_id="m", headers={"t": True, "f": 1.5, "d": {"x": 1}}), b"b",
    ),
    "other-properties": (
        Basic.Properties(message_id="m", priority=5, app_id="tieline", expiration="1000"), b"b",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
@pytest.mark.parametrize("mandatory", [True, False], ids=["mandatory", "not-mandatory"])
def test_direct_bytes_match_pamqp(case: str, mandatory: bool) -> None:
    """Method, content header and body frames written directly: byte for byte pamqp's."""
    props, body = CASES[case]
    max_content = 1000 if "body" in case else MAX
    args = (7, "tieline.events", "orders", mandatory, props, body, max_content)
    assert frames._fast(*args) == frames._pamqp(*args)  # _fast itself: no fallback hides a bug
    assert frames.publish(*args) == frames._pamqp(*args)


@pytest.mark.parametrize("case", SLOW, ids=list(SLOW))
def test_other_shapes_go_to_pamqp(case: str) -> None:
    """Properties or header values the direct encoder does not write are marshalled by pamqp."""
    props, body = SLOW[case]
    args = (1, "tieline.events", "orders", True, props, body, MAX)
    with pytest.raises(frames._Slow):
        frames._fast(*args)
    assert frames.publish(*args) == frames._pamqp(*args)


def test_long_names_fall_back_to_pamqp() -> None:
    """A routing key over 255 bytes is pamqp's to refuse, with its own error."""
    with pytest.raises(TypeError, match="255"):
        frames.publish(1, "ex", "k" * 256, True, Basic.Properties(), b"b", MAX)
