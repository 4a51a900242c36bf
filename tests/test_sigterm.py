"""SIGTERM in every phase: `kiosk run` stops cleanly (exit 0, well within the unit's TimeoutStopSec)
wherever an order is, and after a restart every order settles with the money right.

A Stripe call that is in flight when SIGTERM arrives is held open by a latency fault in the
simulator, so the stop really lands in the middle of it; the call's outcome is then unknown to
kiosk and is read back at the next start.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kiosk.mosquitto import Mosquitto
from tests.crashrig import FINAL, CrashRig, crash_rig
from tests.harness import assert_settled, assert_statuses_ordered

pytestmark = pytest.mark.slow

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "kiosk.service"


def timeout_stop_s() -> float:
    match = re.search(r"^TimeoutStopSec=(\d+)s?$", UNIT.read_text(), re.MULTILINE)
    assert match, "the unit sets TimeoutStopSec"
    return float(match.group(1))


@pytest.fixture(name="rig")
async def fixture_rig(tmp_path: Path, broker: Mosquitto) -> AsyncIterator[CrashRig]:
    async with crash_rig(tmp_path, broker, PAYMENTS__CARD_TIMEOUT_S="15") as rig:
        yield rig


async def stop(rig: CrashRig) -> float:
    """SIGTERM; returns how long the daemon took to exit, asserting exit status 0."""
    started = time.monotonic()
    code = await asyncio.to_thread(rig.daemon.terminate, timeout_stop_s())
    took = time.monotonic() - started
    assert code == 0, rig.daemon.log()[-3000:]
    assert "service.stopped" in rig.daemon.log()
    return took


# (phase, fault on this endpoint to hold the call open, state the controller sees before SIGTERM)
PHASES = [
    pytest.param("create_in_flight", ("POST", "/v1/payment_intents"), "received", id="create_in_flight"),
    pytest.param("awaiting_card", None, "awaiting_card", id="awaiting_card"),
    pytest.param("approved", None, "approved", id="approved"),
    pytest.param("capture_in_flight", ("POST", "/v1/payment_intents/*/capture"), "approved", id="capture_in_flight"),
    pytest.param("cancel_in_flight", ("POST", "/v1/payment_intents/*/cancel"), "approved", id="cancel_in_flight"),
]


@pytest.mark.parametrize(("phase", "fault", "seen"), PHASES)
async def test_sigterm_in_each_phase_exits_0_and_the_order_settles_after_restart(
    rig: CrashRig, phase: str, fault: tuple[str, str] | None, seen: str
) -> None:
    vend = "failure" if phase == "cancel_in_flight" else "success"
    if fault is not None:
        rig.sim.add_fault(method=fault[0], path=fault[1], latency_s=2.0, count=1)
    if phase != "awaiting_card":
        rig.sim.auto_present(rig.reader, 0.2)
    await rig.start_and_order(None, "o-1", 250)
    await rig.ctl.wait_for("o-1", seen)
    if phase in {"capture_in_flight", "cancel_in_flight"}:
        await rig.ctl.vend("o-1", vend)
        if phase == "capture_in_flight":
            await rig.ctl.wait_for("o-1", "capturing")
        await asyncio.sleep(0.5)  # the capture or cancel is now waiting on the slow simulator
    elif phase == "create_in_flight":
        await asyncio.sleep(0.5)  # the create is waiting on the slow simulator

    took = await stop(rig)
    print(f"{phase}: stop took {took:.2f} s")
    assert took < timeout_stop_s()
    # The offline state was published before the exit, but the broker forwards it to the
    # controller on its own time: wait for it rather than read what has arrived so far.
    offline = await rig.ctl.wait_daemon("offline", timeout=10)
    assert offline["payments"] == "unavailable"

    if phase == "awaiting_card":
        rig.sim.auto_present(rig.reader, 0.2)
    rig.daemon.start()
    await rig.ctl.wait_daemon("online")
    if phase in {"create_in_flight", "awaiting_card", "approved"}:
        await rig.ctl.wait_for("o-1", "approved", timeout=30)
        if phase == "awaiting_card" and rig.sim.ledger().for_order("o-1")[0].status != "requires_capture":
            pytest.fail("the payment was not taken after the restart")
        await rig.ctl.vend("o-1", vend)
    final = await rig.ctl.wait_for("o-1", *FINAL, timeout=30)
    if vend == "success":
        assert final["state"] == "completed"
        assert_settled(rig.sim.ledger(), rig.ctl, {"o-1": 250})
    else:
        assert (final["state"], final["reason"]["code"]) == ("canceled", "vend_failed")
        assert_settled(rig.sim.ledger(), rig.ctl, {"o-1": None})
    assert_statuses_ordered(rig.ctl, "o-1")


async def test_sigterm_while_idle_exits_0_quickly(rig: CrashRig) -> None:
    rig.daemon.start()
    await rig.ctl.wait_daemon("online")
    took = await stop(rig)
    assert took < timeout_stop_s()
    print(f"idle stop took {took:.2f} s")
