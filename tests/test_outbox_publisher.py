"""The outbox publisher end to end: statuses go out in order without the journal being read back,
the acknowledged ones leave the outbox once kiosk is idle, and state messages are never journaled."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.harness import assert_statuses_ordered, start_rig

if TYPE_CHECKING:
    from kiosk.mosquitto import Mosquitto

pytestmark = pytest.mark.slow


def outbox_topics(db: Path) -> list[str]:
    with sqlite3.connect(db, timeout=10) as conn:
        return [row[0] for row in conn.execute("SELECT topic FROM outbox ORDER BY id")]


async def test_sales_leave_an_empty_outbox_and_no_state_in_it(tmp_path: Path, broker: Mosquitto) -> None:
    async with start_rig(tmp_path, broker) as rig:
        db = Path(rig.daemon.env["KIOSK_STATE_DIR"]) / "kiosk.db"
        rig.sim.auto_present(rig.reader, 0.1)
        for order_id in ("ob-1", "ob-2"):
            await rig.ctl.request(order_id, 300)
            await rig.ctl.wait_for(order_id, "approved")
            assert not any(t.endswith(("/kioskd/state", "/reader/state")) for t in outbox_topics(db))
            await rig.ctl.vend(order_id, "success")
            await rig.ctl.wait_for(order_id, "completed")
            assert_statuses_ordered(rig.ctl, order_id)
        # Idle: the acknowledged messages are deleted within about a second.
        async with asyncio.timeout(10):
            while outbox_topics(db):  # noqa: ASYNC110 - the table lives in the daemon's process
                await asyncio.sleep(0.1)
        rig.assert_money_safe()
        assert (await rig.retained_status("ob-2")).payload["state"] == "completed"
