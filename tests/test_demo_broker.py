"""The demo's embedded MQTT broker, driven by the real aiomqtt/paho client on MQTT 3.1.1 and 5."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
from typing import TYPE_CHECKING

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from kiosk.demo.broker import EmbeddedBroker, EmbeddedBrokerError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

HOST = "127.0.0.1"
V311 = aiomqtt.ProtocolVersion.V311
V5 = aiomqtt.ProtocolVersion.V5
WAIT_S = 5.0


class FakeClock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(name="clock")
def fixture_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(name="embedded")
async def fixture_embedded(clock: FakeClock) -> AsyncIterator[EmbeddedBroker]:
    async with EmbeddedBroker(clock=clock) as broker:
        yield broker


@pytest.fixture(name="protocol", params=[V311, V5], ids=["mqtt311", "mqtt5"])
def fixture_protocol(request: pytest.FixtureRequest) -> aiomqtt.ProtocolVersion:
    version: aiomqtt.ProtocolVersion = request.param
    return version


def make_client(
    broker: EmbeddedBroker,
    protocol: aiomqtt.ProtocolVersion,
    identifier: str | None = None,
    *,
    persistent: bool = False,
    session_expiry: int = 3600,
    will: aiomqtt.Will | None = None,
    keepalive: int = 60,
) -> aiomqtt.Client:
    """A client as kiosk's daemon makes it: persistent means a session that outlives the socket."""
    if persistent and protocol is V5:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = session_expiry
        return aiomqtt.Client(
            HOST,
            broker.port,
            identifier=identifier,
            protocol=protocol,
            will=will,
            keepalive=keepalive,
            clean_start=False,
            properties=props,
        )
    return aiomqtt.Client(
        HOST,
        broker.port,
        identifier=identifier,
        protocol=protocol,
        will=will,
        keepalive=keepalive,
        clean_session=(not persistent) if protocol is V311 else None,
    )


def expiring(seconds: int) -> Properties:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.MessageExpiryInterval = seconds
    return props


async def next_message(client: aiomqtt.Client) -> aiomqtt.Message:
    async with asyncio.timeout(WAIT_S):
        return await anext(client.messages)


async def received(client: aiomqtt.Client, count: int) -> list[tuple[str, bytes]]:
    out = []
    for _ in range(count):
        message = await next_message(client)
        assert isinstance(message.payload, bytes)
        out.append((message.topic.value, message.payload))
    return out


def drop_connection(client: aiomqtt.Client) -> None:
    """End the client's TCP connection without an MQTT DISCONNECT, as a crash or cut cable does."""
    sock = client._client.socket()
    assert isinstance(sock, socket.socket)
    sock.shutdown(socket.SHUT_RDWR)


# -- raw MQTT 3.1.1 / 5 bytes, written independently of the broker's own codec ---------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _str(text: str) -> bytes:
    data = text.encode()
    return struct.pack("!H", len(data)) + data


def raw_connect(
    client_id: str,
    *,
    version: int = 4,
    keepalive: int = 60,
    will: tuple[str, bytes] | None = None,
) -> bytes:
    flags = 0x02  # clean session
    payload = _str(client_id)
    if will is not None:
        flags |= 0x04 | (1 << 3)  # Will, QoS 1
        payload += (b"\x00" if version == 5 else b"") + _str(will[0]) + _str(will[1].decode())
    body = _str("MQTT") + bytes([version, flags]) + struct.pack("!H", keepalive)
    body += (b"\x00" if version == 5 else b"") + payload
    return b"\x10" + _varint(len(body)) + body


async def raw_session(broker: EmbeddedBroker, first: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(HOST, broker.port)
    writer.write(first)
    await writer.drain()
    return reader, writer


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the broker sends until it closes the connection."""
    async with asyncio.timeout(WAIT_S):
        return await reader.read()


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


# -- publish / subscribe --------------------------------------------------------------------


async def test_wildcards_route_to_matching_subscriptions_only(
    embedded: EmbeddedBroker, protocol: aiomqtt.ProtocolVersion
) -> None:
    async with (
        make_client(embedded, protocol) as daemon,
        make_client(embedded, protocol) as everything,
        make_client(embedded, protocol) as controller,
    ):
        await daemon.subscribe("vend/v1/order/+/request", qos=1)
        await daemon.subscribe("vend/v1/kioskd/#", qos=1)
        await daemon.subscribe("+/sys", qos=1)
        await everything.subscribe("#", qos=1)
        for topic in [
            "vend/v1/order/o-1/request",
            "vend/v1/order/o-1/cancel",
            "vend/v1/order/o-1/request/extra",
            "vend/v1/kioskd",
            "vend/v1/kioskd/state",
            "$demo/sys",
            "x/sys",
            "vend/v1/kioskd/end",
        ]:
            await controller.publish(topic, topic.encode(), qos=1)

        assert [t for t, _ in await received(daemon, 5)] == [
            "vend/v1/order/o-1/request",
            "vend/v1/kioskd",
            "vend/v1/kioskd/state",
            "x/sys",
            "vend/v1/kioskd/end",
        ]
        # `#` matches every topic except those starting with `$`.
        topics = [t for t, _ in await received(everything, 7)]
        assert "$demo/sys" not in topics
        assert topics[-1] == "vend/v1/kioskd/end"


async def test_overlapping_subscriptions_deliver_once_and_unsubscribe_stops_delivery(
    embedded: EmbeddedBroker, protocol: aiomqtt.ProtocolVersion
) -> None:
    async with make_client(embedded, protocol) as client:
        await client.subscribe("a/+", qos=1)
        await client.subscribe("a/#", qos=0)
        await client.publish("a/b", b"1", qos=1)
        await client.publish("a/end", b"2", qos=1)
        first, second = await next_message(client), await next_message(client)
        assert (first.topic.value, first.qos) == ("a/b", 1)  # the highest QoS of the matches
        assert second.topic.value == "a/end"

        await client.unsubscribe("a/+")
        await client.unsubscribe("a/#")
        await client.subscribe("marker", qos=1)
        await client.publish("a/b", b"gone", qos=1)
        await client.publish("marker", b"m", qos=1)
        assert (await next_message(client)).topic.value == "marker"


async def test_qos2_publish_is_accepted_once_and_delivered_as_qos1(
    embedded: EmbeddedBroker, protocol: aiomqtt.ProtocolVersion
) -> None:
    async with make_client(embedded, protocol) as sub, make_client(embedded, protocol) as pub:
        granted = await sub.subscribe("q2/#", qos=2)
        assert [code if isinstance(code, int) else code.value for code in granted] == [1]
        await pub.publish("q2/a", b"once", qos=2)
        await pub.publish("q2/end", b"end", qos=1)
        first = await next_message(sub)
        assert (first.topic.value, first.payload, first.qos) == ("q2/a", b"once", 1)
        assert (await next_message(sub)).topic.value == "q2/end"


async def test_qos2_publish_sent_again_before_pubrel_is_routed_once(
    embedded: EmbeddedBroker,
) -> None:
    publish = _str("q2/a") + b"\x00\x07" + b"exactly-once"
    first_try = b"\x34" + _varint(len(publish)) + publish
    resent = b"\x3c" + _varint(len(publish)) + publish  # DUP set, same packet id
    async with make_client(embedded, V311) as sub:
        await sub.subscribe("q2/#", qos=1)
        reader, writer = await raw_session(embedded, raw_connect("q2-publisher") + first_try)
        try:
            async with asyncio.timeout(WAIT_S):
                assert await reader.readexactly(8) == b"\x20\x02\x00\x00" + b"\x50\x02\x00\x07"
                writer.write(resent)
                assert await reader.readexactly(4) == b"\x50\x02\x00\x07"  # PUBREC again
                writer.write(b"\x62\x02\x00\x07")  # PUBREL
                assert await reader.readexactly(4) == b"\x70\x02\x00\x07"  # PUBCOMP
        finally:
            await close(writer)
        await sub.publish("q2/end", b"end", qos=1)
        assert await received(sub, 2) == [("q2/a", b"exactly-once"), ("q2/end", b"end")]


# -- retained messages and expiry ------------------------------------------------------------


async def test_retained_message_is_delivered_on_subscribe_and_cleared_by_empty_payload(
    embedded: EmbeddedBroker, protocol: aiomqtt.ProtocolVersion
) -> None:
    async with make_client(embedded, protocol) as daemon:
        await daemon.publish("vend/v1/kioskd/state", b"online", qos=1, retain=True)

    async with make_client(embedded, protocol) as controller:
        await controller.subscribe("vend/v1/kioskd/state", qos=1)
        message = await next_message(controller)
        assert (message.payload, message.retain, message.qos) == (b"online", True, 1)

    async with make_client(embedded, protocol) as daemon:
        await daemon.publish("vend/v1/kioskd/state", b"", qos=1, retain=True)

    async with make_client(embedded, protocol) as controller:
        await controller.subscribe("vend/v1/kioskd/#", qos=1)
        await controller.publish("vend/v1/kioskd/marker", b"m", qos=1)
        message = await next_message(controller)
        assert (message.topic.value, message.retain) == ("vend/v1/kioskd/marker", False)


async def test_retained_message_expires_after_its_message_expiry_interval(
    embedded: EmbeddedBroker, clock: FakeClock
) -> None:
    async with make_client(embedded, V5) as daemon:
        await daemon.publish("order/o-1/status", b"short", qos=1, retain=True, properties=expiring(10))
        await daemon.publish("order/o-2/status", b"long", qos=1, retain=True, properties=expiring(100))
    clock.advance(30)

    async with make_client(embedded, V5) as controller:
        await controller.subscribe("order/+/status", qos=1)
        message = await next_message(controller)
        assert (message.topic.value, message.retain) == ("order/o-2/status", True)
        assert message.properties is not None
        # The receiver sees what is left of the lifetime, not the original 100 s.
        assert message.properties.json()["MessageExpiryInterval"] == 70  # type: ignore[no-untyped-call]
        await controller.publish("order/marker/status", b"m", qos=1)
        assert (await next_message(controller)).topic.value == "order/marker/status"


async def test_queued_message_expires_while_the_subscriber_is_offline(
    embedded: EmbeddedBroker, clock: FakeClock
) -> None:
    async with make_client(embedded, V5, "kioskd-k1", persistent=True) as daemon:
        await daemon.subscribe("vend/v1/order/+/request", qos=1)
    async with make_client(embedded, V5) as controller:
        await controller.publish("vend/v1/order/o-1/request", b"stale", qos=1, properties=expiring(10))
        await controller.publish("vend/v1/order/o-2/request", b"fresh", qos=1)
    clock.advance(11)

    async with make_client(embedded, V5, "kioskd-k1", persistent=True) as daemon:
        assert await received(daemon, 1) == [("vend/v1/order/o-2/request", b"fresh")]


# -- Wills ----------------------------------------------------------------------------------


def offline_will() -> aiomqtt.Will:
    return aiomqtt.Will("vend/v1/kioskd/state", b"offline", qos=1, retain=True)


async def test_will_is_published_on_abrupt_close_and_kept_retained(
    embedded: EmbeddedBroker, protocol: aiomqtt.ProtocolVersion
) -> None:
    async with make_client(embedded, protocol) as controller:
        await controller.subscribe("vend/v1/kioskd/state", qos=1)
        async with make_client(embedded, protocol, "kioskd-k1", will=offline_will()) as daemon:
            await daemon.publish("vend/v1/kioskd/state", b"online", qos=1, retain=True)
            assert (await next_message(controller)).payload == b"online"
            drop_connection(daemon)
            will = await next_message(controller)
            assert (will.topic.value, will.payload) == ("vend/v1/kioskd/state", b"offline")

    async with make_client(embedded, protocol) as late:
        await late.subscribe("vend/v1/kioskd/state", qos=1)
        message = await next_message(late)
        assert (message.payload, message.retain) == (b"offline", True)


async def test_will_is_not_published_on_graceful_disconnect(
    embedded: EmbeddedBroker, protocol: aiomqtt.ProtocolVersion
) -> None:
    async with make_client(embedded, protocol) as controller:
        await controller.subscribe("vend/v1/kioskd/#", qos=1)
        async with make_client(embedded, protocol, "kioskd-k1", will=offline_will()) as daemon:
            await daemon.publish("vend/v1/kioskd/state", b"online", qos=1, retain=True)
        await controller.publish("vend/v1/kioskd/marker", b"m", qos=1)
        assert await received(controller, 2) == [
            ("vend/v1/kioskd/state", b"online"),
            ("vend/v1/kioskd/marker", b"m"),
        ]


async def test_will_with_a_delay_interval_is_published_once_the_delay_is_over(
    embedded: EmbeddedBroker,
) -> None:
    will_props = Properties(PacketTypes.WILLMESSAGE)  # type: ignore[no-untyped-call]
    # 2 s, not 1: the marker below must overtake the Will even when a loaded machine is slow
    # to see the drop and send it.
    will_props.WillDelayInterval = 2
    will = aiomqtt.Will("vend/v1/kioskd/state", b"late", qos=1, properties=will_props)
    async with make_client(embedded, V5) as controller:
        await controller.subscribe("vend/v1/kioskd/state", qos=1)
        async with make_client(embedded, V5, "kioskd-k1", persistent=True, will=will) as daemon:
            connection = embedded._sessions["kioskd-k1"].connection
            assert connection is not None
            assert connection.task is not None
            drop_connection(daemon)
            await asyncio.wait([connection.task], timeout=WAIT_S)
            assert embedded._sessions["kioskd-k1"].connection is None
        # The broker saw the connection end; the Will waits out its delay, so a message sent
        # now overtakes it.
        await controller.publish("vend/v1/kioskd/state", b"marker", qos=1)
        assert [m for _, m in await received(controller, 2)] == [b"marker", b"late"]


async def test_will_is_published_when_keepalive_runs_out(embedded: EmbeddedBroker) -> None:
    async with make_client(embedded, V311) as controller:
        await controller.subscribe("vend/v1/kioskd/state", qos=1)
        # A client that connects with a 1 s keep-alive and then falls silent (hung, not closed).
        reader, writer = await raw_session(
            embedded, raw_connect("silent", keepalive=1, will=("vend/v1/kioskd/state", b"gone"))
        )
        try:
            will = await next_message(controller)
            assert will.payload == b"gone"
            assert await read_until_closed(reader) == b"\x20\x02\x00\x00"  # CONNACK, then closed
        finally:
            await close(writer)


# -- persistent sessions --------------------------------------------------------------------


async def test_persistent_session_keeps_subscriptions_and_queues_while_offline(
    embedded: EmbeddedBroker, protocol: aiomqtt.ProtocolVersion
) -> None:
    async with make_client(embedded, protocol, "kioskd-k1", persistent=True) as daemon:
        await daemon.subscribe("vend/v1/order/+/request", qos=1)
    async with make_client(embedded, protocol) as controller:
        for n in range(3):
            await controller.publish(f"vend/v1/order/o-{n}/request", b"%d" % n, qos=1)

    # Back without subscribing again: the session remembers, and the orders wait in order.
    async with make_client(embedded, protocol, "kioskd-k1", persistent=True) as daemon:
        assert await received(daemon, 3) == [(f"vend/v1/order/o-{n}/request", b"%d" % n) for n in range(3)]


async def test_clean_session_forgets_subscriptions_and_messages(
    embedded: EmbeddedBroker, protocol: aiomqtt.ProtocolVersion
) -> None:
    async with make_client(embedded, protocol, "kioskd-k1") as daemon:
        await daemon.subscribe("vend/v1/order/+/request", qos=1)
    async with make_client(embedded, protocol) as controller:
        await controller.publish("vend/v1/order/o-1/request", b"lost", qos=1)

    async with make_client(embedded, protocol, "kioskd-k1") as daemon:
        await daemon.subscribe("marker", qos=1)
        await daemon.publish("marker", b"m", qos=1)
        assert await received(daemon, 1) == [("marker", b"m")]


async def test_session_ends_after_its_session_expiry_interval(embedded: EmbeddedBroker, clock: FakeClock) -> None:
    async with make_client(embedded, V5, "kioskd-k1", persistent=True, session_expiry=60) as daemon:
        await daemon.subscribe("vend/v1/order/+/request", qos=1)
    async with make_client(embedded, V5) as controller:
        await controller.publish("vend/v1/order/o-1/request", b"kept", qos=1)
    clock.advance(59)
    async with make_client(embedded, V5, "kioskd-k1", persistent=True, session_expiry=60) as daemon:
        assert await received(daemon, 1) == [("vend/v1/order/o-1/request", b"kept")]
    async with make_client(embedded, V5) as controller:
        await controller.publish("vend/v1/order/o-2/request", b"lost", qos=1)
    clock.advance(61)

    async with make_client(embedded, V5, "kioskd-k1", persistent=True, session_expiry=60) as daemon:
        await daemon.subscribe("marker", qos=1)
        await daemon.publish("marker", b"m", qos=1)
        assert await received(daemon, 1) == [("marker", b"m")]


async def test_unacknowledged_message_is_redelivered_after_the_connection_drops(
    embedded: EmbeddedBroker, protocol: aiomqtt.ProtocolVersion
) -> None:
    daemon = make_client(embedded, protocol, "kioskd-k1", persistent=True)
    daemon._client.manual_ack_set(on=True)
    async with daemon:
        await daemon.subscribe("vend/v1/order/+/request", qos=1)
        async with make_client(embedded, protocol) as controller:
            await controller.publish("vend/v1/order/o-1/request", b"order", qos=1)
        first = await next_message(daemon)
        assert first.payload == b"order"
        drop_connection(daemon)  # killed before the journal commit: never acknowledged

    daemon = make_client(embedded, protocol, "kioskd-k1", persistent=True)
    daemon._client.manual_ack_set(on=True)
    async with daemon:
        again = await next_message(daemon)
        assert (again.topic.value, again.payload) == ("vend/v1/order/o-1/request", b"order")
        daemon._client.ack(again.mid, again.qos)

    # Acknowledged now: the next connection gets only what comes after.
    daemon = make_client(embedded, protocol, "kioskd-k1", persistent=True)
    daemon._client.manual_ack_set(on=True)
    async with daemon, make_client(embedded, protocol) as controller:
        await controller.publish("vend/v1/order/o-2/request", b"next", qos=1)
        message = await next_message(daemon)
        assert message.payload == b"next"
        daemon._client.ack(message.mid, message.qos)


async def test_same_client_id_takes_the_session_over(
    embedded: EmbeddedBroker, protocol: aiomqtt.ProtocolVersion
) -> None:
    async with make_client(embedded, protocol) as controller:
        await controller.subscribe("vend/v1/kioskd/state", qos=1)
        old = make_client(embedded, protocol, "kioskd-k1", persistent=True, will=offline_will())
        async with old:
            await old.subscribe("vend/v1/order/+/request", qos=1)
            async with make_client(embedded, protocol, "kioskd-k1", persistent=True) as new:
                # The old connection is closed, and its Will tells the controller.
                with pytest.raises(aiomqtt.MqttError):
                    await next_message(old)
                assert (await next_message(controller)).payload == b"offline"
                # The session, with its subscription, now belongs to the new connection.
                await controller.publish("vend/v1/order/o-1/request", b"order", qos=1)
                assert await received(new, 1) == [("vend/v1/order/o-1/request", b"order")]


# -- robustness -----------------------------------------------------------------------------


async def assert_still_serving(broker: EmbeddedBroker) -> None:
    assert broker.internal_errors == 0
    async with make_client(broker, V5) as client:
        await client.subscribe("health", qos=1)
        await client.publish("health", b"ok", qos=1)
        assert (await next_message(client)).payload == b"ok"


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(b"\xff\xff\xff\xff\xff", id="remaining-length-too-long"),
        pytest.param(b"\x10\xff\xff\xff\x7f", id="packet-over-the-size-limit"),
        pytest.param(b"\x30\x03\x00\x01a", id="publish-before-connect"),
        pytest.param(b"\x10\x06\x00\x04MQTX", id="connect-cut-short"),
        pytest.param(b"\x10\x0a\x00\x04HTTP\x04\x02\x00\x3c", id="unknown-protocol"),
        pytest.param(raw_connect("a") + b"\x82\x05\x00\x01\x00\x01a", id="subscribe-no-options"),
        pytest.param(raw_connect("b") + b"\x80\x06\x00\x01\x00\x01a\x01", id="subscribe-bad-flags"),
        pytest.param(raw_connect("c") + b"\x32\x03\x00\x01a", id="qos1-publish-no-packet-id"),
        pytest.param(raw_connect("d") + b"\x30\x03\x00\x01#", id="publish-to-wildcard"),
        pytest.param(raw_connect("e") + b"\x10\x00", id="second-connect"),
        pytest.param(raw_connect("f", version=5) + b"\x30\x05\x00\x01a\x01\x7f", id="bad-property"),
    ],
)
async def test_malformed_input_closes_that_connection_only(embedded: EmbeddedBroker, garbage: bytes) -> None:
    reader, writer = await raw_session(embedded, garbage)
    try:
        await read_until_closed(reader)
    finally:
        await close(writer)
    await assert_still_serving(embedded)


async def test_mqtt5_client_is_told_why_it_is_disconnected(embedded: EmbeddedBroker) -> None:
    topic_alias = b"\x30\x07\x00\x01a\x03\x23\x00\x01"  # PUBLISH with a topic alias we never offered
    reader, writer = await raw_session(embedded, raw_connect("v5", version=5) + topic_alias)
    try:
        data = await read_until_closed(reader)
    finally:
        await close(writer)
    assert data[0] == 0x20  # CONNACK
    assert data.endswith(b"\xe0\x02\x82\x00")  # DISCONNECT, protocol error


def u16(value: int) -> bytes:
    return struct.pack("!H", value)


def u32(value: int) -> bytes:
    return struct.pack("!I", value)


def _pkt(first: int, body: bytes) -> bytes:
    return bytes([first]) + _varint(len(body)) + body


def _props(version: int, *items: bytes) -> bytes:
    if version != 5:
        return b""
    blob = b"".join(items)
    return _varint(len(blob)) + blob


def full_conversation(version: int, client_id: str) -> bytes:
    """Every packet type a client sends, with MQTT 5 properties where the version has them."""
    connect = _str("MQTT") + bytes([version, 0x02 | 0x04 | 0x08]) + u16(60)
    connect += _props(version, b"\x11" + u32(60), b"\x21" + u16(10))
    connect += _str(client_id) + _props(version, b"\x18" + u32(0), b"\x02" + u32(30))
    connect += _str("will/t") + _str("bye")
    options = 0x2A if version == 5 else 0x02  # QoS 2; MQTT 5: retain as published, handling 2
    subscribe = u16(1) + _props(version, b"\x0b\x05")
    subscribe += _str("a/+") + bytes([options]) + _str("b/#") + bytes([options])
    user_property = b"\x26" + _str("k") + _str("v")
    publish_props = _props(version, b"\x02" + u32(5), b"\x03" + _str("application/json"), user_property)
    disconnect = b"\x04" + _props(version, b"\x11" + u32(0)) if version == 5 else b""
    return b"".join(
        [
            _pkt(0x10, connect),
            _pkt(0x82, subscribe),
            _pkt(0x33, _str("a/x") + u16(2) + publish_props + b"{}"),  # QoS 1, retained
            _pkt(0x34, _str("b/y") + u16(3) + _props(version) + b"z"),  # QoS 2
            _pkt(0x62, u16(3)),  # PUBREL
            _pkt(0xA2, u16(4) + _props(version) + _str("a/+")),
            b"\xc0\x00",  # PINGREQ
            _pkt(0xE0, disconnect),
        ]
    )


def packet_types(data: bytes) -> list[int]:
    types, pos = [], 0
    while pos < len(data):
        types.append(data[pos] >> 4)
        length, shift = 0, 0
        pos += 1
        while True:
            length |= (data[pos] & 0x7F) << shift
            shift += 7
            pos += 1
            if not data[pos - 1] & 0x80:
                break
        pos += length
    return types


@pytest.mark.parametrize("version", [4, 5])
async def test_every_client_packet_type_is_answered(embedded: EmbeddedBroker, version: int) -> None:
    reader, writer = await raw_session(embedded, full_conversation(version, "all"))
    try:
        data = await read_until_closed(reader)
    finally:
        await close(writer)
    # CONNACK, SUBACK, own retained PUBLISH, PUBACK, own QoS 2 PUBLISH (as QoS 1), PUBREC, PUBCOMP,
    # UNSUBACK, PINGRESP; then the broker closes after DISCONNECT.
    assert packet_types(data) == [2, 9, 3, 4, 3, 5, 7, 11, 13]
    assert data[2:4] == b"\x00\x00"  # CONNACK: new session, accepted
    assert embedded.internal_errors == 0


async def test_mutated_packets_never_break_the_broker(embedded: EmbeddedBroker) -> None:
    rng = random.Random(7)
    for n in range(300):
        data = bytearray(full_conversation(4 + n % 2, f"mutant-{n}"))
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.2:
            del data[rng.randrange(len(data)) :]
        reader, writer = await raw_session(embedded, bytes(data))
        reply = asyncio.create_task(reader.read())
        await asyncio.wait([reply], timeout=0.02)
        reply.cancel()
        await close(writer)
    await assert_still_serving(embedded)


async def test_random_bytes_after_connect_never_stop_the_broker(embedded: EmbeddedBroker) -> None:
    rng = random.Random(20240501)
    for n in range(100):
        junk = rng.randbytes(rng.randint(1, 64))
        reader, writer = await raw_session(embedded, raw_connect(f"fuzz-{n}", version=4 + n % 2))
        writer.write(junk)
        await writer.drain()
        # Whatever the broker makes of it, it answers or closes; a half packet just waits.
        with_reply = asyncio.create_task(reader.read(1024))
        await asyncio.wait([with_reply], timeout=0.01)
        with_reply.cancel()
        await close(writer)
    await assert_still_serving(embedded)


async def test_oversize_publish_ends_the_publisher_only(embedded: EmbeddedBroker) -> None:
    async with make_client(embedded, V311) as watcher:
        await watcher.subscribe("big", qos=1)
        publisher = make_client(embedded, V311)
        async with publisher:
            await publisher.publish("big", b"x" * (300 * 1024), qos=0)
            with pytest.raises(aiomqtt.MqttError):
                await next_message(publisher)
        await watcher.publish("big", b"small", qos=1)
        assert (await next_message(watcher)).payload == b"small"


# -- lifecycle ------------------------------------------------------------------------------


async def test_broker_in_a_thread_serves_and_stops() -> None:
    handle = EmbeddedBroker().start_in_thread()
    try:
        assert handle.url == f"mqtt://127.0.0.1:{handle.port}"
        async with aiomqtt.Client(HOST, handle.port) as client:
            await client.subscribe("t", qos=1)
            await client.publish("t", b"threaded", qos=1)
            assert (await next_message(client)).payload == b"threaded"
    finally:
        handle.stop()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(HOST, handle.port)


async def test_port_in_use_is_a_clear_error(embedded: EmbeddedBroker) -> None:
    with pytest.raises(EmbeddedBrokerError, match=f"cannot listen on 127.0.0.1:{embedded.port}"):
        await EmbeddedBroker(port=embedded.port).start()
    with pytest.raises(EmbeddedBrokerError):
        EmbeddedBroker(port=embedded.port).start_in_thread()


async def test_url_names_the_port_it_listens_on() -> None:
    broker = EmbeddedBroker()
    await broker.start()
    try:
        assert broker.port != 0
        assert broker.url == f"mqtt://127.0.0.1:{broker.port}"
    finally:
        await broker.stop()
