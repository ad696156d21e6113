"""AMQP 0-9-1 wire bytes of one basic.publish: method, content header and body frames.

pamqp marshals each property and header value through a generic, type-dispatching encoder; for
the messages the transport sends (five properties, headers of str and int values) that costs more
than the rest of a publish. This module writes the same bytes directly with struct, and hands
anything else (other properties, other value types, over-long names) to pamqp, so the output is
always what pamqp would give; tests/bus/transport/test_rabbitmq_frames.py compares the two.
"""

from __future__ import annotations

import struct
from functools import lru_cache
from typing import Any

import pamqp.encode
import pamqp.frame
from pamqp.body import ContentBody
from pamqp.commands import Basic
from pamqp.header import ContentHeader

_FRAME = struct.Struct(">BHI")  # type, channel, payload size
_END = b"\xce"
_METHOD, _HEADER, _BODY = 1, 2, 3
_PUBLISH = struct.pack(">HHH", 60, 40, 0)  # class basic, method publish, reserved ticket
_CONTENT = struct.Struct(">HHQH")  # class basic, weight 0, body size, property flags
_U32 = struct.Struct(">I")
_INTS = (  # pamqp.encode.table_integer: the smallest type that holds the value
    (-(2**7), 2**7 - 1, b"b", struct.Struct(">b")),
    (-(2**15), 2**15 - 1, b"s", struct.Struct(">h")),
    (0, 2**16 - 1, b"u", struct.Struct(">H")),
    (-(2**31), 2**31 - 1, b"I", struct.Struct(">i")),
    (0, 2**32 - 1, b"i", struct.Struct(">I")),
    (-(2**63), 2**63 - 1, b"l", struct.Struct(">q")),
)
_SMALL = {i: b"b" + _INTS[0][3].pack(i) for i in range(-128, 128)}  # cursors, attempts, gens
# Properties this module writes, with their flag bits, in wire order.
_FAST = (("content_type", 0x8000), ("headers", 0x2000), ("delivery_mode", 0x1000),
         ("correlation_id", 0x0400), ("message_id", 0x0080))  # fmt: skip
_OTHERS = ("content_encoding", "priority", "reply_to", "expiration", "timestamp",
           "message_type", "user_id", "app_id", "cluster_id")  # fmt: skip


class _Slow(Exception):
    """Not a shape this module writes: pamqp does it."""


def publish(
    channel: int,
    exchange: str,
    routing_key: str,
    mandatory: bool,
    properties: Basic.Properties,
    body: bytes,
    max_content: int,
) -> bytes:
    """The frames of one publish on ``channel``; bodies over ``max_content`` bytes are split."""
    try:
        return _fast(channel, exchange, routing_key, mandatory, properties, body, max_content)
    except _Slow:
        return _pamqp(channel, exchange, routing_key, mandatory, properties, body, max_content)


def _fast(
    channel: int,
    exchange: str,
    routing_key: str,
    mandatory: bool,
    props: Basic.Properties,
    body: bytes,
    max_content: int,
) -> bytes:
    if pamqp.encode.DEPRECATED_RABBITMQ_SUPPORT:
        raise _Slow
    for name in _OTHERS:
        if getattr(props, name) not in (None, ""):
            raise _Slow
    flags = 0
    parts = []
    for name, flag in _FAST:
        value = getattr(props, name)
        if value is None or value == "":
            continue
        flags |= flag
        if name == "headers":
            parts.append(_table(value))
        elif name == "delivery_mode":
            if type(value) is not int or not 0 <= value <= 255:
                raise _Slow
            parts.append(bytes((value,)))
        else:
            parts.append(_short(value))
    header = b"".join((_CONTENT.pack(60, 0, len(body), flags), *parts))
    out = [_method(channel, exchange, routing_key, mandatory),
           _FRAME.pack(_HEADER, channel, len(header)), header, _END]  # fmt: skip
    if 0 < len(body) < max_content:
        out += (_FRAME.pack(_BODY, channel, len(body)), body, _END)
    elif body:  # split as aiormq does
        for at in range(0, len(body), max_content):
            chunk = body[at : at + max_content]
            out += (_FRAME.pack(_BODY, channel, len(chunk)), chunk, _END)
    return b"".join(out)


@lru_cache(maxsize=1024)  # a few exchanges times the flows: the same few frames again and again
def _method(channel: int, exchange: str, routing_key: str, mandatory: bool) -> bytes:
    payload = b"".join(
        (_PUBLISH, _short(exchange), _short(routing_key), b"\x01" if mandatory else b"\x00")
    )
    return b"".join((_FRAME.pack(_METHOD, channel, len(payload)), payload, _END))


def _short(value: Any) -> bytes:
    if type(value) is not str:
        raise _Slow
    raw = value.encode()
    if len(raw) > 255:
        raise _Slow  # pamqp raises the error that names it
    return bytes((len(raw),)) + raw


@lru_cache(maxsize=256)  # header names: a fixed few
def _name(key: str) -> bytes:
    raw = key.encode()
    if not raw or len(raw) > 128:
        raise _Slow  # pamqp truncates long names (and logs it)
    return bytes((len(raw),)) + raw


def _table(table: Any) -> bytes:
    if type(table) is not dict:
        raise _Slow
    parts = []
    for key, value in sorted(table.items()):
        if type(key) is not str:
            raise _Slow
        kind = type(value)
        if kind is str:
            raw = value.encode()
            parts += (_name(key), b"S", _U32.pack(len(raw)), raw)
        elif kind is int:
            parts += (_name(key), _SMALL.get(value) or _int(value))
        else:
            raise _Slow
    data = b"".join(parts)
    return _U32.pack(len(data)) + data


def _int(value: int) -> bytes:
    for low, high, code, packer in _INTS:
        if low <= value <= high:
            return code + packer.pack(value)
    raise _Slow


def _pamqp(
    channel: int,
    exchange: str,
    routing_key: str,
    mandatory: bool,
    props: Basic.Properties,
    body: bytes,
    max_content: int,
) -> bytes:
    frames: list[Any] = [
        Basic.Publish(exchange=exchange, routing_key=routing_key, mandatory=mandatory),
        ContentHeader(properties=props, body_size=len(body)),
    ]
    if body:
        frames += [
            ContentBody(body[at : at + max_content]) for at in range(0, len(body), max_content)
        ]
    return b"".join(pamqp.frame.marshal(f, channel) for f in frames)
