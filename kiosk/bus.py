"""The MQTT bus: one persistent broker session that survives restarts of kiosk and of the broker.

House rules of the adapter:
- One fixed client id and a persistent session (MQTT 3.1.1 `clean_session=False`; MQTT 5
  `clean_start=False` with a non-zero session expiry), so orders published while kiosk is down
  wait for it at the broker.
- The broker's delivery of a message is acknowledged only when the runner calls
  `Incoming.ack()`, after its journal commit. A message that was never acknowledged comes back
  after a crash or reconnect (so the runner may see it twice); the runner dedupes on the
  envelope `id`. Every delivery must be acknowledged once handled, rejected ones included: the
  broker stops sending when its in-flight window is full of unacknowledged messages.
- Every connection gets a fresh aiomqtt client. Packet ids (mids) belong to one connection, so an
  acknowledgement for a message of an older connection is dropped, never sent on the new one
  where that mid may name a different message.
- The incoming queue is unbounded; the broker's in-flight window (Mosquitto: 20 unacknowledged
  QoS 1 messages per client) is the back-pressure.
- A connection loop with jittered exponential backoff runs for as long as the bus is open.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import random
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal, Self

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from kiosk import logs
from kiosk.errors import BusUnavailable, ConfigError

if TYPE_CHECKING:
    from types import TracebackType

    from kiosk.settings import MqttSettings

log = logs.get("bus")

# How long the broker keeps an MQTT 5 session (subscriptions and queued QoS 1 messages) while
# kiosk is away: long enough for a reboot, an update or a night without power; bounded so orders
# from days ago do not pile up for a kiosk id that was retired.
SESSION_EXPIRY_S: Final = 24 * 3600
# Every subscription is QoS 1: at-least-once is what the journal's dedupe is built for.
SUBSCRIBE_QOS: Final = 1

Hook = Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Publication:
    """A message to publish (also the shape of the MQTT Will)."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False
    expiry_s: int | None = None


@dataclass(slots=True, eq=False)
class _Receipt:
    """What acknowledging one delivery needs; settled at most once."""

    link: _Link
    mid: int
    qos: int
    settled: bool = False

    def settle(self) -> None:
        if self.settled:
            # A second PUBACK for the same mid could acknowledge a later message that reused it.
            return
        self.settled = True
        self.link.ack(self.mid, self.qos)


@dataclass(frozen=True, slots=True)
class Incoming:
    """One delivery from the broker; call `ack()` once it is durably handled."""

    topic: str
    payload: bytes
    retain: bool
    qos: int
    _receipt: _Receipt = field(repr=False, compare=False)

    def ack(self) -> None:
        """Acknowledge the delivery to the broker (idempotent; a no-op once its connection is gone).

        After the connection that delivered it is gone, the broker redelivers the message on the
        next one instead, and the runner sees it again.
        """
        self._receipt.settle()


class _Paho:
    """The one place kiosk reaches into aiomqtt's privates: the paho client underneath.

    Manual acknowledgement: aiomqtt 2.x acknowledges a message as soon as it is queued in memory,
    so a crash before the journal commit loses it. Manual acks are not public API in 2.x
    (upstream aiomqtt #345, PR #346); the paho client supports them.

    Hanging up: aiomqtt 2.x leaves the socket open when a connect attempt fails after TCP
    connected (no CONNACK in time, or cancelled). Drop both uses when aiomqtt grows them.

    Writing: see `write_soon`. It replaces one paho callback that aiomqtt installs, and keeps
    aiomqtt's own for the cases it does not handle itself.
    """

    def __init__(self, client: aiomqtt.Client) -> None:
        self._paho: paho.Client = client._client  # noqa: SLF001 - see the class docstring
        # Before connecting: a resumed session's queued messages arrive right after CONNACK.
        self._paho.manual_ack_set(True)  # noqa: FBT003 - paho's signature

    def ack(self, mid: int, qos: int) -> bool:
        """Send PUBACK for `mid`; whether paho queued it."""
        return self._paho.ack(mid, qos) == paho.MQTT_ERR_SUCCESS

    def no_delay(self) -> None:
        """Send each packet at once (TCP_NODELAY) instead of holding it for the previous one's ACK.

        With Nagle's algorithm on, a PUBACK or status written while an earlier packet is still
        unacknowledged waits for the broker's delayed ACK: about 40 ms per hop on Linux, measured
        by bench/orders.py. MQTT packets are small and each one matters now.
        """
        sock = self._paho.socket()
        if isinstance(sock, socket.socket):  # ssl.SSLSocket too; a websocket wrapper is left alone
            with contextlib.suppress(OSError):  # a unix socket has no Nagle
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def write_soon(self) -> None:
        """Write each queued packet at the loop's next turn, without first watching the socket.

        aiomqtt 2.x answers paho's "a packet is queued" by asking the loop, from any thread, to
        watch the socket for room (`call_soon_threadsafe(add_writer)`), and stops watching once
        the packet is out. Per packet that is a wake of the loop through its self-pipe (a write
        and a read), two `epoll_ctl` calls and one more turn of the loop, for a socket that nearly
        always has room: 34 of the 677 system calls of a sale (bench/RESULTS.md). On the loop's
        own thread, kiosk writes at the next turn instead; packets queued in the same turn go out
        together. aiomqtt's watch still serves the rest: a packet queued on another thread (paho
        connects in a worker thread) and a full socket buffer (paho keeps the rest until there is
        room).

        Call on the loop's thread, before connecting.
        """
        client = self._paho
        watch = client.on_socket_register_write  # aiomqtt's
        if watch is None:  # aiomqtt always installs it; without it there is nothing to speed up
            return
        loop = asyncio.get_running_loop()
        home = threading.get_ident()

        def write(userdata: Any, sock: paho.SocketLike) -> None:
            if client.socket() is not sock:
                return  # closed meanwhile: nothing more goes out on it
            try:
                client.loop_write()
            except Exception as exc:  # noqa: BLE001 - aiomqtt's own writer would end the connection too
                # paho reports a lost socket as a return code; this is anything else. End the
                # connection, so the reader sees it close and the bus reconnects, as it would
                # after any loss: a packet stuck in paho's queue would leave publishes hanging.
                log.warning("bus.write_failed", error=f"{type(exc).__name__}: {exc}")
                if isinstance(sock, socket.socket):  # ssl.SSLSocket too
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                return
            if client.socket() is sock and client.want_write():
                watch(client, userdata, sock)  # the buffer is full: aiomqtt waits for room

        def queued(_client: paho.Client, userdata: Any, sock: paho.SocketLike) -> None:
            if threading.get_ident() == home:
                loop.call_soon(write, userdata, sock)
            else:
                watch(client, userdata, sock)

        client.on_socket_register_write = queued

    def hang_up(self) -> None:
        """Close whatever a failed attempt left open (paho sends DISCONNECT, then closes)."""
        if self._paho.socket() is not None:
            self._paho.disconnect()


class _Link:
    """One live connection: its client, its acks, and the publishes waiting on it."""

    def __init__(self, client: aiomqtt.Client, acks: _Paho, number: int) -> None:
        self.client = client
        self.number = number
        self.up = True
        self._acks = acks
        self._waits: set[asyncio.Timeout] = set()

    def ack(self, mid: int, qos: int) -> None:
        if qos == 0:
            return
        if not self.up:
            log.debug("bus.ack_dropped", mid=mid, connection=self.number, reason="connection gone")
            return
        if not self._acks.ack(mid, qos):
            log.debug("bus.ack_dropped", mid=mid, connection=self.number, reason="not queued")

    @contextlib.contextmanager
    def wait(self, deadline: asyncio.Timeout) -> Iterator[None]:
        """Make `deadline` expire at once if the connection is lost meanwhile."""
        if not self.up:
            deadline.reschedule(asyncio.get_running_loop().time())
        self._waits.add(deadline)
        try:
            yield
        finally:
            self._waits.discard(deadline)

    def lose(self) -> None:
        """Mark the connection gone: pending publishes fail now instead of at their deadline."""
        self.up = False
        now = asyncio.get_running_loop().time()
        for deadline in self._waits:
            deadline.reschedule(now)


_CLOSED: Final = object()


@functools.lru_cache(maxsize=16)
def _expiry_properties(expiry_s: int) -> Properties:
    """The PUBLISH properties for one expiry, built once: paho only reads them (packs them) per publish."""
    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    properties.MessageExpiryInterval = expiry_s
    return properties


def backoff_delay(attempt: int, *, initial_s: float, max_s: float, rng: random.Random) -> float:
    """Seconds to wait before reconnect attempt `attempt` (0-based): equal-jitter exponential.

    Half the window is fixed so retries never bunch at zero; the other half spreads a fleet of
    kiosks that lost the same broker at the same moment.
    """
    window = min(max_s, initial_s * 2.0 ** min(attempt, 32))
    return window / 2 + rng.uniform(0, window / 2)


def tls_context(settings: MqttSettings) -> ssl.SSLContext | None:
    """The TLS context for an mqtts:// URL (CA and optional client certificate), else None.

    Raises:
        ConfigError: when a certificate or key file cannot be used.
    """
    if not settings.tls:
        return None
    try:
        context = ssl.create_default_context(cafile=str(settings.ca_file) if settings.ca_file is not None else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError([f"mqtt.ca_file: cannot be used ({exc}); point it at a PEM CA bundle"]) from None
    if settings.cert_file is not None:
        try:
            context.load_cert_chain(
                str(settings.cert_file),
                str(settings.key_file) if settings.key_file is not None else None,
            )
        except (OSError, ssl.SSLError) as exc:
            problem = f"mqtt.cert_file: unusable with its key ({exc}); give PEM certificate and key"
            raise ConfigError([problem]) from None
    elif settings.key_file is not None:
        raise ConfigError(["mqtt.key_file: is set without mqtt.cert_file; set both or neither"])
    return context


def describe_broker(settings: MqttSettings) -> str:
    """The broker's address for logs: never credentials."""
    if settings.unix_path is not None:
        return f"unix://{settings.unix_path}"
    return f"{'mqtts' if settings.tls else 'mqtt'}://{settings.host}:{settings.port}"


class Bus:
    """kiosk's connection to the MQTT broker; `async with` it to run the connection loop.

    Args:
        settings: the broker URL, credentials, TLS files and keep-alive.
        client_id: the fixed client id that names the persistent session.
        will: published by the broker (retained) when kiosk disappears without saying goodbye.
        subscriptions: topic filters, subscribed at QoS 1 after every connect.
        on_connect: awaited after each connect and subscribe (republish state, flush the outbox);
            runs beside message delivery; after a loss it gets request_timeout_s to finish (its
            publishes fail fast with BusUnavailable) before it is cancelled and `on_disconnect`
            runs. Anything else it raises is logged, and the bus carries on.
        on_disconnect: awaited after a connection is lost (not when the bus is closed).
        protocol: 5 for MQTT 5, 4 for MQTT 3.1.1.
        backoff_initial_s: the first reconnect delay window.
        backoff_max_s: the largest reconnect delay window; a connection that lasted this long
            resets the backoff.
        request_timeout_s: deadline for CONNACK, SUBACK, PUBACK and a graceful disconnect.
        rng: randomness for the backoff jitter.
        sleep: how to wait between attempts (tests pass a fake).
        clock: monotonic seconds (tests pass a fake).

    Attributes:
        reconnects: connections made after the first (for the fleet health report).
    """

    def __init__(  # noqa: PLR0913 - every knob is a documented setting or a test seam
        self,
        settings: MqttSettings,
        *,
        client_id: str,
        will: Publication | None = None,
        subscriptions: Sequence[str] = (),
        on_connect: Hook | None = None,
        on_disconnect: Hook | None = None,
        protocol: Literal[4, 5] = 5,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        request_timeout_s: float = 10.0,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if protocol not in {4, 5}:
            raise ValueError("protocol must be 5 (MQTT 5) or 4 (MQTT 3.1.1)")
        if not 0 < backoff_initial_s <= backoff_max_s:
            raise ValueError("backoff needs 0 < backoff_initial_s <= backoff_max_s")
        self._settings = settings
        self._client_id = client_id
        self._will = will
        self._subscriptions = tuple(subscriptions)
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._protocol = protocol
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._timeout_s = request_timeout_s
        self._rng = rng if rng is not None else random.Random()
        self._sleep = sleep
        self._clock = clock
        self._broker = describe_broker(settings)
        self._tls: ssl.SSLContext | None = None
        self._link: _Link | None = None
        self._up = asyncio.Event()
        self._queue: asyncio.Queue[Incoming | object] = asyncio.Queue()  # unbounded on purpose
        self._task: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self.reconnects = 0

    # -- public surface ------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether a connection is up and subscribed."""
        return self._link is not None and self._link.up

    async def wait_connected(self) -> None:
        """Return once the bus is connected (wrap in `asyncio.timeout` to bound it)."""
        await self._up.wait()

    def messages(self) -> AsyncIterator[Incoming]:
        """Deliveries from every subscription, in arrival order; ends when the bus is closed.

        One consumer at a time. Raises BusUnavailable if the connection loop died of a bug.
        """
        return _Messages(self)

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        expiry_s: int | None = None,
    ) -> None:
        """Publish and, for QoS 1, return once the broker's PUBACK arrived.

        `expiry_s` is the MQTT 5 message expiry (ignored on MQTT 3.1.1). PUBACK means "reached
        the broker", not "processed": MQTT 5 refusal reason codes are not surfaced by aiomqtt 2.x.

        Raises:
            BusUnavailable: not connected, the connection was lost, or no PUBACK in time.
        """
        link = self._link
        if link is None or not link.up:
            raise BusUnavailable(f"not connected to the MQTT broker; cannot publish to {topic}")
        properties = self._publish_properties(expiry_s)
        try:
            async with asyncio.timeout(self._timeout_s) as deadline:
                with link.wait(deadline):
                    # aiomqtt's own timeout off: ours also fires when the connection is lost.
                    await link.client.publish(
                        topic,
                        payload,
                        qos=qos,
                        retain=retain,
                        properties=properties,
                        timeout=math.inf,
                    )
        except TimeoutError:
            if not link.up:
                raise BusUnavailable(f"connection lost while publishing to {topic}") from None
            raise BusUnavailable(f"no PUBACK for {topic} within {self._timeout_s:g} s") from None
        except aiomqtt.MqttError as exc:
            raise BusUnavailable(f"publish to {topic} failed: {exc}") from exc

    async def publish_message(self, publication: Publication) -> None:
        """`publish` for a prepared Publication."""
        await self.publish(
            publication.topic,
            publication.payload,
            qos=publication.qos,
            retain=publication.retain,
            expiry_s=publication.expiry_s,
        )

    async def __aenter__(self) -> Self:
        if self._task is not None:
            raise RuntimeError("a Bus is entered once; make a new one")
        # Reading certificate files blocks; a bad file is a configuration error, found at start.
        self._tls = await asyncio.to_thread(tls_context, self._settings)
        self._task = asyncio.create_task(self._run(), name="kiosk-bus")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task = self._task
        if task is None or task.done():
            return
        task.cancel()
        # Bounded inside the task: a connect attempt in flight (TCP 5 s, then CONNACK) and the
        # graceful DISCONNECT (no Will) each wait at most request_timeout_s.
        bound = 2 * self._timeout_s + 6
        done, _ = await asyncio.wait({task}, timeout=bound)
        if not done:
            log.warning("bus.close_timeout", timeout_s=bound)

    # -- the connection loop ---------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._loop()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._failure = exc
            log.exception("bus.crashed")
            raise
        finally:
            self._link = None
            self._up.clear()
            self._queue.put_nowait(_CLOSED)

    async def _loop(self) -> None:
        attempt = 0
        number = 0
        while True:
            number += 1
            client = self._client()
            acks = _Paho(client)
            acks.write_soon()
            link: _Link | None = None
            connected_at: float | None = None
            reason = "connection ended"
            try:
                await self._open(client, acks)
                acks.no_delay()
                try:
                    link = _Link(client, acks, number)
                    await self._subscribe(client)
                    connected_at = self._clock()
                    await self._serve(link)
                except BaseException as exc:
                    await client.__aexit__(type(exc), exc, exc.__traceback__)
                    raise
            except aiomqtt.MqttError as exc:
                if (task := asyncio.current_task()) is not None and task.cancelling():
                    # A graceful disconnect that failed while closing: closing still wins.
                    raise asyncio.CancelledError from exc
                # aiomqtt wraps the loss in "Disconnected during message iteration"; say why.
                cause = exc.__cause__ if exc.__cause__ is not None else exc
                reason = str(cause) or type(cause).__name__
            if link is not None and connected_at is not None:
                self._lose(link, reason)
                await self._call(self._on_disconnect, "on_disconnect")
                if self._clock() - connected_at >= self._backoff_max_s:
                    attempt = 0
            delay = backoff_delay(attempt, initial_s=self._backoff_initial_s, max_s=self._backoff_max_s, rng=self._rng)
            log.info(
                "bus.reconnecting",
                broker=self._broker,
                delay_s=round(delay, 3),
                attempt=attempt + 1,
                reason=reason,
            )
            attempt += 1
            await self._sleep(delay)

    async def _open(self, client: aiomqtt.Client, acks: _Paho) -> None:
        """Connect, leaving no half-open connection behind when the attempt fails or is cancelled."""
        attempt = asyncio.ensure_future(client.__aenter__())
        try:
            await asyncio.shield(attempt)
        except asyncio.CancelledError:
            # Closing mid-connect: paho may still be connecting in a worker thread, so let the
            # attempt end (bounded by its timeouts), then hang up, and go on closing.
            await asyncio.wait({attempt})
            if attempt.cancelled() or attempt.exception() is not None:
                acks.hang_up()
            else:
                await client.__aexit__(None, None, None)
            raise
        except aiomqtt.MqttError:
            acks.hang_up()
            raise

    async def _serve(self, link: _Link) -> None:
        """Deliver messages until the connection ends; run on_connect beside it."""
        self._link = link
        self._up.set()
        if link.number > 1:
            self.reconnects += 1
        log.info(
            "bus.connected",
            broker=self._broker,
            client_id=self._client_id,
            protocol=self._protocol_name,
        )
        hook = asyncio.create_task(self._call(self._on_connect, "on_connect"), name="kiosk-bus-on-connect")
        try:
            async for message in link.client.messages:
                payload = message.payload
                self._queue.put_nowait(
                    Incoming(
                        topic=message.topic.value,
                        payload=payload if isinstance(payload, bytes) else bytes(str(payload), "utf-8"),
                        retain=message.retain,
                        qos=message.qos,
                        _receipt=_Receipt(link, message.mid, message.qos),
                    )
                )
        finally:
            # Lost or closing: publishes waiting on this connection fail now, and on_connect
            # (whose publishes therefore end quickly) finishes before on_disconnect runs.
            link.lose()
            self._up.clear()
            if (task := asyncio.current_task()) is not None and task.cancelling():
                hook.cancel()
            try:
                done, _ = await asyncio.wait({hook}, timeout=self._timeout_s)
                if not done:
                    log.warning("bus.hook_cancelled", hook="on_connect", waited_s=self._timeout_s)
                    hook.cancel()
                    await asyncio.wait({hook})
            except asyncio.CancelledError:
                hook.cancel()
                raise

    def _lose(self, link: _Link, reason: str) -> None:
        link.lose()
        if self._link is link:
            self._link = None
        self._up.clear()
        log.warning("bus.disconnected", broker=self._broker, reason=reason, connection=link.number)

    async def _subscribe(self, client: aiomqtt.Client) -> None:
        if not self._subscriptions:
            return
        topics: list[tuple[str, SubscribeOptions]] | list[tuple[str, int]]
        if self._protocol == 5:
            topics = [(t, SubscribeOptions(qos=SUBSCRIBE_QOS)) for t in self._subscriptions]
        else:
            topics = [(t, SUBSCRIBE_QOS) for t in self._subscriptions]
        codes: Sequence[int | ReasonCode] = await client.subscribe(topics, timeout=self._timeout_s)
        for topic, code in zip(self._subscriptions, codes, strict=False):
            value = int(code.value) if isinstance(code, ReasonCode) else code
            if value >= 0x80:
                # Retrying will not help (an ACL or a bad filter): say so loudly and carry on.
                log.error("bus.subscribe_refused", topic=topic, code=value)

    async def _call(self, hook: Hook | None, name: str) -> None:
        if hook is None:
            return
        try:
            await hook()
        except BusUnavailable as exc:
            log.info("bus.hook_interrupted", hook=name, reason=str(exc))
        except Exception:  # the runner's bug must not stop the bus; log.exception records it
            log.exception("bus.hook_failed", hook=name)

    # -- building a client -----------------------------------------------------------------------

    @property
    def _protocol_name(self) -> str:
        return "5" if self._protocol == 5 else "3.1.1"

    def _publish_properties(self, expiry_s: int | None) -> Properties | None:
        if expiry_s is None or self._protocol != 5:
            return None
        if expiry_s <= 0:
            raise ValueError("expiry_s must be a positive number of seconds")
        return _expiry_properties(int(expiry_s))

    def _client(self) -> aiomqtt.Client:
        settings = self._settings
        v5 = self._protocol == 5
        connect_properties: Properties | None = None
        if v5:
            connect_properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            # With 0 the broker ends the session when the connection drops.
            connect_properties.SessionExpiryInterval = SESSION_EXPIRY_S
        will = None
        if self._will is not None:
            will = aiomqtt.Will(self._will.topic, self._will.payload, qos=self._will.qos, retain=self._will.retain)
        unix_path = settings.unix_path
        return aiomqtt.Client(
            unix_path if unix_path is not None else settings.host,
            settings.port,
            username=settings.username,
            password=settings.password.get_secret_value() if settings.password is not None else None,
            identifier=self._client_id,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            will=will,
            # MQTT 3.1.1 persistent session; paho refuses clean_session on MQTT 5.
            clean_session=None if v5 else False,
            clean_start=False if v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
            properties=connect_properties,
            transport="unix" if unix_path is not None else "tcp",
            timeout=self._timeout_s,
            keepalive=settings.keepalive_s,
            tls_context=self._tls,
        )


class _Messages:
    """Iterator over a bus's deliveries."""

    def __init__(self, bus: Bus) -> None:
        self._bus = bus

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Incoming:
        item = await self._bus._queue.get()  # noqa: SLF001 - the bus's own iterator
        if isinstance(item, Incoming):
            return item
        # Closed: leave the marker for any other iterator, then end (or report the crash).
        self._bus._queue.put_nowait(_CLOSED)  # noqa: SLF001
        failure = self._bus._failure  # noqa: SLF001
        if failure is not None:
            raise BusUnavailable(f"the MQTT connection loop stopped: {failure!r}") from failure
        raise StopAsyncIteration
