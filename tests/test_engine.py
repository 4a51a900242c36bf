"""The checkout engine end to end: real `kiosk run`, real Mosquitto, the simulator over HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kiosk.mosquitto import Mosquitto
from tests.harness import Rig, start_rig

pytestmark = pytest.mark.slow


@pytest.fixture(name="rig")
async def fixture_rig(tmp_path: Path, broker: Mosquitto) -> AsyncIterator[Rig]:
    async with start_rig(tmp_path, broker) as rig:
        yield rig


async def test_happy_path_captures_after_vend_success(rig: Rig) -> None:
    rig.sim.auto_present(rig.reader, 0.2)
    await rig.ctl.request("o-1", 250)
    approved = await rig.ctl.wait_for("o-1", "approved")
    assert approved["payment"]["card"] == {"brand": "visa", "last4": "4242"}
    await rig.ctl.vend("o-1", "success")
    done = await rig.ctl.wait_for("o-1", "completed")
    assert done["captured_amount"] == 250
    states = rig.ctl.states("o-1")
    assert states[:2] == ["received", "awaiting_card"]
    assert states[-3:] == ["approved", "capturing", "completed"]
    seqs = [s["seq"] for s in rig.ctl.statuses["o-1"]]
    assert seqs == sorted(set(seqs))
    intent = rig.sim.ledger().for_order("o-1")[0]
    assert intent.metadata["kiosk_id"] == "k1"
    assert intent.amount_received == 250
    rig.assert_money_safe()


async def test_partial_vend_captures_the_vended_amount(rig: Rig) -> None:
    rig.sim.auto_present(rig.reader, 0.2)
    await rig.ctl.request("o-2", 500)
    await rig.ctl.wait_for("o-2", "approved")
    await rig.ctl.vend("o-2", "partial", vended_amount=200)
    done = await rig.ctl.wait_for("o-2", "completed")
    assert done["captured_amount"] == 200
    assert rig.sim.ledger().captured_total("o-2") == 200
    rig.assert_money_safe()


async def test_vend_failure_releases_the_hold(rig: Rig) -> None:
    rig.sim.auto_present(rig.reader, 0.2)
    await rig.ctl.request("o-3", 300)
    await rig.ctl.wait_for("o-3", "approved")
    await rig.ctl.vend("o-3", "failure")
    done = await rig.ctl.wait_for("o-3", "canceled", "failed")
    assert done["reason"]["code"] == "vend_failed"
    assert rig.sim.ledger().for_order("o-3")[0].status == "canceled"
    rig.assert_money_safe()


async def test_no_card_times_out_and_cancels(rig: Rig) -> None:
    await rig.ctl.request("o-4", 300)
    done = await rig.ctl.wait_for("o-4", "canceled", "failed", timeout=20)
    assert done["reason"]["code"] == "card_timeout"
    rig.assert_money_safe()
    # The reader is free again: the next order goes through.
    rig.sim.auto_present(rig.reader, 0.2)
    await rig.ctl.request("o-5", 300)
    await rig.ctl.wait_for("o-5", "approved")
    await rig.ctl.vend("o-5", "success")
    await rig.ctl.wait_for("o-5", "completed")
    rig.assert_money_safe()


async def test_decline_reprompts_on_the_same_payment_intent(rig: Rig) -> None:
    rig.sim.auto_present(rig.reader, 0.2, card="4000000000009995")
    await rig.ctl.request("o-6", 400)
    declined = await rig.ctl.wait_for("o-6", "declined")
    assert declined["reason"]["code"] == "insufficient_funds"
    assert declined["reason"]["retryable"] is True
    rig.sim.auto_present(rig.reader, 0.2)
    await rig.ctl.wait_for("o-6", "approved")
    await rig.ctl.vend("o-6", "success")
    await rig.ctl.wait_for("o-6", "completed")
    assert len(rig.sim.ledger().for_order("o-6")) == 1
    rig.assert_money_safe()
