"""Bad, conflicting and untimely controller messages, end to end against the real `kiosk run`.

protocol.md §1: each gets a `rejected` status with a specific code and a message saying what is
wrong (where an order id can be read from the topic), has no side effect on any order or at
Stripe, leaves a log line naming the problem, and the daemon goes on serving.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

from tests.harness import PREFIX, Rig, envelope, retained, start_rig

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from kiosk.mosquitto import Mosquitto

pytestmark = pytest.mark.slow


@pytest.fixture(name="rig")
async def fixture_rig(tmp_path: Path, broker: Mosquitto) -> AsyncIterator[Rig]:
    async with start_rig(tmp_path, broker, MAX_AMOUNT="5000", PAYMENTS__CARD_TIMEOUT_S="20") as rig:
        yield rig


def footprint(rig: Rig) -> tuple[Any, ...]:
    """Everything an order could have changed at Stripe."""
    ledger = rig.sim.ledger()
    return (
        tuple((i.id, i.status, i.amount_capturable, i.amount_received) for i in ledger.intents),
        tuple((a.id, a.status) for a in ledger.reader_actions),
    )


async def serve_one(rig: Rig, order_id: str, amount: int = 300) -> None:
    """A good order, from request to capture: the daemon still serves."""
    rig.sim.auto_present(rig.reader, 0.2)
    await rig.ctl.request(order_id, amount)
    await rig.ctl.wait_for(order_id, "approved")
    await rig.ctl.vend(order_id, "success")
    done = await rig.ctl.wait_for(order_id, "completed")
    assert done["captured_amount"] == amount
    rig.sim.auto_present(rig.reader, None)


def request_body(order_id: str, amount: Any = 300, **extra: Any) -> dict[str, Any]:
    return {**envelope(), "order_id": order_id, "amount": amount, "currency": "usd", **extra}


async def rejection(rig: Rig, order_id: str) -> dict[str, Any]:
    await rig.ctl.wait_until(lambda: "rejected" in rig.ctl.states(order_id))
    return next(s for s in rig.ctl.statuses[order_id] if s["state"] == "rejected")


# --- Requests that are wrong in themselves ------------------------------------------------------


def _oversize() -> bytes:
    body = request_body("bad-1", note="x" * (16 * 1024))
    return json.dumps(body).encode()


BAD_REQUESTS: list[tuple[str, bytes | dict[str, Any], str, str]] = [
    # (name, payload for order "bad-1", code, words the message must contain)
    ("malformed_json", b'{"v": 1, "id": "m1", "order_id": "bad-1", "amount": ', "invalid_order", "not UTF-8 JSON"),
    ("not_an_object", b"[1, 2, 3]", "invalid_order", "JSON object"),
    ("not_utf8", b"\xff\xfe{}", "invalid_order", "not UTF-8 JSON"),
    ("amount_as_text", request_body("bad-1", amount="300"), "invalid_order", "amount"),
    ("amount_as_float", request_body("bad-1", amount=3.5), "invalid_order", "amount"),
    ("amount_as_bool", request_body("bad-1", amount=True), "invalid_order", "amount"),
    (
        "currency_missing",
        {k: v for k, v in request_body("bad-1").items() if k != "currency"},
        "invalid_order",
        "currency",
    ),
    ("envelope_missing", {"order_id": "bad-1", "amount": 300, "currency": "usd"}, "invalid_order", "id"),
    ("naive_timestamp", request_body("bad-1", ts="2026-01-01T12:00:00"), "invalid_order", "time zone"),
    ("naive_expiry", request_body("bad-1", expires_at="2030-01-01T12:00:00"), "invalid_order", "expires_at"),
    (
        "items_wrong_type",
        request_body("bad-1", items=[{"sku": "a", "name": "A", "quantity": "1", "unit_amount": 300}]),
        "invalid_order",
        "quantity",
    ),
    ("oversize", _oversize(), "invalid_order", "16384-byte limit"),
    ("order_id_mismatch", request_body("other-order"), "invalid_order", "differs from the topic"),
    (
        "items_do_not_add_up",
        request_body("bad-1", items=[{"sku": "a", "name": "A", "quantity": 2, "unit_amount": 100}]),
        "invalid_order",
        "add up to 200",
    ),
    ("amount_zero", request_body("bad-1", amount=0), "amount_out_of_range", "from 1 to 5000"),
    ("amount_over_max", request_body("bad-1", amount=5001), "amount_out_of_range", "from 1 to 5000"),
    ("currency_not_allowed", {**request_body("bad-1"), "currency": "eur"}, "currency_not_allowed", "'eur'"),
]


@pytest.mark.parametrize(("payload", "code", "words"), [p[1:] for p in BAD_REQUESTS], ids=[p[0] for p in BAD_REQUESTS])
async def test_a_bad_request_is_rejected_without_side_effects(
    rig: Rig, payload: bytes | dict[str, Any], code: str, words: str
) -> None:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    before = footprint(rig)
    await rig.ctl.raw(f"{PREFIX}/order/bad-1/request", raw)
    status = await rejection(rig, "bad-1")
    assert status["reason"]["code"] == code
    assert words in status["reason"]["message"], status["reason"]["message"]
    assert status["reason"]["retryable"] is False
    assert status["payment"] is None
    assert status["captured_amount"] is None
    if isinstance(payload, dict) and "id" in payload:
        assert status["in_reply_to"] == payload["id"]
    assert rig.ctl.states("bad-1") == ["rejected"]
    assert footprint(rig) == before
    # Nothing retained: the order id is not taken by a message that was refused.
    assert await retained(rig.broker.host, rig.broker.port, f"{PREFIX}/order/bad-1/status") == []
    assert "bad-1" in rig.daemon.log()
    assert code in rig.daemon.log()
    await serve_one(rig, "good-1")
    rig.assert_money_safe()


@pytest.mark.parametrize("order_id", ["has space", "x" * 65, "semi;colon", "caf\u00e9"])
async def test_an_unreadable_order_id_in_the_topic_is_logged_and_ignored(rig: Rig, order_id: str) -> None:
    before = footprint(rig)
    topic = f"{PREFIX}/order/{order_id}/request"
    await rig.ctl.raw(topic, json.dumps(request_body(order_id)).encode())
    # The daemon takes messages one at a time: once a later order completes, the bad one was seen.
    await serve_one(rig, "good-2")
    assert footprint(rig) != before  # good-2 paid
    assert [s for s in rig.ctl.seen if s.topic.startswith(f"{PREFIX}/order/{order_id}/")] == []
    assert order_id not in rig.ctl.statuses
    assert "bus.bad_topic" in rig.daemon.log()
    assert len(rig.sim.ledger().intents) == 1
    rig.assert_money_safe()


# --- Messages about an order that exists --------------------------------------------------------


async def open_order(rig: Rig, order_id: str, amount: int = 400) -> tuple[str, dict[str, Any]]:
    """An order waiting for a card; returns its request's id and its status."""
    request_id = await rig.ctl.request(order_id, amount)
    return request_id, await rig.ctl.wait_for(order_id, "awaiting_card")


async def assert_untouched(rig: Rig, order_id: str, status: dict[str, Any]) -> None:
    """The order's retained status is still its real one."""
    seen = await rig.retained_status(order_id)
    assert seen.payload["state"] == status["state"]
    assert seen.payload["seq"] == status["seq"]


async def test_vend_result_before_approval_is_refused_and_the_order_goes_on(rig: Rig) -> None:
    _, waiting = await open_order(rig, "early-1")
    before = footprint(rig)
    vend_id = await rig.ctl.vend_id("early-1", "success")
    refused = await rig.ctl.wait_reply("early-1", vend_id)
    assert refused["state"] == "rejected"
    assert refused["reason"]["code"] == "invalid_order"
    assert "awaiting_card" in refused["reason"]["message"]
    assert footprint(rig) == before
    await assert_untouched(rig, "early-1", waiting)
    assert "order.message_refused" in rig.daemon.log()
    # The order carries on: card, approval, and the real vend result captures the full amount.
    rig.sim.present_card(rig.reader)
    await rig.ctl.wait_for("early-1", "approved")
    await rig.ctl.vend("early-1", "success")
    done = await rig.ctl.wait_for("early-1", "completed")
    assert done["captured_amount"] == 400
    rig.assert_money_safe()


@pytest.mark.parametrize(
    ("vended", "words"),
    [(None, "needs vended_amount"), (400, "below the authorised amount"), (900, "below the authorised amount")],
    ids=["missing", "equal", "above"],
)
async def test_a_bad_partial_vend_result_leaves_the_approved_order_alone(
    rig: Rig, vended: int | None, words: str
) -> None:
    rig.sim.auto_present(rig.reader, 0.2)
    await rig.ctl.request("part-1", 400)
    approved = await rig.ctl.wait_for("part-1", "approved")
    before = footprint(rig)
    vend_id = await rig.ctl.vend_id("part-1", "partial", vended)
    refused = await rig.ctl.wait_reply("part-1", vend_id)
    assert refused["state"] == "rejected"
    assert refused["reason"]["code"] == "invalid_order"
    assert words in refused["reason"]["message"]
    # The controller hears the truth again right after: still approved, same seq.
    await rig.ctl.wait_until(lambda: rig.ctl.statuses["part-1"][-1]["state"] == "approved")
    assert footprint(rig) == before
    await assert_untouched(rig, "part-1", approved)
    # A valid report is still taken.
    await rig.ctl.vend("part-1", "partial", 150)
    done = await rig.ctl.wait_for("part-1", "completed")
    assert done["captured_amount"] == 150
    rig.assert_money_safe()


async def test_a_malformed_message_about_a_running_order_does_not_touch_it(rig: Rig) -> None:
    _, waiting = await open_order(rig, "run-1")
    before = footprint(rig)
    await rig.ctl.raw(f"{PREFIX}/order/run-1/cancel", b"{not json")
    await rig.ctl.wait_until(lambda: "rejected" in rig.ctl.states("run-1"))
    await rig.ctl.wait_until(lambda: rig.ctl.states("run-1")[-1] == "awaiting_card")
    assert footprint(rig) == before
    await assert_untouched(rig, "run-1", waiting)
    assert "bus.invalid_message" in rig.daemon.log()
    rig.sim.present_card(rig.reader)
    await rig.ctl.wait_for("run-1", "approved")
    await rig.ctl.vend("run-1", "success")
    await rig.ctl.wait_for("run-1", "completed")
    rig.assert_money_safe()


async def test_cancel_of_an_unknown_order(rig: Rig) -> None:
    before = footprint(rig)
    cancel_id = await rig.ctl.cancel_id("ghost-1")
    refused = await rig.ctl.wait_reply("ghost-1", cancel_id)
    assert refused["state"] == "rejected"
    assert refused["reason"]["code"] == "unknown_order"
    assert "ghost-1" in refused["reason"]["message"]
    assert footprint(rig) == before
    assert await retained(rig.broker.host, rig.broker.port, f"{PREFIX}/order/ghost-1/status") == []
    vend_id = await rig.ctl.vend_id("ghost-2", "success")
    refused = await rig.ctl.wait_reply("ghost-2", vend_id)
    assert refused["reason"]["code"] == "unknown_order"
    await serve_one(rig, "good-3")
    rig.assert_money_safe()


# --- Duplicates, conflicts, busy ----------------------------------------------------------------


async def test_a_duplicate_request_republishes_the_status_and_does_nothing_else(rig: Rig) -> None:
    _, waiting = await open_order(rig, "dup-1")
    before = footprint(rig)
    count = len(rig.ctl.statuses["dup-1"])
    # Same content, a new envelope (a controller that resent after a reconnect).
    await rig.ctl.request("dup-1", 400)
    await rig.ctl.wait_until(lambda: len(rig.ctl.statuses["dup-1"]) > count)
    again = rig.ctl.statuses["dup-1"][-1]
    assert again["state"] == "awaiting_card"
    assert again["seq"] == waiting["seq"]
    assert footprint(rig) == before
    assert "order.duplicate_request" in rig.daemon.log()
    rig.sim.present_card(rig.reader)
    await rig.ctl.wait_for("dup-1", "approved")
    await rig.ctl.vend("dup-1", "success")
    done = await rig.ctl.wait_for("dup-1", "completed")
    # And once it has ended, a duplicate hears the end, and nothing is charged twice.
    count = len(rig.ctl.statuses["dup-1"])
    await rig.ctl.request("dup-1", 400)
    await rig.ctl.wait_until(lambda: len(rig.ctl.statuses["dup-1"]) > count)
    assert rig.ctl.statuses["dup-1"][-1] == {**done, "ts": rig.ctl.statuses["dup-1"][-1]["ts"]}
    assert len(rig.intents("dup-1")) == 1
    assert rig.sim.ledger().captured_total("dup-1") == 400
    rig.assert_money_safe()


async def test_the_same_order_id_with_other_content_is_a_conflict(rig: Rig) -> None:
    _, waiting = await open_order(rig, "conf-1", 400)
    before = footprint(rig)
    count = len(rig.ctl.seen)
    conflict_id = await rig.ctl.request("conf-1", 900)
    refused = await rig.ctl.wait_reply("conf-1", conflict_id)
    assert refused["state"] == "rejected"
    assert refused["reason"]["code"] == "order_conflict"
    assert refused["reason"]["retryable"] is False
    assert refused["amount"] == 900
    # Then the original's real status, re-published.
    await rig.ctl.wait_until(lambda: rig.ctl.states("conf-1")[-1] == "awaiting_card")
    after = [s.payload for s in rig.ctl.seen[count:] if s.topic == f"{PREFIX}/order/conf-1/status"]
    assert [s["state"] for s in after] == ["rejected", "awaiting_card"]
    assert after[1]["seq"] == waiting["seq"]
    assert after[1]["amount"] == 400
    assert footprint(rig) == before
    await assert_untouched(rig, "conf-1", waiting)
    assert "order.conflict" in rig.daemon.log()
    rig.sim.present_card(rig.reader)
    await rig.ctl.wait_for("conf-1", "approved")
    await rig.ctl.vend("conf-1", "success")
    done = await rig.ctl.wait_for("conf-1", "completed")
    assert done["captured_amount"] == 400
    rig.assert_money_safe()


async def test_a_request_while_the_reader_is_taken_is_busy_and_later_served(rig: Rig) -> None:
    await open_order(rig, "first-1")
    before = footprint(rig)
    body = request_body("second-1", 250)
    await rig.ctl.raw(f"{PREFIX}/order/second-1/request", json.dumps(body).encode())
    refused = await rig.ctl.wait_reply("second-1", body["id"])
    assert refused["state"] == "rejected"
    assert refused["reason"]["code"] == "busy"
    assert refused["reason"]["retryable"] is True
    assert footprint(rig) == before
    assert await retained(rig.broker.host, rig.broker.port, f"{PREFIX}/order/second-1/status") == []
    # The first order ends; the very same request is then considered afresh and served.
    await rig.ctl.cancel("first-1")
    await rig.ctl.wait_for("first-1", "canceled")
    rig.sim.auto_present(rig.reader, 0.2)
    await rig.ctl.raw(f"{PREFIX}/order/second-1/request", json.dumps(body).encode())
    await rig.ctl.wait_for("second-1", "approved")
    await rig.ctl.vend("second-1", "success")
    done = await rig.ctl.wait_for("second-1", "completed")
    assert done["captured_amount"] == 250
    assert done["in_reply_to"] != body["id"]  # the capture answers the vend_result
    assert rig.ctl.states("second-1")[:2] == ["rejected", "received"]
    rig.assert_money_safe()


async def test_unknown_fields_are_tolerated(rig: Rig) -> None:
    rig.sim.auto_present(rig.reader, 0.2)
    body = request_body("extra-1", 300, loyalty={"card": "1234"}, firmware="4.2")
    await rig.ctl.raw(f"{PREFIX}/order/extra-1/request", json.dumps(body).encode())
    await rig.ctl.wait_for("extra-1", "approved")
    await rig.ctl.vend("extra-1", "success")
    await rig.ctl.wait_for("extra-1", "completed")
    rig.assert_money_safe()
