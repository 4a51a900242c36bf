"""Recovery and reconciliation against the real `kiosk run`, Mosquitto and the simulator over HTTP.

At start kiosk reads every open order back from Stripe and drives it on before it takes new
orders; an order whose PaymentIntent id was never stored is recovered with the same idempotency
key. The reconciler (first pass soon after start, then every `payments.reconcile_every_s`)
cancels this kiosk's PaymentIntents that no open order accounts for, and leaves alone the PIs of
open orders and of other kiosks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from pydantic import SecretStr

from kiosk import core
from kiosk.gateway import Gateway
from kiosk.journal import OutboxRow
from kiosk.model import Call, Op, Policy, Reason, Restarted, State
from kiosk.mosquitto import Mosquitto
from kiosk.runner import decode, encode
from kiosk.service import superseded
from tests.crashrig import FINAL, CrashRig, crash_rig, vend_when_approved
from tests.harness import API_KEY, assert_settled, assert_statuses_ordered

pytestmark = pytest.mark.slow


@pytest.fixture(name="rig")
async def fixture_rig(tmp_path: Path, broker: Mosquitto) -> AsyncIterator[CrashRig]:
    async with crash_rig(tmp_path, broker, PAYMENTS__RECONCILE_EVERY_S="0.3") as rig:
        yield rig


async def reconciler_passes(rig: CrashRig, count: int) -> None:
    """Wait until the daemon's log shows `count` reconciler passes in the current run."""
    async with asyncio.timeout(10):
        # The log is another process's file: reading it now and then is the only way to wait on it.
        while rig.daemon.log().rsplit("--- run", 1)[-1].count('"reconciler.pass"') < count:  # noqa: ASYNC110
            await asyncio.sleep(0.05)


# --- Recovery -----------------------------------------------------------------------------------


async def test_a_create_whose_reply_was_lost_is_sent_again_with_the_same_key(rig: CrashRig) -> None:
    rig.sim.auto_present(rig.reader, 0.2)
    await rig.start_and_order("after_create", "o-1", 250)
    await rig.crash("after_create")
    # Stripe has the PI; the journal does not know its id.
    (created,) = rig.sim.ledger().for_order("o-1")
    stored = rig.journal().get("o-1")
    assert stored is not None
    assert decode(stored.data_json).intent_id is None
    rig.daemon.start()
    final = await vend_when_approved(rig.ctl, "o-1", "success")
    assert final["payment"]["intent"] == created.id
    assert_settled(rig.sim.ledger(), rig.ctl, {"o-1": 250})
    stored = rig.journal().get("o-1")
    assert stored is not None
    order = decode(stored.data_json)
    assert order.intent_id == created.id
    assert order.attempts.get("create", 1) == 1
    # The key was (kiosk, order, create, attempt 1): Stripe answers it with the same PI again.
    async with Gateway(
        api_key=SecretStr(API_KEY), api_base=rig.url, api_version=None, reader_id=rig.reader, request_timeout_s=5
    ) as stripe:
        replayed = await stripe.create_intent(
            amount=250,
            currency="usd",
            metadata={"kiosk_id": "k1", "order_id": "o-1"},
            description="kiosk k1 order o-1",
            key="kiosk:k1:o-1:create:1",
        )
    assert replayed.id == created.id
    assert len(rig.sim.ledger().for_order("o-1")) == 1


async def test_open_orders_are_driven_on_before_new_orders_are_taken(rig: CrashRig) -> None:
    rig.sim.auto_present(rig.reader, 0.2)
    await rig.start_and_order(None, "o-1", 250)
    await rig.ctl.wait_for("o-1", "approved")
    rig.daemon.kill()
    # While kiosk is down the controller has a new customer; the old order still owns the reader.
    await rig.ctl.request("o-2", 400)
    rig.daemon.start()
    refused = await rig.ctl.wait_for("o-2", "rejected")
    assert refused["reason"]["code"] == "busy"
    assert refused["reason"]["retryable"] is True
    await rig.ctl.vend("o-1", "success")
    await rig.ctl.wait_for("o-1", "completed")
    # The second run read o-1 back from Stripe before it served the bus.
    run = rig.daemon.log().rsplit("--- run", 1)[-1]
    assert run.index('"runner.order_recovered"') < run.index('"bus.connected"') < run.index('"code": "busy"')
    # A request sent again later is considered afresh.
    await rig.ctl.request("o-2", 400)
    await vend_when_approved(rig.ctl, "o-2", "success")
    assert_settled(rig.sim.ledger(), rig.ctl, {"o-1": 250, "o-2": 400})


async def test_a_card_timeout_that_passed_while_down_releases_the_reader(rig: CrashRig) -> None:
    # Killed right after the reader was told to take a card; nobody presents one, and the card
    # timeout passes while kiosk is down: at start it reads the reader, stops its action, cancels.
    rig.daemon.env["KIOSK_PAYMENTS__CARD_TIMEOUT_S"] = "1"
    await rig.start_and_order("after_process", "o-3", 300)
    await rig.crash("after_process")
    await asyncio.sleep(1.2)
    rig.daemon.start()
    final = await rig.ctl.wait_for("o-3", "canceled", "failed", timeout=20)
    assert (final["state"], final["reason"]["code"]) == ("canceled", "card_timeout")
    assert_settled(rig.sim.ledger(), rig.ctl, {"o-3": None})
    actions = [a for a in rig.sim.ledger().reader_actions if a.reader == rig.reader]
    assert actions
    assert all(a.status != "in_progress" for a in actions), actions


async def test_seq_continues_from_the_journal_after_each_restart(rig: CrashRig) -> None:
    rig.sim.auto_present(rig.reader, 0.2)
    await rig.start_and_order("after_process", "o-4", 150)
    await rig.crash("after_process")
    rig.daemon.start(crash_at="approved_published")
    await rig.crash("approved_published")
    rig.daemon.start(crash_at="after_capture")
    await rig.ctl.vend("o-4", "success")
    await rig.crash("after_capture")
    rig.daemon.start()
    await rig.ctl.wait_for("o-4", "completed")
    states = assert_statuses_ordered(rig.ctl, "o-4")
    assert states[0] == "received"
    assert states[-3:] == ["approved", "capturing", "completed"]
    assert next(s["seq"] for s in rig.ctl.statuses["o-4"] if s["state"] == "completed") == len(states)
    assert_settled(rig.sim.ledger(), rig.ctl, {"o-4": 150})


async def test_a_vend_result_sent_in_time_while_down_is_honoured_after_the_deadline(rig: CrashRig) -> None:
    # The controller dispensed on `approved` and reported success at once, but kiosk had died; it
    # is back only after the vend-result deadline. The report waited in the broker's session: the
    # sale is captured, not released (before the fix kiosk canceled the PI as it read it back).
    rig.daemon.env["KIOSK_PAYMENTS__VEND_RESULT_TIMEOUT_S"] = "2"
    rig.sim.auto_present(rig.reader, 0.2)
    await rig.start_and_order("approved_published", "o-7", 250)
    await rig.ctl.wait_for("o-7", "approved")
    await rig.ctl.vend("o-7", "success")
    await rig.crash("approved_published")
    await asyncio.sleep(2.5)
    rig.daemon.start()
    final = await rig.ctl.wait_for("o-7", *FINAL)
    assert final["state"] == "completed", final
    assert_settled(rig.sim.ledger(), rig.ctl, {"o-7": 250})


def test_a_restart_gives_an_approved_order_a_bounded_grace_for_its_vend_result() -> None:
    # The core's side of the test above: no I/O, time passed in.
    start = 1_000.0
    order = replace(
        core.new_order(order_id="o", amount=100, currency="usd", policy=Policy(kiosk_id="k1"), now=start),
        intent_id="pi_1",
        state=State.APPROVED,
        vend_deadline=start + 300,
    )
    back = start + 900  # the deadline passed while kiosk was down
    restarted, _ = core.handle(order, Restarted(), back)
    assert restarted.vend_deadline == back + core.RESTART_VEND_GRACE_S
    planned, call = core.plan(restarted, back)
    assert planned.goal is None
    assert isinstance(call, Call)
    assert call.op is Op.READ_INTENT
    # The grace is bounded: with nothing heard, the hold is released when it ends.
    late, _ = core.plan(replace(planned, inflight=None, pending_read=None), back + core.RESTART_VEND_GRACE_S)
    assert late.goal is not None
    assert late.goal.code == "vend_result_timeout"
    # A release already under way is not undone.
    winding = replace(order, goal=late.goal)
    assert core.handle(winding, Restarted(), back)[0].vend_deadline == start + 300


async def test_no_vend_result_after_a_restart_still_releases_the_hold(rig: CrashRig) -> None:
    rig.daemon.env["KIOSK_PAYMENTS__VEND_RESULT_TIMEOUT_S"] = "2"
    rig.sim.auto_present(rig.reader, 0.2)
    await rig.start_and_order("approved_published", "o-8", 250)
    await rig.crash("approved_published")
    await asyncio.sleep(2.5)
    rig.daemon.start()
    final = await rig.ctl.wait_for("o-8", *FINAL)
    assert (final["state"], final["reason"]["code"]) == ("canceled", "vend_result_timeout")
    assert_settled(rig.sim.ledger(), rig.ctl, {"o-8": None})


def test_after_a_restart_only_the_newest_retained_message_per_topic_is_sent_again() -> None:
    # The previous run published `processing` and `approved` and died before marking them sent:
    # sending both again would show the controller `processing` after `approved`.
    def row(ident: int, topic: str, *, retain: bool = True) -> OutboxRow:
        return OutboxRow(ident, None, topic, b"{}", retain, None, 0.0)

    status = "vend/v1/order/o-1/status"
    rows = [
        row(1, status),  # processing
        row(2, "vend/v1/kioskd/state"),
        row(3, status),  # approved
        row(4, status, retain=False),  # a rejection: not a state, always sent
        row(5, "vend/v1/kioskd/state"),
        row(6, "vend/v1/order/o-2/status"),
    ]
    assert superseded(rows) == [1, 2]


# --- Reconciliation -----------------------------------------------------------------------------


def failed_order_with(pi_id: str, order_id: str) -> str:
    """Journal data of an order that ended `failed` while its PI still held an authorisation."""
    order = core.new_order(order_id=order_id, amount=500, currency="usd", policy=Policy(kiosk_id="k1"), now=time.time())
    return encode(
        replace(
            order,
            intent_id=pi_id,
            state=State.FAILED,
            reason=Reason("release_pending", "The payment is being released.", retryable=False),
        )
    )


async def test_the_reconciler_releases_what_no_open_order_accounts_for(rig: CrashRig) -> None:
    ghost = await rig.authorised_intent(700, {"kiosk_id": "k1", "order_id": "ghost-1"})
    nameless = await rig.authorised_intent(800, {"kiosk_id": "k1"})
    stranded = await rig.authorised_intent(500, {"kiosk_id": "k1", "order_id": "f-1"})
    neighbour = await rig.authorised_intent(900, {"kiosk_id": "k2", "order_id": "ghost-1"})
    journal = rig.journal()
    journal.save(
        "f-1",
        request_hash="f-1-hash",
        request_json="{}",
        state="failed",
        terminal=True,
        data_json=failed_order_with(stranded.id, "f-1"),
        transition=(None, "failed", "test"),
    )
    journal.close()
    rig.daemon.start()
    await rig.ctl.wait_daemon("online")
    await reconciler_passes(rig, 1)
    assert rig.status_of(ghost.id) == "canceled"
    assert rig.status_of(nameless.id) == "canceled"
    assert rig.status_of(stranded.id) == "canceled"
    assert rig.status_of(neighbour.id) == "requires_capture"  # another kiosk's business
    ledger = rig.sim.ledger()
    assert all(not i.captures for i in ledger.intents)
    assert [i.id for i in ledger.uncaptured()] == [neighbour.id]
    assert '"payment.released"' in rig.daemon.log()


async def test_the_reconciler_leaves_an_open_orders_payment_alone(rig: CrashRig) -> None:
    rig.sim.auto_present(rig.reader, 0.2)
    await rig.start_and_order(None, "o-5", 650)
    approved = await rig.ctl.wait_for("o-5", "approved")
    passes = rig.daemon.log().count('"reconciler.pass"')
    await reconciler_passes(rig, passes + 2)
    assert rig.status_of(approved["payment"]["intent"]) == "requires_capture"
    await rig.ctl.vend("o-5", "success")
    await rig.ctl.wait_for("o-5", "completed")
    assert_settled(rig.sim.ledger(), rig.ctl, {"o-5": 650})


async def test_the_reconciler_leaves_a_recovered_orders_unrecorded_payment_alone(rig: CrashRig) -> None:
    # The PI exists in Stripe, the journal has the order but not the PI id: the order is open, so
    # its PI is its own to settle (recovery learns the id with the same key), not the reconciler's.
    rig.sim.auto_present(rig.reader, 0.2)
    await rig.start_and_order("after_create", "o-6", 270)
    await rig.crash("after_create")
    # The restarted order waits a backoff (0.5 s) before it sends the create again; the
    # reconciler searches well before that, finds the PI, and must leave it to the order.
    rig.daemon.env["KIOSK_PAYMENTS__RECONCILE_EVERY_S"] = "0.05"
    # The create sent again is slow too, so the order cannot learn its PI id before the search,
    # however slowly a loaded machine runs the reconciler's first pass.
    rig.sim.add_fault(method="POST", path="/v1/payment_intents", latency_s=1.5, count=1)
    rig.daemon.start()
    await rig.ctl.wait_for("o-6", "approved")
    run = rig.daemon.log().rsplit("--- run", 1)[-1]
    assert run.index('"reconciler.pass"') < run.index('"state": "awaiting_card"')
    await rig.ctl.vend("o-6", "success")
    await rig.ctl.wait_for("o-6", "completed")
    assert_settled(rig.sim.ledger(), rig.ctl, {"o-6": 270})
