"""Stripe's "temporary connectivity problem" end to end: the PI left `requires_confirmation` is processed again.

Real `kiosk run`, real Mosquitto, the simulator over HTTP with `reader_leave_unconfirmed` armed:
the first process reads the card but leaves the PaymentIntent unconfirmed; kiosk must ask the
reader again on the same PaymentIntent (never a second one), then vend and capture once.
"""

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


async def test_unconfirmed_intent_is_processed_again_on_the_same_intent(rig: Rig) -> None:
    rig.sim.reader_leave_unconfirmed(rig.reader)
    rig.sim.auto_present(rig.reader, 0.2)
    await rig.ctl.request("o-rc", 350)
    approved = await rig.ctl.wait_for("o-rc", "approved")
    assert approved["payment"]["card"] == {"brand": "visa", "last4": "4242"}
    await rig.ctl.vend("o-rc", "success")
    done = await rig.ctl.wait_for("o-rc", "completed")
    assert done["captured_amount"] == 350

    ledger = rig.sim.ledger()
    [intent] = ledger.for_order("o-rc")
    assert intent.status == "succeeded"
    assert [c.amount for c in intent.captures] == [350]
    assert "requires_confirmation" in [e["event"] for e in intent.history]
    processes = [
        (a.status, a.failure_code)
        for a in ledger.reader_actions
        if a.payment_intent == intent.id and a.type == "process_payment_intent"
    ]
    assert processes == [("failed", "connection_error"), ("succeeded", None)]
    assert "declined" not in rig.ctl.states("o-rc")
    rig.assert_money_safe()
