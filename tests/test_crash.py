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
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kiosk.mosquitto import Mosquitto
from kiosk.simulator import Simulator, ThreadHandle
from tests.harness import Controller, Daemon, assert_settled, assert_statuses_ordered, controller

pytestmark = pytest.mark.slow

FINAL = ("completed", "canceled", "failed")


@dataclass
class Rig:
    sim: Simulator
    reader: str
    daemon: Daemon
    ctl: Controller

    async def crash(self, step: str) -> None:
        """Wait for the daemon armed with `step` to die there, by SIGKILL."""
        code = await self.daemon.wait_exit()
        assert code == -9, self.daemon.log()[-3000:]
        assert f"crash point {step} reached" in self.daemon.log()

    async def crash_through(self, steps: tuple[str, ...]) -> None:
        """The daemon was started armed with steps[0]: let it die there, then at each later step."""
        await self.crash(steps[0])
        for step in steps[1:]:
            self.daemon.start(crash_at=step)
            await self.crash(step)
        self.daemon.start()


@pytest.fixture(name="sim")
def fixture_sim() -> Iterator[ThreadHandle]:
    handle = Simulator(seed=11).start_in_thread()
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture(name="rig")
async def fixture_rig(tmp_path: Path, broker: Mosquitto, sim: ThreadHandle) -> AsyncIterator[Rig]:
    """Mosquitto, the simulator, a reader and a controller; the daemon is configured, not started."""
    simulator = sim.simulator
    reader = simulator.register_reader("simulated-wpe")
    daemon = Daemon(
        tmp_path,
        broker_url=broker.url,
        api_base=sim.url,
        reader_id=reader,
        PAYMENTS__CARD_TIMEOUT_S="10",
        PAYMENTS__VEND_RESULT_TIMEOUT_S="20",
    )
    async with controller(broker.host, broker.port) as ctl:
        try:
            yield Rig(simulator, reader, daemon, ctl)
        finally:
            if daemon.alive():
                daemon.terminate()
            print(daemon.log()[-6000:])


async def vend_when_approved(ctl: Controller, order_id: str, result: str, vended: int | None = None) -> dict[str, Any]:
    """The controller's side of one sale: dispense on `approved`, report, wait for the end."""
    await ctl.wait_for(order_id, "approved", timeout=30)
    await ctl.vend(order_id, result, vended)
    return await ctl.wait_for(order_id, *FINAL, timeout=30)


async def start_and_order(rig: Rig, crash_at: str | None, order_id: str, amount: int) -> None:
    """Start the daemon (armed), wait until it serves, publish the request."""
    rig.daemon.start(crash_at=crash_at)
    await rig.ctl.wait_daemon("online")
    await rig.ctl.request(order_id, amount)


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
    rig: Rig, steps: tuple[str, ...], result: str, vended: int | None, captured: int | None
) -> None:
    rig.sim.auto_present(rig.reader, 0.2)
    await start_and_order(rig, steps[0], "o-1", 250)
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


async def test_a_card_timeout_survives_a_crash_at_cancel_action(rig: Rig) -> None:
    # No card: the order times out; the daemon dies right after asking the reader to stop.
    rig.daemon.env["KIOSK_PAYMENTS__CARD_TIMEOUT_S"] = "1"
    await start_and_order(rig, "after_cancel_action", "o-2", 300)
    await rig.crash_through(("after_cancel_action",))
    final = await rig.ctl.wait_for("o-2", *FINAL, timeout=30)
    assert (final["state"], final["reason"]["code"]) == ("canceled", "card_timeout")
    assert_settled(rig.sim.ledger(), rig.ctl, {"o-2": None})
    # The reader was freed: the next sale goes through on the same daemon.
    rig.sim.auto_present(rig.reader, 0.2)
    await rig.ctl.request("o-3", 120)
    await vend_when_approved(rig.ctl, "o-3", "success")
    assert_settled(rig.sim.ledger(), rig.ctl, {"o-2": None, "o-3": 120})


async def test_an_order_published_while_the_daemon_is_down_is_served(rig: Rig) -> None:
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


async def test_an_order_received_but_not_committed_is_delivered_again(rig: Rig) -> None:
    # Killed between receipt and commit: had the delivery been acknowledged on receipt (aiomqtt's
    # default), the order would be lost; with the ack after commit, the broker sends it again.
    rig.sim.auto_present(rig.reader, 0.2)
    await start_and_order(rig, "order_received", "o-5", 210)
    await rig.crash("order_received")
    assert rig.ctl.statuses["o-5"] == []  # nothing was journaled or published
    rig.daemon.start()
    final = await vend_when_approved(rig.ctl, "o-5", "success")
    assert final["captured_amount"] == 210
    assert_settled(rig.sim.ledger(), rig.ctl, {"o-5": 210})


async def test_seq_keeps_rising_across_restarts_and_queued_statuses_are_published(rig: Rig) -> None:
    # Killed with `approved` saved in the outbox but not yet published: the controller first hears
    # of the approval from the restarted daemon, under the same seq the journal gave it.
    rig.sim.auto_present(rig.reader, 0.2)
    await start_and_order(rig, "status_queued_approved", "o-6", 330)
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
