"""`kiosk run` with the fleet on: state, info, health, Will and sessions, commands, remote config.

Real parts: a private Mosquitto, the Stripe simulator, the daemon as a subprocess, an operator
client following `fleet/v1/k1/#`.
"""

from __future__ import annotations

import asyncio
import sqlite3
from typing import TYPE_CHECKING, Any

import pytest

from kiosk.fleet import signing
from tests.fleet.operator import Operator, operator, rfc3339
from tests.harness import Rig, retained, start_rig

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from kiosk.mosquitto import Mosquitto

pytestmark = pytest.mark.slow

FLEET = {"FLEET__ENABLED": "true"}


def signed_settings(key: Ed25519PrivateKey) -> dict[str, str]:
    return {**FLEET, "FLEET__SIGNING_PUBLIC_KEY": signing.public_key_text(key.public_key())}


@pytest.fixture(name="key")
def fixture_key() -> Ed25519PrivateKey:
    return signing.generate()


@pytest.fixture(name="fleet")
async def fixture_fleet(tmp_path: Path, broker: Mosquitto, key: Ed25519PrivateKey) -> AsyncIterator[tuple[Rig, Operator]]:
    async with operator(broker.host, broker.port, key=key) as op, start_rig(tmp_path, broker, **signed_settings(key)) as rig:
        await op.wait_online()
        yield rig, op


async def test_state_info_and_health_are_retained_with_real_figures(fleet: tuple[Rig, Operator]) -> None:
    rig, op = fleet
    state = await op.wait_online()
    await op.wait_until(lambda: op.on("health") and op.on("info") and op.on("config/reported"))
    assert state["session"] >= 1
    assert state["boot_id"]
    assert state["version"]
    found = {s.topic.rsplit("/", 1)[-1]: s for s in await retained(rig.broker.host, rig.broker.port, "fleet/v1/k1/+")}
    assert set(found) >= {"state", "info", "health"}
    assert all(found[name].retain for name in ("state", "info", "health")), found
    info = found["info"].payload
    assert info["reader"]["id"] == rig.reader
    assert info["python"].startswith("3.")
    assert "cmd:reconcile" in info["capabilities"]
    health = found["health"]
    assert health.expiry_s is not None
    assert 0 < health.expiry_s <= 3 * 60
    figures = health.payload
    assert figures["period_s"] == 60
    assert figures["rss_mb"] > 5
    assert figures["disk_free_mb"] > 0
    assert figures["mqtt"]["reconnects"] == 0
    assert set(figures["orders"]) == {"open", "completed_24h", "canceled_24h", "failed_24h"}
    assert set(figures["outbox"]) == {"depth", "oldest_s"}
    assert set(figures["stripe"]) == {"last_ok_s", "errors_1h"}
    assert figures["reader"]["status"] in {"online", "unknown"}


async def test_a_killed_daemon_leaves_offline_with_its_session_and_the_next_start_is_newer(
    fleet: tuple[Rig, Operator],
) -> None:
    rig, op = fleet
    first = await op.wait_online()
    rig.daemon.kill()
    will = await op.wait_for("state", lambda p: p["state"] == "offline")
    assert will["session"] == first["session"]
    assert will["boot_id"] == first["boot_id"]
    (kept,) = await retained(rig.broker.host, rig.broker.port, "fleet/v1/k1/state")
    assert kept.payload["state"] == "offline"
    rig.daemon.start()
    second = await op.wait_online(session=first["session"] + 1)
    assert second["boot_id"] != first["boot_id"]


async def test_a_late_will_from_an_older_session_is_answered_with_online_again(fleet: tuple[Rig, Operator]) -> None:
    rig, op = fleet
    online = await op.wait_online()
    late = {**online, "state": "offline", "session": online["session"] - 1, "id": "late-will"}
    await op.publish("state", late, retain=True)
    await op.wait_until(lambda: len([p for p in op.on("state") if p["state"] == "online"]) >= 2)
    (kept,) = await retained(rig.broker.host, rig.broker.port, "fleet/v1/k1/state")
    assert kept.payload["state"] == "online"
    assert kept.payload["session"] == online["session"]


async def test_sigterm_says_offline_and_exits_0(fleet: tuple[Rig, Operator]) -> None:
    rig, op = fleet
    online = await op.wait_online()
    assert rig.daemon.terminate() == 0
    offline = await op.wait_for("state", lambda p: p["state"] == "offline")
    assert offline["session"] == online["session"]
