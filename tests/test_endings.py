"""Every ending of an order, end to end: real `kiosk run`, real Mosquitto, the simulator over HTTP.

Each test drives one order to one of protocol.md §1's endings and checks what the controller
heard (states, reasons, `in_reply_to`, the retained status) against what happened at Stripe
(the simulator's ledger).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest

from tests.harness import Rig, retained, start_rig

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from kiosk.mosquitto import Mosquitto

pytestmark = pytest.mark.slow

ITEMS = [
    {"sku": "cola", "name": "Cola 33cl", "quantity": 2, "unit_amount": 150},
    {"sku": "chips", "name": "Crisps", "quantity": 1, "unit_amount": 200},
]


@pytest.fixture(name="rig")
async def fixture_rig(tmp_path: Path, broker: Mosquitto) -> AsyncIterator[Rig]:
    async with start_rig(tmp_path, broker, PAYMENTS__MAX_CARD_ATTEMPTS="2") as rig:
        yield rig


def _actions(rig: Rig, kind: str, intent: str | None = None) -> list[Any]:
    return [
        a for a in rig.sim.ledger().reader_actions if a.type == kind and (intent is None or a.payment_intent == intent)
    ]


async def test_happy_path_shows_the_cart_then_captures_what_was_vended(rig: Rig) -> None:
    rig.sim.auto_present(rig.reader, 0.3)
    request_id = await rig.ctl.request("h-1", 500, items=ITEMS)
    received = await rig.ctl.wait_for("h-1", "received", "awaiting_card")
    assert rig.ctl.statuses["h-1"][0]["state"] == "received"
    assert rig.ctl.statuses["h-1"][0]["in_reply_to"] == request_id
    assert received["amount"] == 500
    assert received["currency"] == "usd"

    approved = await rig.ctl.wait_for("h-1", "approved")
    intents = rig.intents("h-1")
    assert len(intents) == 1
    pi = intents[0]
    assert approved["payment"] == {"intent": pi.id, "card": {"brand": "visa", "last4": "4242"}}
    assert approved["reason"] is None
    assert approved["captured_amount"] is None
    assert rig.sim.intents.by_id[pi.id].capture_method == "manual"
    assert pi.metadata["kiosk_id"] == "k1"
    assert pi.metadata["order_id"] == "h-1"
    # The cart was on the reader's screen before the reader asked for the card.
    display = _actions(rig, "set_reader_display")
    process = _actions(rig, "process_payment_intent", pi.id)
    assert len(display) == 1
    assert len(process) == 1
    assert display[0].status == "succeeded"
    assert display[0].started_at <= process[0].started_at

    vend_id = await rig.ctl.vend_id("h-1", "success")
    done = await rig.ctl.wait_for("h-1", "completed")
    assert done["captured_amount"] == 500
    assert done["in_reply_to"] == vend_id
    assert done["payment"]["intent"] == pi.id
    states = rig.ctl.states("h-1")
    assert [s for s in states if s != "processing"] == [
        "received",
        "awaiting_card",
        "approved",
        "capturing",
        "completed",
    ], states
    capturing = rig.ctl.statuses["h-1"][states.index("capturing")]
    assert capturing["in_reply_to"] == vend_id
    seqs = [s["seq"] for s in rig.ctl.statuses["h-1"]]
    assert seqs == list(range(1, len(seqs) + 1))

    # A controller that subscribes now gets the final status, retained, expiring within 24 h.
    retained = await rig.retained_status("h-1")
    assert retained.retain is True
    assert retained.payload == done
    assert retained.expiry_s is not None
    assert 24 * 3600 - 60 <= retained.expiry_s <= 24 * 3600
    rig.assert_money_safe()


async def test_without_items_the_reader_shows_no_cart(rig: Rig) -> None:
    rig.sim.auto_present(rig.reader, 0.2)
    await rig.ctl.request("h-2", 300)
    await rig.ctl.wait_for("h-2", "approved")
    assert _actions(rig, "set_reader_display") == []
    await rig.ctl.vend("h-2", "success")
    await rig.ctl.wait_for("h-2", "completed")
    rig.assert_money_safe()


async def test_declines_reprompt_on_the_same_intent_until_attempts_are_exhausted(rig: Rig) -> None:
    rig.sim.auto_present(rig.reader, 0.2, card="4000000000000002")
    await rig.ctl.request("d-1", 400)
    done = await rig.ctl.wait_for("d-1", "canceled", "failed", "completed", timeout=30)
    assert done["state"] == "canceled"
    assert done["reason"]["code"] == "attempts_exhausted"
    assert done["reason"]["retryable"] is False
    states = rig.ctl.states("d-1")
    # max_card_attempts=2: the first decline prompts again; the second ends the order.
    assert states == ["received", "awaiting_card", "declined", "awaiting_card", "canceled"], states
    first_decline = rig.ctl.statuses["d-1"][states.index("declined")]
    assert first_decline["reason"]["retryable"] is True
    # After the first decline the reader prompted again (awaiting_card once more).
    assert "awaiting_card" in states[states.index("declined") :], states
    intents = rig.intents("d-1")
    assert len(intents) == 1
    assert intents[0].status == "canceled"
    assert intents[0].captures == ()
    prompts = _actions(rig, "process_payment_intent", intents[0].id)
    assert [a.status for a in prompts] == ["failed", "failed"]
    rig.assert_money_safe()


async def test_controller_cancel_while_awaiting_a_card(rig: Rig) -> None:
    await rig.ctl.request("c-1", 300)
    await rig.ctl.wait_for("c-1", "awaiting_card")
    cancel_id = await rig.ctl.cancel_id("c-1")
    done = await rig.ctl.wait_for("c-1", "canceled", "failed")
    assert done["state"] == "canceled"
    assert done["reason"]["code"] == "controller_canceled"
    assert done["in_reply_to"] == cancel_id
    (pi,) = rig.intents("c-1")
    assert pi.status == "canceled"
    assert not pi.authorised
    # The reader is free again: the next order is taken and paid.
    rig.sim.auto_present(rig.reader, 0.2)
    await rig.ctl.request("c-2", 300)
    await rig.ctl.wait_for("c-2", "approved")
    await rig.ctl.vend("c-2", "success")
    await rig.ctl.wait_for("c-2", "completed")
    rig.assert_money_safe()


async def test_controller_cancel_loses_the_race_to_an_authorisation(rig: Rig) -> None:
    # The card is tapped and authorising (cancel_action is refused as busy meanwhile) when the
    # controller cancels: the authorisation then succeeds, and kiosk must release it, not sell.
    rig.sim.set_authorisation_delay(rig.reader, 2.0)
    await rig.ctl.request("c-3", 300)
    await rig.ctl.wait_for("c-3", "awaiting_card")
    rig.sim.present_card(rig.reader)
    cancel_id = await rig.ctl.cancel_id("c-3")
    done = await rig.ctl.wait_for("c-3", "canceled", "failed", "approved", "completed", timeout=30)
    assert done["state"] == "canceled", rig.ctl.states("c-3")
    assert done["reason"]["code"] == "controller_canceled"
    assert done["in_reply_to"] == cancel_id
    assert "approved" not in rig.ctl.states("c-3")
    assert done["captured_amount"] is None
    (pi,) = rig.intents("c-3")
    assert pi.authorised, "the race was not run: the card was never authorised"
    assert pi.status == "canceled"
    assert pi.captures == ()
    rig.assert_money_safe()


async def test_no_vend_result_releases_the_hold(rig: Rig) -> None:
    rig.sim.auto_present(rig.reader, 0.2)
    await rig.ctl.request("v-1", 300)
    await rig.ctl.wait_for("v-1", "approved")
    done = await rig.ctl.wait_for("v-1", "canceled", "failed", "completed", timeout=30)
    assert done["state"] == "canceled"
    assert done["reason"]["code"] == "vend_result_timeout"
    (pi,) = rig.intents("v-1")
    assert pi.status == "canceled"
    assert pi.captures == ()
    rig.assert_money_safe()


async def test_an_order_that_expired_before_it_arrived_is_canceled_without_a_payment(rig: Rig) -> None:
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat().replace("+00:00", "Z")
    request_id = await rig.ctl.request("x-1", 300, expires_at=past)
    done = await rig.ctl.wait_for("x-1", "canceled", "failed", "rejected")
    assert done["state"] == "canceled"
    assert done["reason"]["code"] == "order_expired"
    assert done["in_reply_to"] == request_id
    assert done["payment"] is None
    assert rig.intents("x-1") == ()
    assert _actions(rig, "process_payment_intent") == []
    # A later expiry is no obstacle.
    rig.sim.auto_present(rig.reader, 0.2)
    future = (datetime.now(UTC) + timedelta(minutes=5)).isoformat().replace("+00:00", "Z")
    await rig.ctl.request("x-2", 300, expires_at=future)
    await rig.ctl.wait_for("x-2", "approved")
    await rig.ctl.vend("x-2", "success")
    await rig.ctl.wait_for("x-2", "completed")
    rig.assert_money_safe()


async def test_the_customer_cancels_on_the_reader(rig: Rig) -> None:
    await rig.ctl.request("u-1", 300)
    await rig.ctl.wait_for("u-1", "awaiting_card")
    assert rig.sim.customer_cancel(rig.reader), "the reader was not waiting for a card"
    done = await rig.ctl.wait_for("u-1", "canceled", "failed")
    assert done["state"] == "canceled"
    assert done["reason"]["code"] == "customer_canceled"
    (pi,) = rig.intents("u-1")
    assert pi.status == "canceled"
    rig.assert_money_safe()


async def test_statuses_go_out_on_mqtt_3_too(rig: Rig) -> None:
    # The rig's controller speaks MQTT 3.1.1; a new 3.1.1 subscriber gets the retained status too.
    rig.sim.auto_present(rig.reader, 0.2)
    await rig.ctl.request("m-1", 300)
    approved = await rig.ctl.wait_for("m-1", "approved")
    (seen,) = await retained(rig.broker.host, rig.broker.port, "vend/v1/order/m-1/status", mqtt5=False)  # kept
    assert seen.payload == approved
    await rig.ctl.vend("m-1", "success")
    await rig.ctl.wait_for("m-1", "completed")
    rig.assert_money_safe()


async def test_controller_cancel_after_approval_releases_the_hold(rig: Rig) -> None:
    # The machine could not dispense after all and says so with cancel instead of vend_result.
    rig.sim.auto_present(rig.reader, 0.2)
    await rig.ctl.request("c-4", 300)
    await rig.ctl.wait_for("c-4", "approved")
    cancel_id = await rig.ctl.cancel_id("c-4")
    done = await rig.ctl.wait_for("c-4", "canceled", "failed", "completed")
    assert done["state"] == "canceled"
    assert done["reason"]["code"] == "controller_canceled"
    assert done["in_reply_to"] == cancel_id
    (pi,) = rig.intents("c-4")
    assert pi.status == "canceled"
    assert pi.captures == ()
    rig.assert_money_safe()


async def test_messages_after_the_end_change_nothing(rig: Rig) -> None:
    rig.sim.auto_present(rig.reader, 0.2)
    await rig.ctl.request("e-1", 300)
    await rig.ctl.wait_for("e-1", "approved")
    await rig.ctl.vend("e-1", "success")
    done = await rig.ctl.wait_for("e-1", "completed")
    # Too late to cancel: refused, and the controller hears the real ending again.
    cancel_id = await rig.ctl.cancel_id("e-1")
    refused = await rig.ctl.wait_reply("e-1", cancel_id)
    assert refused["state"] == "rejected"
    assert refused["reason"]["code"] == "too_late"
    await rig.ctl.wait_until(lambda: rig.ctl.states("e-1")[-1] == "completed")
    # A repeated vend result is a duplicate: the same ending, nothing captured twice.
    count = len(rig.ctl.statuses["e-1"])
    await rig.ctl.vend("e-1", "success")
    await rig.ctl.wait_until(lambda: len(rig.ctl.statuses["e-1"]) > count)
    assert rig.ctl.last("e-1")["state"] == "completed"
    assert rig.ctl.last("e-1")["seq"] == done["seq"]
    assert (await rig.retained_status("e-1")).payload["seq"] == done["seq"]
    (pi,) = rig.intents("e-1")
    assert len(pi.captures) == 1
    rig.assert_money_safe()
