"""The shipped Mosquitto set-up (config/mosquitto) gives each side of the bus exactly its topics.

A private broker runs from config/mosquitto/mosquitto.conf and acl as shipped, with only the
listener port and the file paths rewritten, and a password file made by `mosquitto_passwd`.
A publish the ACL refuses still "succeeds" for the client (MQTT 3.1.1: dropped silently; MQTT 5:
PUBACK 135, which aiomqtt 2.x ignores), so every refusal is shown by what a subscriber receives:
the forged message is sent first, a genuine one after it on the same topic, and the subscriber's
first message must be the genuine one (the broker handles a publish completely before it sends
the PUBACK we wait for, so a forged message that got through would arrive first).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import aiomqtt
import pytest
from paho.mqtt.reasoncodes import ReasonCode

from kiosk.mosquitto import Mosquitto, find_binary

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config" / "mosquitto"
KIOSK_ID = "vm-test-1"
PASSWORDS = {
    "controller": "controller-secret",
    "kioskd": "kioskd-secret",
    # A valid login the ACL does not mention: it shows that rights come only from the ACL.
    "auditor": "auditor-secret",
}
ORDER_TOPICS = ("request", "cancel", "vend_result")
DAEMON_TOPICS = ("vend/v1/order/o-1/status", "vend/v1/kioskd/state", "vend/v1/reader/state")
# Shipped directive (first two words) → what the test broker uses instead.
REWRITES = {
    "listener 1883": "listener {port} 127.0.0.1",
    "listener 0": "listener 0 {workdir}/mosquitto.sock",
    "password_file": "password_file {workdir}/passwd",
    "acl_file": "acl_file {workdir}/acl",
    "persistence_location": "persistence_location {workdir}/",
    "pid_file": "pid_file {workdir}/mosquitto.pid",
    "log_dest": "log_dest file {workdir}/mosquitto.log",
}

Transport = Literal["tcp", "unix"]


def _directive(line: str) -> str | None:
    words = line.split()
    if not words or words[0].startswith("#"):
        return None
    two = " ".join(words[:2])
    return two if two in REWRITES else words[0] if words[0] in REWRITES else None


def render_config(text: str, *, port: int, workdir: Path) -> str:
    """The shipped mosquitto.conf with its port and paths moved into workdir."""
    out: list[str] = []
    seen: list[str] = []
    for line in text.splitlines():
        key = _directive(line)
        if key is None:
            out.append(line)
            continue
        seen.append(key)
        out.append(REWRITES[key].format(port=port, workdir=workdir))
    # A shipped directive the test no longer recognises would leave a real path or port in the
    # test broker's configuration: fail loudly instead of testing something else.
    assert sorted(seen) == sorted(REWRITES), f"mosquitto.conf directives changed: {seen}"
    if os.geteuid() == 0:
        # As root, Mosquitto would drop to user mosquitto and lose access to workdir.
        out.append("user root")
    return "\n".join(out) + "\n"


class ShippedBroker(Mosquitto):
    """A private Mosquitto running the shipped configuration, password file and ACL."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, anonymous=False)
        self.socket_path = workdir / "mosquitto.sock"

    def _write_config(self) -> None:
        shipped = (CONFIG_DIR / "mosquitto.conf").read_text(encoding="utf-8")
        config = render_config(shipped, port=self.port, workdir=self.workdir)
        self.config_path.write_text(config, encoding="utf-8")
        acl = (CONFIG_DIR / "acl").read_text(encoding="utf-8").replace("KIOSK_ID", KIOSK_ID)
        (self.workdir / "acl").write_text(acl, encoding="utf-8")


def make_password_file(path: Path) -> None:
    """The broker's password file for PASSWORDS, made as docs/install.md does."""
    passwd = shutil.which("mosquitto_passwd")
    if find_binary() is None or passwd is None:
        pytest.fail("mosquitto is not installed; scripts/test installs it (apt-get install mosquitto)")
    for index, (user, password) in enumerate(PASSWORDS.items()):
        # -c creates the file, for the first user only.
        create = ["-c"] if index == 0 else []
        subprocess.run([passwd, "-b", *create, str(path), user, password], check=True, capture_output=True)


@pytest.fixture(name="broker", scope="module")
def fixture_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShippedBroker]:
    # A short directory: a unix socket path must fit in 108 bytes.
    workdir = tmp_path_factory.mktemp("acl")
    make_password_file(workdir / "passwd")
    broker = ShippedBroker(workdir)
    broker.start()
    try:
        yield broker
    finally:
        broker.kill()


@pytest.fixture(
    name="protocol",
    params=[aiomqtt.ProtocolVersion.V311, aiomqtt.ProtocolVersion.V5],
    ids=["mqtt311", "mqtt5"],
)
def fixture_protocol(request: pytest.FixtureRequest) -> aiomqtt.ProtocolVersion:
    value: aiomqtt.ProtocolVersion = request.param
    return value


_counter = iter(range(1_000_000))


@asynccontextmanager
async def connect(
    broker: ShippedBroker,
    protocol: aiomqtt.ProtocolVersion,
    user: str | None,
    password: str | None = None,
    *,
    transport: Transport = "tcp",
) -> AsyncIterator[aiomqtt.Client]:
    """A connected client; the password defaults to the user's own."""
    if user is not None and password is None:
        password = PASSWORDS.get(user)
    host = str(broker.socket_path) if transport == "unix" else broker.host
    client = aiomqtt.Client(
        host,
        broker.port,
        username=user,
        password=password,
        identifier=f"{user or 'anonymous'}-{next(_counter)}",
        protocol=protocol,
        transport=transport,
        timeout=5,
    )
    async with client:
        yield client


def payload(source: str) -> bytes:
    return json.dumps({"v": 1, "id": source, "from": source}).encode()


async def first_message(client: aiomqtt.Client) -> aiomqtt.Message:
    async with asyncio.timeout(5):
        return await anext(client.messages)


def granted(result: object) -> bool:
    """Whether a SUBACK return code (3.1.1: int, 5: ReasonCode) grants the subscription."""
    codes = result if isinstance(result, list | tuple) else [result]
    assert len(codes) == 1
    code = codes[0]
    value = code.value if isinstance(code, ReasonCode) else code
    assert isinstance(value, int)
    return value < 0x80


# --- what each side may do -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ORDER_TOPICS)
async def test_the_controller_can_publish_orders_and_the_daemon_receives_them(
    broker: ShippedBroker, protocol: aiomqtt.ProtocolVersion, kind: str
) -> None:
    topic = f"vend/v1/order/o-1/{kind}"
    async with connect(broker, protocol, "kioskd") as daemon:
        await daemon.subscribe(f"vend/v1/order/+/{kind}", qos=1)
        async with connect(broker, protocol, "controller") as controller:
            await controller.publish(topic, payload("controller"), qos=1)
        message = await first_message(daemon)
    assert message.topic.value == topic
    assert message.payload == payload("controller")


@pytest.mark.parametrize("topic", DAEMON_TOPICS)
async def test_the_daemon_can_publish_statuses_and_the_controller_receives_them(
    broker: ShippedBroker, protocol: aiomqtt.ProtocolVersion, topic: str
) -> None:
    async with connect(broker, protocol, "controller") as controller:
        await controller.subscribe(topic.replace("o-1", "+"), qos=1)
        async with connect(broker, protocol, "kioskd") as daemon:
            await daemon.publish(topic, payload("kioskd"), qos=1)
        message = await first_message(controller)
    assert message.topic.value == topic
    assert message.payload == payload("kioskd")


async def test_the_daemon_has_its_own_fleet_topics(broker: ShippedBroker, protocol: aiomqtt.ProtocolVersion) -> None:
    topic = f"fleet/v1/{KIOSK_ID}/cmd/ping/req"
    async with connect(broker, protocol, "kioskd") as daemon:
        assert granted(await daemon.subscribe(f"fleet/v1/{KIOSK_ID}/#", qos=1))
        async with connect(broker, protocol, "kioskd") as other:
            await other.publish(topic, payload("kioskd"), qos=1)
        message = await first_message(daemon)
    assert message.topic.value == topic


# --- what each side may not do -------------------------------------------------------------------


async def test_the_controller_cannot_publish_a_status(broker: ShippedBroker, protocol: aiomqtt.ProtocolVersion) -> None:
    # The daemon may not read statuses, so the witness is a second controller connection, which
    # would receive a forged status if the broker accepted it.
    topic = "vend/v1/order/o-1/status"
    async with connect(broker, protocol, "controller") as witness:
        await witness.subscribe("vend/v1/order/+/status", qos=1)
        async with connect(broker, protocol, "controller") as controller:
            await controller.publish(topic, payload("forged"), qos=1, retain=True)
        async with connect(broker, protocol, "kioskd") as daemon:
            await daemon.publish(topic, payload("kioskd"), qos=1)
        message = await first_message(witness)
    assert message.payload == payload("kioskd")


@pytest.mark.parametrize("kind", ORDER_TOPICS)
async def test_the_daemon_user_cannot_publish_orders(
    broker: ShippedBroker, protocol: aiomqtt.ProtocolVersion, kind: str
) -> None:
    topic = f"vend/v1/order/o-1/{kind}"
    async with connect(broker, protocol, "kioskd") as witness:
        await witness.subscribe(f"vend/v1/order/+/{kind}", qos=1)
        async with connect(broker, protocol, "kioskd") as daemon:
            await daemon.publish(topic, payload("forged"), qos=1)
        async with connect(broker, protocol, "controller") as controller:
            await controller.publish(topic, payload("controller"), qos=1)
        message = await first_message(witness)
    assert message.payload == payload("controller")


@pytest.mark.parametrize("user", ["controller", "auditor"])
async def test_only_the_daemon_can_publish_the_daemon_state(
    broker: ShippedBroker, protocol: aiomqtt.ProtocolVersion, user: str
) -> None:
    # Neither the controller nor a known login without ACL lines can fake kiosk's availability.
    async with connect(broker, protocol, "controller") as witness:
        await witness.subscribe("vend/v1/kioskd/state", qos=1)
        async with connect(broker, protocol, user) as intruder:
            await intruder.publish("vend/v1/kioskd/state", payload("forged"), qos=1)
        async with connect(broker, protocol, "kioskd") as daemon:
            await daemon.publish("vend/v1/kioskd/state", payload("kioskd"), qos=1)
        message = await first_message(witness)
    assert message.payload == payload("kioskd")


# Every topic of the bus, each published by the side allowed to (writer, topic).
TRAFFIC = [
    ("controller", "vend/v1/order/o-3/request"),
    ("controller", "vend/v1/order/o-3/cancel"),
    ("controller", "vend/v1/order/o-3/vend_result"),
    ("kioskd", "vend/v1/order/o-3/status"),
    ("kioskd", "vend/v1/kioskd/state"),
    ("kioskd", "vend/v1/reader/state"),
    ("kioskd", f"fleet/v1/{KIOSK_ID}/events"),
]
READS = {
    "controller": [
        "vend/v1/order/o-3/status",
        "vend/v1/kioskd/state",
        "vend/v1/reader/state",
    ],
    "kioskd": [
        "vend/v1/order/o-3/request",
        "vend/v1/order/o-3/cancel",
        "vend/v1/order/o-3/vend_result",
        f"fleet/v1/{KIOSK_ID}/events",
    ],
    "auditor": [],
}
# A last message the reader may read, published after all the traffic: once it arrives, every
# message of the traffic the broker would have delivered has arrived before it.
MARKERS = {
    "controller": ("kioskd", "vend/v1/order/o-4/status"),
    "kioskd": ("controller", "vend/v1/order/o-4/request"),
}


@pytest.mark.parametrize("reader", ["controller", "kioskd", "auditor"])
async def test_each_user_reads_exactly_its_topics(
    broker: ShippedBroker, protocol: aiomqtt.ProtocolVersion, reader: str
) -> None:
    # Mosquitto 2.0 grants every subscription, even to #, and checks read rights on each message
    # it delivers: so what a subscriber to # receives is what it may read.
    received: list[str] = []
    async with connect(broker, protocol, reader) as subscriber:
        assert granted(await subscriber.subscribe("#", qos=1))
        async with (
            connect(broker, protocol, "controller") as controller,
            connect(broker, protocol, "kioskd") as daemon,
        ):
            writers = {"controller": controller, "kioskd": daemon}
            for writer, topic in TRAFFIC:
                await writers[writer].publish(topic, payload(writer), qos=1)
            marker = MARKERS.get(reader)
            if marker is not None:
                await writers[marker[0]].publish(marker[1], payload("marker"), qos=1)

        async def collect() -> None:
            async for message in subscriber.messages:
                if message.retain:  # left by an earlier test
                    continue
                if marker is not None and message.topic.value == marker[1]:
                    return
                received.append(message.topic.value)

        if marker is not None:
            async with asyncio.timeout(5):
                await collect()
        else:
            # Nothing can be a marker for a user who may read nothing: wait a bounded while.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    await collect()
    assert received == READS[reader]


# --- who may connect -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user", "password"),
    [
        (None, None),
        ("stranger", "whatever"),
        ("controller", "not-the-password"),
        ("controller", PASSWORDS["kioskd"]),
        ("kioskd", None),
    ],
    ids=["anonymous", "unknown-user", "wrong-password", "other-users-password", "no-password"],
)
@pytest.mark.parametrize("transport", ["tcp", "unix"])
async def test_only_known_users_with_their_password_can_connect(
    broker: ShippedBroker,
    protocol: aiomqtt.ProtocolVersion,
    transport: Transport,
    user: str | None,
    password: str | None,
) -> None:
    with pytest.raises(aiomqtt.MqttCodeError) as refused:
        # An explicit empty password for "no password", so `connect` does not fill in the real one.
        async with connect(broker, protocol, user, password or "", transport=transport):
            pass
    # 3.1.1 CONNACK 4/5, MQTT 5 reason 134/135: bad user name or password / not authorised.
    rc = refused.value.rc
    value = rc.value if isinstance(rc, ReasonCode) else rc
    assert value in {4, 5, 134, 135}, refused.value


async def test_the_unix_socket_listener_serves_logged_in_clients(
    broker: ShippedBroker, protocol: aiomqtt.ProtocolVersion
) -> None:
    topic = "vend/v1/order/o-2/status"
    async with connect(broker, protocol, "controller", transport="unix") as controller:
        await controller.subscribe(topic, qos=1)
        async with connect(broker, protocol, "kioskd") as daemon:
            await daemon.publish(topic, payload("kioskd"), qos=1)
        message = await first_message(controller)
    assert message.payload == payload("kioskd")
