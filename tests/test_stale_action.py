"""A reader kept busy by an earlier order's payment, end to end with the real `kiosk run`.

The earlier payment is made straight through Stripe's API (the stripe client, as tests/crashrig.py
does), on the reader kiosk uses: a PaymentIntent processed on it and never cleared. kiosk clears
that action only after reading its PaymentIntent and finding it not being authorised; one with a
card being authorised is waited for and left alone.
"""

from __future__ import annotations

import json
from contextlib import asynccontextmanager
from datetime import datetime
from typing import TYPE_CHECKING

import pytest
from pydantic import SecretStr

from kiosk.gateway import Gateway
from tests.harness import API_KEY, Rig, start_rig

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from kiosk.mosquitto import Mosquitto

pytestmark = pytest.mark.slow

AUTHORISATION_S = 3.0  # the earlier order's card takes this long to authorise (simulated)


@asynccontextmanager
async def stripe_client(rig: Rig) -> AsyncIterator[Gateway]:
    """The stripe client on kiosk's own reader, as another party (an earlier order) would use it."""
    async with Gateway(
        api_key=SecretStr(API_KEY),
        api_base=rig.daemon.env["KIOSK_STRIPE__API_BASE"],
        api_version=None,
        reader_id=rig.reader,
        request_timeout_s=5,
    ) as stripe:
        yield stripe


async def earlier_payment(stripe: Gateway) -> str:
    """An earlier order's PaymentIntent, processed on the reader and left there: the reader waits for a card."""
    intent = await stripe.create_intent(
        amount=700, currency="usd", metadata={"order_id": "earlier-1"}, key="test:earlier:create"
    )
    await stripe.process_intent(intent.id, key="test:earlier:process")
    return intent.id


def action_statuses(rig: Rig, pi_id: str) -> list[str]:
    """How each reader action for this PaymentIntent ended (`in_progress` while it runs)."""
    return [a.status for a in rig.sim.ledger().reader_actions if a.payment_intent == pi_id]


def intent_status(rig: Rig, pi_id: str) -> str:
    """A PaymentIntent's status in the ledger."""
    return next(i.status for i in rig.sim.ledger().intents if i.id == pi_id)


def cleared_lines(rig: Rig) -> list[str]:
    """The daemon's `reader.stale_action_cleared` log lines."""
    return [line for line in rig.daemon.log().splitlines() if "reader.stale_action_cleared" in line]


async def sell(rig: Rig, order_id: str, amount: int) -> dict[str, object]:
    """One sale with the card presented by hand once kiosk waits for it (no automatic card: it
    would be presented to the earlier order's payment too)."""
    await rig.ctl.request(order_id, amount)
    await rig.ctl.wait_for(order_id, "awaiting_card", timeout=30)
    rig.sim.present_card(rig.reader)
    await rig.ctl.wait_for(order_id, "approved", timeout=30)
    await rig.ctl.vend(order_id, "success")
    return await rig.ctl.wait_for(order_id, "completed", "canceled", "failed", timeout=30)


async def test_a_stale_action_whose_payment_is_not_being_authorised_is_cleared(
    tmp_path: Path, broker: Mosquitto
) -> None:
    async with start_rig(tmp_path, broker, PAYMENTS__CARD_TIMEOUT_S="20") as rig, stripe_client(rig) as stripe:
        earlier = await earlier_payment(stripe)
        assert action_statuses(rig, earlier) == ["in_progress"]
        final = await sell(rig, "after-stale-1", 300)
        assert final["state"] == "completed", final
        # Only the action was cleared; the earlier PaymentIntent is not kiosk's to cancel.
        assert action_statuses(rig, earlier) == ["canceled"]
        assert intent_status(rig, earlier) == "requires_payment_method"
        (line,) = cleared_lines(rig)
        ours = rig.intents("after-stale-1")[0].id
        assert earlier in line
        assert ours in line
        await stripe.cancel_intent(earlier, key="test:earlier:cancel")  # the earlier order's owner tidies up
        rig.assert_money_safe()


async def test_a_stale_payment_being_authorised_is_left_alone(tmp_path: Path, broker: Mosquitto) -> None:
    async with start_rig(tmp_path, broker, PAYMENTS__CARD_TIMEOUT_S="20") as rig, stripe_client(rig) as stripe:
        earlier = await earlier_payment(stripe)
        rig.sim.set_authorisation_delay(rig.reader, AUTHORISATION_S)
        rig.sim.present_card(rig.reader)  # the earlier customer's card: authorising for a while
        rig.sim.set_authorisation_delay(rig.reader, 0)  # kiosk's own customer is quick
        final = await sell(rig, "after-stale-2", 300)
        assert final["state"] == "completed", final
        # kiosk waited for the authorisation to end by itself: the action succeeded and the earlier
        # PaymentIntent holds its authorisation.
        assert action_statuses(rig, earlier) == ["succeeded"]
        assert intent_status(rig, earlier) == "requires_capture"
        done = next(a.ended_at for a in rig.sim.ledger().reader_actions if a.payment_intent == earlier)
        assert done is not None
        # Nothing was cleared while the card was being authorised (the reader refuses: busy). A
        # cancel_action decided during the authorisation that reaches the reader just after it
        # ended finds a finished action, and clears nothing of the customer's: that one may show.
        for line in cleared_lines(rig):
            at = datetime.fromisoformat(json.loads(line)["timestamp"]).timestamp()
            assert at >= done, line
        first_ours = min(
            a.started_at
            for a in rig.sim.ledger().reader_actions
            if a.payment_intent == rig.intents("after-stale-2")[0].id
        )
        assert first_ours >= done  # kiosk's payment began only once the earlier one had ended
        await stripe.cancel_intent(earlier, key="test:earlier:cancel")  # releases the earlier hold
        rig.assert_money_safe()
