"""When the journal cannot be written, kiosk must not acknowledge the message it could not save:
it stops (systemd restarts it) and the broker delivers the order again, which is then served."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kiosk.mosquitto import Mosquitto
from tests.crashrig import FINAL, CrashRig, crash_rig, vend_when_approved
from tests.harness import assert_settled

pytestmark = pytest.mark.slow


@pytest.fixture(name="rig")
async def fixture_rig(tmp_path: Path, broker: Mosquitto) -> AsyncIterator[CrashRig]:
    async with crash_rig(tmp_path, broker) as rig:
        yield rig


async def test_an_order_that_cannot_be_journaled_is_not_acknowledged(rig: CrashRig) -> None:
    rig.sim.auto_present(rig.reader, 0.2)
    rig.daemon.start()
    await rig.ctl.wait_daemon("online")
    db = Path(rig.daemon.env["KIOSK_STATE_DIR"]) / "kiosk.db"
    # Another writer holds the database (a real SQLite fault): kiosk's save times out. The
    # blocker waits its turn, as kiosk may be finishing a write of its own (the outbox).
    blocker = sqlite3.connect(db, timeout=10, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        await rig.ctl.request("o-1", 250)
        code = await rig.daemon.wait_exit(timeout=40)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert code == 1, rig.daemon.log()[-3000:]
    # Whichever task met the locked journal first stopped kiosk, saying why.
    assert '"event": "service.crashed"' in rig.daemon.log()
    assert "database is locked" in rig.daemon.log()
    assert not rig.ctl.statuses.get("o-1")
    assert not rig.sim.ledger().intents

    rig.daemon.start()
    sale = asyncio.create_task(vend_when_approved(rig.ctl, "o-1", "success"))
    final = await sale
    assert final["state"] in FINAL
    assert_settled(rig.sim.ledger(), rig.ctl, {"o-1": 250})
