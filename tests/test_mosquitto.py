import asyncio

import aiomqtt

from kiosk.mosquitto import Mosquitto


async def test_publish_and_receive_through_a_private_broker(broker: Mosquitto) -> None:
    assert broker.port != 1883
    async with aiomqtt.Client(broker.host, broker.port, identifier="t-sub") as sub:
        await sub.subscribe("t/#", qos=1)
        async with aiomqtt.Client(broker.host, broker.port, identifier="t-pub") as pub:
            await pub.publish("t/hello", b'{"v":1}', qos=1)
        async with asyncio.timeout(5):
            message = await anext(sub.messages)
    assert message.topic.value == "t/hello"
    assert message.payload == b'{"v":1}'


async def test_retained_state_survives_a_restart_of_a_persistent_broker(persistent_broker: Mosquitto) -> None:
    async with aiomqtt.Client(persistent_broker.host, persistent_broker.port) as pub:
        await pub.publish("t/state", b"online", qos=1, retain=True)
    persistent_broker.restart()
    async with aiomqtt.Client(persistent_broker.host, persistent_broker.port) as sub:
        await sub.subscribe("t/state", qos=1)
        async with asyncio.timeout(5):
            message = await anext(sub.messages)
    assert message.payload == b"online"
    assert message.retain


def test_a_killed_broker_frees_its_port_and_restarts_on_it(broker: Mosquitto) -> None:
    port = broker.port
    broker.kill()
    assert not broker.running
    assert broker.start().running
    assert broker.port == port
