"""Crash safety: the real `kiosk run` is SIGKILLed at each named step, restarted, and must settle.

Each case arms one or more crash points (`KIOSK_TEST_CRASH_AT`, see kiosk/crashpoints.py), lets
the controller drive an order exactly as it would in the field — it re-sends nothing; what the
daemon had not acknowledged the broker's persistent session delivers again — waits until the
daemon dies by itself, restarts it (without the crash point after the last one), and checks the
simulator's ledger: one PaymentIntent per order, one capture of the right amount for each
successful vend, none for a failed one, no authorisation left behind, statuses that never go back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kiosk.mosquitto import Mosquitto
from tests.crashrig import FINAL, CrashRig, crash_rig, vend_when_approved
from tests.harness import assert_settled, assert_statuses_ordered

pytestmark = pytest.mark.slow


@pytest.fixture(name="rig")
async def fixture_rig(tmp_path: Path, broker: Mosquitto) -> AsyncIterator[CrashRig]:
    async with crash_rig(tmp_path, broker) as rig:
        yield rig


# One sale per case: (crash steps in order, vend result, vended amount, captured amount).
SALES = [
    pytest.param(("order_received",), "success", None, 250, id="order_received"),
    pytest.param(("order_journaled",), "success", None, 250, id="order_journaled"),
    pytest.param(("status_queued",), "success", None, 250, id="status_queued"),
    pytest.param(("before_create",), "success", None, 250, id="before_create"),
    pytest.param(("after_create",), "success", None, 250, id="after_create"),
    pytest.param(("before_process",), "success", None, 250, id="before_process"),
    pytest.param(("after_process",), "success", None, 250, id="after_process"),
    pytest.param(("status_queued_approved",), "success", None, 250, id="status_queued_approved"),
    pytest.param(("approved_published",), "success", None, 250, id="approved_published"),
    pytest.param(("before_capture",), "success", None, 250, id="before_capture"),
    pytest.param(("after_capture",), "success", None, 250, id="after_capture"),
    pytest.param(("before_capture",), "partial", 100, 100, id="before_capture-partial"),
    pytest.param(("after_capture",), "partial", 100, 100, id="after_capture-partial"),
    pytest.param(("before_cancel",), "failure", None, None, id="before_cancel-vend_failed"),
    pytest.param(("after_cancel",), "failure", None, None, id="after_cancel-vend_failed"),
    pytest.param(("approved_published", "recovering"), "success", None, 250, id="approved_published+recovering"),
    pytest.param(("after_create", "recovering"), "success", None, 250, id="after_create+recovering"),
    pytest.param(("after_process", "recovering"), "failure", None, None, id="after_process+recovering-vend_failed"),
    pytest.param(("before_capture", "before_capture"), "success", None, 250, id="before_capture+before_capture"),
    pytest.param(("after_capture", "after_read_intent"), "success", None, 250, id="after_capture+after_read_intent"),
    pytest.param(("after_cancel", "after_read_intent"), "failure", None, None, id="after_cancel+after_read_intent"),
]


@pytest.mark.parametrize(("steps", "result", "vended", "captured"), SALES)
async def test_a_sale_survives_a_crash_at(
    rig: CrashRig, steps: tuple[str, ...], result: str, vended: int | None, captured: int | None
) -> None:
    rig.sim.auto_present(rig.reader, 0.2)
    await rig.start_and_order(steps[0], "o-1", 250)
    sale = asyncio.create_task(vend_when_approved(rig.ctl, "o-1", result, vended))
    await rig.crash_through(steps)
    final = await sale
    if captured is None:
        assert (final["state"], final["reason"]["code"]) == ("canceled", "vend_failed")
    else:
        assert final["captured_amount"] == captured
    assert_settled(rig.sim.ledger(), rig.ctl, {"o-1": captured})
    states = assert_statuses_ordered(rig.ctl, "o-1")
    assert states[0] == "received"
    assert "approved" in states


COLLECT_CONFIRM = [
    pytest.param(("before_collect",), id="before_collect"),
    pytest.param(("after_collect",), id="after_collect"),
    pytest.param(("before_confirm",), id="before_confirm"),
    pytest.param(("after_confirm",), id="after_confirm"),
    pytest.param(("after_collect", "after_confirm"), id="after_collect+after_confirm"),
    pytest.param(("after_confirm", "recovering"), id="after_confirm+recovering"),
]


@pytest.mark.parametrize("steps", COLLECT_CONFIRM)
async def test_a_split_flow_sale_survives_a_crash_at(rig: CrashRig, steps: tuple[str, ...]) -> None:
    # collect_payment_method, then confirm_payment_intent within Stripe's 30 s window.
    rig.daemon.env["KIOSK_PAYMENTS__FLOW"] = "collect_confirm"
    rig.sim.auto_present(rig.reader, 0.2)
    await rig.start_and_order(steps[0], "o-7", 440)
    sale = asyncio.create_task(vend_when_approved(rig.ctl, "o-7", "success"))
    await rig.crash_through(steps)
    final = await sale
    assert final["captured_amount"] == 440
    assert_settled(rig.sim.ledger(), rig.ctl, {"o-7": 440})


@pytest.mark.parametrize("step", ["before_display", "after_display"])
async def test_a_sale_with_a_cart_survives_a_crash_at(rig: CrashRig, step: str) -> None:
    items = [{"sku": "c-1", "name": "Cola", "quantity": 2, "unit_amount": 150}]
    rig.sim.auto_present(rig.reader, 0.2)
    rig.daemon.start(crash_at=step)
    await rig.ctl.wait_daemon("online")
    await rig.ctl.request("o-8", 300, items=items)
    sale = asyncio.create_task(vend_when_approved(rig.ctl, "o-8", "success"))
    await rig.crash_through((step,))
    await sale
    assert_settled(rig.sim.ledger(), rig.ctl, {"o-8": 300})


async def test_a_cancel_sent_while_the_daemon_is_down_is_applied(rig: CrashRig) -> None:
    # No card yet; kiosk dies after starting the payment; the customer walks away meanwhile.
    await rig.start_and_order("after_process", "o-9", 300)
    await rig.crash("after_process")
    await rig.ctl.cancel("o-9")
    rig.daemon.start()
    final = await rig.ctl.wait_for("o-9", *FINAL)
    assert (final["state"], final["reason"]["code"]) == ("canceled", "controller_canceled")
    assert_settled(rig.sim.ledger(), rig.ctl, {"o-9": None})


@pytest.mark.parametrize("step", ["status_queued_declined", "after_read_reader"])
async def test_a_decline_then_approval_survives_a_crash_at(rig: CrashRig, step: str) -> None:
    # The first card is declined (insufficient funds), the reader prompts again on the same PI.
    rig.sim.auto_present(rig.reader, 0.2, card="4000000000009995")
    await rig.start_and_order(step, "o-10", 310)
    await rig.crash(step)
    rig.sim.auto_present(rig.reader, 0.2)
    rig.daemon.start()
    final = await vend_when_approved(rig.ctl, "o-10", "success")
    assert final["captured_amount"] == 310
    assert_settled(rig.sim.ledger(), rig.ctl, {"o-10": 310})


async def test_a_cancel_while_the_card_is_being_authorised_survives_a_crash(rig: CrashRig) -> None:
    # The controller cancels while the reader is authorising (cancel_action answers busy); kiosk
    # dies on the way. Whatever the authorisation did, nothing stays held and nothing is charged.
    # The authorisation lasts long enough that the cancel lands in it even on a loaded machine
    # (with 1 s, a slow daemon saw the card approved first and never reached cancel_action).
    rig.sim.set_authorisation_delay(rig.reader, 4.0)
    rig.sim.auto_present(rig.reader, 0.1)
    await rig.start_and_order("after_cancel_action", "o-11", 320)
    await rig.ctl.wait_for("o-11", "awaiting_card")
    await asyncio.sleep(0.3)
    await rig.ctl.cancel("o-11")
    await rig.crash("after_cancel_action")
    rig.daemon.start()
    final = await rig.ctl.wait_for("o-11", *FINAL)
    assert final["state"] == "canceled", final
    assert_settled(rig.sim.ledger(), rig.ctl, {"o-11": None})


async def test_a_card_timeout_survives_a_crash_at_cancel_action(rig: CrashRig) -> None:
    # No card: the order times out; the daemon dies right after asking the reader to stop.
    rig.daemon.env["KIOSK_PAYMENTS__CARD_TIMEOUT_S"] = "1"
    await rig.start_and_order("after_cancel_action", "o-2", 300)
    await rig.crash_through(("after_cancel_action",))
    final = await rig.ctl.wait_for("o-2", *FINAL, timeout=30)
    assert (final["state"], final["reason"]["code"]) == ("canceled", "card_timeout")
    assert_settled(rig.sim.ledger(), rig.ctl, {"o-2": None})
    # The reader was freed: the next sale goes through on the same daemon.
    rig.sim.auto_present(rig.reader, 0.2)
    await rig.ctl.request("o-3", 120)
    await vend_when_approved(rig.ctl, "o-3", "success")
    assert_settled(rig.sim.ledger(), rig.ctl, {"o-2": None, "o-3": 120})


async def test_an_order_published_while_the_daemon_is_down_is_served(rig: CrashRig) -> None:
    # The first run sets up the persistent session (fixed client id, 1-day expiry) and stops.
    rig.daemon.start()
    await rig.ctl.wait_daemon("online")
    assert rig.daemon.terminate() == 0
    await rig.ctl.wait_daemon("offline")
    rig.sim.auto_present(rig.reader, 0.2)
    await rig.ctl.request("o-4", 180)
    await asyncio.sleep(0.3)
    assert rig.ctl.statuses["o-4"] == []  # nobody served it yet
    rig.daemon.start()
    final = await vend_when_approved(rig.ctl, "o-4", "success")
    assert final["captured_amount"] == 180
    assert_settled(rig.sim.ledger(), rig.ctl, {"o-4": 180})


async def test_an_order_received_but_not_committed_is_delivered_again(rig: CrashRig) -> None:
    # Killed between receipt and commit: had the delivery been acknowledged on receipt (aiomqtt's
    # default), the order would be lost; with the ack after commit, the broker sends it again.
    rig.sim.auto_present(rig.reader, 0.2)
    await rig.start_and_order("order_received", "o-5", 210)
    await rig.crash("order_received")
    assert rig.ctl.statuses["o-5"] == []  # nothing was journaled or published
    rig.daemon.start()
    final = await vend_when_approved(rig.ctl, "o-5", "success")
    assert final["captured_amount"] == 210
    assert_settled(rig.sim.ledger(), rig.ctl, {"o-5": 210})


async def test_an_order_journaled_but_not_acknowledged_is_delivered_again_and_changes_nothing(rig: CrashRig) -> None:
    rig.sim.auto_present(rig.reader, 0.2)
    await rig.start_and_order("order_journaled", "o-12", 230)
    await rig.crash("order_journaled")
    rig.daemon.start()
    final = await vend_when_approved(rig.ctl, "o-12", "success")
    assert final["captured_amount"] == 230
    # The broker delivered the request again (never acknowledged); kiosk saw it was the same order.
    assert '"order.duplicate_request"' in rig.daemon.log().rsplit("--- run", 1)[-1]
    assert_settled(rig.sim.ledger(), rig.ctl, {"o-12": 230})


async def test_seq_keeps_rising_across_restarts_and_queued_statuses_are_published(rig: CrashRig) -> None:
    # Killed with `approved` saved in the outbox but not yet published: the controller first hears
    # of the approval from the restarted daemon, under the same seq the journal gave it.
    rig.sim.auto_present(rig.reader, 0.2)
    await rig.start_and_order("status_queued_approved", "o-6", 330)
    await rig.crash("status_queued_approved")
    assert "approved" not in rig.ctl.states("o-6")
    before = max(s["seq"] for s in rig.ctl.statuses["o-6"])
    rig.daemon.start()
    approved = await rig.ctl.wait_for("o-6", "approved")
    assert approved["seq"] == before + 1
    rig.daemon.kill()  # and once more, a plain power cut while approved
    rig.daemon.start()
    await rig.ctl.vend("o-6", "success")
    await rig.ctl.wait_for("o-6", "completed", timeout=30)
    states = assert_statuses_ordered(rig.ctl, "o-6")
    assert states[-3:] == ["approved", "capturing", "completed"]
    assert_settled(rig.sim.ledger(), rig.ctl, {"o-6": 330})
