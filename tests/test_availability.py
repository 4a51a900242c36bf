"""kioskd/state and reader/state end to end: online, the Will, and payments unavailable and back.

The daemon checks the idle reader every `payments.reader_check_s` (0.5 s here), so an unreachable
reader or Stripe shows on the bus within a few checks, and new orders are refused at once while
it lasts.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

from kiosk.journal import Journal, OutboxMessage
from tests.harness import PREFIX, Rig, retained, start_rig

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from kiosk.mosquitto import Mosquitto

pytestmark = pytest.mark.slow


@pytest.fixture(name="rig")
async def fixture_rig(tmp_path: Path, broker: Mosquitto) -> AsyncIterator[Rig]:
    async with start_rig(tmp_path, broker, PAYMENTS__READER_CHECK_S="0.5", PAYMENTS__CARD_TIMEOUT_S="30") as rig:
        yield rig


async def retained_one(rig: Rig, topic: str) -> dict[str, Any]:
    found = await retained(rig.broker.host, rig.broker.port, f"{PREFIX}/{topic}")
    assert len(found) == 1, found  # in the broker's retained store: exactly one
    return found[0].payload


async def serve_one(rig: Rig, order_id: str) -> None:
    rig.sim.auto_present(rig.reader, 0.2)
    await rig.ctl.request(order_id, 300)
    await rig.ctl.wait_for(order_id, "approved")
    await rig.ctl.vend(order_id, "success")
    await rig.ctl.wait_for(order_id, "completed")
    rig.sim.auto_present(rig.reader, None)


async def assert_refused_at_once(rig: Rig, order_id: str, code: str = "payments_unavailable") -> dict[str, Any]:
    """A new order is rejected before anything reaches Stripe or the reader."""
    actions = len(rig.sim.ledger().reader_actions)
    request_id = await rig.ctl.request(order_id, 300)
    refused = await rig.ctl.wait_reply(order_id, request_id)
    assert refused["state"] == "rejected"
    assert refused["reason"]["code"] == code
    assert refused["reason"]["retryable"] is True
    assert refused["reason"]["message"]
    assert rig.intents(order_id) == ()
    assert len(rig.sim.ledger().reader_actions) == actions
    assert f'"order_id": "{order_id}", "amount"' not in rig.daemon.log()  # never journaled as received
    return refused


async def test_online_and_reader_state_are_retained_after_start(rig: Rig) -> None:
    await rig.ctl.wait_until(lambda: rig.ctl.reader_state is not None and rig.ctl.reader_state["device_type"])
    state = await retained_one(rig, "kioskd/state")
    assert state["state"] == "online"
    assert state["payments"] == "available"
    assert state["reason"] is None
    assert state["version"]
    assert state["boot_id"]
    reader = await retained_one(rig, "reader/state")
    assert reader["reader"] == rig.reader
    assert reader["status"] == "online"
    assert reader["device_type"] == "simulated_wisepos_e"
    assert reader["action"] is None


async def test_the_will_says_offline_when_the_daemon_is_killed(rig: Rig) -> None:
    online = await rig.ctl.wait_daemon("online")
    rig.daemon.kill()
    offline = await rig.ctl.wait_daemon("offline")
    assert offline["payments"] == "unavailable"
    assert offline["reason"]["code"] == "daemon_offline"
    assert offline["boot_id"] == online["boot_id"]
    state = await retained_one(rig, "kioskd/state")
    assert state["state"] == "offline"
    # Started again: online, with a new boot id.
    rig.daemon.start()
    again = await rig.ctl.wait_daemon("online")
    assert again["boot_id"] != online["boot_id"]
    await serve_one(rig, "after-kill")


async def test_states_an_earlier_run_left_queued_are_not_sent_after_a_restart(rig: Rig) -> None:
    # A run that stops (or is killed) between publishing a state and recording it as sent leaves
    # it queued; sent by the next run it would announce a daemon (boot id, payments) that no
    # longer exists.
    before = (await rig.ctl.wait_daemon("online"))["boot_id"]
    assert rig.daemon.terminate() == 0
    await rig.ctl.wait_daemon("offline")
    stale = {"v": 1, "id": "stale-1", "state": "online", "payments": "available", "boot_id": "earlier-run"}
    with Journal.in_dir(rig.daemon.workdir / "state") as journal:
        journal.enqueue(
            [
                OutboxMessage(f"{PREFIX}/kioskd/state", json.dumps(stale).encode(), retain=True),
                OutboxMessage(f"{PREFIX}/reader/state", json.dumps({"v": 1, "id": "stale-2"}).encode(), retain=True),
            ]
        )
    seen = len(rig.ctl.seen)
    rig.daemon.start()

    def announced() -> bool:
        # The new run's kioskd/state, then its reader/state: queued after anything left over, so
        # anything left over that was going to be sent has been sent by then.
        new = [s for s in rig.ctl.seen[seen:] if s.payload.get("boot_id") not in {None, before, "earlier-run"}]
        return bool(new) and rig.ctl.seen[-1].topic.endswith("/reader/state") and rig.ctl.seen[-1] is not new[0]

    await rig.ctl.wait_until(announced)
    after = rig.ctl.seen[seen:]
    # Only the new run's boot id; not "the one before the last message": when the reader check
    # answers after the connect, a second reader/state follows and may arrive with the first.
    fresh = next(s.payload["boot_id"] for s in after if s.topic.endswith("/kioskd/state"))
    assert {s.payload.get("boot_id") for s in after if s.topic.endswith("/kioskd/state")} == {fresh}, [
        s.payload for s in after
    ]
    assert fresh not in {before, "earlier-run"}
    assert [s.payload.get("id") for s in after if s.payload.get("id", "").startswith("stale")] == []
    await serve_one(rig, "after-restart")


async def test_sigterm_says_offline_and_exits_0(rig: Rig) -> None:
    await rig.ctl.wait_daemon("online")
    assert rig.daemon.terminate() == 0
    await rig.ctl.wait_daemon("offline")
    state = await retained_one(rig, "kioskd/state")
    assert state["state"] == "offline"
    assert state["payments"] == "unavailable"


async def test_an_offline_reader_makes_payments_unavailable_until_it_is_back(rig: Rig) -> None:
    await rig.ctl.wait_payments("available")
    rig.sim.set_reader_online(rig.reader, online=False)
    rig.sim.advance(150)  # Stripe calls a reader offline after two minutes without signal
    state = await rig.ctl.wait_payments("unavailable")
    assert state["state"] == "online"
    assert state["reason"]["code"] == "reader_offline"
    assert "offline" in state["reason"]["message"]
    await rig.ctl.wait_until(lambda: rig.ctl.reader_state is not None and rig.ctl.reader_state["status"] == "offline")
    assert (await retained_one(rig, "reader/state"))["status"] == "offline"
    assert (await retained_one(rig, "kioskd/state"))["payments"] == "unavailable"
    await assert_refused_at_once(rig, "while-offline")
    # The reader comes back: payments are available again without a restart.
    rig.sim.set_reader_online(rig.reader, online=True)
    state = await rig.ctl.wait_payments("available")
    assert state["reason"] is None
    assert (await retained_one(rig, "reader/state"))["status"] == "online"
    await serve_one(rig, "back-online")
    assert rig.daemon.runs == 1
    rig.assert_money_safe()


async def test_reader_reads_answering_offline_make_payments_unavailable(rig: Rig) -> None:
    await rig.ctl.wait_payments("available")
    rule = rig.sim.add_fault(
        method="GET", path="/v1/terminal/readers/*", status=400, code="terminal_reader_offline", message="offline"
    )
    state = await rig.ctl.wait_payments("unavailable")
    assert state["reason"]["code"] == "reader_offline"
    await assert_refused_at_once(rig, "refused-1")
    rig.sim.remove_fault(rule)
    await rig.ctl.wait_payments("available")
    await serve_one(rig, "served-1")
    rig.assert_money_safe()


async def test_stripe_unreachable_makes_payments_unavailable(rig: Rig) -> None:
    await rig.ctl.wait_payments("available")
    rig.sim.add_fault(path="/v1/*", status=503, message="down for maintenance")
    state = await rig.ctl.wait_payments("unavailable")
    assert state["reason"]["code"] == "stripe_unreachable"
    await assert_refused_at_once(rig, "refused-2")
    rig.sim.clear_faults()
    await rig.ctl.wait_payments("available")
    await serve_one(rig, "served-2")
    rig.assert_money_safe()


async def test_a_refused_api_key_makes_payments_unavailable(rig: Rig) -> None:
    await rig.ctl.wait_payments("available")
    rig.sim.add_fault(path="/v1/*", status=401, message="Invalid API Key provided")
    state = await rig.ctl.wait_payments("unavailable")
    assert state["reason"]["code"] == "stripe_auth"
    await assert_refused_at_once(rig, "refused-3")
    rig.sim.clear_faults()
    await rig.ctl.wait_payments("available")
    await serve_one(rig, "served-3")
