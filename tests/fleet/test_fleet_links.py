"""The fleet through a Mosquitto bridge (a "kiosk" broker to a "cloud" broker) and over TLS."""

from __future__ import annotations

import asyncio

import pytest

from kiosk.fleet import signing
from kiosk.mosquitto import Mosquitto, free_port
from tests.fleet.operator import operator
from tests.harness import Daemon, start_rig
from tests.test_bus import _write_pki, tls_broker

pytestmark = pytest.mark.slow

# What a kiosk's Mosquitto forwards: its reports out, the fleet's requests in (protocol.md §5).
OUT = ("state", "info", "health", "events", "config/reported", "cmd/+/res", "jobs/+/update")
IN = ("events/ack", "config/desired", "cmd/+/req", "jobs/+/doc")


def bridge_config(cloud_port: int, kiosk_id: str = "k1") -> list[str]:
    base = f"fleet/v1/{kiosk_id}"
    return [
        "connection cloud",
        f"address 127.0.0.1:{cloud_port}",
        f"remote_clientid bridge-{kiosk_id}",
        "cleansession false",
        "restart_timeout 1",
        "notifications true",
        f"notification_topic {base}/bridge",
        *(f"topic {base}/{t} out 1" for t in OUT),
        *(f"topic {base}/{t} in 1" for t in IN),
    ]


async def test_state_health_events_and_commands_flow_through_a_bridge(tmp_path_factory: pytest.TempPathFactory) -> None:
    cloud = Mosquitto(tmp_path_factory.mktemp("cloud")).start()
    kiosk_port = free_port()
    local = Mosquitto(tmp_path_factory.mktemp("kiosk"), port=kiosk_port, extra_config=bridge_config(cloud.port))
    key = signing.generate()
    try:
        local.start()
        async with operator(cloud.host, cloud.port, key=key) as op:
            await op.wait_for("bridge", lambda p: p.get("_value") == 1)
            settings = {
                "FLEET__ENABLED": "true",
                "FLEET__SIGNING_PUBLIC_KEY": signing.public_key_text(key.public_key()),
            }
            async with start_rig(tmp_path_factory.mktemp("daemon"), local, **settings) as rig:
                online = await op.wait_online()
                await op.wait_until(lambda: op.on("health") and op.on("info"))
                assert (await op.command("ping"))["data"]["session"] == online["session"]
                await op.desired(1, {"max_amount": 400})
                assert (await op.wait_reported(1))["status"] == "applied"
                await rig.ctl.request("b1", 300)
                await rig.ctl.wait_for("b1", "awaiting_card")
                assert (await op.command("cancel_order", {"order_id": "b1"}))["status"] == "ok"
                event = await op.wait_for("events", lambda p: p["type"].startswith("order."))
                assert event["data"]["order_id"] == "b1"
                await op.publish("events/ack", {"upto_seq": event["seq"]}, retain=True)
                res = await op.command("rebirth")
                assert res["status"] == "ok"
                health = await op.wait_until(
                    lambda: (h := op.last("health")) is not None and h["outbox"]["depth"] == 0 and h
                )
                assert health["orders"]["canceled_24h"] == 1
                rig.daemon.kill()
                will = await op.wait_for("state", lambda p: p["state"] == "offline")
                assert will["session"] == online["session"]
                rig.daemon.start()
                await op.wait_online(session=online["session"] + 1)
    finally:
        local.kill()
        cloud.kill()


async def test_the_fleet_over_mqtts_with_a_client_certificate(tmp_path_factory: pytest.TempPathFactory) -> None:
    workdir = tmp_path_factory.mktemp("mosquitto-tls")
    pki = await asyncio.to_thread(_write_pki, workdir)
    broker, tls_port = tls_broker(workdir, pki)
    with broker:
        async with operator(broker.host, broker.port) as op:
            settings = {
                "FLEET__ENABLED": "true",
                "MQTT__URL": f"mqtts://127.0.0.1:{tls_port}",
                "MQTT__CA_FILE": str(pki["ca"]),
                "MQTT__CERT_FILE": str(pki["client_cert"]),
                "MQTT__KEY_FILE": str(pki["client_key"]),
            }
            async with start_rig(tmp_path_factory.mktemp("daemon"), broker, **settings) as rig:
                online = await op.wait_online()
                assert (await op.command("ping"))["status"] == "ok"
                assert "mqtts://127.0.0.1" in rig.daemon.log()
                rig.daemon.kill()
                assert (await op.wait_for("state", lambda p: p["state"] == "offline"))["session"] == online["session"]


async def test_a_broker_that_does_not_trust_the_client_gets_no_fleet(tmp_path_factory: pytest.TempPathFactory) -> None:
    workdir = tmp_path_factory.mktemp("mosquitto-tls")
    pki = await asyncio.to_thread(_write_pki, workdir)
    other = await asyncio.to_thread(_write_pki, tmp_path_factory.mktemp("other-ca"))
    broker, tls_port = tls_broker(workdir, pki)
    with broker:
        async with operator(broker.host, broker.port) as op:
            settings = {
                "FLEET__ENABLED": "true",
                "MQTT__URL": f"mqtts://127.0.0.1:{tls_port}",
                "MQTT__CA_FILE": str(pki["ca"]),
                "MQTT__CERT_FILE": str(other["client_cert"]),  # signed by a CA the broker does not know
                "MQTT__KEY_FILE": str(other["client_key"]),
            }
            daemon = Daemon(
                tmp_path_factory.mktemp("daemon"),
                broker_url=broker.url,
                api_base="http://127.0.0.1:9",  # never reached: the test ends at the broker
                reader_id="tmr_untrusted",
                **settings,
            )
            daemon.start()
            try:
                async with asyncio.timeout(20):
                    while daemon.log().count("bus.reconnecting") < 2:  # noqa: ASYNC110 - both connections refused
                        await asyncio.sleep(0.1)
            finally:
                daemon.terminate()
            assert op.on("state") == []
