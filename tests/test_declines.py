"""Declines end to end: each of Stripe's test decline amounts and cards, through the real runner.

Each decline is published as `declined` with the decline code as `reason.code` and a short text
a customer can read (core.DECLINE_MESSAGES), and the reader is asked again for a card on the
same PaymentIntent; after `max_card_attempts` declines the order ends `attempts_exhausted`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from kiosk.core import DECLINE_MESSAGES
from tests.faultrig import lane, money_problems, with_policy

if TYPE_CHECKING:
    from pathlib import Path

# Last two digits of the amount -> the decline code Stripe's test mode answers.
AMOUNTS = {
    "01": "call_issuer",
    "05": "generic_decline",
    "55": "incorrect_pin",
    "60": "online_or_offline_pin_required",
    "65": "withdrawal_count_limit_exceeded",
    "75": "pin_try_exceeded",
}
CARDS = {
    "4000000000000002": "generic_decline",  # card_declined
    "4000000000009995": "insufficient_funds",
    "4000000000009987": "lost_card",
    "4000000000009979": "stolen_card",
    "4000000000000069": "expired_card",
    "4000000000000119": "processing_error",
}


def test_every_test_decline_has_a_customer_message() -> None:
    for code in (*AMOUNTS.values(), *CARDS.values(), "card_declined"):
        assert code in DECLINE_MESSAGES, code
        assert 0 < len(DECLINE_MESSAGES[code]) <= 80  # fits a vending machine's screen


@pytest.mark.parametrize(("digits", "code"), AMOUNTS.items())
async def test_a_declining_test_amount_reprompts_on_the_same_pi_then_gives_up(
    tmp_path: Path, digits: str, code: str
) -> None:
    async with lane(tmp_path, policy=with_policy(max_card_attempts=2)) as the_lane:
        order_id = f"amount-{digits}"
        the_lane.sim.auto_present(the_lane.reader, 0.2)
        await the_lane.request(order_id, int(f"10{digits}"))
        final = await the_lane.wait_settled(order_id)
        declined = [s for s in the_lane.statuses[order_id] if s["state"] == "declined"]
        assert declined, the_lane.states(order_id)
        reason = declined[0]["reason"]
        assert (reason["code"], reason["message"], reason["retryable"]) == (code, DECLINE_MESSAGES[code], True)
        assert final["state"] == "canceled"
        assert final["reason"]["code"] == "attempts_exhausted"
        assert DECLINE_MESSAGES[code] in final["reason"]["message"]
        # Prompted twice, both times on the one PaymentIntent, which is released.
        (intent,) = the_lane.intents(order_id)
        actions = [a for a in the_lane.sim.ledger().reader_actions if a.type == "process_payment_intent"]
        assert [a.payment_intent for a in actions] == [intent.id, intent.id]
        assert money_problems(the_lane, order_id, vended=None) == []


@pytest.mark.parametrize(("card", "code"), CARDS.items())
async def test_a_declined_card_then_a_good_one_pays_on_the_same_pi(tmp_path: Path, card: str, code: str) -> None:
    async with lane(tmp_path) as the_lane:
        order_id = f"card-{card[-4:]}"
        the_lane.sim.auto_present(the_lane.reader, 0.2, card=card)
        await the_lane.request(order_id, 800)
        declined = await the_lane.wait_for(order_id, "declined")
        assert declined["reason"] == {"code": code, "message": DECLINE_MESSAGES[code], "retryable": True}
        the_lane.sim.auto_present(the_lane.reader, 0.2)  # the customer tries another card
        await the_lane.wait_for(order_id, "approved")
        await the_lane.vend(order_id)
        final = await the_lane.wait_settled(order_id)
        assert final["state"] == "completed"
        # `processing` shows when a read catches the authorisation under way: timing, not meaning.
        assert [s for s in the_lane.states(order_id) if s != "processing"] == [
            "received",
            "awaiting_card",
            "declined",
            "awaiting_card",
            "approved",
            "capturing",
            "completed",
        ]
        (intent,) = the_lane.intents(order_id)
        actions = [a for a in the_lane.sim.ledger().reader_actions if a.type == "process_payment_intent"]
        assert {a.payment_intent for a in actions} == {intent.id}
        assert money_problems(the_lane, order_id, vended=800) == []
