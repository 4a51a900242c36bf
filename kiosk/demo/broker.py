"""A small MQTT broker in pure asyncio, so `kiosk demo` runs where no Mosquitto is installed.

It speaks MQTT 3.1.1 and MQTT 5 on loopback, and implements what kiosk's daemon and the simulated
vending controller use (see protocol.md §1): QoS 0 and 1, retained messages, MQTT 5 message
expiry, Wills, persistent sessions with redelivery of unacknowledged messages, session takeover,
`+` and `#` wildcards. It is a demo part, never imported by the daemon at runtime; production
kiosks run Mosquitto.

Use it as `async with EmbeddedBroker() as broker: ... broker.url ...` inside an event loop, or
`handle = EmbeddedBroker().start_in_thread(); ...; handle.stop()` from synchronous code.

House rules:
- One event loop, no locks: routing a message is synchronous (no await between matching a
  subscription and writing to the subscriber), so sessions never change under our feet.
- QoS 2 publishes are accepted exactly once (PUBREC/PUBREL/PUBCOMP), but subscriptions are granted
  at most QoS 1: receivers get QoS 2 messages as QoS 1, which MQTT allows (SUBACK says so).
- A client that breaks the protocol or sends an oversize packet is disconnected (MQTT 5: with a
  DISCONNECT carrying the reason code first) and its Will is published; the broker carries on.
- Not supported, refused cleanly: shared subscriptions (`$share/…`, SUBACK failure), MQTT 5
  topic aliases from clients (protocol error: the broker advertises none), enhanced
  authentication (CONNACK "bad authentication method"). Username and password are accepted and
  ignored. Nothing is persisted to disk: a stopped broker forgets everything.
- Limits: packets up to 256 KiB (larger ones end the sender's connection; an MQTT 5 client's own
  Maximum Packet Size is respected when sending to it), 10,000 queued QoS 1 messages per offline
  session and 10,000 retained topics (beyond: dropped, with a warning), a client's Receive Maximum
  bounds its unacknowledged messages, and a client more than 8 MiB behind is disconnected.
  QoS 0 messages are not queued for offline sessions (as Mosquitto's default).
- Times that belong to messages and sessions (message expiry, session expiry) follow the injectable
  `clock`; the keep-alive timeout and the MQTT 5 Will Delay Interval use the event loop's timers.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Self

from kiosk import logs
from kiosk.demo import mqtt_wire as wire
from kiosk.errors import KioskError

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

log = logs.get("broker")

MAX_PACKET_SIZE = 256 * 1024
CONNECT_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
# A subscriber this far behind (bytes not yet taken by its socket) is disconnected rather than
# letting the broker's memory grow; its persistent session keeps the unacknowledged messages.
MAX_WRITE_BUFFER = 8 * 1024 * 1024
MAX_QUEUED_MESSAGES = 10_000
MAX_RETAINED_MESSAGES = 10_000
NEVER_EXPIRES = 0xFFFFFFFF
MAX_PACKET_ID = 0xFFFF

_TAKEN_OVER = 0x8E


class EmbeddedBrokerError(KioskError):
    """The embedded broker could not start (the port is taken, for instance)."""


@dataclass(frozen=True, slots=True)
class _Message:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    forwarded: bytes  # MQTT 5 properties passed on unchanged (already encoded)
    expires_at: float | None  # on the broker's clock; None: never


@dataclass(frozen=True, slots=True)
class _Delivery:
    message: _Message
    qos: int
    retain: bool
    subscription_ids: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class _Subscription:
    qos: int
    no_local: bool = False
    retain_as_published: bool = False
    subscription_id: int | None = None


@dataclass(frozen=True, slots=True)
class _Will:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    forwarded: bytes
    expiry_interval: int  # seconds, 0: never; counted from the moment the Will is published
    delay: int


@dataclass(slots=True, eq=False)
class _Session:
    client_id: str
    expiry_interval: int
    subscriptions: dict[str, _Subscription] = field(default_factory=dict)
    inflight: dict[int, _Delivery] = field(default_factory=dict)  # sent, not yet PUBACKed
    queue: deque[_Delivery] = field(default_factory=deque)  # not yet sent
    awaiting_release: set[int] = field(default_factory=set)  # inbound QoS 2, PUBREL pending
    connection: _Connection | None = None
    disconnected_at: float = 0.0
    last_packet_id: int = 0
    pending_will: _Will | None = None
    will_timer: asyncio.TimerHandle | None = None

    def next_packet_id(self) -> int:
        for _ in range(MAX_PACKET_ID):
            self.last_packet_id = self.last_packet_id % MAX_PACKET_ID + 1
            if self.last_packet_id not in self.inflight:
                return self.last_packet_id
        raise AssertionError("no free packet id")  # the in-flight window is far smaller


class EmbeddedBroker:
    """An in-process MQTT 3.1.1/5 broker on a loopback port (0: any free port).

    Args:
        host: the address to listen on; keep it on loopback.
        port: the TCP port, 0 for a free one (read `.port` after start).
        clock: monotonic seconds for message and session expiry (tests pass a fake one).
        max_packet_size: larger packets end the sender's connection.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_packet_size: int = MAX_PACKET_SIZE,
    ) -> None:
        self.host = host
        self._port = port
        self.clock = clock
        self.max_packet_size = max_packet_size
        self._server: asyncio.Server | None = None
        self._sessions: dict[str, _Session] = {}
        self._retained: dict[str, _Message] = {}
        self._connections: set[_Connection] = set()
        self._stopping = False
        # Unexpected exceptions while serving a client (bugs); stays 0 in a healthy broker.
        self.internal_errors = 0

    @property
    def port(self) -> int:
        """The port it listens on (the real one once started)."""
        return self._port

    @property
    def url(self) -> str:
        """The broker's URL for kiosk's `mqtt.url`."""
        return f"mqtt://{self.host}:{self._port}"

    async def start(self) -> Self:
        """Listen and serve clients in the background of the running event loop."""
        if self._server is not None:
            return self
        self._stopping = False
        try:
            self._server = await asyncio.start_server(self._serve, self.host, self._port)
        except OSError as exc:
            raise EmbeddedBrokerError(
                f"the embedded MQTT broker cannot listen on {self.host}:{self._port} ({exc})"
            ) from exc
        self._port = int(self._server.sockets[0].getsockname()[1])
        log.debug("broker.started", url=self.url)
        return self

    async def stop(self) -> None:
        """Close every connection and stop listening; sessions and retained messages are dropped."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping = True
        server.close()
        tasks = []
        for conn in list(self._connections):
            # An aborted connection ends its own read loop; cancelling is only the fallback
            # (on 3.11, asyncio.streams logs an error for a cancelled connection task).
            conn.abort()
            if conn.task is not None:
                tasks.append(conn.task)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=STOP_TIMEOUT_S)
            for task in pending:
                task.cancel()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await server.wait_closed()
        for session in self._sessions.values():
            if session.will_timer is not None:
                session.will_timer.cancel()
        self._sessions.clear()
        self._retained.clear()
        log.debug("broker.stopped", url=self.url)

    def start_in_thread(self) -> BrokerThread:
        """Run this broker on its own event loop in a daemon thread (for synchronous callers)."""
        return BrokerThread(self).start()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- connections ------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Connection(self, reader, writer)
        conn.task = asyncio.current_task()
        self._connections.add(conn)
        try:
            await conn.serve()
        except Exception:
            # A bug, not a client's fault: one client's trouble must not end the demo. Counted so
            # the tests see it; the client is cut off.
            self.internal_errors += 1
            log.exception("broker.internal_error")
            conn.abort()
        finally:
            self._connections.discard(conn)
            self._closed(conn)

    def _attach(self, conn: _Connection, client_id: str, *, clean: bool, expiry: int) -> bool:
        """Bind a newly connected client to its session; True when an old session was resumed."""
        self._sweep_expired()
        session = self._sessions.get(client_id)
        if session is not None and session.connection is not None:
            old = session.connection
            log.info("broker.session_taken_over", client_id=client_id)
            will = old.take_over()
            session.connection = None
            session.disconnected_at = self.clock()
            if will is not None and (will.delay == 0 or clean or session.expiry_interval == 0):
                self._publish_will(will)
        if session is not None and session.will_timer is not None:
            # Back before the Will Delay Interval ran out: the Will is not sent.
            session.will_timer.cancel()
            session.will_timer = None
            session.pending_will = None
        resumed = session is not None and not clean and session.expiry_interval != 0
        if session is not None and not resumed:
            self._end_session(session)
            session = None
        if session is None:
            session = _Session(client_id, expiry)
            self._sessions[client_id] = session
        session.expiry_interval = expiry
        session.connection = conn
        conn.session = session
        return resumed

    def _closed(self, conn: _Connection) -> None:
        """A connection ended: detach its session, publish its Will if it did not say goodbye."""
        session = conn.session
        if conn.replaced or session is None or session.connection is not conn:
            return
        session.connection = None
        session.disconnected_at = self.clock()
        will, conn.will = conn.will, None
        if self._stopping:
            return
        log.debug("broker.client_disconnected", client_id=session.client_id, will=will is not None)
        if session.expiry_interval == 0:
            self._sessions.pop(session.client_id, None)
        if will is None:
            return
        if will.delay and session.expiry_interval:
            delay = min(will.delay, session.expiry_interval)
            session.pending_will = will
            session.will_timer = asyncio.get_running_loop().call_later(delay, self._fire_pending_will, session)
        else:
            self._publish_will(will)

    def _fire_pending_will(self, session: _Session) -> None:
        will, session.pending_will, session.will_timer = session.pending_will, None, None
        if will is not None:
            self._publish_will(will)

    def _end_session(self, session: _Session) -> None:
        if session.will_timer is not None:
            session.will_timer.cancel()
            session.will_timer = None
        self._fire_pending_will(session)
        if self._sessions.get(session.client_id) is session:
            del self._sessions[session.client_id]

    def _expired(self, session: _Session) -> bool:
        return (
            session.connection is None
            and session.expiry_interval != NEVER_EXPIRES
            and self.clock() >= session.disconnected_at + session.expiry_interval
        )

    def _sweep_expired(self) -> None:
        for session in [s for s in self._sessions.values() if self._expired(s)]:
            log.debug("broker.session_expired", client_id=session.client_id)
            self._end_session(session)

    # -- routing ----------------------------------------------------------------------------

    def _publish_will(self, will: _Will) -> None:
        expires_at = self.clock() + will.expiry_interval if will.expiry_interval else None
        message = _Message(will.topic, will.payload, will.qos, will.retain, will.forwarded, expires_at)
        log.debug("broker.will_published", topic=will.topic)
        self.publish(message, sender=None)

    def publish(self, message: _Message, sender: str | None) -> None:
        """Keep a retained message and pass a message on to every matching subscription."""
        if message.retain:
            if not message.payload:
                self._retained.pop(message.topic, None)
            elif message.topic in self._retained or len(self._retained) < MAX_RETAINED_MESSAGES:
                self._retained[message.topic] = message
            else:
                log.warning("broker.retained_dropped", topic=message.topic)
        for session in list(self._sessions.values()):
            if self._expired(session):
                self._end_session(session)
                continue
            delivery = _match(session, message, sender)
            if delivery is not None:
                self._deliver(session, delivery)

    def _deliver(self, session: _Session, delivery: _Delivery) -> None:
        conn = _live(session)
        if delivery.qos == 0:
            if conn is not None:
                conn.send_publish(delivery, 0)
            return
        if conn is not None and not session.queue and len(session.inflight) < conn.receive_max:
            self._send_tracked(session, conn, delivery)
        elif len(session.queue) < MAX_QUEUED_MESSAGES:
            session.queue.append(delivery)
        else:
            log.warning("broker.queue_full", client_id=session.client_id, topic=delivery.message.topic)

    def _send_tracked(self, session: _Session, conn: _Connection, delivery: _Delivery) -> None:
        packet_id = session.next_packet_id()
        # Tracked once written: if the connection then fails, the reconnect re-sends it.
        if conn.send_publish(delivery, packet_id):
            session.inflight[packet_id] = delivery

    def _pump(self, session: _Session) -> None:
        """Send queued messages while the client's receive window allows."""
        conn = _live(session)
        while conn is not None and session.queue and len(session.inflight) < conn.receive_max:
            delivery = session.queue.popleft()
            expires_at = delivery.message.expires_at
            if expires_at is not None and expires_at <= self.clock():
                continue
            self._send_tracked(session, conn, delivery)
            conn = _live(session)  # a write can end a slow connection

    def _resume(self, session: _Session) -> None:
        """Re-send what the client never acknowledged (DUP set), then what waited for it."""
        for packet_id, delivery in list(session.inflight.items()):
            conn = _live(session)
            if conn is None:
                return
            conn.send_publish(delivery, packet_id, dup=True)
        self._pump(session)

    def _acknowledged(self, session: _Session, packet_id: int) -> None:
        if session.inflight.pop(packet_id, None) is not None:
            self._pump(session)

    def _send_retained(self, session: _Session, topic_filter: str, sub: _Subscription) -> None:
        now = self.clock()
        for topic, message in list(self._retained.items()):
            if message.expires_at is not None and message.expires_at <= now:
                del self._retained[topic]
                continue
            if wire.topic_matches(topic_filter, topic):
                ids = () if sub.subscription_id is None else (sub.subscription_id,)
                self._deliver(
                    session,
                    _Delivery(message, min(message.qos, sub.qos), retain=True, subscription_ids=ids),
                )


def _match(session: _Session, message: _Message, sender: str | None) -> _Delivery | None:
    """What the session's subscriptions make of a message: one delivery at the highest QoS."""
    qos = -1
    retain = False
    ids: list[int] = []
    for topic_filter, sub in session.subscriptions.items():
        if not wire.topic_matches(topic_filter, message.topic):
            continue
        if sub.no_local and session.client_id == sender:
            continue
        qos = max(qos, min(message.qos, sub.qos))
        retain = retain or (sub.retain_as_published and message.retain)
        if sub.subscription_id is not None:
            ids.append(sub.subscription_id)
    return _Delivery(message, qos, retain, tuple(ids)) if qos >= 0 else None


def _live(session: _Session) -> _Connection | None:
    """The session's connection, unless it is gone or going."""
    conn = session.connection
    return None if conn is None or conn.closing else conn


class _Connection:
    """One client's network connection: reads packets, answers them, writes deliveries."""

    def __init__(self, broker: EmbeddedBroker, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.broker = broker
        self.reader = reader
        self.writer = writer
        self.task: asyncio.Task[None] | None = None
        self.version = 4
        self.session: _Session | None = None
        self.will: _Will | None = None
        self.keepalive = 0
        self.receive_max = 65535
        self.client_max_packet: int | None = None
        self.closing = False
        self.replaced = False
        self.peer = writer.get_extra_info("peername")

    # -- output -----------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Write one packet; a client that stopped reading is cut off."""
        if self.closing:
            return
        self.writer.write(data)
        if self.writer.transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            client_id = self.session.client_id if self.session else None
            log.warning("broker.slow_client_disconnected", client_id=client_id)
            self.abort()

    def send_publish(self, delivery: _Delivery, packet_id: int, *, dup: bool = False) -> bool:
        """Write a PUBLISH; False when it is too large for this client or the connection is gone."""
        message = delivery.message
        body = bytearray(wire.string(message.topic))
        if delivery.qos:
            body += wire.u16(packet_id)
        if self.version == 5:
            props = bytearray(message.forwarded)
            if message.expires_at is not None:
                remaining = max(1, math.ceil(message.expires_at - self.broker.clock()))
                props += wire.u32_property(wire.MESSAGE_EXPIRY, remaining)
            for sub_id in delivery.subscription_ids:
                props += bytes([wire.SUBSCRIPTION_ID]) + wire.varint(sub_id)
            body += wire.property_block(bytes(props))
        body += message.payload
        first = (wire.PUBLISH << 4) | (delivery.qos << 1) | int(delivery.retain) | (dup << 3)
        data = wire.packet(first, bytes(body))
        if self.closing:
            return False
        if self.client_max_packet is not None and len(data) > self.client_max_packet:
            # MQTT 5: a message larger than the client accepts is dropped for that client.
            return False
        self.send(data)
        return True

    def abort(self) -> None:
        """Drop the connection now (the read loop then ends)."""
        self.closing = True
        self.writer.transport.abort()

    def take_over(self) -> _Will | None:
        """Another connection claimed this client id: say so (MQTT 5), close, hand back the Will."""
        if self.version == 5 and not self.closing:
            self.send(wire.packet(wire.DISCONNECT << 4, bytes([_TAKEN_OVER, 0])))
        self.replaced = True
        self.closing = True
        self.writer.close()
        will, self.will = self.will, None
        return will

    # -- input ------------------------------------------------------------------------------

    async def serve(self) -> None:
        """Read and answer packets until the client leaves or breaks the rules."""
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                first, body = await self._read_packet()
            if first >> 4 != wire.CONNECT:
                raise wire.ProtocolViolation("the first packet must be CONNECT")
            if not self._on_connect(body):
                return
            while not self.closing:
                limit = self.keepalive * 1.5 if self.keepalive else None
                async with asyncio.timeout(limit):
                    first, body = await self._read_packet()
                if self.closing or not self._on_packet(first, body):
                    return
                await self.writer.drain()
        except wire.MalformedPacketError as exc:
            log.info("broker.protocol_error", peer=self.peer, error=str(exc))
            if self.version == 5 and self.session is not None:
                self.send(wire.packet(wire.DISCONNECT << 4, bytes([exc.reason, 0])))
        except TimeoutError:
            log.info("broker.keepalive_timeout", peer=self.peer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            if not self.closing:
                self.closing = True
                self.writer.close()

    async def _read_packet(self) -> tuple[int, bytes]:
        first = (await self.reader.readexactly(1))[0]
        length = 0
        for shift in range(0, 28, 7):
            byte = (await self.reader.readexactly(1))[0]
            length |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
        else:
            raise wire.MalformedPacketError("remaining length longer than 4 bytes")
        if length > self.broker.max_packet_size:
            raise wire.PacketTooLarge(f"packet of {length} bytes")
        return first, await self.reader.readexactly(length)

    def _on_connect(self, body: bytes) -> bool:  # noqa: C901 - CONNECT has many fields
        """Handle CONNECT; False when the connection was refused."""
        c = wire.Cursor(body)
        name = c.string()
        level = c.u8()
        if (name, level) not in {("MQTT", 4), ("MQTT", 5), ("MQIsdp", 3)}:
            if name not in {"MQTT", "MQIsdp"}:
                raise wire.ProtocolViolation(f"unknown protocol {name!r}")
            self.send(wire.packet(wire.CONNACK << 4, bytes([0, 1])))  # unacceptable version
            return False
        self.version = 5 if level == 5 else 4
        flags = c.u8()
        will_qos = (flags >> 3) & 3
        if flags & 0x01 or will_qos == 3 or (not flags & 0x04 and flags & 0x38):
            raise wire.MalformedPacketError("invalid CONNECT flags")
        clean = bool(flags & 0x02)
        self.keepalive = c.u16()
        props = c.properties() if self.version == 5 else wire.Properties()
        client_id = c.string()
        if flags & 0x04:
            will_props = c.properties() if self.version == 5 else wire.Properties()
            topic = c.string()
            wire.validate_topic_name(topic)
            self.will = _Will(
                topic=topic,
                payload=c.binary(),
                qos=will_qos,
                retain=bool(flags & 0x20),
                forwarded=will_props.forwarded,
                expiry_interval=int(will_props.values.get(wire.MESSAGE_EXPIRY, 0)),
                delay=int(will_props.values.get(wire.WILL_DELAY, 0)),
            )
        if flags & 0x80:
            c.binary()  # user name: accepted and ignored on the demo's loopback broker
        if flags & 0x40:
            c.binary()  # password: likewise
        c.end()
        if wire.AUTHENTICATION_METHOD in props.values:
            self._connack(present=False, code=0x8C)  # enhanced authentication is not offered
            return False
        receive_max = int(props.values.get(wire.RECEIVE_MAXIMUM, 65535))
        client_max = props.values.get(wire.MAXIMUM_PACKET_SIZE)
        if receive_max == 0 or client_max == 0:
            raise wire.ProtocolViolation("receive maximum and maximum packet size must not be 0")
        self.receive_max = receive_max
        self.client_max_packet = None if client_max is None else int(client_max)
        # MQTT 3.1.1 has no expiry: a clean session ends with its connection, others never do.
        v311_expiry = 0 if clean else NEVER_EXPIRES
        expiry = int(props.values.get(wire.SESSION_EXPIRY, 0)) if self.version == 5 else v311_expiry
        assigned = None
        if not client_id:
            if self.version == 4 and not clean:
                self._connack(present=False, code=2)  # identifier rejected
                return False
            client_id = assigned = f"kiosk-demo-{secrets.token_hex(8)}"
        present = self.broker._attach(self, client_id, clean=clean, expiry=expiry)  # noqa: SLF001
        log.debug(
            "broker.client_connected",
            client_id=client_id,
            version=self.version,
            session_present=present,
        )
        self._connack(present=present, code=0, assigned=assigned)
        if self.session is not None:
            self.broker._resume(self.session)  # noqa: SLF001
        return True

    def _connack(self, *, present: bool, code: int, assigned: str | None = None) -> None:
        body = bytes([int(present), code])
        if self.version == 5:
            props = wire.u32_property(wire.MAXIMUM_PACKET_SIZE, self.broker.max_packet_size)
            props += bytes([wire.SHARED_SUBSCRIPTION_AVAILABLE, 0])
            if assigned is not None:
                props += bytes([wire.ASSIGNED_CLIENT_ID]) + wire.string(assigned)
            body += wire.property_block(props)
        self.send(wire.packet(wire.CONNACK << 4, body))

    def _on_packet(self, first: int, body: bytes) -> bool:
        """Handle one packet after CONNECT; False when the client disconnected."""
        kind, flags = first >> 4, first & 0x0F
        session = self.session
        assert session is not None  # noqa: S101 - set by _on_connect before any packet
        required_flags = 2 if kind in {wire.PUBREL, wire.SUBSCRIBE, wire.UNSUBSCRIBE} else 0
        if kind != wire.PUBLISH and flags != required_flags:
            raise wire.MalformedPacketError(f"invalid flags for packet type {kind}")
        c = wire.Cursor(body)
        if kind == wire.PUBLISH:
            self._on_publish(flags, c)
        elif kind == wire.PUBACK:
            self.broker._acknowledged(session, c.u16())  # noqa: SLF001 - reason code ignored
        elif kind == wire.PUBREL:
            packet_id = c.u16()
            session.awaiting_release.discard(packet_id)
            self.send(wire.packet(wire.PUBCOMP << 4, wire.u16(packet_id)))
        elif kind == wire.SUBSCRIBE:
            self._on_subscribe(c)
        elif kind == wire.UNSUBSCRIBE:
            self._on_unsubscribe(c)
        elif kind == wire.PINGREQ:
            c.end()
            self.send(wire.packet(wire.PINGRESP << 4, b""))
        elif kind == wire.DISCONNECT:
            self._on_disconnect(c)
            return False
        else:
            # CONNECT again, server-to-client packets, PUBREC/PUBCOMP for QoS 2 we never send, AUTH.
            raise wire.ProtocolViolation(f"unexpected packet type {kind}")
        return True

    def _on_publish(self, flags: int, c: wire.Cursor) -> None:
        qos = (flags >> 1) & 3
        if qos == 3 or (qos == 0 and flags & 0x08):
            raise wire.MalformedPacketError("invalid PUBLISH flags")
        topic = c.string()
        packet_id = c.u16() if qos else 0
        if qos and packet_id == 0:
            raise wire.MalformedPacketError("packet id 0")
        props = c.properties() if self.version == 5 else wire.Properties()
        if wire.TOPIC_ALIAS in props.values or props.subscription_ids:
            raise wire.ProtocolViolation("topic alias or subscription id in a client PUBLISH")
        wire.validate_topic_name(topic)
        expiry = int(props.values.get(wire.MESSAGE_EXPIRY, 0))
        expires_at = self.broker.clock() + expiry if expiry else None
        message = _Message(topic, c.rest(), qos, bool(flags & 1), props.forwarded, expires_at)
        session = self.session
        assert session is not None  # noqa: S101 - connected
        if qos == 2:
            # Exactly once: a re-sent PUBLISH whose PUBREL has not come yet is not routed again.
            if packet_id not in session.awaiting_release:
                session.awaiting_release.add(packet_id)
                self.broker.publish(message, session.client_id)
            self.send(wire.packet(wire.PUBREC << 4, wire.u16(packet_id)))
            return
        self.broker.publish(message, session.client_id)
        if qos == 1:
            self.send(wire.packet(wire.PUBACK << 4, wire.u16(packet_id)))

    def _on_subscribe(self, c: wire.Cursor) -> None:  # noqa: C901 - the options are many
        session = self.session
        assert session is not None  # noqa: S101 - connected
        packet_id = c.u16()
        props = c.properties() if self.version == 5 else wire.Properties()
        sub_id = props.subscription_ids[0] if props.subscription_ids else None
        if sub_id == 0:
            raise wire.ProtocolViolation("subscription identifier 0")
        entries: list[tuple[str, int]] = []
        while c.remaining:
            entries.append((c.string(), c.u8()))
        if not entries:
            raise wire.ProtocolViolation("SUBSCRIBE without a topic filter")
        codes = bytearray()
        retained: list[tuple[str, _Subscription]] = []
        for topic_filter, options in entries:
            qos, retain_handling = options & 3, (options >> 4) & 3
            reserved = 0xFC if self.version == 4 else 0xC0
            if options & reserved or qos == 3 or retain_handling == 3:
                raise wire.MalformedPacketError("invalid subscription options")
            if not wire.valid_topic_filter(topic_filter):
                codes.append(0x80 if self.version == 4 else 0x8F)
                continue
            if topic_filter.startswith("$share/"):
                codes.append(0x80 if self.version == 4 else 0x9E)
                continue
            sub = _Subscription(
                qos=min(qos, 1),
                no_local=bool(options & 0x04),
                retain_as_published=bool(options & 0x08),
                subscription_id=sub_id,
            )
            existed = topic_filter in session.subscriptions
            session.subscriptions[topic_filter] = sub
            codes.append(sub.qos)
            if retain_handling == 0 or (retain_handling == 1 and not existed):
                retained.append((topic_filter, sub))
        body = wire.u16(packet_id)
        if self.version == 5:
            body += wire.property_block(b"")
        self.send(wire.packet(wire.SUBACK << 4, body + bytes(codes)))
        for topic_filter, sub in retained:
            self.broker._send_retained(session, topic_filter, sub)  # noqa: SLF001

    def _on_unsubscribe(self, c: wire.Cursor) -> None:
        session = self.session
        assert session is not None  # noqa: S101 - connected
        packet_id = c.u16()
        if self.version == 5:
            c.properties()
        codes = bytearray()
        while c.remaining:
            found = session.subscriptions.pop(c.string(), None) is not None
            codes.append(0x00 if found else 0x11)
        if not codes:
            raise wire.ProtocolViolation("UNSUBSCRIBE without a topic filter")
        body = wire.u16(packet_id)
        if self.version == 5:
            body += wire.property_block(b"") + bytes(codes)
        self.send(wire.packet(wire.UNSUBACK << 4, body))

    def _on_disconnect(self, c: wire.Cursor) -> None:
        session = self.session
        assert session is not None  # noqa: S101 - connected
        reason = 0
        if self.version == 5 and c.remaining:
            reason = c.u8()
            if c.remaining:
                props = c.properties()
                expiry = props.values.get(wire.SESSION_EXPIRY)
                if expiry is not None:
                    if session.expiry_interval == 0 and expiry != 0:
                        raise wire.ProtocolViolation("session expiry raised from 0 at DISCONNECT")
                    session.expiry_interval = int(expiry)
        c.end()
        if reason != 0x04:  # 0x04: "disconnect with Will message"
            self.will = None


class BrokerThread:
    """An `EmbeddedBroker` running on its own event loop in a daemon thread."""

    _counter = itertools.count(1)

    def __init__(self, broker: EmbeddedBroker) -> None:
        self.broker = broker
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name=f"kiosk-demo-broker-{next(self._counter)}", daemon=True)

    @property
    def url(self) -> str:
        """The broker's URL."""
        return self.broker.url

    @property
    def port(self) -> int:
        """The broker's port."""
        return self.broker.port

    def start(self) -> Self:
        """Start the thread and wait until the broker listens."""
        self._thread.start()
        if not self._ready.wait(CONNECT_TIMEOUT_S):
            raise EmbeddedBrokerError("the embedded MQTT broker did not start in time")
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        """Stop the broker and wait for its thread to end."""
        loop, stop_event = self._loop, self._stop_event
        if loop is not None and stop_event is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(stop_event.set)
        self._thread.join(STOP_TIMEOUT_S * 2)

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # noqa: BLE001 - handed to the starting thread
            self._error = exc
        finally:
            self._ready.set()

    async def _run(self) -> None:
        self._stop_event = asyncio.Event()
        async with self.broker:
            self._loop = asyncio.get_running_loop()
            self._ready.set()
            await self._stop_event.wait()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
