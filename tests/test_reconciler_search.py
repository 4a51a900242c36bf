"""The reconciler asks Stripe only for PaymentIntents still open: past sales stay out of its answer.

Against the simulator over real HTTP with the real stripe client, and a real journal.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kiosk.journal import FILENAME, Journal
from kiosk.reconciler import Reconciler
from tests.simgateway import sim_gateway

if TYPE_CHECKING:
    from pathlib import Path

API_KEY = "sk_test_kioskReconcilerSearch0000"


async def test_only_open_intents_are_searched_and_the_orphans_among_them_released(tmp_path: Path) -> None:
    async with sim_gateway(api_key=API_KEY) as rig:
        gw = rig.gw

        async def intent(order_id: str, kiosk_id: str = "k1") -> str:
            created = await gw.create_intent(
                amount=250,
                currency="usd",
                metadata={"kiosk_id": kiosk_id, "order_id": order_id},
                key=f"{kiosk_id}:{order_id}:create:1",
            )
            return created.id

        async def authorise(pi: str) -> None:
            await gw.process_intent(pi, key=f"{pi}:process")
            await gw.present_card()

        # Past sales, captured or canceled: a kiosk has thousands after a few weeks, and the
        # reconciler reads at most ten pages of 100.
        for n in range(3):
            sold = await intent(f"sold-{n}")
            await authorise(sold)
            await gw.capture_intent(sold, key=f"{sold}:capture")
            await gw.cancel_intent(await intent(f"gone-{n}"), key=f"gone-{n}:cancel")
        orphan = await intent("lost-1")  # its order never reached the journal
        await authorise(orphan)
        unpaid = await intent("lost-2")
        other = await intent("theirs", kiosk_id="k2")
        await authorise(other)

        found = await gw.search_intents("k1", open_only=True)
        assert sorted(i.id for i in found) == sorted([orphan, unpaid])
        assert {i.status for i in found} == {"requires_capture", "requires_payment_method"}
        assert len(await gw.search_intents("k1")) == 8

        with Journal.open(tmp_path / FILENAME) as journal:
            reconciler = Reconciler("k1", journal, gw, is_open=lambda _order_id: False)
            report = await reconciler.run_once()
        assert report.seen == 2
        assert sorted(report.released) == sorted([orphan, unpaid])
        assert (await gw.retrieve_intent(orphan)).status == "canceled"
        assert (await gw.retrieve_intent(other)).status == "requires_capture"
