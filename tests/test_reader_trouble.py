"""Reader trouble end to end, with the real `kiosk run`: what the controller and the fleet see.

The fault matrix (tests/test_fault_matrix.py) drives every reader fault through the runner in
process; these check the daemon's side: kioskd/state while the reader is out of service, and
that it stays so until a person acts.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from tests.harness import Rig, start_rig

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from kiosk.mosquitto import Mosquitto

pytestmark = pytest.mark.slow


@pytest.fixture(name="rig")
async def fixture_rig(tmp_path: Path, broker: Mosquitto) -> AsyncIterator[Rig]:
    async with start_rig(tmp_path, broker, PAYMENTS__READER_CHECK_S="0.3", PAYMENTS__CARD_TIMEOUT_S="10") as rig:
        yield rig


async def serve_one(rig: Rig, order_id: str) -> None:
    rig.sim.auto_present(rig.reader, 0.2)
    await rig.ctl.request(order_id, 300)
    await rig.ctl.wait_for(order_id, "approved")
    await rig.ctl.vend(order_id, "success")
    await rig.ctl.wait_for(order_id, "completed")
    rig.sim.auto_present(rig.reader, None)


async def test_a_hardware_fault_puts_kiosk_out_of_service_until_a_person_acts(rig: Rig) -> None:
    await rig.ctl.wait_payments("available")
    rig.sim.reader_hardware_fault(rig.reader)
    await rig.ctl.request("hw-1", 300)
    status = await rig.ctl.wait_for("hw-1", "canceled", "failed")
    assert status["state"] == "canceled"
    assert status["reason"]["code"] == "reader_unavailable"
    state = await rig.ctl.wait_payments("unavailable")
    assert state["reason"]["code"] == "reader_fault"
    # The reader's object looks healthy to a read; kiosk does not take that as a repair.
    rig.sim.reader_hardware_fault(rig.reader, faulty=False)
    await asyncio.sleep(1.5)  # several idle reader checks (every 0.3 s)
    request_id = await rig.ctl.request("hw-2", 300)
    refused = await rig.ctl.wait_reply("hw-2", request_id)
    assert refused["state"] == "rejected"
    assert refused["reason"]["code"] == "payments_unavailable"
    assert rig.intents("hw-2") == ()
    assert rig.ctl.daemon_state is not None
    assert rig.ctl.daemon_state["payments"] == "unavailable"
    # A person restarts kiosk (systemd, or the fleet's restart command): in service again.
    assert rig.daemon.terminate() == 0
    await rig.ctl.wait_daemon("offline")
    rig.daemon.start()
    await rig.ctl.wait_daemon("online")
    await rig.ctl.wait_payments("available")
    await serve_one(rig, "hw-3")
    rig.assert_money_safe()


async def test_a_reader_going_offline_mid_order_ends_it_promptly_then_comes_back(rig: Rig) -> None:
    await rig.ctl.wait_payments("available")
    await rig.ctl.request("off-1", 300)
    await rig.ctl.wait_for("off-1", "awaiting_card")
    rig.sim.set_reader_online(rig.reader, online=False)
    rig.sim.advance(150)  # two minutes without a signal: Stripe says offline
    status = await rig.ctl.wait_for("off-1", "canceled", "failed")
    assert (status["state"], status["reason"]["code"]) == ("canceled", "reader_offline")  # not card_timeout
    assert status["reason"]["retryable"] is True
    await rig.ctl.wait_payments("unavailable")
    rig.sim.set_reader_online(rig.reader, online=True)
    await rig.ctl.wait_payments("available")  # without a restart
    await serve_one(rig, "off-2")
    assert rig.daemon.runs == 1
    rig.assert_money_safe()
