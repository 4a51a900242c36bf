"""MQTT 3.1.1 and 5 wire format for the demo's embedded broker: decoding, encoding, topic rules.

Pure functions and a bounds-checked cursor, no I/O. Anything that does not parse raises
`MalformedPacketError` (or its `ProtocolViolation` sibling for well-formed but forbidden content);
the broker answers both by closing the connection.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kiosk.errors import KioskError

if TYPE_CHECKING:
    from collections.abc import Callable

# Packet types (the high nibble of the first byte).
CONNECT = 1
CONNACK = 2
PUBLISH = 3
PUBACK = 4
PUBREC = 5
PUBREL = 6
PUBCOMP = 7
SUBSCRIBE = 8
SUBACK = 9
UNSUBSCRIBE = 10
UNSUBACK = 11
PINGREQ = 12
PINGRESP = 13
DISCONNECT = 14
AUTH = 15

# MQTT 5 property identifiers kiosk's clients send or read.
PAYLOAD_FORMAT = 0x01
MESSAGE_EXPIRY = 0x02
CONTENT_TYPE = 0x03
RESPONSE_TOPIC = 0x08
CORRELATION_DATA = 0x09
SUBSCRIPTION_ID = 0x0B
SESSION_EXPIRY = 0x11
ASSIGNED_CLIENT_ID = 0x12
AUTHENTICATION_METHOD = 0x15
WILL_DELAY = 0x18
RECEIVE_MAXIMUM = 0x21
TOPIC_ALIAS = 0x23
USER_PROPERTY = 0x26
MAXIMUM_PACKET_SIZE = 0x27
SHARED_SUBSCRIPTION_AVAILABLE = 0x2A

# The properties a broker passes on unchanged from a PUBLISH (or a Will) to its receivers.
FORWARDED_PROPERTIES = frozenset({PAYLOAD_FORMAT, CONTENT_TYPE, RESPONSE_TOPIC, CORRELATION_DATA, USER_PROPERTY})

# Each property's value type, from the MQTT 5 specification, section 2.2.2.2.
_BYTE, _U16, _U32, _VARINT, _STRING, _BINARY, _PAIR = range(7)
_PROPERTY_TYPES: dict[int, int] = {
    0x01: _BYTE,
    0x02: _U32,
    0x03: _STRING,
    0x08: _STRING,
    0x09: _BINARY,
    0x0B: _VARINT,
    0x11: _U32,
    0x12: _STRING,
    0x13: _U16,
    0x15: _STRING,
    0x16: _BINARY,
    0x17: _BYTE,
    0x18: _U32,
    0x19: _BYTE,
    0x1A: _STRING,
    0x1C: _STRING,
    0x1F: _STRING,
    0x21: _U16,
    0x22: _U16,
    0x23: _U16,
    0x24: _BYTE,
    0x25: _BYTE,
    0x26: _PAIR,
    0x27: _U32,
    0x28: _BYTE,
    0x29: _BYTE,
    0x2A: _BYTE,
}

MAX_VARINT = 268_435_455


class MalformedPacketError(KioskError):
    """A client sent bytes that are not a valid MQTT packet; its connection is closed.

    `reason` is the MQTT 5 reason code the broker sends in its DISCONNECT.
    """

    reason = 0x81


class ProtocolViolation(MalformedPacketError):  # noqa: N818 - named like the MQTT reason code
    """A well-formed packet that the protocol forbids here (MQTT 5 reason 0x82)."""

    reason = 0x82


class PacketTooLarge(MalformedPacketError):  # noqa: N818 - named like the MQTT reason code
    """A packet over the broker's size limit (MQTT 5 reason 0x95)."""

    reason = 0x95


@dataclass(slots=True)
class Properties:
    """MQTT 5 properties of one packet: parsed values plus the raw bytes to forward."""

    values: dict[int, int | str | bytes] = field(default_factory=dict)
    subscription_ids: list[int] = field(default_factory=list)
    forwarded: bytes = b""


class Cursor:
    """Reads MQTT data types from a packet body; running past the end is a malformed packet."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    @property
    def remaining(self) -> int:
        """Bytes not yet read."""
        return len(self._data) - self._pos

    def take(self, n: int) -> bytes:
        """The next `n` bytes."""
        if n > self.remaining:
            raise MalformedPacketError("packet ends early")
        chunk = self._data[self._pos : self._pos + n]
        self._pos += n
        return chunk

    def rest(self) -> bytes:
        """Everything not yet read."""
        return self.take(self.remaining)

    def u8(self) -> int:
        """A byte."""
        return self.take(1)[0]

    def u16(self) -> int:
        """A two-byte big-endian integer."""
        return int(struct.unpack("!H", self.take(2))[0])

    def u32(self) -> int:
        """A four-byte big-endian integer."""
        return int(struct.unpack("!I", self.take(4))[0])

    def varint(self) -> int:
        """A variable byte integer (1 to 4 bytes)."""
        value = 0
        for shift in range(0, 28, 7):
            byte = self.u8()
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
        raise MalformedPacketError("variable byte integer longer than 4 bytes")

    def binary(self) -> bytes:
        """Two-byte length, then that many bytes."""
        return self.take(self.u16())

    def string(self) -> str:
        """A UTF-8 string; U+0000 is forbidden by the specification."""
        raw = self.binary()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedPacketError("string is not valid UTF-8") from exc
        if "\x00" in text:
            raise MalformedPacketError("string contains U+0000")
        return text

    def properties(self) -> Properties:
        """An MQTT 5 property block."""
        length = self.varint()
        block = Cursor(self.take(length))
        props = Properties()
        forwarded = bytearray()
        while block.remaining:
            start = block._pos
            ident = block.varint()
            kind = _PROPERTY_TYPES.get(ident)
            if kind is None:
                raise MalformedPacketError(f"unknown property 0x{ident:02x}")
            value = block.value(kind)
            if ident == SUBSCRIPTION_ID:
                props.subscription_ids.append(int(value))
            elif ident != USER_PROPERTY:
                if ident in props.values:
                    raise ProtocolViolation(f"property 0x{ident:02x} given twice")
                props.values[ident] = value
            if ident in FORWARDED_PROPERTIES:
                forwarded += block._data[start : block._pos]
        props.forwarded = bytes(forwarded)
        return props

    def value(self, kind: int) -> int | str | bytes:
        """One property value of the given type (a user property's pair is joined by U+0000)."""
        if kind == _PAIR:
            return self.string() + "\x00" + self.string()
        readers: dict[int, Callable[[], int | str | bytes]] = {
            _BYTE: self.u8,
            _U16: self.u16,
            _U32: self.u32,
            _VARINT: self.varint,
            _STRING: self.string,
            _BINARY: self.binary,
        }
        return readers[kind]()

    def end(self) -> None:
        """Check that nothing is left over."""
        if self.remaining:
            raise MalformedPacketError("unexpected bytes at the end of the packet")


def varint(value: int) -> bytes:
    """Encode a variable byte integer."""
    if not 0 <= value <= MAX_VARINT:
        raise ValueError(f"{value} does not fit a variable byte integer")
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def binary(data: bytes) -> bytes:
    """Encode two-byte length plus data."""
    return struct.pack("!H", len(data)) + data


def string(text: str) -> bytes:
    """Encode a UTF-8 string."""
    return binary(text.encode("utf-8"))


def u16(value: int) -> bytes:
    """Encode a two-byte integer."""
    return struct.pack("!H", value)


def u32_property(ident: int, value: int) -> bytes:
    """Encode one four-byte-integer property."""
    return bytes([ident]) + struct.pack("!I", value)


def property_block(encoded: bytes) -> bytes:
    """Prefix encoded properties with their length."""
    return varint(len(encoded)) + encoded


def packet(first_byte: int, body: bytes) -> bytes:
    """A whole packet: fixed header plus body."""
    return bytes([first_byte]) + varint(len(body)) + body


def validate_topic_name(topic: str) -> None:
    """A PUBLISH topic: not empty, no wildcards."""
    if not topic or "+" in topic or "#" in topic:
        raise ProtocolViolation(f"invalid topic name {topic!r}")


def valid_topic_filter(topic_filter: str) -> bool:
    """Whether a SUBSCRIBE filter is well formed (`+` a whole level, `#` a whole last level)."""
    if not topic_filter:
        return False
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return False
        if "+" in level and level != "+":
            return False
    return True


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether a topic matches a (valid) filter; wildcards never match a leading `$` level."""
    if topic.startswith("$") and topic_filter[:1] in {"+", "#"}:
        return False
    wanted = topic_filter.split("/")
    levels = topic.split("/")
    for i, level in enumerate(wanted):
        if level == "#":
            return True
        if i >= len(levels) or (level not in {"+", levels[i]}):
            return False
    return len(wanted) == len(levels)
