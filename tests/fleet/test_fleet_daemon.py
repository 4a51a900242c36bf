"""`kiosk run` with the fleet on: state, info, health, Will and sessions, commands, remote config.

Real parts: a private Mosquitto, the Stripe simulator, the daemon as a subprocess, an operator
client following `fleet/v1/k1/#`.
"""

from __future__ import annotations

import signal
import sqlite3
from typing import TYPE_CHECKING, Any

import pytest

from kiosk.fleet import signing
from tests.fleet.operator import Operator, operator
from tests.harness import Rig, retained, start_rig

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
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
async def fixture_fleet(
    tmp_path: Path, broker: Mosquitto, key: Ed25519PrivateKey
) -> AsyncIterator[tuple[Rig, Operator]]:
    async with (
        operator(broker.host, broker.port, key=key) as op,
        start_rig(tmp_path, broker, **signed_settings(key)) as rig,
    ):
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
    assert set(found) >= {"state", "info", "health"}  # each in the broker's retained store
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


async def test_a_kiosk_killed_right_after_saying_online_leaves_offline_behind(fleet: tuple[Rig, Operator]) -> None:
    # `state` says online only once the fleet Will's own connection is up: a kiosk that dies the
    # moment after saying online must not stay online in the fleet's view for good.
    rig, op = fleet
    first = await op.wait_online()

    def offline(session: int) -> Callable[[dict[str, Any]], bool]:
        return lambda p: p["state"] == "offline" and p["session"] == session

    rig.daemon.terminate()
    await op.wait_for("state", offline(first["session"]))
    # The Will's connection is made a second late: the main connection is up well before it.
    rig.daemon.env["KIOSK_TEST_PAUSE_AT"] = "fleet_will_connection:1"
    for run in range(3):
        rig.daemon.start(crash_at="fleet_said_online")  # SIGKILLed right after the online publish
        session = first["session"] + 1 + run
        online = await op.wait_online(session=session)
        assert await rig.daemon.wait_exit() == -signal.SIGKILL
        will = await op.wait_for("state", offline(session))
        assert will["boot_id"] == online["boot_id"] != first["boot_id"]
    del rig.daemon.env["KIOSK_TEST_PAUSE_AT"]
    rig.daemon.start()
    await op.wait_online(session=first["session"] + 4)


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


# --- commands ---------------------------------------------------------------------------------


async def test_ping_answers_once_with_the_session(fleet: tuple[Rig, Operator]) -> None:
    _, op = fleet
    online = await op.wait_online()
    body = op.request()
    res = await op.command("ping", body=body)
    assert res["status"] == "ok"
    assert res["error"] is None
    assert res["data"]["session"] == online["session"]
    # The same request again (a replay, or a redelivery): the original response, nothing new done.
    await op.publish("cmd/ping/req", body)
    await op.wait_until(lambda: len(op.on("cmd/ping/res")) == 2)
    first, again = op.on("cmd/ping/res")
    assert again == first


@pytest.mark.parametrize(
    ("name", "make", "code"),
    [
        ("reboot", lambda op: op.request(), "unknown_command"),
        ("ping", lambda op: op.request(expires_in=-1), "expired"),
        ("ping", lambda op: op.request(sign=False), "bad_signature"),
        ("ping", lambda op: signing.sign(op.request(sign=False), signing.generate()), "bad_signature"),
        ("ping", lambda op: {**op.request(), "args": {"tampered": True}}, "bad_signature"),
        ("ping", lambda op: op.sign({"request_id": "no-expiry", "args": {}}), "bad_request"),
        ("cancel_order", lambda op: op.request({"order_id": "nope"}), "unknown_order"),
        ("set_maintenance", lambda op: op.request({"enabled": "yes"}), "bad_request"),
    ],
)
async def test_refused_requests_get_one_error_response(
    fleet: tuple[Rig, Operator], name: str, make: Any, code: str
) -> None:
    _, op = fleet
    body = make(op)
    res = await op.command(name, body=body)
    assert res["status"] == "error"
    assert res["error"]["code"] == code
    assert res["data"] is None
    await op.command("ping")  # later requests are served in order: nothing else came for this one
    assert [r for r in op.on(f"cmd/{name}/res") if r["request_id"] == body["request_id"]] == [res]


async def test_a_refused_signature_does_not_use_up_the_request_id(fleet: tuple[Rig, Operator]) -> None:
    _, op = fleet
    good = op.request()
    bad = {**good, "sig": signing.sign(good, signing.generate())["sig"]}
    assert (await op.command("ping", body=bad))["error"]["code"] == "bad_signature"
    await op.publish("cmd/ping/req", good)
    await op.wait_until(lambda: any(r["status"] == "ok" for r in op.on("cmd/ping/res")))


async def test_maintenance_refuses_new_orders_and_survives_a_restart(fleet: tuple[Rig, Operator]) -> None:
    rig, op = fleet
    res = await op.command("set_maintenance", {"enabled": True, "message": "restocking"})
    assert res["data"] == {"maintenance": {"enabled": True, "message": "restocking"}}
    state = await rig.ctl.wait_payments("unavailable")
    assert state["reason"]["code"] == "maintenance"
    request = await rig.ctl.request("m1", 100)
    refused = await rig.ctl.wait_reply("m1", request)
    assert refused["state"] == "rejected"
    assert refused["reason"]["code"] == "maintenance"
    assert refused["reason"]["retryable"] is True
    before = state["boot_id"]
    rig.daemon.terminate()
    rig.daemon.start()
    # The run before the restart already reported maintenance (and may still be heard): only a
    # state from the new run (a new boot id) shows that maintenance survived the restart.
    await rig.ctl.wait_until(
        lambda: (
            (now := rig.ctl.daemon_state) is not None
            and now["boot_id"] != before
            and (now["state"], now["payments"], (now.get("reason") or {}).get("code"))
            == ("online", "unavailable", "maintenance")
        )
    )
    reported = await op.wait_for("config/reported", lambda p: p["effective"]["maintenance"]["enabled"])
    assert reported["effective"]["maintenance"]["message"] == "restocking"
    await op.command("set_maintenance", {"enabled": False})
    await rig.ctl.wait_payments("available")
    request = await rig.ctl.request("m1", 100)
    assert (await rig.ctl.wait_for("m1", "awaiting_card"))["state"] == "awaiting_card"


async def test_cancel_order_ends_an_open_order_and_the_event_says_so(fleet: tuple[Rig, Operator]) -> None:
    rig, op = fleet
    await rig.ctl.request("c1", 250)
    await rig.ctl.wait_for("c1", "awaiting_card")
    res = await op.command("cancel_order", {"order_id": "c1"})
    assert res["status"] == "ok", res
    final = await rig.ctl.wait_for("c1", "canceled", "failed")
    assert final["reason"]["code"] == "operator_canceled"
    event = await op.wait_for("events", lambda p: p["data"].get("order_id") == "c1")
    assert event["type"] == f"order.{final['state']}"
    assert event["seq"] >= 1
    rig.assert_money_safe()


async def test_reconcile_reports_and_a_second_one_meanwhile_is_busy(fleet: tuple[Rig, Operator]) -> None:
    rig, op = fleet
    rig.sim.add_fault(method="GET", path="/v1/payment_intents/search", latency_s=2.0, count=1)
    first, second = op.request(), op.request()
    await op.publish("cmd/reconcile/req", first)
    await op.publish("cmd/reconcile/req", second)
    busy = await op.wait_for("cmd/reconcile/res", lambda p: p["request_id"] == second["request_id"])
    assert busy["error"]["code"] == "busy"
    done = await op.wait_for("cmd/reconcile/res", lambda p: p["request_id"] == first["request_id"])
    assert done["status"] == "ok", done
    assert set(done["data"]) == {"seen", "released", "failed"}


async def test_rebirth_republishes_everything(fleet: tuple[Rig, Operator]) -> None:
    _, op = fleet
    await op.wait_until(lambda: op.on("health"))
    before = len(op.on("health"))
    res = await op.command("rebirth")
    assert res["data"]["republished"] == ["state", "info", "health", "config/reported"]
    await op.wait_until(lambda: len(op.on("health")) > before)


async def test_restart_answers_then_exits_for_the_supervisor_to_restart(fleet: tuple[Rig, Operator]) -> None:
    rig, op = fleet
    online = await op.wait_online()
    res = await op.command("restart")
    assert res["status"] == "ok"
    assert await rig.daemon.wait_exit() == 75
    assert (await op.wait_for("state", lambda p: p["state"] == "offline"))["session"] == online["session"]
    rig.daemon.start()  # what systemd's Restart=always does
    await op.wait_online(session=online["session"] + 1)


# --- remote configuration ---------------------------------------------------------------------


def order_policy(rig: Rig, order_id: str) -> dict[str, Any]:
    import json  # noqa: PLC0415

    with sqlite3.connect(rig.daemon.workdir / "state" / "kiosk.db") as conn:
        (data,) = conn.execute("SELECT data_json FROM orders WHERE order_id = ?", (order_id,)).fetchone()
    policy: dict[str, Any] = json.loads(data)["policy"]
    return policy


async def test_desired_config_applies_live_and_an_order_in_flight_keeps_its_settings(
    fleet: tuple[Rig, Operator],
) -> None:
    rig, op = fleet
    await rig.ctl.request("p1", 300)
    await rig.ctl.wait_for("p1", "awaiting_card")
    await op.desired(1, {"max_amount": 500, "currency": ["usd", "eur"], "payments": {"card_timeout_s": 45}})
    reported = await op.wait_reported(1)
    assert reported["status"] == "applied"
    assert reported["errors"] == []
    assert reported["effective"]["max_amount"] == 500
    assert reported["effective"]["currency"] == ["usd", "eur"]
    assert reported["effective"]["payments"]["card_timeout_s"] == 45
    # p1 started with a 3 s card timeout and ends by it; p2 starts with 45 s.
    assert (await rig.ctl.wait_for("p1", "canceled"))["reason"]["code"] == "card_timeout"
    assert order_policy(rig, "p1")["card_timeout_s"] == 3
    request = await rig.ctl.request("big", 600, "eur")
    assert (await rig.ctl.wait_reply("big", request))["reason"]["code"] == "amount_out_of_range"
    await rig.ctl.request("p2", 400, "eur")
    await rig.ctl.wait_for("p2", "awaiting_card")
    assert order_policy(rig, "p2")["card_timeout_s"] == 45
    await op.command("cancel_order", {"order_id": "p2"})
    await rig.ctl.wait_for("p2", "canceled", "failed")
    state = await op.wait_for("state", lambda p: p["config_version"] == 1)
    assert state["state"] == "online"


async def test_invalid_unsigned_and_old_versions_change_nothing(fleet: tuple[Rig, Operator]) -> None:
    _, op = fleet
    await op.desired(3, {"max_amount": 700})
    assert (await op.wait_reported(3))["effective"]["max_amount"] == 700
    await op.desired(4, {"max_amount": 0, "payments": {"card_timeout_s": -1}, "stripe": {"api_key": "sk_test_x"}})
    rejected = await op.wait_reported(4)
    assert rejected["status"] == "rejected"
    paths = {e["path"] for e in rejected["errors"]}
    assert paths == {"max_amount", "payments.card_timeout_s", "stripe.api_key"}, rejected["errors"]
    assert rejected["effective"]["max_amount"] == 700
    await op.desired(9, {"max_amount": 900}, sign=False)
    alert = await op.wait_for("events", lambda p: p["type"] == "alert" and p["data"].get("code") == "bad_signature")
    assert alert["data"]["version"] == 9
    await op.desired(4, {"max_amount": 800})  # equal to the last processed: ignored
    res = await op.command("rebirth")
    assert res["status"] == "ok"
    latest = await op.wait_until(lambda: len(op.on("config/reported")) >= 4 and op.on("config/reported")[-1])
    assert latest["version"] == 4
    assert latest["effective"]["max_amount"] == 700


async def test_config_survives_a_restart_and_a_restart_only_setting_waits_for_it(fleet: tuple[Rig, Operator]) -> None:
    rig, op = fleet
    await op.desired(1, {"max_amount": 600, "payments": {"request_timeout_s": 12}, "fleet": {"health_period_s": 30}})
    reported = await op.wait_reported(1)
    assert reported["status"] == "pending_restart"
    assert reported["effective"]["payments"]["request_timeout_s"] == 5  # the harness's, until the restart
    health = await op.wait_for("health", lambda p: p["period_s"] == 30)
    assert health["period_s"] == 30
    rig.daemon.terminate()
    rig.daemon.start()
    # The run before the restart may still be heard (its last report arrives late): wait for the
    # first report with the restart-only value in force, which only the new run can send.
    after = await op.wait_until(
        lambda: next(
            (r for r in op.on("config/reported") if r["effective"]["payments"]["request_timeout_s"] == 12), None
        )
    )
    assert after["version"] == 1
    assert after["status"] == "applied"
    assert after["effective"]["payments"]["request_timeout_s"] == 12
    assert after["effective"]["max_amount"] == 600
    assert after["effective"]["fleet"]["health_period_s"] == 30
    stale = {"version": 1, "config": {"max_amount": 100}}
    await op.publish("config/desired", op.sign(stale), retain=True)  # equal version after restart: ignored
    await op.command("rebirth")
    assert op.on("config/reported")[-1]["effective"]["max_amount"] == 600
