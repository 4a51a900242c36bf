"""The MQTT bus adapter against a real Mosquitto: persistent sessions, manual acks, reconnects."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import random
import selectors
import signal
import socket
import sys
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import aiomqtt
import pytest
from structlog.testing import capture_logs

from kiosk.bus import Bus, Incoming, Publication, backoff_delay, tls_context
from kiosk.errors import BusUnavailable, ConfigError
from kiosk.mosquitto import Mosquitto, free_port
from kiosk.settings import MqttSettings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

WAIT_S = 10
VICTIM = Path(__file__).with_name("bus_victim.py")
PROTOCOLS = [pytest.param(5, id="mqtt5"), pytest.param(4, id="mqtt311")]
Protocol = Literal[4, 5]


def settings_for(broker: Mosquitto, **extra: Any) -> MqttSettings:
    return MqttSettings(url=broker.url, keepalive_s=5, **extra)


def make_bus(broker: Mosquitto, protocol: Protocol, **kwargs: Any) -> Bus:
    kwargs.setdefault("client_id", "kioskd-test")
    kwargs.setdefault("backoff_initial_s", 0.05)
    kwargs.setdefault("backoff_max_s", 0.2)
    kwargs.setdefault("rng", random.Random(7))
    return Bus(settings_for(broker), protocol=protocol, **kwargs)


@asynccontextmanager
async def controller(broker: Mosquitto, *topics: str, protocol: Protocol = 5) -> AsyncIterator[aiomqtt.Client]:
    """The vending controller's side: a plain aiomqtt client, subscribed to `topics`."""
    version = aiomqtt.ProtocolVersion.V5 if protocol == 5 else aiomqtt.ProtocolVersion.V311
    async with aiomqtt.Client(broker.host, broker.port, identifier="controller", protocol=version) as client:
        for topic in topics:
            await client.subscribe(topic, qos=1)
        yield client


def is_connected(bus: Bus) -> bool:
    # A function, so the type checker does not narrow `bus.connected` across awaits.
    return bus.connected


async def next_incoming(bus: Bus) -> Incoming:
    async with asyncio.timeout(WAIT_S):
        return await anext(bus.messages())


async def next_message(client: aiomqtt.Client) -> aiomqtt.Message:
    async with asyncio.timeout(WAIT_S):
        return await anext(client.messages)


class Hooks:
    """Records connects and disconnects, and lets a test wait for the next one."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self._changed = asyncio.Condition()

    async def on_connect(self) -> None:
        await self._record("connect")

    async def on_disconnect(self) -> None:
        await self._record("disconnect")

    async def _record(self, event: str) -> None:
        async with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    async def wait_for(self, count: int, event: str) -> None:
        async with asyncio.timeout(WAIT_S), self._changed:
            await self._changed.wait_for(lambda: self.events.count(event) >= count)


# -- pure parts ------------------------------------------------------------------------------------


def test_backoff_grows_exponentially_with_jitter_up_to_the_cap() -> None:
    rng = random.Random(1)
    delays = [backoff_delay(n, initial_s=0.5, max_s=30, rng=rng) for n in range(12)]
    for n, delay in enumerate(delays):
        window = min(30, 0.5 * 2**n)
        assert window / 2 <= delay <= window
    assert delays[-1] >= 15
    # Jitter: two kiosks with different seeds do not retry in lockstep.
    other = random.Random(2)
    assert delays != [backoff_delay(n, initial_s=0.5, max_s=30, rng=other) for n in range(12)]


def test_a_missing_ca_file_is_a_configuration_error(tmp_path: Path) -> None:
    settings = MqttSettings(url="mqtts://127.0.0.1:8883", ca_file=tmp_path / "missing.pem")
    with pytest.raises(ConfigError, match=r"mqtt\.ca_file"):
        tls_context(settings)


def test_plain_urls_need_no_tls_context() -> None:
    assert tls_context(MqttSettings(url="mqtt://127.0.0.1:1883")) is None


# -- publish, receive, retained, Will ----------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_orders_arrive_and_status_is_published(broker: Mosquitto, protocol: Protocol) -> None:
    bus = make_bus(broker, protocol, subscriptions=["vend/v1/order/+/request"])
    async with bus, controller(broker, "vend/v1/order/+/status", protocol=protocol) as ctl:
        async with asyncio.timeout(WAIT_S):
            await bus.wait_connected()
        assert bus.connected
        await ctl.publish("vend/v1/order/o1/request", b'{"v":1}', qos=1)
        incoming = await next_incoming(bus)
        assert (incoming.topic, incoming.payload, incoming.retain, incoming.qos) == (
            "vend/v1/order/o1/request",
            b'{"v":1}',
            False,
            1,
        )
        incoming.ack()
        incoming.ack()  # a second ack is harmless
        await bus.publish("vend/v1/order/o1/status", b'{"state":"received"}', retain=True, expiry_s=86_400)
        status = await next_message(ctl)
    assert status.topic.value == "vend/v1/order/o1/status"
    assert status.payload == b'{"state":"received"}'
    assert not bus.connected


async def test_retained_status_expires_on_mqtt5(broker: Mosquitto) -> None:
    async with make_bus(broker, 5) as bus:
        async with asyncio.timeout(WAIT_S):
            await bus.wait_connected()
        # 2 s, not 1: the first controller must connect and subscribe before it expires, which
        # a loaded machine may not do within Mosquitto's whole second.
        await bus.publish("vend/v1/order/o1/status", b"short", retain=True, expiry_s=2)
        await bus.publish("vend/v1/kioskd/state", b"online", retain=True)
        async with controller(broker, "vend/v1/order/o1/status") as ctl:
            fresh = await next_message(ctl)
        assert fresh.retain
        assert fresh.properties is not None
        assert 0 <= getattr(fresh.properties, "MessageExpiryInterval", -1) <= 2
        await asyncio.sleep(3.2)  # Mosquitto counts expiry in whole seconds
        async with controller(broker, "vend/v1/order/o1/status", "vend/v1/kioskd/state") as ctl:
            # Retained messages come in subscription order: the expired status would come first.
            message = await next_message(ctl)
        assert message.topic.value == "vend/v1/kioskd/state"


async def test_expiry_is_ignored_on_mqtt311_and_retained_state_stays(broker: Mosquitto) -> None:
    async with make_bus(broker, 4) as bus:
        async with asyncio.timeout(WAIT_S):
            await bus.wait_connected()
        await bus.publish("vend/v1/order/o1/status", b"kept", retain=True, expiry_s=1)
    await asyncio.sleep(2.2)
    async with controller(broker, "vend/v1/order/o1/status", protocol=4) as ctl:
        message = await next_message(ctl)
    assert (message.payload, message.retain) == (b"kept", True)


class Victim:
    """tests/bus_victim.py in a subprocess, and what it has said."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.said: list[dict[str, str]] = []

    @classmethod
    async def start(cls, broker: Mosquitto, protocol: Protocol, client_id: str = "kioskd-victim") -> Victim:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(VICTIM),
            f"--url={broker.url}",
            f"--client-id={client_id}",
            f"--protocol={protocol}",
            "--subscribe=vend/v1/order/+/request",
            "--will-topic=vend/v1/kioskd/state",
            stdout=asyncio.subprocess.PIPE,
        )
        victim = cls(proc)
        await victim.expect("connected")
        return victim

    async def expect(self, event: str) -> dict[str, str]:
        assert self.proc.stdout is not None
        async with asyncio.timeout(WAIT_S):
            while True:
                line = await self.proc.stdout.readline()
                if not line:
                    raise AssertionError(f"the victim exited before saying {event}; it said {self.said}")
                said: dict[str, str] = json.loads(line)
                self.said.append(said)
                if said["event"] == event:
                    return said

    async def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()


@pytest.fixture(name="victims")
async def fixture_victims() -> AsyncIterator[list[Victim]]:
    started: list[Victim] = []
    yield started
    for victim in started:
        if victim.proc.returncode is None:
            await victim.kill()


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_the_will_is_published_when_kiosk_is_killed(
    broker: Mosquitto, protocol: Protocol, victims: list[Victim]
) -> None:
    async with controller(broker, "vend/v1/kioskd/state", protocol=protocol) as ctl:
        victims.append(victim := await Victim.start(broker, protocol))
        await victim.kill()
        will = await next_message(ctl)
    assert (will.topic.value, will.payload) == ("vend/v1/kioskd/state", b"offline")
    async with controller(broker, "vend/v1/kioskd/state", protocol=protocol) as late:
        retained = await next_message(late)
    assert (retained.payload, retained.retain) == (b"offline", True)


async def test_leaving_the_bus_disconnects_gracefully_without_the_will(broker: Mosquitto) -> None:
    async with controller(broker, "vend/v1/kioskd/state", "marker") as ctl:
        bus = make_bus(broker, 5, will=Publication("vend/v1/kioskd/state", b"offline", retain=True))
        async with bus:
            async with asyncio.timeout(WAIT_S):
                await bus.wait_connected()
        await ctl.publish("marker", b"after", qos=1)
        # The first thing the controller hears is our marker: no Will came before it.
        assert (await next_message(ctl)).topic.value == "marker"
    assert bus._task is not None
    assert bus._task.done()


# -- persistence and manual acknowledgement ----------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_message_killed_before_its_ack_is_redelivered_and_an_acked_one_is_not(
    broker: Mosquitto, protocol: Protocol, victims: list[Victim]
) -> None:
    victims.append(victim := await Victim.start(broker, protocol))
    async with controller(broker) as ctl:
        await ctl.publish("vend/v1/order/o1/request", b"ack-o1", qos=1)
        assert (await victim.expect("acked"))["payload"] == "ack-o1"
        await ctl.publish("vend/v1/order/o2/request", b"hold-o2", qos=1)
        assert (await victim.expect("received"))["payload"] == "hold-o2"
        await victim.kill()  # between receipt and journal commit

        victims.append(restarted := await Victim.start(broker, protocol))
        # The held message comes back; then a marker, which cannot overtake a redelivery.
        assert (await restarted.expect("received"))["payload"] == "hold-o2"
        await ctl.publish("vend/v1/order/o3/request", b"ack-marker", qos=1)
        await restarted.expect("acked")
    received = [s["payload"] for s in restarted.said if s["event"] == "received"]
    assert received == ["hold-o2", "ack-marker"]  # o1 was acknowledged: never seen again


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_orders_published_while_kiosk_is_away_arrive_when_it_returns(
    broker: Mosquitto, protocol: Protocol
) -> None:
    subscriptions = ["vend/v1/order/+/request"]
    async with make_bus(broker, protocol, subscriptions=subscriptions) as bus:
        async with asyncio.timeout(WAIT_S):
            await bus.wait_connected()
    async with controller(broker, protocol=protocol) as ctl:
        await ctl.publish("vend/v1/order/o9/request", b"while away", qos=1)
    async with make_bus(broker, protocol, subscriptions=subscriptions) as bus:
        incoming = await next_incoming(bus)
        incoming.ack()
    assert (incoming.topic, incoming.payload) == ("vend/v1/order/o9/request", b"while away")


async def test_an_ack_from_a_dead_connection_is_not_sent_on_the_next(broker: Mosquitto) -> None:
    hooks = Hooks()
    subscriptions = ["vend/v1/order/+/request"]
    bus = make_bus(broker, 5, subscriptions=subscriptions, on_connect=hooks.on_connect)
    async with bus:
        await hooks.wait_for(1, "connect")
        async with controller(broker) as ctl:
            await ctl.publish("vend/v1/order/o1/request", b"order", qos=1)
        stale = await next_incoming(bus)
        drop_connection(bus)
        await hooks.wait_for(2, "connect")
        again = await next_incoming(bus)
        assert again.payload == b"order"
        # The broker resends with the same packet id; acking the stale copy must not settle it.
        stale.ack()
    async with make_bus(broker, 5, subscriptions=subscriptions) as bus:
        third = await next_incoming(bus)
        third.ack()
    assert third.payload == b"order"


# -- connection loss and reconnection ------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_the_bus_rides_out_a_broker_restart(persistent_broker: Mosquitto, protocol: Protocol) -> None:
    broker = persistent_broker
    hooks = Hooks()
    password = "hunter2-not-for-logs"  # noqa: S105 - a value that must never reach the logs
    bus = Bus(
        settings_for(broker, username="kiosk", password=password),
        client_id="kioskd-restart",
        subscriptions=["vend/v1/order/+/request"],
        on_connect=hooks.on_connect,
        on_disconnect=hooks.on_disconnect,
        protocol=protocol,
        backoff_initial_s=0.05,
        backoff_max_s=0.2,
        rng=random.Random(3),
    )
    with capture_logs() as logged:
        async with bus:
            await hooks.wait_for(1, "connect")
            broker.stop()
            await hooks.wait_for(1, "disconnect")
            assert not is_connected(bus)
            with pytest.raises(BusUnavailable):
                await bus.publish("vend/v1/kioskd/state", b"online")
            broker.start()
            await hooks.wait_for(2, "connect")
            assert is_connected(bus)
            assert bus.reconnects == 1
            async with controller(broker, protocol=protocol) as ctl:
                await ctl.publish("vend/v1/order/o2/request", b"after restart", qos=1)
            incoming = await next_incoming(bus)
            incoming.ack()
            await bus.publish("vend/v1/kioskd/state", b"online", retain=True)
    assert incoming.payload == b"after restart"
    assert hooks.events == ["connect", "disconnect", "connect"]
    names = [entry["event"] for entry in logged]
    assert {"bus.connected", "bus.disconnected", "bus.reconnecting"} <= set(names)
    assert password not in repr(logged)


async def test_publishing_without_a_broker_fails_fast_and_backoff_grows(tmp_path: Path) -> None:
    del tmp_path
    delays: list[float] = []
    six_attempts = asyncio.Event()

    async def sleep(delay: float) -> None:
        delays.append(delay)
        if len(delays) >= 6:
            six_attempts.set()
        await asyncio.sleep(0.01)

    bus = Bus(
        MqttSettings(url=f"mqtt://127.0.0.1:{free_port()}"),
        client_id="kioskd-alone",
        rng=random.Random(5),
        sleep=sleep,
        backoff_initial_s=0.5,
        backoff_max_s=4,
    )
    async with bus:
        async with asyncio.timeout(WAIT_S):
            await six_attempts.wait()
        assert not bus.connected
        with pytest.raises(BusUnavailable, match="not connected"):
            await bus.publish("vend/v1/kioskd/state", b"online")
    expected_rng = random.Random(5)
    assert delays[:6] == [backoff_delay(n, initial_s=0.5, max_s=4, rng=expected_rng) for n in range(6)]
    # The bus ended: its message stream ends too.
    assert [m async for m in bus.messages()] == []


# -- transports ----------------------------------------------------------------------------------


async def test_unix_socket_transport(tmp_path_factory: pytest.TempPathFactory) -> None:
    workdir = tmp_path_factory.mktemp("mosquitto-unix")
    path = workdir / "mqtt.sock"
    broker = Mosquitto(workdir, extra_config=[f"listener 0 {path}"])
    with broker:
        bus = Bus(
            MqttSettings(url=f"unix://{path}"),
            client_id="kioskd-unix",
            subscriptions=["vend/v1/order/+/request"],
        )
        async with bus:
            async with asyncio.timeout(WAIT_S):
                await bus.wait_connected()
            await bus.publish("vend/v1/order/u1/request", b"over unix")
            incoming = await next_incoming(bus)
            incoming.ack()
    assert incoming.payload == b"over unix"


def _write_pki(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    from cryptography import x509  # noqa: PLC0415 - only this test needs it
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: PLC0415

    now = dt.datetime.now(dt.UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def issue(
        subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, signer: ec.EllipticCurvePrivateKey
    ) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False)
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        issue("kiosk test CA", ca_key, name("kiosk test CA"), ca_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = {"ca": directory / "ca.pem"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for role, usage, san in (
        ("server", ExtendedKeyUsageOID.SERVER_AUTH, x509.IPAddress(ipaddress.IPv4Address("127.0.0.1"))),
        ("client", ExtendedKeyUsageOID.CLIENT_AUTH, x509.DNSName("kioskd-tls")),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            issue(f"kiosk test {role}", key, ca.subject, ca_key)
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        files[f"{role}_cert"] = directory / f"{role}.pem"
        files[f"{role}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files[f"{role}_key"] = directory / f"{role}.key"
        files[f"{role}_key"].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return files


def tls_broker(workdir: Path, pki: dict[str, Path]) -> tuple[Mosquitto, int]:
    """A private Mosquitto with a TLS listener that requires a client certificate from `pki`'s CA."""
    tls_port = free_port()
    broker = Mosquitto(
        workdir,
        extra_config=[
            f"listener {tls_port} 127.0.0.1",
            f"cafile {pki['ca']}",
            f"certfile {pki['server_cert']}",
            f"keyfile {pki['server_key']}",
            "require_certificate true",
        ],
    )
    return broker, tls_port


async def test_mqtts_with_a_client_certificate(tmp_path_factory: pytest.TempPathFactory) -> None:
    workdir = tmp_path_factory.mktemp("mosquitto-tls")
    pki = await asyncio.to_thread(_write_pki, workdir)
    broker, tls_port = tls_broker(workdir, pki)
    with broker:
        bus = Bus(
            MqttSettings(
                url=f"mqtts://127.0.0.1:{tls_port}",
                ca_file=pki["ca"],
                cert_file=pki["client_cert"],
                key_file=pki["client_key"],
            ),
            client_id="kioskd-tls",
            subscriptions=["vend/v1/order/+/request"],
        )
        async with bus:
            async with asyncio.timeout(WAIT_S):
                await bus.wait_connected()
            await bus.publish("vend/v1/order/t1/request", b"over tls")
            incoming = await next_incoming(bus)
            incoming.ack()
    assert incoming.payload == b"over tls"


async def test_a_broker_that_never_answers_gets_no_half_open_connections() -> None:
    accepted: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    third = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append((reader, writer))  # accept the TCP connection, never send CONNACK
        if len(accepted) >= 3:
            third.set()

    async def hung_up(reader: asyncio.StreamReader) -> bool:
        async with asyncio.timeout(WAIT_S):
            await reader.read()  # the CONNECT packet (and a DISCONNECT), then end of stream
        return reader.at_eof()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        bus = Bus(
            MqttSettings(url=f"mqtt://127.0.0.1:{port}"),
            client_id="kioskd-silent",
            request_timeout_s=0.3,
            backoff_initial_s=0.01,
            backoff_max_s=0.02,
            rng=random.Random(4),
        )
        async with bus:
            async with asyncio.timeout(WAIT_S):
                await third.wait()
            # Attempts that timed out waiting for CONNACK were hung up, not left open.
            assert [await hung_up(reader) for reader, _ in accepted[:2]] == [True, True]
        # Closing in the middle of an attempt hangs that one up too.
        assert [await hung_up(reader) for reader, _ in accepted] == [True] * len(accepted)
        assert bus._task is not None
        assert bus._task.done()
        for _, writer in accepted:
            writer.close()
            await writer.wait_closed()


def bus_socket(bus: Bus) -> socket.socket:
    """The socket under the bus's live connection."""
    link = bus._link
    assert link is not None
    sock = link.client._client.socket()
    assert isinstance(sock, socket.socket)
    return sock


def drop_connection(bus: Bus) -> None:
    """Shut the socket under the bus, as a flaky link would."""
    bus_socket(bus).shutdown(socket.SHUT_RDWR)


async def test_backoff_grows_while_the_connection_flaps_and_restarts_after_a_stable_one(
    broker: Mosquitto,
) -> None:
    now = [0.0]
    delays: list[float] = []
    hooks = Hooks()

    async def sleep(delay: float) -> None:
        delays.append(delay)
        await asyncio.sleep(0)

    bus = make_bus(
        broker,
        5,
        on_connect=hooks.on_connect,
        backoff_initial_s=0.05,
        backoff_max_s=0.4,
        rng=random.Random(11),
        sleep=sleep,
        clock=lambda: now[0],
    )
    async with bus:
        await hooks.wait_for(1, "connect")
        drop_connection(bus)  # at once: flapping
        await hooks.wait_for(2, "connect")
        now[0] += 0.4  # up for backoff_max_s: stable
        drop_connection(bus)
        await hooks.wait_for(3, "connect")
        drop_connection(bus)  # at once again
        await hooks.wait_for(4, "connect")
    expected = random.Random(11)
    assert delays == [backoff_delay(attempt, initial_s=0.05, max_s=0.4, rng=expected) for attempt in (0, 0, 1)]


async def test_a_failing_on_connect_hook_is_logged_and_the_bus_carries_on(broker: Mosquitto) -> None:
    async def broken() -> None:
        raise RuntimeError("runner bug")

    with capture_logs() as logged:
        async with make_bus(broker, 5, subscriptions=["vend/v1/order/+/request"], on_connect=broken) as bus:
            async with asyncio.timeout(WAIT_S):
                await bus.wait_connected()
            await bus.publish("vend/v1/order/o1/request", b"still served")
            incoming = await next_incoming(bus)
            incoming.ack()
    assert incoming.payload == b"still served"
    assert any(entry["event"] == "bus.hook_failed" for entry in logged)


async def test_a_publish_waiting_for_puback_fails_as_soon_as_the_connection_is_lost(broker: Mosquitto) -> None:
    hooks = Hooks()
    bus = make_bus(broker, 5, on_disconnect=hooks.on_disconnect, request_timeout_s=30)
    async with bus:
        async with asyncio.timeout(WAIT_S):
            await bus.wait_connected()
        assert broker._proc is not None
        broker._proc.send_signal(signal.SIGSTOP)  # the broker stops answering: no PUBACK
        try:
            publishing = asyncio.create_task(bus.publish("vend/v1/kioskd/state", b"online", retain=True))
            await asyncio.sleep(0.05)
            assert not publishing.done()
            drop_connection(bus)
            with pytest.raises(BusUnavailable, match="connection lost"):
                async with asyncio.timeout(WAIT_S):  # far below request_timeout_s
                    await publishing
            await hooks.wait_for(1, "disconnect")
        finally:
            broker._proc.send_signal(signal.SIGCONT)


# -- writing: at the loop's next turn, aiomqtt's watch only when the socket is full ---------------


def watched_for_room(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the file descriptors the running loop is asked to watch for room (`add_writer`)."""
    loop = asyncio.get_running_loop()
    watched: list[int] = []
    add_writer = loop.add_writer

    def spy(fd: Any, callback: Any, *args: Any) -> None:
        watched.append(fd if isinstance(fd, int) else fd.fileno())
        add_writer(fd, callback, *args)

    monkeypatch.setattr(loop, "add_writer", spy)
    return watched


def watching_for_room(fd: int) -> bool:
    """Whether the running loop still watches `fd` for room (asyncio's selector loop)."""
    selector = asyncio.get_running_loop()._selector  # type: ignore[attr-defined]
    try:
        key = selector.get_key(fd)
    except KeyError:
        return False
    return bool(key.events & selectors.EVENT_WRITE)


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_publishes_and_acks_go_out_without_watching_the_socket(
    broker: Mosquitto, protocol: Protocol, monkeypatch: pytest.MonkeyPatch
) -> None:
    bus = make_bus(broker, protocol, subscriptions=["vend/v1/order/+/request"])
    async with bus, controller(broker, "vend/v1/order/+/status", protocol=protocol) as ctl:
        async with asyncio.timeout(WAIT_S):
            await bus.wait_connected()
        fd = bus_socket(bus).fileno()
        watched = watched_for_room(monkeypatch)
        for n in range(5):  # deliveries the bus acknowledges (PUBACK out)
            await ctl.publish(f"vend/v1/order/o{n}/request", b"{}", qos=1)
            (await next_incoming(bus)).ack()
        async with asyncio.timeout(WAIT_S):  # publishes, one by one and in one turn (PUBLISH out)
            for n in range(5):
                await bus.publish(f"vend/v1/order/o{n}/status", b"one")
            await asyncio.gather(*(bus.publish(f"vend/v1/order/o{n}/status", b"many") for n in range(5)))
        received = [(await next_message(ctl)).payload for _ in range(10)]
    assert received == [b"one"] * 5 + [b"many"] * 5
    assert fd not in watched


async def test_a_full_socket_buffer_is_written_as_room_comes(
    broker: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = random.Random(3).randbytes(512 * 1024)
    count = 40  # 20 MB: more than the kernel buffers between a stopped broker and the bus
    bus = make_bus(broker, 5, request_timeout_s=60)
    async with bus, controller(broker, "vend/v1/kioskd/bulk") as ctl:
        async with asyncio.timeout(WAIT_S):
            await bus.wait_connected()
        fd = bus_socket(bus).fileno()
        watched = watched_for_room(monkeypatch)
        assert broker._proc is not None
        broker._proc.send_signal(signal.SIGSTOP)  # nothing is read: the socket fills up
        try:
            publishing = [asyncio.create_task(bus.publish("vend/v1/kioskd/bulk", payload)) for _ in range(count)]
            await asyncio.sleep(0.5)
            assert fd in watched  # paho holds the rest, and the loop waits for room
            assert not any(task.done() for task in publishing)
        finally:
            broker._proc.send_signal(signal.SIGCONT)
        async with asyncio.timeout(30):
            await asyncio.gather(*publishing)
            received = [await anext(ctl.messages) for _ in range(count)]
        await asyncio.sleep(0.1)
        assert not watching_for_room(fd)  # drained: the loop stopped watching (no busy loop)
    assert all(message.payload == payload for message in received)


async def test_a_write_that_raises_ends_the_connection_and_the_bus_reconnects(
    broker: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    hooks = Hooks()
    bus = make_bus(broker, 5, on_connect=hooks.on_connect, on_disconnect=hooks.on_disconnect, request_timeout_s=30)
    with capture_logs() as logged:
        async with bus, controller(broker, "vend/v1/kioskd/state") as ctl:
            await hooks.wait_for(1, "connect")
            link = bus._link
            assert link is not None
            victim = link.client._client
            loop_write = victim.loop_write
            failures = iter([RuntimeError("paho bug")])

            def fail_once() -> int:
                for failure in failures:
                    raise failure
                return loop_write()

            monkeypatch.setattr(victim, "loop_write", fail_once)  # only a bug can make it raise
            with pytest.raises(BusUnavailable, match="connection lost"):
                async with asyncio.timeout(WAIT_S):  # far below request_timeout_s
                    await bus.publish("vend/v1/kioskd/state", b"lost")
            await hooks.wait_for(1, "disconnect")
            await hooks.wait_for(2, "connect")
            await bus.publish("vend/v1/kioskd/state", b"after")
            assert (await next_message(ctl)).payload == b"after"
    failed = [entry for entry in logged if entry["event"] == "bus.write_failed"]
    assert [entry["error"] for entry in failed] == ["RuntimeError: paho bug"]
