"""Broker loss mid-order, end to end: Mosquitto stops while a customer pays, and comes back.

The order goes on at Stripe while the broker is down (kiosk talks to Stripe, not to the bus, to
take the payment); its statuses wait in kiosk's outbox and reach the controller after the
reconnect; the vend result sent then is served, and the order completes. The broker keeps
sessions across a graceful restart (`persistent_broker`), and the controller keeps its session
too, as a vending controller should.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from tests.harness import controller, start_rig

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from kiosk.mosquitto import Mosquitto
    from tests.harness import Rig

pytestmark = pytest.mark.slow

CONTROLLER_ID = "controller-broker-loss"


async def eventually(check: Callable[[], bool], timeout: float = 20) -> None:  # noqa: ASYNC109
    """Poll something outside the bus (the simulator, the daemon's log) until it holds."""
    async with asyncio.timeout(timeout):
        while not check():  # noqa: ASYNC110 - nothing to wait on: the state lives in another thread or process
            await asyncio.sleep(0.05)


def status_logged(rig: Rig, order_id: str, state: str) -> bool:
    return f'"order_id": "{order_id}", "state": "{state}"' in rig.daemon.log()


async def test_an_order_survives_a_broker_restart(tmp_path: Path, persistent_broker: Mosquitto) -> None:
    broker = persistent_broker
    async with start_rig(tmp_path, broker, controller_id=CONTROLLER_ID, PAYMENTS__VEND_RESULT_TIMEOUT_S="60") as rig:
        await rig.ctl.request("b-1", 450)
        await rig.ctl.wait_for("b-1", "awaiting_card")
        seen_before = rig.ctl.states("b-1")

        broker.stop()
        # The customer taps while the bus is down: kiosk still drives the payment at Stripe.
        rig.sim.present_card(rig.reader)
        await eventually(lambda: any(i.status == "requires_capture" for i in rig.intents("b-1")))
        await eventually(lambda: status_logged(rig, "b-1", "approved"))
        assert rig.daemon.alive()

        broker.start()
        # The controller reconnects with its session: what kiosk published after its own
        # reconnect reaches it, in order.
        async with controller(broker.host, broker.port, identifier=CONTROLLER_ID, persistent=True) as ctl:
            approved = await ctl.wait_for("b-1", "approved", timeout=30)
            assert approved["payment"]["card"] == {"brand": "visa", "last4": "4242"}
            assert approved["seq"] > max(s["seq"] for s in rig.ctl.statuses["b-1"])
            await ctl.vend("b-1", "success")
            done = await ctl.wait_for("b-1", "completed")
            assert done["captured_amount"] == 450
            # At least once: a status may come twice (QoS 1 redelivery, the retained copy on
            # re-subscribing), but never out of order, and one seq is always one state.
            heard = rig.ctl.statuses["b-1"] + ctl.statuses["b-1"]
            seqs = [s["seq"] for s in heard]
            assert seqs == sorted(seqs), seqs
            assert len({(s["seq"], s["state"]) for s in heard}) == len(set(seqs))
            assert [s["state"] for s in heard if s["seq"] in {max(seqs) - 1, max(seqs)}][-2:] == [
                "capturing",
                "completed",
            ]
            assert seen_before[-1] == "awaiting_card"
            rig.ctl = ctl  # the ledger check below reads the statuses this controller saw
            rig.assert_money_safe()
        assert "bus.connected" in rig.daemon.log()
        assert rig.daemon.runs == 1


async def test_a_vend_result_sent_while_the_broker_is_down_is_served_after_the_restart(
    tmp_path: Path, persistent_broker: Mosquitto
) -> None:
    # The controller dispensed and reports while kiosk's broker connection is down: the broker
    # holds the report for kiosk's persistent session, and kiosk captures once it is back.
    broker = persistent_broker
    async with start_rig(tmp_path, broker, controller_id=CONTROLLER_ID, PAYMENTS__VEND_RESULT_TIMEOUT_S="60") as rig:
        rig.sim.auto_present(rig.reader, 0.2)
        await rig.ctl.request("b-2", 300)
        await rig.ctl.wait_for("b-2", "approved")
        broker.stop()
        broker.start()
        async with controller(broker.host, broker.port, identifier=CONTROLLER_ID, persistent=True) as ctl:
            # Published at once after the broker is back; kiosk may not have reconnected yet.
            await ctl.vend("b-2", "success")
            done = await ctl.wait_for("b-2", "completed", timeout=30)
            assert done["captured_amount"] == 300
            assert rig.sim.ledger().captured_total("b-2") == 300
            rig.ctl = ctl
            rig.assert_money_safe()
